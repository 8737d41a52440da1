//! Engines end to end through the factory (issue 3): the script engine, budgets stopped
//! mid-stream, stand-in `claude` and `codex` CLIs replaying recorded transcripts,
//! checkpoints, and a retry that resumes the session from the checkpoint.

use crate::support::stop_factory as stop;
use crate::support::*;
use gantry_core::engine::{Budget, Step};
use gantry_core::event::NewEvent;
use gantry_core::{EngineKind, JobId, Outcome, RunId, StopKind};
use gantry_factory::{FactoryConfig, artifacts_dir};
use gantry_protocol::{Checkpoint, FinishReport};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A source repo, a data dir and a directory of stand-in CLIs in one temp dir.
struct Bench {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    base: String,
    data: PathBuf,
    coord: Arc<TestCoord>,
}

impl Bench {
    fn new() -> Bench {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        let base = make_repo(&repo);
        let data = tmp.path().join("data");
        Bench {
            tmp,
            repo,
            base,
            data,
            coord: Arc::new(TestCoord::default()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn config(&self) -> FactoryConfig {
        let mut cfg = test_config(&self.data, 2);
        cfg.engines.claude.binary = self.path("claude").to_string_lossy().into_owned();
        cfg.engines.codex.binary = self.path("codex").to_string_lossy().into_owned();
        cfg
    }

    fn start(&self, cfg: FactoryConfig) -> Running {
        spawn_factory(self.coord.clone(), cfg)
    }

    /// Writes a stand-in for an agent CLI at `<tmp>/<name>`: it records its argv (one
    /// per line) in `<name>.argv` and its stdin in `<name>.stdin`, replays `fixture`
    /// line by line with small delays, runs `then` (shell, in the worktree) and exits
    /// with `code`.
    fn stand_in(&self, name: &str, fixture: &Path, then: &str, code: i32) {
        let argv = self.path(&format!("{name}.argv"));
        let stdin = self.path(&format!("{name}.stdin"));
        let script = format!(
            "#!/bin/sh
printf '%s\\n' \"$@\" > '{argv}'
cat > '{stdin}'
while IFS= read -r line || [ -n \"$line\" ]; do
  printf '%s\\n' \"$line\"
  sleep 0.01
done < '{fixture}'
{then}
exit {code}
",
            argv = argv.display(),
            stdin = stdin.display(),
            fixture = fixture.display(),
        );
        let path = self.path(name);
        std::fs::write(&path, script).expect("write stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn argv(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(&format!("{name}.argv")))
            .expect("argv recorded")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures")
        .join(rel)
}

fn kinds(events: &[NewEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn agent_spec(b: &Bench, engine: EngineKind) -> gantry_core::JobSpec {
    let mut s = spec(&b.repo, &[]);
    s.engine = engine;
    s
}

fn insights(r: &FinishReport) -> &gantry_core::engine::Insights {
    r.insights
        .as_ref()
        .expect("the finish report carries insights")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_script_job_runs_end_to_end_with_events_and_insights() {
    let b = Bench::new();
    let f = b.start(b.config());
    let mut s = agent_spec(&b, EngineKind::Script);
    s.steps = vec![
        Step::Write {
            path: "notes/a.txt".to_string(),
            content: "hello\n".to_string(),
        },
        Step::Say {
            text: "wrote the note".to_string(),
        },
        Step::Usage {
            tokens_in: 1200,
            tokens_out: 300,
            tokens_cached: 1000,
            cost_usd: Some(0.01),
        },
        Step::Run {
            command: "test -f notes/a.txt".to_string(),
        },
    ];
    b.coord.push(claim(1, 1, 1, s));
    let r = b.coord.finish_of(RunId(1)).await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.files_changed, Some(1));
    let i = insights(&r);
    assert_eq!(
        (i.tokens_in, i.tokens_out, i.tokens_cached),
        (1200, 300, 1000)
    );
    assert_eq!(i.cost_usd, Some(0.01));
    assert_eq!(i.turns, 4, "one turn per step");
    assert_eq!(i.tool_calls, 2, "write and run");
    assert_eq!(i.tool_errors, 0);
    assert_eq!(i.success, Some(true));
    assert!(i.session_id.is_some());

    let events = b.coord.events(RunId(1));
    let k = kinds(&events);
    for want in [
        "agent.session_started",
        "agent.turn_started",
        "agent.tool_call",
        "agent.tool_result",
        "agent.message",
        "agent.usage",
        "agent.result",
        "agent.insights",
    ] {
        assert!(k.contains(&want), "{want} in {k:?}");
    }
    assert!(
        !events
            .iter()
            .any(|e| e.kind == "run.output" && e.data["stream"] == "stdout"),
        "a parsed stdout is not streamed as raw output"
    );
    let transcript = artifacts_dir(&b.data, JobId(1), RunId(1)).join("transcript.jsonl");
    let text = std::fs::read_to_string(&transcript).expect("transcript.jsonl");
    assert!(text.lines().count() >= 10, "{text}");
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_budget_passed_mid_stream_stops_the_run_at_once() {
    let b = Bench::new();
    let f = b.start(b.config());
    let mut s = agent_spec(&b, EngineKind::Script);
    s.steps = vec![
        Step::Write {
            path: "early.txt".to_string(),
            content: "early\n".to_string(),
        },
        Step::Usage {
            tokens_in: 5000,
            tokens_out: 100,
            tokens_cached: 0,
            cost_usd: None,
        },
        Step::Sleep { seconds: 1000.0 },
        Step::Write {
            path: "late.txt".to_string(),
            content: "late\n".to_string(),
        },
    ];
    s.budget = Some(Budget {
        tokens: Some(1000),
        ..Budget::default()
    });
    b.coord.push(claim(2, 2, 1, s));
    let pgid = started_pid(&b.coord.started(RunId(2)).await);
    let r = b.coord.finish_of(RunId(2)).await;
    assert_eq!(r.outcome, Some(Outcome::BudgetExceeded), "{r:?}");
    assert!(
        live_members(pgid).is_empty(),
        "the run's processes are gone"
    );
    let events = b.coord.events(RunId(2));
    let breach = events
        .iter()
        .find(|e| e.kind == "run.budget_exceeded")
        .expect("run.budget_exceeded");
    assert_eq!(breach.data["limit"], "tokens");
    assert_eq!(breach.data["limit_value"], 1000.0);
    assert_eq!(breach.data["actual"], 5100.0);
    assert_eq!(insights(&r).tokens(), 5100);
    // Stopped before the next steps: the late file was never written.
    let cache = gantry_factory::workspace::cache_dir(&b.data, &b.repo.to_string_lossy());
    let commit = r.commit.expect("commit");
    let files = git(&cache, &["ls-tree", "--name-only", &commit]);
    assert!(
        files.contains("early.txt") && !files.contains("late.txt"),
        "{files}"
    );
    // A budget stop is graceful: the work in progress is checkpointed.
    let cp = events
        .iter()
        .find(|e| e.kind == "run.checkpoint")
        .expect("run.checkpoint");
    let cp: Checkpoint = serde_json::from_value(cp.data.clone()).expect("checkpoint payload");
    assert_eq!(cp.branch, "gantry/2/wip");
    assert_eq!(cp.base, b.base);
    assert_eq!(
        git(&cache, &["show", &format!("{}:early.txt", cp.commit)]),
        "early"
    );
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_claude_code_runs_through_a_stand_in_cli_with_exact_insights() {
    let b = Bench::new();
    b.stand_in(
        "claude",
        &fixture("claude/04_permission_denied_parallel_bash_REASSEMBLED.jsonl"),
        "echo edited > edited.txt",
        0,
    );
    let f = b.start(b.config());
    let mut s = agent_spec(&b, EngineKind::ClaudeCode);
    s.model = Some("sonnet".to_string());
    s.body = "Fix the bug.\n".to_string();
    b.coord.push(claim(3, 3, 1, s));
    let r = b.coord.finish_of(RunId(3)).await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    assert_eq!(r.files_changed, Some(1));
    let i = insights(&r);
    assert_eq!(
        i.session_id.as_deref(),
        Some("1f2f4a66-82a4-42e2-b93d-089998d779e6")
    );
    assert_eq!(i.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert_eq!(
        (i.tokens_in, i.tokens_out, i.tokens_cached),
        (10 + 5534 + 32197, 368, 32197)
    );
    assert_eq!(i.cost_usd, Some(0.0395976));
    assert!(!i.cost_estimated);
    assert_eq!((i.turns, i.tool_calls, i.tool_errors), (4, 3, 2));
    assert_eq!(i.success, Some(true));

    let argv = b.argv("claude");
    for want in [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        "sonnet",
    ] {
        assert!(argv.iter().any(|a| a == want), "{want} in {argv:?}");
    }
    assert!(!argv.iter().any(|a| a.starts_with("--resume")), "{argv:?}");
    assert_eq!(
        std::fs::read_to_string(b.path("claude.stdin")).expect("stdin"),
        "Fix the bug.\n",
        "the prompt arrives on stdin"
    );
    let events = b.coord.events(RunId(3));
    let errors = events
        .iter()
        .filter(|e| e.kind == "agent.tool_result" && e.data["is_error"] == true)
        .count();
    assert_eq!(errors, 2);
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_codex_runs_through_a_stand_in_cli_with_estimated_cost() {
    let b = Bench::new();
    b.stand_in("codex", &fixture("codex/02_multi_command.jsonl"), "", 0);
    let f = b.start(b.config());
    let mut s = agent_spec(&b, EngineKind::Codex);
    s.model = Some("gpt-5-codex".to_string());
    b.coord.push(claim(4, 4, 1, s));
    let r = b.coord.finish_of(RunId(4)).await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    let i = insights(&r);
    assert_eq!(
        i.session_id.as_deref(),
        Some("019c8143-abe2-7722-9bd1-fd70f687175b")
    );
    assert_eq!(
        (i.tokens_in, i.tokens_cached, i.tokens_out),
        (30669, 28288, 205)
    );
    assert_eq!((i.turns, i.tool_calls), (1, 3));
    let expected = ((30669.0 - 28288.0) * 1.25 + 28288.0 * 0.125 + 205.0 * 10.0) / 1e6;
    assert!(i.cost_estimated);
    assert!((i.cost_usd.expect("estimated cost") - expected).abs() < 1e-12);
    let argv = b.argv("codex");
    assert_eq!(&argv[..2], ["exec", "--json"], "{argv:?}");
    assert_eq!(
        argv.last().map(String::as_str),
        Some("-"),
        "prompt on stdin"
    );
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_claude_api_error_fails_the_run_though_its_result_says_success() {
    let b = Bench::new();
    let transcript = b.path("api-error.jsonl");
    std::fs::write(
        &transcript,
        concat!(
            r#"{"type":"system","subtype":"init","session_id":"s-err","model":"claude-sonnet-4-5-20250929","tools":[]}"#,
            "\n",
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: Connection error.","num_turns":1,"total_cost_usd":0,"session_id":"s-err","usage":{"input_tokens":0,"output_tokens":0}}"#,
            "\n"
        ),
    )
    .expect("write transcript");
    b.stand_in("claude", &transcript, "", 1);
    let f = b.start(b.config());
    b.coord
        .push(claim(5, 5, 1, agent_spec(&b, EngineKind::ClaudeCode)));
    let r = b.coord.finish_of(RunId(5)).await;
    assert_eq!(r.outcome, Some(Outcome::Failed), "{r:?}");
    assert_eq!(r.exit_code, Some(1));
    assert_eq!(insights(&r).success, Some(false));
    // The agent's own words are the run's error, so `gantry show` can say them.
    assert_eq!(r.error.as_deref(), Some("API Error: Connection error."));
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_retry_resumes_the_session_and_starts_from_the_checkpoint() {
    a_retry_resumes_the_session_and_starts_from_the_checkpoint(false).await;
}

/// Issue 4: a source given by URL gets the checkpoint too, so a factory on another
/// machine starts the retry from it (before, URL sources kept checkpoints in the
/// checkpointing factory's cache only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue4_a_url_source_gets_the_checkpoint_and_a_retry_elsewhere_starts_from_it() {
    a_retry_resumes_the_session_and_starts_from_the_checkpoint(true).await;
}

/// A run canceled mid-work is checkpointed to the source (given by path, or by
/// `file://` URL when `url`), and its retry on another factory resumes from there.
async fn a_retry_resumes_the_session_and_starts_from_the_checkpoint(url: bool) {
    let b = Bench::new();
    let wrote = b.path("wrote");
    let seen = b.path("seen.txt");
    // First attempt: writes its work in progress, then hangs until canceled. A retry
    // finds the work in its worktree and keeps a copy where the test can see it.
    let then = format!(
        "if [ -e wip.txt ]; then cp wip.txt '{seen}'; exit 0; fi
echo work > wip.txt
touch '{wrote}'
sleep 1000",
        seen = seen.display(),
        wrote = wrote.display()
    );
    b.stand_in(
        "claude",
        &fixture("claude/03_basic_success_cc2.1.7.ndjson"),
        &then,
        0,
    );
    let f = b.start(b.config());
    let mut s = agent_spec(&b, EngineKind::ClaudeCode);
    if url {
        s.repo = format!("file://{}", b.repo.display());
    }
    b.coord.push(claim(6, 61, 1, s.clone()));
    wait_for(|| wrote.exists().then_some(())).await;
    b.coord
        .set_renew(RunId(61), RenewMode::Stop(StopKind::Cancel));
    let first = b.coord.finish_of(RunId(61)).await;
    assert_eq!(first.outcome, Some(Outcome::Canceled), "{first:?}");
    let session = insights(&first).session_id.clone().expect("session id");
    let cp = b
        .coord
        .events(RunId(61))
        .into_iter()
        .find(|e| e.kind == "run.checkpoint")
        .expect("a canceled run is checkpointed");
    let cp: Checkpoint = serde_json::from_value(cp.data).expect("checkpoint payload");
    assert_eq!(cp.base, b.base);
    // The checkpoint is pushed to the source repo under an attempt-unique ref, outside
    // its branches.
    assert_eq!(
        git(&b.repo, &["rev-parse", "refs/gantry/wip/6/a1"]),
        cp.commit
    );
    assert!(git(&b.repo, &["branch", "--list", "gantry*"]).is_empty());

    // The retry runs on another factory with its own data dir (an empty cache).
    stop(f).await;
    let mut cfg = b.config();
    cfg.data_dir = b.path("data2");
    let f2 = b.start(cfg);
    let mut retry = claim(6, 62, 2, s);
    retry.job.resume_session = Some(session.clone());
    retry.job.checkpoint = Some(cp.clone());
    b.coord.push(retry);
    let second = b.coord.finish_of(RunId(62)).await;
    assert_eq!(second.outcome, Some(Outcome::Succeeded), "{second:?}");
    assert_eq!(second.base_commit.as_deref(), Some(cp.commit.as_str()));
    let argv = b.argv("claude");
    assert!(
        argv.contains(&format!("--resume={session}")),
        "the retry resumes the session: {argv:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&seen).expect("the retry saw the work in progress"),
        "work\n"
    );
    stop(f2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_periodic_checkpoints_leave_the_agents_index_and_head_alone() {
    let b = Bench::new();
    let go = b.path("go");
    let ready = b.path("ready");
    let mut cfg = b.config();
    cfg.engines.checkpoint_interval = Duration::from_millis(100);
    let f = b.start(cfg);
    let script = format!(
        "echo a > a.txt && git add a.txt && echo b > b.txt && touch '{ready}'
while [ ! -e '{go}' ]; do sleep 0.02; done",
        ready = ready.display(),
        go = go.display()
    );
    b.coord
        .push(claim(7, 7, 1, spec(&b.repo, &["sh", "-c", &script])));
    wait_for(|| ready.exists().then_some(())).await;
    let cp = wait_for(|| {
        b.coord
            .events(RunId(7))
            .into_iter()
            .find(|e| e.kind == "run.checkpoint")
    })
    .await;
    let cp: Checkpoint = serde_json::from_value(cp.data).expect("checkpoint payload");
    let wt = b.data.join("work/7-a1");
    // The agent's own index and HEAD are as it left them.
    let status = git(&wt, &["status", "--porcelain"]);
    assert_eq!(status, "A  a.txt\n?? b.txt", "{status}");
    assert_eq!(git(&wt, &["rev-parse", "HEAD"]), b.base);
    // The checkpoint holds both files, on top of the base, on the wip branch.
    let cache = gantry_factory::workspace::cache_dir(&b.data, &b.repo.to_string_lossy());
    let files = git(&cache, &["ls-tree", "--name-only", &cp.commit]);
    assert!(
        files.contains("a.txt") && files.contains("b.txt"),
        "{files}"
    );
    assert_eq!(
        git(&cache, &["rev-parse", &format!("{}^", cp.commit)]),
        b.base
    );
    assert_eq!(
        git(&cache, &["rev-parse", "refs/heads/gantry/7/wip"]),
        cp.commit
    );
    // Several looks without a change take no further checkpoint. The run record counts
    // the looks; wait for three more than when the first checkpoint was reported.
    let record = gantry_factory::record::RunRecord::path(&b.data, RunId(7));
    let looks = || {
        gantry_factory::record::RunRecord::read(&record)
            .map(|r| r.checkpoint_looks)
            .unwrap_or(0)
    };
    let first = looks();
    wait_for(|| (looks() >= first + 3).then_some(())).await;
    std::fs::write(&go, "").expect("go");
    let r = b.coord.finish_of(RunId(7)).await;
    assert_eq!(r.outcome, Some(Outcome::Succeeded), "{r:?}");
    let checkpoints = b
        .coord
        .events(RunId(7))
        .iter()
        .filter(|e| e.kind == "run.checkpoint")
        .count();
    assert_eq!(
        checkpoints, 1,
        "an unchanged tree is not checkpointed again"
    );
    stop(f).await;
}
