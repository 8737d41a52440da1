//! `gantry demo` runs to completion and prints its summary, including the script-engine
//! agents' live insights and the budget stop (issue 3).

use crate::harness::{gantry, run_with_timeout};
use std::time::Duration;

#[test]
fn demo_runs_and_prints_a_summary() {
    let mut c = gantry();
    c.arg("demo");
    let out = run_with_timeout(c, Duration::from_secs(120));
    out.ok();
    let s = &out.stdout;
    for needle in [
        "JOB",
        "TITLE",
        "STATE",
        "ATTEMPTS",
        "BRANCH",
        "FILES",
        "+/-",
        "schema",
        "api",
        "docs-intro",
        "docs-usage",
        "flaky",
        "hotfix",
        "What happened:",
        "never at the same time: lock `docs`",
        "after it, as deps: [schema] asks",
        "attempt 1 failed (exit 1), then attempt 2 succeeded",
        "claimed 1st of 10",
        // The checking stage: a gate sends a job back once; a planted key stops one.
        "tested",
        "gate      greeting-test failed: exited 1",
        "fix round 1: gate greeting-test: exited 1",
        "gate      greeting-test passed",
        "then greeting-test passed (job succeeded)",
        "leaky",
        "SECRET    aws-access-key-id in deploy.cfg:1",
        "leaky: attempt 1 secret_found",
        "branch --list 'gantry/*'",
        "agent",
        "runaway",
        // Live agent events and the final insights of the script agent.
        "message   Reading app.sh",
        "usage     +18200 in (12800 cached), +640 out, $0.0291",
        "result    success, 8 turns, $0.0633",
        "insights: agent: 39600 tokens in (30900 cached), 1550 out, cost $0.0633, 8 turns, 3 tool calls",
        // The runaway agent is stopped the moment it passes its budget.
        "STOPPED   budget exceeded: tokens 78000 > limit 50000",
        "budget:   runaway: budget_exceeded after 78000 tokens of its 50000, job failed with no retry",
    ] {
        assert!(s.contains(needle), "demo output has {needle:?}\n{out}");
    }
    // Every job but the runaway and the leaky one succeeded and was delivered as
    // gantry/<job>.
    let branch_lines: Vec<&str> = s
        .lines()
        .filter(|l| l.trim_start().starts_with("gantry/"))
        .collect();
    assert_eq!(
        branch_lines.len(),
        8,
        "eight delivered branches listed (the runaway and the leaky job are not)\n{out}"
    );
    // The planted credential is never printed.
    assert!(!s.contains("AKIAQWERTYUIOPASDFGH"), "{out}");
    assert!(!out.stderr.contains("AKIAQWERTYUIOPASDFGH"), "{out}");
    assert!(
        !s.contains("OVERLAPPED") && !s.contains("BEFORE it"),
        "{out}"
    );
}
