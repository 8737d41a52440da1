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
