//! Counters of the checking stage (issue 11): gate results by gate and result,
//! credentials the secret scan found, and reviews by result with their scores, taken
//! from the events factories upload.

use super::{header, label_value};
use gantry_core::event::{self as ev, NewEvent};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most gate names counted apart; results of further names count as `other`, so a
/// stream of jobs with fresh gate names cannot grow the exposition without bound.
pub const MAX_GATE_LABELS: usize = 64;

/// The upper bounds of the review score histogram's buckets (`+Inf` follows).
pub const SCORE_BUCKETS: [f64; 6] = [0.2, 0.4, 0.6, 0.8, 0.9, 1.0];

/// What one upload reported, counted once the store accepted it.
#[derive(Debug, Default)]
pub struct CheckCounts {
    gates: Vec<(String, bool)>,
    secrets: u64,
    /// Each review: whether it passed, and its score when it gave a verdict.
    reviews: Vec<(bool, Option<f64>)>,
}

impl CheckCounts {
    /// The gate results and secret findings in `events`.
    pub fn of(events: &[NewEvent]) -> CheckCounts {
        let mut counts = CheckCounts::default();
        for e in events {
            match e.kind.as_str() {
                ev::GATE_PASSED | ev::GATE_FAILED => {
                    let name = e.data["name"].as_str().unwrap_or("other");
                    counts
                        .gates
                        .push((name.to_string(), e.kind == ev::GATE_PASSED));
                }
                ev::SECRET_FOUND => counts.secrets += 1,
                ev::REVIEW_PASSED | ev::REVIEW_FAILED => {
                    let score = e.data["verdict"]["score"].as_f64();
                    counts.reviews.push((e.kind == ev::REVIEW_PASSED, score));
                }
                _ => {}
            }
        }
        counts
    }

    /// Whether there is nothing to count.
    pub fn is_empty(&self) -> bool {
        self.gates.is_empty() && self.secrets == 0 && self.reviews.is_empty()
    }
}

/// The checking stage's counters.
#[derive(Debug, Default)]
pub struct CheckMetrics {
    /// (gate name, passed) → results.
    gates: Mutex<BTreeMap<(String, bool), u64>>,
    secrets_found: AtomicU64,
    reviews: Mutex<Reviews>,
}

/// Reviews by result, and the scores of those that gave a verdict.
#[derive(Debug, Default)]
struct Reviews {
    passed: u64,
    failed: u64,
    /// Scores at or under each of [`SCORE_BUCKETS`] (not cumulative until rendered).
    buckets: [u64; SCORE_BUCKETS.len()],
    scored: u64,
    score_sum: f64,
}

impl CheckMetrics {
    /// Adds what an accepted upload reported.
    pub fn observe(&self, counts: CheckCounts) {
        self.secrets_found
            .fetch_add(counts.secrets, Ordering::Relaxed);
        if !counts.reviews.is_empty() {
            let mut r = self.reviews.lock().unwrap_or_else(|p| p.into_inner());
            for (passed, score) in counts.reviews {
                *if passed { &mut r.passed } else { &mut r.failed } += 1;
                if let Some(score) = score {
                    r.scored += 1;
                    r.score_sum += score;
                    if let Some(i) = SCORE_BUCKETS.iter().position(|b| score <= *b) {
                        r.buckets[i] += 1;
                    }
                }
            }
        }
        if counts.gates.is_empty() {
            return;
        }
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        for (name, passed) in counts.gates {
            let known = gates.keys().any(|(n, _)| *n == name);
            let distinct = gates.keys().map(|(n, _)| n).collect::<BTreeSet<_>>().len();
            let name = if known || distinct < MAX_GATE_LABELS {
                name
            } else {
                "other".to_string()
            };
            *gates.entry((name, passed)).or_insert(0) += 1;
        }
    }

    /// Writes the counters in the text format.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "gantry_gate_results_total",
            "counter",
            "Gate results reported by factories since this server process started, by \
             gate name and result (names past the 64th count as other).",
        );
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        for ((name, passed), n) in gates.iter() {
            let result = if *passed { "passed" } else { "failed" };
            let _ = writeln!(
                out,
                "gantry_gate_results_total{{gate=\"{}\",result=\"{result}\"}} {n}",
                label_value(name)
            );
        }
        header(
            out,
            "gantry_secrets_found_total",
            "counter",
            "Credentials the secret scan found in results since this server process started.",
        );
        let _ = writeln!(
            out,
            "gantry_secrets_found_total {}",
            self.secrets_found.load(Ordering::Relaxed)
        );
        self.render_reviews(out);
    }

    fn render_reviews(&self, out: &mut String) {
        let r = self.reviews.lock().unwrap_or_else(|p| p.into_inner());
        header(
            out,
            "gantry_review_results_total",
            "counter",
            "AI reviews since this server process started, by result (failed: a score \
             under the threshold or no verdict).",
        );
        let _ = writeln!(
            out,
            "gantry_review_results_total{{result=\"passed\"}} {}",
            r.passed
        );
        let _ = writeln!(
            out,
            "gantry_review_results_total{{result=\"failed\"}} {}",
            r.failed
        );
        header(
            out,
            "gantry_review_score",
            "histogram",
            "Scores of the AI reviews that gave a verdict, since this server process started.",
        );
        let mut cumulative = 0;
        for (bound, n) in SCORE_BUCKETS.iter().zip(r.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "gantry_review_score_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "gantry_review_score_bucket{{le=\"+Inf\"}} {}",
            r.scored
        );
        let _ = writeln!(out, "gantry_review_score_sum {}", r.score_sum);
        let _ = writeln!(out, "gantry_review_score_count {}", r.scored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::event::{GateFailed, GatePassed, SecretFound};
    use gantry_core::gate::GateResult;

    fn result(name: &str, passed: bool) -> GateResult {
        GateResult {
            name: name.to_string(),
            passed,
            exit_code: Some(if passed { 0 } else { 1 }),
            figure: None,
            duration_ms: 5,
            tree: "t".to_string(),
            reason: None,
            output: "o".to_string(),
            output_tail: String::new(),
        }
    }

    #[test]
    fn gate_results_and_secrets_are_counted_by_gate_and_result() {
        let m = CheckMetrics::default();
        m.observe(CheckCounts::of(&[
            NewEvent::of(&GateFailed {
                result: result("test", false),
                round: 0,
            }),
            NewEvent::of(&GatePassed {
                result: result("test", true),
                round: 1,
            }),
            NewEvent::of(&GatePassed {
                result: result("fmt", true),
                round: 1,
            }),
            NewEvent::of(&SecretFound {
                file: "a.py".into(),
                line: 3,
                rule: "aws-access-key".into(),
                fingerprint: "f".into(),
            }),
        ]));
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "gantry_gate_results_total{gate=\"fmt\",result=\"passed\"} 1",
            "gantry_gate_results_total{gate=\"test\",result=\"failed\"} 1",
            "gantry_gate_results_total{gate=\"test\",result=\"passed\"} 1",
            "gantry_secrets_found_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }

    fn review(passed: bool, score: Option<f64>) -> NewEvent {
        let result = gantry_core::review::ReviewResult {
            round: 0,
            engine: gantry_core::EngineKind::Script,
            model: None,
            passed,
            threshold: 0.8,
            verdict: score.map(|score| gantry_core::review::Verdict {
                score,
                verdict: String::new(),
                findings: Vec::new(),
                findings_dropped: 0,
            }),
            reason: None,
            tree: "t".into(),
            duration_ms: 1,
            insights: None,
        };
        if passed {
            NewEvent::of(&gantry_core::event::ReviewPassed { result })
        } else {
            NewEvent::of(&gantry_core::event::ReviewFailed { result })
        }
    }

    #[test]
    fn reviews_are_counted_by_result_and_their_scores_bucketed() {
        let m = CheckMetrics::default();
        m.observe(CheckCounts::of(&[
            review(true, Some(0.95)),
            review(false, Some(0.3)),
            review(false, None),
        ]));
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "gantry_review_results_total{result=\"passed\"} 1",
            "gantry_review_results_total{result=\"failed\"} 2",
            "gantry_review_score_bucket{le=\"0.2\"} 0",
            "gantry_review_score_bucket{le=\"0.4\"} 1",
            "gantry_review_score_bucket{le=\"0.9\"} 1",
            "gantry_review_score_bucket{le=\"1\"} 2",
            "gantry_review_score_bucket{le=\"+Inf\"} 2",
            "gantry_review_score_sum 1.25",
            "gantry_review_score_count 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }

    #[test]
    fn gate_names_past_the_cap_count_as_other() {
        let m = CheckMetrics::default();
        let events: Vec<NewEvent> = (0..MAX_GATE_LABELS + 10)
            .map(|i| {
                NewEvent::of(&GatePassed {
                    result: result(&format!("g{i}"), true),
                    round: 0,
                })
            })
            .collect();
        m.observe(CheckCounts::of(&events));
        let mut out = String::new();
        m.render(&mut out);
        let series = out
            .lines()
            .filter(|l| l.starts_with("gantry_gate_results_total{"))
            .count();
        assert_eq!(series, MAX_GATE_LABELS + 1, "{out}");
        assert!(
            out.contains("gate=\"other\",result=\"passed\"} 10"),
            "{out}"
        );
    }
}
