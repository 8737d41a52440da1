//! Runs: claims, lease renewals, uploaded events and finishes, each fenced.

use super::delivery::FinishAndDeliver;
use super::{MAX_CLAIM_WAIT, POLL_FALLBACK, Service, stopped};
use crate::error::ApiError;
use crate::metrics::{ClaimResult, FencedWrite, Metrics};
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, Job, RunId};
use gantry_protocol::{Claim, FinishReport, MAX_REPORTED_DIFF_BYTES, Renewed, result_ref};
use gantry_store::StoreError;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Event kind prefixes only the server writes: a worker uploading one could forge a
/// delivery or a lease record, so such uploads are refused.
const SERVER_EVENT_PREFIXES: [&str; 4] = ["job.", "lease.", "delivery.", "queue."];

/// Runs `write`, a fenced store write, to its end in a task of its own and counts a
/// refusal. A handler is dropped when its client hangs up; the store may commit the
/// write (or record its refusal) all the same, and the count, like a delivery after
/// an accepted finish, must not depend on the client staying.
async fn fenced<T: Send + 'static>(
    metrics: &Arc<Metrics>,
    op: FencedWrite,
    write: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let metrics = metrics.clone();
    tokio::spawn(async move { write.await.map_err(|e| metrics.stale_checked(op, e)) })
        .await
        .map_err(|e| StoreError::Backend(format!("the {op:?} write task failed: {e}")))?
}

impl Service {
    /// Claims a job for `factory`, waiting up to `wait` (capped at [`MAX_CLAIM_WAIT`])
    /// for one to become claimable. Wakes on every store change, and re-polls every
    /// [`POLL_FALLBACK`] for changes that signal nothing. `None` when nothing came or the
    /// server is shutting down.
    pub async fn claim(
        &self,
        factory: FactoryId,
        wait: Duration,
    ) -> Result<Option<Claim>, ApiError> {
        let deadline = Instant::now() + wait.min(MAX_CLAIM_WAIT);
        let mut changes = self.store.changes();
        let mut shutdown = self.shutdown.clone();
        loop {
            // Mark the current change as seen before querying, so a change committed
            // while the query runs still wakes the wait below.
            changes.borrow_and_update();
            let started = Instant::now();
            let claimed = self.store.claim(factory, self.cfg.lease_ttl).await;
            let took = started.elapsed();
            self.metrics.claim_observed(ClaimResult::of(&claimed), took);
            if let Some(mut claim) = claimed? {
                // The store does not know the server's push setting: a factory that
                // cannot share the server's cache publishes the result only when it
                // is delivered.
                claim.deliver = self.cfg.push;
                return Ok(Some(claim));
            }
            let now = Instant::now();
            if now >= deadline || *shutdown.borrow() {
                return Ok(None);
            }
            let nap = (deadline - now).min(POLL_FALLBACK);
            tokio::select! {
                changed = changes.changed() => {
                    // A closed channel means the store is going away: fall back to polling.
                    if changed.is_err() {
                        tokio::time::sleep(nap).await;
                    }
                }
                _ = tokio::time::sleep(nap) => {}
                _ = stopped(&mut shutdown) => return Ok(None),
            }
        }
    }

    /// Renews a run's lease (fenced).
    pub async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, ApiError> {
        let (store, ttl) = (self.store.clone(), self.cfg.lease_ttl);
        let renew = async move { store.renew(run, epoch, ttl).await };
        Ok(fenced(&self.metrics, FencedWrite::Renew, renew).await?)
    }

    /// Appends events of a run (fenced). Kinds only the server writes are refused.
    pub async fn append_events(
        &self,
        run: RunId,
        epoch: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), ApiError> {
        for (i, ev) in events.iter().enumerate() {
            let well_formed = !ev.kind.is_empty()
                && ev.kind.len() <= 64
                && ev
                    .kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !well_formed {
                return Err(ApiError::bad_request(format!(
                    "field `events[{i}].kind` is {:?}: a kind is 1 to 64 characters of \
                     letters, digits, `.`, `_` and `-`",
                    ev.kind
                ))
                .with_details(json!({ "field": format!("events[{i}].kind"), "value": ev.kind })));
            }
            if let Some(prefix) = SERVER_EVENT_PREFIXES
                .iter()
                .find(|p| ev.kind.starts_with(*p))
            {
                return Err(ApiError::bad_request(format!(
                    "field `events[{i}].kind` is {:?}: kinds starting with {prefix:?} are \
                     written by the server only",
                    ev.kind
                ))
                .with_details(json!({ "field": format!("events[{i}].kind"), "value": ev.kind })));
            }
        }
        let counts = crate::metrics::checks::CheckCounts::of(&events);
        let store = self.store.clone();
        let append = async move { store.append_events(run, epoch, events).await };
        fenced(&self.metrics, FencedWrite::Events, append).await?;
        self.metrics.checks_observed(counts);
        Ok(())
    }

    /// Records the end of a run (fenced) and, when it succeeded with a commit and push
    /// is on, delivers the commit to the source repository as `gantry/<job>`: from this
    /// server's cache, or fetched from the result ref the factory published in the
    /// source ([`FinishReport::result_ref`]), which is then removed.
    ///
    /// Delivery happens only after the store accepted the finish under the run's epoch,
    /// so a stale worker can never cause a push. It runs in a task of its own, awaited
    /// here: a factory that hangs up mid-delivery cannot cut it short.
    pub async fn finish(&self, run: RunId, report: FinishReport) -> Result<Job, ApiError> {
        let Some(outcome) = report.outcome else {
            return Err(ApiError::bad_request("field `outcome` is missing")
                .with_details(json!({ "field": "outcome" })));
        };
        check_report(run, &report)?;
        let end = FinishAndDeliver {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            locks: self.delivery_locks.clone(),
            chores: self.chores.clone(),
            data_dir: self.cfg.data_dir.clone(),
            push: self.cfg.push,
        };
        match tokio::spawn(end.run(run, outcome, report)).await {
            Ok(job) => Ok(job?),
            Err(e) => Err(ApiError::internal(format!(
                "the finish of run {run} failed: {e}"
            ))),
        }
    }
}

/// Refuses a finish report the store must not keep: a diff over
/// [`MAX_REPORTED_DIFF_BYTES`], or a result ref other than the run's own (the server
/// fetches and deletes that ref in the source, so a report must not name another).
fn check_report(run: RunId, report: &FinishReport) -> Result<(), ApiError> {
    if let Some(diff) = &report.diff
        && diff.len() > MAX_REPORTED_DIFF_BYTES
    {
        return Err(ApiError::bad_request(format!(
            "field `diff` is {} bytes: a reported diff is at most {MAX_REPORTED_DIFF_BYTES} \
             bytes ({} MiB)",
            diff.len(),
            MAX_REPORTED_DIFF_BYTES >> 20
        ))
        .with_hint("cut the diff at a line end below the limit and mark the cut")
        .with_details(json!({ "field": "diff", "bytes": diff.len(),
                              "max_bytes": MAX_REPORTED_DIFF_BYTES })));
    }
    if let Some(published) = &report.result_ref {
        let expected = result_ref(run);
        if *published != expected {
            return Err(ApiError::bad_request(format!(
                "field `result_ref` is {published:?}: run {run} publishes its result at \
                 {expected:?} only"
            ))
            .with_details(json!({ "field": "result_ref", "value": published,
                                  "expected": expected })));
        }
    }
    Ok(())
}
