//! Budgets: limits on what a run may spend, checked live against its insights.

use serde::{Deserialize, Serialize};

use super::insights::Insights;

/// Limits on a job's spending; a limit is passed when the actual figure is above it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Most USD the job may cost (reported or estimated cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
    /// Most tokens, counted as `tokens_in + tokens_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Most turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
}

/// A limit that was passed, with the figures.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("budget exceeded: {limit} {actual} > limit {limit_value}")]
pub struct Breach {
    /// Which limit: `usd`, `tokens` or `turns`.
    pub limit: &'static str,
    /// The limit's value.
    pub limit_value: f64,
    /// The actual figure, above the limit.
    pub actual: f64,
}

impl Budget {
    /// Whether the budget sets any limit.
    pub fn is_empty(&self) -> bool {
        self.usd.is_none() && self.tokens.is_none() && self.turns.is_none()
    }

    /// The first limit `i` has passed (checked in the order usd, tokens, turns).
    pub fn check(&self, i: &Insights) -> Option<Breach> {
        if let (Some(limit), Some(cost)) = (self.usd, i.cost_usd)
            && cost > limit
        {
            return Some(Breach {
                limit: "usd",
                limit_value: limit,
                actual: cost,
            });
        }
        if let Some(limit) = self.tokens
            && i.tokens() > limit
        {
            return Some(Breach {
                limit: "tokens",
                limit_value: limit as f64,
                actual: i.tokens() as f64,
            });
        }
        if let Some(limit) = self.turns
            && i.turns > limit
        {
            return Some(Breach {
                limit: "turns",
                limit_value: f64::from(limit),
                actual: f64::from(i.turns),
            });
        }
        None
    }
}
