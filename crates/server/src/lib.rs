//! The control plane: HTTP API, auth, event streams, reaper and the embedded factory.
//!
//! [`start`] opens the store in the data dir, makes sure an admin token exists, binds
//! the listener and starts three tasks: the HTTP API, the reaper and (unless turned off)
//! the embedded factory. The API is stateless over the store; the embedded factory
//! talks to the same [`Service`] the HTTP handlers use, through [`LocalCoordinator`].
//!
//! Invariant: the shared ref `gantry/<job>` in a source repository is written only here,
//! after the store accepted a finish under the run's current epoch, under a lock per
//! source repository.

mod auth;
pub mod config;
mod coordinator;
mod error;
mod extract;
mod http;
pub mod limits;
mod listener;
pub mod metrics;
pub mod profiles;
mod service;
mod tls;

pub use auth::{ADMIN_TOKEN_FILE, Caller, TOKEN_PREFIX, hash_token, new_token_secret};
pub use coordinator::LocalCoordinator;
pub use error::{ApiError, ServerError};
pub use http::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, router};
pub use limits::Limits;
pub use service::{MAX_CLAIM_WAIT, Service, delivery_branch};
pub use tls::TlsFiles;

use gantry_factory::{DockerConfig, Factory, FactoryConfig, Sandbox};
use gantry_store::{PgOptions, PgStore, SqliteStore, Store};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Name of the store file in the data dir.
pub const DB_FILE: &str = "gantry.db";

/// Name under which the embedded factory registers (on a shared PostgreSQL store, each
/// replica's embedded factory adds `@<host>:<data dir>`, so they are told apart).
pub const EMBEDDED_FACTORY_NAME: &str = "embedded";

/// Whether `name` is an embedded factory's: remote factories may not register as one.
pub fn is_embedded_name(name: &str) -> bool {
    name == EMBEDDED_FACTORY_NAME
        || name
            .strip_prefix(EMBEDDED_FACTORY_NAME)
            .is_some_and(|rest| rest.starts_with('@'))
}

/// The embedded factory's name for this server: plain on its own SQLite store, with the
/// host and data dir when replicas share a database (one factory row each).
fn embedded_name(cfg: &ServeConfig) -> String {
    if cfg.db.is_none() {
        return EMBEDDED_FACTORY_NAME.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let dir = std::path::absolute(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    format!("{EMBEDDED_FACTORY_NAME}@{host}:{}", dir.display())
}

/// How long one claim of the embedded factory waits on the store before it loops.
const EMBEDDED_CLAIM_WAIT: Duration = Duration::from_secs(10);

/// Longest time between two lease renewals of the embedded factory.
const EMBEDDED_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// How `gantry serve` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Data directory (created when missing): store, admin token, caches, worktrees,
    /// artifacts.
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (see [`RunningServer::addr`]).
    pub listen: SocketAddr,
    /// Length of a lease; factories renew well before it runs out.
    pub lease_ttl: Duration,
    /// Time between two runs of the reaper.
    pub reaper_interval: Duration,
    /// Seats of the embedded factory.
    pub seats: u32,
    /// Whether to run the embedded factory.
    pub embedded_factory: bool,
    /// Time between SIGTERM and SIGKILL when a run is canceled or times out.
    pub kill_grace: Duration,
    /// Whether to deliver a succeeded job's commit to its source repo as `gantry/<job>`.
    pub push: bool,
    /// Capabilities of the embedded factory.
    pub capabilities: Vec<String>,
    /// A PostgreSQL URL (`postgres://user@host/db`) to keep the store in, shared by any
    /// number of servers; `None` keeps it in `<data_dir>/gantry.db` (SQLite).
    pub db: Option<String>,
    /// The config file (`gantry.toml`: engines, prices, admission, checkpoints); `None`
    /// reads `<data_dir>/gantry.toml` when it exists.
    pub config_file: Option<PathBuf>,
    /// Size caps of submitted jobs and limits of the HTTP server; the config file's
    /// `[limits]` keys replace these one by one.
    pub limits: Limits,
    /// How the embedded factory walls in its runs.
    pub sandbox: SandboxSettings,
    /// The certificate and key to serve HTTPS with; `None` serves plain HTTP. The
    /// embedded factory talks to the server in process, so it needs neither.
    pub tls: Option<TlsFiles>,
    /// How the embedded factory's `network: model` runs start their command inside
    /// the sandbox (the `gantry` binary's `sandbox-forward`); `None` fails such runs,
    /// saying so.
    pub forwarder: Option<gantry_factory::egress::Forwarder>,
}

/// How the embedded factory walls in its runs (see `gantry_factory::sandbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// When bubblewrap does not work on this machine, run every job without a sandbox
    /// instead of refusing jobs from tokens that are not admin. The loud opt-out
    /// (`--allow-unsandboxed-jobs`): any submitter can then read the admin token.
    pub allow_unsandboxed: bool,
    /// The bubblewrap program (default: `bwrap` on `PATH`).
    pub bwrap: PathBuf,
    /// Paths every run may read besides the system directories (a toolchain).
    pub read_only: Vec<PathBuf>,
    /// Paths every run may write besides its worktree (a shared build cache).
    pub read_write: Vec<PathBuf>,
    /// `--sandbox docker`: jobs that name no sandbox run in Docker (`[factory] sandbox`
    /// in the config file otherwise).
    pub docker_default: bool,
    /// `--docker`: offer the docker sandbox to jobs that ask for it.
    pub docker: bool,
    /// `--docker-image`: the image of docker jobs that name none.
    pub docker_image: Option<String>,
    /// `--docker-socket`: the Docker engine's socket.
    pub docker_socket: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from(".gantry"),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 7700)),
            lease_ttl: Duration::from_secs(60),
            reaper_interval: Duration::from_secs(2),
            seats: 4,
            embedded_factory: true,
            kill_grace: Duration::from_secs(3),
            push: true,
            capabilities: Vec::new(),
            db: None,
            config_file: None,
            limits: Limits::default(),
            sandbox: SandboxSettings::default(),
            tls: None,
            forwarder: None,
        }
    }
}

/// How long a stopping server waits for its background chores.
const CHORE_GRACE: Duration = Duration::from_secs(10);

/// A started server: the API listening, the reaper and the embedded factory running.
pub struct RunningServer {
    addr: SocketAddr,
    /// Whether the API is served over TLS.
    tls: bool,
    admin_token: String,
    service: Arc<Service>,
    shutdown: watch::Sender<bool>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    reaper: Option<JoinHandle<()>>,
    factory: Option<JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .field("data_dir", &self.service.config().data_dir)
            .finish_non_exhaustive()
    }
}

/// Checks the values that cannot work, naming the field and the value.
fn validate(cfg: &ServeConfig) -> Result<(), ServerError> {
    let bad = |field: &str, value: String, reason: &str| {
        Err(ServerError::Config(format!("{field} = {value}: {reason}")))
    };
    if cfg.lease_ttl.is_zero() {
        return bad(
            "lease_ttl",
            format!("{:?}", cfg.lease_ttl),
            "must be more than 0",
        );
    }
    if cfg.reaper_interval.is_zero() {
        return bad(
            "reaper_interval",
            format!("{:?}", cfg.reaper_interval),
            "must be more than 0",
        );
    }
    if cfg.embedded_factory && cfg.seats == 0 {
        return bad(
            "seats",
            "0".to_string(),
            "the embedded factory needs at least one seat",
        );
    }
    for cap in &cfg.capabilities {
        if let Err(e) = gantry_core::caps::validate(cap) {
            return bad("capabilities", format!("{cap:?}"), &e);
        }
    }
    if let Some((field, value, reason)) = cfg.limits.invalid() {
        return bad(&format!("limits.{field}"), value, &reason);
    }
    Ok(())
}

/// Starts the server: creates the data dir and the store, makes sure an admin token
/// exists (writing `<data>/admin.token`, mode 0600, on first start), binds the listener,
/// and starts the API, the reaper and the embedded factory.
///
/// Before the reaper and the API start, the embedded factory re-adopts the runs its
/// previous incarnation left running (see [`gantry_factory::Factory::adopt`]).
pub async fn start(mut cfg: ServeConfig) -> Result<RunningServer, ServerError> {
    let file = match &cfg.config_file {
        Some(path) => config::ConfigFile::load(path, true)?,
        None => config::ConfigFile::load(&cfg.data_dir.join(config::CONFIG_FILE), false)?,
    };
    file.limits.apply_to(&mut cfg.limits);
    validate(&cfg)?;
    // Read before anything is created or bound, so a bad file stops the server early.
    let tls = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    gantry_factory::private_dir(&cfg.data_dir).map_err(|source| ServerError::Io {
        action: "create data dir",
        path: cfg.data_dir.clone(),
        source,
    })?;
    let store = open_store(&cfg).await?;
    let admin_token = auth::ensure_admin_token(&*store, &cfg.data_dir).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    // Without an embedded factory this server runs no job: nothing to sandbox.
    let (sandbox, refusal) = if !cfg.embedded_factory {
        (Sandbox::None, None)
    } else {
        match cfg.sandbox.choose().await {
            Ok(sandbox) => (sandbox, None),
            Err(e) => {
                tracing::warn!(error = %e, "jobs cannot be sandboxed: only jobs of admin tokens will be accepted");
                (Sandbox::None, Some(e.to_string()))
            }
        }
    };
    let service = Arc::new(
        Service::new(store.clone(), cfg.clone(), shutdown_rx.clone())
            .refusing_unsandboxed(refusal)
            .with_profiles(file.profiles.clone()),
    );

    let factory = if cfg.embedded_factory {
        Some(start_embedded_factory(&service, &file, sandbox, shutdown_rx.clone()).await?)
    } else {
        None
    };
    let reaper = tokio::spawn(reaper_loop(
        service.clone(),
        cfg.reaper_interval,
        shutdown_rx.clone(),
    ));
    let http = tokio::spawn(listener::serve(
        listener,
        router(service.clone()),
        cfg.limits.clone(),
        tls.clone(),
        shutdown_rx.clone(),
    ));
    tracing::info!(%addr, scheme, data_dir = %cfg.data_dir.display(), "gantry server listening");
    Ok(RunningServer {
        addr,
        tls: tls.is_some(),
        admin_token,
        service,
        shutdown,
        http: Some(http),
        reaper: Some(reaper),
        factory,
    })
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            allow_unsandboxed: false,
            bwrap: PathBuf::from("bwrap"),
            read_only: Vec::new(),
            read_write: Vec::new(),
            docker_default: false,
            docker: false,
            docker_image: None,
            docker_socket: None,
        }
    }
}

impl SandboxSettings {
    /// The factory's docker sandbox, from these flags over the config file's
    /// `[factory]` keys: `None` when neither asks for it.
    pub fn docker_config(&self, file: &config::FactorySection) -> Option<DockerConfig> {
        let default = self.docker_default || file.sandbox.as_deref() == Some("docker");
        if !(default || self.docker || file.docker == Some(true)) {
            return None;
        }
        let fallback = DockerConfig::default();
        Some(DockerConfig {
            socket: self
                .docker_socket
                .clone()
                .or_else(|| file.docker_socket.clone())
                .unwrap_or(fallback.socket),
            image: self
                .docker_image
                .clone()
                .or_else(|| file.docker_image.clone())
                .unwrap_or(fallback.image),
            default,
            engine_wait: file.docker_engine_wait.unwrap_or(fallback.engine_wait),
        })
    }

    /// The sandbox runs go in: bubblewrap when it works on this machine. When it does
    /// not, [`Sandbox::None`] if the operator opted out (said loudly in the log), else
    /// why not: then no job may run unsandboxed unless its submitter could already read
    /// everything (an admin). One rule for `gantry serve` and `gantry factory`.
    pub async fn choose(&self) -> Result<Sandbox, gantry_factory::SandboxError> {
        let bwrap = Sandbox::Bwrap {
            program: self.bwrap.clone(),
        };
        match bwrap.probe().await {
            Ok(()) => Ok(bwrap),
            Err(e) if self.allow_unsandboxed => {
                tracing::warn!(
                    error = %e,
                    "RUNNING JOBS UNSANDBOXED (--allow-unsandboxed-jobs): any job can read this machine's data dir, its tokens and other jobs' work"
                );
                Ok(Sandbox::None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Opens the store the config names: PostgreSQL when `db` is set, else the SQLite file
/// in the data dir.
async fn open_store(cfg: &ServeConfig) -> Result<Arc<dyn Store>, ServerError> {
    match &cfg.db {
        Some(url) => {
            let store = PgStore::connect(url, PgOptions::default()).await?;
            Ok(Arc::new(store))
        }
        None => Ok(Arc::new(SqliteStore::open(&cfg.data_dir.join(DB_FILE))?)),
    }
}

/// Registers the embedded factory, lets it re-adopt the runs its previous incarnation
/// left (agents keep running while the server restarts), and spawns its loop.
///
/// Adoption comes before the reaper's first tick: an adopted run renews its lease first,
/// so a lease that ran out while the server was down is not reaped from under a live
/// agent; runs whose lease is gone are killed by the adoption, never finished.
async fn start_embedded_factory(
    service: &Arc<Service>,
    file: &config::ConfigFile,
    sandbox: Sandbox,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<(), String>>, ServerError> {
    let cfg = service.config().clone();
    let fcfg = FactoryConfig {
        name: embedded_name(&cfg),
        seats: cfg.seats,
        capabilities: cfg.capabilities.clone(),
        data_dir: cfg.data_dir.clone(),
        kill_grace: cfg.kill_grace,
        // A renewal's answer is how the factory learns of a cancel or kill, so the
        // interval is the stop latency: keep it short (the factory also caps it at a
        // third of the lease, so one lost renewal never costs the lease).
        renew_interval: EMBEDDED_RENEW_INTERVAL.min(cfg.lease_ttl / 3),
        claim_wait: EMBEDDED_CLAIM_WAIT,
        // It shares the server's data dir, so its commits are in the server's cache
        // already: nothing needs publishing to the source for delivery.
        publish_results: false,
        sandbox,
        // A configuration file outside the data dir is the server's too.
        hidden_paths: cfg.config_file.iter().cloned().collect(),
        sandbox_read_only: cfg.sandbox.read_only.clone(),
        sandbox_read_write: cfg.sandbox.read_write.clone(),
        docker: cfg.sandbox.docker_config(&file.factory),
        egress: gantry_factory::egress::EgressConfig {
            forwarder: cfg.forwarder.clone(),
            ..file.egress.clone()
        },
        ..FactoryConfig::default()
    };
    let mut fcfg = fcfg;
    if let Some(mb) = file.factory.min_free_memory_mb {
        fcfg.min_free_memory_mb = mb;
    }
    if let Some(mb) = file.factory.min_free_disk_mb {
        fcfg.min_free_disk_mb = mb;
    }
    fcfg.engines = file.engine_settings();
    fcfg.secrets = file.secrets.clone();
    fcfg.secrets_file = file.factory.secrets_file.clone();
    // A broken secrets file stops the server now, not the first job naming a secret.
    if let Some(path) = &fcfg.secrets_file {
        gantry_factory::check_secrets_file(path)
            .map_err(|e| ServerError::Factory(e.to_string()))?;
    }
    let coordinator = Arc::new(LocalCoordinator::new(service.clone()));
    let mut factory = Factory::new(fcfg, coordinator);
    let report = factory
        .adopt()
        .await
        .map_err(|e| ServerError::Factory(e.to_string()))?;
    if !report.adopted.is_empty() || !report.dropped.is_empty() {
        tracing::info!(
            adopted = ?report.adopted,
            dropped = ?report.dropped,
            "took over the runs of the previous embedded factory"
        );
    }
    Ok(tokio::spawn(async move {
        factory.run(shutdown).await.map_err(|e| e.to_string())
    }))
}

/// Returns expired leases to the lifecycle every `interval` until shutdown, and has the
/// result refs the reaped runs may have published removed (off the tick's path).
async fn reaper_loop(
    service: Arc<Service>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => match service.store().reap().await {
                Ok(runs) if !runs.is_empty() => {
                    service.metrics().leases_expired(runs.len());
                    tracing::info!(?runs, "reaped expired leases");
                    service::remove_reaped_result_refs(&service, &runs);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reaper failed; trying again next tick"),
            },
            _ = service::stopped(&mut shutdown) => return,
        }
    }
}

/// Waits for a task and turns a failure or a panic into a [`ServerError`].
async fn join<T, E: std::fmt::Display>(
    task: &'static str,
    handle: JoinHandle<Result<T, E>>,
) -> Result<(), ServerError> {
    match handle.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Task {
            task,
            message: e.to_string(),
        }),
        Err(e) => Err(ServerError::Task {
            task,
            message: e.to_string(),
        }),
    }
}

impl RunningServer {
    /// The address the API listens on (the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL: `https://ADDR` when serving TLS, else `http://ADDR`. A
    /// client of an `https://` URL given as an IP address needs that address among the
    /// certificate's names.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The admin token's secret (also in `<data>/admin.token`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The service the API runs on.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Stops the server: stops accepting requests (open event streams and long-poll
    /// claims end), stops the embedded factory (its runs' processes are killed; their
    /// leases expire and the next start or reaper returns them), stops the reaper.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop().await
    }

    /// Runs until SIGINT or SIGTERM arrives or a task of the server fails, then shuts
    /// down as [`RunningServer::shutdown`] does. Returns the first failure.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|source| ServerError::Io {
            action: "install SIGTERM handler",
            path: PathBuf::from("-"),
            source,
        })?;
        let mut http = self.http.take();
        let mut factory = self.factory.take();
        let early: Option<Result<(), ServerError>> = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            r = async { http.as_mut().expect("the HTTP task runs until stop").await } => {
                http = None;
                Some(match r {
                    Ok(Ok(())) => Err(ServerError::Task {
                        task: "http",
                        message: "the HTTP server stopped unexpectedly".to_string(),
                    }),
                    Ok(Err(e)) => Err(ServerError::Task { task: "http", message: e.to_string() }),
                    Err(e) => Err(ServerError::Task { task: "http", message: e.to_string() }),
                })
            }
            r = async {
                match factory.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                factory = None;
                Some(match r {
                    Ok(Ok(())) => Err(ServerError::Task {
                        task: "embedded factory",
                        message: "the embedded factory stopped unexpectedly".to_string(),
                    }),
                    Ok(Err(e)) => Err(ServerError::Task { task: "embedded factory", message: e }),
                    Err(e) => Err(ServerError::Task { task: "embedded factory", message: e.to_string() }),
                })
            }
        };
        self.http = http;
        self.factory = factory;
        if early.is_none() {
            tracing::info!("signal received: shutting down");
        }
        let stopped = self.stop().await;
        match early {
            Some(Err(e)) => Err(e),
            _ => stopped,
        }
    }

    async fn stop(&mut self) -> Result<(), ServerError> {
        self.shutdown.send_replace(true);
        let mut first: Result<(), ServerError> = Ok(());
        if let Some(h) = self.http.take() {
            first = first.and(join("http", h).await);
        }
        if let Some(h) = self.factory.take() {
            let r = join("embedded factory", h).await;
            first = first.and(r);
        }
        if let Some(h) = self.reaper.take() {
            let r = h.await.map_err(|e| ServerError::Task {
                task: "reaper",
                message: e.to_string(),
            });
            first = first.and(r);
        }
        // The reaper and the finishes that spawn chores have stopped: what is left of
        // them ends now, or is abandoned.
        self.service.chores().drain(CHORE_GRACE).await;
        tracing::info!(addr = %self.addr, "gantry server stopped");
        first
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Dropped without shutdown (e.g. a test that panicked): still tell the tasks to
        // stop, so the embedded factory kills its runs' processes.
        self.shutdown.send_replace(true);
    }
}
