//! The factory's registration with the control plane, shared by the claim loop and the
//! heartbeat (either may learn that the server forgot the factory and register again),
//! and the waits both do while watching for shutdown.

use crate::FactoryError;
use gantry_core::FactoryId;
use gantry_core::api::RegisterFactory;
use gantry_core::retry::Backoff;
use gantry_protocol::{CoordError, Coordinator};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// First delay after a failed call to the coordinator.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// Longest delay between retries of the loop's calls.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Outcome of waiting for something while watching for shutdown.
pub(crate) enum Waited<T> {
    Done(T),
    Shutdown,
}

/// Waits for `fut`, or for `shutdown` to turn true (or its sender to go), whichever
/// comes first.
pub(crate) async fn or_shutdown<T>(
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

/// The id one registration gave the factory, and which registration that was (0 for
/// the first, counting up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Enrolled {
    /// The factory's id.
    pub(crate) id: FactoryId,
    /// Which registration gave it.
    generation: u64,
}

/// The factory's registration: its current id, shared by the claim loop and the
/// heartbeat so they never use different ids. When the server forgets the factory (a
/// fresh database behind a restarted server), whichever loop learns it first registers
/// again, once, and the other picks the new id up.
pub(crate) struct Registration {
    coord: Arc<dyn Coordinator>,
    reg: RegisterFactory,
    current: watch::Sender<Enrolled>,
    /// Held while registering, so two loops that both learn the server forgot the
    /// factory register it once.
    registering: tokio::sync::Mutex<()>,
}

impl Registration {
    /// Registers the factory, retrying while the server is unavailable. `None` on
    /// shutdown; an error when the server refuses for good.
    pub(crate) async fn register(
        coord: Arc<dyn Coordinator>,
        reg: RegisterFactory,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Registration>, FactoryError> {
        let Some(id) = register_retrying(coord.as_ref(), &reg, shutdown).await? else {
            return Ok(None);
        };
        tracing::info!(factory = %id, name = %reg.name, seats = reg.seats, "factory registered");
        Ok(Some(Registration {
            coord,
            reg,
            current: watch::channel(Enrolled { id, generation: 0 }).0,
            registering: tokio::sync::Mutex::new(()),
        }))
    }

    /// The factory's id now, and which registration gave it.
    pub(crate) fn current(&self) -> Enrolled {
        *self.current.borrow()
    }

    /// Registers again because the server answered that it does not know the id of
    /// `stale`, and returns the id to use from now on. When another registration
    /// happened since `stale` (the other loop's), its id, without registering again;
    /// this holds even when the server gave the same number back (id 1 of a fresh
    /// database). `None` on shutdown; an error when the server refuses for good.
    pub(crate) async fn replace(
        &self,
        stale: Enrolled,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<FactoryId>, FactoryError> {
        let _held = match or_shutdown(shutdown, self.registering.lock()).await {
            Waited::Done(guard) => guard,
            Waited::Shutdown => return Ok(None),
        };
        let current = self.current();
        if current.generation != stale.generation {
            return Ok(Some(current.id));
        }
        let Some(id) = register_retrying(self.coord.as_ref(), &self.reg, shutdown).await? else {
            return Ok(None);
        };
        tracing::info!(factory = %id, before = %stale.id, name = %self.reg.name, "factory registered again");
        self.current.send_replace(Enrolled {
            id,
            generation: stale.generation + 1,
        });
        Ok(Some(id))
    }
}

/// Registers, retrying while the server is unavailable. `None` on shutdown.
async fn register_retrying(
    coord: &dyn Coordinator,
    reg: &RegisterFactory,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<FactoryId>, FactoryError> {
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    loop {
        let wait = match or_shutdown(shutdown, coord.register(reg)).await {
            Waited::Shutdown => return Ok(None),
            Waited::Done(Ok(id)) => return Ok(Some(id)),
            Waited::Done(Err(CoordError::Unavailable(e))) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "registering failed");
                wait
            }
            Waited::Done(Err(source)) => {
                return Err(FactoryError::Register {
                    name: reg.name.clone(),
                    source,
                });
            }
        };
        if let Waited::Shutdown = or_shutdown(shutdown, tokio::time::sleep(wait)).await {
            return Ok(None);
        }
    }
}
