//! Runs the queue benchmark against a fresh SQLite file:
//! `cargo run --release -p gantry-store --example queue_bench -- [JOBS] [WORKERS]`.
//!
//! Also prints the CPU time of the store's writer thread, which bounds the throughput
//! on a machine that other work shares.

use gantry_store::{SqliteStore, Store, bench};
use std::sync::Arc;

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
fn thread_cpu_s(prefix: &str) -> f64 {
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesized name: state is field 3, utime 14, stime 15.
        let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        total += ticks / 100.0;
    }
    total
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let workers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("gantry.db"))?);
    if std::env::var_os("SUBMIT_ONLY").is_some() {
        for start in (0..jobs).step_by(1000) {
            let batch = (start..(start + 1000).min(jobs))
                .map(bench::noop_job)
                .collect();
            store.submit(batch).await?;
        }
        #[allow(clippy::print_stdout)]
        {
            println!(
                "submit only: writer cpu {:.2} s",
                thread_cpu_s("gantry-store")
            );
        }
        return Ok(());
    }
    let report = bench::queue(Arc::clone(&store) as Arc<dyn Store>, jobs, workers).await?;
    let writer = thread_cpu_s("gantry-store");
    let wal = std::fs::metadata(dir.path().join("gantry.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    #[allow(clippy::print_stdout)]
    {
        println!(
            "writer thread cpu {writer:.2} s for {jobs} jobs (submit included): {:.1} us/job",
            writer * 1e6 / jobs as f64
        );
        println!("WAL file {:.1} MB", wal as f64 / 1e6);
        println!("{report}");
    }
    Ok(())
}
