//! Lifecycle steps inside a write transaction: state changes through `state::next`,
//! their events, dependency judgement, fencing and the end of an attempt.

use super::*;
use crate::rules::{AttemptEnd, attempt_end};
use crate::{Result, StoreError};
use gantry_core::api::Checkpoint;
use gantry_core::event::{self as ev};
use gantry_core::state::{self, Effect, Input};
use gantry_core::time::Millis;
use gantry_core::{DepsMode, JobId, JobState, Outcome, RunId, StopKind};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

/// Applies what some events uploaded by a run mean for the store: a checkpoint moves the
/// job's work-in-progress pointer, an insights snapshot becomes the run's live figures.
pub(super) fn apply_run_event(tx: &Connection, live: &Live, kind: &str, data: &str) -> Result<()> {
    match kind {
        ev::RUN_CHECKPOINT => {
            let cp: Checkpoint = serde_json::from_str(data).map_err(|e| {
                StoreError::Invalid(gantry_core::SpecError {
                    file: format!("event {kind} of run {}", live.run),
                    line: None,
                    field: Some("data".into()),
                    message: format!("a checkpoint needs wip_branch, wip_base and wip_commit: {e}"),
                })
            })?;
            tx.prepare_cached(
                "INSERT INTO job_agent (job_id, wip_branch, wip_base, wip_commit)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job_id) DO UPDATE SET wip_branch = ?2, wip_base = ?3, wip_commit = ?4",
            )?
            .execute(params![live.job.0, cp.branch, cp.base, cp.commit])?;
        }
        ev::AGENT_INSIGHTS => {
            // Checked to be insights before it is kept as the run's figures.
            let insights: gantry_core::engine::Insights =
                serde_json::from_str(data).map_err(|e| {
                    StoreError::Invalid(gantry_core::SpecError {
                        file: format!("event {kind} of run {}", live.run),
                        line: None,
                        field: Some("data".into()),
                        message: format!("not a valid insights snapshot: {e}"),
                    })
                })?;
            save_insights(tx, live, &insights)?;
        }
        _ => {}
    }
    Ok(())
}

/// Stores a run's insights, and the agent session on its job so a retry can resume it.
pub(super) fn save_insights(
    tx: &Connection,
    live: &Live,
    insights: &gantry_core::engine::Insights,
) -> Result<()> {
    let text = serde_json::to_string(insights)
        .map_err(|e| corrupt(format!("cannot encode insights: {e}")))?;
    tx.prepare_cached("UPDATE runs SET insights = ?2 WHERE id = ?1")?
        .execute(params![live.run.0, text])?;
    if let Some(session) = &insights.session_id {
        tx.prepare_cached(
            "INSERT INTO job_agent (job_id, session_id) VALUES (?1, ?2)
             ON CONFLICT (job_id) DO UPDATE SET session_id = ?2",
        )?
        .execute(params![live.job.0, session])?;
    }
    Ok(())
}

/// A factory's capabilities and whether claiming is paused (one table and a scalar
/// subquery, not a join).
pub(super) const CLAIM_FACTORY_SQL: &str =
    "SELECT capabilities, (SELECT paused FROM queue WHERE id = 1) FROM factories WHERE id = ?1";

/// The queued jobs in claim order (a range scan of `jobs_claim`), skipping those not
/// yet due and those whose lock a running job holds.
pub(super) const CLAIM_SCAN_SQL: &str =
    "SELECT q.id, q.attempt, q.epoch, q.event_seq, q.capabilities
     FROM jobs q INDEXED BY jobs_claim
     WHERE q.state = 'queued'
       AND (q.not_before IS NULL OR q.not_before <= ?1)
       AND (q.lock_key IS NULL OR NOT EXISTS
             (SELECT 1 FROM jobs r WHERE r.state = 'running' AND r.lock_key = q.lock_key))
     ORDER BY q.priority DESC, q.id";

pub(super) const RUN_INSERT_SQL: &str =
    "INSERT INTO runs (job_id, attempt, epoch, factory_id, started_at, lease_expires_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Claims a queued job (`to` is what [`state::next`] says a claim leads to).
pub(super) fn claim_update_sql(to: JobState) -> String {
    format!(
        "UPDATE jobs SET state = '{to}', attempt = ?2, epoch = ?3, current_run = ?4,
             started_at = COALESCE(started_at, ?5), not_before = NULL, reason = NULL,
             stop_requested = NULL, event_seq = ?6
         WHERE id = ?1 AND state = 'queued'"
    )
}

/// The fence's first lookup: a run's job and epoch.
pub(super) const FENCE_RUN_SQL: &str = "SELECT job_id, epoch FROM runs WHERE id = ?1";

/// The fence's second lookup: the job's row and what ending its attempt needs.
pub(super) fn fence_job_sql() -> String {
    format!(
        "SELECT {JOB_ROW_COLS}, current_run, retry_on, backoff_ms, event_seq
         FROM jobs WHERE id = ?1"
    )
}

pub(super) const FINISH_RUN_SQL: &str =
    "UPDATE runs SET outcome = ?2, exit_code = ?3, error = ?4, branch = ?5, base_commit = ?6,
         commit_sha = ?7, files_changed = ?8, lines_added = ?9, lines_deleted = ?10,
         finished_at = ?11
     WHERE id = ?1";

/// Moves a job between states. The states are written into the SQL, not bound: a bound
/// value compared with a partial index's condition makes SQLite re-prepare the
/// statement whenever the value changes. They come from a closed enum, and there are
/// few combinations.
pub(super) fn step_sql(from: JobState, to: JobState) -> String {
    let keep_stop = if to == JobState::Running {
        "stop_requested"
    } else {
        "NULL"
    };
    format!(
        "UPDATE jobs SET state = '{to}', reason = ?2, not_before = ?3, finished_at = ?4,
             stop_requested = {keep_stop}, event_seq = ?5
         WHERE id = ?1 AND state = '{from}'"
    )
}

/// Inserts `n` events of one job: `?1` job, `?2` time, then run, seq, kind and data of
/// each.
pub(super) fn events_insert_sql(n: usize) -> String {
    let mut sql = String::from("INSERT INTO events (job_id, at, run_id, seq, kind, data) VALUES ");
    for i in 0..n {
        let p = 3 + 4 * i;
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(?1, ?2, ?{}, ?{}, ?{}, ?{})",
            p,
            p + 1,
            p + 2,
            p + 3
        ));
    }
    sql
}

pub(super) const LOAD_SPEC_SQL: &str = "SELECT title, deps, spec FROM job_specs WHERE job_id = ?1";

// ---------------------------------------------------------------------------------------
// Events and transitions
// ---------------------------------------------------------------------------------------

/// Appends an event whose data is JSON text; a job's event takes the job's next `seq`.
/// Returns (id, seq).
pub(super) fn add_event(
    tx: &Connection,
    job: Option<JobId>,
    run: Option<RunId>,
    kind: &str,
    data: &str,
    now: Millis,
) -> Result<(i64, i64)> {
    let seq = match job {
        Some(job) => take_seqs(tx, job, 1)?,
        None => 0,
    };
    insert_events(
        tx,
        job,
        &[EventRow {
            run: run.map(|r| r.0),
            seq,
            kind,
            data,
        }],
        now,
    )?;
    Ok((tx.last_insert_rowid(), seq))
}

/// Takes the next `n` seqs of a job's events; returns the last one.
pub(super) fn take_seqs(tx: &Connection, job: JobId, n: i64) -> Result<i64> {
    tx.prepare_cached(
        "UPDATE jobs SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq",
    )?
    .query_row([job.0, n], |r| r.get::<_, i64>(0))
    .optional()?
    .ok_or_else(|| not_found("job", job))
}

/// An event row to insert, whose `seq` the caller already took from its job.
pub(super) struct EventRow<'a> {
    pub(super) run: Option<i64>,
    pub(super) seq: i64,
    pub(super) kind: &'a str,
    /// JSON text.
    pub(super) data: &'a str,
}

/// Inserts event rows of one job (or job-less ones) in one statement.
pub(super) fn insert_events(
    tx: &Connection,
    job: Option<JobId>,
    rows: &[EventRow<'_>],
    now: Millis,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let job = job.map(|j| j.0);
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(2 + 4 * rows.len());
    values.push(&job);
    values.push(&now);
    for r in rows {
        values.extend([&r.run as &dyn rusqlite::ToSql, &r.seq, &r.kind, &r.data]);
    }
    tx.prepare_cached(&events_insert_sql(rows.len()))?
        .execute(values.as_slice())?;
    Ok(())
}

/// The data of a `job.state` event.
pub(super) fn state_data(from: JobState, to: JobState, reason: Option<&str>) -> String {
    // The states are plain words; only the reason needs JSON quoting.
    let reason = serde_json::to_string(&reason).unwrap_or_else(|_| "null".into());
    format!(r#"{{"from":"{from}","to":"{to}","reason":{reason}}}"#)
}

/// An event recorded together with a state change, just before its `job.state`.
pub(super) struct Pending<'a> {
    pub(super) run: Option<RunId>,
    pub(super) kind: &'a str,
    /// JSON text.
    pub(super) data: String,
}

pub(super) fn action_of(input: Input) -> &'static str {
    match input {
        Input::DepsMet | Input::DepFailed => "settle dependencies",
        Input::Claim => "claim",
        Input::AttemptEnded { .. } => "end attempt",
        Input::Cancel => "cancel",
        Input::Kill => "kill",
        Input::Retry { .. } => "retry",
    }
}

/// A job after [`step`].
pub(super) struct Stepped {
    pub(super) to: JobState,
    pub(super) effect: Effect,
}

/// Moves a job from `from` by `input` through [`state::next`], recording the `pending`
/// events and then `job.state` (one update of the job, one insert of the events), and
/// returns the new state and the effect. `seq` is the job's `event_seq` when the
/// caller has just read it in this transaction (else it is read here). Does not settle
/// dependents: see [`transition`]. [`JobRow::apply_step`] makes the same change to a
/// row read before.
#[allow(clippy::too_many_arguments)]
pub(super) fn step(
    tx: &Connection,
    job: JobId,
    from: JobState,
    input: Input,
    reason: Option<&str>,
    not_before: Option<Millis>,
    now: Millis,
    seq: Option<i64>,
    pending: &[Pending<'_>],
) -> Result<Stepped> {
    let (to, effect) = state::next(from, input).map_err(|_| StoreError::WrongState {
        job,
        state: from,
        action: action_of(input),
    })?;
    if to == from {
        for p in pending {
            add_event(tx, Some(job), p.run, p.kind, &p.data, now)?;
        }
        return Ok(Stepped { to, effect });
    }
    let seq = match seq {
        Some(seq) => seq,
        None => tx
            .prepare_cached("SELECT event_seq FROM jobs WHERE id = ?1")?
            .query_row([job.0], |r| r.get::<_, i64>(0))
            .optional()?
            .ok_or_else(|| not_found("job", job))?,
    };
    let finished_at = to.is_terminal().then_some(now);
    let n = pending.len() as i64 + 1;
    let last_seq = seq + n;
    let updated = tx.prepare_cached(&step_sql(from, to))?.execute(params![
        job.0,
        reason,
        not_before,
        finished_at,
        last_seq
    ])?;
    if updated != 1 {
        return Err(corrupt(format!(
            "job {job} was not {from} when moving it to {to}"
        )));
    }
    let state = state_data(from, to, reason);
    let first_seq = last_seq - n + 1;
    let rows: Vec<EventRow<'_>> = pending
        .iter()
        .map(|p| (p.run.map(|r| r.0), p.kind, p.data.as_str()))
        .chain(std::iter::once((None, ev::JOB_STATE, state.as_str())))
        .zip(first_seq..)
        .map(|((run, kind, data), seq)| EventRow {
            run,
            seq,
            kind,
            data,
        })
        .collect();
    insert_events(tx, Some(job), &rows, now)?;
    Ok(Stepped { to, effect })
}

/// [`step`], then, when the job reached a terminal state, re-evaluates its blocked
/// dependents (transitively) in the same transaction.
#[allow(clippy::too_many_arguments)]
pub(super) fn transition(
    tx: &Connection,
    job: JobId,
    from: JobState,
    input: Input,
    reason: Option<&str>,
    not_before: Option<Millis>,
    now: Millis,
    seq: Option<i64>,
    pending: &[Pending<'_>],
) -> Result<Stepped> {
    let stepped = step(tx, job, from, input, reason, not_before, now, seq, pending)?;
    if stepped.to != from && stepped.to.is_terminal() {
        settle_dependents(tx, job, now)?;
    }
    Ok(stepped)
}

/// What a blocked job's dependencies say.
#[derive(Debug, PartialEq)]
pub(super) enum DepsVerdict {
    /// Some dependency has not finished (well enough) yet.
    Wait,
    /// Every dependency is satisfied.
    Met,
    /// A dependency ended badly and the job needs every one to succeed.
    Failed(String),
}

pub(super) fn judge_deps(mode: DepsMode, deps: &[(i64, JobState)]) -> DepsVerdict {
    match mode {
        DepsMode::Succeeded => {
            if let Some((id, st)) = deps
                .iter()
                .find(|(_, st)| st.is_terminal() && *st != JobState::Succeeded)
            {
                return DepsVerdict::Failed(format!("dependency {id} {st}"));
            }
            if deps.iter().all(|(_, st)| *st == JobState::Succeeded) {
                DepsVerdict::Met
            } else {
                DepsVerdict::Wait
            }
        }
        DepsMode::Finished => {
            if deps.iter().all(|(_, st)| st.is_terminal()) {
                DepsVerdict::Met
            } else {
                DepsVerdict::Wait
            }
        }
    }
}

pub(super) fn deps_verdict(tx: &Connection, job: JobId, mode: DepsMode) -> Result<DepsVerdict> {
    let mut stmt = tx.prepare_cached(
        "SELECT d.dep_id, (SELECT j.state FROM jobs j WHERE j.id = d.dep_id) FROM job_deps d
         WHERE d.job_id = ?1",
    )?;
    let rows = stmt
        .query_map([job.0], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let deps = rows
        .into_iter()
        .map(|(id, st)| Ok((id, parse_state(&st)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(judge_deps(mode, &deps))
}

/// Re-evaluates a blocked job; returns its new state when it moved.
pub(super) fn settle_blocked(tx: &Connection, job: JobId, now: Millis) -> Result<Option<JobState>> {
    let mode: Option<String> = tx
        .prepare_cached("SELECT deps_mode FROM jobs WHERE id = ?1 AND state = 'blocked'")?
        .query_row([job.0], |r| r.get(0))
        .optional()?;
    let Some(mode) = mode else {
        return Ok(None);
    };
    let (input, reason) = match deps_verdict(tx, job, parse_deps_mode(&mode)?)? {
        DepsVerdict::Wait => return Ok(None),
        DepsVerdict::Met => (Input::DepsMet, None),
        DepsVerdict::Failed(reason) => (Input::DepFailed, Some(reason)),
    };
    let stepped = step(
        tx,
        job,
        JobState::Blocked,
        input,
        reason.as_deref(),
        None,
        now,
        None,
        &[],
    )?;
    Ok(Some(stepped.to))
}

/// Re-evaluates the blocked dependents of a job that just reached a terminal state,
/// following cancellations transitively (with a work list, so long chains do not
/// deepen the stack).
pub(super) fn settle_dependents(tx: &Connection, job: JobId, now: Millis) -> Result<()> {
    let mut work = vec![job];
    while let Some(done) = work.pop() {
        let dependents: Vec<i64> = tx
            .prepare_cached("SELECT job_id FROM job_deps WHERE dep_id = ?1")?
            .query_map([done.0], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for dep in dependents {
            if let Some(to) = settle_blocked(tx, JobId(dep), now)?
                && to.is_terminal()
            {
                work.push(JobId(dep));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fencing
// ---------------------------------------------------------------------------------------

/// A running job as a fenced write sees it.
pub(super) struct Live {
    pub(super) job: JobId,
    pub(super) run: RunId,
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    pub(super) retry_on: String,
    pub(super) backoff_ms: u64,
    pub(super) stop: Option<StopKind>,
    /// The job's `event_seq`.
    pub(super) seq: i64,
    /// The job's row, when the fence read it (a finish returns it, changed).
    pub(super) row: Option<JobRow>,
}

/// Checks that `run` is the current run of a job running under `epoch`. When it is not,
/// records `lease.stale_write_rejected` and returns the error to give the writer.
pub(super) fn check_fence(
    tx: &Connection,
    run: RunId,
    epoch: i64,
    op: &str,
    now: Millis,
) -> Result<Result<Live, StoreError>> {
    // Two primary-key lookups rather than a join: SQLite plans a join with `= ?` terms
    // by the bound value and re-prepares it whenever that value moves to or from 0 or 1,
    // which costs more than the second lookup.
    let (job, run_epoch): (i64, i64) = tx
        .prepare_cached(FENCE_RUN_SQL)?
        .query_row([run.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found("run", run))?;
    let (row, current, retry_on, backoff, seq): (JobRow, Option<i64>, String, i64, i64) =
        tx.prepare_cached(&fence_job_sql())?.query_row([job], |r| {
            Ok((
                JobRow::read(r)?,
                r.get(15)?,
                r.get(16)?,
                r.get(17)?,
                r.get(18)?,
            ))
        })?;
    let job_epoch = row.epoch;
    let job = JobId(job);
    let state = parse_state(&row.state)?;
    let live = state == JobState::Running
        && job_epoch == epoch
        && run_epoch == epoch
        && current == Some(run.0);
    if !live {
        let data = json!({"run": run.0, "epoch": epoch, "current_epoch": job_epoch, "op": op});
        add_event(
            tx,
            Some(job),
            Some(run),
            ev::STALE_WRITE_REJECTED,
            &data.to_string(),
            now,
        )?;
        tracing::warn!(%job, %run, epoch, current_epoch = job_epoch, %state, op, "stale write rejected");
        return Ok(Err(StoreError::StaleLease {
            job,
            run,
            epoch,
            current_epoch: job_epoch,
            state,
        }));
    }
    Ok(Ok(Live {
        job,
        run,
        attempt: to_u32("attempt", row.attempt)?,
        max_attempts: to_u32("max_attempts", row.max_attempts)?,
        retry_on,
        backoff_ms: u64::try_from(backoff).map_err(|_| corrupt(format!("backoff_ms {backoff}")))?,
        stop: parse_stop(row.stop_requested.as_deref())?,
        seq,
        row: Some(row),
    }))
}

/// Ends the running attempt of `live` with `outcome`: applies the retry policy (a stop
/// request wins over it and decides the state), and moves the job on, recording the
/// `pending` events (what ended the attempt) before its `job.state`.
pub(super) fn end_attempt(
    tx: &Connection,
    live: &Live,
    outcome: Outcome,
    now: Millis,
    pending: &[Pending<'_>],
) -> Result<(JobState, Option<JobRow>)> {
    let retry_on = parse_retry_on(&live.retry_on)?;
    let AttemptEnd {
        outcome,
        retry,
        not_before,
        reason,
    } = attempt_end(
        outcome,
        live.stop,
        (live.attempt, live.max_attempts),
        &retry_on,
        live.backoff_ms,
        now,
    );
    let stepped = transition(
        tx,
        live.job,
        JobState::Running,
        Input::AttemptEnded { outcome, retry },
        reason.as_deref(),
        not_before,
        now,
        Some(live.seq),
        pending,
    )?;
    let row = live.row.clone().map(|mut row| {
        row.apply_step(stepped.to, reason.as_deref(), not_before, now);
        row
    });
    Ok((stepped.to, row))
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------
