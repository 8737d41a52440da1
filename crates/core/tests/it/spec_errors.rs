//! Job files that are refused: every error names the file, the line, the field and the
//! value at fault.

use gantry_core::SpecError;
use gantry_core::spec::parse_job_file;

/// The fields every valid command job needs, on lines 2, 3 and 4.
const BASE: &str = "title: t\nrepo: /src/r\ncommand: [x]\n";

/// Parses `text` and returns the error it must give.
fn refuse(text: &str) -> SpecError {
    match parse_job_file("jobs/bad.md", text) {
        Ok(p) => panic!("expected an error, got {:#?}", p.spec),
        Err(e) => e,
    }
}

/// Parses a file whose front matter is `front` and checks the error's field, line and
/// that its message contains each of `needles`.
fn check(front: &str, field: Option<&str>, line: usize, needles: &[&str]) -> SpecError {
    let e = refuse(&format!("---\n{front}---\nbody\n"));
    check_err(&e, field, line, needles);
    e
}

fn check_err(e: &SpecError, field: Option<&str>, line: usize, needles: &[&str]) {
    assert_eq!(e.file, "jobs/bad.md", "{e}");
    assert_eq!(e.field.as_deref(), field, "field of: {e}");
    assert_eq!(e.line, Some(line), "line of: {e}");
    for needle in needles {
        assert!(
            e.message.contains(needle),
            "message {:?} should contain {needle:?}",
            e.message
        );
    }
    // The rendered error leads with file and line, so a person can jump there.
    assert!(
        e.to_string().starts_with(&format!("jobs/bad.md:{line}")),
        "{e}"
    );
}

/// `BASE` plus one extra line (line 5).
fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

// ---- the file's shape ----

#[test]
fn missing_opening_line() {
    let e = refuse("title: t\nrepo: /r\n---\n");
    check_err(
        &e,
        None,
        1,
        &["must start with a line `---`", "\"title: t\""],
    );
}

#[test]
fn leading_blank_line_before_front_matter() {
    let e = refuse("\n---\ntitle: t\n---\n");
    check_err(&e, None, 1, &["must start with a line `---`", "\"\""]);
}

#[test]
fn empty_file() {
    let e = refuse("");
    check_err(&e, None, 1, &["must start with a line `---`", "empty"]);
}

#[test]
fn unterminated_front_matter() {
    let e = refuse("---\ntitle: t\nrepo: /r\ncommand: [x]\n");
    check_err(&e, None, 1, &["unterminated front matter", "closing `---`"]);
}

#[test]
fn only_an_opening_line() {
    let e = refuse("---");
    check_err(&e, None, 1, &["unterminated front matter"]);
}

#[test]
fn yaml_syntax_error_gives_the_file_line() {
    // Line 4 of the file (line 3 of the YAML) has the stray indentation.
    let e = check(
        "title: t\nrepo: /r\n   bad: indent\ncommand: [x]\n",
        None,
        4,
        &["invalid YAML"],
    );
    assert!(!e.message.contains('\n'), "{e}");
}

#[test]
fn yaml_unclosed_flow_list() {
    let e = refuse("---\ntitle: t\nrepo: /r\ncommand: [x, y\n---\n");
    assert_eq!(e.field, None);
    assert!(e.message.contains("invalid YAML"), "{e}");
    let line = e.line.expect("a YAML error has a line");
    assert!(
        (4..=6).contains(&line),
        "line {line} should point at or after the list: {e}"
    );
}

#[test]
fn front_matter_is_a_list() {
    check(
        "- a\n- b\n",
        None,
        2,
        &["must be a YAML mapping", "a list", "[\"a\", \"b\"]"],
    );
}

#[test]
fn front_matter_is_a_scalar() {
    check(
        "just words\n",
        None,
        2,
        &["must be a YAML mapping", "\"just words\""],
    );
}

#[test]
fn empty_front_matter_misses_title() {
    check("", Some("title"), 1, &["missing title"]);
}

// ---- keys ----

#[test]
fn duplicate_key() {
    check(
        &with("title: again\n"),
        Some("title"),
        5,
        &["duplicate field `title`", "line 2"],
    );
}

#[test]
fn repo_and_cwd_together() {
    check(
        &with("cwd: /other\n"),
        Some("cwd"),
        5,
        &["`repo` (line 3)", "`cwd`", "keep one"],
    );
}

#[test]
fn unknown_field() {
    let e = check(
        &with("colour: blue\n"),
        Some("colour"),
        5,
        &["unknown field `colour`"],
    );
    // The message lists what is allowed.
    for known in [
        "title",
        "repo",
        "cwd",
        "command",
        "retry_on",
        "idempotency_key",
        "env",
    ] {
        assert!(e.message.contains(known), "{e} should list {known}");
    }
}

#[test]
fn numeric_key_is_an_unknown_field() {
    check(&with("42: x\n"), Some("42"), 5, &["unknown field `42`"]);
}

#[test]
fn complex_key() {
    check(
        &with("? [a, b]\n: x\n"),
        None,
        5,
        &["expected a name as key", "[\"a\", \"b\"]"],
    );
}

// ---- title ----

#[test]
fn missing_title() {
    check(
        "repo: /r\ncommand: [x]\n",
        Some("title"),
        1,
        &["missing title"],
    );
}

#[test]
fn null_title_points_at_its_line() {
    check(
        "repo: /r\ntitle:\ncommand: [x]\n",
        Some("title"),
        3,
        &["missing title"],
    );
}

#[test]
fn empty_title() {
    check(
        "title: '  '\nrepo: /r\ncommand: [x]\n",
        Some("title"),
        2,
        &["must not be empty", "\"  \""],
    );
}

#[test]
fn title_wrong_type() {
    check(
        "title: 42\nrepo: /r\ncommand: [x]\n",
        Some("title"),
        2,
        &["expected a string", "integer `42`"],
    );
}

#[test]
fn title_is_a_list() {
    check(
        "title: [a, b]\nrepo: /r\ncommand: [x]\n",
        Some("title"),
        2,
        &["expected a string", "a list", "[\"a\", \"b\"]"],
    );
}

// ---- repo ----

#[test]
fn missing_repo() {
    check(
        "title: t\ncommand: [x]\n",
        Some("repo"),
        1,
        &["missing repo", "cwd"],
    );
}

#[test]
fn repo_wrong_type() {
    check(
        "title: t\nrepo: {path: /r}\ncommand: [x]\n",
        Some("repo"),
        3,
        &["expected a string", "a map", "path"],
    );
}

#[test]
fn empty_repo() {
    check(
        "title: t\nrepo: \"\"\ncommand: [x]\n",
        Some("repo"),
        3,
        &["must not be empty"],
    );
}

#[test]
fn cwd_wrong_type() {
    check(
        "title: t\ncwd: true\ncommand: [x]\n",
        Some("cwd"),
        3,
        &["expected a string", "boolean `true`"],
    );
}

#[test]
fn base_wrong_type() {
    check(
        &with("base: 1.5\n"),
        Some("base"),
        5,
        &["expected a string", "number `1.5`"],
    );
}

// ---- engine ----

#[test]
fn unknown_engine() {
    check(
        &with("engine: gpt-pilot\n"),
        Some("engine"),
        5,
        &[
            "unknown engine \"gpt-pilot\"",
            "command, script, claude-code, codex",
        ],
    );
}

#[test]
fn engine_wrong_type() {
    check(
        &with("engine: [command]\n"),
        Some("engine"),
        5,
        &["expected an engine name", "a list"],
    );
}

// ---- command ----

#[test]
fn command_as_plain_string() {
    check(
        "title: t\nrepo: /r\ncommand: make test\n",
        Some("command"),
        4,
        &[
            "expected an argv list",
            "\"make test\"",
            "[sh, -c, \"make test\"]",
        ],
    );
}

#[test]
fn missing_command() {
    check(
        "title: t\nrepo: /r\n",
        Some("command"),
        1,
        &["missing command", "argv list"],
    );
}

#[test]
fn missing_command_points_at_engine() {
    // With the key written empty, the error points at it.
    check(
        "title: t\nrepo: /r\nengine: command\ncommand:\n",
        Some("command"),
        5,
        &["missing command"],
    );
}

#[test]
fn empty_command() {
    check(
        "title: t\nrepo: /r\ncommand: []\n",
        Some("command"),
        4,
        &["empty list `[]`"],
    );
}

#[test]
fn command_item_is_a_map() {
    check(
        "title: t\nrepo: /r\ncommand:\n  - sh\n  - {a: 1}\n",
        Some("command"),
        6,
        &["argument 1", "a map", "{\"a\": 1}"],
    );
}

#[test]
fn command_item_is_null() {
    check(
        "title: t\nrepo: /r\ncommand: [sh, ~]\n",
        Some("command"),
        4,
        &["argument 1", "found null"],
    );
}

#[test]
fn command_program_is_empty() {
    check(
        "title: t\nrepo: /r\ncommand: [\"\", x]\n",
        Some("command"),
        4,
        &["argument 0", "must not be empty"],
    );
}

#[test]
fn command_with_nul_byte() {
    check(
        "title: t\nrepo: /r\ncommand: [sh, \"a\\0b\"]\n",
        Some("command"),
        4,
        &["NUL", "argument 1"],
    );
}

#[test]
fn command_is_a_map() {
    check(
        "title: t\nrepo: /r\ncommand: {run: x}\n",
        Some("command"),
        4,
        &["argv list", "a map"],
    );
}

// ---- priority ----

#[test]
fn priority_too_high() {
    check(
        &with("priority: 12\n"),
        Some("priority"),
        5,
        &["priority 12 is out of range 0..=9"],
    );
}

#[test]
fn priority_negative() {
    check(
        &with("priority: -1\n"),
        Some("priority"),
        5,
        &["priority -1 is out of range 0..=9"],
    );
}

#[test]
fn priority_huge() {
    check(
        &with("priority: 99999999999999999999\n"),
        Some("priority"),
        5,
        // Too big for an integer, YAML reads it as a float: the message still shows it as written.
        &["expected an integer in 0..=9", "`99999999999999999999`"],
    );
}

#[test]
fn priority_wrong_type() {
    check(
        &with("priority: high\n"),
        Some("priority"),
        5,
        &["expected an integer in 0..=9", "\"high\""],
    );
}

#[test]
fn priority_float() {
    check(
        &with("priority: 7.5\n"),
        Some("priority"),
        5,
        &["expected an integer", "number `7.5`"],
    );
}

// ---- capabilities ----

#[test]
fn capability_with_bad_name() {
    check(
        &with("capabilities: [docker, \"has space\"]\n"),
        Some("capabilities"),
        5,
        &["invalid capability \"has space\""],
    );
}

#[test]
fn capability_with_empty_value() {
    check(
        &with("capabilities:\n  - gpu\n  - os=\n"),
        Some("capabilities"),
        7,
        &["invalid capability \"os=\""],
    );
}

#[test]
fn capabilities_not_a_list() {
    check(
        &with("capabilities: docker\n"),
        Some("capabilities"),
        5,
        &["a list of capabilities", "\"docker\""],
    );
}

#[test]
fn capability_wrong_type() {
    check(
        &with("capabilities: [7]\n"),
        Some("capabilities"),
        5,
        &["capability string", "integer `7`"],
    );
}

// ---- deps ----

#[test]
fn dep_id_zero() {
    check(&with("deps: [0]\n"), Some("deps"), 5, &["invalid job id 0"]);
}

#[test]
fn dep_id_negative() {
    check(
        &with("deps:\n  - 4\n  - -2\n"),
        Some("deps"),
        7,
        &["invalid job id -2"],
    );
}

#[test]
fn dep_wrong_type() {
    check(
        &with("deps: [{id: 3}]\n"),
        Some("deps"),
        5,
        &["job id (integer) or an idempotency key", "{\"id\": 3}"],
    );
}

#[test]
fn dep_empty_key() {
    check(
        &with("deps: [\"\"]\n"),
        Some("deps"),
        5,
        &["empty idempotency key"],
    );
}

#[test]
fn deps_not_a_list() {
    check(
        &with("deps: 3\n"),
        Some("deps"),
        5,
        &["a list of job ids", "integer `3`"],
    );
}

// ---- deps_mode ----

#[test]
fn unknown_deps_mode() {
    check(
        &with("deps_mode: all\n"),
        Some("deps_mode"),
        5,
        &["unknown deps_mode \"all\"", "succeeded", "finished"],
    );
}

#[test]
fn deps_mode_wrong_type() {
    check(
        &with("deps_mode: true\n"),
        Some("deps_mode"),
        5,
        &["boolean `true`"],
    );
}

// ---- lock ----

#[test]
fn empty_lock() {
    check(
        &with("lock: \"\"\n"),
        Some("lock"),
        5,
        &["`lock` must not be empty"],
    );
}

#[test]
fn lock_wrong_type() {
    check(
        &with("lock: 3\n"),
        Some("lock"),
        5,
        &["expected a string", "integer `3`"],
    );
}

// ---- timeout ----

#[test]
fn timeout_bad_duration() {
    check(
        &with("timeout: soonish\n"),
        Some("timeout"),
        5,
        &["invalid duration \"soonish\" for timeout", "90s"],
    );
}

#[test]
fn timeout_unknown_unit() {
    check(
        &with("timeout: 5 parsecs\n"),
        Some("timeout"),
        5,
        &["invalid duration \"5 parsecs\""],
    );
}

#[test]
fn timeout_zero_seconds() {
    check(
        &with("timeout: 0\n"),
        Some("timeout"),
        5,
        &["timeout 0 is zero"],
    );
}

#[test]
fn timeout_zero_duration() {
    check(
        &with("timeout: 0s\n"),
        Some("timeout"),
        5,
        &["timeout 0s is zero"],
    );
}

#[test]
fn timeout_negative() {
    check(
        &with("timeout: -5\n"),
        Some("timeout"),
        5,
        &["timeout -5 is negative"],
    );
}

#[test]
fn timeout_float() {
    check(
        &with("timeout: 1.5\n"),
        Some("timeout"),
        5,
        &["a duration like `90s`", "number `1.5`"],
    );
}

#[test]
fn timeout_too_long() {
    check(
        &with("timeout: 400d\n"),
        Some("timeout"),
        5,
        &["timeout 400d is too long"],
    );
}

#[test]
fn timeout_huge_integer() {
    check(
        &with("timeout: 99999999999999999999\n"),
        Some("timeout"),
        5,
        &["`99999999999999999999`"],
    );
}

// ---- max_attempts ----

#[test]
fn max_attempts_zero() {
    check(
        &with("max_attempts: 0\n"),
        Some("max_attempts"),
        5,
        &["max_attempts 0 is out of range 1..=100"],
    );
}

#[test]
fn max_attempts_too_many() {
    check(
        &with("max_attempts: 101\n"),
        Some("max_attempts"),
        5,
        &["max_attempts 101 is out of range 1..=100"],
    );
}

#[test]
fn max_attempts_wrong_type() {
    check(
        &with("max_attempts: \"3\"\n"),
        Some("max_attempts"),
        5,
        &["expected an integer in 1..=100", "string \"3\""],
    );
}

// ---- retry_on ----

#[test]
fn retry_on_not_retryable_outcome() {
    check(
        &with("retry_on: [failed, killed]\n"),
        Some("retry_on"),
        5,
        &[
            "outcome \"killed\" cannot be retried",
            "lost, failed, timed_out",
        ],
    );
}

#[test]
fn retry_on_unknown_outcome() {
    check(
        &with("retry_on:\n  - lost\n  - crashed\n"),
        Some("retry_on"),
        7,
        &["\"crashed\" cannot be retried"],
    );
}

#[test]
fn retry_on_plain_string() {
    check(
        &with("retry_on: failed\n"),
        Some("retry_on"),
        5,
        &["a list of outcomes", "\"failed\""],
    );
}

#[test]
fn retry_on_wrong_item_type() {
    check(
        &with("retry_on: [1]\n"),
        Some("retry_on"),
        5,
        &["integer `1`"],
    );
}

// ---- backoff ----

#[test]
fn backoff_bad_duration() {
    check(
        &with("backoff: later\n"),
        Some("backoff"),
        5,
        &["invalid duration \"later\" for backoff"],
    );
}

#[test]
fn backoff_wrong_type() {
    check(
        &with("backoff: [5s]\n"),
        Some("backoff"),
        5,
        &["a duration", "a list"],
    );
}

// ---- idempotency_key ----

#[test]
fn empty_idempotency_key() {
    check(
        &with("idempotency_key: \" \"\n"),
        Some("idempotency_key"),
        5,
        &["must not be empty", "\" \""],
    );
}

#[test]
fn idempotency_key_wrong_type() {
    check(
        &with("idempotency_key: [a]\n"),
        Some("idempotency_key"),
        5,
        &["expected a string", "a list"],
    );
}

// ---- labels ----

#[test]
fn labels_not_a_map() {
    check(
        &with("labels: [a, b]\n"),
        Some("labels"),
        5,
        &["a map of names to values", "a list"],
    );
}

#[test]
fn label_value_is_a_list() {
    check(
        &with("labels:\n  team: platform\n  tags: [a, b]\n"),
        Some("labels"),
        7,
        &["\"tags\"", "a list"],
    );
}

#[test]
fn label_value_is_null() {
    check(
        &with("labels:\n  team:\n"),
        Some("labels"),
        6,
        &["\"team\"", "found null"],
    );
}

#[test]
fn duplicate_label() {
    check(
        &with("labels:\n  team: a\n  team: b\n"),
        Some("labels"),
        7,
        &["duplicate labels entry \"team\"", "line 6"],
    );
}

#[test]
fn empty_label_name() {
    check(
        &with("labels: {\"\": x}\n"),
        Some("labels"),
        5,
        &["label names must not be empty"],
    );
}

// ---- env ----

#[test]
fn env_name_starting_with_digit() {
    check(
        &with("env:\n  1X: a\n"),
        Some("env"),
        6,
        &["invalid environment variable name \"1X\""],
    );
}

#[test]
fn env_name_with_dash() {
    check(
        &with("env: {A-B: a}\n"),
        Some("env"),
        5,
        &["invalid environment variable name \"A-B\""],
    );
}

#[test]
fn env_reserved_name() {
    check(
        &with("env:\n  FOO: 1\n  GANTRY_JOB_ID: 7\n"),
        Some("env"),
        7,
        &["\"GANTRY_JOB_ID\" is reserved"],
    );
}

#[test]
fn env_value_is_a_map() {
    check(
        &with("env:\n  FOO: {a: b}\n"),
        Some("env"),
        6,
        &["\"FOO\"", "a map"],
    );
}

#[test]
fn env_not_a_map() {
    check(
        &with("env: FOO=1\n"),
        Some("env"),
        5,
        &["a map of names to values", "\"FOO=1\""],
    );
}

#[test]
fn env_duplicate_name() {
    check(
        &with("env:\n  FOO: 1\n  FOO: 2\n"),
        Some("env"),
        7,
        &["duplicate env entry \"FOO\"", "line 6"],
    );
}

#[test]
fn env_value_with_nul_byte() {
    check(
        &with("env:\n  FOO: \"a\\0b\"\n"),
        Some("env"),
        6,
        &["\"FOO\"", "NUL"],
    );
}

#[test]
fn first_error_in_file_order_wins() {
    // Two bad fields: the one written first is reported.
    check(
        &with("priority: 10\nengine: codex\n"),
        Some("priority"),
        5,
        &["priority 10"],
    );
}
