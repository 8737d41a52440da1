//! Job specs: the markdown-with-front-matter job file format and its validation.
//!
//! A job file is YAML front matter between `---` lines, then a markdown body kept
//! verbatim. Every error names the file, the line and the field, and a file is either
//! accepted whole or refused whole.

use crate::gate::{DEFAULT_FIX_ROUNDS, GateChoice, MAX_FIX_ROUNDS};
use crate::id::JobId;
use crate::review::ReviewChoice;
use crate::state::Outcome;
pub use gantry_engine::{Budget, Format, Step};
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
    /// The instructions (markdown body), verbatim.
    pub body: String,
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
pub const KNOWN_FIELDS: [&str; 30] = [
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
];

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
mod yaml;

fn default_fix_rounds() -> u32 {
    DEFAULT_FIX_ROUNDS
}

use yaml::{Node, Value, quote};

/// Lines of the front matter are numbered in the YAML text from 1; in the file, the
/// opening `---` comes first, so YAML line `n` is file line `n + 1`.
const LINE_OFFSET: usize = 1;
/// File line of the first front-matter line.
const FRONT_MATTER_FIRST_LINE: usize = 2;

/// Splits a job file into its front-matter text and its body.
fn split_front_matter<'a>(file: &str, text: &'a str) -> Result<(&'a str, &'a str), SpecError> {
    let err = |line: usize, message: String| SpecError {
        file: file.to_string(),
        line: Some(line),
        field: None,
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (first, rest) = match text.split_once('\n') {
        Some((first, rest)) => (first, Some(rest)),
        None => (text, None),
    };
    if first.trim_end() != "---" {
        let found = if text.is_empty() {
            "the file is empty".to_string()
        } else {
            format!("found {}", quote(first.trim_end_matches('\r')))
        };
        return Err(err(
            1,
            format!("missing front matter: a job file must start with a line `---` ({found})"),
        ));
    }
    let unterminated = || {
        err(
            1,
            "unterminated front matter: no closing `---` line after the opening one on line 1"
                .to_string(),
        )
    };
    let rest = rest.ok_or_else(unterminated)?;
    let mut pos = 0;
    loop {
        let (line, next) = match rest[pos..].find('\n') {
            Some(i) => (&rest[pos..pos + i], Some(pos + i + 1)),
            None => (&rest[pos..], None),
        };
        if line.trim_end() == "---" {
            let body = next.map_or("", |n| &rest[n..]);
            return Ok((&rest[..pos], body));
        }
        match next {
            Some(n) => pos = n,
            None => return Err(unterminated()),
        }
    }
}

/// Field-by-field validation of the front-matter tree.
struct Validator<'a> {
    file: &'a str,
    /// The front-matter text, to recover the exact spelling of plain scalars.
    front: &'a str,
    field_lines: BTreeMap<String, usize>,
}

/// The fields read so far; `None` means not set (absent or null).
#[derive(Default)]
struct Fields {
    title: Option<String>,
    repo: Option<String>,
    base: Option<String>,
    engine: Option<EngineKind>,
    command: Option<Vec<String>>,
    priority: Option<u8>,
    capabilities: Option<Vec<String>>,
    deps: Option<Vec<DepRef>>,
    deps_mode: Option<DepsMode>,
    lock: Option<String>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_on: Option<Vec<Outcome>>,
    backoff_ms: Option<u64>,
    idempotency_key: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    env: Option<BTreeMap<String, String>>,
    model: Option<String>,
    budget: Option<Budget>,
    yolo: Option<bool>,
    max_turns: Option<u32>,
    permission_mode: Option<(String, usize)>,
    allowed_tools: Option<Vec<String>>,
    steps: Option<Vec<Step>>,
    output: Option<Format>,
    gates: Option<GateChoice>,
    fix_rounds: Option<u32>,
    keep_going: Option<bool>,
    review: Option<ReviewChoice>,
}

impl Validator<'_> {
    /// The file line of a node.
    fn line(&self, node: &Node) -> usize {
        match node.referenced.line() as usize {
            0 => FRONT_MATTER_FIRST_LINE,
            l => l + LINE_OFFSET,
        }
    }

    fn err(&self, line: usize, field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_string(),
            line: Some(line),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// An error about a field that is missing: it points at the field's line when the
    /// key was written with an empty value, else at the opening `---`.
    fn missing(&self, field: &str, message: impl Into<String>) -> SpecError {
        let line = self.field_lines.get(field).copied().unwrap_or(1);
        self.err(line, field, message)
    }

    fn type_err(&self, node: &Node, field: &str, expected: &str) -> SpecError {
        self.err(
            self.line(node),
            field,
            format!("expected {expected}, found {}", self.describe(node)),
        )
    }

    /// [`Value::describe`], but numbers and booleans as spelled in the file: a huge
    /// integer read as a float is shown as written, not as the float's rendering.
    fn describe(&self, node: &Node) -> String {
        let spelled = yaml::source_text(self.front, node);
        match (&node.value, spelled) {
            (Value::Int(_), Some(raw)) => format!("integer `{raw}`"),
            (Value::Float(_), Some(raw)) => format!("number `{raw}`"),
            (Value::Bool(_), Some(raw)) => format!("boolean `{raw}`"),
            (value, _) => value.describe(),
        }
    }

    fn spec(&mut self, root: Node, body: &str) -> Result<JobSpec, SpecError> {
        let root_line = self.line(&root);
        let entries = match root.value {
            Value::Map(entries) => entries,
            // An empty front matter is an empty mapping: the missing fields say the rest.
            Value::Null => Vec::new(),
            other => {
                return Err(SpecError {
                    file: self.file.to_string(),
                    line: Some(root_line),
                    field: None,
                    message: format!(
                        "the front matter must be a YAML mapping of fields, found {}",
                        other.describe()
                    ),
                });
            }
        };
        let mut f = Fields::default();
        // Which of `repo`/`cwd` was written, to refuse both.
        let mut repo_key: Option<&'static str> = None;
        for (key, value) in entries {
            let key_line = self.line(&key);
            let name = self.key_text(&key, None)?;
            if let Some(first) = self.field_lines.get(&name) {
                return Err(self.err(
                    key_line,
                    &name,
                    format!("duplicate field `{name}` (first set on line {first})"),
                ));
            }
            if !KNOWN_FIELDS.contains(&name.as_str()) {
                return Err(self.err(
                    key_line,
                    &name,
                    format!(
                        "unknown field `{name}` (known fields: {})",
                        KNOWN_FIELDS.join(", ")
                    ),
                ));
            }
            self.field_lines.insert(name.clone(), key_line);
            if name == "repo" || name == "cwd" {
                let this = if name == "repo" { "repo" } else { "cwd" };
                if let Some(other) = repo_key {
                    return Err(self.err(
                        key_line,
                        this,
                        format!(
                            "both `{other}` (line {}) and `{this}` are set; `cwd` is an alias of `repo`, keep one",
                            self.field_lines[other]
                        ),
                    ));
                }
                repo_key = Some(this);
                // Later checks (repo resolution) ask for `repo` whichever spelling was used.
                self.field_lines.insert("repo".to_string(), key_line);
            }
            // A key with no value means the same as no key: the default applies.
            if value.value == Value::Null {
                continue;
            }
            match name.as_str() {
                "title" => f.title = Some(self.non_empty_string(&value, "title")?),
                "repo" | "cwd" => f.repo = Some(self.non_empty_string(&value, &name)?),
                "base" => f.base = Some(self.non_empty_string(&value, "base")?),
                "engine" => f.engine = Some(self.engine(&value)?),
                "command" => f.command = Some(self.command(&value)?),
                "priority" => {
                    let p = self.int_in_range(&value, "priority", 0, i128::from(MAX_PRIORITY))?;
                    f.priority = Some(u8::try_from(p).expect("checked to be within 0..=9"));
                }
                "capabilities" => f.capabilities = Some(self.capabilities(&value)?),
                "deps" => f.deps = Some(self.deps(&value)?),
                "deps_mode" => f.deps_mode = Some(self.deps_mode(&value)?),
                "lock" => f.lock = Some(self.non_empty_string(&value, "lock")?),
                "timeout" => {
                    let ms = self.duration_ms(&value, "timeout")?;
                    if ms == 0 {
                        return Err(self.err(
                            self.line(&value),
                            "timeout",
                            format!(
                                "timeout {} is zero; it must be longer than zero (e.g. `90s`)",
                                self.scalar_text(&value).unwrap_or_default()
                            ),
                        ));
                    }
                    f.timeout_ms = Some(ms);
                }
                "max_attempts" => {
                    let n =
                        self.int_in_range(&value, "max_attempts", 1, i128::from(MAX_MAX_ATTEMPTS))?;
                    f.max_attempts = Some(u32::try_from(n).expect("checked to be within 1..=100"));
                }
                "retry_on" => f.retry_on = Some(self.retry_on(&value)?),
                "backoff" => f.backoff_ms = Some(self.duration_ms(&value, "backoff")?),
                "idempotency_key" => {
                    f.idempotency_key = Some(self.non_empty_string(&value, "idempotency_key")?)
                }
                "labels" => f.labels = Some(self.labels(&value)?),
                "env" => f.env = Some(self.env(&value)?),
                "model" => f.model = Some(self.non_empty_string(&value, "model")?),
                "budget" => f.budget = Some(self.budget(&value)?),
                "yolo" => match value.value {
                    Value::Bool(b) => f.yolo = Some(b),
                    _ => return Err(self.type_err(&value, "yolo", "`true` or `false`")),
                },
                "max_turns" => {
                    let n = self.int_in_range(&value, "max_turns", 1, i128::from(MAX_MAX_TURNS))?;
                    f.max_turns = Some(u32::try_from(n).expect("checked to be within 1..=100000"));
                }
                "permission_mode" => {
                    let mode = self.non_empty_string(&value, "permission_mode")?;
                    f.permission_mode = Some((mode, self.line(&value)));
                }
                "allowed_tools" => f.allowed_tools = Some(self.allowed_tools(&value)?),
                "steps" => f.steps = Some(self.steps(&value)?),
                "output" => f.output = Some(self.output(&value)?),
                "gates" => f.gates = Some(self.gates(&value)?),
                "fix_rounds" => {
                    let n =
                        self.int_in_range(&value, "fix_rounds", 0, i128::from(MAX_FIX_ROUNDS))?;
                    f.fix_rounds = Some(u32::try_from(n).expect("checked to be within 0..=10"));
                }
                "review" => f.review = Some(self.review(&value)?),
                "keep_going" => match value.value {
                    Value::Bool(b) => f.keep_going = Some(b),
                    _ => return Err(self.type_err(&value, "keep_going", "`true` or `false`")),
                },
                _ => unreachable!("every known field has an arm; `{name}` does not"),
            }
        }

        self.engine_fields(f.engine.unwrap_or(EngineKind::Command), &f)?;
        let title = f
            .title
            .ok_or_else(|| self.missing("title", "missing title: every job needs a `title:`"))?;
        let repo = f.repo.ok_or_else(|| {
            self.missing(
                "repo",
                "missing repo: set `repo:` (or its alias `cwd:`) to a local path or a git URL",
            )
        })?;
        let engine = f.engine.unwrap_or(EngineKind::Command);
        let command = match (engine, f.command) {
            (EngineKind::Command, Some(c)) => c,
            (EngineKind::Command, None) => {
                return Err(self.missing(
                    "command",
                    "missing command: the `command` engine needs an argv list, e.g. `command: [sh, -c, \"make test\"]`",
                ));
            }
            (_, _) => Vec::new(),
        };
        let steps = f.steps.unwrap_or_default();
        if engine == EngineKind::Script && steps.is_empty() {
            return Err(self.missing(
                "steps",
                "missing steps: the `script` engine needs a list of steps, e.g. `steps: [{say: hello}]`",
            ));
        }
        Ok(JobSpec {
            title,
            repo,
            base: f.base,
            engine,
            command,
            priority: f.priority.unwrap_or(DEFAULT_PRIORITY),
            capabilities: f.capabilities.unwrap_or_default(),
            deps: f.deps.unwrap_or_default(),
            deps_mode: f.deps_mode.unwrap_or_default(),
            lock: f.lock,
            timeout_ms: f.timeout_ms,
            max_attempts: f.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_on: f.retry_on.unwrap_or_else(|| vec![Outcome::Lost]),
            backoff_ms: f.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS),
            idempotency_key: f.idempotency_key,
            labels: f.labels.unwrap_or_default(),
            env: f.env.unwrap_or_default(),
            model: f.model,
            budget: f.budget,
            yolo: f.yolo.unwrap_or(false),
            max_turns: f.max_turns,
            permission_mode: f.permission_mode.map(|(m, _)| m),
            allowed_tools: f.allowed_tools.unwrap_or_default(),
            steps,
            output: f.output,
            gates: f.gates.unwrap_or_default(),
            fix_rounds: f.fix_rounds.unwrap_or(DEFAULT_FIX_ROUNDS),
            keep_going: f.keep_going.unwrap_or(false),
            review: f.review.unwrap_or_default(),
            body: body.to_string(),
        })
    }

    /// The text of a mapping key. Top-level keys (`field` is `None`) are named after
    /// themselves in errors; keys of `labels` and `env` name their field.
    fn key_text(&self, key: &Node, field: Option<&str>) -> Result<String, SpecError> {
        match self.scalar_text(key) {
            Some(text) => Ok(text),
            None => Err(SpecError {
                file: self.file.to_string(),
                line: Some(self.line(key)),
                field: field.map(str::to_string),
                message: format!("expected a name as key, found {}", self.describe(key)),
            }),
        }
    }

    /// The text of a scalar: strings as they are, other scalars as written in the file.
    /// `None` for null, lists and maps.
    fn scalar_text(&self, node: &Node) -> Option<String> {
        let spelled = || yaml::source_text(self.front, node).map(str::to_string);
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(spelled().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(spelled().unwrap_or_else(|| i.to_string())),
            Value::Float(x) => Some(spelled().unwrap_or_else(|| x.to_string())),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    fn non_empty_string(&self, node: &Node, field: &str) -> Result<String, SpecError> {
        match &node.value {
            Value::Str(s) if s.trim().is_empty() => Err(self.err(
                self.line(node),
                field,
                format!("`{field}` must not be empty, found {}", quote(s)),
            )),
            Value::Str(s) => Ok(s.clone()),
            _ => Err(self.type_err(node, field, "a string")),
        }
    }

    fn int_in_range(
        &self,
        node: &Node,
        field: &str,
        min: i128,
        max: i128,
    ) -> Result<i128, SpecError> {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => Ok(i),
            Value::Int(i) => Err(self.err(
                self.line(node),
                field,
                format!("{field} {i} is out of range {min}..={max}"),
            )),
            _ => Err(self.type_err(node, field, &format!("an integer in {min}..={max}"))),
        }
    }

    fn list<'n>(
        &self,
        node: &'n Node,
        field: &str,
        expected: &str,
    ) -> Result<&'n [Node], SpecError> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            _ => Err(self.type_err(node, field, expected)),
        }
    }

    fn engine(&self, node: &Node) -> Result<EngineKind, SpecError> {
        let Value::Str(name) = &node.value else {
            return Err(self.type_err(node, "engine", "an engine name (a string)"));
        };
        let line = self.line(node);
        match EngineKind::parse(name) {
            Some(engine) => Ok(engine),
            None => Err(self.err(
                line,
                "engine",
                format!(
                    "unknown engine {} (known engines: {})",
                    quote(name),
                    KNOWN_ENGINES.join(", ")
                ),
            )),
        }
    }

    fn command(&self, node: &Node) -> Result<Vec<String>, SpecError> {
        if let Value::Str(s) = &node.value {
            return Err(self.err(
                self.line(node),
                "command",
                format!(
                    "expected an argv list, found string {}; write it as a list, e.g. `command: [sh, -c, {}]`",
                    quote(s),
                    quote(s)
                ),
            ));
        }
        let items = self.list(
            node,
            "command",
            "an argv list of strings, e.g. `[make, test]`",
        )?;
        if items.is_empty() {
            return Err(self.err(
                self.line(node),
                "command",
                "command is an empty list `[]`; it needs at least the program to run",
            ));
        }
        let mut argv = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let arg = self.scalar_text(item).ok_or_else(|| {
                self.type_err(item, "command", &format!("a string as argument {i}"))
            })?;
            if arg.contains('\0') {
                return Err(self.err(
                    self.line(item),
                    "command",
                    format!("argument {i} {} contains a NUL byte", quote(&arg)),
                ));
            }
            if i == 0 && arg.trim().is_empty() {
                return Err(self.err(
                    self.line(item),
                    "command",
                    format!(
                        "the program (argument 0) must not be empty, found {}",
                        quote(&arg)
                    ),
                ));
            }
            argv.push(arg);
        }
        Ok(argv)
    }

    fn capabilities(&self, node: &Node) -> Result<Vec<String>, SpecError> {
        let mut caps: Vec<String> = Vec::new();
        for item in self.list(
            node,
            "capabilities",
            "a list of capabilities, e.g. `[docker]`",
        )? {
            let Value::Str(cap) = &item.value else {
                return Err(self.type_err(item, "capabilities", "a capability string"));
            };
            crate::caps::validate(cap).map_err(|m| self.err(self.line(item), "capabilities", m))?;
            if !caps.contains(cap) {
                caps.push(cap.clone());
            }
        }
        Ok(caps)
    }

    fn deps(&self, node: &Node) -> Result<Vec<DepRef>, SpecError> {
        let mut deps: Vec<DepRef> = Vec::new();
        let expected = "a job id (integer) or an idempotency key (string)";
        for item in self.list(node, "deps", "a list of job ids or idempotency keys")? {
            let dep = match &item.value {
                Value::Int(i) => match i64::try_from(*i) {
                    Ok(id) if id > 0 => DepRef::Id(JobId(id)),
                    _ => {
                        return Err(self.err(
                            self.line(item),
                            "deps",
                            format!("invalid job id {i} in deps: ids are positive integers"),
                        ));
                    }
                },
                Value::Str(s) if s.trim().is_empty() => {
                    return Err(self.err(
                        self.line(item),
                        "deps",
                        format!("empty idempotency key {} in deps", quote(s)),
                    ));
                }
                Value::Str(s) => DepRef::Key(s.clone()),
                _ => return Err(self.type_err(item, "deps", expected)),
            };
            // Listing a dependency twice means the same as once.
            if !deps.contains(&dep) {
                deps.push(dep);
            }
        }
        Ok(deps)
    }

    fn deps_mode(&self, node: &Node) -> Result<DepsMode, SpecError> {
        match &node.value {
            Value::Str(s) if s == "succeeded" => Ok(DepsMode::Succeeded),
            Value::Str(s) if s == "finished" => Ok(DepsMode::Finished),
            Value::Str(s) => Err(self.err(
                self.line(node),
                "deps_mode",
                format!(
                    "unknown deps_mode {} (expected `succeeded` or `finished`)",
                    quote(s)
                ),
            )),
            _ => Err(self.type_err(node, "deps_mode", "`succeeded` or `finished`")),
        }
    }

    fn retry_on(&self, node: &Node) -> Result<Vec<Outcome>, SpecError> {
        let allowed = [Outcome::Lost, Outcome::Failed, Outcome::TimedOut]
            .map(Outcome::as_str)
            .join(", ");
        let mut out: Vec<Outcome> = Vec::new();
        for item in self.list(
            node,
            "retry_on",
            &format!("a list of outcomes among {allowed}"),
        )? {
            let Value::Str(s) = &item.value else {
                return Err(self.type_err(item, "retry_on", &format!("one of {allowed}")));
            };
            let outcome = s
                .parse::<Outcome>()
                .ok()
                .filter(|o| o.is_retryable_kind())
                .ok_or_else(|| {
                    self.err(
                        self.line(item),
                        "retry_on",
                        format!(
                            "outcome {} cannot be retried (retry_on takes: {allowed})",
                            quote(s)
                        ),
                    )
                })?;
            if !out.contains(&outcome) {
                out.push(outcome);
            }
        }
        Ok(out)
    }

    /// A duration: a string like `90s`, `4h` or `1h30m`, or a bare integer of seconds.
    fn duration_ms(&self, node: &Node, field: &str) -> Result<u64, SpecError> {
        let line = self.line(node);
        let hint = "write e.g. `90s`, `4h`, `1h30m`, or a whole number of seconds";
        let ms: u128 = match &node.value {
            Value::Int(secs) if *secs < 0 => {
                return Err(self.err(line, field, format!("{field} {secs} is negative; {hint}")));
            }
            Value::Int(secs) => u128::try_from(*secs)
                .expect("checked to be non-negative")
                .saturating_mul(1000),
            Value::Str(s) => {
                let t = s.trim();
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    t.parse::<u128>().unwrap_or(u128::MAX).saturating_mul(1000)
                } else {
                    humantime::parse_duration(t)
                        .map_err(|e| {
                            self.err(
                                line,
                                field,
                                format!("invalid duration {} for {field}: {e}; {hint}", quote(s)),
                            )
                        })?
                        .as_millis()
                }
            }
            _ => return Err(self.type_err(node, field, "a duration like `90s` or `4h`")),
        };
        if ms > u128::from(MAX_DURATION_MS) {
            return Err(self.err(
                line,
                field,
                format!(
                    "{field} {} is too long (at most 365 days)",
                    self.scalar_text(node).unwrap_or_default()
                ),
            ));
        }
        Ok(u64::try_from(ms).expect("checked to be at most MAX_DURATION_MS"))
    }

    /// A mapping of names to scalars, each value kept as text. Duplicate names are
    /// refused like duplicate fields.
    fn string_map(
        &self,
        node: &Node,
        field: &str,
        check_name: impl Fn(&str) -> Result<(), String>,
    ) -> Result<BTreeMap<String, String>, SpecError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.type_err(node, field, "a map of names to values"));
        };
        let mut out = BTreeMap::new();
        let mut lines: BTreeMap<String, usize> = BTreeMap::new();
        for (k, v) in entries {
            let key_line = self.line(k);
            let name = self.key_text(k, Some(field))?;
            check_name(&name).map_err(|m| self.err(key_line, field, m))?;
            if let Some(first) = lines.get(&name) {
                return Err(self.err(
                    key_line,
                    field,
                    format!(
                        "duplicate {field} entry {} (first set on line {first})",
                        quote(&name)
                    ),
                ));
            }
            lines.insert(name.clone(), key_line);
            let value = self.scalar_text(v).ok_or_else(|| {
                self.type_err(
                    v,
                    field,
                    &format!("a string, number or boolean for {}", quote(&name)),
                )
            })?;
            // Values end up in process environments and in the database as text.
            if value.contains('\0') {
                return Err(self.err(
                    self.line(v),
                    field,
                    format!("the value of {} contains a NUL byte", quote(&name)),
                ));
            }
            out.insert(name, value);
        }
        Ok(out)
    }

    fn labels(&self, node: &Node) -> Result<BTreeMap<String, String>, SpecError> {
        self.string_map(node, "labels", |name| {
            if name.trim().is_empty() {
                Err(format!(
                    "label names must not be empty, found {}",
                    quote(name)
                ))
            } else {
                Ok(())
            }
        })
    }

    fn env(&self, node: &Node) -> Result<BTreeMap<String, String>, SpecError> {
        self.string_map(node, "env", |name| {
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                Err(format!(
                    "invalid environment variable name {}: names match [A-Za-z_][A-Za-z0-9_]*",
                    quote(name)
                ))
            } else if name.starts_with("GANTRY_") {
                Err(format!(
                    "environment variable {} is reserved: Gantry sets the GANTRY_* variables itself",
                    quote(name)
                ))
            } else {
                Ok(())
            }
        })
    }
}
