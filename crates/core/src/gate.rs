//! Gates: named commands that check an agent's result in its worktree after the agent
//! stops, and the figures some of them are judged by.
//!
//! Gates come from three places (the job file, a profile in `gantry.toml`, and the
//! repository's own `.gantry/gates.toml` read from the base commit), written as YAML in
//! one and TOML in the others. Each source is turned into JSON and read by
//! [`parse_gates`], so every rule about what a gate may be lives here once. The
//! figures ([`Metric::figure`]) are pure functions of text the caller has read.

mod file;

pub use file::{GatesFileError, MAX_GATES_FILE, REPO_GATES_FILE, parse_gates_file, parse_profile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Fix rounds a job gets when it does not say.
pub const DEFAULT_FIX_ROUNDS: u32 = 2;
/// The most fix rounds a job may ask for.
pub const MAX_FIX_ROUNDS: u32 = 10;
/// The most gates one job may have, from every source together.
pub const MAX_GATES: usize = 32;
/// A gate's timeout when it does not set one.
pub const DEFAULT_GATE_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// The longest timeout a gate may set.
pub const MAX_GATE_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest gate name.
pub const MAX_GATE_NAME: usize = 64;
/// The longest command a gate may run.
pub const MAX_GATE_RUN: usize = 4096;
/// The longest metric file path or regex pattern.
pub const MAX_METRIC_TEXT: usize = 1024;

/// A validated gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// Unique within the job; letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// A shell command, run with `sh -c` in the run's worktree.
    pub run: String,
    /// How long the command may run before its process group is killed.
    pub timeout_ms: u64,
    /// When set, the gate passes only if this figure meets its minimum (and the
    /// command exited 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
}

/// A figure a gate is judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// A file in the worktree, relative to its root; `None` reads the gate's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// How the figure is read.
    #[serde(flatten)]
    pub format: MetricFormat,
    /// The lowest figure that passes.
    pub min: f64,
}

/// How a [`Metric`]'s figure is read from its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum MetricFormat {
    /// Line coverage in percent from an lcov tracefile: the sum of `LH` over `LF`.
    Lcov,
    /// Line coverage in percent from a Cobertura report: the root's `line-rate` × 100.
    Cobertura,
    /// The first capture group of the pattern's last match, as a number.
    Regex {
        /// A regular expression with at least one capture group.
        pattern: String,
    },
}

/// Which gates a job asked for in its file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateChoice {
    /// No gates of its own (the repository's still apply).
    #[default]
    None,
    /// Gates written in the job file.
    Inline(Vec<Gate>),
    /// A named profile of `gantry.toml`, resolved by the server at submit.
    Profile(String),
}

impl GateChoice {
    /// Whether the job asked for nothing.
    pub fn is_none(&self) -> bool {
        matches!(self, GateChoice::None)
    }
}

/// A gate list that could not be accepted: which gate, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct GateError {
    /// The gate's position in its list (from 0), when the error is about one gate.
    pub index: Option<usize>,
    /// The key at fault, e.g. `metric.min`; empty for the list as a whole.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl GateError {
    fn new(index: Option<usize>, key: &str, message: impl Into<String>) -> GateError {
        GateError {
            index,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn describe(&self) -> String {
        match (self.index, self.key.is_empty()) {
            (Some(i), false) => format!("gate {} `{}`: {}", i + 1, self.key, self.message),
            (Some(i), true) => format!("gate {}: {}", i + 1, self.message),
            (None, false) => format!("`{}`: {}", self.key, self.message),
            (None, true) => self.message.clone(),
        }
    }
}

/// The keys a gate may have, as written by people.
const GATE_KEYS: [&str; 4] = ["name", "run", "timeout", "metric"];
/// The keys a gate's metric may have.
const METRIC_KEYS: [&str; 4] = ["file", "format", "pattern", "min"];

/// Reads a list of gates (a JSON array of objects with `name`, `run`, optional `timeout`
/// and `metric`), checking every rule: names unique and well formed, a command, a
/// timeout within bounds, a metric with a known format, a safe file path and a pattern
/// that compiles with a capture group.
pub fn parse_gates(list: &serde_json::Value) -> Result<Vec<Gate>, GateError> {
    let serde_json::Value::Array(items) = list else {
        return Err(GateError::new(
            None,
            "",
            format!("expected a list of gates, found {}", kind(list)),
        ));
    };
    if items.len() > MAX_GATES {
        return Err(GateError::new(
            None,
            "",
            format!(
                "{} gates given; at most {MAX_GATES} are allowed",
                items.len()
            ),
        ));
    }
    let mut names = BTreeSet::new();
    let mut gates = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let gate =
            parse_gate(item).map_err(|(key, message)| GateError::new(Some(i), key, message))?;
        if !names.insert(gate.name.clone()) {
            return Err(GateError::new(
                Some(i),
                "name",
                format!("duplicate gate name `{}`", gate.name),
            ));
        }
        gates.push(gate);
    }
    Ok(gates)
}

/// Joins gate lists from several sources in order; a later gate with a name already
/// taken is refused, since two gates of one name would make results ambiguous.
pub fn merge(sources: &[(&str, &[Gate])]) -> Result<Vec<Gate>, String> {
    let mut out: Vec<Gate> = Vec::new();
    let mut from: Vec<&str> = Vec::new();
    for (source, gates) in sources {
        for gate in *gates {
            if let Some(i) = out.iter().position(|g| g.name == gate.name) {
                return Err(format!(
                    "gate `{}` is set both by {} and by {source}; rename one",
                    gate.name, from[i]
                ));
            }
            out.push(gate.clone());
            from.push(source);
        }
    }
    if out.len() > MAX_GATES {
        return Err(format!(
            "{} gates in all; at most {MAX_GATES} are allowed",
            out.len()
        ));
    }
    Ok(out)
}

type KeyError = (&'static str, String);

fn parse_gate(item: &serde_json::Value) -> Result<Gate, KeyError> {
    let serde_json::Value::Object(map) = item else {
        return Err((
            "",
            format!("expected a map with `name` and `run`, found {}", kind(item)),
        ));
    };
    unknown_keys(map, &GATE_KEYS, "")?;
    let name = string(map, "name")?.ok_or(("name", "missing `name`".to_string()))?;
    check_name(&name).map_err(|m| ("name", m))?;
    let run =
        string(map, "run")?.ok_or(("run", "missing `run`: the command to run".to_string()))?;
    if run.trim().is_empty() {
        return Err(("run", "`run` must not be empty".to_string()));
    }
    if run.len() > MAX_GATE_RUN {
        return Err((
            "run",
            format!("`run` is {} bytes; at most {MAX_GATE_RUN}", run.len()),
        ));
    }
    let timeout_ms = match map.get("timeout") {
        None | Some(serde_json::Value::Null) => DEFAULT_GATE_TIMEOUT_MS,
        Some(v) => timeout(v).map_err(|m| ("timeout", m))?,
    };
    let metric = match map.get("metric") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(metric(v)?),
    };
    Ok(Gate {
        name,
        run,
        timeout_ms,
        metric,
    })
}

fn metric(v: &serde_json::Value) -> Result<Metric, KeyError> {
    let serde_json::Value::Object(map) = v else {
        return Err((
            "metric",
            format!(
                "expected a map like `{{ file: lcov.info, format: lcov, min: 85 }}`, found {}",
                kind(v)
            ),
        ));
    };
    unknown_keys(map, &METRIC_KEYS, "metric.")?;
    let file = string(map, "file").map_err(|(_, m)| ("metric.file", m))?;
    if let Some(f) = &file {
        check_path(f).map_err(|m| ("metric.file", m))?;
    }
    let format_name = string(map, "format")
        .map_err(|(_, m)| ("metric.format", m))?
        .ok_or((
            "metric.format",
            "missing `format`: lcov, cobertura or regex".to_string(),
        ))?;
    let pattern = string(map, "pattern").map_err(|(_, m)| ("metric.pattern", m))?;
    let format = match (format_name.as_str(), pattern) {
        ("lcov" | "cobertura", Some(_)) => {
            return Err((
                "metric.pattern",
                format!("`pattern` is only for format regex, not {format_name}"),
            ));
        }
        ("lcov", None) => MetricFormat::Lcov,
        ("cobertura", None) => MetricFormat::Cobertura,
        ("regex", Some(p)) => {
            check_pattern(&p).map_err(|m| ("metric.pattern", m))?;
            MetricFormat::Regex { pattern: p }
        }
        ("regex", None) => {
            return Err((
                "metric.pattern",
                "format regex needs a `pattern` with a capture group, e.g. `coverage: ([0-9.]+)%`"
                    .to_string(),
            ));
        }
        (other, _) => {
            return Err((
                "metric.format",
                format!("unknown format `{other}` (known: lcov, cobertura, regex)"),
            ));
        }
    };
    if file.is_none() && !matches!(format, MetricFormat::Regex { .. }) {
        return Err((
            "metric.file",
            format!("format {format_name} is read from a file: set `file`, e.g. `file: lcov.info`"),
        ));
    }
    let min = match map.get("min") {
        Some(serde_json::Value::Number(n)) => n.as_f64().filter(|x| x.is_finite()),
        None | Some(serde_json::Value::Null) => {
            return Err((
                "metric.min",
                "missing `min`: the lowest figure that passes".to_string(),
            ));
        }
        Some(_) => None,
    }
    .ok_or(("metric.min", "expected a number".to_string()))?;
    if !matches!(format, MetricFormat::Regex { .. }) && !(0.0..=100.0).contains(&min) {
        return Err((
            "metric.min",
            format!("{min} is not a percentage: coverage minimums are within 0..=100"),
        ));
    }
    Ok(Metric { file, format, min })
}

fn unknown_keys(
    map: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), KeyError> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err((
            "",
            format!("unknown key `{prefix}{k}` (known: {})", known.join(", ")),
        )),
    }
}

fn string(
    map: &serde_json::Map<String, serde_json::Value>,
    key: &'static str,
) -> Result<Option<String>, KeyError> {
    match map.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err((key, format!("expected a string, found {}", kind(other)))),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_GATE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid gate name {name:?}: 1 to {MAX_GATE_NAME} letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// A metric file must stay inside the worktree: relative, with no `..`.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_METRIC_TEXT {
        return Err(format!("the path must be 1 to {MAX_METRIC_TEXT} bytes"));
    }
    if path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') {
        return Err(format!(
            "{path:?} leaves the worktree: give a path relative to the repository root, without `..`"
        ));
    }
    Ok(())
}

fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.len() > MAX_METRIC_TEXT {
        return Err(format!(
            "the pattern is longer than {MAX_METRIC_TEXT} bytes"
        ));
    }
    let re = regex::Regex::new(pattern).map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
    if re.captures_len() < 2 {
        return Err(format!(
            "{pattern:?} has no capture group: put the figure in parentheses, e.g. `([0-9.]+)`"
        ));
    }
    Ok(())
}

/// A timeout: a string like `90s` or `10m`, or a whole number of seconds.
fn timeout(v: &serde_json::Value) -> Result<u64, String> {
    let hint = "write e.g. `90s`, `10m`, or a whole number of seconds";
    let ms = match v {
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(secs) => u128::from(secs) * 1000,
            None => {
                return Err(format!(
                    "{n} is not a whole, non-negative number of seconds; {hint}"
                ));
            }
        },
        serde_json::Value::String(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("invalid duration {s:?}: {e}; {hint}"))?
            .as_millis(),
        other => {
            return Err(format!(
                "expected a duration, found {}; {hint}",
                kind(other)
            ));
        }
    };
    if ms == 0 || ms > u128::from(MAX_GATE_TIMEOUT_MS) {
        return Err(format!(
            "the timeout must be longer than zero and at most 24h; {hint}"
        ));
    }
    Ok(u64::try_from(ms).expect("checked to be at most MAX_GATE_TIMEOUT_MS"))
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

/// What happened to one gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate's name.
    pub name: String,
    /// Whether it passed: exit 0 and, with a metric, a figure at or above its minimum.
    pub passed: bool,
    /// The command's exit code; `None` when it was killed or never started.
    pub exit_code: Option<i32>,
    /// The figure read, when the gate has a metric and it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<f64>,
    /// How long it ran.
    pub duration_ms: u64,
    /// The tree of the worktree it ran on.
    pub tree: String,
    /// Why it failed, in words: a timeout, a stop, a figure under its minimum, a
    /// metric that could not be read, a command that could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The file holding its output (standard output and error together), on the
    /// factory that ran it.
    pub output: String,
    /// The last few KiB of that output (redacted like every uploaded string), so a
    /// failed gate's output is one `gantry show` away wherever the factory ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_tail: String,
}

/// Why a figure could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// An lcov tracefile with no `LF` lines, or with more hit lines than lines.
    #[error("no line counts in the lcov data (no `LF:` records with lines)")]
    LcovEmpty,
    /// A line of the lcov data that should hold a count does not.
    #[error("lcov line {line}: {text:?} is not a count")]
    LcovCount {
        /// The line number, from 1.
        line: usize,
        /// The line as written.
        text: String,
    },
    /// No `<coverage ... line-rate="...">` in a Cobertura report.
    #[error("no `line-rate` on a `<coverage>` element: not a Cobertura report")]
    CoberturaMissing,
    /// A `line-rate` that is not a rate.
    #[error("Cobertura line-rate {0:?} is not a number between 0 and 1")]
    CoberturaRate(String),
    /// The pattern matched nothing.
    #[error("the pattern {0:?} matched nothing")]
    NoMatch(String),
    /// The pattern's capture is not a number.
    #[error("the pattern captured {0:?}, which is not a number")]
    NotANumber(String),
    /// The stored pattern no longer compiles (it was checked at submit).
    #[error("invalid regex {0:?}")]
    Pattern(String),
}

impl Metric {
    /// The figure in `text` (the file's content, or the gate's output).
    pub fn figure(&self, text: &str) -> Result<f64, MetricError> {
        match &self.format {
            MetricFormat::Lcov => lcov_percent(text),
            MetricFormat::Cobertura => cobertura_percent(text),
            MetricFormat::Regex { pattern } => regex_figure(pattern, text),
        }
    }

    /// Whether `figure` passes.
    pub fn passes(&self, figure: f64) -> bool {
        figure >= self.min
    }
}

impl fmt::Display for MetricFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricFormat::Lcov => "lcov",
            MetricFormat::Cobertura => "cobertura",
            MetricFormat::Regex { .. } => "regex",
        })
    }
}

/// Line coverage in percent: the sum of every record's `LH` over the sum of its `LF`.
pub fn lcov_percent(text: &str) -> Result<f64, MetricError> {
    let (mut found, mut hit) = (0u64, 0u64);
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let (counter, rest) = if let Some(rest) = line.strip_prefix("LF:") {
            (&mut found, rest)
        } else if let Some(rest) = line.strip_prefix("LH:") {
            (&mut hit, rest)
        } else {
            continue;
        };
        let n: u64 = rest.trim().parse().map_err(|_| MetricError::LcovCount {
            line: i + 1,
            text: line.to_string(),
        })?;
        *counter = counter.saturating_add(n);
    }
    if found == 0 || hit > found {
        return Err(MetricError::LcovEmpty);
    }
    Ok(hit as f64 * 100.0 / found as f64)
}

/// Line coverage in percent: the `line-rate` attribute of the `<coverage>` element.
pub fn cobertura_percent(text: &str) -> Result<f64, MetricError> {
    let start = text
        .find("<coverage")
        .ok_or(MetricError::CoberturaMissing)?;
    let tag_end = text[start..].find('>').map_or(text.len(), |e| start + e);
    let tag = &text[start..tag_end];
    let at = tag
        .match_indices("line-rate")
        .map(|(i, _)| i)
        .find(|&i| tag[..i].ends_with(char::is_whitespace))
        .ok_or(MetricError::CoberturaMissing)?;
    let rest = tag[at + "line-rate".len()..].trim_start();
    let rest = rest
        .strip_prefix('=')
        .ok_or(MetricError::CoberturaMissing)?
        .trim_start();
    let quote = rest
        .chars()
        .next()
        .filter(|c| *c == '"' || *c == '\'')
        .ok_or(MetricError::CoberturaMissing)?;
    let value = rest[1..].split(quote).next().unwrap_or_default();
    let rate: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|r: &f64| (0.0..=1.0).contains(r))
        .ok_or_else(|| MetricError::CoberturaRate(value.to_string()))?;
    Ok(rate * 100.0)
}

/// The first capture group of the last match of `pattern` in `text`, as a number (a
/// trailing `%` is allowed). The last match, since tools print their summary last.
pub fn regex_figure(pattern: &str, text: &str) -> Result<f64, MetricError> {
    let re = regex::Regex::new(pattern).map_err(|_| MetricError::Pattern(pattern.to_string()))?;
    let caps = re
        .captures_iter(text)
        .last()
        .ok_or_else(|| MetricError::NoMatch(pattern.to_string()))?;
    let captured = caps
        .iter()
        .skip(1)
        .flatten()
        .next()
        .map_or("", |m| m.as_str());
    captured
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| MetricError::NotANumber(captured.to_string()))
}
