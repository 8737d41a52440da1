//! The validator of a job file's front matter: every field checked, every error naming
//! the file, the line and the field.

use super::yaml::{self, Node, Value, quote};
use super::{
    Budget, DEFAULT_BACKOFF_MS, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DepRef, DepsMode,
    EngineKind, Format, JobSpec, KNOWN_ENGINES, KNOWN_FIELDS, MAX_DURATION_MS, MAX_MAX_ATTEMPTS,
    MAX_MAX_TURNS, MAX_PRIORITY, SpecError, Step,
};
use crate::gate::{DEFAULT_FIX_ROUNDS, GateChoice, MAX_FIX_ROUNDS};
use crate::id::JobId;
use crate::review::ReviewChoice;
use crate::state::Outcome;
use std::collections::BTreeMap;

/// Lines of the front matter are numbered in the YAML text from 1; in the file, the
/// opening `---` comes first, so YAML line `n` is file line `n + 1`.
pub(super) const LINE_OFFSET: usize = 1;
/// File line of the first front-matter line.
pub(super) const FRONT_MATTER_FIRST_LINE: usize = 2;

/// Splits a job file into its front-matter text and its body.
pub(super) fn split_front_matter<'a>(
    file: &str,
    text: &'a str,
) -> Result<(&'a str, &'a str), SpecError> {
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
pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    /// The front-matter text, to recover the exact spelling of plain scalars.
    pub(super) front: &'a str,
    pub(super) field_lines: BTreeMap<String, usize>,
}

/// The fields read so far; `None` means not set (absent or null).
#[derive(Default)]
pub(super) struct Fields {
    pub(super) title: Option<String>,
    pub(super) repo: Option<String>,
    pub(super) base: Option<String>,
    pub(super) engine: Option<EngineKind>,
    pub(super) command: Option<Vec<String>>,
    pub(super) priority: Option<u8>,
    pub(super) capabilities: Option<Vec<String>>,
    pub(super) deps: Option<Vec<DepRef>>,
    pub(super) deps_mode: Option<DepsMode>,
    pub(super) lock: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_on: Option<Vec<Outcome>>,
    pub(super) backoff_ms: Option<u64>,
    pub(super) idempotency_key: Option<String>,
    pub(super) labels: Option<BTreeMap<String, String>>,
    pub(super) env: Option<BTreeMap<String, String>>,
    pub(super) secrets: Option<Vec<(String, usize)>>,
    pub(super) model: Option<String>,
    pub(super) budget: Option<Budget>,
    pub(super) yolo: Option<bool>,
    pub(super) max_turns: Option<u32>,
    pub(super) permission_mode: Option<(String, usize)>,
    pub(super) allowed_tools: Option<Vec<String>>,
    pub(super) steps: Option<Vec<Step>>,
    pub(super) output: Option<Format>,
    pub(super) gates: Option<GateChoice>,
    pub(super) fix_rounds: Option<u32>,
    pub(super) keep_going: Option<bool>,
    pub(super) review: Option<ReviewChoice>,
    pub(super) sandbox: Option<crate::sandbox::SandboxSpec>,
}

impl Validator<'_> {
    /// The file line of a node.
    pub(super) fn line(&self, node: &Node) -> usize {
        match node.referenced.line() as usize {
            0 => FRONT_MATTER_FIRST_LINE,
            l => l + LINE_OFFSET,
        }
    }

    pub(super) fn err(&self, line: usize, field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            file: self.file.to_string(),
            line: Some(line),
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// An error about a field that is missing: it points at the field's line when the
    /// key was written with an empty value, else at the opening `---`.
    pub(super) fn missing(&self, field: &str, message: impl Into<String>) -> SpecError {
        let line = self.field_lines.get(field).copied().unwrap_or(1);
        self.err(line, field, message)
    }

    pub(super) fn type_err(&self, node: &Node, field: &str, expected: &str) -> SpecError {
        self.err(
            self.line(node),
            field,
            format!("expected {expected}, found {}", self.describe(node)),
        )
    }

    /// [`Value::describe`], but numbers and booleans as spelled in the file: a huge
    /// integer read as a float is shown as written, not as the float's rendering.
    pub(super) fn describe(&self, node: &Node) -> String {
        let spelled = yaml::source_text(self.front, node);
        match (&node.value, spelled) {
            (Value::Int(_), Some(raw)) => format!("integer `{raw}`"),
            (Value::Float(_), Some(raw)) => format!("number `{raw}`"),
            (Value::Bool(_), Some(raw)) => format!("boolean `{raw}`"),
            (value, _) => value.describe(),
        }
    }

    pub(super) fn spec(&mut self, root: Node, body: &str) -> Result<JobSpec, SpecError> {
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
            let name = self.field_name(&key, &mut repo_key)?;
            // A key with no value means the same as no key: the default applies.
            if value.value == Value::Null {
                continue;
            }
            self.field(&mut f, &name, &value)?;
        }
        self.finish(f, body)
    }

    /// Reads the name of a top-level key at `key` and records its line, refusing a
    /// duplicate, an unknown field, and `repo` together with its alias `cwd`
    /// (`repo_key` remembers which of the two was written).
    fn field_name(
        &mut self,
        key: &Node,
        repo_key: &mut Option<&'static str>,
    ) -> Result<String, SpecError> {
        let key_line = self.line(key);
        let name = self.key_text(key, None)?;
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
            if let Some(other) = *repo_key {
                return Err(self.err(
                key_line,
                this,
                format!(
                    "both `{other}` (line {}) and `{this}` are set; `cwd` is an alias of `repo`, keep one",
                    self.field_lines[other]
                ),
            ));
            }
            *repo_key = Some(this);
            // Later checks (repo resolution) ask for `repo` whichever spelling was used.
            self.field_lines.insert("repo".to_string(), key_line);
        }
        Ok(name)
    }

    /// Checks the value of field `name` and keeps it in `f`.
    fn field(&self, f: &mut Fields, name: &str, value: &Node) -> Result<(), SpecError> {
        match name {
            "title" => f.title = Some(self.non_empty_string(value, "title")?),
            "repo" | "cwd" => f.repo = Some(self.non_empty_string(value, name)?),
            "base" => f.base = Some(self.non_empty_string(value, "base")?),
            "engine" => f.engine = Some(self.engine(value)?),
            "command" => f.command = Some(self.command(value)?),
            "priority" => {
                let p = self.int_in_range(value, "priority", 0, i128::from(MAX_PRIORITY))?;
                f.priority = Some(u8::try_from(p).expect("checked to be within 0..=9"));
            }
            "capabilities" => f.capabilities = Some(self.capabilities(value)?),
            "deps" => f.deps = Some(self.deps(value)?),
            "deps_mode" => f.deps_mode = Some(self.deps_mode(value)?),
            "lock" => f.lock = Some(self.non_empty_string(value, "lock")?),
            "timeout" => {
                let ms = self.duration_ms(value, "timeout")?;
                if ms == 0 {
                    return Err(self.err(
                        self.line(value),
                        "timeout",
                        format!(
                            "timeout {} is zero; it must be longer than zero (e.g. `90s`)",
                            self.scalar_text(value).unwrap_or_default()
                        ),
                    ));
                }
                f.timeout_ms = Some(ms);
            }
            "max_attempts" => {
                let n =
                    self.int_in_range(value, "max_attempts", 1, i128::from(MAX_MAX_ATTEMPTS))?;
                f.max_attempts = Some(u32::try_from(n).expect("checked to be within 1..=100"));
            }
            "retry_on" => f.retry_on = Some(self.retry_on(value)?),
            "backoff" => f.backoff_ms = Some(self.duration_ms(value, "backoff")?),
            "idempotency_key" => {
                f.idempotency_key = Some(self.non_empty_string(value, "idempotency_key")?)
            }
            "labels" => f.labels = Some(self.labels(value)?),
            "env" => f.env = Some(self.env(value)?),
            "secrets" => f.secrets = Some(self.secrets(value)?),
            "model" => f.model = Some(self.non_empty_string(value, "model")?),
            "budget" => f.budget = Some(self.budget(value)?),
            "yolo" => match value.value {
                Value::Bool(b) => f.yolo = Some(b),
                _ => return Err(self.type_err(value, "yolo", "`true` or `false`")),
            },
            "max_turns" => {
                let n = self.int_in_range(value, "max_turns", 1, i128::from(MAX_MAX_TURNS))?;
                f.max_turns = Some(u32::try_from(n).expect("checked to be within 1..=100000"));
            }
            "permission_mode" => {
                let mode = self.non_empty_string(value, "permission_mode")?;
                f.permission_mode = Some((mode, self.line(value)));
            }
            "allowed_tools" => f.allowed_tools = Some(self.allowed_tools(value)?),
            "steps" => f.steps = Some(self.steps(value)?),
            "output" => f.output = Some(self.output(value)?),
            "gates" => f.gates = Some(self.gates(value)?),
            "review" => f.review = Some(self.review(value)?),
            "sandbox" => f.sandbox = Some(self.sandbox(value)?),
            "fix_rounds" => {
                let n = self.int_in_range(value, "fix_rounds", 0, i128::from(MAX_FIX_ROUNDS))?;
                f.fix_rounds = Some(u32::try_from(n).expect("checked to be within 0..=10"));
            }
            "keep_going" => match value.value {
                Value::Bool(b) => f.keep_going = Some(b),
                _ => return Err(self.type_err(value, "keep_going", "`true` or `false`")),
            },
            _ => unreachable!("every known field has an arm; `{name}` does not"),
        }
        Ok(())
    }

    /// The spec from the fields read, with defaults and the checks across fields.
    fn finish(&self, f: Fields, body: &str) -> Result<JobSpec, SpecError> {
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
        let env = f.env.unwrap_or_default();
        let secrets = self.secrets_apart_from(f.secrets.unwrap_or_default(), &env)?;
        let steps = f.steps.unwrap_or_default();
        if engine == EngineKind::Script && steps.is_empty() {
            return Err(self.missing(
                "steps",
                "missing steps: the `script` engine needs a list of steps, e.g. `steps: [{say: hello}]`",
            ));
        }
        // A job naming a sandbox kind goes only to a factory that runs it: the claim's
        // one capability rule decides, so the kind becomes a required capability.
        let mut capabilities = f.capabilities.unwrap_or_default();
        if let Some(s) = &f.sandbox {
            let cap = s.kind.capability();
            if !capabilities.contains(&cap) {
                capabilities.push(cap);
            }
        }
        Ok(JobSpec {
            title,
            repo,
            base: f.base,
            engine,
            command,
            priority: f.priority.unwrap_or(DEFAULT_PRIORITY),
            capabilities,
            deps: f.deps.unwrap_or_default(),
            deps_mode: f.deps_mode.unwrap_or_default(),
            lock: f.lock,
            timeout_ms: f.timeout_ms,
            max_attempts: f.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_on: f.retry_on.unwrap_or_else(|| vec![Outcome::Lost]),
            backoff_ms: f.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS),
            idempotency_key: f.idempotency_key,
            labels: f.labels.unwrap_or_default(),
            env,
            secrets,
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
            sandbox: f.sandbox,
            body: body.to_string(),
        })
    }

    /// The text of a mapping key. Top-level keys (`field` is `None`) are named after
    /// themselves in errors; keys of `labels` and `env` name their field.
    pub(super) fn key_text(&self, key: &Node, field: Option<&str>) -> Result<String, SpecError> {
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
    pub(super) fn scalar_text(&self, node: &Node) -> Option<String> {
        let spelled = || yaml::source_text(self.front, node).map(str::to_string);
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Bool(b) => Some(spelled().unwrap_or_else(|| b.to_string())),
            Value::Int(i) => Some(spelled().unwrap_or_else(|| i.to_string())),
            Value::Float(x) => Some(spelled().unwrap_or_else(|| x.to_string())),
            Value::Null | Value::Seq(_) | Value::Map(_) => None,
        }
    }

    pub(super) fn non_empty_string(&self, node: &Node, field: &str) -> Result<String, SpecError> {
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

    pub(super) fn int_in_range(
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

    pub(super) fn list<'n>(
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

    pub(super) fn engine(&self, node: &Node) -> Result<EngineKind, SpecError> {
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

    pub(super) fn command(&self, node: &Node) -> Result<Vec<String>, SpecError> {
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

    pub(super) fn capabilities(&self, node: &Node) -> Result<Vec<String>, SpecError> {
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

    pub(super) fn deps(&self, node: &Node) -> Result<Vec<DepRef>, SpecError> {
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

    pub(super) fn deps_mode(&self, node: &Node) -> Result<DepsMode, SpecError> {
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

    pub(super) fn retry_on(&self, node: &Node) -> Result<Vec<Outcome>, SpecError> {
        let allowed = [
            Outcome::Lost,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::GatesFailed,
        ]
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
    pub(super) fn duration_ms(&self, node: &Node, field: &str) -> Result<u64, SpecError> {
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
    pub(super) fn string_map(
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

    pub(super) fn labels(&self, node: &Node) -> Result<BTreeMap<String, String>, SpecError> {
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

    pub(super) fn env(&self, node: &Node) -> Result<BTreeMap<String, String>, SpecError> {
        self.string_map(node, "env", super::secrets::check_env_name)
    }
}
