//! `gantry demo` runs to completion and prints its summary.

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
        "claimed 1st of 6",
        "branch --list 'gantry/*'",
    ] {
        assert!(s.contains(needle), "demo output has {needle:?}\n{out}");
    }
    // Every job succeeded and was delivered as gantry/<job>.
    let branch_lines: Vec<&str> = s
        .lines()
        .filter(|l| l.trim_start().starts_with("gantry/"))
        .collect();
    assert!(
        branch_lines.len() >= 6,
        "six delivered branches listed\n{out}"
    );
    assert!(
        !s.contains("OVERLAPPED") && !s.contains("BEFORE it"),
        "{out}"
    );
}
