//! Redaction leaves no value recoverable and leaves clean text untouched.

use std::borrow::Cow;

use gantry_secrets::{Redactor, Scanner};

use crate::{ALNUM, fake};

fn redactor(env: &[&str]) -> Redactor {
    Redactor::new(Scanner::builtin(), env)
}

#[test]
fn clean_text_is_borrowed() {
    let r = redactor(&["a-literal-value-123"]);
    let text = "cargo test -p gantry-secrets: 42 passed, the key is in the vault";
    assert!(matches!(r.redact(text), Cow::Borrowed(_)));
    assert!(matches!(r.redact(""), Cow::Borrowed(_)));
}

#[test]
fn a_value_twice_adjacent_and_at_both_ends_is_gone() {
    let t = format!("ghp_{}", fake(ALNUM, 36, 1));
    let u = format!("glpat-{}", fake(ALNUM, 20, 2));
    let text = format!("{t} then {t},{u} {t}");
    let out = redactor(&[]).redact(&text);
    assert_eq!(
        out,
        "[REDACTED:github-token] then [REDACTED:github-token],[REDACTED:gitlab-token] [REDACTED:github-token]"
    );
}

#[test]
fn multibyte_text_around_a_value_is_kept() {
    let t = format!("sk-ant-api03-{}AA", fake(ALNUM, 93, 3));
    let text = format!("clé « {t} » 日本語 ✓");
    let out = redactor(&[]).redact(&text);
    assert_eq!(out, "clé « [REDACTED:anthropic-api-key] » 日本語 ✓");
}

#[test]
fn literal_values_are_redacted_as_env_and_short_ones_ignored() {
    let value = "s3cr3t-value-from-env";
    let r = redactor(&[value, "short", ""]);
    let text = format!("echo {value}; echo short; echo {value}{value}");
    assert_eq!(
        r.redact(&text),
        "echo [REDACTED:env]; echo short; echo [REDACTED:env][REDACTED:env]"
    );
}

#[test]
fn a_literal_is_also_found_json_escaped() {
    let value = "pa\"ss\\word-12345";
    let r = redactor(&[value]);
    let json = r#"{"text":"the value is pa\"ss\\word-12345 ok"}"#;
    let out = r.redact(json);
    assert_eq!(out, r#"{"text":"the value is [REDACTED:env] ok"}"#);
}

#[test]
fn overlapping_matches_are_merged_into_one_replacement() {
    let t = format!("ghp_{}", fake(ALNUM, 36, 4));
    // The literal covers the token and more, on both sides.
    let literal = format!("x{t}y");
    let r = redactor(&[literal.as_str()]);
    let text = format!("[{literal}] and {t}");
    assert_eq!(
        r.redact(&text),
        "[[REDACTED:env]] and [REDACTED:github-token]"
    );
}

#[test]
fn a_private_key_in_a_json_event_is_gone_whole() {
    let body: Vec<String> = (0..8).map(|i| fake(ALNUM, 64, 10 + i)).collect();
    let event = format!(
        r#"{{"kind":"tool.result","text":"-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n"}}"#,
        body.join("\\n")
    );
    let out = redactor(&[]).redact(&event);
    for line in &body {
        assert!(!out.contains(line.as_str()), "{out}");
    }
    assert_eq!(
        out,
        r#"{"kind":"tool.result","text":"[REDACTED:private-key]\n"}"#
    );
}

#[test]
fn no_value_of_the_samples_survives_redaction() {
    let values = [
        format!("AKIA{}", fake("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 5)),
        format!("xoxb-123456789012-{}", fake(ALNUM, 24, 6)),
        format!("sk_live_{}", fake(ALNUM, 30, 7)),
        format!(
            "hf_{}",
            fake(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                34,
                8
            )
        ),
    ];
    let text = values.join("\n");
    let out = redactor(&[]).redact(&text);
    for v in &values {
        assert!(!out.contains(v.as_str()), "{out}");
    }
    assert_eq!(out.matches("[REDACTED:").count(), values.len());
}

#[test]
fn a_private_key_deep_inside_a_long_line_is_gone() {
    let body: Vec<String> = (0..4).map(|i| fake(ALNUM, 64, 30 + i)).collect();
    let padding = "x".repeat(200_000);
    let line = format!(
        r#"{{"pad":"{padding}","text":"-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----"}}"#,
        body.join("\\n")
    );
    let out = redactor(&[]).redact(&line);
    for part in &body {
        assert!(!out.contains(part.as_str()));
    }
    assert!(out.ends_with(r#""text":"[REDACTED:private-key]"}"#));
}
