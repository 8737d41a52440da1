//! The job lifecycle: states, attempt outcomes and the one transition function.
//!
//! Every state change anywhere in Gantry goes through [`next`], so the lifecycle can be
//! read, and tested exhaustively, in one place.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for dependencies.
    Blocked,
    /// Claimable at or after `not_before`.
    Queued,
    /// Leased to a factory.
    Running,
    /// Still leased to its factory, which is checking what the agent produced (gates,
    /// review, secret scan, conflict check); a fix round moves it back to running.
    Checking,
    /// Finished well.
    Succeeded,
    /// Finished badly with no attempts (or no retryable outcome) left.
    Failed,
    /// Canceled by a person or because a dependency ended badly.
    Canceled,
    /// Killed by a person.
    Killed,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 8] = [
        JobState::Blocked,
        JobState::Queued,
        JobState::Running,
        JobState::Checking,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
        JobState::Killed,
    ];

    /// The name used in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Blocked => "blocked",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Checking => "checking",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::Killed => "killed",
        }
    }

    /// Whether the job will never change state again without a manual retry.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled | JobState::Killed
        )
    }

    /// Whether the job holds a run, a lease and a factory seat: running or checking.
    /// Everything that applies to a leased job (renewals, stop requests, kill-all, the
    /// reaper, lock exclusion) applies to both.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Running | JobState::Checking)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state {s:?} (expected one of: {})",
                    JobState::ALL.map(JobState::as_str).join(", ")
                )
            })
    }
}

/// How one attempt (run) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The process exited 0.
    Succeeded,
    /// The process exited non-zero (or could not start).
    Failed,
    /// The attempt passed the job's timeout.
    TimedOut,
    /// The lease expired: the factory died, hung or was partitioned.
    Lost,
    /// Killed on request (SIGKILL to the process group).
    Killed,
    /// Canceled on request (SIGTERM, grace, then SIGKILL).
    Canceled,
    /// Stopped the moment it passed a limit of the job's budget; never retried, since
    /// another attempt would spend past the same limit.
    BudgetExceeded,
    /// The agent's result failed its checks (a gate, the review, a conflict, a secret)
    /// after the last fix round.
    GatesFailed,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 8] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Lost,
        Outcome::Killed,
        Outcome::Canceled,
        Outcome::BudgetExceeded,
        Outcome::GatesFailed,
    ];

    /// The name used in the API, job files and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Lost => "lost",
            Outcome::Killed => "killed",
            Outcome::Canceled => "canceled",
            Outcome::BudgetExceeded => "budget_exceeded",
            Outcome::GatesFailed => "gates_failed",
        }
    }

    /// Outcomes a job file may list in `retry_on`. `gates_failed` is one of them but is
    /// not in the default list: a result that failed its checks is retried only when the
    /// job asks for it.
    pub fn is_retryable_kind(self) -> bool {
        matches!(
            self,
            Outcome::Lost | Outcome::Failed | Outcome::TimedOut | Outcome::GatesFailed
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown outcome {s:?} (expected one of: {})",
                    Outcome::ALL.map(Outcome::as_str).join(", ")
                )
            })
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Every dependency is satisfied (by the job's deps_mode).
    DepsMet,
    /// A dependency ended badly and the job's deps_mode is `succeeded`.
    DepFailed,
    /// A factory claimed the job.
    Claim,
    /// The agent's process ended well and its factory began checking the result.
    CheckBegan,
    /// A check failed and the factory resumed the agent for a fix round.
    FixRoundBegan,
    /// The running attempt ended. `retry` says whether the retry policy allows another
    /// attempt (outcome in retry_on, attempts left, no stop requested): see
    /// [`crate::retry::should_retry`].
    AttemptEnded {
        /// How the attempt ended.
        outcome: Outcome,
        /// Whether another attempt is allowed.
        retry: bool,
    },
    /// A person canceled the job.
    Cancel,
    /// A person killed the job.
    Kill,
    /// A person asked for a finished job to run again. `deps_met` says whether its
    /// dependencies are (still) satisfied.
    Retry {
        /// Whether the dependencies are satisfied now.
        deps_met: bool,
    },
}

/// What a transition asks of the caller besides the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing else to do.
    None,
    /// The job stays running (or checking); ask its factory to stop the run gracefully.
    RequestCancel,
    /// The job stays running (or checking); ask its factory to kill the run at once.
    RequestKill,
}

/// A transition that the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("job in state {state} cannot take {input:?}")]
pub struct InvalidTransition {
    /// The state the job was in.
    pub state: JobState,
    /// What was attempted.
    pub input: Input,
}

/// The lifecycle: the state a job moves to when `input` happens in `state`.
///
/// Cancel and kill of a running (or checking) job keep it in its state and return an
/// effect: the job ends only when its factory reports the attempt's outcome (or its lease
/// expires), so the recorded outcome is always what really happened to the process. A
/// checking job takes every input a running one does, plus the fix round that sends it
/// back to running.
pub fn next(state: JobState, input: Input) -> Result<(JobState, Effect), InvalidTransition> {
    use JobState as S;
    let bad = Err(InvalidTransition { state, input });
    let to = |s: JobState| Ok((s, Effect::None));
    match (state, input) {
        (S::Blocked, Input::DepsMet) => to(S::Queued),
        (S::Blocked, Input::DepFailed) => to(S::Canceled),
        (S::Queued, Input::Claim) => to(S::Running),
        (S::Running, Input::CheckBegan) => to(S::Checking),
        (S::Checking, Input::FixRoundBegan) => to(S::Running),
        (S::Running | S::Checking, Input::AttemptEnded { outcome, retry }) => match outcome {
            Outcome::Succeeded => to(S::Succeeded),
            Outcome::Killed => to(S::Killed),
            Outcome::Canceled => to(S::Canceled),
            Outcome::BudgetExceeded => to(S::Failed),
            Outcome::Failed | Outcome::TimedOut | Outcome::Lost | Outcome::GatesFailed => {
                if retry {
                    to(S::Queued)
                } else {
                    to(S::Failed)
                }
            }
        },
        (S::Blocked | S::Queued, Input::Cancel) => to(S::Canceled),
        (S::Blocked | S::Queued, Input::Kill) => to(S::Killed),
        (S::Running | S::Checking, Input::Cancel) => Ok((state, Effect::RequestCancel)),
        (S::Running | S::Checking, Input::Kill) => Ok((state, Effect::RequestKill)),
        (S::Failed | S::Canceled | S::Killed, Input::Retry { deps_met }) => {
            to(if deps_met { S::Queued } else { S::Blocked })
        }
        _ => bad,
    }
}
