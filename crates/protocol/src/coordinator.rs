//! The factory protocol, as a trait with two implementations: in-process (the server's
//! `LocalCoordinator`) and HTTP (the factory's `HttpCoordinator` over `gantry-client`).

use crate::error::ErrorKind;
use async_trait::async_trait;
use gantry_core::api::{Claim, FinishReport, Heartbeat, RegisterFactory, Renewed};
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, RunId};
use std::time::Duration;

use crate::wire::HeartbeatAck;

/// Why a coordinator call failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The lease is no longer ours: the run must be killed at once and nothing pushed.
    #[error("stale lease for run {run} at epoch {epoch}: {message}")]
    StaleLease {
        /// The run.
        run: RunId,
        /// The epoch we named.
        epoch: i64,
        /// The server's explanation.
        message: String,
    },
    /// The server could not be reached or failed; worth retrying.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    /// The server refused the request for good (bad request, auth, not found).
    #[error("coordinator refused the request ({kind}): {message}")]
    Refused {
        /// Error kind from the server, e.g. [`ErrorKind::Forbidden`].
        kind: ErrorKind,
        /// The server's message.
        message: String,
    },
}

/// The factory protocol: what a factory asks of the control plane.
///
/// Every write names `(run, epoch)`; a refused write comes back as
/// [`CoordError::StaleLease`].
#[async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// Registers the factory; returns its id.
    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError>;
    /// Reports the factory's figures and admission; the answer says when to send the
    /// next heartbeat. An unknown factory (the server forgot it) is
    /// [`CoordError::Refused`] of kind [`ErrorKind::NotFound`]: the factory registers
    /// again.
    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError>;
    /// Claims a job, waiting up to `wait` for one; `None` when none came.
    async fn claim(&self, factory: FactoryId, wait: Duration) -> Result<Option<Claim>, CoordError>;
    /// Renews the run's lease; the answer may carry a stop request.
    async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, CoordError>;
    /// Uploads events of the run.
    async fn events(&self, run: RunId, epoch: i64, events: Vec<NewEvent>)
    -> Result<(), CoordError>;
    /// Reports the end of the run.
    async fn finish(&self, run: RunId, report: FinishReport) -> Result<(), CoordError>;
    /// A signal that changes when a stop may have been asked of a running job, so runs
    /// renew at once (a stop travels in the renewal's answer) instead of at their next
    /// interval. `None` (the default): stops arrive with the regular renewals only.
    fn stop_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
