//! The agent fields of a job file (issue 3): engines, model, budget, yolo, turns,
//! permission modes, allowed tools, script steps and output formats; what each engine
//! accepts, and the errors, naming file, line and field, for what it does not.

use gantry_core::engine::{Budget, Format, Step};
use gantry_core::spec::parse_job_file;
use gantry_core::{EngineKind, JobSpec, SpecError};

fn parse(front: &str) -> JobSpec {
    match parse_job_file("jobs/a.md", &format!("---\n{front}---\nDo it.\n")) {
        Ok(p) => p.spec,
        Err(e) => panic!("expected {front:?} to parse, got: {e}"),
    }
}

fn refuse(front: &str, field: &str, line: usize, needles: &[&str]) -> SpecError {
    let e = match parse_job_file("jobs/a.md", &format!("---\n{front}---\nDo it.\n")) {
        Ok(p) => panic!("expected an error for {front:?}, got {:#?}", p.spec),
        Err(e) => e,
    };
    assert_eq!(e.file, "jobs/a.md");
    assert_eq!(e.field.as_deref(), Some(field), "field of: {e}");
    assert_eq!(e.line, Some(line), "line of: {e}");
    for n in needles {
        assert!(
            e.message.contains(n),
            "{:?} should contain {n:?}",
            e.message
        );
    }
    e
}

/// Title and repo on lines 2 and 3; the engine's own fields follow from line 4.
const HEAD: &str = "title: t\nrepo: /src/r\n";

#[test]
fn claude_code_job_with_every_agent_field() {
    let s = parse(&format!(
        "{HEAD}engine: claude-code\nmodel: sonnet\nbudget: {{ usd: 5, tokens: 2000000, turns: 60 }}\n\
         max_turns: 40\npermission_mode: plan\nallowed_tools: [Edit, \"Bash(git:*)\"]\n"
    ));
    assert_eq!(s.engine, EngineKind::ClaudeCode);
    assert_eq!(s.model.as_deref(), Some("sonnet"));
    assert_eq!(
        s.budget,
        Some(Budget {
            usd: Some(5.0),
            tokens: Some(2_000_000),
            turns: Some(60)
        })
    );
    assert_eq!(s.max_turns, Some(40));
    assert_eq!(s.permission_mode.as_deref(), Some("plan"));
    assert_eq!(s.allowed_tools, vec!["Edit", "Bash(git:*)"]);
    assert!(!s.yolo);
    assert!(s.command.is_empty());
    assert_eq!(s.body, "Do it.\n");
}

#[test]
fn codex_job_with_yolo_and_a_fractional_usd_budget() {
    let s = parse(&format!(
        "{HEAD}engine: codex\nmodel: gpt-5-codex\nyolo: true\nbudget: {{usd: 0.25}}\n"
    ));
    assert_eq!(s.engine, EngineKind::Codex);
    assert!(s.yolo);
    assert_eq!(s.budget.and_then(|b| b.usd), Some(0.25));
}

#[test]
fn script_job_parses_its_steps() {
    let s = parse(&format!(
        "{HEAD}engine: script\nsteps:\n  - say: hello\n  - write: a.txt\n    content: hi\n  - sleep: 1\n"
    ));
    assert_eq!(s.engine, EngineKind::Script);
    assert_eq!(
        s.steps,
        vec![
            Step::Say {
                text: "hello".into()
            },
            Step::Write {
                path: "a.txt".into(),
                content: "hi".into()
            },
            Step::Sleep { seconds: 1.0 },
        ]
    );
}

#[test]
fn command_job_with_a_parsed_output_and_a_budget() {
    let s = parse(&format!(
        "{HEAD}command: [./agent.sh]\noutput: codex-json\nbudget: {{tokens: 1000}}\n"
    ));
    assert_eq!(s.output, Some(Format::CodexJson));
    assert_eq!(s.budget.and_then(|b| b.tokens), Some(1000));
}

#[test]
fn a_spec_without_agent_fields_reads_back_from_old_json() {
    // Specs stored before the agent fields existed must still load.
    let mut v = serde_json::to_value(parse(&format!("{HEAD}command: [x]\n"))).expect("json");
    let obj = v.as_object_mut().expect("object");
    for f in [
        "model",
        "budget",
        "yolo",
        "max_turns",
        "permission_mode",
        "allowed_tools",
        "steps",
        "output",
    ] {
        obj.remove(f);
    }
    let back: JobSpec = serde_json::from_value(v).expect("old spec loads");
    assert!(back.steps.is_empty() && !back.yolo && back.budget.is_none());
}

#[test]
fn unknown_engine_lists_the_known_ones() {
    refuse(
        &format!("{HEAD}engine: aider\n"),
        "engine",
        4,
        &[
            "unknown engine \"aider\"",
            "command, script, claude-code, codex",
        ],
    );
}

#[test]
fn fields_that_do_not_apply_to_the_engine_are_refused() {
    let cases = [
        (
            "command: [x]\nmodel: m\n",
            "model",
            5,
            "does not apply to engine `command`",
        ),
        (
            "command: [x]\nyolo: true\n",
            "yolo",
            5,
            "it is for: claude-code, codex",
        ),
        (
            "engine: script\nsteps: [{say: hi}]\ncommand: [x]\n",
            "command",
            6,
            "engine `script`",
        ),
        (
            "engine: codex\nallowed_tools: [Edit]\n",
            "allowed_tools",
            5,
            "it is for: claude-code",
        ),
        (
            "engine: codex\nsteps: [{say: hi}]\n",
            "steps",
            5,
            "it is for: script",
        ),
        (
            "engine: claude-code\noutput: text\n",
            "output",
            5,
            "it is for: command",
        ),
        (
            "engine: script\nsteps: [{say: hi}]\nmax_turns: 3\n",
            "max_turns",
            6,
            "engine `script`",
        ),
    ];
    for (extra, field, line, needle) in cases {
        refuse(&format!("{HEAD}{extra}"), field, line, &[needle]);
    }
}

#[test]
fn script_engine_needs_steps_and_command_engine_a_command() {
    let e = parse_job_file("jobs/a.md", &format!("---\n{HEAD}engine: script\n---\nx\n"))
        .expect_err("no steps");
    assert_eq!(e.field.as_deref(), Some("steps"));
    assert!(e.message.contains("missing steps"), "{e}");
    let e = parse_job_file("jobs/a.md", &format!("---\n{HEAD}---\nx\n")).expect_err("no command");
    assert_eq!(e.field.as_deref(), Some("command"));
}

#[test]
fn bad_budgets_name_the_limit_and_value() {
    let cases = [
        ("budget: 5\n", 4, "a map of limits"),
        (
            "budget: {usd: -1}\n",
            4,
            "budget.usd must be a number above zero, found integer `-1`",
        ),
        (
            "budget: {tokens: 1.5}\n",
            4,
            "budget.tokens must be a whole number above zero",
        ),
        (
            "budget: {turns: 0}\n",
            4,
            "budget.turns must be a whole number above zero",
        ),
        (
            "budget: {dollars: 5}\n",
            4,
            "unknown budget limit \"dollars\" (known limits: usd, tokens, turns)",
        ),
        ("budget: {}\n", 4, "budget sets no limit"),
        (
            "budget:\n  usd: 1\n  usd: 2\n",
            6,
            "duplicate budget limit `usd`",
        ),
    ];
    for (extra, line, needle) in cases {
        refuse(
            &format!("{HEAD}engine: claude-code\n{extra}"),
            "budget",
            line + 1,
            &[needle],
        );
    }
}

#[test]
fn a_budget_on_a_command_job_needs_a_parsed_output() {
    refuse(
        &format!("{HEAD}command: [x]\nbudget: {{usd: 1}}\n"),
        "budget",
        5,
        &["set `output:`"],
    );
}

#[test]
fn bad_agent_scalars() {
    let cases = [
        (
            "engine: codex\nyolo: yes please\n",
            "yolo",
            5,
            "`true` or `false`",
        ),
        (
            "engine: codex\nmax_turns: 0\n",
            "max_turns",
            5,
            "out of range 1..=100000",
        ),
        ("engine: codex\nmodel: \"\"\n", "model", 5, ""),
        (
            "engine: codex\npermission_mode: acceptEdits\n",
            "permission_mode",
            5,
            "unknown permission_mode \"acceptEdits\" for engine `codex` (known: read-only, workspace-write, danger-full-access)",
        ),
        (
            "engine: claude-code\npermission_mode: yolo\n",
            "permission_mode",
            5,
            "known: acceptEdits",
        ),
        (
            "engine: claude-code\nyolo: true\npermission_mode: plan\n",
            "permission_mode",
            6,
            "keep one",
        ),
        (
            "engine: claude-code\nallowed_tools: Edit\n",
            "allowed_tools",
            5,
            "a list of tool names",
        ),
        (
            "command: [x]\noutput: json\n",
            "output",
            5,
            "unknown output format \"json\" (known: claude-stream-json, codex-json, gantry-jsonl, text)",
        ),
    ];
    for (extra, field, line, needle) in cases {
        refuse(&format!("{HEAD}{extra}"), field, line, &[needle]);
    }
}

#[test]
fn a_bad_step_names_its_number_and_line() {
    let e = refuse(
        &format!(
            "{HEAD}engine: script\nsteps:\n  - say: hi\n  - write: /etc/passwd\n    content: x\n"
        ),
        "steps",
        7,
        &["step 2"],
    );
    assert!(e.message.contains("write"), "{e}");
    refuse(
        &format!("{HEAD}engine: script\nsteps:\n  - say: hi\n  - dance: now\n"),
        "steps",
        7,
        &["step 2"],
    );
    refuse(
        &format!("{HEAD}engine: script\nsteps: say hi\n"),
        "steps",
        5,
        &["a list of steps"],
    );
}
