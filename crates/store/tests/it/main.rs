//! Integration tests of gantry-store: the backend-independent conformance suite, run
//! against the SQLite and the PostgreSQL backends, plus checks of each backend alone
//! (SQLite: file handling, the lock index; PostgreSQL: concurrency across instances,
//! notifications, the reaper on several replicas, event order).
//!
//! PostgreSQL tests need a server: `GANTRY_TEST_PG_URL` (set by `./scripts/test`, which
//! starts a throwaway one) names a database whose user may create databases. Each test
//! gets a fresh database of its own, dropped when it ends, so tests run in parallel.

mod conformance;
mod helpers;
mod postgres;
mod sqlite;

use gantry_store::{PgOptions, PgStore, SqliteStore, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .expect("connect to the test database");
    TestStore {
        store: Arc::new(store),
        dir: tempfile::tempdir().expect("temp dir"),
        pg: Some(db),
    }
}

/// The server URL tests use, from `GANTRY_TEST_PG_URL`; panics, saying what to do, when
/// it is unset: PostgreSQL tests are never skipped.
pub fn pg_server_url() -> String {
    match std::env::var("GANTRY_TEST_PG_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "GANTRY_TEST_PG_URL is not set, so the PostgreSQL tests have no server: run \
             ./scripts/test (it starts a throwaway PostgreSQL and sets the variable), or \
             set it to postgres://USER@HOST:PORT/DB for a server where USER may create \
             databases"
        ),
    }
}

/// The URL of database `name` on the server of `server_url`.
fn url_of_database(server_url: &str, name: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server_url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A database created for one test, dropped (best effort, forcing out any connection
/// left) when it is dropped.
pub struct PgDb {
    /// Its URL.
    pub url: String,
    /// Its name.
    pub name: String,
    server: String,
}

impl PgDb {
    /// Creates a new, empty database with a unique name.
    pub async fn create() -> PgDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let server = pg_server_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "gantry_t_{}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot connect to GANTRY_TEST_PG_URL {server}: {e}; is the server up?")
            });
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e:?}"));
        drop(client);
        let _ = driver.await;
        PgDb {
            url: url_of_database(&server, &name),
            name,
            server,
        }
    }

    /// A connection to this database, for checks the `Store` trait cannot make.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block on another: use a thread of
        // its own with its own runtime.
        // Best effort: a leftover database costs disk in a throwaway cluster only.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| format!("{e:?}"))
            })
        })
        .join();
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
