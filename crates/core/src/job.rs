//! Job and run records as the store keeps them and the API shows them.

use crate::api::Checkpoint;
use crate::engine::Insights;
use crate::id::{FactoryId, JobId, RunId};
use crate::spec::{DepsMode, JobSpec};
use crate::state::{JobState, Outcome};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// A stop asked of a running job's factory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    /// SIGTERM to the process group, a grace period, then SIGKILL.
    Cancel,
    /// SIGKILL to the process group at once.
    Kill,
}

impl StopKind {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StopKind::Cancel => "cancel",
            StopKind::Kill => "kill",
        }
    }

    /// Parses the database/API name.
    pub fn parse(s: &str) -> Option<StopKind> {
        match s {
            "cancel" => Some(StopKind::Cancel),
            "kill" => Some(StopKind::Kill),
            _ => None,
        }
    }

    /// The attempt outcome a run stopped this way records.
    pub fn outcome(self) -> Outcome {
        match self {
            StopKind::Cancel => Outcome::Canceled,
            StopKind::Kill => Outcome::Killed,
        }
    }
}

/// A job with its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Job id.
    pub id: JobId,
    /// Lifecycle state.
    pub state: JobState,
    /// Title (from the spec).
    pub title: String,
    /// Priority 0..=9 (from the spec).
    pub priority: u8,
    /// Number of the current or last attempt; 0 before the first claim.
    pub attempt: u32,
    /// Attempts allowed in all (a manual retry raises it).
    pub max_attempts: u32,
    /// Fencing epoch: incremented at every claim, never reused.
    pub epoch: i64,
    /// Named lock (from the spec).
    pub lock: Option<String>,
    /// Resolved dependency ids.
    pub deps: Vec<JobId>,
    /// When dependencies count as satisfied.
    pub deps_mode: DepsMode,
    /// Idempotency key (from the spec).
    pub idempotency_key: Option<String>,
    /// A stop requested for the running attempt.
    pub stop_requested: Option<StopKind>,
    /// Why the job is in its state, when there is more to say (e.g. the failed dependency).
    pub reason: Option<String>,
    /// Not claimable before this time.
    #[serde(with = "crate::time::opt_rfc3339")]
    pub not_before: Option<Millis>,
    /// Submission time.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub created_at: Millis,
    /// Start of the first attempt.
    #[serde(with = "crate::time::opt_rfc3339")]
    pub started_at: Option<Millis>,
    /// When the job reached a terminal state.
    #[serde(with = "crate::time::opt_rfc3339")]
    pub finished_at: Option<Millis>,
    /// The spec as submitted (repo resolved).
    pub spec: JobSpec,
    /// Agent session of the latest attempt that reported one (resumed by a retry).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Latest checkpoint of the work in progress.
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
    /// Insights totalled over the job's runs; filled by `show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insights: Option<Insights>,
    /// The job's runs, oldest first; filled by `show`, empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
}

/// One attempt of a job on one factory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Run {
    /// Run id.
    pub id: RunId,
    /// The job.
    pub job_id: JobId,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// Fencing epoch of this attempt's lease.
    pub epoch: i64,
    /// The factory that claimed it.
    pub factory_id: Option<FactoryId>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<Outcome>,
    /// Exit code of the process, when it exited.
    pub exit_code: Option<i32>,
    /// What went wrong, when something did outside the process itself.
    pub error: Option<String>,
    /// Attempt branch (`gantry/<job>/a<attempt>`).
    pub branch: Option<String>,
    /// Commit the attempt started from.
    pub base_commit: Option<String>,
    /// Commit holding the attempt's changes (equal to base when nothing changed).
    pub commit: Option<String>,
    /// Files changed by the attempt.
    pub files_changed: Option<u32>,
    /// Lines added by the attempt.
    pub lines_added: Option<u32>,
    /// Lines deleted by the attempt.
    pub lines_deleted: Option<u32>,
    /// What the agent reported (live while the run goes on, final once it ended).
    #[serde(default)]
    pub insights: Option<Insights>,
    /// The latest result of each gate the run's checks ran, in the order the gates
    /// first started (left out of the JSON when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<crate::gate::GateResult>,
    /// The run's reviews, secret findings and fix rounds (left out of the JSON when
    /// there are none).
    #[serde(default, skip_serializing_if = "crate::checks::RunChecks::is_empty")]
    pub checks: crate::checks::RunChecks,
    /// The names of the secrets the run's agent received (from its `run.started`),
    /// never their values; left out of the JSON when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Claim time.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub started_at: Millis,
    /// End time.
    #[serde(with = "crate::time::opt_rfc3339")]
    pub finished_at: Option<Millis>,
    /// Current lease expiry (database clock).
    #[serde(with = "crate::time::rfc3339_millis")]
    pub lease_expires_at: Millis,
}

/// The insights of a job: the sum over its runs that reported any, or `None` when none did.
pub fn total_insights(runs: &[Run]) -> Option<Insights> {
    let mut reported = runs.iter().filter_map(|r| r.insights.as_ref());
    let mut total = reported.next()?.clone();
    for more in reported {
        total.add(more);
    }
    Some(total)
}
