//! Test support shared by every crate that tests against PostgreSQL (feature `testing`).
//!
//! Tests read the server's URL from `GANTRY_TEST_PG_URL` (set by `./scripts/test`, which
//! starts a throwaway cluster) and fail loudly when it is unset: a PostgreSQL test is
//! never skipped. Each test makes a [`PgDb`], a fresh database of its own that is dropped
//! when the value is, so tests of several crates and binaries run in parallel on one
//! server without seeing one another.

use crate::{PgOptions, PgStore, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that names the PostgreSQL server tests use.
pub const PG_URL_VAR: &str = "GANTRY_TEST_PG_URL";

/// The server URL tests use, from `GANTRY_TEST_PG_URL`; panics, saying what to do, when
/// it is unset: PostgreSQL tests are never skipped.
pub fn pg_server_url() -> String {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{PG_URL_VAR} is not set, so the PostgreSQL tests have no server: run \
             ./scripts/test (it starts a throwaway PostgreSQL and sets the variable), or \
             set it to postgres://USER@HOST:PORT/DB for a server where USER may create \
             databases"
        ),
    }
}

/// The URL of database `name` on the server of `server_url`: the path is replaced,
/// user, host, port and query parameters are kept.
pub fn url_of_database(server_url: &str, name: &str) -> String {
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

/// A connection to `url` made the way the store makes its own: TLS as the URL's
/// `sslmode` and `sslrootcert` say (for checks such as `pg_stat_ssl`).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    crate::postgres::tls::connect_one(url).await
}

/// A database created for one test, dropped (forcing out any connection left) when the
/// value is dropped.
#[derive(Debug)]
pub struct PgDb {
    /// Its URL, for [`PgStore::connect`] or `gantry serve --db`.
    pub url: String,
    /// Its name.
    pub name: String,
    server: String,
}

impl PgDb {
    /// Creates a new, empty database with a name unique across processes and tests.
    ///
    /// Panics when `GANTRY_TEST_PG_URL` is unset, the server cannot be reached or the
    /// database cannot be created, naming which.
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
                panic!("cannot connect to {PG_URL_VAR} {server}: {e}; is the server up?")
            });
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e:?}"));
        drop(client);
        // The connection ends once its client is gone; its result says nothing more.
        let _ = driver.await;
        PgDb {
            url: url_of_database(&server, &name),
            name,
            server,
        }
    }

    /// A store on this database (migrating it on first use).
    pub async fn store(&self, opts: PgOptions) -> Result<PgStore> {
        PgStore::connect(&self.url, opts).await
    }

    /// A connection to this database, for checks the `Store` trait cannot make.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test database {}: {e}", self.url));
        tokio::spawn(conn);
        client
    }

    /// Waits until `d` has passed on the database's clock, the clock the store reads
    /// for leases: the test waits on the store's own time, not on a guess of its own.
    pub async fn pass(&self, d: std::time::Duration) {
        let client = self.client().await;
        let now = || async {
            client
                .query_one("SELECT clock_timestamp()", &[])
                .await
                .map(|row| row.get::<_, std::time::SystemTime>(0))
                .unwrap_or_else(|e| panic!("cannot read the database clock: {e}"))
        };
        let until = now().await + d;
        // Bounded: the database's clock runs like any other.
        for _ in 0..100_000 {
            if now().await >= until {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("the database clock did not pass {d:?}");
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block on another: use a thread of
        // its own with its own runtime. Best effort: a leftover database costs disk in a
        // throwaway cluster only.
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
