//! Validation of the checking fields of a job file: `gates` (a list, or a profile's
//! name). The rules of a gate live in [`crate::gate`], shared with the TOML sources.

use super::agent::to_json;
use super::yaml::{Node, Value, quote};
use super::{SpecError, Validator};
use crate::gate::{self, GateChoice};

impl Validator<'_> {
    /// `gates: [{name: test, run: "cargo test"}]` or `gates: strict` (a profile).
    pub(super) fn gates(&self, node: &Node) -> Result<GateChoice, SpecError> {
        let items = match &node.value {
            Value::Str(name) => {
                let valid = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
                if !valid {
                    return Err(self.err(
                        self.line(node),
                        "gates",
                        format!(
                            "invalid profile name {}: 1 to 64 letters, digits, `-` or `_`",
                            quote(name)
                        ),
                    ));
                }
                return Ok(GateChoice::Profile(name.clone()));
            }
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
