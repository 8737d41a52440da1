//! The queue benchmark: how fast a store burns down no-op jobs through the real
//! protocol (claim with a lease, then a fenced finish), with concurrent workers.

use crate::{Result, Store, StoreError};
use gantry_core::api::{FinishReport, RegisterFactory};
use gantry_core::{JobSpec, JobState, Outcome, ParsedJob};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs stored per submit call while preparing the queue.
const SUBMIT_BATCH: usize = 1_000;

/// Lease length of the benchmark's claims: long enough never to expire mid-run.
const LEASE_TTL: Duration = Duration::from_secs(300);

/// What [`queue`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueReport {
    /// Jobs burned down.
    pub jobs: usize,
    /// Concurrent workers.
    pub workers: usize,
    /// Wall time of the burn-down (submission excluded).
    pub elapsed: Duration,
    /// Jobs claimed and finished per second.
    pub jobs_per_s: f64,
    /// Median claim latency in milliseconds (a worker's first claim, then each
    /// finish-and-claim call).
    pub p50_claim_ms: f64,
    /// 99th percentile claim latency in milliseconds.
    pub p99_claim_ms: f64,
}

impl fmt::Display for QueueReport {
    /// A summary line, then the machine-readable last line
    /// `jobs_per_s=<x> p50_claim_ms=<y> p99_claim_ms=<z>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "burned down {} jobs with {} workers in {:.3} s",
            self.jobs,
            self.workers,
            self.elapsed.as_secs_f64()
        )?;
        write!(
            f,
            "jobs_per_s={:.0} p50_claim_ms={:.3} p99_claim_ms={:.3}",
            self.jobs_per_s, self.p50_claim_ms, self.p99_claim_ms
        )
    }
}

/// A no-op command job, as a job file would give it.
pub fn noop_job(n: usize) -> ParsedJob {
    ParsedJob {
        file: format!("bench-{n}.md"),
        spec: JobSpec::command(&format!("bench job {n}"), "/dev/null", &["true"]),
        field_lines: BTreeMap::new(),
    }
}

/// Submits `jobs` no-op command jobs (not timed), registers `workers` factories, then
/// runs `workers` concurrent tasks that each claim a job, then, until nothing is left to
/// claim, finish it with outcome `succeeded` under the claim's epoch and claim the next
/// in one [`Store::finish_and_claim`] call (timed as the claim latency: the first claim
/// alone, then each finish-and-claim). Every finished job is checked to have succeeded.
///
/// Run it on a store whose queue holds nothing else: every claimed job counts.
pub async fn queue(store: Arc<dyn Store>, jobs: usize, workers: usize) -> Result<QueueReport> {
    let workers = workers.max(1);
    let mut n = 0;
    while n < jobs {
        let batch: Vec<ParsedJob> = (n..jobs.min(n + SUBMIT_BATCH)).map(noop_job).collect();
        n += batch.len();
        store.submit(batch).await?;
    }
    let mut factories = Vec::with_capacity(workers);
    for w in 0..workers {
        let reg = RegisterFactory {
            name: format!("bench-worker-{w}"),
            seats: 1,
            capabilities: Vec::new(),
        };
        factories.push(store.register_factory(&reg).await?);
    }

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for factory in factories {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut claims = Vec::new();
            let t0 = Instant::now();
            let mut next = store.claim(factory, LEASE_TTL).await?;
            claims.push(t0.elapsed());
            while let Some(claim) = next {
                let report = FinishReport {
                    epoch: claim.run.epoch,
                    outcome: Some(Outcome::Succeeded),
                    exit_code: Some(0),
                    ..FinishReport::default()
                };
                let t0 = Instant::now();
                let (state, claimed) = store
                    .finish_and_claim(claim.run.id, report, factory, LEASE_TTL)
                    .await?;
                claims.push(t0.elapsed());
                if state != JobState::Succeeded {
                    return Err(StoreError::Backend(format!(
                        "benchmark job {} ended {state} after a successful finish",
                        claim.job.id
                    )));
                }
                next = claimed;
            }
            Ok::<_, StoreError>(claims)
        }));
    }
    let mut latencies = Vec::with_capacity(jobs + workers);
    for task in tasks {
        let claims = task
            .await
            .map_err(|e| StoreError::Backend(format!("benchmark worker panicked: {e}")))??;
        latencies.extend(claims);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(QueueReport {
        jobs,
        workers,
        elapsed,
        jobs_per_s: jobs as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_claim_ms: percentile_ms(&latencies, 0.50),
        p99_claim_ms: percentile_ms(&latencies, 0.99),
    })
}

/// The `q` quantile (nearest rank) of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 0.5), 50.0);
        assert_eq!(percentile_ms(&d, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn report_ends_with_the_machine_line() {
        let r = QueueReport {
            jobs: 10,
            workers: 2,
            elapsed: Duration::from_millis(5),
            jobs_per_s: 2000.0,
            p50_claim_ms: 0.1234,
            p99_claim_ms: 1.5,
        };
        let text = r.to_string();
        assert_eq!(
            text.lines().last(),
            Some("jobs_per_s=2000 p50_claim_ms=0.123 p99_claim_ms=1.500")
        );
    }
}
