//! The end of a run: commit and measure, publish, clean up and report.

use super::check::Leave;
use super::{ProcessEnd, RETRY_FIRST, Supervisor};
use crate::process::Exit;
use crate::record::RunRecord;
use crate::tail::SharedRecord;
use crate::workspace;
use gantry_core::api::{FinishReport, MAX_REPORTED_DIFF_BYTES};
use gantry_core::retry::Backoff;
use gantry_core::{JobId, Outcome};
use gantry_protocol::CoordError;
use std::path::Path;
use std::time::Duration;

/// Longest delay between retries of a failed finish.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What became of a finish report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reported {
    /// The server applied it.
    Accepted,
    /// The server refused it, or it was never sent.
    NotAccepted,
    /// It was refused or given up on after a try whose answer never came, which the
    /// server may have applied.
    Uncertain,
}

impl Supervisor {
    /// Commits, measures, cleans up and reports, as the end of the process says.
    pub(super) async fn wrap_up(&mut self, record: &SharedRecord, end: ProcessEnd) {
        if end.left_running {
            return;
        }
        let rec = record.get();
        if let Some(why) = end.abandoned.clone().or_else(|| self.lost()) {
            tracing::warn!(reason = %why, "run abandoned: no commit, no report");
            self.remove_worktree(&rec.cache, &rec.worktree).await;
            record.remove();
            return;
        }
        let mut report = self.first_report(&rec, &end);
        self.commit(&rec, &mut report).await;
        if report.outcome == Some(Outcome::Succeeded) && self.lost().is_none() {
            match self.check(record, &mut report).await {
                Ok(()) => {}
                Err(Leave::Running) => return,
                Err(Leave::Abandoned(why)) => {
                    tracing::warn!(reason = %why, "run abandoned while checking: no report");
                    self.remove_worktree(&rec.cache, &rec.worktree).await;
                    record.remove();
                    return;
                }
            }
        }
        self.publish(&rec.cache, &mut report).await;
        self.remove_worktree(&rec.cache, &rec.worktree).await;
        let published = report.result_ref.clone();
        let reported = match self.lost() {
            Some(why) => {
                tracing::warn!(reason = %why, "lease lost while wrapping up; no report");
                Reported::NotAccepted
            }
            None => self.report(report).await,
        };
        if let Some(published) = published
            && reported == Reported::NotAccepted
        {
            // Nobody will deliver it: the run's own result ref goes. (After an answer
            // that never came, the server may be delivering it right now: it stays.)
            let repo = &self.claim.job.spec.repo;
            match workspace::remove_source_ref(&rec.cache, repo, &published).await {
                Ok(()) => tracing::info!(%published, "unreported result ref removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove the unreported result ref"),
            }
        }
        record.remove();
    }

    /// The finish report as the end of the process decides it, before the commit.
    pub(super) fn first_report(&self, rec: &RunRecord, end: &ProcessEnd) -> FinishReport {
        let mut report = FinishReport {
            epoch: self.epoch(),
            branch: Some(rec.branch.clone()),
            base_commit: Some(rec.base_commit.clone()),
            error: end.error.clone(),
            exit_code: end.exit.and_then(Exit::code),
            ..FinishReport::default()
        };
        report.outcome = Some(match (end.forced, end.verdict) {
            (Some(o), _) => o,
            (None, Some(v)) if end.exit.is_some() => v,
            (None, _) if end.exit.is_some_and(Exit::success) => Outcome::Succeeded,
            (None, _) => Outcome::Failed,
        });
        report.insights = end.insights.clone();
        // A failed agent's own words ("API Error: Unable to connect to API") are the
        // best reason there is, whatever its exit code; without them, an agent that
        // exited 0 but reported failure says what kind of failure it reported.
        if report.outcome == Some(Outcome::Failed)
            && report.error.is_none()
            && let Some(i) = &end.insights
        {
            report.error = match &i.error_message {
                Some(message) => Some(message.clone()),
                None if end.exit.is_some_and(Exit::success) => Some(format!(
                    "the agent reported failure ({})",
                    i.error_kind.as_deref().unwrap_or("no error kind")
                )),
                None => None,
            };
        }
        if report.outcome == Some(Outcome::Failed)
            && report.error.is_none()
            && let Some(exit @ Exit::Signal(_)) = end.exit
        {
            report.error = Some(format!("the command was ended by {exit}"));
        }
        report
    }

    /// Commits the attempt's changes and puts the commit, its figures and its diff in
    /// `report`; a commit that fails fails the run.
    pub(super) async fn commit(&self, rec: &RunRecord, report: &mut FinishReport) {
        let message = commit_message(
            self.job(),
            self.claim.run.attempt,
            &self.claim.job.spec.title,
        );
        let committed = workspace::commit_changes(
            &rec.cache,
            &rec.worktree,
            &rec.branch,
            &rec.base_commit,
            &message,
            &rec.artifacts.join("diff.patch"),
        )
        .await;
        match committed {
            Ok(changes) => {
                report.commit = Some(changes.commit);
                report.files_changed = Some(changes.files_changed);
                report.lines_added = Some(changes.lines_added);
                report.lines_deleted = Some(changes.lines_deleted);
                // The report carries the diff so that any server replica can show it;
                // without it the run still happened, so a read failure only loses that.
                // The patch on disk is redacted first, like every file a run leaves.
                let patch = rec.artifacts.join("diff.patch");
                if let Some(r) = &self.redactor {
                    crate::redact::files(r.clone(), vec![patch.clone()]).await;
                }
                match workspace::reported_diff(&patch, MAX_REPORTED_DIFF_BYTES).await {
                    Ok(diff) => report.diff = Some(diff),
                    Err(e) => tracing::warn!(error = %e, "cannot read the diff to report"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "committing the attempt failed");
                report.outcome = Some(match report.outcome {
                    Some(Outcome::Succeeded) | None => Outcome::Failed,
                    Some(other) => other,
                });
                let msg = format!("committing the attempt's changes failed: {e}");
                report.error = Some(match report.error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
            }
        }
    }

    /// Publishes the commit of a succeeded run in the source repository when the server
    /// delivers it and cannot read this factory's cache, and names the ref in the
    /// report. A publication that fails fails the run: a delivery that cannot happen
    /// must not pass for a success.
    async fn publish(&self, cache: &Path, report: &mut FinishReport) {
        let wanted = self.claim.deliver
            && self.ctx.cfg.publish_results
            && report.outcome == Some(Outcome::Succeeded);
        let Some(commit) = report.commit.clone().filter(|_| wanted) else {
            return;
        };
        // A run whose lease is gone pushes nothing.
        if self.lost().is_some() {
            return;
        }
        let repo = &self.claim.job.spec.repo;
        match workspace::publish_result(cache, repo, &commit, self.run_id()).await {
            Ok(published) => {
                tracing::info!(%published, %commit, "result published for delivery");
                report.result_ref = Some(published);
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing the result for delivery failed");
                report.outcome = Some(Outcome::Failed);
                let msg = format!(
                    "the run succeeded, but its commit cannot be delivered: publishing it \
                     in the source repository failed: {e}"
                );
                report.error = Some(match report.error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
            }
        }
    }

    pub(super) async fn remove_worktree(&self, cache: &Path, wt: &Path) {
        if let Err(e) = workspace::remove_worktree(cache, wt).await {
            tracing::warn!(path = %wt.display(), error = %e, "cannot remove worktree");
        }
    }

    /// Removes a worktree directory left by a failed or abandoned setup.
    pub(super) async fn cleanup_abandoned(&self, wt: &Path) {
        let cache = workspace::cache_dir(self.data(), &self.claim.job.spec.repo);
        if cache.join("HEAD").is_file() {
            self.remove_worktree(&cache, wt).await;
        } else if tokio::fs::symlink_metadata(wt).await.is_ok() {
            let _ = tokio::fs::remove_dir_all(wt).await;
        }
    }

    /// Sends the finish report, retrying transient failures while the lease holds.
    pub(super) async fn report(&self, report: FinishReport) -> Reported {
        let run = self.run_id();
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let shutdown = self.ctx.shutdown.clone();
        if let Some(why) = self.lost() {
            tracing::warn!(reason = %why, "lease lost; no report");
            return Reported::NotAccepted;
        }
        // Set once a try failed in transit: the server may have applied it anyway.
        let mut uncertain = false;
        let not_accepted = |uncertain: bool| {
            if uncertain {
                Reported::Uncertain
            } else {
                Reported::NotAccepted
            }
        };
        loop {
            let mut finished = self.gate.lock().await;
            match self.ctx.coord.finish(run, report.clone()).await {
                Ok(()) => {
                    *finished = true;
                    tracing::info!(outcome = ?report.outcome, "run finished");
                    return Reported::Accepted;
                }
                Err(CoordError::Unavailable(e)) => {
                    uncertain = true;
                    if let Some(why) = self.lost() {
                        tracing::warn!(error = %e, reason = %why, "finish not delivered before the lease was lost");
                        return not_accepted(uncertain);
                    }
                    if *shutdown.borrow() {
                        tracing::warn!(error = %e, "finish not delivered before shutdown");
                        return not_accepted(uncertain);
                    }
                    tracing::warn!(error = %e, "finish failed; retrying");
                    // Renewals go on between tries: the lease must hold for the next.
                    drop(finished);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "finish refused");
                    return not_accepted(uncertain);
                }
            }
        }
    }
}

pub(super) fn commit_message(job: JobId, attempt: u32, title: &str) -> String {
    let title: String = title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "gantry job {job} attempt {attempt}: {}\n\nGantry-Job: {job}\nGantry-Attempt: {attempt}\n",
        title.trim()
    )
}
