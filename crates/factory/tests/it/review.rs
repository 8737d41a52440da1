//! The AI review of the checking stage (issue 11), end to end with real processes: the
//! script engine as a deterministic reviewer, and a stand-in Claude Code CLI that
//! judges the result it is shown, on a read-only copy.

use crate::support::*;
use gantry_core::engine::Budget;
use gantry_core::review::{ReviewChoice, ReviewSpec};
use gantry_core::spec::Step;
use gantry_core::{EngineKind, JobSpec, Outcome, RunId};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The kinds of the review and fix round events of `run`, in order.
fn review_kinds(coord: &TestCoord, run: RunId) -> Vec<String> {
    coord
        .events(run)
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("review.") || k == "run.fix_round")
        .collect()
}

/// A script reviewer saying `steps`.
fn script_review(threshold: f64, steps: Vec<Step>) -> ReviewChoice {
    ReviewChoice::Inline(ReviewSpec {
        engine: EngineKind::Script,
        model: None,
        threshold,
        instructions: Some("Check that work.txt exists.".into()),
        steps,
    })
}

fn say(text: &str) -> Step {
    Step::Say { text: text.into() }
}

fn usage(tokens_in: u64, cost: f64) -> Step {
    Step::Usage {
        tokens_in,
        tokens_out: 10,
        tokens_cached: 0,
        cost_usd: Some(cost),
    }
}

fn reviewed(repo: &Path, script: &str, review: ReviewChoice, fix_rounds: u32) -> JobSpec {
    JobSpec {
        review,
        fix_rounds,
        ..spec(repo, &["sh", "-c", script])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_review_lets_the_job_succeed_and_its_spend_counts_in_the_run_and_apart() {
    let h = Harness::start(1).await;
    let verdict = r#"Looks right. {"score": 0.93, "verdict": "approve", "findings": [{"file": "work.txt", "line": 1, "severity": "nit", "message": "trailing newline"}]}"#;
    let s = reviewed(
        &h.repo,
        "echo done > work.txt",
        script_review(0.9, vec![usage(1000, 0.25), say(verdict)]),
        1,
    );
    let report = h.run(claim(301, 301, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert_eq!(
        review_kinds(&h.coord, RunId(301)),
        ["review.started", "review.passed"]
    );
    let events = h.coord.events(RunId(301));
    let passed = events
        .iter()
        .find(|e| e.kind == "review.passed")
        .expect("review.passed");
    assert_eq!(passed.data["verdict"]["score"], 0.93);
    assert_eq!(passed.data["verdict"]["findings"][0]["severity"], "low");
    assert_eq!(passed.data["round"], 0);
    assert_eq!(passed.data["insights"]["tokens_in"], 1000, "{passed:?}");
    let commit = report.commit.clone().expect("a commit");
    let tree = git(&h.cache(), &["rev-parse", &format!("{commit}^{{tree}}")]);
    assert_eq!(
        passed.data["tree"],
        tree.as_str(),
        "the review read the result"
    );
    // The run's figures count the reviewer's spend.
    let insights = report.insights.expect("insights");
    assert_eq!(insights.tokens_in, 1000, "{insights:?}");
    assert_eq!(insights.cost_usd, Some(0.25));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_score_fails_the_job_as_review_rejected_after_its_fix_rounds_with_the_findings_in_the_prompt()
 {
    let h = Harness::start(1).await;
    let verdict = r#"{"score": 0.2, "verdict": "request_changes", "findings": [{"file": "work.txt", "line": 1, "severity": "high", "message": "say hello, not done"}]}"#;
    // In its fix round the job keeps the prompt it was given, for the test to read.
    let script = "echo done > work.txt; if [ -n \"$GANTRY_FIX_ROUND\" ]; then \
                  cp \"$GANTRY_FIX_PROMPT_FILE\" fix-prompt.md; fi";
    let s = reviewed(&h.repo, script, script_review(0.8, vec![say(verdict)]), 1);
    let report = h.run(claim(302, 302, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    assert_eq!(report.error.as_deref(), Some("review_rejected"));
    assert_eq!(
        review_kinds(&h.coord, RunId(302)),
        [
            "review.started",
            "review.failed",
            "run.fix_round",
            "review.started",
            "review.failed"
        ]
    );
    let commit = report.commit.expect("the fix round's commit");
    let prompt = git(&h.cache(), &["show", &format!("{commit}:fix-prompt.md")]);
    assert!(
        prompt.contains("scored 0.20, under the 0.80 needed"),
        "{prompt}"
    );
    assert!(
        prompt.contains("work.txt:1: say hello, not done"),
        "{prompt}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_without_a_verdict_fails_the_review_with_that_reason_and_no_fix_round() {
    let h = Harness::start(1).await;
    let s = reviewed(
        &h.repo,
        "echo done > work.txt",
        script_review(0.8, vec![say("I think it is fine, {but no verdict")]),
        2,
    );
    let report = h.run(claim(303, 303, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(
        error.starts_with("review_rejected: ") && error.contains("no JSON verdict"),
        "{error}"
    );
    assert_eq!(
        review_kinds(&h.coord, RunId(303)),
        ["review.started", "review.failed"]
    );
    let events = h.coord.events(RunId(303));
    let failed = events
        .iter()
        .find(|e| e.kind == "review.failed")
        .expect("failed");
    assert!(failed.data["verdict"].is_null(), "{failed:?}");
    assert!(
        failed.data["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no JSON verdict"),
        "{failed:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_passes_the_jobs_budget_stops_the_run_as_budget_exceeded() {
    let h = Harness::start(1).await;
    let mut s = reviewed(
        &h.repo,
        "echo done > work.txt",
        script_review(
            0.8,
            vec![
                usage(5000, 0.1),
                Step::Sleep { seconds: 3600.0 },
                say(r#"{"score": 1}"#),
            ],
        ),
        1,
    );
    s.budget = Some(Budget {
        tokens: Some(2000),
        ..Budget::default()
    });
    // The reviewer sleeps for an hour after passing the budget: it must be stopped.
    let report = tokio::time::timeout(GUARD, h.run(claim(304, 304, 1, s)))
        .await
        .expect("the reviewer was stopped at the breach, not waited for");
    assert_eq!(report.outcome, Some(Outcome::BudgetExceeded), "{report:?}");
    let kinds: Vec<String> = h
        .coord
        .events(RunId(304))
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.iter().any(|k| k == "run.budget_exceeded"),
        "{kinds:?}"
    );
    assert!(!kinds.iter().any(|k| k == "review.passed"), "{kinds:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yolo_skips_the_review() {
    let h = Harness::start(1).await;
    let mut s = reviewed(
        &h.repo,
        "echo done > work.txt",
        script_review(0.8, vec![say(r#"{"score": 0}"#)]),
        1,
    );
    s.yolo = true;
    let report = h.run(claim(305, 305, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert!(review_kinds(&h.coord, RunId(305)).is_empty());
    h.stop().await;
}

/// A stand-in Claude Code reviewer: it records its argv, tries to write in its working
/// directory, and scores 0.95 when `fixed.txt` is there and 0.2 (asking for it) when
/// not, saying whether its copy was writable.
fn claude_reviewer(bin: &Path) -> String {
    claude_reviewer_with(bin, "")
}

/// [`claude_reviewer`] running the shell line `prelude` first.
fn claude_reviewer_with(bin: &Path, prelude: &str) -> String {
    let path = bin.join("claude");
    let script = format!(
        r#"#!/bin/sh
{prelude}
printf '%s\n' "$@" > '{argv}'
cat > /dev/null
if touch probe 2>/dev/null; then access=writable; else access=read-only; fi
if [ -f fixed.txt ]; then score=0.95; else score=0.2; fi
verdict="{{\\\"score\\\": $score, \\\"verdict\\\": \\\"v\\\", \\\"findings\\\": [{{\\\"file\\\": \\\"work.txt\\\", \\\"severity\\\": \\\"high\\\", \\\"message\\\": \\\"add fixed.txt ($access)\\\"}}]}}"
printf '{{"type":"system","subtype":"init","session_id":"reviewer-1","model":"claude-sonnet-4"}}\n'
printf '{{"type":"assistant","message":{{"id":"m1","content":[{{"type":"text","text":"%s"}}],"usage":{{"input_tokens":300,"output_tokens":40}}}}}}\n' "$verdict"
printf '{{"type":"result","subtype":"success","is_error":false,"num_turns":1,"total_cost_usd":0.02,"session_id":"reviewer-1","usage":{{"input_tokens":300,"output_tokens":40}},"result":"%s"}}\n' "$verdict"
"#,
        argv = bin.join("claude.argv").display(),
    );
    std::fs::write(&path, script).expect("write stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_string_lossy().into_owned()
}

/// A Claude Code review with a 0.9 threshold.
fn claude_review() -> ReviewChoice {
    ReviewChoice::Inline(ReviewSpec {
        engine: EngineKind::ClaudeCode,
        model: Some("claude-sonnet-4".into()),
        threshold: 0.9,
        instructions: None,
        steps: Vec::new(),
    })
}

/// A temp dir with a `bin` directory for stand-ins and a source repo.
fn place() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let repo = tmp.path().join("src-repo");
    make_repo(&repo);
    (tmp, bin, repo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claude_reviewer_reads_only_and_its_findings_get_the_result_fixed() {
    let (tmp, bin, repo) = place();
    let mut cfg = test_config(&tmp.path().join("data"), 1);
    cfg.engines.claude.binary = claude_reviewer(&bin);
    let coord = Arc::new(TestCoord::default());
    let (shutdown, _task) = spawn_factory(coord.clone(), cfg);
    // The job adds fixed.txt only when its fix prompt asks for it.
    let script = "echo done > work.txt; if [ -n \"$GANTRY_FIX_ROUND\" ] && \
                  grep -q 'add fixed.txt' \"$GANTRY_FIX_PROMPT_FILE\"; then echo ok > fixed.txt; fi";
    let review = claude_review();
    coord.push(claim(306, 306, 1, reviewed(&repo, script, review, 1)));
    let report = tokio::time::timeout(GUARD, coord.finish_of(RunId(306)))
        .await
        .expect("finished");
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert_eq!(
        review_kinds(&coord, RunId(306)),
        [
            "review.started",
            "review.failed",
            "run.fix_round",
            "review.started",
            "review.passed"
        ]
    );
    let events = coord.events(RunId(306));
    let failed = events
        .iter()
        .find(|e| e.kind == "review.failed")
        .expect("failed");
    assert_eq!(failed.data["verdict"]["score"], 0.2);
    assert_eq!(
        failed.data["verdict"]["findings"][0]["message"], "add fixed.txt (read-only)",
        "the reviewer's copy is read-only"
    );
    assert_eq!(failed.data["insights"]["cost_usd"], 0.02);
    let argv = std::fs::read_to_string(bin.join("claude.argv")).expect("argv");
    let argv: Vec<&str> = argv.lines().collect();
    for pair in [
        ["--permission-mode", "plan"],
        ["--allowedTools", "Read,Grep,Glob,LS"],
    ] {
        assert!(argv.windows(2).any(|w| w == pair), "{pair:?} in {argv:?}");
    }
    assert!(!argv.iter().any(|a| a.starts_with("--resume")), "{argv:?}");
    // Two reviews at 0.02 each count in the run's cost.
    let cost = report.insights.and_then(|i| i.cost_usd).expect("a cost");
    assert!((cost - 0.04).abs() < 1e-9, "{cost}");
    let _ = shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_the_reviewer_run_under_the_jobs_limits() {
    let (tmp, bin, repo) = place();
    let mut cfg = test_config(&tmp.path().join("data"), 1);
    let seen = |who: &str| bin.join(format!("{who}.data-limit"));
    // `ulimit -d` says the data size limit in KiB: the rlimit `prlimit` set.
    let prelude = format!("ulimit -d > '{}'", seen("reviewer").display());
    cfg.engines.claude.binary = claude_reviewer_with(&bin, &prelude);
    cfg.limiter = Some(gantry_factory::sandbox::limits::Limiter::Rlimit {
        prlimit: "/usr/bin/prlimit".into(),
    });
    let coord = Arc::new(TestCoord::default());
    let factory = spawn_factory(coord.clone(), cfg);
    let script = format!(
        "ulimit -d > '{}'; echo done > work.txt; echo ok > fixed.txt",
        seen("agent").display()
    );
    let review = claude_review();
    let mut s = reviewed(&repo, &script, review, 0);
    s.sandbox = Some(gantry_core::sandbox::SandboxSpec {
        memory_bytes: Some(64 << 20),
        ..gantry_core::sandbox::SandboxSpec::of(gantry_core::sandbox::SandboxKind::Bwrap)
    });
    coord.push(claim(307, 307, 1, s));
    let report = coord.finish_of(RunId(307)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    for who in ["agent", "reviewer"] {
        let limit = std::fs::read_to_string(seen(who)).expect("the limit it saw");
        assert_eq!(limit.trim(), "65536", "the {who}'s data limit");
    }
    stop_factory(factory).await;
}
