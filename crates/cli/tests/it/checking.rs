//! The checking stage end to end through the real binaries (issue 11): a job's gate
//! fails, the job goes back to its agent for a fix round with the failure in its prompt,
//! passes, and `gantry show` prints the gates; a gate that never passes fails the job
//! as `gates_failed`, not retried.

use crate::harness::{Env, submit};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

/// The kinds of a job's events, in order.
fn kinds(server: &crate::harness::Server, id: &str) -> Vec<String> {
    let events = server.cli(&["events", id, "--json"]).json();
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn issue11_a_failing_gate_sends_the_job_back_for_a_fix_round_and_then_it_passes() {
    let env = Env::new();
    let server = env.serve(&[]);
    let job = env.job(
        "gated",
        "gates:\n  - { name: fixed, run: \"test -f fixed.txt\" }\nfix_rounds: 1\n",
        "echo work > work.txt; if [ -n \"$GANTRY_FIX_ROUND\" ]; then \
         cp \"$GANTRY_FIX_PROMPT_FILE\" prompt.txt; echo ok > fixed.txt; fi",
    );
    let id = submit(&server, &[&job]).remove(0);
    let j = server.wait_state(&id, "succeeded", LONG);
    let run = &j["runs"][0];
    assert_eq!(run["gates"][0]["name"], "fixed", "{j:#}");
    assert_eq!(
        run["gates"][0]["passed"], true,
        "the latest result is kept: {j:#}"
    );
    let kinds = kinds(&server, &id);
    let checking: Vec<&String> = kinds
        .iter()
        .filter(|k| {
            k.starts_with("run.checking") || k.starts_with("gate.") || *k == "run.fix_round"
        })
        .collect();
    assert_eq!(
        checking,
        [
            "run.checking",
            "gate.started",
            "gate.failed",
            "run.fix_round",
            "run.checking",
            "gate.started",
            "gate.passed"
        ],
        "{kinds:?}"
    );
    // The fix round's prompt named the gate and its command, and the agent's fix was
    // delivered with its first work (delivery follows the success: wait for it).
    crate::harness::wait_for("the delivery of the job", LONG, || {
        crate::checking::kinds(&server, &id)
            .iter()
            .any(|k| k == "delivery.pushed")
            .then_some(())
    });
    let branch = format!("gantry/{id}");
    let prompt = crate::harness::git(&env.repo(), &["show", &format!("{branch}:prompt.txt")]);
    assert!(prompt.contains("Gate `fixed` failed: exited 1"), "{prompt}");
    assert!(prompt.contains("`test -f fixed.txt`"), "{prompt}");
    let files = crate::harness::git(&env.repo(), &["ls-tree", "--name-only", &branch]);
    assert!(
        files.contains("fixed.txt") && files.contains("work.txt"),
        "{files}"
    );
    // The server counted both results of the gate.
    let api = crate::harness::Api::new(&server.url, &server.admin_token());
    assert_eq!(api.counter("gantry_gate_results_total"), 2.0);
    let show = server.cli(&["show", &id]);
    show.ok();
    assert!(show.stdout.contains("GATE"), "{show}");
    assert!(show.stdout.contains("fixed"), "{show}");
    assert!(show.stdout.contains("passed"), "{show}");
}

#[test]
fn issue11_a_gate_that_never_passes_fails_the_job_as_gates_failed_without_a_retry() {
    let env = Env::new();
    let server = env.serve(&[]);
    let job = env.job(
        "never",
        "gates:\n  - { name: lint, run: \"echo lint says no; exit 3\" }\nfix_rounds: 1\nmax_attempts: 3\nretry_on: [lost, failed]\n",
        "echo work > work.txt",
    );
    let id = submit(&server, &[&job]).remove(0);
    let j = server.wait_state(&id, "failed", LONG);
    assert_eq!(
        j["runs"].as_array().map(Vec::len),
        Some(1),
        "not retried: {j:#}"
    );
    assert_eq!(j["runs"][0]["outcome"], "gates_failed", "{j:#}");
    assert_eq!(j["runs"][0]["gates"][0]["reason"], "exited 3", "{j:#}");
    let show = server.cli(&["show", &id]);
    assert!(show.stdout.contains("gates_failed: lint"), "{show}");
    // The failed gate's output is one command away, wherever its factory ran.
    assert!(show.stdout.contains("Output of gate lint"), "{show}");
    assert!(show.stdout.contains("  | lint says no"), "{show}");
    assert_eq!(j["runs"][0]["gates"][0]["output_tail"], "lint says no\n");
    let fix_rounds = kinds(&server, &id)
        .iter()
        .filter(|k| *k == "run.fix_round")
        .count();
    assert_eq!(fix_rounds, 1);
}

#[test]
fn issue11_show_prints_reviews_with_their_findings_and_fix_rounds() {
    let env = Env::new();
    let server = env.serve(&[]);
    // The gate fails until the first fix round; the reviewer then rejects the result
    // both times it reads it (after rounds 1 and 2), with a finding.
    let verdict = r#"{\"score\": 0.35, \"verdict\": \"request_changes\", \"findings\": [{\"file\": \"work.txt\", \"line\": 1, \"severity\": \"high\", \"message\": \"the greeting is misspelt\"}]}"#;
    let job = env.job(
        "reviewed",
        &format!(
            "gates:\n  - {{ name: fixed, run: \"echo checking fixed.txt; test -f fixed.txt\" }}\n\
             fix_rounds: 2\nreview:\n  engine: script\n  threshold: 0.8\n  steps:\n    - say: \"{verdict}\"\n"
        ),
        "echo Hullo > work.txt; if [ -n \"$GANTRY_FIX_ROUND\" ]; then echo ok > fixed.txt; fi",
    );
    let id = submit(&server, &[&job]).remove(0);
    let j = server.wait_state(&id, "failed", LONG);
    let run = &j["runs"][0];
    assert_eq!(run["outcome"], "gates_failed", "{j:#}");
    assert_eq!(run["error"], "review_rejected", "{j:#}");
    let checks = &run["checks"];
    assert_eq!(checks["reviews"].as_array().map(Vec::len), Some(2), "{j:#}");
    assert_eq!(checks["reviews"][0]["verdict"]["score"], 0.35);
    assert_eq!(checks["reviews"][1]["round"], 2);
    assert_eq!(
        checks["fix_rounds"].as_array().map(Vec::len),
        Some(2),
        "{j:#}"
    );
    assert_eq!(
        checks["fix_rounds"][0]["reasons"][0],
        "gate fixed: exited 1"
    );
    let show = server.cli(&["show", &id]);
    show.ok();
    for part in [
        "REVIEWER",
        "script",
        "0.35",
        "[high] work.txt:1: the greeting is misspelt",
        "FIX ROUND",
        "gate fixed: exited 1",
        "review scored 0.35 (needs 0.80), 1 findings",
    ] {
        assert!(show.stdout.contains(part), "{part:?} missing:\n{show}");
    }
    let api = crate::harness::Api::new(&server.url, &server.admin_token());
    assert_eq!(api.counter("gantry_review_results_total"), 2.0);
}
