//! The script engine: steps parsed from job data, compiled to `sh`, run for real.

use std::path::Path;
use std::process::{Command, Stdio};

use gantry_engine::{AgentEvent, Format, Step, StepError, parse_steps, script};
use serde_json::json;

use crate::{insights, parse};

/// What a script run left behind.
struct Ran {
    events: Vec<AgentEvent>,
    code: Option<i32>,
    stderr: String,
    dir: tempfile::TempDir,
}

impl Ran {
    fn worktree(&self) -> std::path::PathBuf {
        self.dir.path().join("wt")
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.worktree().join(rel)).expect("file written")
    }
}

/// Compiles `steps` and runs the script with `sh` in a fresh worktree directory.
fn run(steps: &[Step]) -> Ran {
    let dir = tempfile::tempdir().expect("temp dir");
    let wt = dir.path().join("wt");
    std::fs::create_dir(&wt).expect("worktree dir");
    let path = dir.path().join("agent.sh");
    std::fs::write(&path, script(steps, "sess-1", "script")).expect("script written");
    let out = Command::new("sh")
        .arg(&path)
        .current_dir(&wt)
        .stdin(Stdio::null())
        .output()
        .expect("sh runs");
    let stdout = String::from_utf8(out.stdout).expect("stdout is utf-8");
    Ran {
        events: parse(Format::GantryJsonl, &stdout),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    }
}

fn steps(v: serde_json::Value) -> Vec<Step> {
    parse_steps(&v).expect("steps parse")
}

const NASTY: &str = "it's \"quoted\" $(touch pwned) `touch pwned2` $HOME \\n \\ %s %d\nline two\n\ttab 🎉 日本語 '' \\' \n-n\n";

#[test]
fn issue3_nasty_content_lands_byte_for_byte() {
    let list = steps(json!([
        {"write": "plain.txt", "content": NASTY},
        {"write": "dir with space/it's $(x) `y`.txt", "content": "-e\\n"},
        {"append": "plain.txt", "content": "more 'stuff'"},
        {"append": "new/deep/file.md"},
        {"write": "empty.txt", "content": ""},
        {"say": NASTY},
    ]));
    let ran = run(&list);
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    assert_eq!(ran.read("plain.txt"), format!("{NASTY}more 'stuff'"));
    assert_eq!(ran.read("dir with space/it's $(x) `y`.txt"), "-e\\n");
    assert_eq!(ran.read("new/deep/file.md"), "");
    assert_eq!(ran.read("empty.txt"), "");
    for pwned in ["pwned", "pwned2"] {
        assert!(
            !ran.worktree().join(pwned).exists(),
            "{pwned} must not exist"
        );
        assert!(!Path::new(pwned).exists());
    }
    assert!(ran.events.contains(&AgentEvent::Message {
        text: NASTY.to_string()
    }));
    assert!(
        ran.events
            .iter()
            .all(|e| !matches!(e, AgentEvent::Raw { .. })),
        "{:?}",
        ran.events
    );
    let i = insights(&ran.events);
    assert_eq!(i.session_id.as_deref(), Some("sess-1"));
    assert_eq!(i.model.as_deref(), Some("script"));
    assert_eq!(i.turns, 6);
    assert_eq!(i.tool_calls, 5);
    assert_eq!(i.tool_errors, 0);
    assert_eq!(i.success, Some(true));
}

#[test]
fn the_event_sequence_of_a_small_script() {
    let ran = run(&steps(json!([
        {"say": "hi"},
        {"run": "echo out; echo err >&2"},
        {"usage": {"tokens_in": 100, "tokens_out": 20, "tokens_cached": 60, "cost_usd": 0.01}},
    ])));
    assert_eq!(ran.code, Some(0));
    let script_model = Some("script".to_string());
    assert_eq!(
        ran.events,
        [
            AgentEvent::SessionStarted {
                session_id: "sess-1".to_string(),
                model: script_model.clone()
            },
            AgentEvent::TurnStarted { turn: 1 },
            AgentEvent::Message {
                text: "hi".to_string()
            },
            AgentEvent::TurnStarted { turn: 2 },
            AgentEvent::ToolCall {
                id: Some("step-1".to_string()),
                name: "run".to_string(),
                input: Some("echo out; echo err >&2".to_string()),
            },
            AgentEvent::ToolResult {
                id: Some("step-1".to_string()),
                is_error: false,
                output: Some("exit code 0".to_string()),
            },
            AgentEvent::TurnStarted { turn: 3 },
            AgentEvent::Usage {
                tokens_in: 100,
                tokens_out: 20,
                tokens_cached: 60,
                cost_usd: Some(0.01),
                model: script_model,
            },
            AgentEvent::Result {
                success: true,
                error_kind: None,
                num_turns: Some(3),
                cost_usd: Some(0.01),
                tokens_in: Some(100),
                tokens_out: Some(20),
                tokens_cached: Some(60),
                session_id: Some("sess-1".to_string()),
                text: None,
            },
        ]
    );
    // The command's stdout goes to stderr, so stdout holds events only.
    assert!(ran.stderr.contains("out\n") && ran.stderr.contains("err\n"));
}

#[test]
fn a_failing_run_is_a_tool_error_and_the_script_goes_on() {
    let ran = run(&steps(json!([
        {"run": "exit 7"},
        {"write": "after.txt", "content": "still here"},
    ])));
    assert_eq!(ran.code, Some(0));
    assert!(ran.events.contains(&AgentEvent::ToolResult {
        id: Some("step-0".to_string()),
        is_error: true,
        output: Some("exit code 7".to_string()),
    }));
    assert_eq!(ran.read("after.txt"), "still here");
    let i = insights(&ran.events);
    assert_eq!((i.tool_calls, i.tool_errors), (2, 1));
    assert_eq!(i.success, Some(true));
}

#[test]
fn a_write_that_cannot_happen_is_a_tool_error() {
    let ran = run(&steps(json!([
        {"write": "taken/x.txt", "content": "a"},
        {"write": "taken", "content": "b"},
    ])));
    assert_eq!(ran.code, Some(0));
    let errors: Vec<_> = ran
        .events
        .iter()
        .filter(|e| matches!(e, AgentEvent::ToolResult { is_error: true, .. }))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "writing over a directory fails: {:?}",
        ran.events
    );
}

#[test]
fn fail_ends_the_run_with_exit_1() {
    let ran = run(&steps(json!([
        {"say": "trying"},
        {"fail": "could not do it: it's \"hard\""},
        {"write": "never.txt", "content": "x"},
    ])));
    assert_eq!(ran.code, Some(1));
    assert!(!ran.worktree().join("never.txt").exists());
    assert_eq!(
        ran.events.last(),
        Some(&AgentEvent::Result {
            success: false,
            error_kind: Some("failed".to_string()),
            num_turns: Some(2),
            cost_usd: None,
            tokens_in: None,
            tokens_out: None,
            tokens_cached: None,
            session_id: Some("sess-1".to_string()),
            text: Some("could not do it: it's \"hard\"".to_string()),
        })
    );
}

#[test]
fn exit_codes_end_the_run() {
    let ran = run(&steps(json!([{"exit": 3}, {"say": "unreached"}])));
    assert_eq!(ran.code, Some(3));
    let i = insights(&ran.events);
    assert_eq!(i.success, Some(false));
    assert_eq!(i.error_kind.as_deref(), Some("exit_code"));
    let ok = run(&steps(json!([{"exit": 0}, {"fail": "unreached"}])));
    assert_eq!(ok.code, Some(0));
    assert_eq!(insights(&ok.events).success, Some(true));
    let empty = run(&[]);
    assert_eq!(empty.code, Some(0));
    assert_eq!(
        empty.events.len(),
        2,
        "session and result: {:?}",
        empty.events
    );
}

#[test]
fn sleep_really_sleeps_and_emits_nothing_but_its_turn() {
    let ran = run(&steps(json!([{"sleep": "50ms"}, {"sleep": 0}])));
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    let kinds: Vec<&str> = ran.events.iter().map(AgentEvent::kind).collect();
    assert_eq!(
        kinds,
        [
            "agent.session_started",
            "agent.turn_started",
            "agent.turn_started",
            "agent.result"
        ]
    );
}

#[test]
fn step_shapes_parse_and_serialize_back() {
    let v = json!([
        {"write": "a.txt", "content": "hi"},
        {"append": "a.txt", "content": "more"},
        {"run": "make test"},
        {"sleep": 2},
        {"sleep": "2s"},
        {"sleep": "500ms"},
        {"sleep": "1m"},
        {"sleep": 0.25},
        {"say": "hello"},
        {"say": 42},
        {"usage": {"tokens_in": 5}},
        {"usage": {"tokens_in": 5, "tokens_out": 1, "tokens_cached": 2, "cost_usd": 0.5}},
        {"fail": "why"},
        {"exit": 0},
    ]);
    let parsed = steps(v);
    assert_eq!(
        parsed[0],
        Step::Write {
            path: "a.txt".to_string(),
            content: "hi".to_string()
        }
    );
    assert_eq!(parsed[3], Step::Sleep { seconds: 2.0 });
    assert_eq!(parsed[4], Step::Sleep { seconds: 2.0 });
    assert_eq!(parsed[5], Step::Sleep { seconds: 0.5 });
    assert_eq!(parsed[6], Step::Sleep { seconds: 60.0 });
    assert_eq!(
        parsed[9],
        Step::Say {
            text: "42".to_string()
        }
    );
    assert_eq!(
        parsed[10],
        Step::Usage {
            tokens_in: 5,
            tokens_out: 0,
            tokens_cached: 0,
            cost_usd: None
        }
    );
    assert_eq!(parsed[13], Step::Exit { code: 0 });
    // Serialize gives the same map shapes, which read back to the same steps.
    let back = serde_json::to_value(&parsed).expect("serializes");
    assert_eq!(back[2], json!({"run": "make test"}));
    assert_eq!(back[0], json!({"write": "a.txt", "content": "hi"}));
    let again: Vec<Step> = serde_json::from_value(back).expect("deserializes");
    assert_eq!(again, parsed);
}

fn error(v: serde_json::Value) -> StepError {
    parse_steps(&v).expect_err("steps are rejected")
}

#[test]
fn issue3_step_errors_name_index_and_field() {
    let cases = [
        (
            json!([{"say": "ok"}, {"write": "a", "content": "x", "mode": "0644"}]),
            1,
            "mode",
        ),
        (json!([{"run": "ls", "content": "x"}]), 0, "content"),
        (
            json!([{"say": "a"}, {"say": "b"}, {"write": "/etc/passwd", "content": "x"}]),
            2,
            "write",
        ),
        (json!([{"append": "a/../../b"}]), 0, "append"),
        (json!([{"append": "../b"}]), 0, "append"),
        (json!([{"write": "dir/"}]), 0, "write"),
        (json!([{"write": ""}]), 0, "write"),
        (json!([{"sleep": -1}]), 0, "sleep"),
        (json!([{"sleep": "-2s"}]), 0, "sleep"),
        (json!([{"sleep": "soon"}]), 0, "sleep"),
        (json!([{"exit": 256}]), 0, "exit"),
        (json!([{"exit": "1"}]), 0, "exit"),
        (json!([{"run": "a", "say": "b"}]), 0, "say"),
        (json!([{"teleport": "x"}]), 0, "teleport"),
        (json!(["run make"]), 0, "step"),
        (
            json!([{"usage": {"tokens_in": 1, "tokens": 2}}]),
            0,
            "usage.tokens",
        ),
        (json!([{"usage": {"tokens_in": -1}}]), 0, "usage.tokens_in"),
        (
            json!([{"usage": {"tokens_in": 1, "tokens_cached": 2}}]),
            0,
            "usage.tokens_cached",
        ),
        (json!([{"usage": 5}]), 0, "usage"),
        (json!([{"write": "a", "content": ["x"]}]), 0, "content"),
        (json!([{"say": "nul\u{0}"}]), 0, "say"),
        (json!([{"run": "  "}]), 0, "run"),
        (json!({"run": "x"}), 0, "steps"),
    ];
    for (v, index, field) in cases {
        let e = error(v.clone());
        assert_eq!((e.index, e.field.as_str()), (index, field), "{v}: {e}");
        assert!(!e.message.is_empty());
        assert!(
            e.to_string()
                .starts_with(&format!("step {index}: field `{field}`"))
        );
    }
}
