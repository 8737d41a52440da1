//! The checking stage (issue 11): between the agent's good end and success, the result
//! runs its gates, is scanned for secrets and is checked against the current tip of its
//! base; a failure sends the agent back to fix it, up to the job's `fix_rounds`.
//!
//! Gates come from the job (`gates:`, skipped under `yolo`) and from the repository's
//! `.gantry/gates.toml`, read from the run's base commit and never from the agent's
//! branch, so an agent cannot weaken its own gates. The secret scan always runs. A result
//! that is clean but behind its base is rebased and checked again, so the gates always
//! ran on the tree that is delivered. Everything happens under the run's lease: its
//! renewer keeps running, and a kill, cancel or lost lease stops the running gate.
//!
//! Events (the contract of issue 11, written with private payloads until
//! `gantry_core::event` has them): `run.checking`, `gate.started`, `gate.passed`,
//! `gate.failed`, `secret.found`, `check.conflict`, `check.rebased`, `run.fix_round`.

use super::lease::LeaseState;
use super::review::Reviewed;
use super::spawn::FixLaunch;
use super::{RETRY_FIRST, Supervisor};
use crate::gate::{GateCommand, output_tail, run_gate};
use crate::record::{Offsets, RunRecord};
use crate::tail::SharedRecord;
use crate::workspace::{self, MergeCheck};
use gantry_core::Outcome;
use gantry_core::api::FinishReport;
use gantry_core::event::{self as ev, NewEvent};
use gantry_core::fix::{self, FixReason};
use gantry_core::gate::{
    Gate, GateChoice, GateResult, MAX_GATES_FILE, REPO_GATES_FILE, merge, parse_gates_file,
};
use gantry_core::review::ReviewChoice;
use gantry_protocol::CoordError;
use gantry_secrets::{Scanner, SecretsConfig};
use std::path::Path;
use std::time::Duration;

/// Where a repository keeps its secret scan settings (read from the base commit).
const REPO_SECRETS_FILE: &str = ".gantry/secrets.toml";
/// The largest secrets file read.
const MAX_SECRETS_FILE: u64 = 256 * 1024;
/// How often one round follows a moving base before it gives up on rebasing.
const MAX_REBASES: usize = 3;

/// Why the checking stage ends without a finish report of its own.
pub(super) enum Leave {
    /// The factory shut down and left a fix round's process running for adoption.
    Running,
    /// The lease is lost or the factory is shutting down: no report.
    Abandoned(String),
}

/// Why one step of the checking stage cannot go on.
pub(super) enum Halt {
    /// A person stopped the run (or its budget did): it ends with this outcome.
    Stop(Outcome),
    /// The result failed a check that no fix round can address: the run fails its
    /// checks with this reason.
    Reject(String),
    /// Something outside the result went wrong: the run fails with this error.
    Error(String),
    /// See [`Leave`].
    Leave(Leave),
}

/// What the checking stage works on, across its rounds.
pub(super) struct Check {
    /// The gates, cheapest first.
    gates: Vec<Gate>,
    scanner: Scanner,
    /// The commit the result's additions are scanned from: the run's base (the one a
    /// checkpoint started from, too), then the tip it was rebased onto.
    pub(super) base: String,
    /// The result being checked.
    pub(super) commit: String,
    /// The tree of `commit`.
    pub(super) tree: String,
    /// The gates' results on `tree`.
    pub(super) results: Vec<GateResult>,
    /// `base..commit` as the secret scan read it, which the reviewer is shown too.
    pub(super) diff: String,
    /// The `(base, commit)` that `tree` and `diff` were read for: they are read again
    /// only when a fix round or a rebase moved either.
    measured: (String, String),
    /// The parents of `commit`: the result is one commit on its base when they are
    /// just `base`, and needs no squash.
    parents: Vec<String>,
}

/// What the conflict check found.
enum Tip {
    /// The result merges as it is.
    Clean,
    /// It was rebased onto the moved base: check it again.
    Rebased,
    /// It conflicts with the base.
    Conflicts(FixReason),
}

impl Supervisor {
    /// Checks the succeeded result in `report` and runs fix rounds as needed; leaves the
    /// report succeeded (possibly with a new commit) or failed with the reason.
    pub(super) async fn check(
        &mut self,
        record: &SharedRecord,
        report: &mut FinishReport,
    ) -> Result<(), Leave> {
        match self.check_rounds(record, report).await {
            Ok(()) => Ok(()),
            Err(Halt::Stop(outcome)) => {
                tracing::info!(?outcome, "stopped while checking");
                report.outcome = Some(outcome);
                Ok(())
            }
            Err(Halt::Reject(reason)) => {
                tracing::info!(%reason, "the result failed its checks");
                report.outcome = Some(Outcome::GatesFailed);
                report.error = Some(reason);
                Ok(())
            }
            Err(Halt::Error(error)) => {
                tracing::warn!(%error, "the checking stage failed");
                report.outcome = Some(Outcome::Failed);
                report.error = Some(error);
                Ok(())
            }
            Err(Halt::Leave(leave)) => Err(leave),
        }
    }

    async fn check_rounds(
        &mut self,
        record: &SharedRecord,
        report: &mut FinishReport,
    ) -> Result<(), Halt> {
        let rec = record.get();
        let Some(commit) = report.commit.clone() else {
            return Ok(());
        };
        // A run started from a checkpoint has the checkpoint as its base commit: the
        // configuration comes from the base the checkpoint itself started from.
        let config_base = rec
            .checkpoint
            .as_ref()
            .map_or_else(|| rec.base_commit.clone(), |c| c.base.clone());
        // The result's tree and diff are read while the configuration is.
        let (setup, measured) = tokio::join!(
            self.check_setup(&rec, &config_base, commit.clone()),
            measure(&rec, &config_base, &commit),
        );
        let mut st = setup.map_err(Halt::Error)?;
        (st.tree, st.parents, st.diff) = measured.map_err(Halt::Error)?;
        st.measured = (config_base, commit);
        let rounds = self.claim.job.spec.fix_rounds;
        let mut round = 0;
        loop {
            self.halted()?;
            self.emit(vec![NewEvent::of(&ev::RunChecking { round })])
                .await?;
            let reasons = self.check_round(record, &mut st, round, report).await?;
            // A stop that came while the last check ran wins over its verdict.
            self.halted()?;
            let Some(first) = reasons.first() else {
                return self.squash(record, &st, report).await;
            };
            if round >= rounds {
                tracing::info!(reason = %first.summary(), "the result failed its checks after the last fix round");
                report.outcome = Some(Outcome::GatesFailed);
                report.error = Some(first.failure_reason());
                return Ok(());
            }
            round += 1;
            let summaries: Vec<String> = reasons.iter().map(FixReason::summary).collect();
            tracing::info!(round, reasons = ?summaries, "fix round");
            self.emit(vec![NewEvent::of(&ev::RunFixRound {
                round,
                reasons: summaries,
            })])
            .await?;
            if !self
                .fix_round(record, &mut st, (round, rounds), &reasons, report)
                .await?
            {
                return Ok(());
            }
        }
    }

    /// Makes the checked result one commit on its base. After fix rounds the result is
    /// a chain of commits, and an earlier one may hold what a check refused (a planted
    /// credential the next round removed): delivered as a chain, the refused content
    /// would reach the source repository in its history.
    async fn squash(
        &self,
        record: &SharedRecord,
        st: &Check,
        report: &mut FinishReport,
    ) -> Result<(), Halt> {
        if st.commit == st.base || st.parents == [st.base.as_str()] {
            return Ok(());
        }
        let rec = record.get();
        let message = super::finish::commit_message(
            self.job(),
            self.claim.run.attempt,
            &self.claim.job.spec.title,
        );
        let commit = workspace::rebase_result(
            &rec.cache,
            &rec.worktree,
            &rec.branch,
            &st.base,
            &st.tree,
            &message,
        )
        .await
        .map_err(|e| Halt::Error(format!("cannot make the result one commit: {e}")))?;
        tracing::info!(%commit, "the result of the fix rounds made one commit on its base");
        report.commit = Some(commit);
        Ok(())
    }

    /// The gates and the scanner of this run, from the job and from the repository's
    /// files at `config_base`.
    async fn check_setup(
        &self,
        rec: &RunRecord,
        config_base: &str,
        commit: String,
    ) -> Result<Check, String> {
        let spec = &self.claim.job.spec;
        let own: Vec<Gate> = match (&spec.gates, spec.yolo) {
            (_, true) | (GateChoice::None, _) => Vec::new(),
            (GateChoice::Inline(gates), false) => gates.clone(),
            (GateChoice::Profile(name), false) => {
                return Err(format!(
                    "gates profile `{name}` reached the factory unresolved (the server resolves profiles at submit)"
                ));
            }
        };
        let short = &config_base[..config_base.len().min(12)];
        // Both files are read at once: each read is a git process or two.
        let (gates_file, secrets_file) = tokio::join!(
            read_base_file(rec, config_base, REPO_GATES_FILE, MAX_GATES_FILE as u64),
            read_base_file(rec, config_base, REPO_SECRETS_FILE, MAX_SECRETS_FILE),
        );
        let repo_gates = match gates_file? {
            Some(text) => parse_gates_file(&format!("{REPO_GATES_FILE} at {short}"), &text)
                .map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let mut gates = merge(&[("the job", &own), (REPO_GATES_FILE, &repo_gates)])?;
        // Cheapest first: the shortest timeout is the best guess at the shortest run.
        gates.sort_by_key(|g| g.timeout_ms);
        // The operator's rules and allowlist (gantry.toml), then the repository's.
        let mut config = self.ctx.cfg.secrets.clone();
        if let Some(text) = secrets_file? {
            let file = format!("{REPO_SECRETS_FILE} at {short}");
            config.merge(SecretsConfig::from_toml(&file, &text).map_err(|e| e.to_string())?);
        }
        let scanner = crate::redact::scanners()
            .get(&config)
            .map_err(|e| e.to_string())?;
        Ok(Check {
            gates,
            scanner,
            base: config_base.to_string(),
            commit,
            tree: String::new(),
            results: Vec::new(),
            diff: String::new(),
            measured: (String::new(), String::new()),
            parents: Vec::new(),
        })
    }

    /// One round of checks on `st.commit`: gates, secrets, then (when those pass) the
    /// base's current tip. Returns what failed.
    async fn check_round(
        &self,
        record: &SharedRecord,
        st: &mut Check,
        round: u32,
        report: &mut FinishReport,
    ) -> Result<Vec<FixReason>, Halt> {
        for _ in 0..MAX_REBASES {
            let rec = record.get();
            if st.measured != (st.base.clone(), st.commit.clone()) {
                (st.tree, st.parents, st.diff) = measure(&rec, &st.base, &st.commit)
                    .await
                    .map_err(Halt::Error)?;
                st.measured = (st.base.clone(), st.commit.clone());
            }
            let mut reasons = self.run_gates(&rec, st, round).await?;
            reasons.extend(self.scan(st).await?);
            if !reasons.is_empty() {
                return Ok(reasons);
            }
            match self.against_tip(record, st, report).await? {
                Tip::Clean => return self.review_round(&rec, st, round, report).await,
                Tip::Conflicts(reason) => return Ok(vec![reason]),
                Tip::Rebased => {}
            }
        }
        Err(Halt::Error(format!(
            "the base moved on {MAX_REBASES} times while the result was being checked"
        )))
    }

    /// The review of a result that passed every other check, when the job asks for
    /// one (and is not `yolo`).
    async fn review_round(
        &self,
        rec: &RunRecord,
        st: &Check,
        round: u32,
        report: &mut FinishReport,
    ) -> Result<Vec<FixReason>, Halt> {
        let spec = &self.claim.job.spec;
        let review = match (&spec.review, spec.yolo) {
            (_, true) | (ReviewChoice::None, _) => return Ok(Vec::new()),
            (ReviewChoice::Inline(review), false) => review,
            (ReviewChoice::Profile(name), false) => {
                return Err(Halt::Error(format!(
                    "review profile `{name}` reached the factory unresolved (the server resolves profiles at submit)"
                )));
            }
        };
        match self.review(rec, st, (review, round), report).await? {
            Reviewed::Passed => Ok(Vec::new()),
            Reviewed::Rejected(reason) => Ok(vec![reason]),
            Reviewed::Failed(why) => Err(Halt::Reject(format!("review_rejected: {why}"))),
        }
    }

    /// Runs the gates on the worktree (whose tree is `st.tree`), stopping at the
    /// first failure unless the job keeps going. Their results are kept in `st`.
    async fn run_gates(
        &self,
        rec: &RunRecord,
        st: &mut Check,
        round: u32,
    ) -> Result<Vec<FixReason>, Halt> {
        let mut reasons = Vec::new();
        st.results.clear();
        if st.gates.is_empty() {
            return Ok(reasons);
        }
        let tree = st.tree.clone();
        let out_dir = rec.artifacts.join(format!("gates-r{round}"));
        tokio::fs::create_dir_all(&out_dir)
            .await
            .map_err(|e| Halt::Error(format!("cannot create {}: {e}", out_dir.display())))?;
        // The gates get the agent's environment without what the engine passes through
        // (its API keys): a gate is the repository's command, not the agent.
        let env = self.run_env(rec, Vec::new());
        let confinement = self.confinement(&rec.artifacts);
        // A run in the docker sandbox has its gates in containers like its agent's.
        let container = if self.sandbox_kind() == gantry_core::sandbox::SandboxKind::Docker {
            Some(
                self.container_run(rec, Vec::new(), env.clone(), None)
                    .map_err(Halt::Error)?,
            )
        } else {
            None
        };
        for gate in &st.gates.clone() {
            self.halted()?;
            let started = ev::GateStarted {
                name: gate.name.clone(),
                round,
            };
            let cmd = GateCommand {
                gate,
                worktree: &rec.worktree,
                out_dir: &out_dir,
                env: env.clone(),
                confinement: confinement.clone(),
                container: container.clone(),
                tree: tree.clone(),
                redactor: self.redactor.clone(),
            };
            // The gate starts while its start is uploaded: the event is ordered before
            // the gate's result all the same, which is uploaded after both.
            let (emitted, result) = tokio::join!(
                self.emit(vec![NewEvent::of(&started)]),
                run_gate(cmd, self.stop_signal())
            );
            emitted?;
            // A gate stopped with its run says so in the run's outcome, not as a result.
            self.halted()?;
            tracing::info!(gate = %gate.name, passed = result.passed, reason = ?result.reason, "gate ran");
            let done = if result.passed {
                NewEvent::of(&ev::GatePassed {
                    result: result.clone(),
                    round,
                })
            } else {
                NewEvent::of(&ev::GateFailed {
                    result: result.clone(),
                    round,
                })
            };
            self.emit(vec![done]).await?;
            st.results.push(result.clone());
            if !result.passed {
                reasons.push(FixReason::Gate {
                    name: gate.name.clone(),
                    command: gate.run.clone(),
                    why: result.reason.unwrap_or_else(|| "failed".to_string()),
                    output_tail: output_tail(Path::new(&result.output)),
                });
                if !self.claim.job.spec.keep_going {
                    break;
                }
            }
        }
        Ok(reasons)
    }

    /// Scans what the result adds to its base (`st.diff`) for credentials: the rules'
    /// and the values of the secrets the run was handed.
    async fn scan(&self, st: &Check) -> Result<Vec<FixReason>, Halt> {
        let diff = &st.diff;
        let mut findings = st.scanner.scan_diff(diff);
        // The values of the job's own secrets match no rule, and committing one is
        // exactly the leak a rule would catch: each is a rule of its own here.
        if let Ok(handed) = &self.secrets {
            let rules: Vec<String> = handed.names().map(secret_rule).collect();
            let literals: Vec<(&str, &str)> = rules
                .iter()
                .map(String::as_str)
                .zip(handed.values())
                .collect();
            findings.extend(gantry_secrets::scan_diff_literals(diff, &literals));
        }
        if findings.is_empty() {
            return Ok(Vec::new());
        }
        tracing::warn!(findings = findings.len(), "secrets found in the result");
        let events = findings
            .iter()
            .map(|f| {
                NewEvent::of(&ev::SecretFound {
                    file: f.file.clone(),
                    line: f.line,
                    rule: f.rule.clone(),
                    fingerprint: f.fingerprint.clone(),
                })
            })
            .collect();
        self.emit(events).await?;
        Ok(findings
            .into_iter()
            .map(|f| FixReason::Secret {
                file: f.file,
                line: f.line,
                rule: f.rule,
            })
            .collect())
    }

    /// Checks the result against the current tip of its base: rebases it when it is
    /// clean but behind, reports the conflicting paths otherwise.
    async fn against_tip(
        &self,
        record: &SharedRecord,
        st: &mut Check,
        report: &mut FinishReport,
    ) -> Result<Tip, Halt> {
        let rec = record.get();
        let spec = &self.claim.job.spec;
        let base_name = spec.base.clone().unwrap_or_else(|| "HEAD".to_string());
        let tip = workspace::fetch_base(&self.ctx.cfg.data_dir, &spec.repo, spec.base.as_deref())
            .await
            .map_err(|e| Halt::Error(format!("cannot fetch the base's current tip: {e}")))?;
        // The result was made on `st.base` (or on a checkpoint made on it): when that is
        // still the tip, there is nothing to merge and no git process need say so.
        if tip == st.base {
            return Ok(Tip::Clean);
        }
        let checked = workspace::merge_check(&rec.cache, &tip, &st.commit)
            .await
            .map_err(|e| Halt::Error(format!("the conflict check failed: {e}")))?;
        match checked {
            MergeCheck::UpToDate => Ok(Tip::Clean),
            MergeCheck::Conflicts { paths } => {
                tracing::info!(paths = paths.len(), "the result conflicts with its base");
                let conflict = ev::CheckConflict {
                    base: base_name.clone(),
                    paths: paths.clone(),
                };
                self.emit(vec![NewEvent::of(&conflict)]).await?;
                Ok(Tip::Conflicts(FixReason::Conflict {
                    base: base_name,
                    paths,
                }))
            }
            MergeCheck::Behind { merged_tree } => {
                let message =
                    super::finish::commit_message(self.job(), self.claim.run.attempt, &spec.title);
                let commit = workspace::rebase_result(
                    &rec.cache,
                    &rec.worktree,
                    &rec.branch,
                    &tip,
                    &merged_tree,
                    &message,
                )
                .await
                .map_err(|e| Halt::Error(format!("rebasing the result failed: {e}")))?;
                tracing::info!(%tip, %commit, "the base moved on: result rebased");
                let rebased = ev::CheckRebased {
                    base: base_name.clone(),
                    tip: tip.clone(),
                    commit: commit.clone(),
                };
                self.emit(vec![NewEvent::of(&rebased)]).await?;
                record.update(|r| r.base_commit = tip.clone());
                report.base_commit = Some(tip.clone());
                st.base = tip;
                st.commit = commit;
                // The figures and the diff are measured against the new base.
                let rec = record.get();
                self.commit(&rec, report).await;
                if report.outcome != Some(Outcome::Succeeded) {
                    return Err(Halt::Error(
                        report
                            .error
                            .clone()
                            .unwrap_or_else(|| "commit failed".to_string()),
                    ));
                }
                Ok(Tip::Rebased)
            }
        }
    }

    /// Fix round `round` of `rounds`: resumes the agent with a prompt naming `reasons`,
    /// then commits what it changed. Returns whether checking goes on (false: the
    /// round's process did not end well, and the report says how).
    async fn fix_round(
        &mut self,
        record: &SharedRecord,
        st: &mut Check,
        (round, rounds): (u32, u32),
        reasons: &[FixReason],
        report: &mut FinishReport,
    ) -> Result<bool, Halt> {
        let rec = record.get();
        let prompt = rec.artifacts.join(format!("fix-{round}.md"));
        tokio::fs::write(&prompt, fix::prompt(round, rounds, reasons))
            .await
            .map_err(|e| Halt::Error(format!("cannot write {}: {e}", prompt.display())))?;
        let session = report
            .insights
            .as_ref()
            .and_then(|i| i.session_id.clone())
            .or_else(|| self.claim.job.resume_session.clone());
        let fix = FixLaunch {
            round,
            prompt,
            session,
        };
        // Each round's process writes files of its own, read from their start.
        record.update(|r| {
            r.stdout = round_file(&r.stdout, round);
            r.stderr = round_file(&r.stderr, round);
            r.exit_status = round_file(&r.exit_status, round);
            r.uploaded = Offsets::default();
            r.process = None;
            r.container = None;
            r.forced = None;
        });
        // The budget counts every round: the new watcher starts from what was spent.
        self.prior = report.insights.clone();
        let end = self.spawn_and_watch(record, Some(&fix)).await;
        if end.left_running {
            return Err(Halt::Leave(Leave::Running));
        }
        if let Some(why) = end.abandoned.clone().or_else(|| self.lost()) {
            return Err(Halt::Leave(Leave::Abandoned(why)));
        }
        let rec = record.get();
        let mut again = self.first_report(&rec, &end);
        self.commit(&rec, &mut again).await;
        report.insights = again.insights.take().or(report.insights.take());
        report.exit_code = again.exit_code;
        report.outcome = again.outcome;
        report.error = again.error.take();
        if again.commit.is_some() {
            report.commit = again.commit.clone();
            report.files_changed = again.files_changed;
            report.lines_added = again.lines_added;
            report.lines_deleted = again.lines_deleted;
            report.diff = again.diff.take();
        }
        if report.outcome != Some(Outcome::Succeeded) {
            return Ok(false);
        }
        if let Some(commit) = again.commit {
            st.commit = commit;
        }
        Ok(true)
    }

    /// Uploads `events`, retrying while the server is unreachable and the lease holds.
    pub(super) async fn emit(&self, events: Vec<NewEvent>) -> Result<(), Halt> {
        let mut backoff = gantry_core::retry::Backoff::new(RETRY_FIRST, Duration::from_secs(2));
        loop {
            match self
                .ctx
                .coord
                .events(self.run_id(), self.epoch(), events.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(CoordError::Unavailable(e)) => {
                    self.halted()?;
                    tracing::warn!(error = %e, "event upload failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    return Err(Halt::Leave(Leave::Abandoned(format!(
                        "the server refused the run's events: {e}"
                    ))));
                }
            }
        }
    }

    /// Whether the run must stop checking: a stop asked, the lease lost, or the
    /// factory shutting down.
    pub(super) fn halted(&self) -> Result<(), Halt> {
        if *self.ctx.shutdown.borrow() {
            return Err(Halt::Leave(Leave::Abandoned(
                "the factory is shutting down".to_string(),
            )));
        }
        match &*self.lease.borrow() {
            LeaseState::Held => Ok(()),
            LeaseState::Stop(kind) => Err(Halt::Stop(kind.outcome())),
            LeaseState::Lost(why) => Err(Halt::Leave(Leave::Abandoned(why.clone()))),
        }
    }

    /// Resolves when a gate must be stopped with its run: a stop asked, the lease
    /// lost (or no longer known), or the factory shutting down.
    pub(super) fn stop_signal(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut lease = self.lease.clone();
        let mut shutdown = self.ctx.shutdown.clone();
        async move {
            let stop = async {
                // An error means the renewer is gone: the lease is no longer known.
                let _ = lease.wait_for(|s| *s != LeaseState::Held).await;
            };
            let shut = async {
                // A closed channel means the factory's task is gone, which is no
                // shutdown of this run (see the watch loop).
                if shutdown.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = stop => {}
                () = shut => {}
            }
        }
    }
}

/// The rule id of a finding of the value of the job's secret `name`.
fn secret_rule(name: &str) -> String {
    format!("job-secret:{name}")
}

/// `path` with the fix round in its name: `stdout.log` -> `stdout-fix1.log`.
fn round_file(path: &Path, round: u32) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name already carrying an earlier round loses it.
    let stem = stem.split("-fix").next().unwrap_or_default().to_string();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-fix{round}.{}", ext.to_string_lossy()),
        None => format!("{stem}-fix{round}"),
    };
    path.with_file_name(name)
}

/// `git diff <extra> base commit` of the result being checked (`--patch` or `--stat`),
/// never through a repository's own diff drivers.
pub(super) async fn result_diff(
    cache: &Path,
    base: &str,
    commit: &str,
    extra: &str,
) -> Result<String, String> {
    let args = [
        "diff",
        "--no-color",
        "--no-renames",
        "--no-ext-diff",
        "--no-textconv",
    ];
    let rest = [extra, base, commit];
    workspace::run(cache, args.iter().chain(rest.iter()))
        .await
        .map_err(|e| format!("cannot read the result's diff: {e}"))
}

/// The tree and the parents of `commit`, and the patch `base..commit`, read at once.
async fn measure(
    rec: &RunRecord,
    base: &str,
    commit: &str,
) -> Result<(String, Vec<String>, String), String> {
    // One process names both the tree (first line) and each parent (`^@`).
    let (tree_of, parents_of) = (format!("{commit}^{{tree}}"), format!("{commit}^@"));
    let (named, diff) = tokio::join!(
        workspace::run(&rec.cache, ["rev-parse", &tree_of, &parents_of]),
        result_diff(&rec.cache, base, commit, "--patch"),
    );
    let named = named.map_err(|e| format!("cannot read the result's tree: {e}"))?;
    let mut lines = named.lines().map(str::to_string);
    let tree = lines
        .next()
        .ok_or_else(|| format!("git rev-parse named no tree for {commit}"))?;
    Ok((tree, lines.collect(), diff?))
}

/// `path` of the run's base commit, when there is such a file.
async fn read_base_file(
    rec: &RunRecord,
    commit: &str,
    path: &str,
    max: u64,
) -> Result<Option<String>, String> {
    workspace::file_at(&rec.cache, commit, path, max)
        .await
        .map_err(|e| format!("{path} at {commit}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::round_file;
    use std::path::Path;

    #[test]
    fn round_files_sit_beside_the_first() {
        let p = Path::new("/a/transcript.jsonl");
        assert_eq!(round_file(p, 1), Path::new("/a/transcript-fix1.jsonl"));
        let again = round_file(&round_file(p, 1), 2);
        assert_eq!(again, Path::new("/a/transcript-fix2.jsonl"));
        assert_eq!(
            round_file(Path::new("/a/exit_status"), 3),
            Path::new("/a/exit_status-fix3")
        );
    }
}
