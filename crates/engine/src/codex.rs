//! The parser of Codex's `exec --json` output.
//!
//! What it maps, and why:
//! - `thread.started{thread_id}` → `SessionStarted`; Codex does not name the model, so
//!   `model` is `None` unless the line has one (callers that know the requested model
//!   set `Insights::model` themselves).
//! - `turn.started` → `TurnStarted`; `turn.completed{usage}` → `Usage` (Codex's
//!   `input_tokens` already includes `cached_input_tokens`).
//! - `turn.failed{error}` is fatal: `codex exec` runs one turn and gives up after a
//!   failed one, so it becomes the run's `Result` (success false, kind `turn_failed`,
//!   the error message as text) at once, and `finish` adds no second result.
//! - `item.*` by item type: `agent_message` → `Message` when completed;
//!   `command_execution`, `file_change`, `mcp_tool_call`, `web_search` → `ToolCall` at
//!   `item.started` (or at `item.completed` when no start was seen) and `ToolResult` at
//!   `item.completed`, an error when `exit_code` is non-zero or `status` is `failed` or
//!   `declined`; item type `error` → `Notice`. `reasoning` and `todo_list` items are
//!   skipped: they are the agent's private notes, not actions, and would swamp the log.
//!   A completed item of an unknown type is kept `Raw`.
//! - `error` lines (reconnects, stream hiccups) → `Notice`: not fatal.
//! - Codex prints no result line: `finish` emits one, successful when at least one turn
//!   completed and none failed.

use std::collections::HashSet;

use serde_json::Value;

use crate::event::{AgentEvent, clip};
use crate::format::{StreamParser, json_object, raw_event};

/// Item types that are tool calls.
const TOOL_ITEMS: [&str; 4] = [
    "command_execution",
    "file_change",
    "mcp_tool_call",
    "web_search",
];

/// Streaming state of one Codex run.
#[derive(Debug, Default)]
pub(crate) struct CodexParser {
    /// Turns started.
    turns: u32,
    /// Turns completed.
    completed: u32,
    /// Whether a result was already emitted (after a `turn.failed`).
    result_sent: bool,
    /// The thread id, repeated in the result.
    thread_id: Option<String>,
    /// Items whose tool call was emitted at `item.started`.
    started: HashSet<String>,
    /// Token totals so far: input (cached included), output, cached.
    tokens: (u64, u64, u64),
    /// Whether any turn reported usage.
    usage_seen: bool,
}

impl StreamParser for CodexParser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let value = match json_object(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "thread.started" => match str_field(&value, "thread_id") {
                Some(id) => {
                    self.thread_id = Some(id.clone());
                    vec![AgentEvent::SessionStarted {
                        session_id: id,
                        model: str_field(&value, "model"),
                    }]
                }
                None => vec![raw_event(kind, value)],
            },
            "turn.started" => {
                self.turns += 1;
                vec![AgentEvent::TurnStarted { turn: self.turns }]
            }
            "turn.completed" => {
                self.completed += 1;
                self.usage(&value).into_iter().collect()
            }
            "turn.failed" => {
                let mut events: Vec<AgentEvent> = self.usage(&value).into_iter().collect();
                let message = value
                    .get("error")
                    .map(error_message)
                    .unwrap_or_else(|| "turn failed".to_string());
                events.push(self.result(false, Some("turn_failed"), Some(message)));
                events
            }
            "item.started" | "item.updated" | "item.completed" => self.item(&kind, value),
            "error" => vec![AgentEvent::Notice {
                message: error_message(&value),
            }],
            _ => vec![raw_event(kind, value)],
        }
    }

    fn finish(&mut self) -> Vec<AgentEvent> {
        if self.result_sent {
            return Vec::new();
        }
        if self.completed > 0 {
            vec![self.result(true, None, None)]
        } else {
            vec![self.result(false, Some("no_turn_completed"), None)]
        }
    }
}

impl CodexParser {
    /// The `Usage` delta of a turn line that carries `usage`.
    fn usage(&mut self, value: &Value) -> Option<AgentEvent> {
        let usage = value.get("usage")?;
        let n = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        let (tokens_in, tokens_out, tokens_cached) = (
            n("input_tokens"),
            n("output_tokens"),
            n("cached_input_tokens"),
        );
        self.usage_seen = true;
        self.tokens.0 += tokens_in;
        self.tokens.1 += tokens_out;
        self.tokens.2 += tokens_cached;
        Some(AgentEvent::Usage {
            tokens_in,
            tokens_out,
            tokens_cached,
            cost_usd: None,
            model: None,
        })
    }

    /// The run's result, with the totals seen so far; marks it sent.
    fn result(&mut self, success: bool, kind: Option<&str>, text: Option<String>) -> AgentEvent {
        self.result_sent = true;
        let tokens = self.usage_seen.then_some(self.tokens);
        AgentEvent::Result {
            success,
            error_kind: kind.map(str::to_string),
            num_turns: Some(self.turns),
            cost_usd: None,
            tokens_in: tokens.map(|t| t.0),
            tokens_out: tokens.map(|t| t.1),
            tokens_cached: tokens.map(|t| t.2),
            session_id: self.thread_id.clone(),
            text: text.map(|t| clip(&t)),
        }
    }

    /// Maps an `item.started|updated|completed` line.
    fn item(&mut self, kind: &str, value: Value) -> Vec<AgentEvent> {
        let item = value.get("item").unwrap_or(&Value::Null);
        let item_type = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let id = str_field(item, "id");
        let completed = kind == "item.completed";
        match item_type {
            "agent_message" if completed => {
                let text = item.get("text").and_then(Value::as_str).unwrap_or("");
                if text.trim().is_empty() {
                    Vec::new()
                } else {
                    vec![AgentEvent::Message { text: clip(text) }]
                }
            }
            "error" if completed => vec![AgentEvent::Notice {
                message: error_message(item),
            }],
            t if TOOL_ITEMS.contains(&t) => {
                let mut events = Vec::new();
                let key = id.clone().unwrap_or_default();
                let call_sent = self.started.contains(&key);
                if !call_sent && (kind == "item.started" || completed) {
                    events.push(AgentEvent::ToolCall {
                        id: id.clone(),
                        name: t.to_string(),
                        input: tool_input(t, item),
                    });
                    if !completed {
                        self.started.insert(key.clone());
                    }
                }
                if completed {
                    self.started.remove(&key);
                    events.push(AgentEvent::ToolResult {
                        id,
                        is_error: tool_failed(item),
                        output: tool_output(t, item),
                    });
                }
                events
            }
            "agent_message" | "reasoning" | "todo_list" | "error" => Vec::new(),
            _ if completed => vec![raw_event(format!("{kind}:{item_type}"), value)],
            _ => Vec::new(),
        }
    }
}

/// Whether a completed tool item failed.
fn tool_failed(item: &Value) -> bool {
    let exit_failed = item
        .get("exit_code")
        .and_then(Value::as_i64)
        .is_some_and(|code| code != 0);
    let status_failed = matches!(
        item.get("status").and_then(Value::as_str),
        Some("failed" | "declined")
    );
    exit_failed || status_failed || item.get("error").is_some_and(|e| !e.is_null())
}

/// A tool item's input as text.
fn tool_input(item_type: &str, item: &Value) -> Option<String> {
    match item_type {
        "command_execution" => str_field(item, "command").map(|c| clip(&c)),
        "file_change" => item
            .get("changes")
            .and_then(Value::as_array)
            .map(|changes| {
                let lines: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {}",
                            c.get("kind").and_then(Value::as_str).unwrap_or("change"),
                            c.get("path").and_then(Value::as_str).unwrap_or("?")
                        )
                    })
                    .collect();
                clip(&lines.join("\n"))
            }),
        "mcp_tool_call" => {
            let server = item.get("server").and_then(Value::as_str).unwrap_or("?");
            let tool = item.get("tool").and_then(Value::as_str).unwrap_or("?");
            let args = item
                .get("arguments")
                .filter(|a| !a.is_null())
                .map(|a| format!(" {a}"))
                .unwrap_or_default();
            Some(clip(&format!("{server}.{tool}{args}")))
        }
        "web_search" => str_field(item, "query").map(|q| clip(&q)),
        _ => None,
    }
}

/// A completed tool item's output as text.
fn tool_output(item_type: &str, item: &Value) -> Option<String> {
    if let Some(error) = item.get("error").filter(|e| !e.is_null()) {
        return Some(error_message(error));
    }
    match item_type {
        "command_execution" => str_field(item, "aggregated_output").map(|o| clip(&o)),
        "mcp_tool_call" => item
            .get("result")
            .filter(|r| !r.is_null())
            .map(|r| clip(&r.to_string())),
        _ => str_field(item, "status"),
    }
}

/// The message of an error value: its `message` field, or the value itself as text.
fn error_message(v: &Value) -> String {
    match v {
        Value::String(s) => clip(s),
        _ => match v.get("message") {
            Some(Value::String(s)) => clip(s),
            Some(other) => error_message(other),
            None => clip(&v.to_string()),
        },
    }
}

/// A string field of `v`, owned.
fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}
