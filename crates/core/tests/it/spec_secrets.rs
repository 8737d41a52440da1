//! `secrets:` of a job file: names only, each an environment variable name, bounded,
//! distinct, and apart from `env`; every refusal names the field and the line.

use gantry_core::SpecError;
use gantry_core::spec::{MAX_SECRET_NAME_BYTES, MAX_SECRETS, parse_job_file};

/// The fields every valid command job needs, on lines 2, 3 and 4.
const BASE: &str = "title: t\nrepo: /src/r\ncommand: [x]\n";

fn parse(extra: &str) -> Result<gantry_core::ParsedJob, SpecError> {
    parse_job_file("jobs/s.md", &format!("---\n{BASE}{extra}---\nbody\n"))
}

/// The error `extra` (from line 5) must give: its field is `secrets`, its line `line`,
/// and its message holds each of `needles`.
fn refused(extra: &str, line: usize, needles: &[&str]) {
    let e = match parse(extra) {
        Ok(p) => panic!("expected an error, got {:?}", p.spec.secrets),
        Err(e) => e,
    };
    assert_eq!(e.field.as_deref(), Some("secrets"), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    for needle in needles {
        assert!(e.message.contains(needle), "{e} should contain {needle:?}");
    }
    assert!(
        e.to_string().starts_with(&format!("jobs/s.md:{line}")),
        "{e}"
    );
}

#[test]
fn names_are_kept_in_order_and_only_names() {
    let p = parse("secrets: [ANTHROPIC_API_KEY, GITHUB_TOKEN, _x1]\n").expect("parses");
    assert_eq!(p.spec.secrets, ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "_x1"]);
    assert_eq!(p.field_lines.get("secrets"), Some(&5));
    let block = parse("secrets:\n  - A_TOKEN\n  - B_TOKEN\n").expect("parses");
    assert_eq!(block.spec.secrets, ["A_TOKEN", "B_TOKEN"]);
    // The spec travels as JSON: the names go with it, and a spec without secrets
    // keeps the shape it had before the field existed.
    let json = serde_json::to_value(&p.spec).expect("json");
    assert_eq!(
        json["secrets"],
        serde_json::json!(["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "_x1"])
    );
    let none = parse("").expect("parses").spec;
    assert!(none.secrets.is_empty());
    assert!(
        serde_json::to_value(&none)
            .expect("json")
            .get("secrets")
            .is_none()
    );
    assert!(
        parse("secrets: []\n")
            .expect("parses")
            .spec
            .secrets
            .is_empty()
    );
}

#[test]
fn a_bad_name_names_its_line() {
    refused(
        "secrets:\n  - GOOD_ONE\n  - bad-name\n",
        7,
        &["invalid environment variable name \"bad-name\""],
    );
    refused("secrets: [1TOKEN]\n", 5, &["\"1TOKEN\""]);
    refused(
        "secrets:\n  - GANTRY_TOKEN\n",
        6,
        &["\"GANTRY_TOKEN\" is reserved"],
    );
    refused(
        "secrets:\n  - ''\n",
        6,
        &["invalid environment variable name"],
    );
    refused(
        "secrets:\n  - 12\n",
        6,
        &["expected a secret name", "integer `12`"],
    );
    refused("secrets:\n  - {A: b}\n", 6, &["expected a secret name"]);
}

#[test]
fn a_value_instead_of_a_list_is_refused() {
    // A job file that tries to carry a value is told the field takes names.
    refused(
        "secrets: {DEMO_TOKEN: hunter2hunter2}\n",
        5,
        &["a list of secret names"],
    );
    refused(
        "secrets: DEMO_TOKEN\n",
        5,
        &["a list of secret names", "\"DEMO_TOKEN\""],
    );
}

#[test]
fn duplicates_name_both_lines() {
    refused(
        "secrets:\n  - A_TOKEN\n  - B_TOKEN\n  - A_TOKEN\n",
        8,
        &["duplicate secret \"A_TOKEN\"", "first listed on line 6"],
    );
}

#[test]
fn count_and_length_are_bounded() {
    let names: Vec<String> = (0..=MAX_SECRETS).map(|i| format!("S{i}")).collect();
    refused(
        &format!("secrets: [{}]\n", names.join(", ")),
        5,
        &[
            &format!("{} secrets are listed", MAX_SECRETS + 1),
            "at most 32",
        ],
    );
    let ok: Vec<String> = (0..MAX_SECRETS).map(|i| format!("S{i}")).collect();
    assert_eq!(
        parse(&format!("secrets: [{}]\n", ok.join(", ")))
            .expect("the maximum is allowed")
            .spec
            .secrets
            .len(),
        MAX_SECRETS
    );
    let long = "A".repeat(MAX_SECRET_NAME_BYTES + 1);
    refused(
        &format!("secrets:\n  - {long}\n"),
        6,
        &["129 bytes long", "at most 128"],
    );
    let longest = "A".repeat(MAX_SECRET_NAME_BYTES);
    assert!(parse(&format!("secrets: [{longest}]\n")).is_ok());
}

#[test]
fn a_name_set_in_env_too_is_refused() {
    refused(
        "env:\n  DEMO_TOKEN: visible\nsecrets:\n  - OTHER\n  - DEMO_TOKEN\n",
        9,
        &["\"DEMO_TOKEN\" is both a secret and set in `env`"],
    );
}
