//! Integration tests of gantry-store: the backend-independent conformance suite, run
//! against the SQLite and the PostgreSQL backends, plus checks of each backend alone
//! (SQLite: file handling, the lock index; PostgreSQL: concurrency across instances,
//! notifications, the reaper on several replicas, event order).
//!
//! PostgreSQL tests need a server: `GANTRY_TEST_PG_URL` (set by `./scripts/test`, which
//! starts a throwaway one) names a database whose user may create databases. Each test
//! gets a fresh database of its own ([`gantry_store::testing::PgDb`], shared with other
//! crates' tests), dropped when it ends, so tests run in parallel.

mod conformance;
mod helpers;
mod pg_tls;
mod postgres;
mod sqlite;

use gantry_store::testing::url_of_database;
pub use gantry_store::testing::{PgDb, pg_server_url};
use gantry_store::{Clock, PgOptions, SqliteStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// A store under test and whatever keeps it alive (its temporary directory, its
/// database).
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Removed when the test ends.
    pub dir: Arc<tempfile::TempDir>,
    /// The PostgreSQL database, dropped when the test ends.
    pub pg: Option<Arc<PgDb>>,
    /// The store's clock, when the test may move it (SQLite's).
    pub clock: Option<Clock>,
}

impl TestStore {
    /// What outlives the case: the store and its files, to look at what it wrote.
    pub fn kept(&self) -> Kept {
        Kept {
            store: self.store.clone(),
            _dir: self.dir.clone(),
            _pg: self.pg.clone(),
        }
    }

    /// Lets `d` pass for the store: its clock moves ahead at once, or, when its time is
    /// the database's (PostgreSQL, whose clock several servers share), the test waits
    /// until the database's clock has moved on by `d`.
    pub async fn pass(&self, d: Duration) {
        match (&self.clock, &self.pg) {
            (Some(clock), _) => clock.advance(d),
            (None, Some(db)) => db.pass(d).await,
            (None, None) => panic!("a test store has a clock or a database"),
        }
    }
}

/// A store kept past its test case.
pub struct Kept {
    store: Arc<dyn Store>,
    _dir: Arc<tempfile::TempDir>,
    _pg: Option<Arc<PgDb>>,
}

/// The kinds of event the store writes itself (the rest come from factories and the
/// server, whose data the store keeps as given).
const STORE_KINDS: [&str; 10] = [
    gantry_core::event::JOB_SUBMITTED,
    gantry_core::event::JOB_STATE,
    gantry_core::event::JOB_CANCEL_REQUESTED,
    gantry_core::event::JOB_KILL_REQUESTED,
    gantry_core::event::RUN_CLAIMED,
    gantry_core::event::RUN_FINISHED,
    gantry_core::event::LEASE_EXPIRED,
    gantry_core::event::STALE_WRITE_REJECTED,
    gantry_core::event::QUEUE_PAUSED,
    gantry_core::event::QUEUE_RESUMED,
];

impl Kept {
    /// Checks that every event the store wrote itself fits its kind's payload type, so
    /// every writer (in Rust or built in SQL) keeps to the one shape readers decode.
    /// Returns how many it checked.
    pub async fn check_event_payloads(&self) -> usize {
        let (mut after, mut checked) = (0, 0);
        loop {
            let page = self
                .store
                .events(after, None, 1000)
                .await
                .expect("read events");
            for e in &page {
                if STORE_KINDS.contains(&e.kind.as_str()) {
                    gantry_core::event::check_known(&e.kind, &e.data).unwrap_or_else(|err| {
                        panic!("event {} {}: {err}: {}", e.id, e.kind, e.data)
                    });
                    checked += 1;
                }
            }
            match page.last() {
                Some(last) => after = last.id,
                None => return checked,
            }
        }
    }
}

/// A fresh, empty SQLite store.
pub fn new_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Clock::system();
    let store = SqliteStore::open_with_clock(&dir.path().join("gantry.db"), clock.clone())
        .expect("open store");
    TestStore {
        store: Arc::new(store),
        dir: Arc::new(dir),
        pg: None,
        clock: Some(clock),
    }
}

/// A fresh, empty PostgreSQL store, in a database of its own.
pub async fn new_pg_store() -> TestStore {
    let db = PgDb::create().await;
    let store = db
        .store(PgOptions::default())
        .await
        .expect("connect to the test database");
    TestStore {
        store: Arc::new(store),
        dir: Arc::new(tempfile::tempdir().expect("temp dir")),
        pg: Some(Arc::new(db)),
        clock: None,
    }
}

#[test]
fn database_urls_replace_only_the_database() {
    assert_eq!(
        url_of_database("postgres://postgres@127.0.0.1:55432/postgres", "x"),
        "postgres://postgres@127.0.0.1:55432/x"
    );
    assert_eq!(
        url_of_database("postgres://u:p@h/db?sslmode=disable", "y"),
        "postgres://u:p@h/y?sslmode=disable"
    );
    assert_eq!(
        url_of_database("postgres://u@h:1", "z"),
        "postgres://u@h:1/z"
    );
}
