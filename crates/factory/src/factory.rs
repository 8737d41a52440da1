//! The factory loop: register, then claim a job whenever a seat is free and run it.

use crate::coordinator::{CoordError, Coordinator};
use crate::run::{RunContext, run_claim};
use crate::{FactoryConfig, FactoryError};
use gantry_core::FactoryId;
use gantry_core::api::RegisterFactory;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// First delay after a failed call to the coordinator.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Longest delay between retries of the loop's calls.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A factory: runs claimed jobs, at most `seats` at a time, each in its own worktree.
pub struct Factory {
    cfg: Arc<FactoryConfig>,
    coord: Arc<dyn Coordinator>,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory").field("cfg", &self.cfg).finish()
    }
}

/// Outcome of waiting for something while watching for shutdown.
enum Waited<T> {
    Done(T),
    Shutdown,
}

async fn or_shutdown<T>(
    shutdown: &mut watch::Receiver<bool>,
    fut: impl std::future::Future<Output = T>,
) -> Waited<T> {
    if *shutdown.borrow() {
        return Waited::Shutdown;
    }
    tokio::select! {
        v = fut => Waited::Done(v),
        _ = shutdown.wait_for(|s| *s) => Waited::Shutdown,
    }
}

impl Factory {
    /// A factory with this configuration, talking to the control plane through `coord`.
    pub fn new(cfg: FactoryConfig, coord: Arc<dyn Coordinator>) -> Self {
        Factory {
            cfg: Arc::new(cfg),
            coord,
        }
    }

    /// Runs the factory until `shutdown` turns true: registers, then claims and runs
    /// jobs while seats are free.
    ///
    /// On shutdown it stops claiming, SIGKILLs the process groups of its runs and
    /// reports none of them (their leases expire and the reaper hands the jobs out
    /// again), then returns once every run has wound down.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), FactoryError> {
        let cfg = self.cfg.clone();
        if cfg.seats == 0 {
            return Err(FactoryError::Config {
                field: "seats",
                value: "0".to_string(),
                reason: "a factory needs at least one seat".to_string(),
            });
        }
        for sub in ["repos", "work", "artifacts"] {
            let path = cfg.data_dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|source| FactoryError::DataDir { path, source })?;
        }
        crate::process::become_subreaper();
        let reg = RegisterFactory {
            name: cfg.name.clone(),
            seats: cfg.seats,
            capabilities: cfg.capabilities.clone(),
        };
        let Some(mut id) = self.register(&reg, &mut shutdown).await? else {
            return Ok(());
        };
        tracing::info!(factory = %id, name = %cfg.name, seats = cfg.seats, "factory registered");

        let seats = Arc::new(Semaphore::new(cfg.seats as usize));
        let mut runs = JoinSet::new();
        let ctx = RunContext {
            cfg: cfg.clone(),
            coord: self.coord.clone(),
            shutdown: shutdown.clone(),
        };
        let mut backoff = BACKOFF_FIRST;
        loop {
            // Forget runs that ended, so the set does not grow with the factory's age.
            while let Some(res) = runs.try_join_next() {
                log_join(res);
            }
            let permit = match or_shutdown(&mut shutdown, seats.clone().acquire_owned()).await {
                Waited::Done(Ok(p)) => p,
                Waited::Done(Err(_)) | Waited::Shutdown => break,
            };
            let claimed =
                match or_shutdown(&mut shutdown, self.coord.claim(id, cfg.claim_wait)).await {
                    Waited::Done(c) => c,
                    Waited::Shutdown => break,
                };
            match claimed {
                Ok(Some(claim)) => {
                    backoff = BACKOFF_FIRST;
                    tracing::info!(job = %claim.job.id, run = %claim.run.id, attempt = claim.run.attempt, "claimed");
                    let ctx = ctx.clone();
                    runs.spawn(async move {
                        run_claim(ctx, claim).await;
                        drop(permit);
                    });
                }
                Ok(None) => backoff = BACKOFF_FIRST,
                Err(CoordError::Refused { kind, message }) if kind == "not_found" => {
                    tracing::warn!(factory = %id, %message, "the server does not know this factory; registering again");
                    match self.register(&reg, &mut shutdown).await? {
                        Some(new_id) => id = new_id,
                        None => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "claim failed");
                    if let Waited::Shutdown =
                        or_shutdown(&mut shutdown, tokio::time::sleep(backoff)).await
                    {
                        break;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        tracing::info!(running = runs.len(), "factory stopping");
        // Each run watches the same shutdown signal: it kills its group and returns.
        while let Some(res) = runs.join_next().await {
            log_join(res);
        }
        Ok(())
    }

    /// Registers, retrying while the server is unavailable. `None` on shutdown.
    async fn register(
        &self,
        reg: &RegisterFactory,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<FactoryId>, FactoryError> {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match or_shutdown(shutdown, self.coord.register(reg)).await {
                Waited::Shutdown => return Ok(None),
                Waited::Done(Ok(id)) => return Ok(Some(id)),
                Waited::Done(Err(CoordError::Unavailable(e))) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "registering failed");
                }
                Waited::Done(Err(source)) => {
                    return Err(FactoryError::Register {
                        name: reg.name.clone(),
                        source,
                    });
                }
            }
            if let Waited::Shutdown = or_shutdown(shutdown, tokio::time::sleep(backoff)).await {
                return Ok(None);
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        tracing::error!(error = %e, "a run task failed");
    }
}
