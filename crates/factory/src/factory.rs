//! The factory loop: adopt the runs a previous incarnation left, clean up, register,
//! then claim a job whenever a seat is free and run it.

use crate::admission::{self, Admission};
use crate::engine_wait::adopt_when_engine_answers;
use crate::heartbeat;
use crate::process;
use crate::record::{self, RunRecord};
use crate::registration::{BACKOFF_FIRST, BACKOFF_MAX, Registration, Waited, or_shutdown};
use crate::run::{Adoption, RunContext, adopt_run, run_claim};
use crate::workspace::{self, LiveGuard};
use crate::{FactoryConfig, FactoryError};
use gantry_core::retry::Backoff;
use gantry_core::sandbox::SandboxKind;
use gantry_core::{JobId, RunId, StopKind};
use gantry_protocol::{Claim, RegisterFactory};
use gantry_protocol::{CoordError, Coordinator, ErrorKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Time between two admission checks while admission is closed.
const ADMISSION_RECHECK: Duration = Duration::from_secs(1);

/// A factory: runs claimed jobs, at most `seats` at a time, each in its own worktree.
pub struct Factory {
    cfg: Arc<FactoryConfig>,
    coord: Arc<dyn Coordinator>,
    /// Tells every run the factory stops (runs adopted before [`Factory::run`] was
    /// called need it before the caller's shutdown signal is known).
    stop: watch::Sender<bool>,
    seats: Arc<Semaphore>,
    runs: JoinSet<()>,
    adopted: bool,
    admission: watch::Sender<Admission>,
    /// The Docker engine, once connected (see [`FactoryConfig::docker`]).
    docker: Option<Arc<crate::docker::Engine>>,
    /// Whether the connection was tried already.
    docker_tried: bool,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory").field("cfg", &self.cfg).finish()
    }
}

/// What [`Factory::adopt`] found under `<data>/runs/`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Runs whose lease held: this factory now watches them to their end (including
    /// those that ended while no factory watched, finished with their real status).
    pub adopted: Vec<(JobId, RunId)>,
    /// Runs whose lease was gone or could not be proven: killed and cleaned up, never
    /// finished (the reaper hands their jobs out again).
    pub dropped: Vec<(JobId, RunId)>,
    /// Record files that could not be read; they were removed.
    pub unreadable: Vec<PathBuf>,
    /// Runs in containers whose lease held but whose Docker engine did not answer:
    /// their leases are kept and they are adopted once the engine answers (or let go
    /// after [`crate::DockerConfig::engine_wait`]), never reported failed for it.
    pub awaiting_engine: Vec<(JobId, RunId)>,
}

/// Whether a recorded run's lease still holds.
enum Verdict {
    /// Renewed: the renewal was sent at `renewed_at` and may carry a stop.
    Valid {
        renewed_at: Instant,
        stop: Option<StopKind>,
    },
    /// Refused, or the server could not be reached for a whole lease TTL.
    Lost(String),
}

impl Factory {
    /// A factory with this configuration, talking to the control plane through `coord`.
    pub fn new(mut cfg: FactoryConfig, coord: Arc<dyn Coordinator>) -> Self {
        // The secrets file holds what only the runs that name a secret may have, and
        // those get their values in their environment: no run reads the file itself.
        if let Some(path) = &cfg.secrets_file
            && !cfg.hidden_paths.contains(path)
        {
            cfg.hidden_paths.push(path.clone());
        }
        let seats = Arc::new(Semaphore::new(cfg.seats as usize));
        Factory {
            cfg: Arc::new(cfg),
            coord,
            stop: watch::channel(false).0,
            seats,
            runs: JoinSet::new(),
            adopted: false,
            admission: watch::channel(Admission::Open).0,
            docker: None,
            docker_tried: false,
        }
    }

    /// Whether the factory claims, and if not why, as of its last check (before each
    /// claim, and every second while closed). Take it before [`Factory::run`].
    pub fn admission(&self) -> watch::Receiver<Admission> {
        self.admission.subscribe()
    }

    /// Checks admission now and publishes it; logs when it opens or closes.
    fn check_admission(&self) -> Admission {
        let now = admission::check(&self.cfg);
        let before = self.admission.send_replace(now.clone());
        if std::mem::discriminant(&before) != std::mem::discriminant(&now) {
            if now.is_open() {
                tracing::info!("admission open again: claiming");
            } else {
                tracing::warn!(reason = %now, "admission closed: not claiming");
            }
        }
        now
    }

    /// Connects to the Docker engine when the configuration names one (once). An
    /// engine that does not answer is an error only when Docker is the default
    /// sandbox; otherwise the factory simply does not offer it.
    async fn connect_docker(&mut self) -> Result<(), FactoryError> {
        let Some(docker) = &self.cfg.docker else {
            return Ok(());
        };
        if self.docker_tried {
            return Ok(());
        }
        self.docker_tried = true;
        match crate::docker::Engine::connect(&docker.socket).await {
            Ok(engine) => {
                tracing::info!(socket = %docker.socket.display(), image = %docker.image, default = docker.default, "docker sandbox available");
                self.docker = Some(Arc::new(engine));
                Ok(())
            }
            Err(e) if docker.default => Err(FactoryError::Docker(e)),
            Err(e) => {
                tracing::warn!(error = %e, "docker sandbox unavailable: jobs asking for it go to other factories");
                Ok(())
            }
        }
    }

    /// The capabilities the factory registers: the configured ones, plus the sandbox
    /// kinds it runs (`sandbox:bwrap` or `sandbox:none`, and `sandbox:docker` when the
    /// engine answered).
    fn capabilities(&self) -> Vec<String> {
        let mut caps = self.cfg.capabilities.clone();
        let mut kinds = vec![match self.cfg.sandbox {
            crate::Sandbox::Bwrap { .. } => SandboxKind::Bwrap,
            crate::Sandbox::None => SandboxKind::None,
        }];
        if self.docker.is_some() {
            kinds.push(SandboxKind::Docker);
        }
        for cap in kinds.into_iter().map(SandboxKind::capability) {
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        caps
    }

    fn ctx(&self) -> RunContext {
        RunContext {
            cfg: self.cfg.clone(),
            coord: self.coord.clone(),
            shutdown: self.stop.subscribe(),
            docker: self.docker.clone(),
        }
    }

    /// Creates the data directories and makes this process a child subreaper.
    fn prepare_dirs(&self) -> Result<(), FactoryError> {
        for sub in ["repos", "work", "artifacts", "runs"] {
            let path = self.cfg.data_dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|source| FactoryError::DataDir { path, source })?;
        }
        process::become_subreaper();
        Ok(())
    }

    /// Takes over the runs that a previous incarnation of this factory (same data dir)
    /// left: for each run record, renews the run's lease; if it holds, the run is
    /// watched again from where the record says (a run that ended meanwhile is finished
    /// with its real exit status); if not, its process group is killed and its worktree
    /// and record removed, without a report. A run is never started twice.
    ///
    /// [`Factory::run`] calls it first; call it yourself to know when adoption is done
    /// (e.g. to start a lease reaper only after the adopted leases were renewed). The
    /// adopted runs occupy seats. Calling it again does nothing.
    pub async fn adopt(&mut self) -> Result<AdoptReport, FactoryError> {
        let mut report = AdoptReport::default();
        if self.adopted {
            return Ok(report);
        }
        self.prepare_dirs()?;
        self.connect_docker().await?;
        self.adopted = true;
        let mut decisions = JoinSet::new();
        for (path, rec) in record::scan(&self.cfg.data_dir) {
            match rec {
                Ok(rec) => {
                    let coord = self.coord.clone();
                    decisions.spawn(async move {
                        let verdict = decide(coord.as_ref(), &rec.claim).await;
                        (rec, verdict)
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable run record removed; its run cannot be adopted");
                    let _ = std::fs::remove_file(&path);
                    report.unreadable.push(path);
                }
            }
        }
        while let Some(res) = decisions.join_next().await {
            let (rec, verdict) = match res {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "deciding on a recorded run failed");
                    continue;
                }
            };
            let ids = (rec.claim.job.id, rec.claim.run.id);
            let why = match verdict {
                // A factory restarted without the docker sandbox cannot watch a
                // container: it lets the run go (the agent did not fail).
                Verdict::Valid { .. }
                    if rec.process.is_none()
                        && rec.container.is_some()
                        && self.cfg.docker.is_none() =>
                {
                    "the run is in a container and this factory no longer runs docker".to_string()
                }
                Verdict::Valid { renewed_at, stop }
                    if rec.process.is_some() || rec.container.is_some() =>
                {
                    let permit = self.seats.clone().try_acquire_owned().ok();
                    if permit.is_none() {
                        tracing::warn!(job = %ids.0, run = %ids.1, seats = self.cfg.seats, "more runs to adopt than seats; adopting it anyway");
                    }
                    tracing::info!(job = %ids.0, run = %ids.1, "adopting run");
                    // A run in a container whose engine does not answer (yet) keeps
                    // its lease until it does: see `engine_wait`.
                    let waits = match (&rec.process, &self.docker, &self.cfg.docker) {
                        (None, None, Some(d)) => Some((d.socket.clone(), d.engine_wait)),
                        _ => None,
                    };
                    let adoption = Adoption {
                        guard: LiveGuard::new(&rec.worktree),
                        record: rec,
                        renewed_at,
                        stop,
                    };
                    let ctx = self.ctx();
                    match waits {
                        Some((socket, wait)) => {
                            self.runs.spawn(async move {
                                adopt_when_engine_answers(ctx, adoption, socket, wait).await;
                                drop(permit);
                            });
                            report.awaiting_engine.push(ids);
                        }
                        None => {
                            self.runs.spawn(async move {
                                adopt_run(ctx, adoption).await;
                                drop(permit);
                            });
                            report.adopted.push(ids);
                        }
                    }
                    continue;
                }
                Verdict::Valid { .. } => {
                    "the previous factory stopped before it recorded the process".to_string()
                }
                Verdict::Lost(why) => why,
            };
            tracing::warn!(job = %ids.0, run = %ids.1, reason = %why, "recorded run dropped: killed, not finished");
            drop_run(&self.cfg, self.docker.as_deref(), &rec).await;
            report.dropped.push(ids);
        }
        Ok(report)
    }

    /// Runs the factory until `shutdown` turns true: adopts the runs of a previous
    /// incarnation (unless [`Factory::adopt`] already did), prunes leftover worktrees,
    /// registers, then claims and runs jobs while seats are free.
    ///
    /// On shutdown it stops claiming, SIGKILLs the process groups of its runs and
    /// reports none of them (their leases expire and the reaper hands the jobs out
    /// again), then returns once every run has wound down. With
    /// [`FactoryConfig::leave_runs_on_shutdown`] it leaves them running instead, for
    /// the next factory on the same data dir to adopt.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), FactoryError> {
        let cfg = self.cfg.clone();
        check_before_start(&cfg).await?;
        self.connect_docker().await?;
        if !self.adopted {
            match or_shutdown(&mut shutdown, self.adopt()).await {
                Waited::Done(report) => {
                    let report = report?;
                    if !report.adopted.is_empty()
                        || !report.dropped.is_empty()
                        || !report.awaiting_engine.is_empty()
                    {
                        tracing::info!(adopted = ?report.adopted, dropped = ?report.dropped, awaiting_engine = ?report.awaiting_engine, "runs of a previous factory");
                    }
                }
                Waited::Shutdown => {
                    self.wind_down().await;
                    return Ok(());
                }
            }
        }
        if let Some(engine) = &self.docker {
            sweep_containers(engine, &cfg.data_dir).await;
        }
        prune_leftovers(&cfg.data_dir).await;
        let reg = RegisterFactory {
            name: cfg.name.clone(),
            seats: cfg.seats,
            capabilities: self.capabilities(),
        };
        let Some(registration) =
            Registration::register(self.coord.clone(), reg, &mut shutdown).await?
        else {
            self.wind_down().await;
            return Ok(());
        };
        let registration = Arc::new(registration);
        // The first heartbeat goes out at once: let it say whether the factory claims.
        self.check_admission();
        // Aborted when the factory stops, whichever way it returns.
        let _heartbeat = heartbeat::spawn(heartbeat::Pulse {
            coord: self.coord.clone(),
            registration: registration.clone(),
            data_dir: cfg.data_dir.clone(),
            admission: self.admission.subscribe(),
            stop: self.stop.subscribe(),
        });

        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        loop {
            // Forget runs that ended, so the set does not grow with the factory's age.
            while let Some(res) = self.runs.try_join_next() {
                log_join(res);
            }
            let permit = match or_shutdown(&mut shutdown, self.seats.clone().acquire_owned()).await
            {
                Waited::Done(Ok(p)) => p,
                Waited::Done(Err(_)) | Waited::Shutdown => break,
            };
            if !self.check_admission().is_open() {
                drop(permit);
                match or_shutdown(&mut shutdown, tokio::time::sleep(ADMISSION_RECHECK)).await {
                    Waited::Done(()) => continue,
                    Waited::Shutdown => break,
                }
            }
            let enrolled = registration.current();
            let id = enrolled.id;
            let claimed =
                match or_shutdown(&mut shutdown, self.coord.claim(id, cfg.claim_wait)).await {
                    Waited::Done(c) => c,
                    Waited::Shutdown => break,
                };
            match claimed {
                Ok(Some(claim)) => {
                    backoff.reset();
                    self.spawn_run(claim, permit);
                }
                Ok(None) => backoff.reset(),
                Err(CoordError::Refused {
                    kind: ErrorKind::NotFound,
                    message,
                }) => {
                    tracing::warn!(factory = %id, %message, "the server does not know this factory; registering again");
                    if registration
                        .replace(enrolled, &mut shutdown)
                        .await?
                        .is_none()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "claim failed");
                    if let Waited::Shutdown =
                        or_shutdown(&mut shutdown, tokio::time::sleep(wait)).await
                    {
                        break;
                    }
                }
            }
        }
        self.wind_down().await;
        Ok(())
    }

    fn spawn_run(&mut self, claim: Claim, permit: tokio::sync::OwnedSemaphorePermit) {
        tracing::info!(job = %claim.job.id, run = %claim.run.id, attempt = claim.run.attempt, "claimed");
        let ctx = self.ctx();
        self.runs.spawn(async move {
            run_claim(ctx, claim).await;
            drop(permit);
        });
    }

    /// Tells every run the factory stops and waits for them all.
    async fn wind_down(mut self) {
        tracing::info!(running = self.runs.len(), "factory stopping");
        let _ = self.stop.send(true);
        while let Some(res) = self.runs.join_next().await {
            log_join(res);
        }
    }
}

/// What a factory checks before it starts: its seats, its sandbox (a probe), its
/// secrets file and its data dir (private to its user).
async fn check_before_start(cfg: &FactoryConfig) -> Result<(), FactoryError> {
    if cfg.seats == 0 {
        return Err(FactoryError::Config {
            field: "seats",
            value: "0".to_string(),
            reason: "a factory needs at least one seat".to_string(),
        });
    }
    cfg.sandbox.probe().await.map_err(FactoryError::Sandbox)?;
    // A broken secrets file is found now, not by the first job that names a secret.
    if let Some(path) = &cfg.secrets_file {
        crate::check_secrets_file(path).map_err(FactoryError::SecretsFile)?;
    }
    if cfg.sandbox == crate::Sandbox::None {
        tracing::warn!("runs are NOT sandboxed: every job sees what this factory sees");
    } else {
        tracing::info!(sandbox = cfg.sandbox.kind(), "runs are sandboxed");
    }
    crate::private_dir(&cfg.data_dir).map_err(|source| FactoryError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    Ok(())
}

/// Removes the containers a factory on `data_dir` started that no run record names:
/// what is left of runs that ended while no factory watched them, or of a factory that
/// died between starting a container and recording it. Containers of other data dirs
/// (other factories on the same engine) are never touched.
async fn sweep_containers(engine: &crate::docker::Engine, data_dir: &std::path::Path) {
    let data_dir = workspace::absolute(data_dir);
    let live: Vec<String> = record::scan(&data_dir)
        .into_iter()
        .filter_map(|(_, r)| r.ok()?.container)
        .collect();
    match engine.containers_of(&data_dir).await {
        Ok(found) => {
            for (id, run) in found.into_iter().filter(|(id, _)| !live.contains(id)) {
                tracing::info!(container = %id, run = ?run, "removing a leftover container");
                engine.remove(&id).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list leftover containers"),
    }
}

/// Removes the worktrees and temporary clones no run uses, and logs each cache's disk
/// use; a failure is only logged.
async fn prune_leftovers(data_dir: &std::path::Path) {
    match prune_workspaces(data_dir).await {
        Ok(pruned) => {
            for path in &pruned.removed {
                tracing::info!(path = %path.display(), "removed a leftover worktree");
            }
            for cache in &pruned.caches {
                tracing::info!(cache = %cache.path.display(), bytes = cache.bytes, "repo cache disk use");
            }
        }
        Err(e) => tracing::warn!(error = %e, "pruning leftover worktrees failed"),
    }
}

/// Renews the lease of a recorded run to learn whether it still holds, retrying while
/// the server is unreachable, for at most one lease TTL (after which the lease has
/// expired for sure: it was last renewed before this factory started).
async fn decide(coord: &dyn Coordinator, claim: &Claim) -> Verdict {
    let ttl = Duration::from_millis(claim.run.lease_ttl_ms.max(1));
    let deadline = Instant::now() + ttl;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, coord.renew(claim.run.id, claim.run.epoch)).await {
            Ok(Ok(renewed)) => {
                return Verdict::Valid {
                    renewed_at: sent,
                    stop: renewed.stop,
                };
            }
            Ok(Err(e @ (CoordError::StaleLease { .. } | CoordError::Refused { .. }))) => {
                return Verdict::Lost(format!("lease renewal refused: {e}"));
            }
            Ok(Err(CoordError::Unavailable(e))) => {
                tracing::warn!(run = %claim.run.id, error = %e, "renewing a recorded run's lease failed; retrying");
                let wait = backoff.next_delay();
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            Err(_) => break,
        }
    }
    Verdict::Lost("the server could not be reached for a whole lease TTL".to_string())
}

/// Kills what is left of a recorded run that is not ours any more, and removes its
/// worktree and record (its artifacts stay, its output files redacted).
pub(crate) async fn drop_run(
    cfg: &FactoryConfig,
    docker: Option<&crate::docker::Engine>,
    rec: &RunRecord,
) {
    match (&rec.process, &rec.container) {
        (Some(p), _) if process::group_is_run(p) => process::kill_group_and_wait(p.pgid).await,
        (Some(_), _) => {}
        (None, Some(id)) => match docker {
            Some(engine) => {
                engine.remove(id).await;
                let paths = [rec.worktree.as_path(), rec.artifacts.as_path()];
                if let Err(e) = crate::docker::reclaim(&paths).await {
                    tracing::warn!(error = %e, "cannot give the worktree back to the factory's user");
                }
            }
            None => {
                // Its processes are the host's too: they carry the run's ids in their
                // environment. The container itself goes with the next sweep.
                tracing::warn!(container = %id, "no Docker engine to remove the dropped run's container; killing its processes");
                process::kill_run_processes(rec.claim.job.id, rec.claim.run.id).await;
            }
        },
        (None, None) => process::kill_run_processes(rec.claim.job.id, rec.claim.run.id).await,
    }
    let spec = &rec.claim.job.spec;
    let secrets = crate::job_secrets::resolve_available(cfg.secrets_file.as_deref(), &spec.secrets);
    if let Some(r) = crate::redact::for_job(cfg, spec, &secrets) {
        crate::redact::files(r, vec![rec.stdout.clone(), rec.stderr.clone()]).await;
    }
    if rec.cache.join("HEAD").is_file() {
        if let Err(e) = workspace::remove_worktree(&rec.cache, &rec.worktree).await {
            tracing::warn!(path = %rec.worktree.display(), error = %e, "cannot remove worktree");
        }
    } else if rec.worktree.exists() {
        let _ = tokio::fs::remove_dir_all(&rec.worktree).await;
    }
    RunRecord::remove(&cfg.data_dir, rec.claim.run.id);
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        tracing::error!(error = %e, "a run task failed");
    }
}

/// [`workspace::prune`] of the data dir `data_dir`, keeping the worktrees that run
/// records name: their runs may still be adopted.
pub async fn prune_workspaces(
    data_dir: &std::path::Path,
) -> Result<workspace::PruneReport, workspace::WorkspaceError> {
    let recorded: Vec<PathBuf> = crate::record::scan(data_dir)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .map(|r| r.worktree)
        .collect();
    workspace::prune(data_dir, &recorded).await
}
