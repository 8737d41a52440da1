//! Running figures of a run (or, summed, of a job), built from its agent events. The
//! figures themselves ([`Insights`]) are plain data in `gantry-core`, which job
//! records carry; folding events into them is the engine's, through [`Fold`].

use gantry_core::engine::Insights;

use crate::event::AgentEvent;
use crate::price::PriceTable;

/// Folding agent events into [`Insights`].
pub trait Fold {
    /// Folds every event of `events` into the figures.
    fn apply_all<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a AgentEvent>,
        prices: &PriceTable,
    );

    /// Folds one event into the figures.
    ///
    /// Usage events are deltas and add up; a result's totals replace the sums when
    /// present. Reported cost always wins; while none is reported the cost is estimated
    /// from `prices` for the known model and `cost_estimated` is set.
    fn apply(&mut self, ev: &AgentEvent, prices: &PriceTable);
}

impl Fold for Insights {
    fn apply_all<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a AgentEvent>,
        prices: &PriceTable,
    ) {
        for ev in events {
            self.apply(ev, prices);
        }
    }

    fn apply(&mut self, ev: &AgentEvent, prices: &PriceTable) {
        match ev {
            AgentEvent::SessionStarted { session_id, model } => {
                self.session_id = Some(session_id.clone());
                if model.is_some() {
                    self.model.clone_from(model);
                }
            }
            AgentEvent::TurnStarted { .. } => self.turns += 1,
            AgentEvent::ToolCall { .. } => self.tool_calls += 1,
            AgentEvent::ToolResult { is_error, .. } => {
                if *is_error {
                    self.tool_errors += 1;
                }
            }
            AgentEvent::Usage {
                tokens_in,
                tokens_out,
                tokens_cached,
                cost_usd,
                model,
            } => {
                self.tokens_in += tokens_in;
                self.tokens_out += tokens_out;
                self.tokens_cached += tokens_cached;
                if self.model.is_none() {
                    self.model.clone_from(model);
                }
                if let Some(cost) = cost_usd {
                    // An estimate so far is dropped the moment the engine reports cost:
                    // engines report either always or never.
                    let base = if self.cost_estimated {
                        0.0
                    } else {
                        self.cost_usd.unwrap_or(0.0)
                    };
                    self.cost_usd = Some(base + cost);
                    self.cost_estimated = false;
                }
            }
            AgentEvent::Result {
                success,
                error_kind,
                num_turns,
                cost_usd,
                tokens_in,
                tokens_out,
                tokens_cached,
                session_id,
                text,
            } => {
                self.success = Some(*success);
                self.error_kind.clone_from(error_kind);
                self.error_message = match text {
                    Some(t) if !*success && !t.trim().is_empty() => {
                        Some(gantry_core::text::clip_marked(
                            t.trim(),
                            gantry_core::engine::MAX_ERROR_MESSAGE,
                        ))
                    }
                    _ => None,
                };
                if let Some(n) = num_turns {
                    self.turns = *n;
                }
                if let Some(n) = tokens_in {
                    self.tokens_in = *n;
                }
                if let Some(n) = tokens_out {
                    self.tokens_out = *n;
                }
                if let Some(n) = tokens_cached {
                    self.tokens_cached = *n;
                }
                if let Some(id) = session_id {
                    self.session_id = Some(id.clone());
                }
                if let Some(cost) = cost_usd {
                    self.cost_usd = Some(*cost);
                    self.cost_estimated = false;
                }
            }
            AgentEvent::Message { .. } | AgentEvent::Notice { .. } | AgentEvent::Raw { .. } => {}
        }
        if self.cost_usd.is_none() || self.cost_estimated {
            estimate(self, prices);
        }
    }
}

/// Re-estimates the cost from the current tokens, when the model has a price.
fn estimate(i: &mut Insights, prices: &PriceTable) {
    let Some(model) = i.model.as_deref() else {
        return;
    };
    if let Some(cost) = prices.cost(model, i.tokens_in, i.tokens_cached, i.tokens_out) {
        i.cost_usd = Some(cost);
        i.cost_estimated = true;
    }
}
