//! Row codecs: the columns each query reads, and rows turned into domain values.

use super::*;
use crate::rules::{self};
use crate::{Result, StoreError};
use gantry_core::api::{Checkpoint, Scope, TokenInfo};
use gantry_core::event::Event;
use gantry_core::time::Millis;
use gantry_core::{DepsMode, FactoryId, Job, JobId, JobState, Outcome, Run, RunId, StopKind};
use rusqlite::{Connection, OptionalExtension, params};

/// The columns of `jobs` that [`JobRow::read`] expects, in order (no name is also a
/// column of `job_specs`, so they read unqualified from the join too).
pub(super) const JOB_ROW_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, lock_key, \
     deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at";

/// The columns [`RawJob::read`] expects, in order, from [`JOB_FROM`].
pub(super) const JOB_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, lock_key, \
     deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at, title, deps, spec, session_id, wip_branch, wip_base, wip_commit";

/// [`JOB_COLS`] for lists: the spec without its body (instructions may be large, and
/// a list is read often; the body comes with one job).
pub(super) const JOB_LIST_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, lock_key, \
     deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at, title, deps, json_set(spec, '$.body', ''), session_id, \
     wip_branch, wip_base, wip_commit";

/// A job's row joined with its spec and its agent state.
pub(super) const JOB_FROM: &str = "jobs JOIN job_specs ON job_specs.job_id = jobs.id \
     LEFT JOIN job_agent ON job_agent.job_id = jobs.id";

/// The columns [`read_run`] expects, in order.
pub(super) const RUN_COLS: &str = "id, job_id, attempt, epoch, factory_id, outcome, exit_code, error, \
     branch, base_commit, commit_sha, files_changed, lines_added, lines_deleted, started_at, \
     finished_at, lease_expires_at, insights";

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) fn parse_state(s: &str) -> Result<JobState> {
    s.parse().map_err(corrupt)
}

pub(super) fn parse_outcome(s: &str) -> Result<Outcome> {
    s.parse().map_err(corrupt)
}

pub(super) fn parse_stop(s: Option<&str>) -> Result<Option<StopKind>> {
    s.map(|s| StopKind::parse(s).ok_or_else(|| corrupt(format!("unknown stop request {s:?}"))))
        .transpose()
}

pub(super) fn parse_deps_mode(s: &str) -> Result<DepsMode> {
    match s {
        "succeeded" => Ok(DepsMode::Succeeded),
        "finished" => Ok(DepsMode::Finished),
        other => Err(corrupt(format!("unknown deps_mode {other:?}"))),
    }
}

pub(super) fn deps_mode_str(m: DepsMode) -> &'static str {
    match m {
        DepsMode::Succeeded => "succeeded",
        DepsMode::Finished => "finished",
    }
}

pub(super) fn parse_retry_on(s: &str) -> Result<Vec<Outcome>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(parse_outcome)
        .collect()
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(super) fn parse_scope(s: &str) -> Result<Scope> {
    s.parse().map_err(corrupt)
}

pub(super) fn to_u32(what: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} out of range")))
}

pub(super) fn opt_u32(what: &str, v: Option<i64>) -> Result<Option<u32>> {
    v.map(|v| to_u32(what, v)).transpose()
}

/// A `jobs` row as stored, before its text columns are parsed.
#[derive(Clone)]
pub(super) struct JobRow {
    pub(super) id: i64,
    pub(super) state: String,
    pub(super) priority: i64,
    pub(super) attempt: i64,
    pub(super) max_attempts: i64,
    pub(super) epoch: i64,
    pub(super) lock_key: Option<String>,
    pub(super) deps_mode: String,
    pub(super) idempotency_key: Option<String>,
    pub(super) stop_requested: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) not_before: Option<i64>,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
}

impl JobRow {
    /// Reads [`JOB_ROW_COLS`].
    pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            id: r.get(0)?,
            state: r.get(1)?,
            priority: r.get(2)?,
            attempt: r.get(3)?,
            max_attempts: r.get(4)?,
            epoch: r.get(5)?,
            lock_key: r.get(6)?,
            deps_mode: r.get(7)?,
            idempotency_key: r.get(8)?,
            stop_requested: r.get(9)?,
            reason: r.get(10)?,
            not_before: r.get(11)?,
            created_at: r.get(12)?,
            started_at: r.get(13)?,
            finished_at: r.get(14)?,
        })
    }
}

impl JobRow {
    /// Makes to this row (read before a [`step`] in the same transaction) the change
    /// that `step` made to the stored one.
    pub(super) fn apply_step(
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
        if to != JobState::Running {
            self.stop_requested = None;
        }
    }
}

/// A job's `job_specs` row as stored: written once at submit, never changed after.
pub(super) struct SpecRow {
    pub(super) title: String,
    pub(super) deps: String,
    pub(super) spec: String,
}

/// A whole job as stored, before its text columns are parsed.
pub(super) struct RawJob {
    pub(super) row: JobRow,
    pub(super) spec: SpecRow,
    pub(super) agent: AgentRow,
}

/// A job's agent state (`job_agent`), absent for most jobs.
#[derive(Debug, Default)]
pub(super) struct AgentRow {
    pub(super) session_id: Option<String>,
    pub(super) wip_branch: Option<String>,
    pub(super) wip_base: Option<String>,
    pub(super) wip_commit: Option<String>,
}

impl AgentRow {
    pub(super) fn checkpoint(&self) -> Option<Checkpoint> {
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

impl RawJob {
    /// Reads [`JOB_COLS`].
    pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
        Ok(RawJob {
            row: JobRow::read(r)?,
            spec: SpecRow {
                title: r.get(15)?,
                deps: r.get(16)?,
                spec: r.get(17)?,
            },
            agent: AgentRow {
                session_id: r.get(18)?,
                wip_branch: r.get(19)?,
                wip_base: r.get(20)?,
                wip_commit: r.get(21)?,
            },
        })
    }

    pub(super) fn into_job(self) -> Result<Job> {
        let RawJob { row, spec, agent } = self;
        let deps: Vec<i64> = parse_json("job deps", &spec.deps)?;
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
            deps: deps.into_iter().map(JobId).collect(),
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
pub(super) struct RawRun {
    pub(super) id: i64,
    pub(super) job_id: i64,
    pub(super) attempt: i64,
    pub(super) epoch: i64,
    pub(super) factory_id: Option<i64>,
    pub(super) outcome: Option<String>,
    pub(super) exit_code: Option<i32>,
    pub(super) error: Option<String>,
    pub(super) branch: Option<String>,
    pub(super) base_commit: Option<String>,
    pub(super) commit: Option<String>,
    pub(super) files_changed: Option<i64>,
    pub(super) lines_added: Option<i64>,
    pub(super) lines_deleted: Option<i64>,
    pub(super) started_at: i64,
    pub(super) finished_at: Option<i64>,
    pub(super) lease_expires_at: i64,
    pub(super) insights: Option<String>,
}

pub(super) fn read_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok(RawRun {
        id: r.get(0)?,
        job_id: r.get(1)?,
        attempt: r.get(2)?,
        epoch: r.get(3)?,
        factory_id: r.get(4)?,
        outcome: r.get(5)?,
        exit_code: r.get(6)?,
        error: r.get(7)?,
        branch: r.get(8)?,
        base_commit: r.get(9)?,
        commit: r.get(10)?,
        files_changed: r.get(11)?,
        lines_added: r.get(12)?,
        lines_deleted: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        lease_expires_at: r.get(16)?,
        insights: r.get(17)?,
    })
}

impl RawRun {
    pub(super) fn into_run(self) -> Result<Run> {
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
        })
    }
}

/// The columns [`read_token`] expects, in order.
pub(super) const TOKEN_COLS: &str = "id, name, scope, created_at, revoked_at, factory_id";

/// A `tokens` row as stored, before its scope is parsed.
pub(super) type TokenRow = (i64, String, String, i64, Option<i64>, Option<i64>);

pub(super) fn read_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

pub(super) fn into_token(t: TokenRow) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: t.0,
        name: t.1,
        scope: parse_scope(&t.2)?,
        created_at: t.3,
        revoked_at: t.4,
        factory: t.5.map(FactoryId),
    })
}

/// A figure of a heartbeat as SQLite stores it (an INTEGER is signed).
pub(super) fn mb_to_sql(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A stored figure of a heartbeat, refusing what no heartbeat could have sent.
pub(super) fn mb_from_sql(what: &str, v: Option<i64>) -> Result<Option<u64>> {
    v.map(|v| u64::try_from(v).map_err(|_| corrupt(format!("{what} {v} is negative"))))
        .transpose()
}

pub(super) fn read_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Event, String)> {
    Ok((
        Event {
            id: r.get(0)?,
            job_id: r.get::<_, Option<i64>>(1)?.map(JobId),
            run_id: r.get::<_, Option<i64>>(2)?.map(RunId),
            seq: r.get(3)?,
            kind: r.get(4)?,
            at: r.get(5)?,
            data: serde_json::Value::Null,
        },
        r.get(6)?,
    ))
}

pub(super) fn load_job(tx: &Connection, id: JobId) -> Result<Job> {
    tx.prepare_cached(&format!("SELECT {JOB_COLS} FROM {JOB_FROM} WHERE id = ?1"))?
        .query_row([id.0], RawJob::read)
        .optional()?
        .ok_or_else(|| not_found("job", id))?
        .into_job()
}

/// The immutable part of a job. Writes that return a job return its `jobs` row (see
/// [`JobRow`]) and their callers read this on the read connection, after the commit:
/// the one thread that all writes share then spends no time copying or decoding it.
pub(super) fn load_spec(tx: &Connection, id: JobId) -> Result<SpecRow> {
    tx.prepare_cached(LOAD_SPEC_SQL)?
        .query_row([id.0], |r| {
            Ok(SpecRow {
                title: r.get(0)?,
                deps: r.get(1)?,
                spec: r.get(2)?,
            })
        })
        .optional()?
        .ok_or_else(|| not_found("job", id))
}

/// Reads a job's agent state; the default when it has none.
pub(super) fn load_agent(tx: &Connection, id: JobId) -> Result<AgentRow> {
    Ok(tx
        .prepare_cached(
            "SELECT session_id, wip_branch, wip_base, wip_commit FROM job_agent WHERE job_id = ?1",
        )?
        .query_row([id.0], |r| {
            Ok(AgentRow {
                session_id: r.get(0)?,
                wip_branch: r.get(1)?,
                wip_base: r.get(2)?,
                wip_commit: r.get(3)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

pub(super) fn not_found(what: &'static str, id: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// The hot path's statements
//
// Claims and finishes run these for every job, so each is checked by a test: it must
// not be re-prepared when its bound values change, and must need no temporary table.
// Two rules keep them so. (1) No join with `= ?` terms: SQLite plans a join by the
// bound value and re-prepares it whenever that value moves to or from 0 or 1. (2) No
// RETURNING and no `IN (...)` list in a checked constraint: both build a temporary
// table at every execution.
// ---------------------------------------------------------------------------------------

/// The job stored under the idempotency key `key` of `owner` (see
/// [`rules::key_owner`]); keys stored before keys were scoped
/// ([`rules::UNSCOPED_KEYS`]) are every owner's, the owner's own first.
pub(super) fn lookup_key(tx: &Connection, owner: i64, key: &str) -> Result<Option<JobId>> {
    Ok(tx
        .prepare_cached(
            "SELECT id FROM jobs WHERE idempotency_key = ?2 AND submitter IN (?1, ?3)
             ORDER BY submitter = ?1 DESC LIMIT 1",
        )?
        .query_row(params![owner, key, rules::UNSCOPED_KEYS], |r| r.get(0))
        .optional()?
        .map(JobId))
}

/// The spec (JSON text) of a stored job.
pub(super) fn stored_spec(tx: &Connection, id: JobId) -> Result<String> {
    tx.prepare_cached("SELECT spec FROM job_specs WHERE job_id = ?1")?
        .query_row([id.0], |r| r.get(0))
        .optional()?
        .ok_or_else(|| corrupt(format!("job {id} has no spec")))
}

pub(super) fn job_exists(tx: &Connection, id: JobId) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .exists([id.0])?)
}

pub(super) fn run_exists(tx: &Connection, id: RunId) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
        .exists([id.0])?)
}
