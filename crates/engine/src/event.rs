//! The normalized agent event: what every engine's output is turned into.

use serde::{Deserialize, Serialize};

/// Most bytes a text field of an event keeps; the full transcript stays in the run's
/// output file, so events stay small enough for the event log.
pub const MAX_TEXT_BYTES: usize = 4096;

/// One normalized event of an agent run, whatever engine produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent's session began; its id is what a retry resumes.
    SessionStarted {
        /// The engine's session (Claude) or thread (Codex) id.
        session_id: String,
        /// The model, when the engine names it.
        model: Option<String>,
    },
    /// A new turn (one model response) began; turns count from 1.
    TurnStarted {
        /// The 1-based number of this turn in the run.
        turn: u32,
    },
    /// Text the agent said.
    Message {
        /// The text, cut to [`MAX_TEXT_BYTES`].
        text: String,
    },
    /// The agent called a tool.
    ToolCall {
        /// The tool call id, to pair with its result.
        id: Option<String>,
        /// The tool's name (e.g. `Bash`, `command_execution`).
        name: String,
        /// The tool input as text, cut to [`MAX_TEXT_BYTES`].
        input: Option<String>,
    },
    /// A tool call finished.
    ToolResult {
        /// The id of the call this answers.
        id: Option<String>,
        /// Whether the tool failed.
        is_error: bool,
        /// The tool output as text, cut to [`MAX_TEXT_BYTES`].
        output: Option<String>,
    },
    /// Tokens and cost spent since the last usage event: a delta to add.
    Usage {
        /// All input tokens, cached ones included.
        tokens_in: u64,
        /// Output tokens.
        tokens_out: u64,
        /// The cache-read part of `tokens_in`.
        tokens_cached: u64,
        /// Cost of this delta in USD, when the engine reports it.
        cost_usd: Option<f64>,
        /// The model these tokens were spent on, when known.
        model: Option<String>,
    },
    /// A non-fatal problem (an API retry, a reconnect, a warning).
    Notice {
        /// What happened.
        message: String,
    },
    /// The run's end as the agent reports it; totals here are authoritative when present.
    Result {
        /// Whether the agent finished its task without error.
        success: bool,
        /// Why it failed (e.g. `error_max_turns`, `api_error`, `turn_failed`).
        error_kind: Option<String>,
        /// Turns taken in total.
        num_turns: Option<u32>,
        /// Total cost in USD.
        cost_usd: Option<f64>,
        /// Total input tokens, cached ones included.
        tokens_in: Option<u64>,
        /// Total output tokens.
        tokens_out: Option<u64>,
        /// Total cache-read input tokens.
        tokens_cached: Option<u64>,
        /// The session id, when the result names it.
        session_id: Option<String>,
        /// The final text, cut to [`MAX_TEXT_BYTES`].
        text: Option<String>,
    },
    /// An event this crate does not know, kept as it came.
    Raw {
        /// The source event's type, or `text` for a line that is not JSON.
        source_type: String,
        /// The source line (a JSON string for a line that is not JSON).
        line: serde_json::Value,
    },
}

impl AgentEvent {
    /// The event-log kind of this event, e.g. `agent.tool_call`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentEvent::SessionStarted { .. } => "agent.session_started",
            AgentEvent::TurnStarted { .. } => "agent.turn_started",
            AgentEvent::Message { .. } => "agent.message",
            AgentEvent::ToolCall { .. } => "agent.tool_call",
            AgentEvent::ToolResult { .. } => "agent.tool_result",
            AgentEvent::Usage { .. } => "agent.usage",
            AgentEvent::Notice { .. } => "agent.notice",
            AgentEvent::Result { .. } => "agent.result",
            AgentEvent::Raw { .. } => "agent.raw",
        }
    }
}

impl AgentEvent {
    /// This event with its long text fields cut to [`MAX_TEXT_BYTES`], for events that
    /// come from a source that may not have cut them (Gantry JSON lines).
    pub fn clipped(self) -> AgentEvent {
        let opt = |t: Option<String>| t.map(|t| clip(&t));
        match self {
            AgentEvent::Message { text } => AgentEvent::Message { text: clip(&text) },
            AgentEvent::Notice { message } => AgentEvent::Notice {
                message: clip(&message),
            },
            AgentEvent::ToolCall { id, name, input } => AgentEvent::ToolCall {
                id,
                name: clip(&name),
                input: opt(input),
            },
            AgentEvent::ToolResult {
                id,
                is_error,
                output,
            } => AgentEvent::ToolResult {
                id,
                is_error,
                output: opt(output),
            },
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
            } => AgentEvent::Result {
                success,
                error_kind,
                num_turns,
                cost_usd,
                tokens_in,
                tokens_out,
                tokens_cached,
                session_id,
                text: opt(text),
            },
            other => other,
        }
    }
}

/// Cuts `text` to at most [`MAX_TEXT_BYTES`] bytes on a char boundary, ending it with a
/// marker that says how many bytes were cut.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    // The marker itself takes room; reserve enough for the longest count.
    let budget = MAX_TEXT_BYTES - 40;
    let mut end = budget;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &text[..end], text.len() - end)
}
