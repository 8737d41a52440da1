//! The AI review of the checking stage (issue 11): once a result passed its gates, its
//! secret scan and its conflict check, a reviewer agent reads it and gives a verdict.
//!
//! The reviewer runs on a copy of the result's files (`git archive` of the commit, no
//! git metadata) in the run's artifacts directory, bound read-only in the run's sandbox
//! and made read-only on disk besides, so nothing it does can reach what is delivered.
//! It is told the job, the review's instructions, the gates' results and the diff, and
//! asked to end with a JSON verdict, read from its final message whole (events clip
//! their text; see [`gantry_engine::said`]).
//!
//! What it spends counts in the run's figures and budget: its watcher starts from what
//! the run spent, so a budget the review passes stops the run like any other budget
//! stop. A reviewer that fails, or gives no readable verdict, fails the review with that
//! reason; that is no fix round, because the agent cannot fix its reviewer.

use super::Supervisor;
use super::check::{Check, Halt};
use crate::agent::{self, AgentReader, Watcher};
use crate::process::{self, DetachedCommand};
use crate::record::RunRecord;
use crate::tail::{FileTail, READ_MAX, StdoutReader, TICK};
use crate::workspace;
use gantry_core::api::FinishReport;
use gantry_core::engine::Insights;
use gantry_core::event::{self as ev, NewEvent};
use gantry_core::review::{self, ReviewBrief, ReviewResult, ReviewSpec, parse_verdict};
use gantry_core::sandbox::SandboxKind;
use gantry_core::{EngineKind, JobSpec, Outcome};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest a reviewer may run.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The largest reviewer transcript read for its final message.
const MAX_TRANSCRIPT: u64 = 64 * 1024 * 1024;
/// The tools a Claude Code reviewer may use: reading only.
const CLAUDE_REVIEW_TOOLS: &[&str] = &["Read", "Grep", "Glob", "LS"];

/// What a review decided.
pub(super) enum Reviewed {
    /// The result passed.
    Passed,
    /// The verdict scored under the threshold: a fix round may address its findings.
    Rejected(gantry_core::fix::FixReason),
    /// No readable verdict: the review failed for this reason, which no fix round can
    /// address.
    Failed(String),
}

/// How the reviewer's process ended.
struct ReviewerEnd {
    /// Its exit code, when it exited.
    exit_code: Option<i32>,
    /// Why it was stopped early (timeout), when it was.
    cut: Option<String>,
    /// What it spent, and whether it passed the run's budget.
    own: Insights,
    breach: Option<Vec<NewEvent>>,
}

impl Supervisor {
    /// Reviews `st.commit` (round `round`) as `spec` asks; the reviewer's spend is
    /// added to `report`'s figures.
    pub(super) async fn review(
        &self,
        rec: &RunRecord,
        st: &Check,
        (spec, round): (&ReviewSpec, u32),
        report: &mut FinishReport,
    ) -> Result<Reviewed, Halt> {
        let dir = rec.artifacts.join(format!("review-r{round}"));
        let started = Instant::now();
        self.emit(vec![NewEvent::of(&ev::ReviewStarted {
            round,
            engine: spec.engine,
            model: spec.model.clone(),
        })])
        .await?;
        let prepared = self.prepare_review(rec, st, spec, &dir).await;
        let end = match prepared {
            Ok((launch_spec, prompt)) => {
                self.run_reviewer(rec, &dir, &launch_spec, &prompt, report)
                    .await
            }
            Err(e) => Err(e),
        };
        remove_copy(&dir.join("tree")).await;
        // What the reviewer wrote (and its prompt, which quotes the diff) stays on disk
        // only redacted, like the agent's own files.
        if let Some(r) = &self.redactor {
            let names = ["transcript.jsonl", "stderr.log", "prompt.md"];
            crate::redact::files(r.clone(), names.iter().map(|n| dir.join(n)).collect()).await;
        }
        let end = end.map_err(Halt::Error)?;
        // A stop that came while the reviewer ran wins over its verdict.
        self.halted()?;
        let mut total = report.insights.clone().unwrap_or_default();
        total.add_spend(&end.own);
        report.insights = Some(total);
        if let Some(events) = end.breach {
            self.emit(events).await?;
            return Err(Halt::Stop(Outcome::BudgetExceeded));
        }
        let mut result = ReviewResult {
            round,
            engine: spec.engine,
            model: spec.model.clone(),
            passed: false,
            threshold: spec.threshold,
            verdict: None,
            reason: None,
            tree: st.tree.clone(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            insights: Some(end.own.clone()),
        };
        let decided = judge(&mut result, &end, &final_message(&dir, spec.engine));
        tracing::info!(round, passed = result.passed, score = ?result.score(), reason = ?result.reason, "review");
        let event = if result.passed {
            NewEvent::of(&ev::ReviewPassed { result })
        } else {
            NewEvent::of(&ev::ReviewFailed { result })
        };
        self.emit(vec![event]).await?;
        Ok(decided)
    }

    /// Writes the reviewer's copy of the result and its prompt; returns the spec the
    /// reviewer is launched from and the prompt's file.
    async fn prepare_review(
        &self,
        rec: &RunRecord,
        st: &Check,
        spec: &ReviewSpec,
        dir: &Path,
    ) -> Result<(JobSpec, PathBuf), String> {
        let tree = dir.join("tree");
        remove_copy(&tree).await;
        tokio::fs::create_dir_all(&tree)
            .await
            .map_err(|e| format!("cannot create {}: {e}", tree.display()))?;
        workspace::export_tree(&rec.cache, &st.commit, &tree)
            .await
            .map_err(|e| format!("cannot copy the result for its reviewer: {e}"))?;
        read_only(&tree)
            .await
            .map_err(|e| format!("cannot make the reviewer's copy read-only: {e}"))?;
        // The scan of this round read the patch already.
        let stat = super::check::result_diff(&rec.cache, &st.base, &st.commit, "--stat").await?;
        let job = &self.claim.job.spec;
        let text = review::prompt(&ReviewBrief {
            title: &job.title,
            job: &job.body,
            instructions: spec.instructions.as_deref(),
            diff: &st.diff,
            stat: &stat,
            gates: &st.results,
        });
        let prompt = dir.join("prompt.md");
        tokio::fs::write(&prompt, text)
            .await
            .map_err(|e| format!("cannot write {}: {e}", prompt.display()))?;
        let walled = self.sandbox_kind() != SandboxKind::None;
        Ok((reviewer_spec(job, spec, walled), prompt))
    }

    /// Starts the reviewer in its read-only copy and watches it to its end, its
    /// timeout, a budget breach or a stop; its process group is gone on return.
    async fn run_reviewer(
        &self,
        rec: &RunRecord,
        dir: &Path,
        spec: &JobSpec,
        prompt: &Path,
        report: &FinishReport,
    ) -> Result<ReviewerEnd, String> {
        let tree = dir.join("tree");
        let launch = agent::launch(
            spec,
            (self.job(), self.run_id()),
            None,
            &self.ctx.cfg.engines,
            prompt,
            dir,
        )
        .map_err(|e| format!("the reviewer cannot start: {e}"))?;
        let mut env = self.run_env(rec, launch.env);
        for (k, v) in [("GANTRY_PROMPT_FILE", prompt), ("GANTRY_WORKSPACE", &tree)] {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v.as_os_str().to_os_string()));
        }
        let confinement = self.confinement(dir).map(|mut c| {
            c.worktree_read_only = true;
            c
        });
        let transcript = dir.join("transcript.jsonl");
        let cmd = DetachedCommand {
            argv: launch.argv,
            cwd: tree,
            env,
            stdin: launch.stdin,
            stdout: transcript.clone(),
            stderr: dir.join("stderr.log"),
            exit_status: dir.join("exit_status"),
            confinement,
        };
        // A run in the docker sandbox has its reviewer in a container like its agent's:
        // the copy of the result read-only, the review's directory as its artifacts.
        let mut reviewer = if self.sandbox_kind() == SandboxKind::Docker {
            let (engine, mut run) =
                self.container_run(rec, cmd.argv.clone(), cmd.env.clone(), cmd.stdin.clone())?;
            run.worktree = cmd.cwd.clone();
            run.worktree_read_only = true;
            run.artifacts = dir.to_path_buf();
            run.stdout = cmd.stdout.clone();
            run.stderr = cmd.stderr.clone();
            let id = engine
                .start(&run)
                .await
                .map_err(|e| format!("the reviewer cannot start: {e}"))?;
            Reviewer::Container { engine, id, run }
        } else {
            let child = process::spawn_detached(&cmd)
                .await
                .map_err(|e| format!("the reviewer cannot start: {e}"))?;
            Reviewer::Process(child)
        };
        let format = launch.format.unwrap_or(gantry_engine::Format::Text);
        let watcher =
            Watcher::new(format, spec, &self.ctx.cfg.engines.prices).spent(report.insights.clone());
        let (breach_tx, mut breach_rx) = tokio::sync::watch::channel(None);
        let mut reader = AgentReader::new(watcher, breach_tx, None);
        let mut tail = FileTail::new(&transcript, 0);
        let mut budget_events = Vec::new();
        let deadline = tokio::time::Instant::now() + REVIEW_TIMEOUT;
        let stop = self.stop_signal();
        tokio::pin!(stop);
        let cut = loop {
            tokio::select! {
                () = reviewer.ended() => break None,
                () = tokio::time::sleep_until(deadline) => {
                    break Some(format!("the reviewer timed out after {}", humantime::format_duration(REVIEW_TIMEOUT)));
                }
                () = &mut stop => break Some("stopped with its run".to_string()),
                _ = breach_rx.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            tail.fill(READ_MAX);
            budget_events.extend(budget_only(reader.read(&mut tail, false)));
            if breach_rx.borrow().is_some() {
                break None;
            }
        };
        let exit_code = reviewer.end(&cmd.exit_status).await;
        // A limit that stopped the reviewer is logged; its cgroup goes with it.
        if let Some(b) =
            crate::sandbox::limits::settle(cmd.confinement.as_ref(), &cmd.exit_status).await
        {
            tracing::warn!(limit = ?b, "{}", b.reason("reviewer"));
        }
        while tail.fill(READ_MAX) > 0 {
            budget_events.extend(budget_only(reader.read(&mut tail, false)));
        }
        budget_events.extend(budget_only(reader.read(&mut tail, true)));
        Ok(ReviewerEnd {
            exit_code,
            cut,
            own: reader.own_insights().clone(),
            breach: (!budget_events.is_empty()).then_some(budget_events),
        })
    }
}

/// The reviewer's process: detached under the process sandbox, or in a container.
enum Reviewer {
    /// A detached process leading its group.
    Process(process::Detached),
    /// A container on the factory's engine.
    Container {
        /// The engine.
        engine: std::sync::Arc<crate::docker::Engine>,
        /// The container's id.
        id: String,
        /// What it was started with (its paths are handed back at the end).
        run: crate::docker::ContainerRun,
    },
}

impl Reviewer {
    /// Returns when the reviewer's process ended (the first time only for a process).
    async fn ended(&mut self) {
        match self {
            Reviewer::Process(child) => {
                let _ = child.child.wait().await;
            }
            Reviewer::Container { engine, id, .. } => engine.wait(id).await,
        }
    }

    /// Ends whatever is left of the reviewer and returns its exit code, when it exited.
    async fn end(self, exit_status: &Path) -> Option<i32> {
        match self {
            Reviewer::Process(child) => {
                process::kill_group_and_wait(child.pid).await;
                match process::read_exit_status(exit_status) {
                    Some(Ok(exit)) => exit.code(),
                    _ => None,
                }
            }
            Reviewer::Container { engine, id, run } => {
                let state = engine.state(&id).await;
                engine.remove(&id).await;
                let paths = [run.worktree.as_path(), run.artifacts.as_path()];
                if let Err(e) = crate::docker::reclaim(&paths).await {
                    tracing::warn!(error = %e, "cannot give the review's files back to the factory's user");
                }
                match state {
                    Ok(crate::docker::ContainerState::Exited { code, .. }) => {
                        process::Exit::from_shell(i32::try_from(code).unwrap_or(-1)).code()
                    }
                    _ => None,
                }
            }
        }
    }
}

/// The job's spec as its reviewer runs: the review's engine, model and steps, reading
/// only (Claude Code in plan mode with read tools, Codex in its read-only sandbox), the
/// job's budget (checked against the whole run's spend) and turn limit. Inside one of
/// Gantry's walls (`walled`) Codex's own sandbox cannot start (see [`agent::walled`]):
/// there its reviewer runs without it, reading a copy that the wall binds read-only and
/// that is read-only on disk besides.
fn reviewer_spec(job: &JobSpec, spec: &ReviewSpec, walled: bool) -> JobSpec {
    let mut r = job.clone();
    r.engine = spec.engine;
    r.model = spec.model.clone();
    r.steps = spec.steps.clone();
    r.command = Vec::new();
    r.yolo = false;
    match spec.engine {
        EngineKind::ClaudeCode => {
            r.permission_mode = Some("plan".to_string());
            r.allowed_tools = CLAUDE_REVIEW_TOOLS.iter().map(|t| t.to_string()).collect();
        }
        EngineKind::Codex => {
            r.permission_mode = Some(if walled {
                agent::CODEX_WALLED_SANDBOX.to_string()
            } else {
                "read-only".to_string()
            });
            r.allowed_tools = Vec::new();
        }
        EngineKind::Command | EngineKind::Script => {}
    }
    r
}

/// The budget stop among a reader's events; the reviewer's other events stay in its
/// transcript (uploaded as the run's, they would read as the agent's).
fn budget_only(events: Vec<NewEvent>) -> Vec<NewEvent> {
    events
        .into_iter()
        .filter(|e| e.kind == ev::RUN_BUDGET_EXCEEDED)
        .collect()
}

/// The reviewer's final message, whole: the last thing it said in its transcript.
fn final_message(dir: &Path, engine: EngineKind) -> String {
    let format = match engine {
        EngineKind::ClaudeCode => gantry_engine::Format::ClaudeStreamJson,
        EngineKind::Codex => gantry_engine::Format::CodexJson,
        EngineKind::Script => gantry_engine::Format::GantryJsonl,
        EngineKind::Command => gantry_engine::Format::Text,
    };
    let Ok(file) = std::fs::File::open(dir.join("transcript.jsonl")) else {
        return String::new();
    };
    let mut last = String::new();
    let reader = std::io::BufReader::new(std::io::Read::take(file, MAX_TRANSCRIPT));
    for line in reader.split(b'\n').map_while(Result::ok) {
        if line.len() > agent::LINE_MAX {
            continue;
        }
        if let Some(text) = gantry_engine::said(format, &String::from_utf8_lossy(&line)).pop() {
            last = text;
        }
    }
    last
}

/// Fills `result` from how the reviewer ended and its final message; returns the
/// decision.
fn judge(result: &mut ReviewResult, end: &ReviewerEnd, message: &str) -> Reviewed {
    let failed = match (&end.cut, end.exit_code, end.own.success) {
        (Some(why), _, _) => Some(why.clone()),
        (None, Some(0), Some(false)) => Some(format!(
            "the reviewer reported failure: {}",
            end.own
                .error_message
                .clone()
                .or_else(|| end.own.error_kind.clone())
                .unwrap_or_else(|| "no reason given".to_string())
        )),
        (None, Some(0), _) => None,
        (None, Some(code), _) => Some(format!("the reviewer exited {code}")),
        (None, None, _) => Some("the reviewer was killed".to_string()),
    };
    if let Some(why) = failed {
        result.reason = Some(why.clone());
        return Reviewed::Failed(why);
    }
    match parse_verdict(message) {
        Ok(verdict) => {
            result.passed = verdict.passes(result.threshold);
            let reason = gantry_core::fix::FixReason::Review {
                score: Some(verdict.score),
                threshold: result.threshold,
                why: None,
                findings: verdict.findings.clone(),
            };
            result.verdict = Some(verdict);
            if result.passed {
                Reviewed::Passed
            } else {
                Reviewed::Rejected(reason)
            }
        }
        Err(e) => {
            result.reason = Some(e.to_string());
            Reviewed::Failed(e.to_string())
        }
    }
}

/// Makes every file and directory below `root` read-only, so a reviewer running
/// without a sandbox cannot change its copy either.
async fn read_only(root: &Path) -> std::io::Result<()> {
    set_modes(root.to_path_buf(), 0o444, 0o555).await
}

/// Removes a reviewer's copy (its directories made writable again first).
async fn remove_copy(root: &Path) {
    if tokio::fs::symlink_metadata(root).await.is_err() {
        return;
    }
    if let Err(e) = set_modes(root.to_path_buf(), 0o644, 0o755).await {
        tracing::warn!(path = %root.display(), error = %e, "cannot make the reviewer's copy writable");
    }
    if let Err(e) = tokio::fs::remove_dir_all(root).await {
        tracing::warn!(path = %root.display(), error = %e, "cannot remove the reviewer's copy");
    }
}

/// Sets the mode of every regular file (`file`) and directory (`dir`) below `root`,
/// never following a symbolic link.
async fn set_modes(root: PathBuf, file: u32, dir: u32) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt as _;
        let mut stack = vec![root];
        let mut dirs = Vec::new();
        while let Some(path) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                // A directory is opened up before it is read, and closed last.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
                for entry in std::fs::read_dir(&path)? {
                    stack.push(entry?.path());
                }
                dirs.push(path);
            } else if meta.is_file() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file))?;
            }
        }
        for path in dirs.iter().rev() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(dir))?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}
