//! The claude-code and codex adapters end to end (issue 3): stand-in CLIs replay real
//! recorded transcripts line by line, with delays and the recorded exit codes, and the
//! factory turns them into exact insights, agent events, outcomes and budget stops.

use crate::support::{GUARD, TestCoord, claim, make_repo, spawn_factory, spec, test_config};
use gantry_core::engine::{Budget, Insights};
use gantry_core::{EngineKind, Outcome, RunId};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fixture copied into the engine crate's tests.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures")
        .join(name)
}

/// Writes an executable stand-in CLI at `dir/name`: it records its argv and its stdin,
/// prints `transcript` one line at a time with a short delay, sleeps `linger` seconds
/// and exits with `code`.
fn stand_in(dir: &Path, name: &str, transcript: &Path, linger: f64, code: i32) -> PathBuf {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\n\
         printf '%s\\n' \"$@\" > '{argv}'\n\
         cat > '{stdin}'\n\
         while IFS= read -r line || [ -n \"$line\" ]; do printf '%s\\n' \"$line\"; sleep 0.02; done < '{transcript}'\n\
         sleep {linger}\n\
         exit {code}\n",
        argv = dir.join(format!("{name}.argv")).display(),
        stdin = dir.join(format!("{name}.stdin")).display(),
        transcript = transcript.display(),
    );
    std::fs::write(&path, script).expect("write stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

struct Rig {
    tmp: tempfile::TempDir,
    repo: PathBuf,
    coord: Arc<TestCoord>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

/// A factory whose claude and codex binaries are the stand-ins in `bin/`.
fn rig(claude: Option<(&str, f64, i32)>, codex: Option<(&str, f64, i32)>) -> Rig {
    rig_in(tempfile::tempdir().expect("tempdir"), claude, codex)
}

/// [`rig`] in `tmp`, where a test may have put a transcript of its own: the runs'
/// sandbox shows them the test's directory, not other temporary directories.
fn rig_in(
    tmp: tempfile::TempDir,
    claude: Option<(&str, f64, i32)>,
    codex: Option<(&str, f64, i32)>,
) -> Rig {
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let repo = tmp.path().join("src-repo");
    make_repo(&repo);
    let mut cfg = test_config(&tmp.path().join("data"), 2);
    if let Some((t, linger, code)) = claude {
        cfg.engines.claude.binary = stand_in(&bin, "claude", &fixture(t), linger, code)
            .to_string_lossy()
            .into_owned();
    }
    if let Some((t, linger, code)) = codex {
        cfg.engines.codex.binary = stand_in(&bin, "codex", &fixture(t), linger, code)
            .to_string_lossy()
            .into_owned();
    }
    let coord = Arc::new(TestCoord::default());
    let (shutdown, _task) = spawn_factory(coord.clone(), cfg);
    Rig {
        tmp,
        repo,
        coord,
        shutdown,
    }
}

impl Rig {
    fn argv(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.tmp.path().join("bin").join(format!("{name}.argv")))
            .expect("the stand-in ran")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn kinds(coord: &TestCoord, run: RunId) -> Vec<String> {
    coord.events(run).into_iter().map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_claude_code_through_a_stand_in_gives_exact_insights_and_resumes() {
    let r = rig(
        Some(("claude/03_basic_success_cc2.1.7.ndjson", 0.0, 0)),
        None,
    );
    let mut s = spec(&r.repo, &[]);
    s.engine = EngineKind::ClaudeCode;
    s.model = Some("sonnet".into());
    s.body = "Say hello.\n".into();
    let mut c = claim(1, 10, 2, s);
    c.job.resume_session = Some("prev-session".into());
    r.coord.push(c);
    let report = tokio::time::timeout(GUARD, r.coord.finish_of(RunId(10)))
        .await
        .expect("finished");
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let i: Insights = report.insights.expect("insights");
    assert_eq!(
        i.session_id.as_deref(),
        Some("1d1e46f9-35c7-4834-b529-846d5bb82288")
    );
    assert_eq!(i.cost_usd, Some(0.1354875));
    assert!(!i.cost_estimated);
    assert_eq!((i.tokens_in, i.tokens_out, i.tokens_cached), (21580, 25, 0));
    assert_eq!((i.turns, i.tool_calls, i.success), (1, 0, Some(true)));
    let argv = r.argv("claude");
    for want in [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--resume=prev-session",
    ] {
        assert!(argv.iter().any(|a| a == want), "{want} in {argv:?}");
    }
    let stdin = std::fs::read_to_string(r.tmp.path().join("bin/claude.stdin")).expect("stdin");
    assert_eq!(stdin, "Say hello.\n", "the body is the prompt, on stdin");
    let k = kinds(&r.coord, RunId(10));
    for want in [
        "agent.session_started",
        "agent.message",
        "agent.result",
        "agent.insights",
    ] {
        assert!(k.iter().any(|x| x == want), "{want} in {k:?}");
    }
    let _ = r.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_claude_code_api_error_with_exit_1_fails() {
    // What Claude Code does offline: init, then a result with subtype success and
    // is_error true, exit code 1.
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path().join("offline.ndjson");
    std::fs::write(
        &t,
        concat!(
            r#"{"type":"system","subtype":"init","session_id":"s-off","model":"claude-sonnet-4"}"#,
            "\n",
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: Connection error.","num_turns":1,"total_cost_usd":0,"session_id":"s-off"}"#,
            "\n"
        ),
    )
    .expect("write transcript");
    let transcript = t.to_str().expect("utf8").to_string();
    let r = rig_in(tmp, Some((&transcript, 0.0, 1)), None);
    let mut s = spec(&r.repo, &[]);
    s.engine = EngineKind::ClaudeCode;
    r.coord.push(claim(2, 20, 1, s));
    let report = tokio::time::timeout(GUARD, r.coord.finish_of(RunId(20)))
        .await
        .expect("finished");
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    assert_eq!(report.exit_code, Some(1));
    let i = report.insights.expect("insights");
    assert_eq!(i.success, Some(false));
    assert_eq!(i.session_id.as_deref(), Some("s-off"));
    let _ = r.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_codex_through_a_stand_in_gives_exact_insights() {
    let r = rig(None, Some(("codex/02_multi_command.jsonl", 0.0, 0)));
    let mut s = spec(&r.repo, &[]);
    s.engine = EngineKind::Codex;
    s.model = Some("gpt-5-codex".into());
    r.coord.push(claim(3, 30, 1, s));
    let report = tokio::time::timeout(GUARD, r.coord.finish_of(RunId(30)))
        .await
        .expect("finished");
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let i = report.insights.expect("insights");
    assert_eq!(
        (i.tokens_in, i.tokens_cached, i.tokens_out),
        (30669, 28288, 205)
    );
    assert_eq!(i.tool_calls, 3);
    assert!(
        i.cost_estimated && i.cost_usd.is_some_and(|c| c > 0.0),
        "{i:?}"
    );
    let argv = r.argv("codex");
    assert_eq!(&argv[..2], ["exec", "--json"], "{argv:?}");
    let _ = r.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_a_budget_passed_mid_stream_stops_the_stand_in_at_once() {
    // The stand-in would linger 30 s after its transcript and then exit 0: the budget
    // stop kills it instead.
    let r = rig(None, Some(("codex/02_multi_command.jsonl", 30.0, 0)));
    let mut s = spec(&r.repo, &[]);
    s.engine = EngineKind::Codex;
    s.model = Some("gpt-5-codex".into());
    s.budget = Some(Budget {
        tokens: Some(20_000),
        ..Budget::default()
    });
    r.coord.push(claim(4, 40, 1, s));
    let report = tokio::time::timeout(GUARD, r.coord.finish_of(RunId(40)))
        .await
        .expect("finished");
    assert_eq!(report.outcome, Some(Outcome::BudgetExceeded), "{report:?}");
    // Killed by the stop (no exit code), not ended by the stand-in's own `exit 0`.
    assert_eq!(report.exit_code, None, "{report:?}");
    let events = r.coord.events(RunId(40));
    let breach = events
        .iter()
        .find(|e| e.kind == "run.budget_exceeded")
        .expect("a run.budget_exceeded event");
    assert_eq!(breach.data["limit"], "tokens");
    assert_eq!(breach.data["limit_value"], 20000.0);
    assert!(breach.data["actual"].as_f64().is_some_and(|a| a > 20000.0));
    let _ = r.shutdown.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue11_a_fix_round_resumes_the_claude_session_with_the_fix_prompt() {
    let r = rig(
        Some(("claude/03_basic_success_cc2.1.7.ndjson", 0.0, 0)),
        None,
    );
    // The gate fails the first time it runs and passes after (it counts in the test's
    // directory, which the sandbox lets runs write).
    let seen = r.tmp.path().join("lint-ran");
    let run = format!(
        "if [ -f '{0}' ]; then exit 0; fi; touch '{0}'; echo 'lint: unused import'; exit 1",
        seen.display()
    );
    let mut s = spec(&r.repo, &[]);
    s.engine = EngineKind::ClaudeCode;
    s.body = "Say hello.\n".into();
    s.fix_rounds = 1;
    s.gates = gantry_core::gate::GateChoice::Inline(vec![crate::support::gate("lint", &run)]);
    r.coord.push(claim(11, 110, 1, s));
    let report = tokio::time::timeout(GUARD, r.coord.finish_of(RunId(110)))
        .await
        .expect("finished");
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let k = kinds(&r.coord, RunId(110));
    assert_eq!(
        k.iter().filter(|k| *k == "run.fix_round").count(),
        1,
        "{k:?}"
    );
    assert_eq!(k.iter().filter(|k| *k == "run.started").count(), 1, "{k:?}");
    // The stand-in's last invocation is the fix round's.
    let argv = r.argv("claude");
    assert!(
        argv.iter()
            .any(|a| a == "--resume=1d1e46f9-35c7-4834-b529-846d5bb82288"),
        "the session the run recorded is resumed: {argv:?}"
    );
    let stdin = std::fs::read_to_string(r.tmp.path().join("bin/claude.stdin")).expect("stdin");
    assert!(stdin.contains("fix round 1 of 1"), "{stdin}");
    assert!(stdin.contains("Gate `lint` failed: exited 1"), "{stdin}");
    assert!(stdin.contains("lint: unused import"), "{stdin}");
    let _ = r.shutdown.send(true);
}
