//! SQLite's side of the lifecycle: the statements [`WriteTx`] and [`SubmitTx`] run,
//! on the writer thread inside the operation's savepoint, and the hot path's SQL.

use super::*;
use crate::lifecycle::RunDoc;
use crate::lifecycle::{EventRef, Fence, Live, StateWrite, StopTarget, WriteTx, check_fence};
use crate::submit::SubmitTx;
use crate::{Result, StoreError};
use gantry_core::api::Checkpoint;
use gantry_core::time::Millis;
use gantry_core::{Job, JobId, JobState, RunId, StopKind};
use rusqlite::{Connection, OptionalExtension, params};

/// A write operation's connection (inside its savepoint) and its clock.
pub(super) struct Lite<'c> {
    pub(super) conn: &'c Connection,
    pub(super) now: Millis,
}

impl WriteTx for Lite<'_> {
    type Error = StoreError;

    fn now(&self) -> Millis {
        self.now
    }

    async fn add_event(&self, e: EventRef<'_>) -> Result<(i64, i64)> {
        add_event(self.conn, e, self.now)
    }

    async fn job_of_run(&self, run: RunId) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT job_id FROM runs WHERE id = ?1")?
            .query_row([run.0], |r| r.get(0))
            .optional()?)
    }

    async fn event_seq(&self, job: JobId) -> Result<i64> {
        self.conn
            .prepare_cached("SELECT event_seq FROM jobs WHERE id = ?1")?
            .query_row([job.0], |r| r.get::<_, i64>(0))
            .optional()?
            .ok_or_else(|| not_found("job", job))
    }

    async fn write_state(&self, w: &StateWrite) -> Result<bool> {
        let updated = self
            .conn
            .prepare_cached(&step_sql(w.from, w.to))?
            .execute(params![
                w.job,
                w.reason,
                w.not_before,
                w.finished_at,
                w.last_seq
            ])?;
        if updated != 1 {
            return Ok(false);
        }
        let rows: Vec<EventRow<'_>> = (0..w.seqs.len())
            .map(|i| EventRow {
                run: w.runs[i],
                seq: w.seqs[i],
                kind: w.kinds[i],
                data: &w.datas[i],
            })
            .collect();
        insert_events(self.conn, Some(JobId(w.job)), &rows, self.now)?;
        Ok(true)
    }

    async fn dep_states(&self, job: JobId) -> Result<Vec<(i64, String)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT d.dep_id, (SELECT j.state FROM jobs j WHERE j.id = d.dep_id)
                 FROM job_deps d WHERE d.job_id = ?1",
            )?
            .query_map([job.0], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    async fn blocked(&self, job: JobId) -> Result<Option<(String, Option<i64>)>> {
        Ok(self
            .conn
            .prepare_cached("SELECT deps_mode FROM jobs WHERE id = ?1 AND state = 'blocked'")?
            .query_row([job.0], |r| r.get(0))
            .optional()?
            .map(|mode| (mode, None)))
    }

    async fn dependents(&self, job: JobId) -> Result<Vec<JobId>> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached("SELECT job_id FROM job_deps WHERE dep_id = ?1")?
            .query_map([job.0], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids.into_iter().map(JobId).collect())
    }

    async fn stop_target(&self, job: JobId) -> Result<StopTarget> {
        self.conn
            .prepare_cached("SELECT state, stop_requested, current_run FROM jobs WHERE id = ?1")?
            .query_row([job.0], |r| {
                Ok(StopTarget {
                    state: r.get(0)?,
                    stop: r.get(1)?,
                    current_run: r.get(2)?,
                    seq: None,
                })
            })
            .optional()?
            .ok_or_else(|| not_found("job", job))
    }

    async fn request_stop(&self, job: JobId, kind: StopKind) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE jobs SET stop_requested = ?2 WHERE id = ?1")?
            .execute(params![job.0, kind.as_str()])?;
        Ok(())
    }

    async fn lock_job(&self, _job: JobId) -> Result<()> {
        // The writer's transaction holds the database's write lock: no row lock needed.
        Ok(())
    }

    async fn load_job(&self, job: JobId) -> Result<Job> {
        load_job(self.conn, job)
    }

    async fn allow_attempt(&self, job: JobId) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE jobs SET max_attempts = max(max_attempts, attempt + 1),
                     stop_requested = NULL
                 WHERE id = ?1",
            )?
            .execute([job.0])?;
        Ok(())
    }

    async fn set_paused_flag(&self, paused: bool) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached("UPDATE queue SET paused = ?1 WHERE id = 1 AND paused != ?1")?
            .execute([paused])?;
        Ok(changed > 0)
    }

    async fn running_jobs(&self) -> Result<Vec<JobId>> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached(
                "SELECT id FROM jobs WHERE state = 'running' OR state = 'checking' ORDER BY id",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids.into_iter().map(JobId).collect())
    }

    async fn expired_leases(&self) -> Result<Vec<Expired>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {} FROM jobs j INDEXED BY jobs_running_lock
                     JOIN runs r ON r.id = j.current_run
                 WHERE (j.state = 'running' OR j.state = 'checking')
                   AND r.lease_expires_at < ?1 ORDER BY j.id",
                Expired::COLS
            ))?
            .query_map([self.now], |r| Expired::read(r))?
            .collect::<rusqlite::Result<_>>()?)
    }

    async fn mark_lost(&self, run: RunId) -> Result<bool> {
        self.conn
            .prepare_cached(
                "UPDATE runs SET outcome = 'lost', finished_at = ?2
                 WHERE id = ?1 AND outcome IS NULL",
            )?
            .execute(params![run.0, self.now])?;
        // The one writer read the run as its job's current one in this transaction, and
        // nothing renews a lease in between: it is lost.
        Ok(true)
    }

    async fn save_checkpoint(&self, job: JobId, cp: &Checkpoint) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO job_agent (job_id, wip_branch, wip_base, wip_commit)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (job_id) DO UPDATE SET wip_branch = ?2, wip_base = ?3, wip_commit = ?4",
            )?
            .execute(params![job.0, cp.branch, cp.base, cp.commit])?;
        Ok(())
    }

    async fn load_doc(&self, run: RunId, doc: RunDoc) -> Result<Option<String>> {
        let sql = format!("SELECT {} FROM runs WHERE id = ?1", doc.column());
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row([run.0], |r| r.get(0))?)
    }

    async fn save_doc(&self, run: RunId, doc: RunDoc, text: &str) -> Result<()> {
        let sql = format!("UPDATE runs SET {} = ?2 WHERE id = ?1", doc.column());
        self.conn
            .prepare_cached(&sql)?
            .execute(params![run.0, text])?;
        Ok(())
    }

    async fn save_insights(&self, live: &Live, text: &str, session: Option<&str>) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE runs SET insights = ?2 WHERE id = ?1")?
            .execute(params![live.run.0, text])?;
        if let Some(session) = session {
            self.conn
                .prepare_cached(
                    "INSERT INTO job_agent (job_id, session_id) VALUES (?1, ?2)
                     ON CONFLICT (job_id) DO UPDATE SET session_id = ?2",
                )?
                .execute(params![live.job.0, session])?;
        }
        Ok(())
    }
}

impl SubmitTx for Lite<'_> {
    async fn lookup_key(&self, owner: i64, key: &str) -> Result<Option<JobId>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM jobs WHERE idempotency_key = ?2 AND submitter IN (?1, ?3)
                 ORDER BY submitter = ?1 DESC LIMIT 1",
            )?
            .query_row(params![owner, key, rules::UNSCOPED_KEYS], |r| r.get(0))
            .optional()?
            .map(JobId))
    }

    async fn stored_spec(&self, id: JobId) -> Result<String> {
        self.conn
            .prepare_cached("SELECT spec FROM job_specs WHERE job_id = ?1")?
            .query_row([id.0], |r| r.get(0))
            .optional()?
            .ok_or_else(|| corrupt(format!("job {id} has no spec")))
    }

    async fn job_exists(&self, id: JobId) -> Result<bool> {
        job_exists(self.conn, id)
    }
}

/// Reads the fence of a write naming `(run, epoch)` and checks it (see
/// [`check_fence`]).
pub(super) fn fence(
    tx: &Lite<'_>,
    run: RunId,
    epoch: i64,
    op: &str,
) -> Result<Result<Live, StoreError>> {
    // Two primary-key lookups rather than a join: SQLite plans a join with `= ?` terms
    // by the bound value and re-prepares it whenever that value moves to or from 0 or 1,
    // which costs more than the second lookup.
    let (job, run_epoch): (i64, i64) = tx
        .conn
        .prepare_cached(FENCE_RUN_SQL)?
        .query_row([run.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found("run", run))?;
    let fence = tx
        .conn
        .prepare_cached(&fence_job_sql())?
        .query_row([job], |r| {
            Ok(Fence {
                job: JobId(job),
                run_epoch,
                row: JobRow::read(r, 0)?,
                current_run: r.get(15)?,
                retry_on: r.get(16)?,
                backoff_ms: r.get(17)?,
                seq: r.get(18)?,
                has_dependents: true,
            })
        })?;
    run_sync(check_fence(tx, fence, run, epoch, op))
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

/// A factory's capabilities and whether claiming is paused (one table and a scalar
/// subquery, not a join).
pub(super) const CLAIM_FACTORY_SQL: &str =
    "SELECT capabilities, (SELECT paused FROM queue WHERE id = 1) FROM factories WHERE id = ?1";

/// The queued jobs in claim order (a range scan of `jobs_claim`), skipping those not
/// yet due and those whose lock a running or checking job holds.
pub(super) const CLAIM_SCAN_SQL: &str =
    "SELECT q.id, q.attempt, q.epoch, q.event_seq, q.capabilities
     FROM jobs q INDEXED BY jobs_claim
     WHERE q.state = 'queued'
       AND (q.not_before IS NULL OR q.not_before <= ?1)
       AND (q.lock_key IS NULL OR NOT EXISTS
             (SELECT 1 FROM jobs r WHERE (r.state = 'running' OR r.state = 'checking')
                AND r.lock_key = q.lock_key))
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
    let keep_stop = if to.is_active() {
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
// Events
// ---------------------------------------------------------------------------------------

/// Appends an event whose data is JSON text; a job's event takes the job's next `seq`.
/// Returns (id, seq).
pub(super) fn add_event(tx: &Connection, e: EventRef<'_>, now: Millis) -> Result<(i64, i64)> {
    let seq = match e.job {
        Some(job) => take_seqs(tx, job, 1)?,
        None => 0,
    };
    let row = EventRow {
        run: e.run.map(|r| r.0),
        seq,
        kind: e.kind,
        data: e.data,
    };
    insert_events(tx, e.job, &[row], now)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hot-path statement, with how many parameters it binds.
    fn hot_statements() -> Vec<String> {
        let mut sqls = vec![
            CLAIM_FACTORY_SQL.to_string(),
            CLAIM_SCAN_SQL.to_string(),
            RUN_INSERT_SQL.to_string(),
            claim_update_sql(JobState::Running),
            FENCE_RUN_SQL.to_string(),
            fence_job_sql(),
            FINISH_RUN_SQL.to_string(),
            events_insert_sql(1),
            events_insert_sql(2),
            LOAD_SPEC_SQL.to_string(),
            "UPDATE jobs SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq".into(),
        ];
        for from in JobState::ALL {
            for to in JobState::ALL {
                sqls.push(step_sql(from, to));
            }
        }
        sqls
    }

    #[test]
    fn hot_statements_are_not_re_prepared_and_need_no_temporary_table() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gantry.db");
        let mut conn = Connection::open(&path).expect("open");
        migrate(&mut conn, &path).expect("migrate");
        // This checks plans, not data: the made-up values need not reference rows.
        conn.execute_batch("PRAGMA foreign_keys = OFF")
            .expect("pragma");
        // `take_seqs` is the one hot statement that needs RETURNING: it is used only for
        // events a worker uploads, never by claims and finishes.
        let returning =
            "UPDATE jobs SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq";
        for sql in hot_statements() {
            let mut stmt = conn.prepare(&sql).expect("prepare");
            let n = stmt.parameter_count();
            // Values that cross 0 and 1, which is where SQLite re-plans value-sensitive
            // statements.
            for v in [5_i64, 1, 0, 2, 7, 3] {
                let values = vec![v; n];
                let mut rows = stmt.query(rusqlite::params_from_iter(values)).expect("run");
                while rows.next().expect("step").is_some() {}
            }
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "re-prepared: {sql}"
            );
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).expect("explain");
            let ops: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(vec![0_i64; n]), |r| r.get(1))
                .expect("explain")
                .collect::<rusqlite::Result<_>>()
                .expect("opcodes");
            if sql != returning {
                assert!(
                    !ops.iter().any(|op| op == "OpenEphemeral"),
                    "needs a temporary table: {sql}"
                );
            }
        }
    }
}
