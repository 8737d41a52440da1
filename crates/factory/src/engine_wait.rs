//! A recorded container run whose Docker engine does not answer when the factory
//! restarts: its lease is kept while the factory waits for the engine, then the run is
//! adopted as usual. Failing the run would report the agent's work as a failure it
//! never had; dropping it at once would throw that work away while the container may
//! still be running it. Past [`crate::DockerConfig::engine_wait`] (or when the server
//! refuses the lease) the run is let go as a lost lease is: its processes killed from
//! the host, its worktree and record removed, nothing reported, so the server hands the
//! job out again under a new epoch once the lease expires.

use crate::docker::Engine;
use crate::process;
use crate::run::{Adoption, RunContext, adopt_run};
use gantry_core::StopKind;
use gantry_protocol::CoordError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest pause between two tries of the engine.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Why the wait ended without an engine.
enum Given {
    /// The factory stops: the record stays for the next one.
    Shutdown,
    /// The run is not ours any more, or the engine stayed away too long.
    Up(String),
}

/// Keeps the lease of `adoption`'s run while the engine at `socket` does not answer,
/// and adopts the run once it does (with the stop the server asked for meanwhile). A
/// kill asked for meanwhile kills the run's processes at once, from the host (the
/// container's processes carry the run's ids in their environment); the run is
/// finished as killed once the engine answers.
pub(crate) async fn adopt_when_engine_answers(
    mut ctx: RunContext,
    mut adoption: Adoption,
    socket: PathBuf,
    wait: Duration,
) {
    let claim = adoption.record.claim.clone();
    let (job, run) = (claim.job.id, claim.run.id);
    let ttl = Duration::from_millis(claim.run.lease_ttl_ms.max(3));
    let pause = (ttl / 3).min(RETRY_MAX);
    let give_up_at = Instant::now() + wait;
    tracing::warn!(%job, %run, socket = %socket.display(), ?wait, "the run's container cannot be looked at: no Docker engine answers; keeping its lease until one does");
    let why = loop {
        // An engine that hangs must not hold up the renewals: a try lasts at most a
        // third of the lease.
        match tokio::time::timeout(ttl / 3, Engine::connect(&socket))
            .await
            .unwrap_or_else(|_| {
                Err(crate::docker::DockerError::Unreachable {
                    socket: socket.display().to_string(),
                    reason: format!("no answer within {:?}", ttl / 3),
                })
            }) {
            Ok(engine) => {
                tracing::info!(%job, %run, "the Docker engine answers again: adopting the run");
                ctx.docker = Some(Arc::new(engine));
                adopt_run(ctx, adoption).await;
                return;
            }
            Err(e) => {
                tracing::debug!(%job, %run, error = %e, "the Docker engine still does not answer")
            }
        }
        if Instant::now() >= give_up_at {
            break Given::Up(format!("no Docker engine answered for {wait:?}"));
        }
        let mut shutdown = ctx.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|s| *s) => break Given::Shutdown,
        }
        let sent = Instant::now();
        match ctx.coord.renew(run, claim.run.epoch).await {
            Ok(renewed) => {
                adoption.renewed_at = sent;
                if let Some(stop) = renewed.stop
                    && adoption.stop.is_none()
                {
                    tracing::info!(%job, %run, ?stop, "stop asked for while the engine is away");
                    if stop == StopKind::Kill {
                        process::kill_run_processes(job, run).await;
                    }
                    adoption.stop = Some(stop);
                }
            }
            Err(e @ (CoordError::StaleLease { .. } | CoordError::Refused { .. })) => {
                break Given::Up(format!("lease renewal refused: {e}"));
            }
            // The lease may run out meanwhile; the next renewal says so.
            Err(CoordError::Unavailable(e)) => {
                tracing::warn!(%job, %run, error = %e, "renewing the lease of a run waiting for the engine failed");
            }
        }
    };
    // Stopping without leaving runs behind ends this one as it ends the others: killed,
    // not reported, its lease left to expire.
    let reason = match why {
        Given::Shutdown if ctx.cfg.leave_runs_on_shutdown => return,
        Given::Shutdown => "the factory stops".to_string(),
        Given::Up(reason) => reason,
    };
    tracing::warn!(%job, %run, %reason, "recorded run dropped: killed, not finished");
    process::kill_run_processes(job, run).await;
    crate::factory::drop_run(&ctx.cfg, None, &adoption.record).await;
}
