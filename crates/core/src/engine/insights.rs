//! Running figures of a run (or, summed, of a job), built from its agent events.

use serde::{Deserialize, Serialize};

/// What a run has spent and done so far. Token figures follow the crate's token
/// normalization (see the `gantry-engine` crate docs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Insights {
    /// The model, when known.
    pub model: Option<String>,
    /// The agent's session id, when known.
    pub session_id: Option<String>,
    /// All input tokens, cached ones included.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// The cache-read part of `tokens_in`.
    pub tokens_cached: u64,
    /// Cost in USD: reported by the engine, or estimated (see `cost_estimated`).
    pub cost_usd: Option<f64>,
    /// Whether `cost_usd` was computed from the price table rather than reported.
    pub cost_estimated: bool,
    /// Turns taken.
    pub turns: u32,
    /// Tool calls made.
    pub tool_calls: u32,
    /// Tool calls that failed.
    pub tool_errors: u32,
    /// The outcome as the agent reported it; `None` until a result arrives.
    pub success: Option<bool>,
    /// Why the agent failed, as its result said.
    pub error_kind: Option<String>,
    /// The agent's own words when it reported failure (its result's text, capped at
    /// [`MAX_ERROR_MESSAGE`] bytes), so a failed run says what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// The longest [`Insights::error_message`] kept.
pub const MAX_ERROR_MESSAGE: usize = 1000;

impl Insights {
    /// Empty insights for a run of `model`, for engines that do not name their model
    /// in their output (Codex): the price table can then estimate the cost.
    pub fn with_model(model: impl Into<String>) -> Insights {
        Insights {
            model: Some(model.into()),
            ..Insights::default()
        }
    }

    /// Tokens as budgets count them: input (cached included) plus output.
    pub fn tokens(&self) -> u64 {
        self.tokens_in + self.tokens_out
    }

    /// Adds the figures of a later run of the same job: counts and costs add up (the sum
    /// is estimated if either part is), while model, session, success and error kind
    /// take the later run's values when it has them.
    pub fn add(&mut self, other: &Insights) {
        self.add_spend(other);
        if other.model.is_some() {
            self.model.clone_from(&other.model);
        }
        if other.session_id.is_some() {
            self.session_id.clone_from(&other.session_id);
        }
        if other.success.is_some() {
            self.success = other.success;
            self.error_kind.clone_from(&other.error_kind);
        }
    }

    /// Adds what `other` spent (tokens, cost, turns and tool calls) and nothing else:
    /// a reviewer's spend counts in its run's figures, but its model and session are
    /// not the run's agent's.
    pub fn add_spend(&mut self, other: &Insights) {
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.tokens_cached += other.tokens_cached;
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        self.cost_estimated |= other.cost_estimated;
        self.turns += other.turns;
        self.tool_calls += other.tool_calls;
        self.tool_errors += other.tool_errors;
    }
}
