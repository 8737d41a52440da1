//! Delivery of a finished run's commit to its source repository, and removal of the
//! result refs factories published.

use super::Service;
use super::chores::Chores;
use crate::error::ApiError;
use crate::metrics::{FencedWrite, Metrics};
use gantry_core::event::{DeliveryFailed, DeliveryPushed, NewEvent};
use gantry_core::{Job, JobId, JobState, Outcome, RunId};
use gantry_protocol::{FinishReport, result_ref};
use gantry_store::{Store, StoreError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The branch a succeeded job is delivered to in its source repository.
pub fn delivery_branch(job: JobId) -> String {
    format!("gantry/{job}")
}

/// One async lock per source repository, so two deliveries never push into the same
/// repository at once.
pub(super) type DeliveryLocks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// A finish and the delivery it leads to, with everything owned, so that both run to
/// their end in a task of their own whether or not the factory waits for the answer.
pub(super) struct FinishAndDeliver {
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) locks: Arc<DeliveryLocks>,
    pub(super) chores: Arc<Chores>,
    pub(super) data_dir: PathBuf,
    pub(super) push: bool,
}

impl FinishAndDeliver {
    pub(super) async fn run(
        self,
        run: RunId,
        outcome: Outcome,
        report: FinishReport,
    ) -> Result<Job, ApiError> {
        let commit = report.commit.clone();
        let published = report.result_ref.clone();
        let insights = report.insights.clone();
        let finished = self.store.finish(run, report).await;
        if let (Err(StoreError::StaleLease { job, .. }), Some(_)) = (&finished, &published) {
            // The report's ref was checked to be this run's own (`check_report`).
            leftover_result_ref(
                &self.chores,
                self.store.clone(),
                self.locks.clone(),
                self.data_dir.clone(),
                *job,
                run,
            );
        }
        let job = finished.map_err(|e| self.metrics.stale_checked(FencedWrite::Finish, e))?;
        let (engine, model) = (job.spec.engine.name(), job.spec.model.as_deref());
        self.metrics
            .run_finished(outcome, engine, model, insights.as_ref());
        let delivers =
            outcome == Outcome::Succeeded && job.state == JobState::Succeeded && self.push;
        if delivers && commit.is_none() {
            tracing::info!(job = %job.id, %run, "nothing to deliver: no commit");
        }
        let commit = commit.filter(|_| delivers);
        if commit.is_none() && published.is_none() {
            return Ok(job);
        }
        let delivery = Delivery {
            store: self.store.clone(),
            data_dir: self.data_dir.clone(),
            lock: delivery_lock(&self.locks, &job.spec.repo),
            job: job.id,
            repo: job.spec.repo.clone(),
            run,
            commit,
            published,
        };
        delivery.run().await;
        Ok(job)
    }
}

/// Removes the result ref a refused (stale) finish named, in a task of its own so the
/// 409 answer waits for no git: the ref is a leftover once the run was reaped (its
/// recorded outcome is `lost`), since a reaped run's finish can never be accepted. Any
/// other recorded outcome means a finish of the run was accepted and this one is a
/// repeat: the delivery of the accepted one owns the ref (and keeps it when it fails),
/// so it is left alone; so is the ref of a run still running (a wrong epoch).
fn leftover_result_ref(
    chores: &Chores,
    store: Arc<dyn Store>,
    locks: Arc<DeliveryLocks>,
    data_dir: PathBuf,
    job: JobId,
    run: RunId,
) {
    chores.spawn(async move {
        match store.run(run).await {
            Ok(r) if r.outcome == Some(Outcome::Lost) => {}
            Ok(r) => {
                tracing::debug!(%job, %run, outcome = ?r.outcome,
                    "result ref of a refused finish kept: the run was not reaped");
                return;
            }
            Err(e) => {
                tracing::warn!(%job, %run, error = %e,
                    "cannot read the run of a refused finish; its result ref stays");
                return;
            }
        }
        remove_result_ref(&*store, &locks, &data_dir, job, run).await;
    });
}

/// Removes the result refs the reaped `runs` may have published before their factory
/// died or stopped, each in a task of its own so a slow git server never delays the
/// reaper. A run that published nothing costs one `git ls-remote`.
pub(crate) fn remove_reaped_result_refs(service: &Service, runs: &[RunId]) {
    // A server that does not push asks no factory to publish (`Claim::deliver`).
    if !service.cfg.push {
        return;
    }
    for &run in runs {
        let (store, locks) = (service.store.clone(), service.delivery_locks.clone());
        let data_dir = service.cfg.data_dir.clone();
        service.chores.spawn(async move {
            match store.run(run).await {
                Ok(r) => remove_result_ref(&*store, &locks, &data_dir, r.job_id, run).await,
                Err(e) => tracing::warn!(%run, error = %e,
                    "cannot read a reaped run; its result ref, if any, stays"),
            }
        });
    }
}

/// Removes [`result_ref`] of `run` from the source of `job`, if it is there, under the
/// repository's delivery lock; best effort, a failure is only logged. Several replicas
/// may do it at once: the ref being gone already is no error.
async fn remove_result_ref(
    store: &dyn Store,
    locks: &DeliveryLocks,
    data_dir: &Path,
    job: JobId,
    run: RunId,
) {
    let repo = match store.job(job).await {
        Ok(j) => j.spec.repo,
        Err(e) => {
            tracing::warn!(%job, %run, error = %e,
                "cannot read the job of a leftover result ref; the ref, if any, stays");
            return;
        }
    };
    let published = result_ref(run);
    let lock = delivery_lock(locks, &repo);
    let _held = lock.lock().await;
    match gantry_git::remove_result_ref(data_dir, &repo, &published).await {
        Ok(true) => tracing::info!(%job, %run, %repo, %published, "leftover result ref removed"),
        Ok(false) => tracing::debug!(%job, %run, %repo, %published, "no leftover result ref"),
        Err(e) => tracing::warn!(%job, %run, %repo, %published, error = %e,
            "cannot remove the leftover result ref"),
    }
}

/// The lock of deliveries into `repo`. Locks nobody holds or waits for (the map's
/// own reference is their only one) are dropped on the way, so the map holds only the
/// repositories being delivered to, not every repository ever seen.
pub(super) fn delivery_lock(locks: &DeliveryLocks, repo: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = locks.lock().unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    locks.entry(repo.to_string()).or_default().clone()
}

/// One delivery, after an accepted finish: everything it needs, owned, so it runs in a
/// task of its own.
struct Delivery {
    store: Arc<dyn Store>,
    data_dir: PathBuf,
    /// The lock of deliveries into `repo`.
    lock: Arc<tokio::sync::Mutex<()>>,
    job: JobId,
    repo: String,
    run: RunId,
    /// The commit to deliver; `None` when nothing is delivered and only the published
    /// result ref is to be removed.
    commit: Option<String>,
    /// Where the factory published the commit in the source.
    published: Option<String>,
}

impl Delivery {
    /// Under the repository's lock: pushes the commit as `gantry/<job>`, removes the
    /// published result ref (best effort: it is only a leftover by then), and records
    /// `delivery.pushed` or `delivery.failed`. A failed delivery keeps the ref, which
    /// holds the only copy of the commit outside the factory; the event names it.
    async fn run(self) {
        let _held = self.lock.lock().await;
        let Some(commit) = &self.commit else {
            self.remove_published().await;
            return;
        };
        let (job, repo) = (self.job, self.repo.as_str());
        let branch = delivery_branch(job);
        let result = gantry_git::deliver_published(
            &self.data_dir,
            repo,
            commit,
            &branch,
            self.published.as_deref(),
        )
        .await;
        let event = match result {
            Ok(()) => {
                tracing::info!(%job, %repo, %branch, %commit, "delivered");
                self.remove_published().await;
                NewEvent::of(&DeliveryPushed {
                    repo: repo.to_string(),
                    branch,
                    commit: commit.clone(),
                    result_ref: self.published.clone(),
                })
            }
            Err(e) => {
                tracing::warn!(%job, %repo, %branch, error = %e, "delivery failed");
                NewEvent::of(&DeliveryFailed {
                    repo: repo.to_string(),
                    branch,
                    commit: commit.clone(),
                    result_ref: self.published.clone(),
                    error: e.to_string(),
                })
            }
        };
        if let Err(e) = self
            .store
            .record_event(Some(job), Some(self.run), event)
            .await
        {
            tracing::error!(%job, error = %e, "cannot record the delivery event");
        }
    }

    /// Removes the published result ref from the source, if there is one; a failure
    /// is only logged.
    async fn remove_published(&self) {
        let Some(published) = &self.published else {
            return;
        };
        let (job, repo) = (self.job, self.repo.as_str());
        match gantry_git::remove_published(&self.data_dir, repo, published).await {
            Ok(()) => tracing::debug!(%job, %repo, %published, "result ref removed"),
            Err(e) => {
                tracing::warn!(%job, %repo, %published, error = %e, "cannot remove the result ref")
            }
        }
    }
}
