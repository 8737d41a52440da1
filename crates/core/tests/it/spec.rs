//! Job files that parse: every field, defaults, the body kept verbatim, CRLF and BOM.

use gantry_core::spec::{
    DEFAULT_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DepRef, DepsMode, EngineKind,
    parse_job_file,
};
use gantry_core::{JobId, Outcome};
use std::collections::BTreeMap;

const FULL: &str = r#"---
title: Fleet data model
repo: ../learning_ai_common_plat   # a comment
base: main
engine: command
command: [sh, -c, "make test && echo ok"]
priority: 7
capabilities: [docker, "os=linux"]
deps: [12, fleet-schema]
deps_mode: finished
lock: common-plat
timeout: 1h30m
max_attempts: 4
retry_on: [lost, failed, timed_out]
backoff: 10s
idempotency_key: fleet-data-model
labels:
  team: platform
  sprint: 42
  urgent: true
env:
  RUST_LOG: debug
  PORT: 8080
  RATIO: 1.50
  _private: "x y"
---
ROLE: Senior backend engineer. Implement ...

Second paragraph.
"#;

#[test]
fn full_file_round_trips_every_field() {
    let parsed = parse_job_file("jobs/full.md", FULL).expect("the full example parses");
    assert_eq!(parsed.file, "jobs/full.md");
    let s = &parsed.spec;
    assert_eq!(s.title, "Fleet data model");
    assert_eq!(s.repo, "../learning_ai_common_plat");
    assert_eq!(s.base.as_deref(), Some("main"));
    assert_eq!(s.engine, EngineKind::Command);
    assert_eq!(s.command, ["sh", "-c", "make test && echo ok"]);
    assert_eq!(s.priority, 7);
    assert_eq!(s.capabilities, ["docker", "os=linux"]);
    assert_eq!(
        s.deps,
        [
            DepRef::Id(JobId(12)),
            DepRef::Key("fleet-schema".to_string())
        ]
    );
    assert_eq!(s.deps_mode, DepsMode::Finished);
    assert_eq!(s.lock.as_deref(), Some("common-plat"));
    assert_eq!(s.timeout_ms, Some(90 * 60 * 1000));
    assert_eq!(s.max_attempts, 4);
    assert_eq!(
        s.retry_on,
        [Outcome::Lost, Outcome::Failed, Outcome::TimedOut]
    );
    assert_eq!(s.backoff_ms, 10_000);
    assert_eq!(s.idempotency_key.as_deref(), Some("fleet-data-model"));
    let labels: BTreeMap<String, String> =
        [("team", "platform"), ("sprint", "42"), ("urgent", "true")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(s.labels, labels);
    let env: BTreeMap<String, String> = [
        ("RUST_LOG", "debug"),
        ("PORT", "8080"),
        ("RATIO", "1.50"),
        ("_private", "x y"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(s.env, env);
    assert_eq!(
        s.body,
        "ROLE: Senior backend engineer. Implement ...\n\nSecond paragraph.\n"
    );

    let expected_lines: BTreeMap<String, usize> = [
        ("title", 2),
        ("repo", 3),
        ("base", 4),
        ("engine", 5),
        ("command", 6),
        ("priority", 7),
        ("capabilities", 8),
        ("deps", 9),
        ("deps_mode", 10),
        ("lock", 11),
        ("timeout", 12),
        ("max_attempts", 13),
        ("retry_on", 14),
        ("backoff", 15),
        ("idempotency_key", 16),
        ("labels", 17),
        ("env", 21),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(parsed.field_lines, expected_lines);
}

#[test]
fn spec_survives_a_json_round_trip() {
    // The spec travels to factories as JSON: nothing may be lost on the way.
    let parsed = parse_job_file("full.md", FULL).expect("the full example parses");
    let json = serde_json::to_string(&parsed).expect("serializes");
    let back: gantry_core::ParsedJob = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, parsed);
}

#[test]
fn minimal_file_gets_every_default() {
    let text = "---\ntitle: t\nrepo: /src/r\ncommand: [true]\n---\n";
    let s = parse_job_file("min.md", text).expect("parses").spec;
    assert_eq!(s.base, None);
    assert_eq!(s.engine, EngineKind::Command);
    assert_eq!(s.command, ["true"]);
    assert_eq!(s.priority, DEFAULT_PRIORITY);
    assert_eq!(s.priority, 5);
    assert!(s.capabilities.is_empty());
    assert!(s.deps.is_empty());
    assert_eq!(s.deps_mode, DepsMode::Succeeded);
    assert_eq!(s.lock, None);
    assert_eq!(s.timeout_ms, None);
    assert_eq!(s.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(s.max_attempts, 3);
    assert_eq!(s.retry_on, [Outcome::Lost]);
    assert_eq!(s.backoff_ms, DEFAULT_BACKOFF_MS);
    assert_eq!(s.backoff_ms, 5_000);
    assert_eq!(s.idempotency_key, None);
    assert!(s.labels.is_empty());
    assert!(s.env.is_empty());
    assert_eq!(s.body, "");
}

#[test]
fn empty_values_mean_the_default() {
    let text = "---\ntitle: t\nrepo: /r\ncommand: [x]\nlock:\npriority: ~\nretry_on: null\n---\n";
    let p = parse_job_file("f.md", text).expect("parses");
    assert_eq!(p.spec.lock, None);
    assert_eq!(p.spec.priority, 5);
    assert_eq!(p.spec.retry_on, [Outcome::Lost]);
    // The keys were written, so their lines are known.
    assert_eq!(p.field_lines.get("lock"), Some(&5));
    assert_eq!(p.field_lines.get("retry_on"), Some(&7));
}

#[test]
fn cwd_is_an_alias_of_repo() {
    let text = "---\ntitle: t\ncwd: ./here\ncommand: [x]\n---\n";
    let p = parse_job_file("f.md", text).expect("parses");
    assert_eq!(p.spec.repo, "./here");
    assert_eq!(p.field_lines.get("cwd"), Some(&3));
    assert_eq!(p.field_lines.get("repo"), Some(&3));
    assert_eq!(p.error("repo", "x").line, Some(3));
}

#[test]
fn body_is_kept_verbatim() {
    let body = "\n\n  indented first line\n---\nnot: front matter\n---\n\ttabs\r\nand a CRLF line\r\n\nno newline at the end";
    let text = format!("---\ntitle: t\nrepo: /r\ncommand: [x]\n---\n{body}");
    let p = parse_job_file("f.md", &text).expect("parses");
    assert_eq!(p.spec.body, body);
}

#[test]
fn body_may_be_empty_without_final_newline() {
    let p = parse_job_file("f.md", "---\ntitle: t\nrepo: /r\ncommand: [x]\n---").expect("parses");
    assert_eq!(p.spec.body, "");
    let p = parse_job_file("f.md", "---\ntitle: t\nrepo: /r\ncommand: [x]\n---\n").expect("parses");
    assert_eq!(p.spec.body, "");
}

#[test]
fn crlf_line_endings() {
    let text = "---\r\ntitle: Windows job\r\nrepo: /r\r\ncommand: [make, test]\r\npriority: 9\r\n---\r\nline one\r\nline two\r\n";
    let p = parse_job_file("crlf.md", text).expect("parses");
    assert_eq!(p.spec.title, "Windows job");
    assert_eq!(p.spec.command, ["make", "test"]);
    assert_eq!(p.spec.priority, 9);
    assert_eq!(p.spec.body, "line one\r\nline two\r\n");
    assert_eq!(p.field_lines.get("priority"), Some(&5));
}

#[test]
fn crlf_errors_name_the_right_line() {
    let text = "---\r\ntitle: t\r\nrepo: /r\r\ncommand: [x]\r\npriority: 12\r\n---\r\n";
    let e = parse_job_file("crlf.md", text).expect_err("priority 12 is refused");
    assert_eq!(e.line, Some(5));
    assert_eq!(e.field.as_deref(), Some("priority"));
}

#[test]
fn leading_bom_is_skipped() {
    let text = "\u{feff}---\ntitle: t\nrepo: /r\ncommand: [x]\n---\nbody\n";
    let p = parse_job_file("bom.md", text).expect("parses");
    assert_eq!(p.spec.title, "t");
    assert_eq!(p.spec.body, "body\n");
    assert_eq!(p.field_lines.get("title"), Some(&2));
}

#[test]
fn closing_line_may_have_trailing_spaces() {
    let p = parse_job_file(
        "f.md",
        "--- \ntitle: t\nrepo: /r\ncommand: [x]\n---  \nbody",
    )
    .expect("parses");
    assert_eq!(p.spec.body, "body");
}

#[test]
fn block_lists_and_quoted_strings() {
    let text = r#"---
title: "quoted: with colon"
repo: 'git@github.com:org/repo.git'
command:
  - sh
  - -c
  - |
    echo one
    echo two
deps:
  - 3
  - "7"
capabilities:
  - docker
---
"#;
    let p = parse_job_file("f.md", text).expect("parses");
    assert_eq!(p.spec.title, "quoted: with colon");
    assert_eq!(p.spec.repo, "git@github.com:org/repo.git");
    assert_eq!(p.spec.command, ["sh", "-c", "echo one\necho two\n"]);
    // A quoted number is an idempotency key, not an id.
    assert_eq!(
        p.spec.deps,
        [DepRef::Id(JobId(3)), DepRef::Key("7".to_string())]
    );
    assert_eq!(p.spec.capabilities, ["docker"]);
}

#[test]
fn non_string_argv_items_keep_their_spelling() {
    let text = "---\ntitle: t\nrepo: /r\ncommand: [sleep, 1.50, 0x10, true, -3]\n---\n";
    let p = parse_job_file("f.md", text).expect("parses");
    assert_eq!(p.spec.command, ["sleep", "1.50", "0x10", "true", "-3"]);
}

#[test]
fn yes_and_no_stay_strings() {
    // YAML 1.1 booleans would turn these words into true/false behind the author's back.
    let text = "---\ntitle: yes\nrepo: /r\ncommand: [echo, no, on]\n---\n";
    let p = parse_job_file("f.md", text).expect("parses");
    assert_eq!(p.spec.title, "yes");
    assert_eq!(p.spec.command, ["echo", "no", "on"]);
}

#[test]
fn durations() {
    let cases: &[(&str, u64)] = &[
        ("90s", 90_000),
        ("4h", 4 * 3_600_000),
        ("1h30m", 5_400_000),
        ("1h 30m", 5_400_000),
        ("250ms", 250),
        ("2d", 2 * 86_400_000),
        ("45", 45_000),
        ("\"45\"", 45_000),
    ];
    for (written, ms) in cases {
        let text = format!(
            "---\ntitle: t\nrepo: /r\ncommand: [x]\ntimeout: {written}\nbackoff: {written}\n---\n"
        );
        let s = parse_job_file("f.md", &text)
            .unwrap_or_else(|e| panic!("{written}: {e}"))
            .spec;
        assert_eq!(s.timeout_ms, Some(*ms), "timeout {written}");
        assert_eq!(s.backoff_ms, *ms, "backoff {written}");
    }
}

#[test]
fn zero_backoff_is_allowed() {
    let text = "---\ntitle: t\nrepo: /r\ncommand: [x]\nbackoff: 0s\n---\n";
    assert_eq!(
        parse_job_file("f.md", text)
            .expect("parses")
            .spec
            .backoff_ms,
        0
    );
}

#[test]
fn priority_and_max_attempts_bounds_are_inclusive() {
    for (p, n) in [(0, 1), (9, 100)] {
        let text = format!(
            "---\ntitle: t\nrepo: /r\ncommand: [x]\npriority: {p}\nmax_attempts: {n}\n---\n"
        );
        let s = parse_job_file("f.md", &text).expect("parses").spec;
        assert_eq!(u32::from(s.priority), p);
        assert_eq!(s.max_attempts, n);
    }
}

#[test]
fn retry_on_accepts_gates_failed() {
    let text = "---\ntitle: t\nrepo: /r\ncommand: [x]\nretry_on: [gates_failed, lost]\n---\n";
    let s = parse_job_file("f.md", text).expect("parses").spec;
    assert_eq!(s.retry_on, [Outcome::GatesFailed, Outcome::Lost]);
}

#[test]
fn empty_retry_on_means_never_retry() {
    let text = "---\ntitle: t\nrepo: /r\ncommand: [x]\nretry_on: []\n---\n";
    assert!(
        parse_job_file("f.md", text)
            .expect("parses")
            .spec
            .retry_on
            .is_empty()
    );
}

#[test]
fn repeated_list_items_are_kept_once() {
    let text = "---\ntitle: t\nrepo: /r\ncommand: [x]\nretry_on: [failed, failed, lost]\ndeps: [1, 1, a, a]\ncapabilities: [gpu, gpu]\n---\n";
    let s = parse_job_file("f.md", text).expect("parses").spec;
    assert_eq!(s.retry_on, [Outcome::Failed, Outcome::Lost]);
    assert_eq!(s.deps, [DepRef::Id(JobId(1)), DepRef::Key("a".to_string())]);
    assert_eq!(s.capabilities, ["gpu"]);
}

#[test]
fn comments_and_blank_lines_in_front_matter() {
    let text = "---\n# leading comment\n\ntitle: t   # trailing\nrepo: /r\n\ncommand: [x]\n---\n";
    let p = parse_job_file("f.md", text).expect("parses");
    assert_eq!(p.field_lines.get("title"), Some(&4));
    assert_eq!(p.field_lines.get("command"), Some(&7));
}

#[test]
fn parsed_job_error_names_the_field_line() {
    let p = parse_job_file("f.md", FULL).expect("parses");
    let e = p.error("deps", "unknown dependency \"fleet-schema\"");
    assert_eq!(e.file, "f.md");
    assert_eq!(e.line, Some(9));
    assert_eq!(e.field.as_deref(), Some("deps"));
    assert_eq!(
        e.to_string(),
        "f.md:9: field `deps`: unknown dependency \"fleet-schema\""
    );
    // A field that was not written has no line.
    assert_eq!(p.error("nope", "m").line, None);
}
