//! What `gantry show` prints of a run's checks besides its gate table: the output of
//! each failed gate, the reviews with their findings, the secrets found (where, by
//! which rule, never the value) and the fix rounds with their reasons.

use crate::output::{self, Table};
use crate::render::cost_label;
use gantry_core::Run;
use gantry_core::review::ReviewResult;

/// The most lines of a failed gate's output shown.
const OUTPUT_LINES: usize = 20;

/// Prints every check section that has something to say, each after a blank line.
pub fn print(runs: &[Run]) {
    failed_gate_output(runs);
    reviews(runs);
    secrets(runs);
    fix_rounds(runs);
}

fn failed_gate_output(runs: &[Run]) {
    for r in runs {
        for g in r
            .gates
            .iter()
            .filter(|g| !g.passed && !g.output_tail.is_empty())
        {
            output::line("");
            output::line(format!(
                "Output of gate {} (run {}, last lines):",
                output::field(&g.name),
                r.id
            ));
            let lines: Vec<&str> = g.output_tail.lines().collect();
            for l in &lines[lines.len().saturating_sub(OUTPUT_LINES)..] {
                output::line(format!("  | {l}"));
            }
        }
    }
}

fn reviews(runs: &[Run]) {
    let all: Vec<(&Run, &ReviewResult)> = runs
        .iter()
        .flat_map(|r| r.checks.reviews.iter().map(move |v| (r, v)))
        .collect();
    if all.is_empty() {
        return;
    }
    output::line("");
    let mut t = Table::new(&[
        "RUN>", "ROUND>", "REVIEWER", "RESULT", "SCORE>", "NEEDS>", "COST>", "WHY",
    ]);
    for (r, v) in &all {
        let reviewer = match &v.model {
            Some(m) => format!("{} ({m})", v.engine.name()),
            None => v.engine.name().to_string(),
        };
        t.row(vec![
            r.id.to_string(),
            v.round.to_string(),
            reviewer,
            if v.passed { "passed" } else { "failed" }.to_string(),
            v.score()
                .map_or_else(|| "-".to_string(), |s| format!("{s:.2}")),
            format!("{:.2}", v.threshold),
            v.insights
                .as_ref()
                .map_or_else(|| "-".to_string(), cost_label),
            v.reason
                .clone()
                .or_else(|| v.verdict.as_ref().map(|d| d.verdict.clone()))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".to_string()),
        ]);
    }
    t.print();
    for (r, v) in &all {
        let Some(verdict) = &v.verdict else { continue };
        if verdict.findings.is_empty() {
            continue;
        }
        output::line(format!("Findings of run {} round {}:", r.id, v.round));
        for f in &verdict.findings {
            let place = match (&f.file, f.line) {
                (Some(file), Some(line)) => format!("{file}:{line}: "),
                (Some(file), None) => format!("{file}: "),
                _ => String::new(),
            };
            let severity = serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            output::line(format!(
                "  - [{severity}] {}",
                output::field(&format!("{place}{}", f.message))
            ));
        }
        if verdict.findings_dropped > 0 {
            output::line(format!("  - ... and {} more", verdict.findings_dropped));
        }
    }
}

fn secrets(runs: &[Run]) {
    if runs.iter().all(|r| r.checks.secrets.is_empty()) {
        return;
    }
    output::line("");
    output::line("Secrets found (values never stored):");
    let mut t = Table::new(&["RUN>", "WHERE", "RULE", "FINGERPRINT"]);
    for r in runs {
        for s in &r.checks.secrets {
            t.row(vec![
                r.id.to_string(),
                format!("{}:{}", s.file, s.line),
                s.rule.clone(),
                s.fingerprint.clone(),
            ]);
        }
        if r.checks.secrets_dropped > 0 {
            t.row(vec![
                r.id.to_string(),
                format!("... and {} more", r.checks.secrets_dropped),
                String::new(),
                String::new(),
            ]);
        }
    }
    t.print();
}

fn fix_rounds(runs: &[Run]) {
    if runs.iter().all(|r| r.checks.fix_rounds.is_empty()) {
        return;
    }
    output::line("");
    let mut t = Table::new(&["RUN>", "FIX ROUND>", "BECAUSE"]);
    for r in runs {
        for f in &r.checks.fix_rounds {
            t.row(vec![
                r.id.to_string(),
                f.round.to_string(),
                f.reasons.join("; "),
            ]);
        }
    }
    t.print();
}
