//! What the watch of a run acts on: the process group of a detached process, or the
//! Docker container the process runs in. Both are stopped, looked at and ended the
//! same way from the watch's side.

use super::{AbortOnDrop, ProcessEnd};
use crate::docker::{ContainerState, Engine};
use crate::process::{self, PidRecord};
use crate::record::RunRecord;
use nix::sys::signal::Signal;
use std::path::Path;
use std::sync::Arc;

/// The thing a run's watch signals and waits for.
pub(super) enum Target {
    /// A detached process leading its own group.
    Group(PidRecord),
    /// A container on the factory's Docker engine.
    Container {
        /// The engine.
        engine: Arc<Engine>,
        /// The container's id.
        id: String,
    },
}

impl Target {
    /// The target a run record names, or why there is none.
    pub(super) fn of(rec: &RunRecord, engine: Option<&Arc<Engine>>) -> Result<Target, String> {
        match (&rec.process, &rec.container, engine) {
            (Some(p), _, _) => Ok(Target::Group(p.clone())),
            (None, Some(id), Some(engine)) => Ok(Target::Container {
                engine: engine.clone(),
                id: id.clone(),
            }),
            (None, Some(id), None) => Err(format!(
                "the run's process is in the Docker container {id}, but this factory has no Docker engine"
            )),
            (None, None, _) => Err("the run record names no process".to_string()),
        }
    }

    /// Sends `signal` to the whole run: the process group, or the container (SIGKILL
    /// kills its first process, which ends every process in its PID namespace, then
    /// removes it; the kill comes first because removing also deletes the container's
    /// files, which takes longer). Never waits on the engine: the watch sees the end
    /// when it comes.
    pub(super) fn signal(&self, signal: Signal) {
        match self {
            Target::Group(p) => {
                process::signal_group(p.pgid, signal);
            }
            Target::Container { engine, id } => {
                let (engine, id) = (engine.clone(), id.clone());
                tokio::spawn(async move {
                    if signal == Signal::SIGKILL {
                        engine.signal(&id, signal.as_str()).await;
                        engine.remove(&id).await;
                    } else {
                        engine.signal(&id, signal.as_str()).await;
                    }
                });
            }
        }
    }

    /// A task that ends when the container stops: the prompt notice of its end (a
    /// process group's is the shim's reaping, which the watch has as its child).
    pub(super) fn ender(&self) -> Option<AbortOnDrop<()>> {
        match self {
            Target::Group(_) => None,
            Target::Container { engine, id } => {
                let (engine, id) = (engine.clone(), id.clone());
                Some(AbortOnDrop(tokio::spawn(
                    async move { engine.wait(&id).await },
                )))
            }
        }
    }

    /// Whether the run's process still runs. A container that stopped has its exit
    /// status written to `exit_status` here (the engine keeps it; the files are what
    /// the rest of the run reads), and a kill by its memory limit goes into `end` as
    /// an error starting with `oom`.
    pub(super) async fn alive(&self, exit_status: &Path, end: &mut ProcessEnd) -> bool {
        match self {
            Target::Group(p) => process::is_alive(p),
            Target::Container { engine, id } => match engine.state(id).await {
                Ok(ContainerState::Running { .. }) => true,
                Ok(ContainerState::Gone) => false,
                Ok(ContainerState::Exited { code, oom }) => {
                    if oom && end.error.is_none() {
                        end.error = Some(
                            "oom: the run passed its memory limit and the kernel killed it"
                                .to_string(),
                        );
                    }
                    if process::read_exit_status(exit_status).is_none() {
                        write_status(exit_status, code);
                    }
                    false
                }
                Err(e) => {
                    // The engine may be restarting: the next look asks again.
                    tracing::warn!(container = %id, error = %e, "cannot look at the run's container");
                    true
                }
            },
        }
    }

    /// After the process ended: makes sure nothing of the run is left. A process
    /// group is killed to its last member (when it is provably the run's: `own`, or
    /// checked); a container is removed and the worktree given back to the factory.
    pub(super) async fn end_all(&self, own: bool, rec: &RunRecord) {
        match self {
            Target::Group(p) => {
                if own || process::group_is_run(p) {
                    process::kill_group_and_wait(p.pgid).await;
                }
            }
            Target::Container { engine, id } => {
                engine.remove(id).await;
                let paths = [rec.worktree.as_path(), rec.artifacts.as_path()];
                if let Err(e) = crate::docker::reclaim(&paths).await {
                    tracing::warn!(error = %e, "cannot give the worktree back to the factory's user");
                }
            }
        }
    }
}

/// Writes a container's exit status as the shim would: a temporary file renamed into
/// place.
fn write_status(path: &Path, code: i64) {
    let tmp = path.with_extension("tmp");
    let written =
        std::fs::write(&tmp, format!("{code}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the container's exit status");
    }
}
