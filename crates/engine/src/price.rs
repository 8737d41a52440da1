//! Model prices, to estimate the cost of engines that report tokens but no cost.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// List prices of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Uncached input tokens.
    pub input_per_mtok: f64,
    /// Cache-read input tokens.
    pub cached_input_per_mtok: f64,
    /// Output tokens.
    pub output_per_mtok: f64,
}

/// Prices by model name; a model matches the longest key that is a prefix of its name,
/// so `claude-sonnet-4` prices `claude-sonnet-4-5-20250929`.
///
/// In a TOML config it reads as:
/// ```toml
/// [prices."gpt-5"]
/// input_per_mtok = 1.25
/// cached_input_per_mtok = 0.125
/// output_per_mtok = 10.0
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceTable {
    /// Prices keyed by model name (or name prefix).
    pub models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The price of `model`: the entry whose key is the longest prefix of its name.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.models
            .iter()
            .filter(|(key, _)| model.starts_with(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, price)| price)
    }

    /// The cost in USD of the given tokens on `model`, or `None` for an unknown model.
    /// `tokens_in` includes `tokens_cached`: the cached part is billed at the cached rate
    /// and the rest at the input rate.
    pub fn cost(
        &self,
        model: &str,
        tokens_in: u64,
        tokens_cached: u64,
        tokens_out: u64,
    ) -> Option<f64> {
        let price = self.price(model)?;
        let cached = tokens_cached.min(tokens_in);
        let uncached = tokens_in - cached;
        let usd = (uncached as f64 * price.input_per_mtok
            + cached as f64 * price.cached_input_per_mtok
            + tokens_out as f64 * price.output_per_mtok)
            / 1_000_000.0;
        Some(usd)
    }

    /// Adds or replaces the entries of `other` (config prices over the built-in ones).
    pub fn merge(&mut self, other: &PriceTable) {
        for (model, price) in &other.models {
            self.models.insert(model.clone(), *price);
        }
    }

    /// Built-in DEFAULT prices: public list prices (USD per million tokens) as published
    /// by OpenAI and Anthropic in late 2025. They go stale; override them in the config
    /// (`[prices."model"]`). Claude's cache writes are billed at the plain input rate
    /// here (they really cost 1.25x), which only matters for estimates: Claude Code
    /// reports its own cost, which always wins over an estimate.
    pub fn builtin() -> PriceTable {
        let entries: [(&str, f64, f64, f64); 12] = [
            ("gpt-5", 1.25, 0.125, 10.0),
            ("gpt-5-codex", 1.25, 0.125, 10.0),
            ("gpt-5-mini", 0.25, 0.025, 2.0),
            ("gpt-5-nano", 0.05, 0.005, 0.4),
            ("o3", 2.0, 0.5, 8.0),
            ("o4-mini", 1.1, 0.275, 4.4),
            ("claude-sonnet-4", 3.0, 0.3, 15.0),
            ("claude-opus-4", 15.0, 1.5, 75.0),
            ("claude-opus-4-5", 5.0, 0.5, 25.0),
            ("claude-haiku-4", 1.0, 0.1, 5.0),
            ("claude-3-5-haiku", 0.8, 0.08, 4.0),
            ("claude-3-7-sonnet", 3.0, 0.3, 15.0),
        ];
        let models = entries
            .into_iter()
            .map(|(model, input, cached, output)| {
                (
                    model.to_string(),
                    Price {
                        input_per_mtok: input,
                        cached_input_per_mtok: cached,
                        output_per_mtok: output,
                    },
                )
            })
            .collect();
        PriceTable { models }
    }
}
