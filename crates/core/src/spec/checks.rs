//! Validation of the checking fields of a job file: `gates` and `review` (each written
//! out, or a profile's name). Their rules live in [`crate::gate`] and
//! [`crate::review`], shared with the TOML sources.

use super::SpecError;
use super::agent::to_json;
use super::validate::Validator;
use super::yaml::{Node, Value, quote};
use crate::gate::{self, GateChoice};
use crate::review::{self, ReviewChoice};

impl Validator<'_> {
    /// `gates: [{name: test, run: "cargo test"}]` or `gates: strict` (a profile).
    pub(super) fn gates(&self, node: &Node) -> Result<GateChoice, SpecError> {
        let items = match &node.value {
            Value::Str(name) => return self.profile(node, "gates", name).map(GateChoice::Profile),
            Value::Seq(items) => items,
            _ => {
                return Err(self.type_err(
                    node,
                    "gates",
                    "a list of gates (e.g. `[{name: test, run: \"make test\"}]`) or a profile name",
                ));
            }
        };
        let json = serde_json::Value::Array(items.iter().map(to_json).collect());
        gate::parse_gates(&json)
            .map(GateChoice::Inline)
            .map_err(|e| {
                let line = e
                    .index
                    .and_then(|i| items.get(i))
                    .map_or_else(|| self.field_lines["gates"], |n| self.line(n));
                self.err(line, "gates", e.to_string())
            })
    }
}

impl Validator<'_> {
    /// `review: {engine: claude-code, threshold: 0.9}` or `review: careful` (a profile).
    pub(super) fn review(&self, node: &Node) -> Result<ReviewChoice, SpecError> {
        match &node.value {
            Value::Str(name) => self
                .profile(node, "review", name)
                .map(ReviewChoice::Profile),
            Value::Map(_) => review::parse_review(&to_json(node))
                .map(ReviewChoice::Inline)
                .map_err(|e| self.err(self.line(node), "review", e.to_string())),
            _ => Err(self.type_err(
                node,
                "review",
                "a map like `{engine: claude-code, threshold: 0.9}` or a profile name",
            )),
        }
    }

    /// A profile's name, as `gates:` or `review:` may give instead of the thing.
    fn profile(&self, node: &Node, field: &str, name: &str) -> Result<String, SpecError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if valid {
            Ok(name.to_string())
        } else {
            Err(self.err(
                self.line(node),
                field,
                format!(
                    "invalid profile name {}: 1 to 64 letters, digits, `-` or `_`",
                    quote(name)
                ),
            ))
        }
    }
}
