//! The records the store and the HTTP API (`/v1`) share: tokens and scopes, factory
//! registrations and heartbeats, claims and leases, finish reports, queue status.
//!
//! They live in core, not in `gantry-protocol`, because the store's trait speaks them
//! (a claim is what the store hands out, a finish report is what it records), and the
//! store must not depend on the protocol crate. `gantry-protocol` re-exports every one
//! of them beside the types only the two ends of the wire speak.

use crate::engine::Insights;
use crate::id::{FactoryId, JobId, RunId};
use crate::job::StopKind;
use crate::spec::JobSpec;
use crate::state::Outcome;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a bearer token may do.
///
/// `admin` ⊇ `operator` ⊇ `submitter` ⊇ `reader`; `factory` may run the factory
/// protocol and read, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything, including tokens.
    Admin,
    /// Cancel, kill, retry, pause, resume, plus what a submitter may do.
    Operator,
    /// Submit jobs, plus what a reader may do.
    Submitter,
    /// Read jobs, runs, events and logs.
    Reader,
    /// Run the factory protocol (register, claim, renew, events, finish) and read.
    Factory,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [
        Scope::Admin,
        Scope::Operator,
        Scope::Submitter,
        Scope::Reader,
        Scope::Factory,
    ];

    /// The name used in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Operator => "operator",
            Scope::Submitter => "submitter",
            Scope::Reader => "reader",
            Scope::Factory => "factory",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        use Scope::*;
        matches!(
            (self, needed),
            (Admin, _)
                | (Operator, Operator | Submitter | Reader)
                | (Submitter, Submitter | Reader)
                | (Reader, Reader)
                | (Factory, Factory | Reader)
        )
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scope {s:?} (expected one of: {})",
                    Scope::ALL.map(Scope::as_str).join(", ")
                )
            })
    }
}

/// One job of a submitted batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    /// The job's id.
    pub id: JobId,
    /// Whether the idempotency key matched a job stored earlier (nothing new was stored).
    pub existing: bool,
}

/// `POST /v1/factories`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterFactory {
    /// Human name (host name by default).
    pub name: String,
    /// Maximum concurrent runs.
    pub seats: u32,
    /// Capabilities, `name` or `name=value`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// `POST /v1/factories/{id}/heartbeat`: the factory is alive, and how its machine is
/// doing. A figure the factory cannot measure is left out (`null`), never sent as 0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Load average over the last minute.
    #[serde(default)]
    pub load_1m: Option<f64>,
    /// Memory available to new processes, in MiB.
    #[serde(default)]
    pub free_memory_mb: Option<u64>,
    /// Free space on the disk of the factory's data dir, in MiB.
    #[serde(default)]
    pub free_disk_mb: Option<u64>,
    /// Why the factory does not claim jobs now (low memory, low disk); `None` while it
    /// claims.
    #[serde(default)]
    pub admission: Option<String>,
}

/// The lease half of a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Run id.
    pub id: RunId,
    /// Attempt number.
    pub attempt: u32,
    /// Fencing epoch: name it in every write.
    pub epoch: i64,
    /// Lease expiry by the server's clock.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub lease_expires_at: Millis,
    /// The lease's length; renew well before it runs out.
    pub lease_ttl_ms: u64,
}

/// The job half of a claim: everything a factory needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    /// Job id.
    pub id: JobId,
    /// The full spec.
    pub spec: JobSpec,
    /// The agent session of the job's latest attempt that reported one: a retry resumes
    /// it where the engine supports resuming.
    #[serde(default)]
    pub resume_session: Option<String>,
    /// The job's latest checkpoint: the attempt starts from it instead of the base.
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
}

/// Work in progress of a job, committed while a run went on or when it stopped, so the
/// next attempt (on any factory) continues from there instead of from the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The branch holding it in the source repo: `gantry/<job>/wip`.
    #[serde(rename = "wip_branch")]
    pub branch: String,
    /// The commit the work started from.
    #[serde(rename = "wip_base")]
    pub base: String,
    /// The checkpoint commit.
    #[serde(rename = "wip_commit")]
    pub commit: String,
}

/// Response 200 of a claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// What to run.
    pub job: ClaimedJob,
    /// Under which lease.
    pub run: Lease,
    /// The server delivers a succeeded run's commit to the source repository, so a
    /// factory that does not share the server's data dir must publish the commit at
    /// [`result_ref`] in the source first (and name it in its [`FinishReport`]).
    #[serde(default)]
    pub deliver: bool,
}

/// The ref in the source repository where a factory publishes the commit of `run`
/// for the server to deliver. It is outside `refs/heads`, so it never shows up as a
/// branch, and the server removes it once the delivery is done.
pub fn result_ref(run: RunId) -> String {
    format!("refs/gantry/results/{run}")
}

/// The largest diff a [`FinishReport`] carries; a longer one is cut at a line end
/// below this size and marked as cut.
pub const MAX_REPORTED_DIFF_BYTES: usize = 4 << 20;

/// Response of a renew.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Renewed {
    /// New lease expiry by the server's clock.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub lease_expires_at: Millis,
    /// A stop a person asked for: the factory must stop the run this way.
    #[serde(default)]
    pub stop: Option<StopKind>,
}

/// What a factory reports when a run ends: `POST /v1/runs/{id}/finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FinishReport {
    /// The epoch of the run's lease.
    pub epoch: i64,
    /// How the attempt ended.
    pub outcome: Option<Outcome>,
    /// The process's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// What went wrong outside the process (workspace setup, spawn failure).
    #[serde(default)]
    pub error: Option<String>,
    /// Attempt branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// Commit the attempt started from.
    #[serde(default)]
    pub base_commit: Option<String>,
    /// Commit with the attempt's changes.
    #[serde(default)]
    pub commit: Option<String>,
    /// Files changed.
    #[serde(default)]
    pub files_changed: Option<u32>,
    /// Lines added.
    #[serde(default)]
    pub lines_added: Option<u32>,
    /// Lines deleted.
    #[serde(default)]
    pub lines_deleted: Option<u32>,
    /// What the agent reported: model, session, tokens, cost, turns, tool calls.
    #[serde(default)]
    pub insights: Option<Insights>,
    /// The attempt's diff against its base (at most [`MAX_REPORTED_DIFF_BYTES`]), kept
    /// by the store so any server replica can show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Where in the source repository the factory published [`FinishReport::commit`]
    /// for delivery ([`result_ref`]); `None` when the commit is in the server's own
    /// cache (the embedded factory) or was not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<String>,
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Scope.
    pub scope: Scope,
    /// Creation time.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub created_at: Millis,
    /// Revocation time, if revoked.
    #[serde(with = "crate::time::opt_rfc3339")]
    pub revoked_at: Option<Millis>,
    /// For a factory token, the factory it registered first: the only one it may act
    /// for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factory: Option<FactoryId>,
}

/// Queue-wide status: `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Whether claiming is paused.
    pub paused: bool,
    /// Job counts by state name.
    pub jobs: std::collections::BTreeMap<String, u64>,
}
