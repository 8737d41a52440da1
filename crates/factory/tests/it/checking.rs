//! The checking stage end to end (issue 11): gates from the job and from the base's
//! `.gantry/gates.toml`, fix rounds, the secret scan and the conflict check, on real
//! repositories, real processes and the in-memory coordinator.

use crate::support::*;
use gantry_core::event::NewEvent;
use gantry_core::gate::{Gate, GateChoice};
use gantry_core::{JobId, JobSpec, Outcome, RunId, StopKind};
use gantry_factory::artifacts_dir;
use std::path::Path;

/// The event kinds of the checking stage.
const CHECK_KINDS: [&str; 8] = [
    "run.checking",
    "run.fix_round",
    "gate.started",
    "gate.passed",
    "gate.failed",
    "secret.found",
    "check.conflict",
    "check.rebased",
];

/// A command job in `repo` running `script` with `gates` of its own.
fn checked(repo: &Path, script: &str, gates: Vec<Gate>, fix_rounds: u32) -> JobSpec {
    JobSpec {
        gates: if gates.is_empty() {
            GateChoice::None
        } else {
            GateChoice::Inline(gates)
        },
        fix_rounds,
        ..spec(repo, &["sh", "-c", script])
    }
}

/// The checking stage's events of `run`, in order.
fn check_events(h: &Harness, run: RunId) -> Vec<NewEvent> {
    h.coord
        .events(run)
        .into_iter()
        .filter(|e| CHECK_KINDS.contains(&e.kind.as_str()))
        .collect()
}

fn kinds(events: &[NewEvent]) -> Vec<String> {
    events.iter().map(|e| e.kind.clone()).collect()
}

/// The tree of `commit` in the harness's cache.
fn tree(h: &Harness, commit: &str) -> String {
    git(&h.cache(), &["rev-parse", &format!("{commit}^{{tree}}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_gate_lets_the_job_succeed_with_its_events_in_order() {
    let h = Harness::start(1).await;
    let s = checked(
        &h.repo,
        "echo done > out.txt",
        vec![gate("has-out", "test -f out.txt && echo present")],
        2,
    );
    let report = h.run(claim(101, 101, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let events = check_events(&h, RunId(101));
    assert_eq!(
        kinds(&events),
        ["run.checking", "gate.started", "gate.passed"]
    );
    assert_eq!(events[0].data["round"], 0);
    assert_eq!(events[1].data["name"], "has-out");
    let passed = &events[2].data;
    assert_eq!(passed["passed"], true);
    assert_eq!(passed["exit_code"], 0);
    assert_eq!(passed["round"], 0);
    let commit = report.commit.expect("a commit");
    assert_eq!(
        passed["tree"],
        tree(&h, &commit),
        "the gate ran on the result"
    );
    let output = passed["output"].as_str().expect("an output path");
    assert_eq!(
        std::fs::read_to_string(output).expect("the gate's output"),
        "present\n"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_round_resumes_the_command_job_which_fixes_the_gate() {
    let h = Harness::start(1).await;
    // The job fixes its result only in a fix round, and only when the prompt it is
    // pointed at names the failed gate.
    let script = r#"echo first > work.txt
if [ -n "$GANTRY_FIX_ROUND" ] && grep -q 'Gate `needs-fix`' "$GANTRY_FIX_PROMPT_FILE"; then
  echo "round $GANTRY_FIX_ROUND" > fixed.txt
fi"#;
    let s = checked(
        &h.repo,
        script,
        vec![gate(
            "needs-fix",
            "test -f fixed.txt || { echo 'fixed.txt is missing'; exit 4; }",
        )],
        1,
    );
    let report = h.run(claim(102, 102, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let events = check_events(&h, RunId(102));
    assert_eq!(
        kinds(&events),
        [
            "run.checking",
            "gate.started",
            "gate.failed",
            "run.fix_round",
            "run.checking",
            "gate.started",
            "gate.passed"
        ]
    );
    assert_eq!(events[2].data["exit_code"], 4);
    assert_eq!(events[2].data["reason"], "exited 4");
    assert_eq!(events[3].data["round"], 1);
    assert_eq!(events[3].data["reasons"][0], "gate needs-fix: exited 4");
    assert_eq!(events[4].data["round"], 1);
    assert_eq!(events[6].data["round"], 1);
    let prompt =
        std::fs::read_to_string(artifacts_dir(&h.data, JobId(102), RunId(102)).join("fix-1.md"))
            .expect("the fix prompt");
    assert!(prompt.contains("fix round 1 of 1"), "{prompt}");
    assert!(
        prompt.contains("Gate `needs-fix` failed: exited 4"),
        "{prompt}"
    );
    assert!(
        prompt.contains("test -f fixed.txt"),
        "the command: {prompt}"
    );
    assert!(
        prompt.contains("fixed.txt is missing"),
        "the output: {prompt}"
    );
    let commit = report.commit.clone().expect("a commit");
    let fixed = git(&h.cache(), &["show", &format!("{commit}:fixed.txt")]);
    assert_eq!(fixed, "round 1");
    assert_eq!(report.files_changed, Some(2), "{report:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_never_passes_fails_the_job_after_exactly_fix_rounds_rounds() {
    let h = Harness::start(1).await;
    let s = checked(
        &h.repo,
        "echo \"${GANTRY_FIX_ROUND:-0}\" >> rounds.txt",
        vec![gate("never", "echo 'still broken'; exit 1")],
        2,
    );
    let report = h.run(claim(103, 103, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    assert_eq!(report.error.as_deref(), Some("gates_failed: never"));
    let events = check_events(&h, RunId(103));
    let rounds: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "run.fix_round")
        .map(|e| e.data["round"].clone())
        .collect();
    assert_eq!(rounds, [1, 2]);
    let failed: Vec<_> = events.iter().filter(|e| e.kind == "gate.failed").collect();
    assert_eq!(failed.len(), 3, "round 0 and two fix rounds");
    let output = failed[2].data["output"].as_str().expect("output path");
    assert_eq!(
        std::fs::read_to_string(output).expect("one command away"),
        "still broken\n"
    );
    // The job ran three times in the same worktree; its result is the last commit.
    let commit = report.commit.expect("a commit");
    let ran = git(&h.cache(), &["show", &format!("{commit}:rounds.txt")]);
    assert_eq!(ran, "0\n1\n2");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_going_runs_every_gate_cheapest_first() {
    let h = Harness::start(1).await;
    let mut slow = gate("slow", "true");
    slow.timeout_ms = 120_000;
    let mut quick = gate("quick", "exit 1");
    quick.timeout_ms = 5_000;
    let middle = gate("middle", "exit 2");
    let mut s = checked(&h.repo, "true", vec![slow, middle, quick], 0);
    s.keep_going = true;
    let report = h.run(claim(104, 104, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    assert_eq!(report.error.as_deref(), Some("gates_failed: quick"));
    let started: Vec<_> = check_events(&h, RunId(104))
        .into_iter()
        .filter(|e| e.kind == "gate.started")
        .map(|e| e.data["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(started, ["quick", "middle", "slow"]);

    // Without keep_going, the first failure ends the round.
    let s = checked(
        &h.repo,
        "true",
        vec![gate("a", "exit 1"), gate("b", "true")],
        0,
    );
    let report = h.run(claim(105, 105, 1, s)).await;
    assert_eq!(report.error.as_deref(), Some("gates_failed: a"));
    let n = check_events(&h, RunId(105))
        .iter()
        .filter(|e| e.kind == "gate.started")
        .count();
    assert_eq!(n, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_past_its_timeout_is_killed_with_its_processes() {
    let h = Harness::start(1).await;
    let mut hang = gate("hang", "sleep 1000 & sleep 1000; wait");
    hang.timeout_ms = 500;
    let s = checked(&h.repo, "true", vec![hang], 0);
    let report = h.run(claim(106, 106, 1, s)).await;
    assert_eq!(report.error.as_deref(), Some("gates_failed: hang"));
    let failed = check_events(&h, RunId(106))
        .into_iter()
        .find(|e| e.kind == "gate.failed")
        .expect("gate.failed");
    assert_eq!(failed.data["reason"], "timed out after 500ms");
    assert_eq!(
        gantry_factory::process::processes_of_run(JobId(106), RunId(106)),
        Vec::<i32>::new()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_file_of_the_base_applies_not_the_agents() {
    let h = Harness::start(1).await;
    std::fs::create_dir_all(h.repo.join(".gantry")).expect("mkdir");
    std::fs::write(
        h.repo.join(".gantry/gates.toml"),
        "[[gate]]\nname = \"base-gate\"\nrun = \"test -f marker\"\n",
    )
    .expect("write");
    git(&h.repo, &["add", "-A"]);
    git(&h.repo, &["commit", "-q", "-m", "gates"]);
    // The agent rewrites the gates file to something that always passes.
    let script = r#"printf '[[gate]]\nname = "weak"\nrun = "true"\n' > .gantry/gates.toml"#;
    let report = h
        .run(claim(107, 107, 1, checked(&h.repo, script, Vec::new(), 0)))
        .await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    assert_eq!(report.error.as_deref(), Some("gates_failed: base-gate"));
    let names: Vec<_> = check_events(&h, RunId(107))
        .into_iter()
        .filter(|e| e.kind == "gate.started")
        .map(|e| e.data["name"].clone())
        .collect();
    assert_eq!(names, ["base-gate"]);

    // The repository's gates apply under yolo too; a bad file fails the job naming it.
    std::fs::write(
        h.repo.join(".gantry/gates.toml"),
        "[[gate]]\nname = \"x\"\nrun = 3\n",
    )
    .expect("write");
    git(&h.repo, &["commit", "-q", "-am", "bad gates"]);
    let mut s = checked(&h.repo, "true", vec![gate("own", "exit 1")], 0);
    s.yolo = true;
    let report = h.run(claim(108, 108, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(error.contains(".gantry/gates.toml at "), "{error}");
    assert!(error.contains("`run`"), "names the key: {error}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_key_fails_the_job_and_its_event_has_no_value() {
    let h = Harness::start(1).await;
    let key = "AKIAJGJJVTTFBFUJOAMZ";
    let script = format!("printf 'x = 1\\nAWS_ACCESS_KEY_ID={key}\\n' > settings.env");
    // yolo skips the job's gates, never the scan.
    let mut s = checked(&h.repo, &script, vec![gate("own", "exit 1")], 0);
    s.yolo = true;
    let report = h.run(claim(109, 109, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    assert_eq!(report.error.as_deref(), Some("secret_found"));
    let events = check_events(&h, RunId(109));
    assert_eq!(kinds(&events), ["run.checking", "secret.found"]);
    let found = &events[1].data;
    assert_eq!(found["file"], "settings.env");
    assert_eq!(found["line"], 2);
    assert!(
        found["rule"].as_str().is_some_and(|r| r.contains("aws")),
        "{found}"
    );
    assert_eq!(found["fingerprint"].as_str().map(str::len), Some(16));
    let all = serde_json::to_string(&h.coord.events(RunId(109))).expect("json");
    assert!(!all.contains(key), "no event carries the value: {all}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_removed_in_a_fix_round_is_not_in_the_delivered_history() {
    let h = Harness::start(1).await;
    let key = "AKIAJGJJVTTFBFUJOAMZ";
    // The first round plants the key; the fix round takes it out again.
    let script = format!(
        "if [ -n \"$GANTRY_FIX_ROUND\" ]; then printf 'x = 1\\n' > settings.env; \
         else printf 'x = 1\\nAWS_ACCESS_KEY_ID={key}\\n' > settings.env; fi"
    );
    let report = h
        .run(claim(119, 119, 1, checked(&h.repo, &script, Vec::new(), 1)))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let commit = report.commit.expect("a result");
    let base = report.base_commit.expect("a base");
    // One commit on the base, holding the fixed tree: the planted key is in no commit
    // the branch reaches.
    let cache = h.cache();
    assert_eq!(git(&cache, &["rev-parse", &format!("{commit}~1")]), base);
    assert_eq!(
        git(&cache, &["show", &format!("{commit}:settings.env")]),
        "x = 1"
    );
    let history = git(
        &cache,
        &["log", "-p", "--format=%H", &format!("{base}..{commit}")],
    );
    assert!(!history.contains(key), "{history}");
    h.stop().await;
}

/// A job whose command waits for `go` in the test's directory, so the test can move
/// the base on while it runs; it changes `hello.txt`'s first line.
fn waiting_job(h: &Harness, gates: Vec<Gate>) -> (JobSpec, std::path::PathBuf) {
    let go = h._tmp.path().join("go");
    let script = format!(
        "while [ ! -f '{}' ]; do sleep 0.05; done; printf 'ONE\\ntwo\\nthree\\n' > hello.txt",
        go.display()
    );
    (checked(&h.repo, &script, gates, 0), go)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_that_moved_on_cleanly_gets_the_result_rebased_and_gated_again() {
    let h = Harness::start(1).await;
    let (s, go) = waiting_job(&h, vec![gate("ok", "true")]);
    h.coord.push(claim(110, 110, 1, s));
    h.coord.started(RunId(110)).await;
    std::fs::write(h.repo.join("other.txt"), "other\n").expect("write");
    git(&h.repo, &["add", "-A"]);
    git(&h.repo, &["commit", "-q", "-m", "moved on"]);
    let tip = git(&h.repo, &["rev-parse", "HEAD"]);
    std::fs::write(&go, "").expect("go");
    let report = h.coord.finish_of(RunId(110)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let events = check_events(&h, RunId(110));
    assert_eq!(
        kinds(&events),
        [
            "run.checking",
            "gate.started",
            "gate.passed",
            "check.rebased",
            "gate.started",
            "gate.passed"
        ]
    );
    let commit = report.commit.clone().expect("a commit");
    assert_eq!(events[3].data["tip"], tip.as_str());
    assert_eq!(events[3].data["commit"], commit.as_str());
    assert_eq!(git(&h.cache(), &["rev-parse", &format!("{commit}^")]), tip);
    assert_eq!(
        events[5].data["tree"],
        tree(&h, &commit),
        "gated on the rebased tree"
    );
    assert_ne!(events[2].data["tree"], events[5].data["tree"]);
    assert_eq!(report.base_commit.as_deref(), Some(tip.as_str()));
    assert_eq!(
        report.files_changed,
        Some(1),
        "measured against the new base"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_base_gives_a_conflict_reason() {
    let h = Harness::start(1).await;
    let (s, go) = waiting_job(&h, Vec::new());
    h.coord.push(claim(111, 111, 1, s));
    h.coord.started(RunId(111)).await;
    std::fs::write(h.repo.join("hello.txt"), "uno\ntwo\nthree\n").expect("write");
    git(&h.repo, &["commit", "-q", "-am", "conflicting"]);
    std::fs::write(&go, "").expect("go");
    let report = h.coord.finish_of(RunId(111)).await;
    assert_eq!(report.outcome, Some(Outcome::GatesFailed), "{report:?}");
    assert_eq!(report.error.as_deref(), Some("conflict"));
    let events = check_events(&h, RunId(111));
    assert_eq!(kinds(&events), ["run.checking", "check.conflict"]);
    assert_eq!(events[1].data["paths"], serde_json::json!(["hello.txt"]));
    assert_eq!(events[1].data["base"], "HEAD");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_job_while_a_gate_runs_stops_the_gate_and_the_run_ends_killed() {
    let h = Harness::start(1).await;
    let s = checked(
        &h.repo,
        "true",
        vec![gate("hang", "sleep 1000 & sleep 1000; wait")],
        2,
    );
    h.coord.push(claim(112, 112, 1, s));
    wait_for(|| {
        h.coord
            .events(RunId(112))
            .into_iter()
            .find(|e| e.kind == "gate.started")
    })
    .await;
    wait_for(|| {
        (!gantry_factory::process::processes_of_run(JobId(112), RunId(112)).is_empty())
            .then_some(())
    })
    .await;
    // The lease is renewed while the gate runs.
    let renewed = h.coord.renew_count(RunId(112));
    wait_for(|| (h.coord.renew_count(RunId(112)) >= renewed + 3).then_some(())).await;
    h.coord
        .set_renew(RunId(112), RenewMode::Stop(StopKind::Kill));
    let report = h.coord.finish_of(RunId(112)).await;
    assert_eq!(report.outcome, Some(Outcome::Killed), "{report:?}");
    assert_eq!(
        gantry_factory::process::processes_of_run(JobId(112), RunId(112)),
        Vec::<i32>::new()
    );
    let events = check_events(&h, RunId(112));
    assert_eq!(
        kinds(&events),
        ["run.checking", "gate.started"],
        "no result for a stopped gate"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_counts_every_round() {
    let h = Harness::start(1).await;
    let mut s = checked(&h.repo, "", vec![gate("never", "exit 1")], 2);
    s.command = Vec::new();
    s.engine = gantry_core::EngineKind::Script;
    s.steps = vec![
        gantry_core::engine::Step::Usage {
            tokens_in: 600,
            tokens_out: 0,
            tokens_cached: 0,
            cost_usd: None,
        },
        gantry_core::engine::Step::Write {
            path: "w.txt".to_string(),
            content: "w\n".to_string(),
        },
    ];
    s.budget = Some(gantry_core::engine::Budget {
        tokens: Some(1000),
        ..Default::default()
    });
    let report = h.run(claim(113, 113, 1, s)).await;
    // 600 tokens pass; the fix round's 600 more do not.
    assert_eq!(report.outcome, Some(Outcome::BudgetExceeded), "{report:?}");
    let insights = report.insights.expect("insights");
    assert_eq!(insights.tokens(), 1200);
    let rounds = check_events(&h, RunId(113))
        .iter()
        .filter(|e| e.kind == "run.fix_round")
        .count();
    assert_eq!(rounds, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_that_reaches_the_factory_unresolved_fails_naming_it() {
    let h = Harness::start(1).await;
    let mut s = checked(&h.repo, "true", Vec::new(), 2);
    s.gates = GateChoice::Profile("strict".to_string());
    let report = h.run(claim(114, 114, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(error.contains("gates profile `strict`"), "{error}");
    h.stop().await;
}

/// Issue 11: agents echo what they find. A credential the job prints is redacted before
/// its output leaves the factory, so no event the server keeps or serves carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_printed_by_a_job_is_redacted_before_upload() {
    let h = Harness::start(1).await;
    // The key is put together by the job, so this file holds no credential.
    let script = "printf 'found aws_access_key_id = AKIA%s in the config\\n' QWERTYUIOPASDFGH; \
                  printf 'to stderr: AKIA%s\\n' QWERTYUIOPASDFGH >&2; echo done";
    let report = h
        .run(claim(140, 140, 1, spec(&h.repo, &["sh", "-c", script])))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let stdout = h.coord.output(RunId(140), "stdout");
    let stderr = h.coord.output(RunId(140), "stderr");
    assert!(
        stdout.contains("done"),
        "the rest of the output is kept: {stdout}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains("QWERTYUIOPASDFGH"), "{text}");
        assert!(text.contains("[REDACTED:aws-access-key-id]"), "{text}");
    }
    h.stop().await;
}
