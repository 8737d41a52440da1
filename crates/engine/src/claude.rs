//! The parser of Claude Code's `-p --output-format stream-json --verbose` output.
//!
//! What it maps, and why:
//! - `system/init` → `SessionStarted` (session id, model). `system/api_retry` and
//!   `system/compact_boundary` → `Notice`; other system lines are kept `Raw` with
//!   `source_type` `system/<subtype>`.
//! - `assistant`: one API message may arrive as several lines sharing `message.id`,
//!   one content block each. A new id starts a turn (`TurnStarted`); text blocks →
//!   `Message`, every `tool_use` block → `ToolCall`. The message's `usage` repeats on
//!   each of its lines and may grow, so only the growth over what that id already
//!   reported becomes a `Usage` delta: each message is counted once.
//! - `user` lines with `tool_result` blocks → `ToolResult` (`is_error`).
//! - `result` → `Result`: success is `subtype == "success" && !is_error` (an API error
//!   arrives as subtype success with `is_error` true, kind `api_error`); totals come
//!   from `modelUsage` summed over models when present (it includes side-model calls
//!   that `usage` leaves out), else from `usage`.
//! - `stream_event` lines (only with `--include-partial-messages`) are skipped: the
//!   complete message follows. Anything else is kept `Raw`.
//!
//! Every field is optional: older versions omit newer ones.

use std::collections::HashMap;

use serde_json::Value;

use crate::event::{AgentEvent, clip};
use crate::format::{StreamParser, json_object, raw_event};

/// Token figures of one API message, normalized (see the crate docs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tokens {
    /// All input tokens, cache reads and writes included.
    input: u64,
    /// Output tokens.
    output: u64,
    /// Cache-read input tokens.
    cached: u64,
}

impl Tokens {
    /// Reads an Anthropic `usage` object (`input_tokens`, `cache_read_input_tokens`, ...).
    fn from_usage(usage: &Value) -> Tokens {
        let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        let cached = n("cache_read_input_tokens");
        Tokens {
            input: n("input_tokens") + cached + n("cache_creation_input_tokens"),
            output: n("output_tokens"),
            cached,
        }
    }

    /// Reads one model's entry of a result's `modelUsage` (camelCase keys).
    fn from_model_usage(usage: &Value) -> Tokens {
        let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        let cached = n("cacheReadInputTokens");
        Tokens {
            input: n("inputTokens") + cached + n("cacheCreationInputTokens"),
            output: n("outputTokens"),
            cached,
        }
    }
}

/// Streaming state of one Claude Code run.
#[derive(Debug, Default)]
pub(crate) struct ClaudeParser {
    /// Turns started so far (distinct assistant message ids).
    turns: u32,
    /// Tokens already reported per assistant message id.
    seen: HashMap<String, Tokens>,
}

impl StreamParser for ClaudeParser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let value = match json_object(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        let kind = str_field(&value, "type").unwrap_or_default();
        match kind.as_str() {
            "system" => system(value),
            "assistant" => self.assistant(&value),
            "user" => user(&value),
            "result" => vec![result(&value)],
            "stream_event" => Vec::new(),
            _ => vec![raw_event(kind, value)],
        }
    }

    fn finish(&mut self) -> Vec<AgentEvent> {
        Vec::new()
    }
}

impl ClaudeParser {
    /// Maps an `assistant` line: a turn when its message id is new, its text and
    /// tool_use blocks, and the growth of its usage.
    fn assistant(&mut self, value: &Value) -> Vec<AgentEvent> {
        let mut events = Vec::new();
        let message = value.get("message").unwrap_or(&Value::Null);
        let id = str_field(message, "id");
        let new_turn = match &id {
            Some(id) => !self.seen.contains_key(id),
            // Without ids every line is its own message.
            None => true,
        };
        if new_turn {
            self.turns += 1;
            events.push(AgentEvent::TurnStarted { turn: self.turns });
        }

        if let Some(blocks) = message.get("content").and_then(Value::as_array) {
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if !text.trim().is_empty() {
                            events.push(AgentEvent::Message { text: clip(text) });
                        }
                    }
                    Some("tool_use" | "server_tool_use") => events.push(AgentEvent::ToolCall {
                        id: str_field(block, "id"),
                        name: str_field(block, "name").unwrap_or_else(|| "tool".to_string()),
                        input: block.get("input").map(text_of),
                    }),
                    _ => {}
                }
            }
        } else if let Some(text) = message.get("content").and_then(Value::as_str)
            && !text.trim().is_empty()
        {
            events.push(AgentEvent::Message { text: clip(text) });
        }

        if let Some(usage) = message.get("usage") {
            let now = Tokens::from_usage(usage);
            let before = id
                .as_ref()
                .and_then(|id| self.seen.get(id).copied())
                .unwrap_or_default();
            let delta = Tokens {
                input: now.input.saturating_sub(before.input),
                output: now.output.saturating_sub(before.output),
                cached: now.cached.saturating_sub(before.cached),
            };
            if delta != Tokens::default() {
                let model = str_field(message, "model").filter(|m| m != "<synthetic>");
                events.push(AgentEvent::Usage {
                    tokens_in: delta.input,
                    tokens_out: delta.output,
                    tokens_cached: delta.cached,
                    cost_usd: None,
                    model,
                });
            }
            if let Some(id) = &id {
                let kept = self.seen.entry(id.clone()).or_default();
                kept.input = kept.input.max(now.input);
                kept.output = kept.output.max(now.output);
                kept.cached = kept.cached.max(now.cached);
            }
        } else if let Some(id) = &id {
            self.seen.entry(id.clone()).or_default();
        }
        events
    }
}

/// Maps a `system` line by its subtype.
fn system(value: Value) -> Vec<AgentEvent> {
    let subtype = str_field(&value, "subtype").unwrap_or_default();
    match subtype.as_str() {
        "init" => match str_field(&value, "session_id") {
            Some(session_id) => vec![AgentEvent::SessionStarted {
                session_id,
                model: str_field(&value, "model"),
            }],
            None => vec![raw_event("system/init".to_string(), value)],
        },
        "api_retry" => {
            let n = |key: &str| value.get(key).and_then(Value::as_u64);
            let mut message = String::from("API retry");
            if let Some(attempt) = n("attempt") {
                message.push_str(&format!(" {attempt}"));
                if let Some(max) = n("max_retries") {
                    message.push_str(&format!("/{max}"));
                }
            }
            if let Some(status) = value.get("error_status").filter(|s| !s.is_null()) {
                message.push_str(&format!(" (status {})", text_of(status)));
            }
            if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
                message.push_str(&format!(": {}", text_of(error)));
            }
            if let Some(delay) = n("retry_delay_ms") {
                message.push_str(&format!(", next in {delay} ms"));
            }
            vec![AgentEvent::Notice {
                message: clip(&message),
            }]
        }
        "compact_boundary" => vec![AgentEvent::Notice {
            message: "context compacted".to_string(),
        }],
        "" => vec![raw_event("system".to_string(), value)],
        other => vec![raw_event(format!("system/{other}"), value)],
    }
}

/// Maps a `user` line: its tool_result blocks (other user content is the prompt).
fn user(value: &Value) -> Vec<AgentEvent> {
    let Some(blocks) = value
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
        .map(|b| AgentEvent::ToolResult {
            id: str_field(b, "tool_use_id"),
            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            output: b.get("content").map(content_text),
        })
        .collect()
}

/// Maps the `result` line.
fn result(value: &Value) -> AgentEvent {
    let subtype = str_field(value, "subtype");
    let is_error = value
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let success = !is_error && subtype.as_deref().is_none_or(|s| s == "success");
    let error_kind = match subtype.as_deref() {
        Some(s) if s != "success" => Some(s.to_string()),
        _ if is_error => Some("api_error".to_string()),
        _ => None,
    };
    let model_usage: Vec<Tokens> = value
        .get("modelUsage")
        .and_then(Value::as_object)
        .map(|models| models.values().map(Tokens::from_model_usage).collect())
        .unwrap_or_default();
    let totals = if !model_usage.is_empty() {
        Some(model_usage.iter().fold(Tokens::default(), |a, t| Tokens {
            input: a.input + t.input,
            output: a.output + t.output,
            cached: a.cached + t.cached,
        }))
    } else {
        value.get("usage").map(Tokens::from_usage)
    };
    let model_cost: Option<f64> =
        value
            .get("modelUsage")
            .and_then(Value::as_object)
            .and_then(|models| {
                models
                    .values()
                    .map(|m| m.get("costUSD").and_then(Value::as_f64))
                    .sum::<Option<f64>>()
            });
    // Older versions named the total `cost_usd`.
    let cost_usd = value
        .get("total_cost_usd")
        .or_else(|| value.get("cost_usd"))
        .and_then(Value::as_f64)
        .or(model_cost);
    AgentEvent::Result {
        success,
        error_kind,
        num_turns: value
            .get("num_turns")
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        cost_usd,
        tokens_in: totals.map(|t| t.input),
        tokens_out: totals.map(|t| t.output),
        tokens_cached: totals.map(|t| t.cached),
        session_id: str_field(value, "session_id"),
        text: value
            .get("result")
            .and_then(Value::as_str)
            .map(clip)
            .or_else(|| {
                // Failed runs may carry their reasons in `errors` instead.
                value
                    .get("errors")
                    .and_then(Value::as_array)
                    .filter(|e| !e.is_empty())
                    .map(|e| clip(&e.iter().map(text_of).collect::<Vec<_>>().join("; ")))
            }),
    }
}

/// A string field of `v`, owned.
fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A value as text: strings as they are, anything else as compact JSON; clipped.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => clip(s),
        other => clip(&other.to_string()),
    }
}

/// A tool_result's content as text: a string, or the text blocks of a block list.
fn content_text(v: &Value) -> String {
    match v {
        Value::Array(blocks) => {
            let texts: Vec<&str> = blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            if texts.is_empty() {
                text_of(v)
            } else {
                clip(&texts.join("\n"))
            }
        }
        other => text_of(other),
    }
}
