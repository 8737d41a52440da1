//! Event kinds: the vocabulary of the append-only event log.
//!
//! Events are per job (ordered by `seq`) and also carry a global id that orders all
//! events for streams. Kinds are dotted names; their `data` is a JSON object.
//!
//! Each kind has a typed payload (a [`Payload`]: [`JobSubmitted`], [`RunStarted`], ...)
//! whose fields are the keys of its `data`, exactly as stored and served. Writers build
//! events with [`NewEvent::of`] and readers take the data back with
//! [`Event::payload`], so no kind is written with `json!` and read back by key name.

use crate::id::{FactoryId, JobId, RunId};
use crate::state::{JobState, Outcome};
use crate::time::Millis;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
/// The factory's egress proxy refused a connection of a run with `network: model`.
/// Data: `{host, port, reason}`.
pub const SANDBOX_EGRESS_DENIED: &str = "sandbox.egress_denied";
/// A factory did not claim because free memory or disk is under its threshold. No
/// payload: nothing writes it yet (a factory's admission travels in its heartbeats).
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

impl NewEvent {
    /// The event carrying `payload`, of its kind [`Payload::KIND`].
    pub fn of<P: Payload>(payload: &P) -> NewEvent {
        NewEvent {
            kind: P::KIND.to_string(),
            // Payloads are structs of strings, numbers, options and lists: serializing
            // them into a JSON value cannot fail.
            data: serde_json::to_value(payload).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The data as the payload `P`, when the event is of its kind.
    pub fn payload<P: Payload>(&self) -> Result<P, PayloadError> {
        read(&self.kind, &self.data)
    }
}

impl Event {
    /// Whether the event is of the kind of payload `P`.
    pub fn is<P: Payload>(&self) -> bool {
        self.kind == P::KIND
    }

    /// The data as the payload `P`, when the event is of its kind.
    pub fn payload<P: Payload>(&self) -> Result<P, PayloadError> {
        read(&self.kind, &self.data)
    }
}

/// The typed data of one event kind: it serializes to the `data` object events of kind
/// [`Payload::KIND`] carry, field for field.
pub trait Payload: Serialize + DeserializeOwned {
    /// The dotted kind whose data this is.
    const KIND: &'static str;

    /// The data as JSON text, as the stores keep it.
    fn text(&self) -> String {
        // Payloads are structs of strings, numbers, options and lists: serializing
        // them cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "null".to_string())
    }
}

/// Checks that `data` fits the payload of `kind`, for every kind with a payload; data
/// of other kinds (a factory's own) passes. Tests use it to hold every writer, in SQL
/// or in Rust, to the payload types.
pub fn check_known(kind: &str, data: &serde_json::Value) -> Result<(), PayloadError> {
    fn fits<P: Payload>(data: &serde_json::Value) -> Result<(), PayloadError> {
        read::<P>(P::KIND, data).map(drop)
    }
    match kind {
        JOB_SUBMITTED => fits::<JobSubmitted>(data),
        JOB_STATE => fits::<JobStateChanged>(data),
        JOB_CANCEL_REQUESTED => fits::<JobCancelRequested>(data),
        JOB_KILL_REQUESTED => fits::<JobKillRequested>(data),
        RUN_CLAIMED => fits::<RunClaimed>(data),
        RUN_STARTED => fits::<RunStarted>(data),
        RUN_OUTPUT => fits::<RunOutput>(data),
        RUN_FINISHED => fits::<RunFinished>(data),
        LEASE_EXPIRED => fits::<LeaseExpired>(data),
        STALE_WRITE_REJECTED => fits::<StaleWriteRejected>(data),
        DELIVERY_PUSHED => fits::<DeliveryPushed>(data),
        DELIVERY_FAILED => fits::<DeliveryFailed>(data),
        QUEUE_PAUSED => fits::<QueuePaused>(data),
        QUEUE_RESUMED => fits::<QueueResumed>(data),
        RUN_CHECKPOINT => fits::<RunCheckpoint>(data),
        AGENT_INSIGHTS => fits::<crate::engine::Insights>(data),
        RUN_BUDGET_EXCEEDED => fits::<RunBudgetExceeded>(data),
        SANDBOX_EGRESS_DENIED => fits::<SandboxEgressDenied>(data),
        RUN_CHECKING => fits::<RunChecking>(data),
        RUN_FIX_ROUND => fits::<RunFixRound>(data),
        GATE_STARTED => fits::<GateStarted>(data),
        GATE_PASSED => fits::<GatePassed>(data),
        GATE_FAILED => fits::<GateFailed>(data),
        SECRET_FOUND => fits::<SecretFound>(data),
        CHECK_CONFLICT => fits::<CheckConflict>(data),
        CHECK_REBASED => fits::<CheckRebased>(data),
        REVIEW_STARTED => fits::<ReviewStarted>(data),
        REVIEW_PASSED => fits::<ReviewPassed>(data),
        REVIEW_FAILED => fits::<ReviewFailed>(data),
        _ => Ok(()),
    }
}

/// Why an event's data could not be read as a payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The event is of another kind.
    #[error("the event is a {actual:?}, not a {expected:?}")]
    WrongKind {
        /// The payload's kind.
        expected: &'static str,
        /// The event's kind.
        actual: String,
    },
    /// The data does not have the payload's shape.
    #[error("the data of a {kind:?} event does not fit its payload: {source}")]
    Data {
        /// The kind.
        kind: &'static str,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
}

/// `data` of an event of kind `kind` as the payload `P`.
pub(crate) fn read<P: Payload>(kind: &str, data: &serde_json::Value) -> Result<P, PayloadError> {
    if kind != P::KIND {
        return Err(PayloadError::WrongKind {
            expected: P::KIND,
            actual: kind.to_string(),
        });
    }
    P::deserialize(data).map_err(|source| PayloadError::Data {
        kind: P::KIND,
        source,
    })
}

/// Declares the payload struct of one kind.
macro_rules! payload {
    ($(#[$doc:meta])* $name:ident = $kind:ident { $($body:tt)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct $name { $($body)* }

        impl Payload for $name {
            const KIND: &'static str = $kind;
        }
    };
}
// The checking stage's kinds, declared with the macro above (in scope below it).
mod check;
pub use check::*;

payload! {
    /// Data of [`JOB_SUBMITTED`].
    JobSubmitted = JOB_SUBMITTED {
        /// The job's title.
        pub title: String,
        /// The state it was stored in (`queued` or `blocked`).
        pub state: JobState,
    }
}

payload! {
    /// Data of [`JOB_STATE`]. The reason is always written, `null` when there is none.
    JobStateChanged = JOB_STATE {
        /// The state before.
        pub from: JobState,
        /// The state after.
        pub to: JobState,
        /// Why, when the change needs saying (a failed dependency, a lost lease).
        pub reason: Option<String>,
    }
}

payload! {
    /// Data of [`JOB_CANCEL_REQUESTED`]: none.
    JobCancelRequested = JOB_CANCEL_REQUESTED {}
}

payload! {
    /// Data of [`JOB_KILL_REQUESTED`]: none.
    JobKillRequested = JOB_KILL_REQUESTED {}
}

payload! {
    /// Data of [`RUN_CLAIMED`].
    RunClaimed = RUN_CLAIMED {
        /// The new run.
        pub run: RunId,
        /// Its attempt number (1-based).
        pub attempt: u32,
        /// The job's epoch the run holds its lease under.
        pub epoch: i64,
        /// The factory that claimed it.
        pub factory: FactoryId,
        /// When the lease expires unless renewed (Unix milliseconds).
        pub lease_expires_at: Millis,
    }
}

payload! {
    /// Data of [`RUN_STARTED`].
    RunStarted = RUN_STARTED {
        /// Pid of the shim that leads the run's process group.
        pub pid: i32,
        /// The run's process group (the shim's pid).
        pub pgid: i32,
        /// The attempt branch.
        pub branch: String,
        /// The worktree.
        pub workspace: PathBuf,
        /// The commit the attempt starts from.
        pub base_commit: String,
        /// The names of the secrets the agent's process received (the job's
        /// `secrets`), never their values; left out when there are none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub secrets: Vec<String>,
        /// The id of the Docker container the run's process runs in (docker sandbox
        /// only; `pid` is then the container's first process as the host sees it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub container: Option<String>,
    }
}

/// Which output stream a [`RunOutput`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// The stream's name on the wire: `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

payload! {
    /// Data of [`RUN_OUTPUT`]: one piece of a stream's text.
    RunOutput = RUN_OUTPUT {
        /// The stream.
        pub stream: OutputStream,
        /// The text (lossy UTF-8).
        pub text: String,
        /// Byte offset of the piece in the stream's file (absent in events of older
        /// factories).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub offset: Option<u64>,
    }
}

payload! {
    /// Data of [`RUN_FINISHED`]: the finish report as the store kept it.
    RunFinished = RUN_FINISHED {
        /// How the attempt ended.
        pub outcome: Outcome,
        /// The process's exit code, when it exited.
        pub exit_code: Option<i32>,
        /// What went wrong, if anything.
        pub error: Option<String>,
        /// The attempt branch.
        pub branch: Option<String>,
        /// The commit the attempt started from.
        pub base_commit: Option<String>,
        /// The commit holding its changes.
        pub commit: Option<String>,
        /// Files changed.
        pub files_changed: Option<u32>,
        /// Lines added.
        pub lines_added: Option<u32>,
        /// Lines deleted.
        pub lines_deleted: Option<u32>,
        /// What the agent reported, for agent engines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub insights: Option<crate::engine::Insights>,
    }
}

payload! {
    /// Data of [`LEASE_EXPIRED`].
    LeaseExpired = LEASE_EXPIRED {
        /// The run whose lease expired.
        pub run: RunId,
        /// The epoch it held.
        pub epoch: i64,
    }
}

payload! {
    /// Data of [`STALE_WRITE_REJECTED`].
    StaleWriteRejected = STALE_WRITE_REJECTED {
        /// The run that wrote.
        pub run: RunId,
        /// The epoch it wrote under.
        pub epoch: i64,
        /// The job's epoch now.
        pub current_epoch: i64,
        /// The refused operation (`renew`, `events`, `finish`).
        pub op: String,
    }
}

payload! {
    /// Data of [`DELIVERY_PUSHED`].
    DeliveryPushed = DELIVERY_PUSHED {
        /// The source repository.
        pub repo: String,
        /// The branch pushed (`gantry/<job>`).
        pub branch: String,
        /// The commit it now holds.
        pub commit: String,
        /// Where the factory published the commit, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub result_ref: Option<String>,
    }
}

payload! {
    /// Data of [`DELIVERY_FAILED`].
    DeliveryFailed = DELIVERY_FAILED {
        /// The source repository.
        pub repo: String,
        /// The branch that was to be pushed.
        pub branch: String,
        /// The commit that was to be delivered.
        pub commit: String,
        /// Where the factory published the commit, when it did (the ref is kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub result_ref: Option<String>,
        /// Why it failed.
        pub error: String,
    }
}

payload! {
    /// Data of [`QUEUE_PAUSED`]: none.
    QueuePaused = QUEUE_PAUSED {}
}

payload! {
    /// Data of [`QUEUE_RESUMED`]: none.
    QueueResumed = QUEUE_RESUMED {}
}

/// Data of [`RUN_CHECKPOINT`]: the work in progress the store records on the job. One
/// type with the claim's checkpoint, so the event and the claim cannot drift apart.
pub type RunCheckpoint = crate::api::Checkpoint;

impl Payload for crate::api::Checkpoint {
    const KIND: &'static str = RUN_CHECKPOINT;
}

/// Data of [`AGENT_INSIGHTS`]: the insights themselves.
impl Payload for crate::engine::Insights {
    const KIND: &'static str = AGENT_INSIGHTS;
}

payload! {
    /// Data of [`RUN_BUDGET_EXCEEDED`].
    RunBudgetExceeded = RUN_BUDGET_EXCEEDED {
        /// Which limit: `usd`, `tokens` or `turns`.
        pub limit: String,
        /// The limit's value.
        pub limit_value: f64,
        /// The figure that passed it.
        pub actual: f64,
        /// The breach in words.
        pub message: String,
    }
}

payload! {
    /// Data of [`SANDBOX_EGRESS_DENIED`].
    SandboxEgressDenied = SANDBOX_EGRESS_DENIED {
        /// The host the run asked for, as it wrote it (lower case).
        pub host: String,
        /// The port it asked for.
        pub port: u16,
        /// Why: `not allowed`, `private address`, ...
        pub reason: String,
    }
}

#[cfg(test)]
mod tests;
