//! The factory: claims jobs, prepares a git worktree per run, supervises the process,
//! and reports back under its lease.
//!
//! The embedded factory (inside `gantry serve`) and remote factories run the same loop
//! ([`Factory`]) over the [`Coordinator`] trait: the server's in-process implementation
//! or [`HttpCoordinator`] over the HTTP API. So one code path is tested.
//!
//! Invariants:
//! - a factory only ever writes attempt-unique refs (`gantry/<job>/a<attempt>`) in its
//!   own bare cache; shared refs are written by [`workspace::deliver`], which the server
//!   calls after a fenced finish;
//! - a run whose lease renewal is refused is killed at once, and nothing of it is
//!   committed, pushed or reported;
//! - no process of a finished, canceled, killed or timed-out run is left behind.

mod coordinator;
mod factory;
mod http;
mod output;
pub mod process;
mod run;
pub mod workspace;

pub use coordinator::{CoordError, Coordinator};
pub use factory::Factory;
pub use http::HttpCoordinator;
pub use process::kill_orphans;

use gantry_core::{JobId, RunId};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a factory runs: its identity, its size and where it keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
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
        }
    }
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
/// It holds `prompt.md`, `stdout.log`, `stderr.log` and `diff.patch`.
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
