//! The run supervisor: one claimed job from workspace to finish report.
//!
//! Steps: prepare the worktree, write the run record, start the command detached (its
//! own session and process group, output to files, exit status captured by a shim),
//! tail and upload its output, renew the lease, stop it on request, on timeout, on a
//! lost lease or on shutdown, make sure no process of its group is left, commit and
//! measure the changes, publish a succeeded run's commit in the source repository when
//! the server delivers it and cannot read this factory's cache
//! ([`gantry_core::api::result_ref`]), remove the worktree, report (with the diff), and
//! remove the record.
//!
//! A run whose factory died is picked up by the next factory on the same data dir
//! ([`adopt_run`]): it continues from the run record as if it had started the run.
//!
//! A lost lease (renewal refused, or the server unreachable until the lease must have
//! expired) and a factory shutdown end the run without a report: the job is no longer
//! (or soon no longer) ours, and the reaper hands it out again.
//!
//! Checkpoints: every `checkpoint_interval` while the process runs, and once more when
//! it is stopped gracefully (cancel, timeout, budget, shutdown), the worktree's work in
//! progress is committed on `gantry/<job>/wip` without touching the agent's index or
//! HEAD, pushed to the source repo, and reported as a `run.checkpoint` event. An
//! attempt whose claim carries a checkpoint starts from it instead of the base.

use crate::agent;
use crate::process::{self, DetachedCommand, Exit, PidRecord};
use crate::record::{CheckpointState, Offsets, RECORD_VERSION, RunRecord};
use crate::tail::{FileTail, SharedRecord, TICK, Tailer, TextReader};
use crate::workspace::{self, LiveGuard};
use crate::{FactoryConfig, artifacts_dir, attempt_branch, worktree_dir};
use gantry_core::api::{Checkpoint, Claim, FinishReport, MAX_REPORTED_DIFF_BYTES};
use gantry_core::event::{NewEvent, RUN_STARTED};
use gantry_core::retry::Backoff;
use gantry_core::{JobId, Outcome, RunId, StopKind};
use gantry_protocol::{CoordError, Coordinator};
use nix::sys::signal::Signal;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// Variables passed from the factory's environment to a run, when set.
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "TZ"];

/// First delay between retries of a failed call to the coordinator.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between retries of a failed finish.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Time between two looks at a run's exit status when its shim is our child.
const OWN_TICK: Duration = Duration::from_secs(1);
/// How long the last output upload of a run may take before the run is wrapped up.
const DRAIN_MAX: Duration = Duration::from_secs(30);

/// What the lease renewer knows about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Renewed, nothing asked.
    Held,
    /// Renewed, and a person asked to stop the run this way.
    Stop(StopKind),
    /// The lease is not ours any more (or may not be): why.
    Lost(String),
}

/// Everything a run needs from its factory.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub cfg: Arc<FactoryConfig>,
    pub coord: Arc<dyn Coordinator>,
    pub shutdown: watch::Receiver<bool>,
}

/// A task that is aborted when this handle is dropped, so the helpers of a run (its
/// renewer, its tailer) never outlive it, even when the run's own task is aborted.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps renewals and the finish report apart: a renewal holds it while in flight, and
/// so does each try of the finish, which sets it to true once the server accepted the
/// finish. A renewal crossing an accepted finish would be refused as a stale write and
/// counted as one, a false alarm for whoever watches that counter.
type FinishGate = Arc<tokio::sync::Mutex<bool>>;

/// Renews the lease every `interval` until the receiver side is dropped or the finish
/// was accepted; on transport errors retries with backoff until the lease must have
/// expired by our own clock.
#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn renew_loop(
    coord: Arc<dyn Coordinator>,
    run: RunId,
    epoch: i64,
    ttl: Duration,
    interval: Duration,
    claimed_at: Instant,
    state: watch::Sender<LeaseState>,
    gate: FinishGate,
) {
    // The lease is known good until `deadline`: the time we *sent* the last successful
    // renewal plus the TTL, which is never later than the server's own expiry. The
    // first deadline counts from when the claim reached us, a little after the server
    // started the lease; a tenth of the TTL absorbs that delay and clock-rate drift.
    let ttl = ttl - ttl / 10;
    let mut deadline = claimed_at + ttl;
    let interval = interval.min(ttl / 3).max(Duration::from_millis(10));
    let mut next = Instant::now() + interval;
    let mut backoff = Backoff::new(RETRY_FIRST, interval);
    let mut stops = coord.stop_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(deadline)) => {}
            _ = state.closed() => return,
            // A stop was asked of some job: renew now, the answer says if it is ours.
            changed = async {
                match stops.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    stops = None;
                    continue;
                }
            }
        }
        let finished = gate.lock().await;
        if *finished {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = state.send(LeaseState::Lost(
                "the server could not be reached before the lease expired".to_string(),
            ));
            return;
        }
        let answer = tokio::time::timeout(deadline - now, coord.renew(run, epoch)).await;
        drop(finished);
        match answer {
            Ok(Ok(renewed)) => {
                deadline = now + ttl;
                backoff.reset();
                next = Instant::now() + interval;
                if let Some(stop) = renewed.stop {
                    state.send_if_modified(|s| stop_upgrade(s, stop));
                }
            }
            Ok(Err(e @ (CoordError::StaleLease { .. } | CoordError::Refused { .. }))) => {
                let _ = state.send(LeaseState::Lost(format!("lease renewal refused: {e}")));
                return;
            }
            Ok(Err(CoordError::Unavailable(e))) => {
                tracing::warn!(%run, error = %e, "lease renewal failed; retrying");
                next = Instant::now() + backoff.next_delay();
            }
            Err(_elapsed) => {
                // Loops back and finds the deadline passed.
                next = Instant::now();
            }
        }
    }
}

/// Applies a stop from a renewal: a first stop, or a kill after a cancel.
fn stop_upgrade(s: &mut LeaseState, stop: StopKind) -> bool {
    match s {
        LeaseState::Held => {
            *s = LeaseState::Stop(stop);
            true
        }
        LeaseState::Stop(StopKind::Cancel) if stop == StopKind::Kill => {
            *s = LeaseState::Stop(stop);
            true
        }
        _ => false,
    }
}

/// Starts the renewer of a run whose lease was last known good at `since`.
fn start_renewer(
    ctx: &RunContext,
    claim: &Claim,
    since: Instant,
    initial: LeaseState,
) -> (AbortOnDrop<()>, watch::Receiver<LeaseState>, FinishGate) {
    let ttl = Duration::from_millis(claim.run.lease_ttl_ms.max(1));
    let (lease_tx, lease_rx) = watch::channel(initial);
    let gate = FinishGate::default();
    let renewer = tokio::spawn(renew_loop(
        ctx.coord.clone(),
        claim.run.id,
        claim.run.epoch,
        ttl,
        ctx.cfg.renew_interval,
        since,
        lease_tx,
        gate.clone(),
    ));
    (AbortOnDrop(renewer), lease_rx, gate)
}

/// How the process part of a run ended.
#[derive(Debug, Default)]
struct ProcessEnd {
    exit: Option<Exit>,
    /// Outcome forced by a stop, a timeout or a lost lease (else the exit decides).
    forced: Option<Outcome>,
    /// The lease was lost or the factory is shutting down: no report.
    abandoned: Option<String>,
    /// The factory shut down and left the process running for a later factory to adopt.
    left_running: bool,
    /// What went wrong outside the process.
    error: Option<String>,
    /// What the agent reported (agent engines and parsed command output).
    insights: Option<gantry_core::engine::Insights>,
    /// The outcome the agent's own report decides (else the exit code does).
    verdict: Option<Outcome>,
}

/// What became of a finish report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    /// The server applied it.
    Accepted,
    /// The server refused it, or it was never sent.
    NotAccepted,
    /// It was refused or given up on after a try whose answer never came, which the
    /// server may have applied.
    Uncertain,
}

/// Runs one claimed job to the end.
pub(crate) async fn run_claim(ctx: RunContext, claim: Claim) {
    let span = tracing::info_span!("run", job = %claim.job.id, run = %claim.run.id, attempt = claim.run.attempt);
    let (_renewer, lease, gate) = start_renewer(&ctx, &claim, Instant::now(), LeaseState::Held);
    let sup = Supervisor {
        ctx,
        claim,
        lease,
        gate,
    };
    sup.start().instrument(span).await;
}

/// A run found in a run record whose lease was just renewed: ready to be watched again.
pub(crate) struct Adoption {
    /// The record.
    pub record: RunRecord,
    /// When the renewal that proved the lease was sent.
    pub renewed_at: Instant,
    /// The stop that renewal asked for, if any.
    pub stop: Option<StopKind>,
    /// Keeps the worktree out of pruning while the run lives.
    pub guard: LiveGuard,
}

/// Watches an adopted run to its end, exactly as if this factory had started it.
pub(crate) async fn adopt_run(ctx: RunContext, adoption: Adoption) {
    let claim = adoption.record.claim.clone();
    let span = tracing::info_span!("run", job = %claim.job.id, run = %claim.run.id, attempt = claim.run.attempt, adopted = true);
    let initial = match adoption.stop {
        Some(k) => LeaseState::Stop(k),
        None => LeaseState::Held,
    };
    let (_renewer, lease, gate) = start_renewer(&ctx, &claim, adoption.renewed_at, initial);
    let sup = Supervisor {
        ctx,
        claim,
        lease,
        gate,
    };
    let _guard = adoption.guard;
    sup.resume(adoption.record).instrument(span).await;
}

struct Supervisor {
    ctx: RunContext,
    claim: Claim,
    lease: watch::Receiver<LeaseState>,
    /// Held by each try of the finish report (see [`FinishGate`]).
    gate: FinishGate,
}

impl Supervisor {
    fn job(&self) -> JobId {
        self.claim.job.id
    }
    fn run_id(&self) -> RunId {
        self.claim.run.id
    }
    fn epoch(&self) -> i64 {
        self.claim.run.epoch
    }
    fn data(&self) -> &Path {
        &self.ctx.cfg.data_dir
    }

    fn lost(&self) -> Option<String> {
        match &*self.lease.borrow() {
            LeaseState::Lost(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// A fresh run: workspace, record, process, then [`Supervisor::watch`].
    async fn start(mut self) {
        let job = self.job();
        let attempt = self.claim.run.attempt;
        let spec = self.claim.job.spec.clone();
        let branch = attempt_branch(job, attempt);
        let wt = absolute(&worktree_dir(self.data(), job, attempt));
        let _live = LiveGuard::new(&wt);
        let artifacts = absolute(&artifacts_dir(self.data(), job, self.run_id()));
        let mut report = FinishReport {
            epoch: self.epoch(),
            ..FinishReport::default()
        };

        if let Err(e) = tokio::fs::create_dir_all(&artifacts).await {
            report.outcome = Some(Outcome::Failed);
            report.error = Some(format!(
                "cannot create the artifact directory {}: {e}",
                artifacts.display()
            ));
            self.report(report).await;
            return;
        }

        let mut shutdown = self.ctx.shutdown.clone();
        let data = self.ctx.cfg.data_dir.clone();
        let setup = async {
            // An attempt after a checkpoint starts from it, when this factory can get it.
            let from = match &self.claim.job.checkpoint {
                Some(cp) => start_point(&data, &spec.repo, job, cp).await,
                None => None,
            };
            let base = from
                .as_ref()
                .map(|cp| cp.commit.clone())
                .or(spec.base.clone());
            workspace::prepare(&data, &spec.repo, base.as_deref(), &wt, &branch)
                .await
                .map(|p| (p, from))
        };
        let prepared = tokio::select! {
            p = setup => Some(p),
            // A closed channel means the factory itself is gone (its task was dropped,
            // as when its process dies): the run is left alone, for the next factory.
            Ok(_) = shutdown.wait_for(|s| *s) => None,
        };
        let Some(prepared) = prepared else {
            tracing::info!("shutdown during workspace setup; run abandoned");
            self.cleanup_abandoned(&wt).await;
            return;
        };
        let (prepared, from) = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "workspace setup failed");
                report.outcome = Some(Outcome::Failed);
                report.error = Some(format!("workspace setup failed: {e}"));
                self.cleanup_abandoned(&wt).await;
                self.report(report).await;
                return;
            }
        };
        if let Some(why) = self.lost() {
            tracing::warn!(reason = %why, "lease lost during workspace setup; run abandoned");
            self.remove_worktree(&prepared.cache, &wt).await;
            return;
        }
        let format = agent::format_of(&spec);
        let checkpoint = CheckpointState {
            base: from
                .map(|cp| cp.base)
                .unwrap_or_else(|| prepared.base_commit.clone()),
            commit: prepared.base_commit.clone(),
            tree: String::new(),
        };
        let record = RunRecord {
            version: RECORD_VERSION,
            claim: self.claim.clone(),
            process: None,
            started_at_ms: 0,
            // The raw transcript of an agent is its stdout.
            stdout: artifacts.join(if format.is_some() {
                "transcript.jsonl"
            } else {
                "stdout.log"
            }),
            stderr: artifacts.join("stderr.log"),
            exit_status: artifacts.join("exit_status"),
            artifacts,
            worktree: wt,
            cache: absolute(&prepared.cache),
            branch,
            base_commit: prepared.base_commit,
            format: format.map(|f| f.as_str().to_string()),
            uploaded: Offsets::default(),
            forced: None,
            checkpoint: Some(checkpoint),
        };
        let record = SharedRecord::new(self.data(), record);

        // A stop asked for while the workspace was being prepared: don't even start.
        let state = self.lease.borrow().clone();
        if let LeaseState::Stop(kind) = state {
            tracing::info!(
                stop = kind.as_str(),
                "stop requested before the command started"
            );
            let end = ProcessEnd {
                forced: Some(kind.outcome()),
                ..ProcessEnd::default()
            };
            return self.wrap_up(&record, end).await;
        }
        let end = match self.spawn(&record).await {
            Ok((detached, started)) => {
                self.watch(&record, Some(detached.child), true, vec![started])
                    .await
            }
            Err(error) => {
                tracing::warn!(%error, "the command could not be started");
                ProcessEnd {
                    forced: Some(Outcome::Failed),
                    error: Some(error),
                    ..ProcessEnd::default()
                }
            }
        };
        self.wrap_up(&record, end).await;
    }

    /// An adopted run: straight to [`Supervisor::watch`] from the record.
    async fn resume(mut self, record: RunRecord) {
        tracing::info!("adopted a run of a previous factory");
        let record = SharedRecord::new(self.data(), record);
        let end = self.watch(&record, None, false, Vec::new()).await;
        self.wrap_up(&record, end).await;
    }

    /// Writes the prompt and the record, starts the process detached and records it.
    /// Returns the `run.started` event, which goes out as the first upload of the run's
    /// output, so it is retried like the output while the server is unreachable.
    async fn spawn(&self, record: &SharedRecord) -> Result<(process::Detached, NewEvent), String> {
        let rec = record.get();
        let spec = &self.claim.job.spec;
        let prompt = rec.artifacts.join("prompt.md");
        tokio::fs::write(&prompt, spec.body.as_bytes())
            .await
            .map_err(|e| format!("cannot write the prompt file {}: {e}", prompt.display()))?;
        let launch = agent::launch(
            spec,
            (self.job(), self.run_id()),
            self.claim.job.resume_session.as_deref(),
            &self.ctx.cfg.engines,
            &prompt,
            &rec.artifacts,
        )
        .map_err(|e| e.to_string())?;
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        for var in ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(var) {
                env.push((var.into(), v));
            }
        }
        for (k, v) in launch.env {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        for (k, v) in &spec.env {
            env.retain(|(name, _)| name != k.as_str());
            env.push((k.into(), v.into()));
        }
        let gantry_vars = [
            ("GANTRY_JOB_ID", OsString::from(self.job().to_string())),
            ("GANTRY_RUN_ID", OsString::from(self.run_id().to_string())),
            (
                "GANTRY_ATTEMPT",
                OsString::from(self.claim.run.attempt.to_string()),
            ),
            ("GANTRY_PROMPT_FILE", prompt.clone().into_os_string()),
            ("GANTRY_WORKSPACE", rec.worktree.clone().into_os_string()),
        ];
        for (k, v) in gantry_vars {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v));
        }
        let cmd = DetachedCommand {
            argv: launch.argv,
            cwd: rec.worktree.clone(),
            env,
            stdin: launch.stdin,
            stdout: rec.stdout.clone(),
            stderr: rec.stderr.clone(),
            exit_status: rec.exit_status.clone(),
            confinement: self.confinement(&rec.artifacts),
        };
        // The record goes down before the process starts, so that a factory dying in
        // between leaves a record from which the process can still be found.
        record.update(|_| {});
        let detached = process::spawn_detached(&cmd)
            .await
            .map_err(|e| e.to_string())?;
        let started_at_ms = now_ms();
        record.update(|r| {
            r.process = Some(PidRecord {
                pid: detached.pid,
                pgid: detached.pid,
                start_time: detached.start_time,
                job: self.job(),
                run: self.run_id(),
            });
            r.started_at_ms = started_at_ms;
        });
        tracing::info!(pid = detached.pid, "command started");
        let started = NewEvent {
            kind: RUN_STARTED.to_string(),
            data: serde_json::json!({
                "pid": detached.pid,
                "pgid": detached.pid,
                "branch": rec.branch,
                "workspace": rec.worktree,
                "base_commit": rec.base_commit,
            }),
        };
        Ok((detached, started))
    }

    /// The wall around this run: the factory's sandbox, the data dir and the
    /// factory's own paths hidden, the run's artifacts (prompt, script) readable.
    fn confinement(&self, artifacts: &Path) -> Option<crate::sandbox::Confinement> {
        let cfg = &self.ctx.cfg;
        if cfg.sandbox == crate::Sandbox::None {
            return None;
        }
        Some(crate::sandbox::Confinement {
            sandbox: cfg.sandbox.clone(),
            data_dir: workspace::absolute(&cfg.data_dir),
            hidden: cfg.hidden_paths.clone(),
            readable: vec![workspace::absolute(artifacts)],
            read_only: cfg.sandbox_read_only.clone(),
            read_write: cfg.sandbox_read_write.clone(),
        })
    }

    /// Watches the recorded process to its end: tails and uploads its output, applies
    /// stops, the timeout, lease loss and shutdown, then makes sure nothing of its
    /// group is left. `child` is the shim when this factory started it (a prompt
    /// notice of its end); `own` says the group was started by this factory, so it
    /// may be signalled without checking whose it is. `first` goes out before any
    /// output.
    async fn watch(
        &mut self,
        record: &SharedRecord,
        mut child: Option<tokio::process::Child>,
        own: bool,
        first: Vec<NewEvent>,
    ) -> ProcessEnd {
        let rec = record.get();
        let Some(proc_) = rec.process.clone() else {
            return ProcessEnd {
                forced: Some(Outcome::Failed),
                error: Some("the run record names no process".to_string()),
                ..ProcessEnd::default()
            };
        };
        let pgid = proc_.pgid;
        let (finish_tx, finish_rx) = watch::channel(false);
        let (breach_tx, mut breach_rx) = watch::channel(None::<String>);
        let wake = Arc::new(Notify::new());
        let tailer = Tailer {
            coord: self.ctx.coord.clone(),
            run: self.run_id(),
            epoch: self.epoch(),
            record: record.clone(),
            stdout: FileTail::new(&rec.stdout, rec.uploaded.stdout),
            stderr: FileTail::new(&rec.stderr, rec.uploaded.stderr),
            reader: match agent::format_of(&self.claim.job.spec) {
                Some(format) => Box::new(agent::AgentReader::new(
                    agent::Watcher::new(format, &self.claim.job.spec, &self.ctx.cfg.engines.prices),
                    breach_tx,
                    Some((rec.stdout.as_path(), rec.uploaded.stdout)),
                )),
                None => Box::new(TextReader),
            },
            finishing: finish_rx,
            wake: wake.clone(),
            first,
        };
        let mut tailer = AbortOnDrop(tokio::spawn(tailer.run()));

        let timeout = self.claim.job.spec.timeout_ms.map(Duration::from_millis);
        let timeout_at = timeout.map(|t| {
            let elapsed = Duration::from_millis(now_ms().saturating_sub(rec.started_at_ms));
            Instant::now() + t.saturating_sub(elapsed)
        });
        let grace = self.ctx.cfg.kill_grace;
        let mut end = ProcessEnd {
            forced: rec.forced,
            ..ProcessEnd::default()
        };
        let mut kill_at: Option<Instant> = None;
        // A stop applied before a restart is carried on: the grace starts again.
        match rec.forced {
            Some(Outcome::Killed | Outcome::BudgetExceeded) => {
                process::signal_group(pgid, Signal::SIGKILL);
            }
            Some(_) => kill_at = Some(Instant::now() + grace),
            None => {}
        }
        let mut shutdown = self.ctx.shutdown.clone();
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let interval = self.ctx.cfg.engines.checkpoint_interval;
        let mut next_checkpoint = Instant::now() + interval;
        let mut checkpointing: Option<AbortOnDrop<()>> = None;
        let mut shutting_down = false;
        let mut lease_changed = true;
        // The shim of a run this factory started says when it ends (its reaping wakes
        // the loop), so looking at the files is only a safety net then; an adopted
        // run's end is only seen by looking.
        let mut tick = tokio::time::interval(if child.is_some() { OWN_TICK } else { TICK });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if lease_changed {
                lease_changed = false;
                let state = self.lease.borrow_and_update().clone();
                self.apply_lease(state, pgid, &mut end, &mut kill_at, record);
            }
            if end.abandoned.is_none() {
                // Liveness first, then the status: a shim that wrote its status and
                // ended between the two looks would otherwise pass for one that ended
                // without a status.
                let alive = process::is_alive(&proc_);
                match process::read_exit_status(&rec.exit_status) {
                    Some(Ok(exit)) => {
                        end.exit = Some(exit);
                        break;
                    }
                    Some(Err(e)) => {
                        end.error = Some(e);
                        break;
                    }
                    None if !alive => {
                        // The shim was killed before it could write a status: by us
                        // (a stop), or while no factory watched.
                        if end.forced.is_none() {
                            end.error = Some(
                                "the run's process ended without an exit status (it was killed, or the machine restarted)"
                                    .to_string(),
                            );
                            // Nothing the job did ended it: the attempt was lost, and
                            // `retry_on: [lost]` (the default) runs it again.
                            end.forced = Some(Outcome::Lost);
                        }
                        break;
                    }
                    None => {}
                }
            } else if !process::is_alive(&proc_) {
                break;
            }
            let timeout_sleep = match (timeout_at, end.forced, &end.abandoned) {
                (Some(t), None, None) => t,
                _ => far,
            };
            tokio::select! {
                // The shim is reaped; its status is in the file (checked above).
                _ = reaped(&mut child) => {}
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(timeout_sleep) => {
                    tracing::info!(timeout = ?timeout, "timeout passed: SIGTERM to the process group");
                    self.force(record, &mut end, Outcome::TimedOut);
                    process::signal_group(pgid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)) => {
                    tracing::info!(grace = ?grace, "grace period over: SIGKILL to the process group");
                    process::signal_group(pgid, Signal::SIGKILL);
                    kill_at = None;
                }
                // Checkpoints run beside the watch, so a stop is never held up by one.
                _ = tokio::time::sleep_until(next_checkpoint), if checkpointing.is_none() && end.forced.is_none() && end.abandoned.is_none() => {
                    let ck = self.checkpointer(record);
                    checkpointing = Some(AbortOnDrop(tokio::spawn(async move {
                        if let Err(e) = ck.take().await {
                            tracing::warn!(error = %e, "checkpoint failed");
                        }
                    })));
                }
                _ = finished(&mut checkpointing) => {
                    next_checkpoint = Instant::now() + interval;
                }
                // A budget limit passed: stop at once, it must not spend more.
                Ok(why) = breach_rx.wait_for(Option::is_some), if end.forced.is_none() && end.abandoned.is_none() => {
                    tracing::info!(reason = ?*why, "budget exceeded: SIGKILL to the process group");
                    drop(why);
                    self.force(record, &mut end, Outcome::BudgetExceeded);
                    process::signal_group(pgid, Signal::SIGKILL);
                    kill_at = None;
                }
                changed = self.lease.changed() => {
                    if changed.is_err() {
                        // The renewer ended without a verdict (it cannot, short of a bug);
                        // we can no longer know that the lease holds.
                        if end.abandoned.is_none() && self.lost().is_none() {
                            process::signal_group(pgid, Signal::SIGKILL);
                            end.abandoned = Some("the lease renewer stopped".to_string());
                        }
                    } else {
                        lease_changed = true;
                    }
                }
                // A closed channel means the factory itself is gone (its task was
                // dropped): the process runs on for the next factory to adopt.
                Ok(_) = shutdown.wait_for(|s| *s), if end.abandoned.is_none() => {
                    if self.ctx.cfg.leave_runs_on_shutdown {
                        tracing::info!("factory shutting down: the run is left running for the next factory");
                        end.left_running = true;
                        return end;
                    }
                    tracing::info!("factory shutting down: SIGKILL to the process group");
                    process::signal_group(pgid, Signal::SIGKILL);
                    end.abandoned = Some("the factory is shutting down".to_string());
                    shutting_down = true;
                    kill_at = None;
                }
            }
        }
        // The leader ended: now make sure nothing of its group survives.
        if own || process::group_is_run(&proc_) {
            process::kill_group_and_wait(pgid).await;
        }
        drop(child);
        // A graceful stop keeps the work in progress for the next attempt (an
        // interrupted periodic checkpoint is finished first; the worktree no longer
        // changes).
        if let Some(mut task) = checkpointing.take() {
            let _ = (&mut task.0).await;
        }
        let graceful = matches!(
            end.forced,
            Some(Outcome::Canceled | Outcome::TimedOut | Outcome::BudgetExceeded)
        ) || shutting_down;
        if graceful
            && self.lost().is_none()
            && let Err(e) = self.checkpointer(record).take().await
        {
            tracing::warn!(error = %e, "checkpoint on stop failed");
        }
        if end.abandoned.is_some() || self.lost().is_some() {
            return end;
        }
        let _ = finish_tx.send(true);
        wake.notify_one();
        match tokio::time::timeout(DRAIN_MAX, &mut tailer.0).await {
            Ok(Ok(reader)) => {
                end.insights = reader.insights();
                end.verdict = reader.outcome(end.exit.and_then(Exit::code));
                if end.verdict == Some(Outcome::BudgetExceeded) && end.forced.is_none() {
                    // The last lines passed the budget as the process ended by itself.
                    end.forced = Some(Outcome::BudgetExceeded);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "the output tailer failed"),
            Err(_) => {
                tracing::warn!("the last output upload took too long; the files have everything")
            }
        }
        end
    }

    /// What a checkpoint of this run needs, detached from the supervisor so it can run
    /// beside it.
    fn checkpointer(&self, record: &SharedRecord) -> Checkpointer {
        Checkpointer {
            coord: self.ctx.coord.clone(),
            run: self.run_id(),
            epoch: self.epoch(),
            job: self.job(),
            attempt: self.claim.run.attempt,
            repo: self.claim.job.spec.repo.clone(),
            record: record.clone(),
        }
    }

    /// Applies what the renewer learnt to the process group.
    fn apply_lease(
        &self,
        state: LeaseState,
        pgid: i32,
        end: &mut ProcessEnd,
        kill_at: &mut Option<Instant>,
        record: &SharedRecord,
    ) {
        match state {
            LeaseState::Held => {}
            LeaseState::Stop(StopKind::Kill) => {
                if end.forced != Some(Outcome::Killed) && end.abandoned.is_none() {
                    tracing::info!("kill requested: SIGKILL to the process group");
                    self.force(record, end, Outcome::Killed);
                    process::signal_group(pgid, Signal::SIGKILL);
                    *kill_at = None;
                }
            }
            LeaseState::Stop(StopKind::Cancel) => {
                if end.forced.is_none() && end.abandoned.is_none() {
                    tracing::info!("cancel requested: SIGTERM to the process group");
                    self.force(record, end, Outcome::Canceled);
                    process::signal_group(pgid, Signal::SIGTERM);
                    *kill_at = Some(Instant::now() + self.ctx.cfg.kill_grace);
                }
            }
            LeaseState::Lost(why) => {
                if end.abandoned.is_none() {
                    tracing::warn!(reason = %why, "lease lost: SIGKILL to the process group");
                    process::signal_group(pgid, Signal::SIGKILL);
                    end.abandoned = Some(why);
                    *kill_at = None;
                }
            }
        }
    }

    /// Records a forced outcome, in memory and in the run record.
    fn force(&self, record: &SharedRecord, end: &mut ProcessEnd, outcome: Outcome) {
        end.forced = Some(outcome);
        record.update(|r| r.forced = Some(outcome));
    }

    /// Commits, measures, cleans up and reports, as the end of the process says.
    async fn wrap_up(&self, record: &SharedRecord, end: ProcessEnd) {
        if end.left_running {
            return;
        }
        let rec = record.get();
        if let Some(why) = end.abandoned.clone().or_else(|| self.lost()) {
            tracing::warn!(reason = %why, "run abandoned: no commit, no report");
            self.remove_worktree(&rec.cache, &rec.worktree).await;
            record.remove();
            return;
        }
        let mut report = FinishReport {
            epoch: self.epoch(),
            branch: Some(rec.branch.clone()),
            base_commit: Some(rec.base_commit.clone()),
            error: end.error.clone(),
            exit_code: end.exit.and_then(Exit::code),
            ..FinishReport::default()
        };
        report.outcome = Some(match (end.forced, end.verdict) {
            (Some(o), _) => o,
            (None, Some(v)) if end.exit.is_some() => v,
            (None, _) if end.exit.is_some_and(Exit::success) => Outcome::Succeeded,
            (None, _) => Outcome::Failed,
        });
        report.insights = end.insights.clone();
        if report.outcome == Some(Outcome::Failed)
            && report.error.is_none()
            && end.exit.is_some_and(Exit::success)
            && let Some(i) = &end.insights
        {
            report.error = Some(format!(
                "the agent reported failure ({})",
                i.error_kind.as_deref().unwrap_or("no error kind")
            ));
        }
        if report.outcome == Some(Outcome::Failed)
            && report.error.is_none()
            && let Some(exit @ Exit::Signal(_)) = end.exit
        {
            report.error = Some(format!("the command was ended by {exit}"));
        }

        let message = commit_message(
            self.job(),
            self.claim.run.attempt,
            &self.claim.job.spec.title,
        );
        let committed = workspace::commit_changes(
            &rec.cache,
            &rec.worktree,
            &rec.branch,
            &rec.base_commit,
            &message,
            &rec.artifacts.join("diff.patch"),
        )
        .await;
        match committed {
            Ok(changes) => {
                report.commit = Some(changes.commit);
                report.files_changed = Some(changes.files_changed);
                report.lines_added = Some(changes.lines_added);
                report.lines_deleted = Some(changes.lines_deleted);
                // The report carries the diff so that any server replica can show it;
                // without it the run still happened, so a read failure only loses that.
                let patch = rec.artifacts.join("diff.patch");
                match workspace::reported_diff(&patch, MAX_REPORTED_DIFF_BYTES).await {
                    Ok(diff) => report.diff = Some(diff),
                    Err(e) => tracing::warn!(error = %e, "cannot read the diff to report"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "committing the attempt failed");
                report.outcome = Some(match report.outcome {
                    Some(Outcome::Succeeded) | None => Outcome::Failed,
                    Some(other) => other,
                });
                let msg = format!("committing the attempt's changes failed: {e}");
                report.error = Some(match report.error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
            }
        }
        self.publish(&rec.cache, &mut report).await;
        self.remove_worktree(&rec.cache, &rec.worktree).await;
        let published = report.result_ref.clone();
        let reported = match self.lost() {
            Some(why) => {
                tracing::warn!(reason = %why, "lease lost while wrapping up; no report");
                Reported::NotAccepted
            }
            None => self.report(report).await,
        };
        if let Some(published) = published
            && reported == Reported::NotAccepted
        {
            // Nobody will deliver it: the run's own result ref goes. (After an answer
            // that never came, the server may be delivering it right now: it stays.)
            let repo = &self.claim.job.spec.repo;
            match workspace::remove_source_ref(&rec.cache, repo, &published).await {
                Ok(()) => tracing::info!(%published, "unreported result ref removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove the unreported result ref"),
            }
        }
        record.remove();
    }

    /// Publishes the commit of a succeeded run in the source repository when the server
    /// delivers it and cannot read this factory's cache, and names the ref in the
    /// report. A publication that fails fails the run: a delivery that cannot happen
    /// must not pass for a success.
    async fn publish(&self, cache: &Path, report: &mut FinishReport) {
        let wanted = self.claim.deliver
            && self.ctx.cfg.publish_results
            && report.outcome == Some(Outcome::Succeeded);
        let Some(commit) = report.commit.clone().filter(|_| wanted) else {
            return;
        };
        // A run whose lease is gone pushes nothing.
        if self.lost().is_some() {
            return;
        }
        let repo = &self.claim.job.spec.repo;
        match workspace::publish_result(cache, repo, &commit, self.run_id()).await {
            Ok(published) => {
                tracing::info!(%published, %commit, "result published for delivery");
                report.result_ref = Some(published);
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing the result for delivery failed");
                report.outcome = Some(Outcome::Failed);
                let msg = format!(
                    "the run succeeded, but its commit cannot be delivered: publishing it \
                     in the source repository failed: {e}"
                );
                report.error = Some(match report.error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
            }
        }
    }

    async fn remove_worktree(&self, cache: &Path, wt: &Path) {
        if let Err(e) = workspace::remove_worktree(cache, wt).await {
            tracing::warn!(path = %wt.display(), error = %e, "cannot remove worktree");
        }
    }

    /// Removes a worktree directory left by a failed or abandoned setup.
    async fn cleanup_abandoned(&self, wt: &Path) {
        let cache = workspace::cache_dir(self.data(), &self.claim.job.spec.repo);
        if cache.join("HEAD").is_file() {
            self.remove_worktree(&cache, wt).await;
        } else if tokio::fs::symlink_metadata(wt).await.is_ok() {
            let _ = tokio::fs::remove_dir_all(wt).await;
        }
    }

    /// Sends the finish report, retrying transient failures while the lease holds.
    async fn report(&self, report: FinishReport) -> Reported {
        let run = self.run_id();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let shutdown = self.ctx.shutdown.clone();
        if let Some(why) = self.lost() {
            tracing::warn!(reason = %why, "lease lost; no report");
            return Reported::NotAccepted;
        }
        // Set once a try failed in transit: the server may have applied it anyway.
        let mut uncertain = false;
        let not_accepted = |uncertain: bool| {
            if uncertain {
                Reported::Uncertain
            } else {
                Reported::NotAccepted
            }
        };
        loop {
            let mut finished = self.gate.lock().await;
            match self.ctx.coord.finish(run, report.clone()).await {
                Ok(()) => {
                    *finished = true;
                    tracing::info!(outcome = ?report.outcome, "run finished");
                    return Reported::Accepted;
                }
                Err(CoordError::Unavailable(e)) => {
                    uncertain = true;
                    if let Some(why) = self.lost() {
                        tracing::warn!(error = %e, reason = %why, "finish not delivered before the lease was lost");
                        return not_accepted(uncertain);
                    }
                    if *shutdown.borrow() {
                        tracing::warn!(error = %e, "finish not delivered before shutdown");
                        return not_accepted(uncertain);
                    }
                    tracing::warn!(error = %e, "finish failed; retrying");
                    // Renewals go on between tries: the lease must hold for the next.
                    drop(finished);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "finish refused");
                    return not_accepted(uncertain);
                }
            }
        }
    }
}

fn commit_message(job: JobId, attempt: u32, title: &str) -> String {
    let title: String = title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "gantry job {job} attempt {attempt}: {}\n\nGantry-Job: {job}\nGantry-Attempt: {attempt}\n",
        title.trim()
    )
}

/// The checkpoint to start an attempt from: `cp` when its commit is in the cache or
/// can be fetched from the source; otherwise `None` (the attempt starts from its base).
async fn start_point(data: &Path, repo: &str, job: JobId, cp: &Checkpoint) -> Option<Checkpoint> {
    match workspace::fetch_checkpoint(data, repo, job, &cp.commit).await {
        Ok(true) => {
            tracing::info!(commit = %cp.commit, "starting from the job's checkpoint");
            Some(cp.clone())
        }
        Ok(false) => {
            tracing::warn!(commit = %cp.commit, "the job's checkpoint is not reachable from here; starting from the base");
            None
        }
        Err(e) => {
            tracing::warn!(commit = %cp.commit, error = %e, "cannot get the job's checkpoint; starting from the base");
            None
        }
    }
}

/// Takes work-in-progress checkpoints of one run.
struct Checkpointer {
    coord: Arc<dyn Coordinator>,
    run: RunId,
    epoch: i64,
    job: JobId,
    attempt: u32,
    repo: String,
    record: SharedRecord,
}

impl Checkpointer {
    /// Commits the worktree's work in progress (unless nothing changed since the last
    /// checkpoint), pushes it to the source repo so any factory can start from it,
    /// reports it as a `run.checkpoint` event and keeps it in the run record.
    async fn take(self) -> Result<Option<Checkpoint>, String> {
        let rec = self.record.get();
        let state = rec.checkpoint.clone().unwrap_or_else(|| CheckpointState {
            base: rec.base_commit.clone(),
            commit: rec.base_commit.clone(),
            tree: String::new(),
        });
        let unchanged = if state.tree.is_empty() {
            workspace::tree_of(&rec.cache, &state.commit)
                .await
                .map_err(|e| e.to_string())?
        } else {
            state.tree.clone()
        };
        let (job, attempt) = (self.job, self.attempt);
        let branch = agent::wip_branch(job);
        let message = format!(
            "gantry job {job} attempt {attempt}: work in progress\n\nGantry-Job: {job}\nGantry-Attempt: {attempt}\n"
        );
        let wip = workspace::checkpoint(
            &rec.cache,
            &rec.worktree,
            &rec.artifacts.join("wip.index"),
            &branch,
            &state.commit,
            &unchanged,
            &message,
        )
        .await
        .map_err(|e| e.to_string())?;
        let Some(wip) = wip else {
            tracing::debug!("nothing changed since the last checkpoint");
            return Ok(None);
        };
        let source_ref = workspace::wip_source_ref(job, attempt);
        if let Err(e) =
            workspace::push_checkpoint(&rec.cache, &self.repo, &wip.commit, &source_ref).await
        {
            tracing::warn!(error = %e, "cannot push the checkpoint to the source repo; it stays in this factory's cache");
        }
        let cp = Checkpoint {
            branch,
            base: state.base.clone(),
            commit: wip.commit.clone(),
        };
        self.coord
            .events(self.run, self.epoch, vec![agent::checkpoint_event(&cp)])
            .await
            .map_err(|e| format!("cannot report the checkpoint: {e}"))?;
        self.record.update(|r| {
            r.checkpoint = Some(CheckpointState {
                base: state.base,
                commit: wip.commit,
                tree: wip.tree,
            })
        });
        tracing::info!(commit = %cp.commit, "checkpoint taken");
        Ok(Some(cp))
    }
}

/// Waits for a spawned task to end (then forgets it); never returns when there is none.
async fn finished(task: &mut Option<AbortOnDrop<()>>) {
    match task {
        Some(t) => {
            let _ = (&mut t.0).await;
            *task = None;
        }
        None => std::future::pending().await,
    }
}

/// Waits for the shim to end and reaps it (then forgets it); never returns when there
/// is no shim to wait for.
async fn reaped(child: &mut Option<tokio::process::Child>) {
    match child {
        Some(c) => {
            let _ = c.wait().await;
            *child = None;
        }
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `p` made absolute against the current directory (a relative data dir stays usable
/// from the worktree, which is the process's working directory).
pub(crate) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
