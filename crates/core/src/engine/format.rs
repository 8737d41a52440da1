//! The machine-output formats an engine's stdout may have; `gantry-engine` has a
//! streaming parser for each.

use serde::{Deserialize, Serialize};

/// The machine-output format of an engine's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Format {
    /// Claude Code `-p --output-format stream-json --verbose`.
    #[serde(rename = "claude-stream-json")]
    ClaudeStreamJson,
    /// Codex `exec --json`.
    #[serde(rename = "codex-json")]
    CodexJson,
    /// One serialized agent event per line, as the script engine prints.
    #[serde(rename = "gantry-jsonl")]
    GantryJsonl,
    /// Plain text: no events are parsed, every line is kept as a raw text event.
    #[serde(rename = "text")]
    Text,
}

impl Format {
    /// Every format, in a stable order.
    pub const ALL: [Format; 4] = [
        Format::ClaudeStreamJson,
        Format::CodexJson,
        Format::GantryJsonl,
        Format::Text,
    ];

    /// The format's name as written in job files and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::ClaudeStreamJson => "claude-stream-json",
            Format::CodexJson => "codex-json",
            Format::GantryJsonl => "gantry-jsonl",
            Format::Text => "text",
        }
    }

    /// The format named `name`, or `None` when no format has that name.
    pub fn parse(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
