//! Engines in the factory (issue 3): what each engine launches, and how a run's output
//! becomes agent events, live insights and budget stops.

use gantry_core::engine::{Budget, Format, Step};
use gantry_core::spec::parse_job_file;
use gantry_core::{EngineKind, JobId, JobSpec, Outcome, RunId};
use gantry_factory::agent::{EngineSettings, Launch, Watcher, launch};
use std::ffi::OsString;
use std::path::Path;

fn spec(front: &str) -> JobSpec {
    parse_job_file(
        "j.md",
        &format!("---\ntitle: t\nrepo: /r\n{front}---\nDo it.\n"),
    )
    .expect("valid job")
    .spec
}

fn argv(l: &Launch) -> Vec<String> {
    l.argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engine/tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

fn ids() -> (JobId, RunId) {
    (JobId(7), RunId(9))
}

#[test]
fn issue3_claude_code_launch_takes_the_jobs_settings_and_resumes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let prompt = tmp.path().join("prompt.md");
    let s =
        spec("engine: claude-code\nmodel: sonnet\nmax_turns: 40\nbudget: {usd: 2, turns: 10}\n");
    let mut settings = EngineSettings::default();
    settings.claude.binary = "/opt/claude".into();
    settings.claude.args = vec!["--debug".into()];
    let l = launch(&s, ids(), Some("sess-1"), &settings, &prompt, tmp.path()).expect("launch");
    let a = argv(&l);
    assert_eq!(a[0], "/opt/claude");
    for want in [
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--resume=sess-1",
        "--debug",
    ] {
        assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
    }
    let turns = a
        .iter()
        .position(|x| x == "--max-turns")
        .expect("--max-turns");
    assert_eq!(
        a[turns + 1],
        "10",
        "the tighter of max_turns and budget turns: {a:?}"
    );
    let usd = a
        .iter()
        .position(|x| x == "--max-budget-usd")
        .expect("native usd cap");
    assert_eq!(a[usd + 1].parse::<f64>().ok(), Some(2.0));
    assert_eq!(l.stdin.as_deref(), Some(prompt.as_path()));
    assert_eq!(l.format, Some(Format::ClaudeStreamJson));
}

#[test]
fn issue3_codex_launch_and_env_pass_through() {
    let tmp = tempfile::tempdir().expect("tmp");
    let prompt = tmp.path().join("prompt.md");
    let s = spec("engine: codex\nyolo: true\n");
    let mut settings = EngineSettings::default();
    settings.codex.env = vec!["PATH".into(), "GANTRY_TEST_SURELY_UNSET_VAR".into()];
    let l = launch(&s, ids(), None, &settings, &prompt, tmp.path()).expect("launch");
    let a = argv(&l);
    assert_eq!(&a[..3], ["codex", "exec", "--json"]);
    assert!(
        a.iter()
            .any(|x| x == "--dangerously-bypass-approvals-and-sandbox"),
        "{a:?}"
    );
    assert_eq!(l.format, Some(Format::CodexJson));
    let names: Vec<&OsString> = l.env.iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [&OsString::from("PATH")],
        "only listed variables that are set"
    );
}

#[test]
fn issue3_command_and_script_launches() {
    let tmp = tempfile::tempdir().expect("tmp");
    let prompt = tmp.path().join("prompt.md");
    let settings = EngineSettings::default();
    let c = spec("command: [make, test]\noutput: codex-json\n");
    let l = launch(&c, ids(), None, &settings, &prompt, tmp.path()).expect("command");
    assert_eq!(argv(&l), ["make", "test"]);
    assert_eq!(l.format, Some(Format::CodexJson));
    let plain = spec("command: [make]\n");
    let l = launch(&plain, ids(), None, &settings, &prompt, tmp.path()).expect("plain");
    assert_eq!(l.format, None);

    let s = spec("engine: script\nsteps: [{say: hi}]\n");
    assert_eq!(s.steps, vec![Step::Say { text: "hi".into() }]);
    let l = launch(&s, ids(), None, &settings, &prompt, tmp.path()).expect("script");
    assert_eq!(argv(&l)[0], "sh");
    assert!(tmp.path().join("script.sh").is_file());
    assert_eq!(l.format, Some(Format::GantryJsonl));

    let mut empty = c.clone();
    empty.command.clear();
    let err = launch(&empty, ids(), None, &settings, &prompt, tmp.path()).expect_err("empty");
    assert!(err.to_string().contains("command is empty"), "{err}");
}

#[test]
fn issue3_a_replayed_claude_transcript_gives_exact_insights() {
    let s = spec("engine: claude-code\n");
    let mut w = Watcher::new(
        Format::ClaudeStreamJson,
        &s,
        &EngineSettings::default().prices,
    );
    let mut kinds = Vec::new();
    for line in fixture("claude/03_basic_success_cc2.1.7.ndjson").lines() {
        kinds.extend(w.line(line).events.into_iter().map(|e| e.kind));
    }
    kinds.extend(w.finish().events.into_iter().map(|e| e.kind));
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("agent.session_started")
    );
    assert!(kinds.iter().any(|k| k == "agent.result"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("agent.insights"));
    let i = w.insights();
    assert_eq!(
        i.session_id.as_deref(),
        Some("1d1e46f9-35c7-4834-b529-846d5bb82288")
    );
    assert_eq!(i.cost_usd, Some(0.1354875));
    assert_eq!((i.tokens_in, i.tokens_out), (10 + 21570, 25));
    assert_eq!(i.turns, 1);
    assert_eq!(w.outcome(Some(0)), Outcome::Succeeded);
    assert_eq!(w.outcome(Some(1)), Outcome::Failed);
}

#[test]
fn issue3_a_budget_passed_mid_stream_is_reported_once() {
    let mut s = spec("engine: codex\nmodel: gpt-5-codex\n");
    s.budget = Some(Budget {
        tokens: Some(20_000),
        ..Budget::default()
    });
    let mut w = Watcher::new(Format::CodexJson, &s, &EngineSettings::default().prices);
    let mut breaches = 0;
    for line in fixture("codex/02_multi_command.jsonl").lines() {
        let fed = w.line(line);
        if let Some(b) = fed.breach {
            breaches += 1;
            assert_eq!(b.limit, "tokens");
            assert!(fed.events.iter().any(|e| e.kind == "run.budget_exceeded"));
        }
    }
    assert_eq!(breaches, 1, "the breach is reported once");
    assert!(w.breached());
    assert_eq!(w.outcome(Some(0)), Outcome::BudgetExceeded);
    let i = w.insights();
    assert!(i.cost_estimated && i.cost_usd.is_some(), "{i:?}");
}

#[test]
fn issue3_an_agent_that_reports_failure_failed_even_with_exit_0() {
    let s = spec("engine: script\nsteps: [{say: hi}]\n");
    assert_eq!(s.engine, EngineKind::Script);
    let mut w = Watcher::new(Format::GantryJsonl, &s, &EngineSettings::default().prices);
    w.line(r#"{"type":"result","success":false,"error_kind":"api_error","num_turns":1,"cost_usd":null,"tokens_in":null,"tokens_out":null,"tokens_cached":null,"session_id":null,"text":null}"#);
    assert_eq!(w.outcome(Some(0)), Outcome::Failed);
}

/// Issue 12: Codex's own sandbox cannot start inside Gantry's wall, so a walled Codex
/// job that names no mode runs with `danger-full-access`; a named mode, yolo, an
/// unwalled run and other engines are left alone.
#[test]
fn issue12_a_walled_codex_job_without_a_mode_runs_without_codex_s_own_sandbox() {
    use gantry_factory::agent::{CODEX_WALLED_SANDBOX, walled};
    let tmp = tempfile::tempdir().expect("tmp");
    let prompt = tmp.path().join("prompt.md");
    let settings = EngineSettings::default();
    let mode = |s: &JobSpec, wall: bool| {
        let l = launch(
            &walled(s, wall),
            ids(),
            None,
            &settings,
            &prompt,
            tmp.path(),
        )
        .expect("launch");
        let a = argv(&l);
        a.iter()
            .position(|x| x == "--sandbox")
            .map(|i| a[i + 1].clone())
    };
    let codex = spec("engine: codex\n");
    assert_eq!(mode(&codex, true).as_deref(), Some(CODEX_WALLED_SANDBOX));
    assert_eq!(mode(&codex, false).as_deref(), Some("workspace-write"));
    let named = spec("engine: codex\npermission_mode: read-only\n");
    assert_eq!(mode(&named, true).as_deref(), Some("read-only"));
    let yolo = spec("engine: codex\nyolo: true\n");
    assert_eq!(mode(&yolo, true), None, "yolo bypasses the sandbox flag");
    let claude = spec("engine: claude-code\n");
    assert_eq!(*walled(&claude, true), claude);
}
