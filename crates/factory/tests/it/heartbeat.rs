//! The factory's heartbeat (issue 4), over a coordinator that records what it is sent
//! and can forget the factory the way a server on a fresh database does. The same
//! paths against a real server are in the server crate's `factories.rs`.

use crate::support::{GUARD, test_config, wait_for};
use async_trait::async_trait;
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, RunId};
use gantry_factory::{CoordError, Coordinator, Factory, FactoryConfig, FactoryError};
use gantry_protocol::{Claim, FinishReport, Heartbeat, HeartbeatAck, RegisterFactory, Renewed};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
struct Log {
    /// Calls of `register`, answered or not yet.
    register_calls: usize,
    /// Ids the registrations answered, in order.
    registered: Vec<FactoryId>,
    /// Ids this coordinator knows (registered and not forgotten).
    known: BTreeSet<FactoryId>,
    /// The next id a registration gets.
    next_id: i64,
    /// Heartbeats of known factories.
    heartbeats: Vec<(FactoryId, Heartbeat)>,
    /// Claims of known factories: the id each named.
    claims: Vec<FactoryId>,
    /// Heartbeats and claims answered `not_found`.
    heartbeats_not_found: usize,
    claims_not_found: usize,
}

/// A coordinator that records registrations, heartbeats and claims (it never hands a
/// job out), and answers `not_found` for a factory it forgot.
struct Recorder {
    log: Mutex<Log>,
    /// Registrations wait while this is false.
    registering_open: watch::Sender<bool>,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            log: Mutex::new(Log::default()),
            registering_open: watch::channel(true).0,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        f(&mut self.log.lock().expect("recorder lock"))
    }

    /// Forgets every factory, as a server restarted on a fresh database does; with
    /// `reuse_ids` the ids start again from 1, as a fresh database's do.
    fn forget_all(&self, reuse_ids: bool) {
        self.with(|l| {
            l.known.clear();
            if reuse_ids {
                l.next_id = 0;
            }
        });
    }

    fn not_found(id: FactoryId) -> CoordError {
        CoordError::Refused {
            kind: gantry_protocol::ErrorKind::NotFound,
            message: format!("factory {id} not found"),
        }
    }
}

#[async_trait]
impl Coordinator for Recorder {
    async fn register(&self, _reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        self.with(|l| l.register_calls += 1);
        let mut open = self.registering_open.subscribe();
        let _ = open.wait_for(|o| *o).await;
        Ok(self.with(|l| {
            l.next_id += 1;
            let id = FactoryId(l.next_id);
            l.registered.push(id);
            l.known.insert(id);
            id
        }))
    }

    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        self.with(|l| {
            if !l.known.contains(&factory) {
                l.heartbeats_not_found += 1;
                return Err(Recorder::not_found(factory));
            }
            l.heartbeats.push((factory, hb.clone()));
            Ok(HeartbeatAck {
                interval_ms: 50,
                down_after_ms: 150,
            })
        })
    }

    async fn claim(&self, factory: FactoryId, wait: Duration) -> Result<Option<Claim>, CoordError> {
        self.with(|l| {
            if !l.known.contains(&factory) {
                l.claims_not_found += 1;
                return Err(Recorder::not_found(factory));
            }
            l.claims.push(factory);
            Ok(())
        })?;
        tokio::time::sleep(wait).await;
        Ok(None)
    }

    async fn renew(&self, _run: RunId, _epoch: i64) -> Result<Renewed, CoordError> {
        Err(CoordError::Unavailable("no runs here".to_string()))
    }

    async fn events(
        &self,
        _run: RunId,
        _epoch: i64,
        _events: Vec<NewEvent>,
    ) -> Result<(), CoordError> {
        Err(CoordError::Unavailable("no runs here".to_string()))
    }

    async fn finish(&self, _run: RunId, _report: FinishReport) -> Result<(), CoordError> {
        Err(CoordError::Unavailable("no runs here".to_string()))
    }
}

/// A running factory over a [`Recorder`].
struct Running {
    _tmp: tempfile::TempDir,
    coord: Arc<Recorder>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), FactoryError>>,
}

impl Running {
    fn start(tune: impl FnOnce(&mut FactoryConfig)) -> Running {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(&tmp.path().join("data"), 1);
        tune(&mut cfg);
        let coord = Recorder::new();
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(Factory::new(cfg, coord.clone()).run(rx));
        Running {
            _tmp: tmp,
            coord,
            shutdown,
            task,
        }
    }

    /// The heartbeats sent so far.
    fn heartbeats(&self) -> Vec<(FactoryId, Heartbeat)> {
        self.coord.with(|l| l.heartbeats.clone())
    }

    /// Stops the factory; it must end without error.
    async fn stop(self) -> Arc<Recorder> {
        self.shutdown.send(true).expect("factory listens");
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("factory stops")
            .expect("factory task did not panic")
            .expect("factory loop ended without error");
        self.coord
    }
}

#[tokio::test]
async fn issue4_heartbeats_carry_the_measured_figures_of_an_open_factory() {
    let f = Running::start(|_| {});
    let beats = wait_for(|| {
        let hb = f.heartbeats();
        (hb.len() >= 3).then_some(hb)
    })
    .await;
    for (id, hb) in &beats {
        assert_eq!(*id, FactoryId(1), "{beats:?}");
        assert!(
            hb.load_1m.is_some_and(|l| l.is_finite() && l >= 0.0),
            "{hb:?}"
        );
        assert!(hb.free_memory_mb.is_some_and(|m| m > 0), "{hb:?}");
        assert!(hb.free_disk_mb.is_some_and(|d| d > 0), "{hb:?}");
        assert_eq!(hb.admission, None, "an open factory claims: {hb:?}");
    }
    let coord = f.stop().await;
    assert!(
        coord.with(|l| !l.claims.is_empty()),
        "the factory claimed beside its heartbeats"
    );
}

#[tokio::test]
async fn issue4_a_closed_admission_is_in_every_heartbeat_from_the_first() {
    let f = Running::start(|cfg| cfg.min_free_disk_mb = u64::MAX);
    let beats = wait_for(|| {
        let hb = f.heartbeats();
        (hb.len() >= 2).then_some(hb)
    })
    .await;
    for (_, hb) in &beats {
        let reason = hb.admission.as_deref().unwrap_or_else(|| {
            panic!("every heartbeat says the factory does not claim: {beats:?}")
        });
        assert!(
            reason.starts_with("not claiming:") && reason.contains("free on the disk"),
            "{reason}"
        );
        assert!(
            hb.free_disk_mb.is_some(),
            "the figure is still measured: {hb:?}"
        );
    }
    let coord = f.stop().await;
    assert!(
        coord.with(|l| l.claims.is_empty()),
        "a factory whose admission is closed does not claim"
    );
}

/// The server forgets the factory; registering again waits until both the heartbeat
/// and the claim loop have been told, so both want the factory registered again: it
/// must be registered once, and both loops must go on with the new id.
async fn forgotten_factory_registers_once(reuse_ids: bool) {
    let f = Running::start(|_| {});
    wait_for(|| {
        f.coord
            .with(|l| (!l.heartbeats.is_empty() && !l.claims.is_empty()).then_some(()))
    })
    .await;
    let (old_beats, old_claims) = f.coord.with(|l| (l.heartbeats.len(), l.claims.len()));
    f.coord.registering_open.send_replace(false);
    f.coord.forget_all(reuse_ids);
    wait_for(|| {
        f.coord.with(|l| {
            (l.register_calls == 2 && l.heartbeats_not_found >= 1 && l.claims_not_found >= 1)
                .then_some(())
        })
    })
    .await;
    f.coord.registering_open.send_replace(true);
    let new_id = FactoryId(if reuse_ids { 1 } else { 2 });
    wait_for(|| {
        f.coord.with(|l| {
            let beat = l.heartbeats.len() > old_beats;
            let claimed = l.claims.len() > old_claims;
            (beat && claimed).then_some(())
        })
    })
    .await;
    let coord = f.stop().await;
    coord.with(|l| {
        assert_eq!(
            (l.register_calls, l.registered.clone()),
            (2, vec![FactoryId(1), new_id]),
            "one registration for both loops"
        );
        assert!(
            l.heartbeats[old_beats..]
                .iter()
                .all(|(id, _)| *id == new_id)
                && l.claims[old_claims..].iter().all(|id| *id == new_id),
            "both loops use the new id: {:?} {:?}",
            l.heartbeats,
            l.claims
        );
    });
}

#[tokio::test]
async fn issue4_a_forgotten_factory_registers_once_and_both_loops_take_the_new_id() {
    forgotten_factory_registers_once(false).await;
}

#[tokio::test]
async fn issue4_a_forgotten_factory_given_the_same_id_back_registers_once() {
    forgotten_factory_registers_once(true).await;
}
