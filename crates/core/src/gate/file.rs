//! Gate lists written in TOML: a repository's `.gantry/gates.toml` (read from the base
//! commit) and the profiles of `gantry.toml`. Both hold `[[gate]]` tables with the job
//! file's keys and go through the same [`super::parse_gates`].

use super::{Gate, parse_gates};

/// Where a repository keeps the gates that apply to every job on it.
pub const REPO_GATES_FILE: &str = ".gantry/gates.toml";
/// The largest gates file read.
pub const MAX_GATES_FILE: usize = 256 * 1024;

/// A gates file that could not be used: the file, the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct GatesFileError {
    /// The file, as the user knows it (e.g. `.gantry/gates.toml at 1a2b3c4`).
    pub file: String,
    /// What is wrong, naming the key (and the line, for TOML syntax errors).
    pub message: String,
}

/// Reads a TOML gates file: `[[gate]]` tables and nothing else.
pub fn parse_gates_file(file: &str, text: &str) -> Result<Vec<Gate>, GatesFileError> {
    let err = |message: String| GatesFileError {
        file: file.to_string(),
        message,
    };
    if text.len() > MAX_GATES_FILE {
        return Err(err(format!(
            "{} bytes; a gates file may have at most {MAX_GATES_FILE}",
            text.len()
        )));
    }
    let table: toml::Table =
        toml::from_str(text).map_err(|e| err(e.to_string().trim().to_string()))?;
    if let Some(key) = table.keys().find(|k| k.as_str() != "gate") {
        return Err(err(format!(
            "unknown key `{key}`: a gates file holds `[[gate]]` tables only"
        )));
    }
    gates_of(table.get("gate")).map_err(err)
}

/// Reads the gates of one profile: the value under `gates.profiles.<name>` of
/// `gantry.toml`, a table with a `gate` array.
pub fn parse_profile(name: &str, value: &toml::Value) -> Result<Vec<Gate>, String> {
    let at = format!("gates.profiles.{name}");
    let toml::Value::Table(table) = value else {
        return Err(format!("{at}: expected a table of `[[{at}.gate]]` entries"));
    };
    if let Some(key) = table.keys().find(|k| k.as_str() != "gate") {
        return Err(format!(
            "{at}.{key}: unknown key (a profile holds `gate` entries)"
        ));
    }
    gates_of(table.get("gate")).map_err(|m| format!("{at}: {m}"))
}

fn gates_of(value: Option<&toml::Value>) -> Result<Vec<Gate>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let json = serde_json::to_value(value).map_err(|e| format!("`gate`: {e}"))?;
    parse_gates(&json).map_err(|e| e.to_string())
}
