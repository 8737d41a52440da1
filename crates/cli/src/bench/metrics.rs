//! `gantry bench metrics`: how long a `/metrics` scrape takes on a big queue.

use super::percentile;
use crate::error::CliError;
use crate::output;
use gantry_core::ParsedJob;
use gantry_server::metrics::Metrics;
use gantry_store::{PgOptions, SqliteStore, Store};
use std::time::Instant;

/// Jobs stored per submit call while filling the queue.
const SUBMIT_BATCH: usize = 1_000;

/// The capability lists the queued jobs cycle through: four lists, three sets (two
/// lists differ only in order), so the scrape groups and merges as it does in use.
const CAPABILITIES: [&[&str]; 4] = [&[], &["docker"], &["gpu", "docker"], &["docker", "gpu"]];

/// `gantry bench metrics --jobs N --scrapes S [--db URL]`: fills a fresh store (SQLite
/// in a temp dir, or the empty PostgreSQL database at `url`) with `jobs` queued no-op
/// jobs, then renders the `/metrics` exposition `scrapes` times and prints the median
/// and 99th percentile. Each scrape starts from an empty cache, so every one pays for
/// the store's queries (a server pays that at most once a second, then serves its
/// cache).
pub async fn run(jobs: usize, scrapes: usize, url: Option<String>) -> Result<(), CliError> {
    // The temp dir of a SQLite store lives until the end of the benchmark, then is
    // removed.
    let mut _tmp = None;
    let (store, name): (Box<dyn Store>, String) = match url {
        Some(url) => (
            Box::new(super::empty_postgres(&url, PgOptions::default()).await?),
            "PostgreSQL store".to_string(),
        ),
        None => {
            let tmp = super::temp_dir("gantry-bench-")?;
            let path = tmp.path().join("bench.db");
            let store = SqliteStore::open(&path).map_err(|e| {
                CliError::local(format!("cannot open a SQLite store at {}", path.display()))
                    .cause(e.to_string())
            })?;
            _tmp = Some(tmp);
            (Box::new(store), format!("SQLite store {}", path.display()))
        }
    };
    let store = &*store;
    output::line(format!(
        "bench metrics: {jobs} queued jobs, {scrapes} scrapes, {name}"
    ));
    let started = Instant::now();
    fill(store, jobs).await?;
    output::line(format!(
        "queued {jobs} jobs in batches of {SUBMIT_BATCH} in {:.2} s",
        started.elapsed().as_secs_f64()
    ));
    output::line(
        "each scrape: the whole /metrics exposition rendered from the store with an empty queue-depth cache",
    );

    // Each scrape is followed by the two store queries it makes, timed alone, so the
    // report says where a slow scrape spends its time.
    let (mut took, mut status, mut depth) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..scrapes {
        let metrics = Metrics::new();
        let t0 = Instant::now();
        let text = metrics
            .render(store)
            .await
            .map_err(|e| CliError::local("cannot render the metrics").cause(e.to_string()))?;
        took.push(ms_since(t0));
        // A scrape that lost jobs would be fast for the wrong reason.
        let counted = queued_in(&text);
        if counted != jobs as u64 {
            return Err(CliError::local(format!(
                "a scrape counted {counted} queued jobs, not {jobs}"
            )));
        }
        let t0 = Instant::now();
        store
            .status()
            .await
            .map_err(|e| CliError::local("cannot read the status").cause(e.to_string()))?;
        status.push(ms_since(t0));
        let t0 = Instant::now();
        store
            .queue_depth()
            .await
            .map_err(|e| CliError::local("cannot read the queue depth").cause(e.to_string()))?;
        depth.push(ms_since(t0));
    }
    for v in [&mut took, &mut status, &mut depth] {
        v.sort_by(f64::total_cmp);
    }
    output::line(format!(
        "of which store queries alone: status (jobs by state) p50 {:.3} ms, queue depth p50 {:.3} ms",
        percentile(&status, 50.0),
        percentile(&depth, 50.0)
    ));
    let (p50, p99) = (percentile(&took, 50.0), percentile(&took, 99.0));
    let max = took.last().copied().unwrap_or(f64::NAN);
    output::line(format!(
        "scrape: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms"
    ));
    output::line(format!("metrics_p50_ms={p50:.3}"));
    Ok(())
}

/// Milliseconds since `t0`.
fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Submits `jobs` queued no-op jobs in batches, cycling through [`CAPABILITIES`].
async fn fill(store: &dyn Store, jobs: usize) -> Result<(), CliError> {
    let mut n = 0;
    while n < jobs {
        let batch: Vec<ParsedJob> = (n..jobs.min(n + SUBMIT_BATCH))
            .map(|i| {
                let mut job = gantry_store::bench::noop_job(i);
                job.spec.capabilities = CAPABILITIES[i % CAPABILITIES.len()]
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                job
            })
            .collect();
        n += batch.len();
        store.submit(batch).await.map_err(|e| {
            CliError::local("cannot submit the benchmark's jobs").cause(e.to_string())
        })?;
    }
    Ok(())
}

/// The sum of the `gantry_queue_depth` samples of an exposition.
fn queued_in(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("gantry_queue_depth{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_jobs_are_summed_over_the_queue_depth_series() {
        let text = "# TYPE gantry_queue_depth gauge\n\
                    gantry_queue_depth{capabilities=\"\"} 3\n\
                    gantry_queue_depth{capabilities=\"docker,gpu\"} 4\n\
                    gantry_jobs{state=\"queued\"} 7\n";
        assert_eq!(queued_in(text), 7);
    }
}
