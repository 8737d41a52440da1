//! Fix-round prompts name every failure with capped quotes, and the reason a job fails
//! with after its last round (issue 11).

use gantry_core::fix::{FixReason, MAX_LISTED, MAX_PROMPT, MAX_QUOTED_OUTPUT, prompt};
use gantry_core::review::{Finding, Severity};

fn gate(output: &str) -> FixReason {
    FixReason::Gate {
        name: "test".into(),
        command: "cargo test".into(),
        why: "exited 101".into(),
        output_tail: output.into(),
    }
}

#[test]
fn a_prompt_names_each_gate_its_command_and_its_output() {
    let review = FixReason::Review {
        score: Some(0.4),
        threshold: 0.9,
        why: None,
        findings: vec![Finding {
            file: Some("src/lib.rs".into()),
            line: Some(3),
            severity: Severity::High,
            message: "the lock is never released".into(),
        }],
    };
    let p = prompt(1, 2, &[gate("test it::adds ... FAILED\n"), review]);
    for needle in [
        "fix round 1 of 2",
        "Gate `test` failed: exited 101",
        "Command: `cargo test`",
        "test it::adds ... FAILED",
        "The review scored 0.40, under the 0.90 needed",
        "src/lib.rs:3: the lock is never released",
        "Do not weaken, skip or delete a check",
    ] {
        assert!(p.contains(needle), "{needle:?} missing from:\n{p}");
    }
}

#[test]
fn long_output_and_long_lists_are_capped() {
    let noisy = format!("{}the end\n", "é".repeat(MAX_QUOTED_OUTPUT));
    let p = prompt(2, 2, &[gate(&noisy)]);
    assert!(p.contains("the end"), "the tail is kept");
    assert!(p.len() < MAX_QUOTED_OUTPUT + 500, "{}", p.len());
    let paths: Vec<String> = (0..MAX_LISTED + 7)
        .map(|i| format!("src/f{i}.rs"))
        .collect();
    let p = prompt(
        1,
        1,
        &[FixReason::Conflict {
            base: "main".into(),
            paths,
        }],
    );
    assert!(p.contains("- ... and 7 more"), "{p}");
    let many: Vec<FixReason> = (0..40)
        .map(|_| gate(&"x".repeat(MAX_QUOTED_OUTPUT)))
        .collect();
    let p = prompt(1, 1, &many);
    assert!(p.len() <= MAX_PROMPT, "{}", p.len());
    assert!(p.ends_with("[... cut: the prompt is capped]\n"));
}

#[test]
fn the_failure_reason_names_what_failed() {
    assert_eq!(gate("").failure_reason(), "gates_failed: test");
    let secret = FixReason::Secret {
        file: "config.py".into(),
        line: 9,
        rule: "aws-access-key".into(),
    };
    assert_eq!(secret.failure_reason(), "secret_found");
    assert_eq!(secret.summary(), "secret (aws-access-key) at config.py:9");
    let broken = FixReason::Review {
        score: None,
        threshold: 0.8,
        why: Some("the reviewer's final message holds no JSON verdict".into()),
        findings: Vec::new(),
    };
    assert_eq!(broken.failure_reason(), "review_rejected");
    assert!(prompt(1, 1, &[broken]).contains("holds no JSON verdict"));
}
