//! Event kinds: the vocabulary of the append-only event log.
//!
//! Events are per job (ordered by `seq`) and also carry a global id that orders all
//! events for streams. Kinds are dotted names; their `data` is a JSON object.

use crate::id::{JobId, RunId};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// A job was stored. Data: `{title, state}`.
pub const JOB_SUBMITTED: &str = "job.submitted";
/// A job changed state. Data: `{from, to, reason?}`.
pub const JOB_STATE: &str = "job.state";
/// A cancel was requested for a running job. Data: `{}`.
pub const JOB_CANCEL_REQUESTED: &str = "job.cancel_requested";
/// A kill was requested for a running job. Data: `{}`.
pub const JOB_KILL_REQUESTED: &str = "job.kill_requested";
/// A factory claimed the job. Data: `{run, attempt, epoch, factory, lease_expires_at}`.
pub const RUN_CLAIMED: &str = "run.claimed";
/// The factory started the process. Data: `{pid, branch, workspace, base_commit}`.
pub const RUN_STARTED: &str = "run.started";
/// Output of the process. Data: `{stream: "stdout"|"stderr", text}`.
pub const RUN_OUTPUT: &str = "run.output";
/// The attempt ended. Data: `{outcome, exit_code, branch, commit, files_changed, ...}`.
pub const RUN_FINISHED: &str = "run.finished";
/// A lease expired and the reaper took the job back. Data: `{run, epoch}`.
pub const LEASE_EXPIRED: &str = "lease.expired";
/// A write from a worker under an old epoch was refused.
/// Data: `{run, epoch, current_epoch, op}`.
pub const STALE_WRITE_REJECTED: &str = "lease.stale_write_rejected";
/// The server pushed the result branch. Data: `{repo, branch, commit}`.
pub const DELIVERY_PUSHED: &str = "delivery.pushed";
/// Pushing the result branch failed. Data: `{repo, branch, error}`.
pub const DELIVERY_FAILED: &str = "delivery.failed";
/// Claiming was paused (job-less event). Data: `{}`.
pub const QUEUE_PAUSED: &str = "queue.paused";
/// Claiming was resumed (job-less event). Data: `{}`.
pub const QUEUE_RESUMED: &str = "queue.resumed";
/// A run committed its work in progress; payload `{wip_branch, wip_base, wip_commit}`.
/// The store records it on the job, so the next attempt starts from it.
pub const RUN_CHECKPOINT: &str = "run.checkpoint";
/// A snapshot of a running attempt's insights (payload: the insights); the store keeps
/// the latest one on the run, so `show` has live figures.
pub const AGENT_INSIGHTS: &str = "agent.insights";
/// A run passed a limit of its budget and was stopped; payload names the limit and figures.
pub const RUN_BUDGET_EXCEEDED: &str = "run.budget_exceeded";
/// A factory did not claim because free memory or disk is under its threshold.
pub const FACTORY_ADMISSION: &str = "factory.admission";

/// An event to append, as a worker or the server writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Dotted kind, e.g. [`RUN_OUTPUT`].
    pub kind: String,
    /// Kind-specific JSON object.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Global, strictly increasing id (the SSE `id:`).
    pub id: i64,
    /// The job, or `None` for queue-wide events.
    pub job_id: Option<JobId>,
    /// The run the event belongs to, if any.
    pub run_id: Option<RunId>,
    /// Position in the job's own log (1-based), 0 for job-less events.
    pub seq: i64,
    /// Dotted kind.
    pub kind: String,
    /// When it was recorded.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub at: Millis,
    /// Kind-specific JSON object.
    pub data: serde_json::Value,
}
