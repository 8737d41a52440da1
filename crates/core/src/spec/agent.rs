//! Validation of the agent fields of a job file: model, budget, yolo, max_turns,
//! permission_mode, allowed_tools, steps and output, and which engine may set which.

use super::validate::{Fields, Validator};
use super::yaml::{Node, Value, quote};
use super::{CLAUDE_PERMISSION_MODES, CODEX_PERMISSION_MODES, EngineKind, SpecError};
use crate::engine::{Budget, Format, Step};

/// Which fields each engine takes: a field an engine would silently ignore is refused,
/// so a job never looks limited or configured when it is not.
fn allowed(engine: EngineKind, field: &str) -> bool {
    match field {
        "command" | "output" => engine == EngineKind::Command,
        "steps" => engine == EngineKind::Script,
        "model" => engine != EngineKind::Command,
        "yolo" | "max_turns" | "permission_mode" => engine.is_agent_cli(),
        "allowed_tools" => engine == EngineKind::ClaudeCode,
        _ => true,
    }
}

impl Validator<'_> {
    /// Checks the fields that depend on the engine, once every field is read.
    pub(super) fn engine_fields(&self, engine: EngineKind, f: &Fields) -> Result<(), SpecError> {
        let set: [(&str, bool); 8] = [
            ("command", f.command.is_some()),
            ("output", f.output.is_some()),
            ("steps", f.steps.is_some()),
            ("model", f.model.is_some()),
            ("yolo", f.yolo.is_some()),
            ("max_turns", f.max_turns.is_some()),
            ("permission_mode", f.permission_mode.is_some()),
            ("allowed_tools", f.allowed_tools.is_some()),
        ];
        for (field, present) in set {
            if present && !allowed(engine, field) {
                let takers: Vec<&str> = super::KNOWN_ENGINES
                    .into_iter()
                    .filter(|e| EngineKind::parse(e).is_some_and(|k| allowed(k, field)))
                    .collect();
                return Err(self.err(
                    self.field_lines.get(field).copied().unwrap_or(1),
                    field,
                    format!(
                        "field `{field}` does not apply to engine `{}` (it is for: {})",
                        engine.name(),
                        takers.join(", ")
                    ),
                ));
            }
        }
        if let Some((mode, line)) = &f.permission_mode {
            let modes: &[&str] = match engine {
                EngineKind::Codex => &CODEX_PERMISSION_MODES,
                _ => &CLAUDE_PERMISSION_MODES,
            };
            if !modes.contains(&mode.as_str()) {
                return Err(self.err(
                    *line,
                    "permission_mode",
                    format!(
                        "unknown permission_mode {} for engine `{}` (known: {})",
                        quote(mode),
                        engine.name(),
                        modes.join(", ")
                    ),
                ));
            }
            if f.yolo == Some(true) {
                return Err(self.err(
                    *line,
                    "permission_mode",
                    "both `yolo: true` and `permission_mode` are set; yolo already picks the bypass mode, keep one",
                ));
            }
        }
        if engine == EngineKind::Command
            && f.budget.is_some()
            && matches!(f.output, None | Some(Format::Text))
        {
            return Err(self.err(
                self.field_lines.get("budget").copied().unwrap_or(1),
                "budget",
                "a budget on the `command` engine needs insights: set `output:` to one of claude-stream-json, codex-json, gantry-jsonl",
            ));
        }
        Ok(())
    }

    /// `budget: { usd: 5, tokens: 2000000, turns: 60 }`: at least one positive limit.
    pub(super) fn budget(&self, node: &Node) -> Result<Budget, SpecError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.type_err(
                node,
                "budget",
                "a map of limits, e.g. `{ usd: 5, tokens: 2000000, turns: 60 }`",
            ));
        };
        let mut budget = Budget::default();
        let mut seen: Vec<String> = Vec::new();
        for (k, v) in entries {
            let name = self.key_text(k, Some("budget"))?;
            let line = self.line(k);
            if seen.contains(&name) {
                return Err(self.err(line, "budget", format!("duplicate budget limit `{name}`")));
            }
            seen.push(name.clone());
            let positive = |what: &str| format!("budget.{name} must be {what} above zero");
            match (name.as_str(), &v.value) {
                ("usd", Value::Int(i)) if *i > 0 => budget.usd = Some(*i as f64),
                ("usd", Value::Float(x)) if *x > 0.0 && x.is_finite() => budget.usd = Some(*x),
                ("usd", _) => {
                    return Err(self.err(
                        self.line(v),
                        "budget",
                        format!("{}, found {}", positive("a number"), self.describe(v)),
                    ));
                }
                ("tokens" | "turns", Value::Int(i)) if *i > 0 => {
                    if name == "tokens" {
                        budget.tokens = Some(u64::try_from(*i).unwrap_or(u64::MAX));
                    } else {
                        budget.turns = Some(u32::try_from(*i).unwrap_or(u32::MAX));
                    }
                }
                ("tokens" | "turns", _) => {
                    return Err(self.err(
                        self.line(v),
                        "budget",
                        format!("{}, found {}", positive("a whole number"), self.describe(v)),
                    ));
                }
                (other, _) => {
                    return Err(self.err(
                        line,
                        "budget",
                        format!(
                            "unknown budget limit {} (known limits: usd, tokens, turns)",
                            quote(other)
                        ),
                    ));
                }
            }
        }
        if budget.is_empty() {
            return Err(self.err(
                self.line(node),
                "budget",
                "budget sets no limit; give at least one of usd, tokens, turns",
            ));
        }
        Ok(budget)
    }

    /// `allowed_tools: [Edit, "Bash(git:*)"]`.
    pub(super) fn allowed_tools(&self, node: &Node) -> Result<Vec<String>, SpecError> {
        let items = self.list(
            node,
            "allowed_tools",
            "a list of tool names, e.g. `[Edit, \"Bash(git:*)\"]`",
        )?;
        let mut tools = Vec::with_capacity(items.len());
        for item in items {
            match &item.value {
                Value::Str(t) if !t.trim().is_empty() => tools.push(t.clone()),
                _ => return Err(self.type_err(item, "allowed_tools", "a non-empty tool name")),
            }
        }
        Ok(tools)
    }

    /// `output: claude-stream-json` (command engine).
    pub(super) fn output(&self, node: &Node) -> Result<Format, SpecError> {
        let names = [
            Format::ClaudeStreamJson,
            Format::CodexJson,
            Format::GantryJsonl,
            Format::Text,
        ]
        .map(Format::as_str)
        .join(", ");
        let Value::Str(name) = &node.value else {
            return Err(self.type_err(node, "output", &format!("an output format ({names})")));
        };
        Format::parse(name).ok_or_else(|| {
            self.err(
                self.line(node),
                "output",
                format!("unknown output format {} (known: {names})", quote(name)),
            )
        })
    }

    /// `steps:` of the script engine: parsed by the engine crate, errors mapped back to
    /// the line of the step at fault.
    pub(super) fn steps(&self, node: &Node) -> Result<Vec<Step>, SpecError> {
        let items = self.list(
            node,
            "steps",
            "a list of steps, e.g. `[{write: a.txt, content: hi}, {say: done}]`",
        )?;
        let json = serde_json::Value::Array(items.iter().map(to_json).collect());
        crate::engine::parse_steps(&json).map_err(|e| {
            let line = items.get(e.index).map_or(self.line(node), |n| self.line(n));
            self.err(
                line,
                "steps",
                format!("step {} (`{}`): {}", e.index + 1, e.field, e.message),
            )
        })
    }
}

/// The YAML tree as JSON, for the engine crate's serde-based step parser.
pub(super) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => match i64::try_from(*i) {
            Ok(i) => J::from(i),
            Err(_) => J::from(*i as f64),
        },
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = match &k.value {
                    Value::Str(s) => s.clone(),
                    other => other.describe(),
                };
                map.insert(key, to_json(v));
            }
            J::Object(map)
        }
    }
}
