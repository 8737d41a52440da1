//! The lease of a run: the renewer that keeps it, and what it tells the supervisor.

use super::{AbortOnDrop, RETRY_FIRST, RunContext};
use gantry_core::api::Claim;
use gantry_core::retry::Backoff;
use gantry_core::{RunId, StopKind};
use gantry_protocol::{CoordError, Coordinator};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

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

/// Keeps renewals and the finish report apart: a renewal holds it while in flight, and
/// so does each try of the finish, which sets it to true once the server accepted the
/// finish. A renewal crossing an accepted finish would be refused as a stale write and
/// counted as one, a false alarm for whoever watches that counter.
pub(super) type FinishGate = Arc<tokio::sync::Mutex<bool>>;

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
pub(super) fn start_renewer(
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
