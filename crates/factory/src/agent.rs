//! Engines in the factory: how a job becomes a process ([`launch`]) and how that
//! process's standard output becomes agent events, live insights and budget stops
//! ([`Watcher`]).
//!
//! Everything engine-specific is here, so the run supervisor only starts what
//! [`launch`] returns and feeds every stdout line to its [`Watcher`].

use gantry_core::event::{NewEvent, RunBudgetExceeded};
use gantry_core::{EngineKind, JobId, JobSpec, Outcome, RunId};
use gantry_engine::{
    AgentEvent, AgentRequest, Breach, Budget, Fold, Format, Insights, PriceTable, Stdin,
    StreamParser, claude_invocation, codex_invocation, parser, script,
};
use gantry_protocol::Checkpoint;
use serde::Deserialize;
use std::borrow::Cow;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default time between two checkpoints of a running agent's work.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// Least time between two `agent.insights` snapshots of one run.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// How to start one agent CLI.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentCli {
    /// The binary: a path, or a name looked up on PATH.
    pub binary: String,
    /// Extra flags given on every run.
    pub args: Vec<String>,
    /// Names of environment variables passed through from the factory's environment
    /// (API keys, base URLs); nothing else of it reaches the agent.
    pub env: Vec<String>,
}

impl AgentCli {
    fn named(binary: &str, env: &[&str]) -> AgentCli {
        AgentCli {
            binary: binary.to_string(),
            args: Vec::new(),
            env: env.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Default for AgentCli {
    fn default() -> Self {
        AgentCli::named("", &[])
    }
}

/// The factory's engine settings (the `[engines]` and `[prices]` of `gantry.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Claude Code.
    pub claude: AgentCli,
    /// Codex.
    pub codex: AgentCli,
    /// Prices for estimated costs: the built-in table with the config's entries over it.
    pub prices: PriceTable,
    /// Time between two checkpoints of a running agent's work.
    pub checkpoint_interval: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            claude: AgentCli::named("claude", &["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"]),
            codex: AgentCli::named(
                "codex",
                &["OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME"],
            ),
            prices: PriceTable::builtin(),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

/// What to start for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// The file the process reads as stdin (`None`: /dev/null).
    pub stdin: Option<PathBuf>,
    /// Environment variables passed through for this engine, added to the allowlist.
    pub env: Vec<(OsString, OsString)>,
    /// How its stdout is parsed; `None` means plain output lines only.
    pub format: Option<Format>,
}

/// Why a job cannot be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The spec lacks what its engine needs.
    #[error("the job cannot run on engine `{engine}`: {reason}")]
    Spec {
        /// The engine.
        engine: &'static str,
        /// What is missing.
        reason: String,
    },
    /// The script engine's program could not be written.
    #[error("cannot write the script {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How the output of a job's process is parsed; `None` means plain text.
pub fn format_of(spec: &JobSpec) -> Option<Format> {
    match spec.engine {
        EngineKind::Command => spec.output.filter(|f| *f != Format::Text),
        EngineKind::Script => Some(Format::GantryJsonl),
        EngineKind::ClaudeCode => Some(Format::ClaudeStreamJson),
        EngineKind::Codex => Some(Format::CodexJson),
    }
}

/// Codex's sandbox mode for a run inside one of Gantry's walls (bubblewrap or a
/// container) whose job names none. See [`walled`].
pub const CODEX_WALLED_SANDBOX: &str = "danger-full-access";

/// The spec as its agent runs inside one of Gantry's walls (`walled`) or with none.
///
/// Codex's own sandbox for the commands it runs (`--sandbox workspace-write` or
/// `read-only`) is a bubblewrap of its own, and it cannot make the user namespace that
/// needs inside another sandbox ("bwrap: setting up uid map: Operation not permitted";
/// its Landlock fallback refuses to run without bubblewrap), so every command the agent
/// ran would fail. A walled Codex job that names no mode and is not yolo therefore runs
/// with [`CODEX_WALLED_SANDBOX`]: Gantry's wall is its sandbox (the worktree the only
/// writable host path). A mode the job names is kept as it is.
pub fn walled(spec: &JobSpec, walled: bool) -> Cow<'_, JobSpec> {
    if walled && spec.engine == EngineKind::Codex && spec.permission_mode.is_none() && !spec.yolo {
        let mut s = spec.clone();
        s.permission_mode = Some(CODEX_WALLED_SANDBOX.to_string());
        return Cow::Owned(s);
    }
    Cow::Borrowed(spec)
}

/// Builds the process of a run: the argv, stdin, extra environment and output format
/// for the job's engine. `prompt` holds the body; `artifacts` is the run's artifact dir
/// (the script engine's program is written there); `resume` is the previous attempt's
/// agent session.
pub fn launch(
    spec: &JobSpec,
    ids: (JobId, RunId),
    resume: Option<&str>,
    settings: &EngineSettings,
    prompt: &Path,
    artifacts: &Path,
) -> Result<Launch, LaunchError> {
    let engine = spec.engine.name();
    match spec.engine {
        EngineKind::Command => {
            if spec.command.is_empty() {
                return Err(LaunchError::Spec {
                    engine,
                    reason: "the command is empty".to_string(),
                });
            }
            Ok(Launch {
                argv: spec.command.iter().map(OsString::from).collect(),
                stdin: None,
                env: Vec::new(),
                format: spec.output.filter(|f| *f != Format::Text),
            })
        }
        EngineKind::Script => {
            if spec.steps.is_empty() {
                return Err(LaunchError::Spec {
                    engine,
                    reason: "it has no steps".to_string(),
                });
            }
            let (job, run) = ids;
            let session = format!("script-{job}-{run}");
            let model = spec.model.as_deref().unwrap_or("script");
            let path = artifacts.join("script.sh");
            std::fs::write(&path, script(&spec.steps, &session, model)).map_err(|source| {
                LaunchError::Write {
                    path: path.clone(),
                    source,
                }
            })?;
            Ok(Launch {
                argv: vec!["sh".into(), path.into_os_string()],
                stdin: None,
                env: Vec::new(),
                format: Some(Format::GantryJsonl),
            })
        }
        EngineKind::ClaudeCode | EngineKind::Codex => {
            let (cli, build, format): (&AgentCli, fn(&AgentRequest) -> _, Format) =
                if spec.engine == EngineKind::ClaudeCode {
                    (
                        &settings.claude,
                        claude_invocation,
                        Format::ClaudeStreamJson,
                    )
                } else {
                    (&settings.codex, codex_invocation, Format::CodexJson)
                };
            let budget = spec.budget.clone().unwrap_or_default();
            // The CLI's own turn cap is the tighter of the job's max_turns and its
            // budget's turns, so the CLI stops itself first where it can.
            let max_turns = match (spec.max_turns, budget.turns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let req = AgentRequest {
                binary: cli.binary.clone(),
                prompt_file: prompt.to_path_buf(),
                model: spec.model.clone(),
                max_turns,
                permission_mode: spec.permission_mode.clone(),
                allowed_tools: spec.allowed_tools.clone(),
                yolo: spec.yolo,
                resume: resume.map(str::to_string),
                budget_usd: budget.usd,
                extra_args: cli.args.clone(),
            };
            let inv = build(&req);
            let env = cli
                .env
                .iter()
                .filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v)))
                .collect();
            Ok(Launch {
                argv: inv.argv.into_iter().map(OsString::from).collect(),
                stdin: match inv.stdin {
                    Stdin::PromptFile => Some(prompt.to_path_buf()),
                    Stdin::Null => None,
                },
                env,
                format: Some(format),
            })
        }
    }
}

/// What feeding one line gave.
#[derive(Debug, Default)]
pub struct Fed {
    /// Events to upload, in order.
    pub events: Vec<NewEvent>,
    /// The budget limit this line passed, if any: the run must be stopped at once.
    pub breach: Option<Breach>,
}

/// Parses one run's stdout as it streams: agent events, running insights, budget checks.
pub struct Watcher {
    parser: Box<dyn StreamParser>,
    /// This process's own figures.
    own: Insights,
    /// What the run's earlier processes spent (before a fix round).
    prior: Option<Insights>,
    /// The run's figures: `prior` plus `own`.
    insights: Insights,
    budget: Budget,
    prices: PriceTable,
    breached: bool,
    last_snapshot: Option<Instant>,
    changed: bool,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("insights", &self.insights)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher of `format` output for `spec` (its model names the price when the
    /// agent does not; its budget is enforced).
    pub fn new(format: Format, spec: &JobSpec, prices: &PriceTable) -> Watcher {
        let own = spec
            .model
            .as_deref()
            .map(Insights::with_model)
            .unwrap_or_default();
        Watcher {
            parser: parser(format),
            insights: own.clone(),
            own,
            prior: None,
            budget: spec.budget.clone().unwrap_or_default(),
            prices: prices.clone(),
            breached: false,
            last_snapshot: None,
            changed: false,
        }
    }

    /// Counts what the run's earlier processes spent (a fix round's watcher) in its
    /// figures and its budget, so both cover the whole run. The process's own result
    /// replaces only its own totals.
    pub fn spent(mut self, prior: Option<Insights>) -> Watcher {
        self.prior = prior;
        self.sum();
        self
    }

    fn sum(&mut self) {
        self.insights = match &self.prior {
            Some(prior) => {
                let mut total = prior.clone();
                total.add(&self.own);
                total
            }
            None => self.own.clone(),
        };
    }

    /// Feeds one complete stdout line.
    pub fn line(&mut self, line: &str) -> Fed {
        let events = self.parser.line(line);
        self.take(events)
    }

    /// Reports a stdout line cut at [`LINE_MAX`] bytes, of which `head` is the start: an
    /// `agent.notice` that says so. The line is not parsed: a cut JSON line is no event.
    pub fn cut_line(&mut self, head: &[u8]) -> Fed {
        let head = String::from_utf8_lossy(head);
        let message = format!(
            "stdout line truncated: longer than {LINE_MAX} bytes, so it was not parsed and \
             its bytes up to the next newline were dropped (the transcript keeps them); it began: {head}"
        );
        self.take(vec![AgentEvent::Notice {
            message: gantry_engine::event::clip(&message),
        }])
    }

    /// Ends the stream (the process exited): whatever the parser still holds.
    pub fn finish(&mut self) -> Fed {
        let events = self.parser.finish();
        let mut fed = self.take(events);
        if self.changed {
            fed.events.push(self.snapshot_event());
        }
        fed
    }

    fn take(&mut self, events: Vec<AgentEvent>) -> Fed {
        let mut fed = Fed::default();
        for ev in events {
            self.own.apply(&ev, &self.prices);
            self.sum();
            self.changed = true;
            fed.events.push(NewEvent {
                kind: ev.kind().to_string(),
                data: serde_json::to_value(&ev).unwrap_or(serde_json::Value::Null),
            });
            if !self.breached
                && let Some(b) = self.budget.check(&self.insights)
            {
                self.breached = true;
                fed.events.push(NewEvent::of(&RunBudgetExceeded {
                    limit: b.limit.to_string(),
                    limit_value: b.limit_value,
                    actual: b.actual,
                    message: b.to_string(),
                }));
                fed.breach = Some(b);
            }
        }
        fed
    }

    /// An `agent.insights` snapshot when the figures changed and the last one is at
    /// least a second old: live figures without an event per line.
    pub fn snapshot_due(&mut self) -> Option<NewEvent> {
        let due = self
            .last_snapshot
            .is_none_or(|t| t.elapsed() >= SNAPSHOT_EVERY);
        (self.changed && due).then(|| self.snapshot_event())
    }

    fn snapshot_event(&mut self) -> NewEvent {
        self.last_snapshot = Some(Instant::now());
        self.changed = false;
        NewEvent::of(&self.insights)
    }

    /// The running figures.
    pub fn insights(&self) -> &Insights {
        &self.insights
    }

    /// What this process itself spent, without what the run spent before it.
    pub fn own(&self) -> &Insights {
        &self.own
    }

    /// Whether a budget limit was passed.
    pub fn breached(&self) -> bool {
        self.breached
    }

    /// How the attempt ended, from the exit code and what the agent reported: a
    /// budget stop wins; an agent that reported failure failed even if it exited 0
    /// (Claude Code's API error is `success` with `is_error`); otherwise the exit code
    /// decides.
    pub fn outcome(&self, exit_code: Option<i32>) -> Outcome {
        if self.breached {
            return Outcome::BudgetExceeded;
        }
        // This process's own report decides, not an earlier round's.
        match (exit_code, self.own.success) {
            (Some(0), Some(false)) => Outcome::Failed,
            (Some(0), _) => Outcome::Succeeded,
            _ => Outcome::Failed,
        }
    }
}

/// The branch that holds a job's checkpoints.
pub fn wip_branch(job: JobId) -> String {
    format!("gantry/{job}/wip")
}

/// The checkpoint a run records, as the event the store applies to the job.
pub fn checkpoint_event(cp: &Checkpoint) -> NewEvent {
    NewEvent::of(cp)
}

/// Longest stdout line an agent reader holds while waiting for its newline.
///
/// A line longer than this is cut: its start is reported in an `agent.notice` and the
/// rest, up to the next newline, is dropped (the transcript file keeps it whole). Without a cap
/// a process that prints without newlines would grow the factory's buffer without limit.
/// Agent CLIs do print long lines (a tool call carrying a whole file), so the cap is well
/// above what their parsers need to see whole, and small enough that a factory with
/// many runs stays bounded.
pub(crate) const LINE_MAX: usize = 8 * 1024 * 1024;

/// One piece of stdout as the agent reader splits it.
enum Piece {
    /// A complete line (its newline included), to parse.
    Line(Vec<u8>),
    /// The first bytes of a line longer than [`LINE_MAX`], for the notice; the line's
    /// bytes up to the cap are consumed with it.
    Cut(Vec<u8>),
}

/// The stdout reader of an agent run: parses complete lines with a [`Watcher`], uploads
/// agent events and insights snapshots instead of raw output (the raw stream stays in
/// `stdout.log`), and raises `breach` the moment a budget limit is passed.
pub(crate) struct AgentReader {
    watcher: Watcher,
    breach: tokio::sync::watch::Sender<Option<String>>,
    finished: bool,
    /// The current line passed [`LINE_MAX`]: its bytes are dropped until its newline.
    cutting: bool,
}

impl AgentReader {
    /// A reader for `format`; `replay` is the part of stdout already handled by an
    /// earlier watcher of this run (before a restart): it is parsed again, silently, so
    /// the insights count the whole run and not only what follows the adoption. It is
    /// read in bounded chunks and split exactly as the live stream is, so a cut line is
    /// cut again at the same place and an adoption mid-cut keeps dropping.
    pub(crate) fn new(
        watcher: Watcher,
        breach: tokio::sync::watch::Sender<Option<String>>,
        replay: Option<(&Path, u64)>,
    ) -> AgentReader {
        let mut reader = AgentReader {
            watcher,
            breach,
            finished: false,
            cutting: false,
        };
        if let Some((path, upto)) = replay
            && upto > 0
        {
            let mut tail = crate::tail::FileTail::new(path, 0);
            loop {
                let read = tail.consumed() + tail.buffered().len() as u64;
                let want = usize::try_from(upto.saturating_sub(read))
                    .unwrap_or(usize::MAX)
                    .min(crate::tail::READ_MAX);
                if want == 0 || tail.fill(want) == 0 {
                    break;
                }
                // Replayed events were uploaded before the restart; only their effect
                // on the insights and the budget counts.
                let _ = reader.split(&mut tail, false);
            }
        }
        reader
    }

    /// The next piece of the buffered stdout, taken from `tail`, or `None` when what is
    /// buffered is not a whole piece yet (with `last`, everything left is one).
    fn next_piece(&mut self, tail: &mut crate::tail::FileTail, last: bool) -> Option<Piece> {
        loop {
            let buffered = tail.buffered();
            if buffered.is_empty() {
                return None;
            }
            let newline = buffered.iter().take(LINE_MAX + 1).position(|b| *b == b'\n');
            if self.cutting {
                // Drop the rest of a cut line; only its start was worth reporting.
                match buffered.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        tail.discard(i + 1);
                        self.cutting = false;
                        continue;
                    }
                    None => {
                        let n = buffered.len();
                        tail.discard(n);
                        return None;
                    }
                }
            }
            return match newline {
                Some(i) if i <= LINE_MAX => Some(Piece::Line(tail.take(i + 1))),
                None if buffered.len() <= LINE_MAX => {
                    // A line still waiting for its newline, unless the stream ended.
                    let n = buffered.len();
                    last.then(|| Piece::Line(tail.take(n)))
                }
                _ => {
                    // Longer than the cap, whole or not: report its start and drop the
                    // rest rather than parse it in pieces, because a fragment of a JSON
                    // line is not an event and every piece would be reported again.
                    let head = tail.buffered()[..gantry_engine::event::MAX_TEXT_BYTES].to_vec();
                    tail.discard(LINE_MAX);
                    self.cutting = true;
                    Some(Piece::Cut(head))
                }
            };
        }
    }

    /// Splits and parses what `tail` holds: the events of its complete lines and cuts.
    fn split(&mut self, tail: &mut crate::tail::FileTail, last: bool) -> Vec<NewEvent> {
        let mut events = Vec::new();
        while let Some(piece) = self.next_piece(tail, last) {
            let fed = match piece {
                Piece::Line(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let mut fed = Fed::default();
                    for line in text.lines() {
                        let more = self.watcher.line(line);
                        fed.events.extend(more.events);
                        fed.breach = fed.breach.or(more.breach);
                    }
                    fed
                }
                Piece::Cut(head) => self.watcher.cut_line(&head),
            };
            events.extend(fed.events);
            if let Some(b) = fed.breach {
                let _ = self.breach.send(Some(b.to_string()));
            }
        }
        events
    }
}

impl AgentReader {
    /// What the watched process itself spent.
    pub(crate) fn own_insights(&self) -> &Insights {
        self.watcher.own()
    }
}

impl crate::tail::StdoutReader for AgentReader {
    fn read(&mut self, tail: &mut crate::tail::FileTail, last: bool) -> Vec<NewEvent> {
        let mut events = self.split(tail, last);
        if last {
            // The tailer may read "to the end" more than once (after an upload retry):
            // the stream ends once.
            if !self.finished {
                self.finished = true;
                events.extend(self.watcher.finish().events);
            }
        } else if let Some(snapshot) = self.watcher.snapshot_due() {
            events.push(snapshot);
        }
        events
    }

    fn insights(&self) -> Option<Insights> {
        Some(self.watcher.insights().clone())
    }

    fn outcome(&self, exit_code: Option<i32>) -> Option<Outcome> {
        Some(self.watcher.outcome(exit_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::{FileTail, READ_MAX, StdoutReader};
    use gantry_engine::PriceTable;
    use std::io::Write;

    fn reader(replay: Option<(&Path, u64)>) -> AgentReader {
        let spec = gantry_core::spec::parse_job_file(
            "j.md",
            "---\ntitle: t\nrepo: /r\ncommand: [\"true\"]\noutput: gantry-jsonl\n---\nDo it.\n",
        )
        .expect("valid job")
        .spec;
        let watcher = Watcher::new(Format::GantryJsonl, &spec, &PriceTable::default());
        let (breach, _) = tokio::sync::watch::channel(None);
        AgentReader::new(watcher, breach, replay)
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        f.write_all(bytes).expect("write");
    }

    /// Reads `tail` to the file's current end as the tailer does (a read per fill,
    /// not the last one) and returns its events, insights snapshots aside.
    fn drain(reader: &mut AgentReader, tail: &mut FileTail) -> Vec<NewEvent> {
        let mut events = Vec::new();
        while tail.fill(READ_MAX) > 0 || !tail.buffered().is_empty() {
            let before = tail.consumed();
            events.extend(reader.read(tail, false));
            if tail.consumed() == before && tail.fill(READ_MAX) == 0 {
                break;
            }
        }
        events.retain(|e| e.kind != gantry_core::event::AGENT_INSIGHTS);
        events
    }

    fn message(text: &str) -> Vec<u8> {
        format!("{{\"type\":\"message\",\"text\":\"{text}\"}}\n").into_bytes()
    }

    #[test]
    fn a_line_at_the_cap_is_parsed_and_a_longer_one_is_cut_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("transcript.jsonl");
        let mut at_cap = vec![b'a'; LINE_MAX];
        at_cap.push(b'\n');
        append(&path, &at_cap);
        let mut over = vec![b'b'; LINE_MAX + 10];
        over.push(b'\n');
        append(&path, &over);
        append(&path, &message("after"));

        let mut r = reader(None);
        let mut tail = FileTail::new(&path, 0);
        let events = drain(&mut r, &mut tail);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["agent.raw", "agent.notice", "agent.message"]);
        let notice = events[1].data["message"].as_str().expect("a message");
        assert!(notice.starts_with("stdout line truncated"), "{notice}");
        assert!(notice.contains("bbbb"), "{notice}");
        assert_eq!(events[2].data["text"], "after");
        assert_eq!(
            tail.consumed(),
            std::fs::metadata(&path).expect("size").len()
        );
    }

    #[test]
    fn a_reader_adopted_in_the_middle_of_a_cut_line_keeps_dropping_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("transcript.jsonl");
        append(&path, &vec![b'c'; LINE_MAX + 100]);
        // The earlier reader had handled the file up to here when the factory stopped.
        let upto = LINE_MAX as u64 + 50;

        let mut r = reader(Some((&path, upto)));
        append(&path, b"rest of the cut line\n");
        append(&path, &message("after"));
        let mut tail = FileTail::new(&path, upto);
        let events = drain(&mut r, &mut tail);
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["agent.message"], "{events:?}");
        assert_eq!(events[0].data["text"], "after");
    }
}
