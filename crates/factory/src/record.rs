//! Run records: a small file per live run, `<data>/runs/<run>.json`, with everything a
//! factory needs to find, watch and finish a run it did not start itself (a previous
//! incarnation did): the claim, the process, the paths, the output offsets already
//! uploaded, the worktree, branch and base commit, and any stop already applied.
//!
//! The record is written before the process starts (without a process yet), rewritten
//! atomically (a temporary file renamed into place) as the run goes on, and removed
//! only once the run is fully wrapped up or abandoned. So a factory that dies at any
//! point leaves a record that says what to do.

use crate::process::{self, PidRecord};
use gantry_core::{Outcome, RunId};
use gantry_protocol::Claim;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record format this code writes; a record of another version is not adopted.
pub const RECORD_VERSION: u32 = 1;

/// Bytes of each output file already turned into uploaded events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    /// Of the stdout file (the transcript, for engines whose output is parsed).
    pub stdout: u64,
    /// Of the stderr file.
    pub stderr: u64,
}

/// Where a run's work-in-progress checkpoints stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The commit the job's work started from (`wip_base`): the base of its first
    /// attempt, carried over by attempts that start from a checkpoint.
    pub base: String,
    /// The last checkpoint commit, or the commit the attempt started from: the parent
    /// of the next checkpoint.
    pub commit: String,
    /// The tree of `commit`: a checkpoint of the same tree is skipped.
    pub tree: String,
}

/// What a factory knows about one live run; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_VERSION`] when written.
    pub version: u32,
    /// The claim the run was started for: job, spec, run, attempt, epoch, lease TTL.
    pub claim: Claim,
    /// The process; `None` only between writing the record and starting the process,
    /// and for a run in a container (see `container`).
    pub process: Option<PidRecord>,
    /// The id of the Docker container the run's process runs in (docker sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// When the process started, in milliseconds since the Unix epoch (the timeout
    /// counts from here, across restarts).
    pub started_at_ms: u64,
    /// The run's artifact directory.
    pub artifacts: PathBuf,
    /// The attempt's worktree.
    pub worktree: PathBuf,
    /// The bare cache the worktree belongs to.
    pub cache: PathBuf,
    /// The attempt branch.
    pub branch: String,
    /// The commit the attempt started from.
    pub base_commit: String,
    /// The file that receives stdout.
    pub stdout: PathBuf,
    /// The file that receives stderr.
    pub stderr: PathBuf,
    /// The file the shim writes the exit status to.
    pub exit_status: PathBuf,
    /// How stdout is read: `None` for plain text (`run.output` events), else the
    /// name of the agent format it is parsed as.
    #[serde(default)]
    pub format: Option<String>,
    /// Output already uploaded as events.
    #[serde(default)]
    pub uploaded: Offsets,
    /// A stop already applied (timeout, cancel, kill, budget): the outcome it forces.
    #[serde(default)]
    pub forced: Option<Outcome>,
    /// Where the run's checkpoints stand (`None` before the first look at the tree).
    #[serde(default)]
    pub checkpoint: Option<CheckpointState>,
    /// How many times the factory looked at the worktree for a checkpoint, whether it
    /// found a change or not: what a person (or a test) reads to know the checkpointer
    /// is alive while nothing is being committed.
    #[serde(default)]
    pub checkpoint_looks: u32,
    /// The output files of the current process were read to their end and are being
    /// (or were) rewritten redacted: their lengths no longer match `uploaded`, so a
    /// factory adopting the run reads nothing more from them.
    #[serde(default)]
    pub outputs_redacted: bool,
}

/// Why a run record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read or written.
    #[error("{action} run record {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record this code understands.
    #[error("run record {path} is not valid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The directory of run records: `<data>/runs/`.
pub fn runs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("runs")
}

impl RunRecord {
    /// Where the record of `run` lives: `<data>/runs/<run>.json`.
    pub fn path(data_dir: &Path, run: RunId) -> PathBuf {
        runs_dir(data_dir).join(format!("{run}.json"))
    }

    /// Writes the record atomically (a temporary file renamed into place), so a crash
    /// never leaves half a record behind.
    pub fn write(&self, data_dir: &Path) -> Result<(), RecordError> {
        let path = RunRecord::path(data_dir, self.claim.run.id);
        let json = serde_json::to_vec(self).map_err(|e| RecordError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        let io = |action| {
            let path = path.clone();
            move |source| RecordError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::write(&tmp, json).map_err(io("cannot write"))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot move into place"))
    }

    /// Reads a record written by [`RunRecord::write`].
    pub fn read(path: &Path) -> Result<RunRecord, RecordError> {
        let bytes = std::fs::read(path).map_err(|source| RecordError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })?;
        let record: RunRecord =
            serde_json::from_slice(&bytes).map_err(|e| RecordError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(RecordError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "version {} (this factory reads version {RECORD_VERSION})",
                    record.version
                ),
            });
        }
        Ok(record)
    }

    /// Removes the record of `run`; a record already gone is fine.
    pub fn remove(data_dir: &Path, run: RunId) {
        let path = RunRecord::path(data_dir, run);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove run record");
        }
    }
}

/// Every record under `<data>/runs/`, read (or why not), sorted by path. Temporary
/// files of an interrupted write are removed.
pub fn scan(data_dir: &Path) -> Vec<(PathBuf, Result<RunRecord, RecordError>)> {
    let dir = runs_dir(data_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json.tmp") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let record = RunRecord::read(&path);
        out.push((path, record));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Kills the runs that a previous incarnation of the factory left behind, as named by
/// the run records under `<data>/runs/`, and removes the records. Returns the number of
/// process groups killed.
///
/// A group is killed only when it is provably the recorded run's ([`process::group_is_run`]).
/// This is the "forget everything" start: a factory that adopts its runs instead
/// ([`crate::Factory::adopt`]) must not call it, or there is nothing left to adopt.
pub fn kill_orphans(data_dir: &Path) -> usize {
    let mut killed = 0;
    for (path, record) in scan(data_dir) {
        match record {
            Ok(r) => match &r.process {
                Some(p) if process::group_is_run(p) => {
                    tracing::info!(job = %p.job, run = %p.run, pgid = p.pgid, "killing orphaned run");
                    if process::signal_group(p.pgid, Signal::SIGKILL) {
                        killed += 1;
                    }
                }
                Some(p) => tracing::debug!(?p, "run record names no live process of its run"),
                None => {
                    let pids = process::processes_of_run(r.claim.job.id, r.claim.run.id);
                    for pid in &pids {
                        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                    }
                    if !pids.is_empty() {
                        killed += 1;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable run record removed")
            }
        }
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove run record");
        }
    }
    killed
}
