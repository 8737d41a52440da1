//! The heartbeat: every interval the server asks for, the factory reports its load,
//! available memory, the free disk of its data dir and whether it claims (and if not,
//! why). The server lists these in `GET /v1/factories` and marks a factory down when
//! they stop.
//!
//! The heartbeat runs beside the claim loop and the runs and never waits on them, nor
//! they on it: a server that cannot be reached only delays the next heartbeat (retried
//! with backoff, never longer apart than the last interval). A server that answers it
//! does not know the factory (it forgot it, e.g. a fresh database behind a restarted
//! server) makes the factory register again, through the [`Registration`] the claim
//! loop shares.

use crate::admission::{self, Admission};
use crate::registration::{BACKOFF_FIRST, Registration, Waited, or_shutdown};
use gantry_core::retry::Backoff;
use gantry_protocol::Heartbeat;
use gantry_protocol::{CoordError, Coordinator, ErrorKind};
use std::mem::discriminant;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Time between heartbeats until the server said otherwise, and between attempts
/// while the server refuses them for good (a bad token, say).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest time between heartbeats, whatever the server asks (a guard against a
/// busy loop on a bogus answer).
const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest time between heartbeats, whatever the server asks.
const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// What the heartbeat needs from its factory.
pub(crate) struct Pulse {
    /// The control plane.
    pub(crate) coord: Arc<dyn Coordinator>,
    /// The factory's id, shared with the claim loop.
    pub(crate) registration: Arc<Registration>,
    /// The data dir whose free disk is reported.
    pub(crate) data_dir: PathBuf,
    /// The factory's admission, as the claim loop last checked it.
    pub(crate) admission: watch::Receiver<Admission>,
    /// Turns true (or its sender goes) when the factory stops.
    pub(crate) stop: watch::Receiver<bool>,
}

/// A spawned heartbeat, aborted when dropped (so it ends with the factory loop,
/// however that returns).
pub(crate) struct Beating(tokio::task::JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts sending heartbeats, the first one at once.
pub(crate) fn spawn(pulse: Pulse) -> Beating {
    Beating(tokio::spawn(run(pulse)))
}

/// The heartbeat of a factory with data dir `data_dir`, now: what can be measured
/// (anything else is `None`, never 0) and the admission reason when it does not claim.
fn measure(data_dir: &std::path::Path, admission: &Admission) -> Heartbeat {
    Heartbeat {
        load_1m: admission::load_1m(),
        free_memory_mb: admission::available_memory_mb(),
        free_disk_mb: admission::free_disk_mb(data_dir),
        admission: (!admission.is_open()).then(|| admission.to_string()),
    }
}

/// Sends heartbeats until the factory stops.
async fn run(mut p: Pulse) {
    let mut interval = DEFAULT_INTERVAL;
    let mut backoff = Backoff::new(BACKOFF_FIRST, interval);
    let mut failing = false;
    // Whether the last heartbeat's 404 made the factory register again: a server that
    // answers 404 to the new id too is retried with backoff, not in a busy loop.
    let mut registered_again = false;
    loop {
        let enrolled = p.registration.current();
        let id = enrolled.id;
        let admission = p.admission.borrow_and_update().clone();
        let hb = measure(&p.data_dir, &admission);
        let sent = match or_shutdown(&mut p.stop, p.coord.heartbeat(id, &hb)).await {
            Waited::Done(r) => r,
            Waited::Shutdown => return,
        };
        let wait = match sent {
            Ok(ack) => {
                if failing {
                    tracing::info!(factory = %id, "heartbeats reach the server again");
                    failing = false;
                }
                registered_again = false;
                interval = Duration::from_millis(ack.interval_ms).clamp(MIN_INTERVAL, MAX_INTERVAL);
                backoff.set_max(interval);
                backoff.reset();
                interval
            }
            Err(CoordError::Refused {
                kind: ErrorKind::NotFound,
                message,
            }) => {
                tracing::warn!(factory = %id, %message, "the server does not know this factory; registering again");
                match p.registration.replace(enrolled, &mut p.stop).await {
                    // Tell the server at once under the new id.
                    Ok(Some(_)) if !registered_again => {
                        registered_again = true;
                        continue;
                    }
                    Ok(Some(_)) => backoff.next_delay(),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?interval, "registering again failed");
                        interval
                    }
                }
            }
            Err(CoordError::Unavailable(e)) => {
                let wait = backoff.next_delay();
                if failing {
                    tracing::debug!(factory = %id, error = %e, retry_in = ?wait, "heartbeat failed again");
                } else {
                    tracing::warn!(factory = %id, error = %e, retry_in = ?wait, "heartbeat failed; retrying");
                    failing = true;
                }
                wait
            }
            Err(e) => {
                tracing::warn!(factory = %id, error = %e, retry_in = ?interval, "heartbeat refused");
                interval
            }
        };
        let flipped = admission_flips(&mut p.admission, &admission);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // When the factory starts or stops claiming, say so at once.
            () = flipped => {}
            _ = p.stop.wait_for(|s| *s) => return,
        }
    }
}

/// Resolves once the kind of admission differs from `sent` (open, low memory, low
/// disk): the factory started or stopped claiming, or for another reason. A changed
/// figure under the same reason waits for the next heartbeat. Never resolves once the
/// factory is gone.
async fn admission_flips(rx: &mut watch::Receiver<Admission>, sent: &Admission) {
    loop {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if discriminant(&*rx.borrow_and_update()) != discriminant(sent) {
            return;
        }
    }
}
