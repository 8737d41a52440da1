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
//!
//! One module per job: this one starts and resumes a run; `lease` keeps its lease,
//! `spawn` starts its process, `monitor` watches the process to its end, `checkpoint`
//! takes work-in-progress checkpoints and `finish` commits, publishes and reports.

mod check;
mod checkpoint;
mod container;
mod egress;
mod finish;
mod lease;
mod monitor;
mod review;
mod spawn;
mod target;

use crate::agent;
use crate::job_secrets::{self, Handed};
use crate::process::Exit;
use crate::record::{CheckpointState, Offsets, RECORD_VERSION, RunRecord};
use crate::tail::SharedRecord;
use crate::workspace::{self, LiveGuard, Prepared, WorkspaceError, absolute};
use crate::{FactoryConfig, artifacts_dir, attempt_branch, worktree_dir};
use checkpoint::start_point;
use gantry_core::api::{Checkpoint, Claim, FinishReport};
use gantry_core::{JobId, Outcome, RunId, StopKind};
use gantry_protocol::Coordinator;
use gantry_secrets::Redactor;
use lease::{FinishGate, LeaseState, start_renewer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// First delay between retries of a failed call to the coordinator.
const RETRY_FIRST: Duration = Duration::from_millis(100);

/// Everything a run needs from its factory.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub cfg: Arc<FactoryConfig>,
    pub coord: Arc<dyn Coordinator>,
    pub shutdown: watch::Receiver<bool>,
    /// The Docker engine, when the factory runs jobs in containers.
    pub docker: Option<Arc<crate::docker::Engine>>,
}

/// A task that is aborted when this handle is dropped, so the helpers of a run (its
/// renewer, its tailer) never outlive it, even when the run's own task is aborted.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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

/// The context of one run of `claim`, `handed` its secrets: its uploads pass through
/// its redactor ([`crate::redact::Redacting`]), returned too for the files it leaves.
fn run_context(
    ctx: RunContext,
    claim: &Claim,
    handed: &Handed,
) -> (RunContext, Option<Arc<Redactor>>) {
    let redactor = crate::redact::for_job(&ctx.cfg, &claim.job.spec, handed);
    let ctx = match &redactor {
        Some(r) => RunContext {
            coord: Arc::new(crate::redact::Redacting {
                inner: ctx.coord,
                redactor: r.clone(),
            }),
            ..ctx
        },
        None => ctx,
    };
    (ctx, redactor)
}

/// Runs one claimed job to the end.
pub(crate) async fn run_claim(ctx: RunContext, claim: Claim) {
    let span = tracing::info_span!("run", job = %claim.job.id, run = %claim.run.id, attempt = claim.run.attempt);
    // The values are read now, once: the redactor needs them before anything of the
    // run is uploaded, and the agent's process gets the same ones.
    let secrets = job_secrets::resolve(ctx.cfg.secrets_file.as_deref(), &claim.job.spec.secrets)
        .map_err(|e| {
            format!(
                "factory {:?} cannot hand the job its secrets: {e}",
                ctx.cfg.name
            )
        });
    let (ctx, redactor) = run_context(ctx, &claim, secrets.as_ref().unwrap_or(&Handed::default()));
    let (_renewer, lease, gate) = start_renewer(&ctx, &claim, Instant::now(), LeaseState::Held);
    let mut sup = Supervisor {
        ctx,
        claim,
        lease,
        gate,
        prior: None,
        redactor,
        secrets,
        egress: Ok(None),
    };
    sup.egress = span.in_scope(|| sup.start_egress());
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
    // The process has its secrets already; the redactor (and a fix round's process)
    // gets what can still be read.
    let secrets =
        job_secrets::resolve_available(ctx.cfg.secrets_file.as_deref(), &claim.job.spec.secrets);
    let (ctx, redactor) = run_context(ctx, &claim, &secrets);
    let (_renewer, lease, gate) = start_renewer(&ctx, &claim, adoption.renewed_at, initial);
    let mut sup = Supervisor {
        ctx,
        claim,
        lease,
        gate,
        prior: None,
        redactor,
        secrets: Ok(secrets),
        egress: Ok(None),
    };
    // The sandbox binds the proxy's directory, so the run reaches the new socket.
    sup.egress = span.in_scope(|| sup.start_egress());
    let _guard = adoption.guard;
    sup.resume(adoption.record).instrument(span).await;
}

struct Supervisor {
    ctx: RunContext,
    claim: Claim,
    lease: watch::Receiver<LeaseState>,
    /// Held by each try of the finish report (see [`FinishGate`]).
    gate: FinishGate,
    /// What the run's earlier processes spent (before a fix round), so its budget
    /// counts every round.
    prior: Option<gantry_core::engine::Insights>,
    /// What the run's files are rewritten through once read (its uploads already pass
    /// through it: see [`run_context`]). `None` only if no rule compiles.
    redactor: Option<Arc<Redactor>>,
    /// The secrets the job names, with their values, for the agent's processes; or why
    /// the factory cannot hand them (the run then fails before any process starts).
    secrets: Result<Handed, String>,
    /// The egress proxy of a `model` run (`None` for other networks), or why it could
    /// not start (the run's processes then fail to start, saying so).
    egress: Result<Option<egress::RunEgress>, String>,
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
        let branch = attempt_branch(job, attempt);
        let wt = absolute(&worktree_dir(self.data(), job, attempt));
        let _live = LiveGuard::new(&wt);
        let artifacts = absolute(&artifacts_dir(self.data(), job, self.run_id()));
        let mut report = FinishReport {
            epoch: self.epoch(),
            ..FinishReport::default()
        };

        if let Err(e) = &self.secrets {
            // Nothing is prepared for a run that cannot start: no worktree, no process.
            tracing::warn!(error = %e, "the job's secrets cannot be handed; run failed");
            report.outcome = Some(Outcome::Failed);
            report.error = Some(e.clone());
            self.report(report).await;
            return;
        }
        if let Err(e) = tokio::fs::create_dir_all(&artifacts).await {
            report.outcome = Some(Outcome::Failed);
            report.error = Some(format!(
                "cannot create the artifact directory {}: {e}",
                artifacts.display()
            ));
            self.report(report).await;
            return;
        }

        let prepared = self.setup(&wt, &branch).await;
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
        let record = self.new_record(artifacts, wt, branch, prepared, from);
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
        let end = self.spawn_and_watch(&record, None).await;
        self.wrap_up(&record, end).await;
    }

    /// Prepares the worktree at `wt` on `branch`, from the job's checkpoint when this
    /// factory can get it, else from the base. `None` when the factory shuts down
    /// meanwhile.
    async fn setup(
        &self,
        wt: &Path,
        branch: &str,
    ) -> Option<Result<(Prepared, Option<Checkpoint>), WorkspaceError>> {
        let mut shutdown = self.ctx.shutdown.clone();
        let data = &self.ctx.cfg.data_dir;
        let spec = &self.claim.job.spec;
        let setup = async {
            // An attempt after a checkpoint starts from it, when this factory can get it.
            let from = match &self.claim.job.checkpoint {
                Some(cp) => start_point(data, &spec.repo, self.job(), cp).await,
                None => None,
            };
            let base = from
                .as_ref()
                .map(|cp| cp.commit.clone())
                .or(spec.base.clone());
            workspace::prepare(data, &spec.repo, base.as_deref(), wt, branch)
                .await
                .map(|p| (p, from))
        };
        tokio::select! {
            p = setup => Some(p),
            // A closed channel means the factory itself is gone (its task was dropped,
            // as when its process dies): the run is left alone, for the next factory.
            Ok(_) = shutdown.wait_for(|s| *s) => None,
        }
    }

    /// The run record of a fresh run whose worktree `wt` was prepared.
    fn new_record(
        &self,
        artifacts: PathBuf,
        wt: PathBuf,
        branch: String,
        prepared: Prepared,
        from: Option<Checkpoint>,
    ) -> RunRecord {
        let format = agent::format_of(&self.claim.job.spec);
        let checkpoint = CheckpointState {
            base: from
                .map(|cp| cp.base)
                .unwrap_or_else(|| prepared.base_commit.clone()),
            commit: prepared.base_commit.clone(),
            tree: String::new(),
        };
        RunRecord {
            version: RECORD_VERSION,
            claim: self.claim.clone(),
            process: None,
            container: None,
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
            checkpoint_looks: 0,
            outputs_redacted: false,
        }
    }

    /// Starts the run's process (the first, or a fix round's) and watches it to its
    /// end. Only the first sends `run.started`: a fix round is announced by its
    /// `run.fix_round` event.
    async fn spawn_and_watch(
        &mut self,
        record: &SharedRecord,
        fix: Option<&spawn::FixLaunch>,
    ) -> ProcessEnd {
        match self.spawn(record, fix).await {
            Ok((child, started)) => {
                let first = if fix.is_none() {
                    vec![started]
                } else {
                    Vec::new()
                };
                self.watch(record, child, true, first).await
            }
            Err(error) => {
                tracing::warn!(%error, "the command could not be started");
                ProcessEnd {
                    forced: Some(Outcome::Failed),
                    error: Some(error),
                    ..ProcessEnd::default()
                }
            }
        }
    }

    /// An adopted run: straight to [`Supervisor::watch`] from the record.
    async fn resume(mut self, record: RunRecord) {
        tracing::info!("adopted a run of a previous factory");
        let record = SharedRecord::new(self.data(), record);
        let end = self.watch(&record, None, false, Vec::new()).await;
        self.wrap_up(&record, end).await;
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
