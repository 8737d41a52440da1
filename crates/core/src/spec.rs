//! Job specs: the markdown-with-front-matter job file format and its validation.
//!
//! A job file is YAML front matter between `---` lines, then a markdown body kept
//! verbatim. Every error names the file, the line and the field, and a file is either
//! accepted whole or refused whole.

pub use crate::engine::{Budget, Format, Step};
use crate::gate::{DEFAULT_FIX_ROUNDS, GateChoice};
use crate::id::JobId;
use crate::review::ReviewChoice;
use crate::sandbox::SandboxSpec;
use crate::state::Outcome;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Default priority of a job that does not set one.
pub const DEFAULT_PRIORITY: u8 = 5;
/// Highest allowed priority.
pub const MAX_PRIORITY: u8 = 9;
/// Default number of attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default base delay of the retry backoff.
pub const DEFAULT_BACKOFF_MS: u64 = 5_000;

/// The engine that turns a job into a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// Runs the job's `command` argv in the worktree.
    Command,
    /// Gantry's built-in deterministic agent, following the job's `steps`.
    Script,
    /// Anthropic's Claude Code CLI (`claude -p --output-format stream-json`).
    ClaudeCode,
    /// OpenAI's Codex CLI (`codex exec --json`).
    Codex,
}

impl EngineKind {
    /// The name used in job files and capability lists.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Command => "command",
            EngineKind::Script => "script",
            EngineKind::ClaudeCode => "claude-code",
            EngineKind::Codex => "codex",
        }
    }

    /// Parses an engine name as written in a job file.
    pub fn parse(name: &str) -> Option<EngineKind> {
        [
            EngineKind::Command,
            EngineKind::Script,
            EngineKind::ClaudeCode,
            EngineKind::Codex,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }

    /// Whether the engine is an agent CLI that takes a model, turns and permissions.
    pub fn is_agent_cli(self) -> bool {
        matches!(self, EngineKind::ClaudeCode | EngineKind::Codex)
    }
}

/// Permission modes Claude Code accepts for `--permission-mode`.
pub const CLAUDE_PERMISSION_MODES: [&str; 5] = [
    "acceptEdits",
    "bypassPermissions",
    "default",
    "dontAsk",
    "plan",
];

/// Sandbox modes Codex accepts for `--sandbox`, written as `permission_mode`.
pub const CODEX_PERMISSION_MODES: [&str; 3] =
    ["read-only", "workspace-write", "danger-full-access"];

/// Highest `max_turns` accepted.
pub const MAX_MAX_TURNS: u32 = 100_000;

/// How a job waits for its dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DepsMode {
    /// Run only when every dependency succeeded; a dependency ending badly cancels this job.
    #[default]
    Succeeded,
    /// Run once every dependency has finished, whatever its outcome.
    Finished,
}

/// A dependency as written in a job file: a job id (YAML integer) or an idempotency key
/// (YAML string) of a job submitted earlier or in the same batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DepRef {
    /// A job id.
    Id(JobId),
    /// An idempotency key.
    Key(String),
}

impl fmt::Display for DepRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DepRef::Id(id) => write!(f, "{id}"),
            DepRef::Key(k) => write!(f, "{k:?}"),
        }
    }
}

/// A validated job spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Short human title.
    pub title: String,
    /// Source repository: an absolute local path or a git URL.
    pub repo: String,
    /// Branch, tag or commit to start from; `None` means the repo's HEAD branch.
    pub base: Option<String>,
    /// Engine that runs the job.
    pub engine: EngineKind,
    /// Argv for the command engine.
    pub command: Vec<String>,
    /// 0..=9, higher runs first.
    pub priority: u8,
    /// Capabilities a factory must have (`name` or `name=value`).
    pub capabilities: Vec<String>,
    /// Dependencies, as written.
    pub deps: Vec<DepRef>,
    /// When dependencies count as satisfied.
    pub deps_mode: DepsMode,
    /// Named lock: at most one running job per lock key.
    pub lock: Option<String>,
    /// Wall-clock limit of one attempt.
    pub timeout_ms: Option<u64>,
    /// Attempts allowed in all (at least 1).
    pub max_attempts: u32,
    /// Attempt outcomes that are retried while attempts remain.
    pub retry_on: Vec<Outcome>,
    /// Base delay of the exponential retry backoff.
    pub backoff_ms: u64,
    /// Submitting the same key again returns the existing job.
    pub idempotency_key: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Extra environment variables for the process.
    pub env: BTreeMap<String, String>,
    /// Names of the secrets the factory hands to the agent's process, as environment
    /// variables of the same names. Only the names: the values are the factory's, read
    /// when the run starts, never part of the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Model asked of the agent (agent engines; the script engine reports it).
    #[serde(default)]
    pub model: Option<String>,
    /// Spending limits, enforced live from the agent's stream.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Run the agent CLI in its bypass mode (no permission checks, no sandbox).
    #[serde(default)]
    pub yolo: bool,
    /// Turn limit passed to the agent CLI.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// Claude Code permission mode or Codex sandbox mode; `None` means the safest
    /// non-interactive mode that still lets the agent edit its worktree.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// Tools the agent may use without asking (Claude Code `--allowedTools`).
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// Steps of the script engine.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Format of the command engine's standard output, parsed for insights.
    #[serde(default)]
    pub output: Option<Format>,
    /// The job's own gates (the repository's `.gantry/gates.toml` applies as well).
    #[serde(default, skip_serializing_if = "GateChoice::is_none")]
    pub gates: GateChoice,
    /// How many times a failed gate or review sends the agent back to fix it.
    #[serde(default = "default_fix_rounds")]
    pub fix_rounds: u32,
    /// Run every gate even after one failed, so a fix round names every failure.
    #[serde(default)]
    pub keep_going: bool,
    /// The AI review of the result.
    #[serde(default, skip_serializing_if = "ReviewChoice::is_none")]
    pub review: ReviewChoice,
    /// The wall around the run; `None` means the factory's default. A job naming a
    /// kind also requires its capability (see [`crate::sandbox`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
    /// The instructions (markdown body), verbatim.
    pub body: String,
}

fn default_fix_rounds() -> u32 {
    DEFAULT_FIX_ROUNDS
}

impl JobSpec {
    /// A command job with every other field at its default, as a job file that sets only
    /// `title`, `repo` and `command` gives it. Benches and tests start from this, so a
    /// new field needs its default in one place.
    pub fn command(title: &str, repo: &str, command: &[&str]) -> JobSpec {
        JobSpec {
            title: title.to_string(),
            repo: repo.to_string(),
            base: None,
            engine: EngineKind::Command,
            command: command.iter().map(|s| s.to_string()).collect(),
            priority: DEFAULT_PRIORITY,
            capabilities: Vec::new(),
            deps: Vec::new(),
            deps_mode: DepsMode::default(),
            lock: None,
            timeout_ms: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_on: vec![Outcome::Lost],
            backoff_ms: DEFAULT_BACKOFF_MS,
            idempotency_key: None,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            model: None,
            budget: None,
            yolo: false,
            max_turns: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            steps: Vec::new(),
            output: None,
            gates: GateChoice::None,
            fix_rounds: DEFAULT_FIX_ROUNDS,
            keep_going: false,
            review: ReviewChoice::None,
            sandbox: None,
            body: String::new(),
        }
    }
}

/// A job file that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub struct SpecError {
    /// The file name as given by the submitter.
    pub file: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// The front-matter field at fault, when there is one.
    pub field: Option<String>,
    /// What is wrong, naming the offending value.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A parsed job file: the spec plus where each front-matter field was written, so later
/// checks (unknown dependency, cycle) can still name the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedJob {
    /// The file name as given by the submitter.
    pub file: String,
    /// The validated spec.
    pub spec: JobSpec,
    /// 1-based line of each top-level front-matter key present in the file. When the
    /// file used `cwd`, `repo` is also listed (at the same line), so errors about the
    /// repository can always ask for `repo`.
    pub field_lines: BTreeMap<String, usize>,
}

impl ParsedJob {
    /// An error about `field` of this file, naming the line where the field was written.
    pub fn error(&self, field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.clone(),
            line: self.field_lines.get(field).copied(),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

/// Every field a job file may set, in the order the docs list them.
pub const KNOWN_FIELDS: [&str; 32] = [
    "title",
    "repo",
    "cwd",
    "base",
    "engine",
    "command",
    "priority",
    "capabilities",
    "deps",
    "deps_mode",
    "lock",
    "timeout",
    "max_attempts",
    "retry_on",
    "backoff",
    "idempotency_key",
    "labels",
    "env",
    "secrets",
    "model",
    "budget",
    "yolo",
    "max_turns",
    "permission_mode",
    "allowed_tools",
    "steps",
    "output",
    "gates",
    "fix_rounds",
    "keep_going",
    "review",
    "sandbox",
];

pub use secrets::{MAX_SECRET_NAME_BYTES, MAX_SECRETS};

/// Every engine name Gantry knows.
pub const KNOWN_ENGINES: [&str; 4] = ["command", "script", "claude-code", "codex"];

/// Highest allowed `max_attempts`.
pub const MAX_MAX_ATTEMPTS: u32 = 100;

/// Longest `timeout` or `backoff` accepted: one year. Longer values are surely typos,
/// and the limit keeps `now + timeout` far from overflowing a millisecond timestamp.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Parses a job file. `file` is only used to name the file in errors.
///
/// The text starts with a line `---`, then YAML front matter, then a closing line
/// `---`; everything after the closing line's newline is the body, kept byte for byte.
/// A leading UTF-8 byte order mark is skipped and CRLF line endings are accepted.
///
/// Relative `repo` paths are returned as written; resolving them against the file's
/// directory is the caller's business (see [`crate::repo::resolve_repo`]).
pub fn parse_job_file(file: &str, text: &str) -> Result<ParsedJob, SpecError> {
    let (front, body) = split_front_matter(file, text)?;
    let root = yaml::parse(front).map_err(|e| SpecError {
        file: file.to_string(),
        line: Some(e.line.map_or(FRONT_MATTER_FIRST_LINE, |l| l + LINE_OFFSET)),
        field: None,
        message: format!("invalid YAML in the front matter: {}", e.message),
    })?;
    let mut v = Validator {
        file,
        front,
        field_lines: BTreeMap::new(),
    };
    let spec = v.spec(root, body)?;
    Ok(ParsedJob {
        file: file.to_string(),
        spec,
        field_lines: v.field_lines,
    })
}

mod agent;
mod checks;
mod sandbox;
mod secrets;
mod validate;
mod yaml;

use validate::{FRONT_MATTER_FIRST_LINE, LINE_OFFSET, Validator, split_front_matter};
