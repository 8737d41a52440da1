//! Row codecs both backends share: the columns each query reads, one decoding of a
//! job, run, event and token row (through [`Columns`], which each backend implements
//! for its driver's row), and the parsing of the text columns into domain values.

use crate::{FactoryInfo, StoreError};
use gantry_core::api::{Checkpoint, Heartbeat, Scope, TokenInfo};
use gantry_core::event::{Event, NewEvent};
use gantry_core::time::Millis;
use gantry_core::{DepsMode, FactoryId, Job, JobId, JobState, Outcome, Run, RunId, StopKind};

/// A value both drivers can read from a column.
pub(crate) trait Column:
    rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>
{
}

impl<T> Column for T where T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a> {}

/// A row a backend's driver returned, read by column index.
pub(crate) trait Columns {
    /// The driver's error.
    type Error;

    /// Column `i`.
    fn col<T: Column>(&self, i: usize) -> Result<T, Self::Error>;

    /// Column `i`, a list of job ids (a job's deps), in whatever form the backend
    /// stores it.
    fn ids(&self, i: usize) -> Result<Vec<i64>, Self::Error>;

    /// Column `i`, a list of strings (capabilities), in whatever form the backend
    /// stores it.
    fn strings(&self, i: usize) -> Result<Vec<String>, Self::Error>;
}

/// The columns of `jobs` that [`JobRow::read`] expects, in order.
pub(crate) const JOB_ROW_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, \
     lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at";

/// [`JOB_ROW_COLS`] then the spec's and the agent state's columns, from [`JOB_FROM`]
/// (what [`RawJob::read`] expects).
pub(crate) const JOB_COLS: &str = "jobs.id, state, priority, attempt, max_attempts, epoch, \
     lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at, title, deps, spec, session_id, wip_branch, wip_base, wip_commit";

/// How many columns [`JOB_COLS`] has.
pub(crate) const JOB_COLS_LEN: usize = 22;

/// How many columns [`JOB_ROW_COLS`] has.
pub(crate) const JOB_ROW_COLS_LEN: usize = 15;

/// A job's row joined with its spec and its agent state.
pub(crate) const JOB_FROM: &str = "jobs JOIN job_specs ON job_specs.job_id = jobs.id \
     LEFT JOIN job_agent ON job_agent.job_id = jobs.id";

/// The columns [`RawRun::read`] expects, in order.
pub(crate) const RUN_COLS: &str = "id, job_id, attempt, epoch, factory_id, outcome, exit_code, \
     error, branch, base_commit, commit_sha, files_changed, lines_added, lines_deleted, \
     started_at, finished_at, lease_expires_at, insights, gates, checks, secrets";

/// The columns [`TokenRow::read`] expects, in order.
pub(crate) const TOKEN_COLS: &str = "id, name, scope, created_at, revoked_at, factory_id";

/// The columns [`RawEvent::read`] expects, in order.
pub(crate) const EVENT_COLS: &str = "id, job_id, run_id, seq, kind, at, data";

/// The registered factories, by id, with how many running jobs each one's runs are
/// and how long ago each was seen by `now` (an SQL expression of the store's clock):
/// what [`FactoryRow::read`] expects.
pub(crate) fn factories_sql(now: &str) -> String {
    format!(
        "SELECT f.id, f.name, f.seats, f.capabilities, f.last_seen, f.load_1m,
                f.free_memory_mb, f.free_disk_mb, coalesce(c.n, 0), f.admission,
                {now} - f.last_seen
         FROM factories f
         LEFT JOIN (SELECT r.factory_id AS fid, count(*) AS n
                    FROM jobs j JOIN runs r ON r.id = j.current_run
                    WHERE j.state IN ('running', 'checking')
                    GROUP BY r.factory_id) c ON c.fid = f.id
         ORDER BY f.id"
    )
}

/// Stored data that does not make sense.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// No `what` with this id.
pub(crate) fn not_found(what: &'static str, id: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

pub(crate) fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse().map_err(corrupt)
}

pub(crate) fn parse_outcome(s: &str) -> Result<Outcome, StoreError> {
    s.parse().map_err(corrupt)
}

pub(crate) fn parse_stop(s: Option<&str>) -> Result<Option<StopKind>, StoreError> {
    s.map(|s| StopKind::parse(s).ok_or_else(|| corrupt(format!("unknown stop request {s:?}"))))
        .transpose()
}

pub(crate) fn parse_deps_mode(s: &str) -> Result<DepsMode, StoreError> {
    match s {
        "succeeded" => Ok(DepsMode::Succeeded),
        "finished" => Ok(DepsMode::Finished),
        other => Err(corrupt(format!("unknown deps_mode {other:?}"))),
    }
}

pub(crate) fn deps_mode_str(m: DepsMode) -> &'static str {
    match m {
        DepsMode::Succeeded => "succeeded",
        DepsMode::Finished => "finished",
    }
}

/// A job's `retry_on` column: outcomes, comma-joined.
pub(crate) fn parse_retry_on(s: &str) -> Result<Vec<Outcome>, StoreError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(parse_outcome)
        .collect()
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(crate) fn parse_scope(s: &str) -> Result<Scope, StoreError> {
    s.parse().map_err(corrupt)
}

pub(crate) fn to_u32(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} out of range")))
}

pub(crate) fn opt_u32(what: &str, v: Option<i64>) -> Result<Option<u32>, StoreError> {
    v.map(|v| to_u32(what, v)).transpose()
}

/// A job's stored `backoff_ms`.
pub(crate) fn to_backoff(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(format!("backoff_ms {v}")))
}

/// A figure of a heartbeat as both databases store it (an integer column is signed).
pub(crate) fn mb_to_sql(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A stored figure of a heartbeat, refusing what no heartbeat could have sent.
pub(crate) fn mb_from_sql(what: &str, v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(|v| u64::try_from(v).map_err(|_| corrupt(format!("{what} {v} is negative"))))
        .transpose()
}

/// A `jobs` row as stored, before its text columns are parsed.
#[derive(Clone)]
pub(crate) struct JobRow {
    pub(crate) id: i64,
    pub(crate) state: String,
    pub(crate) priority: i64,
    pub(crate) attempt: i64,
    pub(crate) max_attempts: i64,
    pub(crate) epoch: i64,
    pub(crate) lock_key: Option<String>,
    pub(crate) deps_mode: String,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) stop_requested: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) not_before: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) finished_at: Option<i64>,
}

impl JobRow {
    /// Reads [`JOB_ROW_COLS`] starting at column `at`.
    pub(crate) fn read<C: Columns>(r: &C, at: usize) -> Result<JobRow, C::Error> {
        Ok(JobRow {
            id: r.col(at)?,
            state: r.col(at + 1)?,
            priority: r.col(at + 2)?,
            attempt: r.col(at + 3)?,
            max_attempts: r.col(at + 4)?,
            epoch: r.col(at + 5)?,
            lock_key: r.col(at + 6)?,
            deps_mode: r.col(at + 7)?,
            idempotency_key: r.col(at + 8)?,
            stop_requested: r.col(at + 9)?,
            reason: r.col(at + 10)?,
            not_before: r.col(at + 11)?,
            created_at: r.col(at + 12)?,
            started_at: r.col(at + 13)?,
            finished_at: r.col(at + 14)?,
        })
    }

    /// Makes to this row (read before a state change in the same transaction) the
    /// change that writing the state change made to the stored one.
    pub(crate) fn apply_step(
        &mut self,
        to: JobState,
        reason: Option<&str>,
        not_before: Option<Millis>,
        now: Millis,
    ) {
        self.state = to.as_str().to_string();
        self.reason = reason.map(str::to_string);
        self.not_before = not_before;
        self.finished_at = to.is_terminal().then_some(now);
        if !to.is_active() {
            self.stop_requested = None;
        }
    }
}

/// A job's `job_specs` row as stored: written once at submit, never changed after.
pub(crate) struct SpecRow {
    pub(crate) title: String,
    pub(crate) deps: Vec<i64>,
    pub(crate) spec: String,
}

impl SpecRow {
    /// Reads title, deps and spec starting at column `at`.
    pub(crate) fn read<C: Columns>(r: &C, at: usize) -> Result<SpecRow, C::Error> {
        Ok(SpecRow {
            title: r.col(at)?,
            deps: r.ids(at + 1)?,
            spec: r.col(at + 2)?,
        })
    }
}

/// A job's agent state (`job_agent`), absent for most jobs.
#[derive(Debug, Default)]
pub(crate) struct AgentRow {
    pub(crate) session_id: Option<String>,
    pub(crate) wip_branch: Option<String>,
    pub(crate) wip_base: Option<String>,
    pub(crate) wip_commit: Option<String>,
}

impl AgentRow {
    /// Reads the four columns of `job_agent` starting at column `at`.
    pub(crate) fn read<C: Columns>(r: &C, at: usize) -> Result<AgentRow, C::Error> {
        Ok(AgentRow {
            session_id: r.col(at)?,
            wip_branch: r.col(at + 1)?,
            wip_base: r.col(at + 2)?,
            wip_commit: r.col(at + 3)?,
        })
    }

    /// The work-in-progress checkpoint, when all three of its columns are set.
    pub(crate) fn checkpoint(&self) -> Option<Checkpoint> {
        match (&self.wip_branch, &self.wip_base, &self.wip_commit) {
            (Some(branch), Some(base), Some(commit)) => Some(Checkpoint {
                branch: branch.clone(),
                base: base.clone(),
                commit: commit.clone(),
            }),
            _ => None,
        }
    }
}

/// A whole job as stored, before its text columns are parsed.
pub(crate) struct RawJob {
    pub(crate) row: JobRow,
    pub(crate) spec: SpecRow,
    pub(crate) agent: AgentRow,
}

impl RawJob {
    /// Reads [`JOB_COLS`].
    pub(crate) fn read<C: Columns>(r: &C) -> Result<RawJob, C::Error> {
        RawJob::read_at(r, 0)
    }

    /// Reads [`JOB_COLS`] starting at column `at`.
    pub(crate) fn read_at<C: Columns>(r: &C, at: usize) -> Result<RawJob, C::Error> {
        Ok(RawJob {
            row: JobRow::read(r, at)?,
            spec: SpecRow::read(r, at + JOB_ROW_COLS_LEN)?,
            agent: AgentRow::read(r, at + JOB_ROW_COLS_LEN + 3)?,
        })
    }

    pub(crate) fn into_job(self) -> Result<Job, StoreError> {
        let RawJob { row, spec, agent } = self;
        Ok(Job {
            id: JobId(row.id),
            state: parse_state(&row.state)?,
            title: spec.title,
            priority: u8::try_from(row.priority)
                .map_err(|_| corrupt(format!("priority {} out of range", row.priority)))?,
            attempt: to_u32("attempt", row.attempt)?,
            max_attempts: to_u32("max_attempts", row.max_attempts)?,
            epoch: row.epoch,
            lock: row.lock_key,
            deps: spec.deps.into_iter().map(JobId).collect(),
            deps_mode: parse_deps_mode(&row.deps_mode)?,
            idempotency_key: row.idempotency_key,
            stop_requested: parse_stop(row.stop_requested.as_deref())?,
            reason: row.reason,
            not_before: row.not_before,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            spec: parse_json("job spec", &spec.spec)?,
            checkpoint: agent.checkpoint(),
            session_id: agent.session_id,
            insights: None,
            runs: Vec::new(),
        })
    }
}

/// A run row as stored, before its text columns are parsed.
pub(crate) struct RawRun {
    pub(crate) id: i64,
    pub(crate) job_id: i64,
    pub(crate) attempt: i64,
    pub(crate) epoch: i64,
    pub(crate) factory_id: Option<i64>,
    pub(crate) outcome: Option<String>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) error: Option<String>,
    pub(crate) branch: Option<String>,
    pub(crate) base_commit: Option<String>,
    pub(crate) commit: Option<String>,
    pub(crate) files_changed: Option<i64>,
    pub(crate) lines_added: Option<i64>,
    pub(crate) lines_deleted: Option<i64>,
    pub(crate) started_at: i64,
    pub(crate) finished_at: Option<i64>,
    pub(crate) lease_expires_at: i64,
    pub(crate) insights: Option<String>,
    /// The gates' records (JSON text, see `lifecycle::gates`).
    pub(crate) gates: Option<String>,
    /// The reviews, secret findings and fix rounds (JSON text, a `RunChecks`).
    pub(crate) checks: Option<String>,
    /// The names of the secrets the run received (JSON text, a list of strings).
    pub(crate) secrets: Option<String>,
}

impl RawRun {
    /// Reads [`RUN_COLS`].
    pub(crate) fn read<C: Columns>(r: &C) -> Result<RawRun, C::Error> {
        Ok(RawRun {
            id: r.col(0)?,
            job_id: r.col(1)?,
            attempt: r.col(2)?,
            epoch: r.col(3)?,
            factory_id: r.col(4)?,
            outcome: r.col(5)?,
            exit_code: r.col(6)?,
            error: r.col(7)?,
            branch: r.col(8)?,
            base_commit: r.col(9)?,
            commit: r.col(10)?,
            files_changed: r.col(11)?,
            lines_added: r.col(12)?,
            lines_deleted: r.col(13)?,
            started_at: r.col(14)?,
            finished_at: r.col(15)?,
            lease_expires_at: r.col(16)?,
            insights: r.col(17)?,
            gates: r.col(18)?,
            checks: r.col(19)?,
            secrets: r.col(20)?,
        })
    }

    pub(crate) fn into_run(self) -> Result<Run, StoreError> {
        Ok(Run {
            id: RunId(self.id),
            job_id: JobId(self.job_id),
            attempt: to_u32("attempt", self.attempt)?,
            epoch: self.epoch,
            factory_id: self.factory_id.map(FactoryId),
            outcome: self.outcome.as_deref().map(parse_outcome).transpose()?,
            exit_code: self.exit_code,
            error: self.error,
            branch: self.branch,
            base_commit: self.base_commit,
            commit: self.commit,
            files_changed: opt_u32("files_changed", self.files_changed)?,
            lines_added: opt_u32("lines_added", self.lines_added)?,
            lines_deleted: opt_u32("lines_deleted", self.lines_deleted)?,
            started_at: self.started_at,
            finished_at: self.finished_at,
            lease_expires_at: self.lease_expires_at,
            insights: self
                .insights
                .as_deref()
                .map(|text| parse_json("run insights", text))
                .transpose()?,
            gates: crate::lifecycle::gate_results(self.gates.as_deref())?,
            checks: crate::lifecycle::run_checks(self.checks.as_deref())?,
            secrets: self
                .secrets
                .as_deref()
                .map(|text| parse_json("run secrets", text))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// A `tokens` row as stored, before its scope is parsed.
pub(crate) struct TokenRow {
    id: i64,
    name: String,
    scope: String,
    created_at: i64,
    revoked_at: Option<i64>,
    factory_id: Option<i64>,
}

impl TokenRow {
    /// Reads [`TOKEN_COLS`].
    pub(crate) fn read<C: Columns>(r: &C) -> Result<TokenRow, C::Error> {
        Ok(TokenRow {
            id: r.col(0)?,
            name: r.col(1)?,
            scope: r.col(2)?,
            created_at: r.col(3)?,
            revoked_at: r.col(4)?,
            factory_id: r.col(5)?,
        })
    }

    pub(crate) fn into_token(self) -> Result<TokenInfo, StoreError> {
        Ok(TokenInfo {
            id: self.id,
            name: self.name,
            scope: parse_scope(&self.scope)?,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            factory: self.factory_id.map(FactoryId),
        })
    }
}

/// An `events` row as stored, before its data is parsed.
pub(crate) struct RawEvent {
    event: Event,
    data: String,
}

impl RawEvent {
    /// Reads [`EVENT_COLS`].
    pub(crate) fn read<C: Columns>(r: &C) -> Result<RawEvent, C::Error> {
        Ok(RawEvent {
            event: Event {
                id: r.col(0)?,
                job_id: r.col::<Option<i64>>(1)?.map(JobId),
                run_id: r.col::<Option<i64>>(2)?.map(RunId),
                seq: r.col(3)?,
                kind: r.col(4)?,
                at: r.col(5)?,
                data: serde_json::Value::Null,
            },
            data: r.col(6)?,
        })
    }

    pub(crate) fn into_event(self) -> Result<Event, StoreError> {
        let RawEvent { mut event, data } = self;
        event.data = parse_json("event data", &data)?;
        Ok(event)
    }
}

/// A factory's row with its count of running jobs, as [`factories_sql`] reads it.
pub(crate) struct FactoryRow {
    id: i64,
    name: String,
    seats: i64,
    capabilities: Vec<String>,
    last_seen: i64,
    load_1m: Option<f64>,
    free_memory_mb: Option<i64>,
    free_disk_mb: Option<i64>,
    running: i64,
    admission: Option<String>,
    ago_ms: i64,
}

impl FactoryRow {
    /// Reads the columns of [`factories_sql`].
    pub(crate) fn read<C: Columns>(r: &C) -> Result<FactoryRow, C::Error> {
        Ok(FactoryRow {
            id: r.col(0)?,
            name: r.col(1)?,
            seats: r.col(2)?,
            capabilities: r.strings(3)?,
            last_seen: r.col(4)?,
            load_1m: r.col(5)?,
            free_memory_mb: r.col(6)?,
            free_disk_mb: r.col(7)?,
            running: r.col(8)?,
            admission: r.col(9)?,
            ago_ms: r.col(10)?,
        })
    }

    pub(crate) fn into_info(self) -> Result<FactoryInfo, StoreError> {
        Ok(FactoryInfo {
            id: FactoryId(self.id),
            name: self.name,
            seats: to_u32("seats", self.seats)?,
            capabilities: self.capabilities,
            last_seen: self.last_seen,
            last_seen_ago_ms: u64::try_from(self.ago_ms).unwrap_or(0),
            running: to_u32("running", self.running)?,
            stats: Heartbeat {
                load_1m: self.load_1m,
                free_memory_mb: mb_from_sql("free_memory_mb", self.free_memory_mb)?,
                free_disk_mb: mb_from_sql("free_disk_mb", self.free_disk_mb)?,
                admission: self.admission,
            },
        })
    }
}

/// A server-side event as recorded: (id, seq, time) and the event itself.
pub(crate) fn recorded_event(
    job: Option<JobId>,
    run: Option<RunId>,
    (id, seq, at, event): (i64, i64, Millis, NewEvent),
) -> Event {
    Event {
        id,
        job_id: job,
        run_id: run,
        seq,
        kind: event.kind,
        at,
        data: event.data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_cols_len_counts_the_job_columns() {
        assert_eq!(JOB_COLS.split(',').count(), JOB_COLS_LEN);
        assert_eq!(JOB_ROW_COLS.split(',').count(), JOB_ROW_COLS_LEN);
        assert_eq!(JOB_ROW_COLS_LEN + 7, JOB_COLS_LEN);
    }

    #[test]
    fn retry_on_round_trips() {
        assert_eq!(
            parse_retry_on("lost,timed_out").expect("valid list"),
            vec![Outcome::Lost, Outcome::TimedOut]
        );
        assert!(parse_retry_on("").expect("empty list").is_empty());
        let err = parse_retry_on("lost,bogus").expect_err("bogus outcome");
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
