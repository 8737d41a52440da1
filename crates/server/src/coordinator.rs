//! [`LocalCoordinator`]: the factory protocol in-process, for the embedded factory.

use crate::error::ApiError;
use crate::service::Service;
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, RunId};
use gantry_protocol::{Claim, FinishReport, Heartbeat, HeartbeatAck, RegisterFactory, Renewed};
use gantry_protocol::{CoordError, Coordinator, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

/// The in-process [`Coordinator`]: calls the same [`Service`] methods the HTTP handlers
/// call, so the embedded factory is held to exactly the rules a remote factory is
/// (long-poll claims, fenced renew/events/finish, delivery after a fenced finish).
#[derive(Clone)]
pub struct LocalCoordinator {
    service: Arc<Service>,
}

impl LocalCoordinator {
    /// A coordinator over `service`.
    pub fn new(service: Arc<Service>) -> Self {
        LocalCoordinator { service }
    }
}

/// Maps a refusal to what the factory loop acts on: a stale lease kills the run, a
/// server-side failure is retried, anything else is a refusal for good.
fn coord_error(e: ApiError, run: Option<RunId>, epoch: i64) -> CoordError {
    match e.body.error {
        ErrorKind::StaleLease => CoordError::StaleLease {
            run: run.unwrap_or_default(),
            epoch,
            message: e.body.message,
        },
        ErrorKind::Internal => CoordError::Unavailable(e.body.message),
        kind => CoordError::Refused {
            kind,
            message: e.body.message,
        },
    }
}

#[async_trait::async_trait]
impl Coordinator for LocalCoordinator {
    fn stop_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.service.stop_signal())
    }

    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        self.service
            .register(reg)
            .await
            .map_err(|e| coord_error(e, None, 0))
    }

    /// Records the factory's heartbeat, as `POST /v1/factories/{id}/heartbeat` does.
    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        self.service
            .heartbeat(factory, hb)
            .await
            .map_err(|e| coord_error(e, None, 0))
    }

    async fn claim(&self, factory: FactoryId, wait: Duration) -> Result<Option<Claim>, CoordError> {
        self.service
            .claim(factory, wait)
            .await
            .map_err(|e| coord_error(e, None, 0))
    }

    async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, CoordError> {
        self.service
            .renew(run, epoch)
            .await
            .map_err(|e| coord_error(e, Some(run), epoch))
    }

    async fn events(
        &self,
        run: RunId,
        epoch: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), CoordError> {
        self.service
            .append_events(run, epoch, events)
            .await
            .map_err(|e| coord_error(e, Some(run), epoch))
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<(), CoordError> {
        let epoch = report.epoch;
        self.service
            .finish(run, report)
            .await
            .map(|_| ())
            .map_err(|e| coord_error(e, Some(run), epoch))
    }
}
