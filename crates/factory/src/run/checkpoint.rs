//! Work-in-progress checkpoints of a run, and the checkpoint an attempt starts from.

use super::Supervisor;
use crate::agent;
use crate::record::CheckpointState;
use crate::tail::SharedRecord;
use crate::workspace;
use gantry_core::api::Checkpoint;
use gantry_core::{JobId, RunId};
use gantry_protocol::Coordinator;
use std::path::Path;
use std::sync::Arc;

impl Supervisor {
    /// What a checkpoint of this run needs, detached from the supervisor so it can run
    /// beside it.
    pub(super) fn checkpointer(&self, record: &SharedRecord) -> Checkpointer {
        Checkpointer {
            coord: self.ctx.coord.clone(),
            run: self.run_id(),
            epoch: self.epoch(),
            job: self.job(),
            attempt: self.claim.run.attempt,
            repo: self.claim.job.spec.repo.clone(),
            record: record.clone(),
        }
    }
}

/// The checkpoint to start an attempt from: `cp` when its commit is in the cache or
/// can be fetched from the source; otherwise `None` (the attempt starts from its base).
pub(super) async fn start_point(
    data: &Path,
    repo: &str,
    job: JobId,
    cp: &Checkpoint,
) -> Option<Checkpoint> {
    match workspace::fetch_checkpoint(data, repo, job, &cp.commit).await {
        Ok(true) => {
            tracing::info!(commit = %cp.commit, "starting from the job's checkpoint");
            Some(cp.clone())
        }
        Ok(false) => {
            tracing::warn!(commit = %cp.commit, "the job's checkpoint is not reachable from here; starting from the base");
            None
        }
        Err(e) => {
            tracing::warn!(commit = %cp.commit, error = %e, "cannot get the job's checkpoint; starting from the base");
            None
        }
    }
}

/// Takes work-in-progress checkpoints of one run.
pub(super) struct Checkpointer {
    coord: Arc<dyn Coordinator>,
    run: RunId,
    epoch: i64,
    job: JobId,
    attempt: u32,
    repo: String,
    record: SharedRecord,
}

impl Checkpointer {
    /// Commits the worktree's work in progress (unless nothing changed since the last
    /// checkpoint), pushes it to the source repo so any factory can start from it,
    /// reports it as a `run.checkpoint` event and keeps it in the run record.
    pub(super) async fn take(self) -> Result<Option<Checkpoint>, String> {
        let rec = self.record.get();
        let state = rec.checkpoint.clone().unwrap_or_else(|| CheckpointState {
            base: rec.base_commit.clone(),
            commit: rec.base_commit.clone(),
            tree: String::new(),
        });
        let unchanged = if state.tree.is_empty() {
            workspace::tree_of(&rec.cache, &state.commit)
                .await
                .map_err(|e| e.to_string())?
        } else {
            state.tree.clone()
        };
        let (job, attempt) = (self.job, self.attempt);
        let branch = agent::wip_branch(job);
        let message = format!(
            "gantry job {job} attempt {attempt}: work in progress\n\nGantry-Job: {job}\nGantry-Attempt: {attempt}\n"
        );
        let wip = workspace::checkpoint(
            &rec.cache,
            &rec.worktree,
            &rec.artifacts.join("wip.index"),
            &branch,
            &state.commit,
            &unchanged,
            &message,
        )
        .await
        .map_err(|e| e.to_string())?;
        let Some(wip) = wip else {
            tracing::debug!("nothing changed since the last checkpoint");
            return Ok(None);
        };
        let source_ref = workspace::wip_source_ref(job, attempt);
        if let Err(e) =
            workspace::push_checkpoint(&rec.cache, &self.repo, &wip.commit, &source_ref).await
        {
            tracing::warn!(error = %e, "cannot push the checkpoint to the source repo; it stays in this factory's cache");
        }
        let cp = Checkpoint {
            branch,
            base: state.base.clone(),
            commit: wip.commit.clone(),
        };
        self.coord
            .events(self.run, self.epoch, vec![agent::checkpoint_event(&cp)])
            .await
            .map_err(|e| format!("cannot report the checkpoint: {e}"))?;
        self.record.update(|r| {
            r.checkpoint = Some(CheckpointState {
                base: state.base,
                commit: wip.commit,
                tree: wip.tree,
            })
        });
        tracing::info!(commit = %cp.commit, "checkpoint taken");
        Ok(Some(cp))
    }
}
