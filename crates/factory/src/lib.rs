//! The factory: claims jobs, prepares a git worktree per run, supervises the process,
//! and reports back under its lease.
//!
//! The embedded factory (inside `gantry serve`) and remote factories run the same loop
//! ([`Factory`]) over the [`Coordinator`] trait: the server's in-process implementation
//! or [`HttpCoordinator`] over the HTTP API. So one code path is tested.
//!
//! Invariants:
//! - a factory only ever writes attempt-unique refs (`gantry/<job>/a<attempt>`) in its
//!   own bare cache, and attempt- or run-unique refs outside `refs/heads` in the source
//!   (checkpoints, and the result it publishes for the server to deliver); shared refs
//!   are written by [`workspace::deliver_published`], which the server calls after a
//!   fenced finish;
//! - a run whose lease renewal is refused is killed at once, and nothing of it is
//!   committed, pushed or reported;
//! - no process of a finished, canceled, killed or timed-out run is left behind;
//! - a run is never started twice: a factory that dies leaves its runs' processes
//!   running (detached, output to files, exit status captured) and a run record each;
//!   the next factory on the same data dir adopts them ([`Factory::adopt`]).

pub mod admission;
pub mod agent;
pub mod docker;
pub mod egress;
mod engine_wait;
mod factory;
pub mod gate;
mod heartbeat;
mod http;
mod job_secrets;
pub mod process;
pub mod record;
mod redact;
mod registration;
mod run;
pub mod sandbox;
mod tail;
/// Git workspaces: the [`gantry_git`] crate, under the name the factory's modules use.
pub use gantry_git as workspace;

pub use admission::Admission;
pub use docker::{DockerConfig, DockerError};
pub use factory::{AdoptReport, Factory, prune_workspaces};
pub use gantry_protocol::{CoordError, Coordinator};
pub use gantry_secrets::SecretsConfig;
pub use http::HttpCoordinator;
pub use job_secrets::{SecretError, SecretsFileError, check_secrets_file};
pub use record::kill_orphans;
pub use sandbox::{Confinement, Sandbox, SandboxError};

use gantry_core::{JobId, RunId};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a factory runs: its identity, its size and where it keeps its files.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoryConfig {
    /// Human name, sent when registering (the host name by default).
    pub name: String,
    /// Maximum number of concurrent runs.
    pub seats: u32,
    /// Capabilities, `name` or `name=value`.
    pub capabilities: Vec<String>,
    /// Data directory: `repos/`, `work/` and `artifacts/` live under it.
    pub data_dir: PathBuf,
    /// Time between SIGTERM and SIGKILL when a run is canceled or times out.
    pub kill_grace: Duration,
    /// Time between lease renewals.
    pub renew_interval: Duration,
    /// How long one claim waits on the server for a job (long poll).
    pub claim_wait: Duration,
    /// On shutdown, leave the runs' processes running (and their records) for the
    /// next factory on the same data dir to adopt, instead of killing them.
    pub leave_runs_on_shutdown: bool,
    /// Do not claim while the machine's available memory (`MemAvailable`) is under
    /// this many MiB; 0 disables the check.
    pub min_free_memory_mb: u64,
    /// Do not claim while the data dir's file system has less than this many MiB
    /// free; 0 disables the check.
    pub min_free_disk_mb: u64,
    /// Agent CLIs, prices and the checkpoint interval.
    pub engines: agent::EngineSettings,
    /// Publish the commit of a succeeded run in the source repository (at
    /// [`gantry_protocol::result_ref`]) when the claim says the server delivers it,
    /// because the server cannot read this factory's cache: true for a remote factory,
    /// false for one that shares the server's data dir (the embedded factory). A
    /// publication that fails fails the run.
    pub publish_results: bool,
    /// The sandbox every run goes in: bubblewrap by default. [`Sandbox::None`] is the
    /// explicit opt-out; the factory checks at start that the sandbox works and
    /// refuses to start otherwise.
    pub sandbox: Sandbox,
    /// The Docker sandbox: when set, the factory connects to the engine at start and,
    /// if it answers, advertises `sandbox:docker` and runs the jobs that ask for it
    /// (all jobs without a `sandbox:` of their own when [`DockerConfig::default`]).
    /// Gates and reviewers keep running in [`FactoryConfig::sandbox`].
    pub docker: Option<DockerConfig>,
    /// The network of runs (bwrap and docker) that name none, and the egress proxy's
    /// allowlist and forwarder for `model` runs.
    pub egress: egress::EgressConfig,
    /// Files and directories of the factory's own, besides the data dir, that no run
    /// may see (a token file, a configuration file).
    pub hidden_paths: Vec<PathBuf>,
    /// Paths every sandboxed run may read besides the system directories and its
    /// `PATH` (a toolchain outside `/usr`, say).
    pub sandbox_read_only: Vec<PathBuf>,
    /// Paths every sandboxed run may write besides its worktree (a shared build cache,
    /// say). Anything here is shared by all jobs: name only what may be.
    pub sandbox_read_write: Vec<PathBuf>,
    /// What enforces the memory, CPU and pids limits of runs outside containers:
    /// `None` (the default) detects it when a run first needs it (see
    /// [`sandbox::limits::Limiter::detect`]).
    pub limiter: Option<sandbox::limits::Limiter>,
    /// The operator's secret rules and allowlist (gantry.toml's `[secrets]`): the
    /// checking stage's scan starts from them (a repository's `.gantry/secrets.toml`
    /// adds to them), and their rules redact what runs print and report.
    pub secrets: SecretsConfig,
    /// Where the values of the secrets jobs name (`secrets:`) come from: this file
    /// (gantry.toml's `[factory] secrets_file`, TOML `NAME = "value"`, private to the
    /// factory's user), or the factory's own environment when `None`. Hidden from runs.
    pub secrets_file: Option<PathBuf>,
}

impl Default for FactoryConfig {
    fn default() -> Self {
        FactoryConfig {
            name: "factory".to_string(),
            seats: 4,
            capabilities: Vec::new(),
            data_dir: PathBuf::from(".gantry"),
            kill_grace: Duration::from_secs(3),
            renew_interval: Duration::from_secs(1),
            claim_wait: Duration::from_secs(20),
            leave_runs_on_shutdown: false,
            // One agent's worth: agent CLIs use 1.5 to 2 GB each.
            min_free_memory_mb: 2048,
            min_free_disk_mb: 1024,
            engines: agent::EngineSettings::default(),
            // The server delivers from its own cache unless told otherwise.
            publish_results: false,
            sandbox: Sandbox::default(),
            docker: None,
            egress: egress::EgressConfig::default(),
            hidden_paths: Vec::new(),
            sandbox_read_only: Vec::new(),
            sandbox_read_write: Vec::new(),
            limiter: None,
            secrets: SecretsConfig::default(),
            secrets_file: None,
        }
    }
}

/// Makes every file and directory this process creates from now on private to its
/// user (umask 077): a server's or factory's files hold tokens, job environments and
/// logs that other local users must not read. Process-wide, so only binaries call it.
pub fn private_files() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Creates the data dir `path` (and missing parents) readable by its user alone, or
/// makes an existing one so: it holds the admin token, the database, every job's
/// worktree, prompt and logs.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the data dir was readable by others: made it 0700");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Why the factory loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// The server refused to register the factory (bad token, bad capabilities, ...).
    #[error("registering factory {name:?} failed: {source}")]
    Register {
        /// The factory's name.
        name: String,
        /// The coordinator's answer.
        #[source]
        source: CoordError,
    },
    /// The configuration cannot work.
    #[error("invalid factory configuration: {field} = {value}: {reason}")]
    Config {
        /// The field at fault.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot work.
        reason: String,
    },
    /// The configured sandbox does not work on this machine. A factory never falls
    /// back to running jobs unsandboxed on its own.
    #[error(
        "{0}; a factory runs no job outside its sandbox (to run jobs unsandboxed anyway, start it with --allow-unsandboxed-jobs)"
    )]
    Sandbox(#[source] SandboxError),
    /// The secrets file cannot be used (see [`check_secrets_file`]).
    #[error(transparent)]
    SecretsFile(SecretsFileError),
    /// The Docker engine the factory's default sandbox needs does not answer.
    #[error(
        "{0}; this factory's default sandbox is docker, so it does not start without the engine"
    )]
    Docker(#[source] DockerError),
    /// A directory under the data dir could not be created.
    #[error("cannot create directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The artifact directory of one run: `<data>/artifacts/<job>/<run>/`.
///
/// It holds `prompt.md`, `stdout.log` (`transcript.jsonl` for engines whose output is
/// parsed), `stderr.log`, `exit_status` (written by the process's shim when it ends)
/// and `diff.patch`.
pub fn artifacts_dir(data_dir: &Path, job: JobId, run: RunId) -> PathBuf {
    data_dir
        .join("artifacts")
        .join(job.to_string())
        .join(run.to_string())
}

/// The worktree directory of one attempt: `<data>/work/<job>-a<attempt>/`.
pub fn worktree_dir(data_dir: &Path, job: JobId, attempt: u32) -> PathBuf {
    data_dir.join("work").join(format!("{job}-a{attempt}"))
}

/// The attempt branch of one attempt: `gantry/<job>/a<attempt>`.
pub fn attempt_branch(job: JobId, attempt: u32) -> String {
    format!("gantry/{job}/a{attempt}")
}
