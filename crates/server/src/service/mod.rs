//! The service: everything the API does, over the store, shared by the HTTP handlers
//! and the in-process coordinator so the embedded factory takes the same code path as
//! a remote one.
//!
//! One module per job: this one holds the service and what every part shares;
//! `jobs` submits and shows jobs, `factories` registers and watches factories, `runs`
//! claims, renews and finishes runs, `delivery` delivers finished runs' commits and
//! removes leftover result refs, and `chores` runs the background work.

mod chores;
mod delivery;
mod factories;
mod jobs;
mod runs;

pub(crate) use chores::Chores;
use delivery::DeliveryLocks;
pub use delivery::delivery_branch;
pub(crate) use delivery::remove_reaped_result_refs;

use crate::ServeConfig;
use crate::metrics::Metrics;
use gantry_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often waiters (long-poll claims, event streams) re-query the store even when no
/// change was signalled: things that become true with the passing of time (a
/// `not_before` in the past, a lease reaped by another replica) signal nothing.
pub(crate) const POLL_FALLBACK: Duration = Duration::from_millis(500);

/// Resolves once `shutdown` turns true (or its sender is gone, which means the same).
///
/// The guard `wait_for` returns is dropped here, so callers' futures stay `Send`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The longest a claim may wait: longer long polls only tie up connections.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(120);

/// Milliseconds of a duration, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Store, configuration and delivery locks: what every request handler and the
/// in-process coordinator work with.
pub struct Service {
    store: Arc<dyn Store>,
    cfg: ServeConfig,
    /// One async lock per source repository, so two deliveries never push into the same
    /// repository at once.
    delivery_locks: Arc<DeliveryLocks>,
    /// Background chores (see [`Chores`]).
    chores: Arc<Chores>,
    shutdown: watch::Receiver<bool>,
    /// This process's counters (see [`crate::metrics`]).
    metrics: Arc<Metrics>,
    /// Bumped whenever a stop is asked of a running job, so the embedded factory renews
    /// at once and stops the run within milliseconds instead of at its next renewal.
    stops: watch::Sender<u64>,
    /// Why jobs cannot be sandboxed here, when they cannot and the operator did not
    /// opt out: jobs of tokens that are not admin are then refused.
    unsandboxed: Option<String>,
    /// Event streams open per token, capped by `limits.max_streams_per_token`.
    streams: Arc<crate::limits::StreamSlots>,
    /// Gate and review profiles of `gantry.toml`, resolved into jobs at submit.
    profiles: Arc<crate::profiles::Profiles>,
}

impl Service {
    /// A service over `store`. Waits (claims, event streams) end when `shutdown` turns
    /// true.
    pub fn new(store: Arc<dyn Store>, cfg: ServeConfig, shutdown: watch::Receiver<bool>) -> Self {
        Service {
            store,
            cfg,
            delivery_locks: Arc::default(),
            chores: Arc::default(),
            shutdown,
            metrics: Arc::new(Metrics::new()),
            stops: watch::channel(0).0,
            streams: Arc::default(),
            unsandboxed: None,
            profiles: Arc::default(),
        }
    }

    /// Makes the service write out the gate and review profiles jobs name.
    pub fn with_profiles(mut self, profiles: crate::profiles::Profiles) -> Self {
        self.profiles = Arc::new(profiles);
        self
    }

    /// Makes the service refuse jobs of tokens that are not admin, saying `reason`:
    /// the embedded factory could only run them without a sandbox.
    pub fn refusing_unsandboxed(mut self, reason: Option<String>) -> Self {
        self.unsandboxed = reason;
        self
    }

    /// The server's background chores.
    pub(crate) fn chores(&self) -> &Chores {
        &self.chores
    }

    /// How many repositories have a delivery lock in the map (held, waited for, or
    /// just released).
    pub fn delivery_locks_held(&self) -> usize {
        self.delivery_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The event streams open per token.
    pub fn streams(&self) -> &Arc<crate::limits::StreamSlots> {
        &self.streams
    }

    /// Tells in-process factories that a stop was asked (see [`Service::stop_signal`]).
    pub fn stop_asked(&self) {
        self.stops.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A signal that changes whenever a stop (cancel, kill, kill-all) was asked: a hint
    /// to renew now, since stops travel in the answer to a renewal.
    pub fn stop_signal(&self) -> watch::Receiver<u64> {
        self.stops.subscribe()
    }

    /// This process's counters, served at `GET /metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.cfg
    }

    /// A receiver that turns true when the server shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Whether the server is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}
