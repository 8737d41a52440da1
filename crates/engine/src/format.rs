//! Output formats an agent may print, and the streaming parsers that turn each into
//! [`AgentEvent`]s line by line.

use crate::event::AgentEvent;
pub use gantry_core::engine::Format;

/// Turns an engine's output, one line at a time, into normalized events.
pub trait StreamParser: Send {
    /// Parses one complete line (without its line ending) into zero or more events.
    fn line(&mut self, line: &str) -> Vec<AgentEvent>;
    /// Called once at the end of the stream: emits what only the end reveals (e.g.
    /// Codex's result, which it never prints).
    fn finish(&mut self) -> Vec<AgentEvent>;
}

/// A new parser for `format`.
pub fn parser(format: Format) -> Box<dyn StreamParser> {
    match format {
        Format::ClaudeStreamJson => Box::new(crate::claude::ClaudeParser::default()),
        Format::CodexJson => Box::new(crate::codex::CodexParser::default()),
        Format::GantryJsonl => Box::new(GantryParser),
        Format::Text => Box::new(TextParser),
    }
}

/// The raw event kept for a line that is not JSON.
pub(crate) fn raw_text(line: &str) -> AgentEvent {
    AgentEvent::Raw {
        source_type: "text".to_string(),
        line: serde_json::Value::String(crate::event::clip(line)),
    }
}

/// Most bytes of a raw event's serialized line; longer ones are kept as clipped text.
const MAX_RAW_BYTES: usize = 4 * crate::event::MAX_TEXT_BYTES;

/// The raw event kept for an event this crate does not know. Long strings inside are
/// clipped, and a line still too long after that is kept as clipped text, so one odd
/// event cannot flood the event log.
pub(crate) fn raw_event(source_type: String, mut line: serde_json::Value) -> AgentEvent {
    clip_strings(&mut line);
    let text = line.to_string();
    if text.len() > MAX_RAW_BYTES {
        line = serde_json::Value::String(crate::event::clip(&text));
    }
    AgentEvent::Raw { source_type, line }
}

/// Clips every string inside `v` to the event text limit.
fn clip_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.len() > crate::event::MAX_TEXT_BYTES => {
            *s = crate::event::clip(s);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clip_strings),
        serde_json::Value::Object(map) => map.values_mut().for_each(clip_strings),
        _ => {}
    }
}

/// Reads a line as a JSON object; otherwise the events to emit instead: a raw text
/// event for a line that is not a JSON object, nothing for a blank line.
pub(crate) fn json_object(line: &str) -> Result<serde_json::Value, Vec<AgentEvent>> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Err(Vec::new());
    }
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(vec![raw_text(line)]),
    }
}

/// Parses Gantry's own JSON lines: each line is one serialized [`AgentEvent`].
struct GantryParser;

impl StreamParser for GantryParser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        let value = match json_object(line) {
            Ok(v) => v,
            Err(events) => return events,
        };
        match serde_json::from_value::<AgentEvent>(value.clone()) {
            Ok(ev) => vec![ev.clipped()],
            Err(_) => {
                let source_type = value
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("unknown")
                    .to_string();
                vec![raw_event(source_type, value)]
            }
        }
    }

    fn finish(&mut self) -> Vec<AgentEvent> {
        Vec::new()
    }
}

/// Parses plain text: nothing to understand, every non-blank line is kept raw.
struct TextParser;

impl StreamParser for TextParser {
    fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        if line.trim().is_empty() {
            Vec::new()
        } else {
            vec![raw_text(line)]
        }
    }

    fn finish(&mut self) -> Vec<AgentEvent> {
        Vec::new()
    }
}

/// What the agent said on one line of its `format` output, whole (events clip their
/// text; a reviewer's verdict must be read uncut): the text of its messages and of its
/// final result, in order. Lines that say nothing give nothing.
pub fn said(format: Format, line: &str) -> Vec<String> {
    use serde_json::Value;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return match format {
            Format::Text if !line.trim().is_empty() => vec![line.to_string()],
            _ => Vec::new(),
        };
    };
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let out: Vec<String> = match format {
        Format::ClaudeStreamJson => match kind {
            "assistant" => {
                let content = value.get("message").and_then(|m| m.get("content"));
                match content {
                    Some(Value::Array(blocks)) => blocks
                        .iter()
                        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                        .filter_map(|b| text(b.get("text")))
                        .collect(),
                    Some(Value::String(s)) => vec![s.clone()],
                    _ => Vec::new(),
                }
            }
            "result" => text(value.get("result")).into_iter().collect(),
            _ => Vec::new(),
        },
        Format::CodexJson => {
            let item = value.get("item");
            let is_message =
                item.and_then(|i| i.get("type")).and_then(Value::as_str) == Some("agent_message");
            if kind == "item.completed" && is_message {
                text(item.and_then(|i| i.get("text"))).into_iter().collect()
            } else {
                Vec::new()
            }
        }
        Format::GantryJsonl => match serde_json::from_value::<AgentEvent>(value) {
            Ok(AgentEvent::Message { text }) => vec![text],
            Ok(AgentEvent::Result {
                text: Some(text), ..
            }) => vec![text],
            _ => Vec::new(),
        },
        Format::Text => vec![line.to_string()],
    };
    out.into_iter().filter(|t| !t.trim().is_empty()).collect()
}

#[cfg(test)]
mod said_tests {
    use super::*;

    #[test]
    fn long_messages_are_read_whole_in_every_format() {
        let long = "x".repeat(crate::event::MAX_TEXT_BYTES * 3);
        let claude = serde_json::json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": long}, {"type": "tool_use", "name": "Read"}]}});
        assert_eq!(
            said(Format::ClaudeStreamJson, &claude.to_string()),
            vec![long.clone()]
        );
        let result = serde_json::json!({"type": "result", "result": "done"});
        assert_eq!(
            said(Format::ClaudeStreamJson, &result.to_string()),
            vec!["done"]
        );
        let codex = serde_json::json!({"type": "item.completed",
            "item": {"type": "agent_message", "text": long}});
        assert_eq!(
            said(Format::CodexJson, &codex.to_string()),
            vec![long.clone()]
        );
        let started = serde_json::json!({"type": "item.started",
            "item": {"type": "agent_message", "text": "partial"}});
        assert!(said(Format::CodexJson, &started.to_string()).is_empty());
        let script = serde_json::json!({"type": "message", "text": long});
        assert_eq!(said(Format::GantryJsonl, &script.to_string()), vec![long]);
        assert!(said(Format::GantryJsonl, "not json").is_empty());
        assert_eq!(said(Format::Text, "plain words"), vec!["plain words"]);
    }
}
