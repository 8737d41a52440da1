//! Store errors.

use gantry_core::{JobId, JobState, RunId, SpecError};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such job, run, factory or token.
    #[error("{what} {id} not found")]
    NotFound {
        /// "job", "run", "factory" or "token".
        what: &'static str,
        /// The id or name looked up.
        id: String,
    },
    /// A worker wrote under an epoch that is no longer the job's running epoch.
    #[error(
        "stale lease: run {run} wrote with epoch {epoch}, but job {job} is {state} at epoch {current_epoch}"
    )]
    StaleLease {
        /// The job.
        job: JobId,
        /// The run that wrote.
        run: RunId,
        /// The epoch it named.
        epoch: i64,
        /// The job's current epoch.
        current_epoch: i64,
        /// The job's current state.
        state: JobState,
    },
    /// A submitted job file is invalid (unknown dep, cycle, ...).
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// The operation does not apply to the job's state.
    #[error("job {job} is {state}: cannot {action}")]
    WrongState {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What was asked, e.g. "retry".
        action: &'static str,
    },
    /// A unique name is taken.
    #[error("{what} {name:?} already exists")]
    Exists {
        /// "token", ...
        what: &'static str,
        /// The name.
        name: String,
    },
    /// An idempotency key the submitting token used before comes with different
    /// content: the key names one job, so the new content is refused rather than
    /// silently dropped.
    #[error(
        "{file}: idempotency key {key:?} was already used by {by} with different content; \
         nothing was stored"
    )]
    IdempotencyConflict {
        /// The job file that reused the key.
        file: String,
        /// The key.
        key: String,
        /// The job stored earlier under the key (`None` when the key's first use is an
        /// earlier file of the same batch).
        job: Option<JobId>,
        /// What used the key first, for the message: `job 12`, or `a.md of this batch`.
        by: String,
    },
    /// The stored data does not make sense (a bug or tampering).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}
