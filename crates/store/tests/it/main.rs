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
mod postgres;
mod sqlite;

use gantry_store::testing::url_of_database;
pub use gantry_store::testing::{PgDb, pg_server_url};
use gantry_store::{PgOptions, SqliteStore, Store};
use std::sync::Arc;

/// A store under test and whatever keeps it alive (its temporary directory, its
/// database).
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Removed when the test ends.
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database, dropped when the test ends.
    pub pg: Option<PgDb>,
}

/// A fresh, empty SQLite store.
pub fn new_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("gantry.db")).expect("open store");
    TestStore {
        store: Arc::new(store),
        dir,
        pg: None,
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
        dir: tempfile::tempdir().expect("temp dir"),
        pg: Some(db),
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
