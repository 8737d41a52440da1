//! What a run's checking stage found besides its gates, as kept on the run: each
//! review, each secret finding and each fix round, so `gantry show` and the API tell
//! the whole story of a result without reading the event log.
//!
//! The store keeps one [`RunChecks`] per run and folds the factory's uploaded events
//! into it with [`RunChecks::apply`]; an upload sent again after its answer was lost
//! changes nothing the second time.

use crate::event::{self as ev, PayloadError, RunFixRound, SecretFound, read};
use crate::review::ReviewResult;
use serde::{Deserialize, Serialize};

/// The most secret findings kept on one run; further ones are counted.
pub const MAX_KEPT_SECRETS: usize = 200;

/// The reviews, secret findings and fix rounds of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunChecks {
    /// Every review, in the order they ran (one per check round that reached review).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviews: Vec<ReviewResult>,
    /// Every distinct secret finding (file, line, rule, fingerprint; never the value),
    /// at most [`MAX_KEPT_SECRETS`]. A finding a fix round removed stays here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretFound>,
    /// Findings past [`MAX_KEPT_SECRETS`], counted only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secrets_dropped: u64,
    /// Every fix round, with the reasons that started it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fix_rounds: Vec<RunFixRound>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RunChecks {
    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.reviews.is_empty() && self.secrets.is_empty() && self.fix_rounds.is_empty()
    }

    /// Folds one event of kind `kind` into the record. Returns whether the kind is one
    /// this record keeps; an event seen before (a repeated upload) changes nothing.
    pub fn apply(&mut self, kind: &str, data: &serde_json::Value) -> Result<bool, PayloadError> {
        match kind {
            ev::REVIEW_PASSED | ev::REVIEW_FAILED => {
                // Both kinds carry the same fields.
                let p: ev::ReviewPassed = read(ev::REVIEW_PASSED, data)?;
                if !self.reviews.contains(&p.result) {
                    self.reviews.push(p.result);
                }
            }
            ev::SECRET_FOUND => {
                let p: SecretFound = read(kind, data)?;
                if !self.secrets.contains(&p) {
                    if self.secrets.len() < MAX_KEPT_SECRETS {
                        self.secrets.push(p);
                    } else {
                        self.secrets_dropped += 1;
                    }
                }
            }
            ev::RUN_FIX_ROUND => {
                let p: RunFixRound = read(kind, data)?;
                if !self.fix_rounds.iter().any(|r| r.round == p.round) {
                    self.fix_rounds.push(p);
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeated_uploads_are_kept_once_and_other_kinds_are_ignored() {
        let mut c = RunChecks::default();
        let secret =
            json!({"file": "a.env", "line": 3, "rule": "aws-access-key", "fingerprint": "f1"});
        assert!(c.apply(ev::SECRET_FOUND, &secret).expect("fits"));
        assert!(c.apply(ev::SECRET_FOUND, &secret).expect("fits"));
        let round = json!({"round": 1, "reasons": ["gate test: exited 1"]});
        assert!(c.apply(ev::RUN_FIX_ROUND, &round).expect("fits"));
        assert!(c.apply(ev::RUN_FIX_ROUND, &round).expect("fits"));
        let review = json!({
            "round": 0, "engine": "script", "passed": false, "threshold": 0.9,
            "verdict": {"score": 0.4, "verdict": "request_changes", "findings": []},
            "tree": "t", "duration_ms": 3
        });
        assert!(c.apply(ev::REVIEW_FAILED, &review).expect("fits"));
        assert!(c.apply(ev::REVIEW_FAILED, &review).expect("fits"));
        assert!(!c.apply(ev::GATE_STARTED, &json!({})).expect("ignored"));
        assert_eq!(
            (c.secrets.len(), c.fix_rounds.len(), c.reviews.len()),
            (1, 1, 1)
        );
        assert_eq!(c.reviews[0].score(), Some(0.4));
    }

    #[test]
    fn an_event_that_does_not_fit_its_kind_is_an_error() {
        let mut c = RunChecks::default();
        assert!(c.apply(ev::SECRET_FOUND, &json!({"file": 1})).is_err());
        assert!(c.is_empty());
    }

    #[test]
    fn secret_findings_are_capped_and_counted() {
        let mut c = RunChecks::default();
        for i in 0..MAX_KEPT_SECRETS + 5 {
            let s = json!({"file": "f", "line": i, "rule": "r", "fingerprint": format!("{i}")});
            c.apply(ev::SECRET_FOUND, &s).expect("fits");
        }
        assert_eq!(c.secrets.len(), MAX_KEPT_SECRETS);
        assert_eq!(c.secrets_dropped, 5);
    }
}
