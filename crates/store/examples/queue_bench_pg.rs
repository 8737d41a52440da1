//! Runs the queue benchmark against PostgreSQL, in a fresh database that it creates on
//! the server and drops afterwards:
//! `cargo run --release -p gantry-store --example queue_bench_pg -- [URL] [JOBS] [WORKERS]...`
//!
//! `URL` (default: `GANTRY_TEST_PG_URL`) names any database of the server, whose user
//! may create databases. Several `WORKERS` counts run one after the other, each on a
//! database of its own (default: 4 and 16).

use gantry_store::{PgOptions, PgStore, Store, bench};
use std::sync::Arc;

/// Runs `sql` on the server behind `url`.
async fn admin(url: &str, sql: &str) -> Result<(), Box<dyn std::error::Error>> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await?;
    drop(client);
    driver.await??;
    Ok(())
}

/// The URL of database `name` on the server of `url`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[start..].find('/') {
        Some(i) => &base[..start + i],
        None => base,
    };
    format!("{base}/{name}{query}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let url = match args.peek() {
        Some(a) if a.starts_with("postgres") => args.next().unwrap_or_default(),
        _ => std::env::var("GANTRY_TEST_PG_URL")
            .map_err(|_| "give a postgres:// URL or set GANTRY_TEST_PG_URL")?,
    };
    let jobs: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let mut worker_counts: Vec<usize> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    if worker_counts.is_empty() {
        worker_counts = vec![4, 16];
    }
    for workers in worker_counts {
        let name = format!("gantry_bench_{}_{workers}", std::process::id());
        admin(&url, &format!("DROP DATABASE IF EXISTS {name}")).await?;
        admin(&url, &format!("CREATE DATABASE {name}")).await?;
        let store = PgStore::connect(
            &with_database(&url, &name),
            PgOptions {
                max_connections: workers + 2,
                ..PgOptions::default()
            },
        )
        .await?;
        let report = bench::queue(Arc::new(store) as Arc<dyn Store>, jobs, workers).await;
        admin(
            &url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await?;
        let report = report?;
        #[allow(clippy::print_stdout)]
        {
            println!("K={workers}: {report}");
        }
    }
    Ok(())
}
