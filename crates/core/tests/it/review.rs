//! AI review requests in job files and the reviewer's verdict read robustly from its
//! final message (issue 11).

use gantry_core::EngineKind;
use gantry_core::review::{
    DEFAULT_THRESHOLD, MAX_FINDINGS, ReviewChoice, Severity, VerdictError, parse_verdict,
};
use gantry_core::spec::parse_job_file;

const BASE: &str = "title: t\nrepo: /src/r\ncommand: [x]\n";

fn parse(front: &str) -> Result<gantry_core::JobSpec, gantry_core::SpecError> {
    parse_job_file("jobs/r.md", &format!("---\n{BASE}{front}---\nbody\n")).map(|p| p.spec)
}

#[test]
fn a_review_request_parses_with_its_defaults() {
    let spec = parse(
        "review: { engine: claude-code, model: claude-sonnet-4-5, instructions: Look for races. }\n",
    )
    .expect("valid");
    let ReviewChoice::Inline(r) = spec.review else {
        panic!("inline: {:?}", spec.review);
    };
    assert_eq!(r.engine, EngineKind::ClaudeCode);
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(r.threshold, DEFAULT_THRESHOLD);
    assert_eq!(r.instructions.as_deref(), Some("Look for races."));
    assert_eq!(
        parse("review: careful\n").expect("profile").review,
        ReviewChoice::Profile("careful".into())
    );
    let scripted = parse(
        "review:\n  engine: script\n  threshold: 0.5\n  steps:\n    - say: '{\"score\": 1, \"verdict\": \"approve\", \"findings\": []}'\n",
    )
    .expect("a script reviewer");
    let ReviewChoice::Inline(r) = scripted.review else {
        panic!("inline");
    };
    assert_eq!(
        (r.engine, r.threshold, r.steps.len()),
        (EngineKind::Script, 0.5, 1)
    );
}

#[test]
fn bad_review_requests_name_the_key() {
    let cases = [
        (
            "review: { engine: command }\n",
            "`engine`: `command` cannot review",
        ),
        (
            "review: { engine: codex, threshold: 1.5 }\n",
            "`threshold`: 1.5 is not within 0..=1",
        ),
        (
            "review: { engine: codex, treshold: 0.5 }\n",
            "`treshold`: unknown key",
        ),
        ("review: { threshold: 0.5 }\n", "`engine`: missing `engine`"),
        (
            "review: { engine: script }\n",
            "`steps`: the script engine reviews by its steps",
        ),
        (
            "review: { engine: codex, steps: [{say: hi}] }\n",
            "only the script engine takes steps",
        ),
        ("review: [codex]\n", "expected a map"),
        ("review: 'two words'\n", "invalid profile name"),
    ];
    for (front, needle) in cases {
        let e = parse(front).expect_err(front);
        assert_eq!(e.field.as_deref(), Some("review"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(
            e.message.contains(needle),
            "{front}: {:?} lacks {needle:?}",
            e.message
        );
    }
}

#[test]
fn the_verdict_is_the_last_json_object_with_a_score() {
    let message = r#"I looked at the diff. An example of the format is {"score": 0.0}.

```json
{"score": 0.92, "verdict": "approve", "findings": [
  {"file": "src/lib.rs", "line": 12, "severity": "low", "message": "Name this {thing} better"},
  "a bare remark",
  {"severity": "CRITICAL", "message": "unbounded } loop"}
]}
```
Thanks!"#;
    let v = parse_verdict(message).expect("verdict");
    assert_eq!(v.score, 0.92);
    assert_eq!(v.verdict, "approve");
    assert_eq!(v.findings.len(), 3);
    assert_eq!(v.findings[0].file.as_deref(), Some("src/lib.rs"));
    assert_eq!(v.findings[0].line, Some(12));
    assert_eq!(v.findings[0].severity, Severity::Low);
    assert_eq!(v.findings[1].severity, Severity::Medium);
    assert_eq!(v.findings[2].severity, Severity::High);
    assert!(v.passes(0.9) && !v.passes(0.95));
}

#[test]
fn broken_verdicts_are_reasons_not_crashes() {
    assert_eq!(
        parse_verdict("Looks good to me!"),
        Err(VerdictError::Missing)
    );
    assert_eq!(parse_verdict(""), Err(VerdictError::Missing));
    assert_eq!(
        parse_verdict(r#"{"verdict": "approve"}"#),
        Err(VerdictError::Missing),
        "an object without a score is no verdict"
    );
    let cases = [
        (r#"{"score": 7, "verdict": "approve"}"#, "not within 0..=1"),
        (r#"{"score": "high"}"#, "not a number"),
        (r#"{"score": null}"#, "not a number"),
        (
            r#"{"score": 0.5, "findings": "none"}"#,
            "findings is not a list",
        ),
    ];
    for (text, needle) in cases {
        match parse_verdict(text) {
            Err(VerdictError::Malformed(m)) => assert!(m.contains(needle), "{text}: {m}"),
            other => panic!("{text}: {other:?}"),
        }
    }
    // Truncated output, unbalanced braces and strings full of braces.
    assert_eq!(
        parse_verdict(r#"{"score": 0.9, "findings": ["#),
        Err(VerdictError::Missing)
    );
    assert_eq!(parse_verdict("}}}{{{"), Err(VerdictError::Missing));
    let v = parse_verdict(r#"{"score": "0.75", "note": "\"}{\""}"#).expect("lenient score");
    assert_eq!(v.score, 0.75);
}

#[test]
fn a_flood_of_findings_is_capped_and_counted() {
    let many: Vec<String> = (0..MAX_FINDINGS + 5)
        .map(|i| format!(r#"{{"message": "finding {i}"}}"#))
        .collect();
    let text = format!(r#"{{"score": 0.1, "findings": [{}]}}"#, many.join(","));
    let v = parse_verdict(&text).expect("verdict");
    assert_eq!(v.findings.len(), MAX_FINDINGS);
    assert_eq!(v.findings_dropped, 5);
}
