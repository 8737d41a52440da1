//! Claims and simple finishes in batches: one statement, one commit, for every claim and
//! finish that arrived while the previous statements ran.
//!
//! Each statement has a fixed cost (a round trip, executor setup of a large plan, a
//! commit and its WAL flush, a walk from the head of the claim index) that dwarfs what
//! one claim or finish adds to it, and a busy queue asks for many at once: workers that
//! finish a job and want the next. So [`PgStore`](super::PgStore) hands them to a few
//! *lanes*, each with a connection of its own. A lane takes the asks waiting (up to
//! [`BATCH_MAX`]) and runs them as one statement; asks that arrive meanwhile wait for
//! the next lane. Alone, an ask is sent at once; under load, batches grow by themselves,
//! like group commit (see [`Lanes::ready`] for when a lane waits for more).
//!
//! Every ask keeps its own semantics inside the batch:
//! - A **finish** is fenced: it applies only when its job is running under the named
//!   epoch with the named run as current run, checked by the update on the job's row
//!   (which locks it; PostgreSQL checks again on the newest row when a concurrent change
//!   got there first), and only for reports whose end needs nothing from the row (see
//!   `fixed_plan`) of jobs no other job depends on. An ask whose finish did not apply
//!   gets no job back, and nothing of it was written: the caller runs the full finish,
//!   which records a stale write, settles dependents, or plans a retry.
//! - A **claim** (alone, or after its finish applied) gets the next job in claim order
//!   that its factory can run, as a single claim would (`gantry_claim_batch` in the
//!   schema), in the order the asks arrived. A lock key goes to one claim of the batch
//!   at most, and not while a running job holds it; the partial unique index still
//!   decides races with other statements, and a batch that loses one runs again whole.
//! - **Events** of the finishes come first, in ask order (`run.finished`, then
//!   `job.state`), then those of the claims (`job.state`, then `run.claimed`), as the
//!   statement wrote them: a claim may take a lock key that a finish of the same batch
//!   released, and the log must show the release first.
//!
//! A batch is all or nothing: an error fails every ask in it (none was committed, unless
//! the connection was lost while committing, as with any statement). Its statement may
//! wait for a row lock that another transaction holds on the job of one of its finishes
//! (those transactions are short: a cancel, a renewal); the other lane goes on meanwhile.

use super::{MAX_TRIES, R, TxError, describe, is_unique_violation, retry_pause, retryable};
use crate::codec::*;
use crate::lifecycle::state_data;
use crate::{Result, StoreError};
use deadpool_postgres::Pool;
use gantry_core::JobState;
use gantry_core::api::{Claim, ClaimedJob, Lease};
use gantry_core::event as ev;
use gantry_core::{JobId, RunId};
use std::sync::Arc;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Most asks in one statement.
const BATCH_MAX: usize = 64;

/// Statements in flight at once. Two keep the database busy while a lane waits for its
/// commit and for the next asks; more make smaller batches, and the cost of a statement
/// is mostly fixed (measured: `gantry bench queue`, 16 workers, on two cores).
pub(super) const LANES: usize = 2;

/// Longest a gathered batch waits for more asks (see [`Lanes::ready`]).
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A finish for a batch: the report, encoded (see `EncodedReport`), with the end's
/// target state and the data of its two events.
pub(super) struct FinishAsk {
    pub(super) run: i64,
    pub(super) epoch: i64,
    pub(super) to: &'static str,
    pub(super) reason: Option<String>,
    pub(super) outcome: &'static str,
    pub(super) exit_code: Option<i32>,
    pub(super) error: Option<String>,
    pub(super) branch: Option<String>,
    pub(super) base_commit: Option<String>,
    pub(super) commit: Option<String>,
    pub(super) files: Option<i64>,
    pub(super) added: Option<i64>,
    pub(super) deleted: Option<i64>,
    pub(super) insights: Option<String>,
    pub(super) session: Option<String>,
    pub(super) diff: Option<String>,
    /// The data of `run.finished` (JSON text).
    pub(super) finished: String,
    /// The data of the finish's `job.state` (JSON text).
    pub(super) state: String,
    /// Whether the asker wants the finished job whole (with its spec and agent state),
    /// or its row is enough.
    pub(super) want_job: bool,
}

/// One ask: a finish, a claim, or a finish and then a claim.
pub(super) struct Ask {
    pub(super) finish: Option<FinishAsk>,
    /// The factory to claim for.
    pub(super) factory: Option<i64>,
    /// The claim's lease, in ms.
    pub(super) ttl_ms: i64,
    pub(super) reply: oneshot::Sender<Result<Answer>>,
}

/// What an ask got.
pub(super) struct Answer {
    /// The finished job; `None` when the ask had no finish or it did not apply.
    pub(super) finished: Option<Finished>,
    /// The job claimed; `None` when nothing was claimable (or nothing was asked).
    pub(super) claim: Option<Claim>,
    /// Whether the factory of the claim exists (false when no claim was asked).
    pub(super) factory_found: bool,
}

/// A finished job, as much of it as its ask wanted (see [`FinishAsk::want_job`]).
pub(super) enum Finished {
    /// The whole job.
    Job(RawJob),
    /// The job's row only.
    Row(JobRow),
}

impl Finished {
    /// The row of the finished job.
    pub(super) fn row(&self) -> &JobRow {
        match self {
            Finished::Job(raw) => &raw.row,
            Finished::Row(row) => row,
        }
    }
}

/// The batch statement, with the `parts` a batch needs. `$1`..`$20` are arrays with
/// one element per ask, in order: run, epoch, target state, reason, outcome, exit code,
/// error, branch, base, commit, the three diff stats, insights, session, diff,
/// `run.finished` data, `job.state` data (all NULL for an ask without a finish), factory
/// (NULL without a claim) and lease ms; `$21` is the data of a claim's `job.state`;
/// `$22` is `running` and `$23` is `queued`, the states finishes and claims move jobs
/// from, given as data (through `now`) so that no plan looks a job up by id through a
/// partial index on its state (`jobs_running_lock`, `jobs_claim`): such an index keeps
/// an entry for every job that passed through the state since the last vacuum, and a
/// plan made when it looked small would read it all for each job. Returns one row per
/// ask: its number (from 1), whether its factory exists, [`JOB_COLS`] of the finished
/// job (NULL when none; its spec and agent state NULL too unless `parts.whole_jobs`),
/// then the claim's job, attempt, epoch, run, lease expiry, spec
/// and the job's agent state (NULL when none).
///
/// Every table the statement updates is reached through `id = ANY (...)` of the batch's
/// keys, so that whatever join order the planner picks, no step reads more rows than the
/// batch names, even under statistics from when the table was far smaller (a plan is
/// made once per connection, often when the database was new; the lanes run it under
/// [`LANE_SETTINGS`]).
///
/// The data-modifying parts read `fin` and `claimed`, so the finishes are written first,
/// the candidates are chosen next (seeing those finishes: a lock key a finish released
/// may be taken), and the events last: the finishes' in ask order, then the claims'.
/// The claimed jobs are updated by joining the candidates, not with `WHERE id IN
/// (subquery with LIMIT)`, which the planner may evaluate more than once.
fn batch_sql(claim_to: JobState, parts: Parts) -> String {
    let mut sql = String::from(
        r#"WITH now AS MATERIALIZED (
    SELECT gantry_now_ms() AS ms, $21::text AS claim_state, $22::text AS running,
        $23::text AS queued
), req AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[],
        $6::integer[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[],
        $12::bigint[], $13::bigint[], $14::text[], $15::text[], $16::text[], $17::text[],
        $18::text[], $19::bigint[], $20::bigint[])
        WITH ORDINALITY AS x(run, epoch, state_to, reason, outcome, exit_code, error, branch,
            base_commit, commit_sha, files_changed, lines_added, lines_deleted, insights,
            session_id, diff, finished_data, state_data, factory, ttl, n)
)"#,
    );
    let mut events = Vec::new();
    if parts.finishes {
        finish_parts(&mut sql, parts, &mut events);
    }
    if parts.claims {
        claim_parts(&mut sql, claim_to, parts, &mut events);
    }
    if !events.is_empty() {
        sql.push_str(&format!(
            r#", ev AS (
    INSERT INTO events (job_id, run_id, seq, kind, at, data)
    SELECT x.job_id, x.run_id, x.seq, x.kind, x.at, x.data FROM (
        {events}
    ) AS x (job_id, run_id, seq, kind, at, data, n, k)
    ORDER BY x.k > 2, x.n, x.k
)"#,
            events = events.join("\n        UNION ALL\n        "),
        ));
    }
    sql.push_str(&answer_select(parts));
    sql
}

/// A job's row columns ([`JOB_ROW_COLS`]) of the table or CTE `p`.
fn prefixed(p: &str) -> String {
    JOB_ROW_COLS
        .split(',')
        .map(|c| format!("{p}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The finishes' CTEs of [`batch_sql`], and the select of their events.
fn finish_parts(sql: &mut String, parts: Parts, events: &mut Vec<String>) {
    sql.push_str(&format!(
        r#", fr AS MATERIALIZED (
    SELECT req.*, r.job_id
    FROM runs r JOIN req ON req.run = r.id AND req.epoch = r.epoch
    WHERE r.id = ANY ($1)
), fin AS (
    UPDATE jobs j
    SET state = fr.state_to, reason = fr.reason, not_before = NULL, finished_at = now.ms,
    stop_requested = NULL, event_seq = j.event_seq + 2
    FROM fr, now
    WHERE j.id = ANY (ARRAY(SELECT job_id FROM fr)) AND j.id = fr.job_id
      AND j.state = now.running AND j.epoch = fr.epoch AND j.current_run = fr.run
      AND NOT j.has_dependents
    RETURNING {j_cols}, j.event_seq, now.ms AS now_ms, fr.n, fr.run, fr.outcome,
    fr.exit_code, fr.error, fr.branch, fr.base_commit, fr.commit_sha, fr.files_changed,
    fr.lines_added, fr.lines_deleted, fr.insights, fr.session_id, fr.diff,
    fr.finished_data, fr.state_data
), done AS (
    UPDATE runs
    SET outcome = fin.outcome, exit_code = fin.exit_code, error = fin.error,
    branch = fin.branch, base_commit = fin.base_commit, commit_sha = fin.commit_sha,
    files_changed = fin.files_changed, lines_added = fin.lines_added,
    lines_deleted = fin.lines_deleted, finished_at = fin.now_ms,
    insights = coalesce(fin.insights, runs.insights)
    FROM fin
    WHERE runs.id = ANY ($1) AND runs.id = fin.run
)"#,
        j_cols = prefixed("j"),
    ));
    if parts.sessions {
        sql.push_str(
            r#", agent AS (
    INSERT INTO job_agent (job_id, session_id)
    SELECT fin.id, fin.session_id FROM fin WHERE fin.session_id IS NOT NULL
    ON CONFLICT (job_id) DO UPDATE SET session_id = excluded.session_id
)"#,
        );
    }
    if parts.diffs {
        sql.push_str(
            r#", diff AS (
    INSERT INTO run_diffs (run_id, patch)
    SELECT fin.run, fin.diff FROM fin WHERE fin.diff IS NOT NULL
)"#,
        );
    }
    events.push(format!(
        "SELECT fin.id AS job_id, e.run_id, fin.event_seq - 2 + e.k AS seq, e.kind,
        fin.now_ms AS at, e.data, fin.n AS n, e.k AS k
    FROM fin, LATERAL (VALUES (1, fin.run, '{finished}', fin.finished_data),
                              (2, NULL, '{state}', fin.state_data))
        AS e(k, run_id, kind, data)",
        finished = ev::RUN_FINISHED,
        state = ev::JOB_STATE,
    ));
}

/// The claims' CTEs of [`batch_sql`], and the select of their events.
fn claim_parts(sql: &mut String, claim_to: JobState, parts: Parts, events: &mut Vec<String>) {
    // A claim after a finish waits for that finish to apply.
    let after_finish = if parts.finishes {
        "AND (req.run IS NULL OR req.n = ANY (ARRAY(SELECT n FROM fin)))"
    } else {
        ""
    };
    sql.push_str(&format!(
        r#", asking AS MATERIALIZED (
    SELECT req.n, req.factory, req.ttl, f.cap_set::text AS caps
    FROM req JOIN factories f ON f.id = req.factory
    WHERE f.id = ANY ($19) {after_finish}
      AND NOT (SELECT q.paused FROM queue q WHERE q.id = 1)
), cand AS MATERIALIZED (
    SELECT * FROM gantry_claim_batch(
    ARRAY(SELECT n FROM asking ORDER BY n), ARRAY(SELECT caps FROM asking ORDER BY n),
    (SELECT ms FROM now))
), claimed AS (
    UPDATE jobs j
    SET state = '{claim_to}', attempt = j.attempt + 1, epoch = j.epoch + 1,
    current_run = nextval('runs_id_seq'), started_at = COALESCE(j.started_at, now.ms),
    not_before = NULL, reason = NULL, stop_requested = NULL, event_seq = j.event_seq + 2
    FROM cand JOIN asking a ON a.n = cand.n, now
    WHERE j.id = ANY (ARRAY(SELECT job FROM cand)) AND j.id = cand.job
      AND j.state = now.queued
    RETURNING j.id, j.attempt, j.epoch, j.current_run, j.event_seq, now.ms, cand.n,
    a.factory, now.ms + a.ttl AS lease, now.claim_state
), run AS (
    INSERT INTO runs (id, job_id, attempt, epoch, factory_id, started_at, lease_expires_at)
    SELECT current_run, id, attempt, epoch, factory, ms, lease FROM claimed
)"#,
    ));
    events.push(format!(
        "SELECT c.id, e.run_id, c.event_seq - 4 + e.k, e.kind, c.ms, e.data, c.n, e.k
    FROM claimed c, LATERAL (VALUES (3, NULL, '{state}', c.claim_state),
        (4, c.current_run, '{claimed}',
         '{{\"run\":' || c.current_run || ',\"attempt\":' || c.attempt || ',\"epoch\":'
         || c.epoch || ',\"factory\":' || c.factory || ',\"lease_expires_at\":'
         || c.lease || '}}')) AS e(k, run_id, kind, data)",
        state = ev::JOB_STATE,
        claimed = ev::RUN_CLAIMED,
    ));
}

/// The final select of [`batch_sql`]: one row per ask.
fn answer_select(parts: Parts) -> String {
    let mut sql = String::new();
    // The row layout is the same in every variant (see `read_answer`); a part left out
    // reads as NULL, its first column typed as the reader checks it.
    // The joins read the tables as they were before the statement (no part of a
    // statement sees another's writes), so the session the finish itself recorded
    // comes from the report.
    let fin_cols = if parts.finishes && parts.whole_jobs {
        format!(
            "{}, s.title, s.deps, s.spec, coalesce(fin.session_id, ag.session_id), \
             ag.wip_branch, ag.wip_base, ag.wip_commit",
            prefixed("fin")
        )
    } else if parts.finishes {
        let mut cols = vec![prefixed("fin")];
        cols.extend(std::iter::repeat_n(
            "NULL".to_string(),
            JOB_COLS_LEN - JOB_ROW_COLS_LEN,
        ));
        cols.join(", ")
    } else {
        let mut nulls = vec!["NULL::bigint"];
        nulls.extend(std::iter::repeat_n("NULL", JOB_COLS_LEN - 1));
        nulls.join(", ")
    };
    let claim_cols = if parts.claims {
        "c.id, c.attempt, c.epoch, c.current_run, c.lease, cs.spec, ca.session_id, \
         ca.wip_branch, ca.wip_base, ca.wip_commit"
            .to_string()
    } else {
        let mut nulls = vec!["NULL::bigint"];
        nulls.extend(std::iter::repeat_n("NULL", CLAIM_COLS_LEN - 1));
        nulls.join(", ")
    };
    sql.push_str(&format!(
        "\nSELECT req.n, f.id IS NOT NULL, {fin_cols},\n    {claim_cols}\nFROM req\n\
         LEFT JOIN factories f ON f.id = req.factory"
    ));
    if parts.finishes {
        sql.push_str("\nLEFT JOIN fin ON fin.n = req.n");
    }
    if parts.finishes && parts.whole_jobs {
        sql.push_str(
            "\nLEFT JOIN job_specs s ON s.job_id = fin.id\n\
             LEFT JOIN job_agent ag ON ag.job_id = fin.id",
        );
    }
    if parts.claims {
        sql.push_str(
            "\nLEFT JOIN claimed c ON c.n = req.n\n\
             LEFT JOIN job_specs cs ON cs.job_id = c.id\n\
             LEFT JOIN job_agent ca ON ca.job_id = c.id",
        );
    }
    sql
}

/// Which asks a batch holds, and so which parts its statement needs: each part left out
/// is work the database does not do at every batch (setting up the statement's plan
/// costs about as much as a few asks do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    /// Some ask has a finish.
    finishes: bool,
    /// Some ask has a claim.
    claims: bool,
    /// Some finish wants its job whole (see [`FinishAsk::want_job`]).
    whole_jobs: bool,
    /// Some finish names an agent session.
    sessions: bool,
    /// Some finish carries a diff.
    diffs: bool,
}

impl Parts {
    /// How many different [`Parts`] there are (see [`Parts::index`]).
    const COUNT: usize = 32;

    /// The parts `batch` needs.
    fn of(batch: &[Ask]) -> Parts {
        let finishes = || batch.iter().filter_map(|a| a.finish.as_ref());
        Parts {
            finishes: finishes().next().is_some(),
            claims: batch.iter().any(|a| a.factory.is_some()),
            whole_jobs: finishes().any(|f| f.want_job),
            sessions: finishes().any(|f| f.session.is_some()),
            diffs: finishes().any(|f| f.diff.is_some()),
        }
    }

    /// A number below [`Parts::COUNT`], different for each [`Parts`].
    fn index(self) -> usize {
        [
            self.finishes,
            self.claims,
            self.whole_jobs,
            self.sessions,
            self.diffs,
        ]
        .iter()
        .enumerate()
        .map(|(bit, on)| usize::from(*on) << bit)
        .sum()
    }
}

/// How many claim columns a row of [`batch_sql`] has after the finished job's.
const CLAIM_COLS_LEN: usize = 10;

/// The settings of the lanes' connections (given at connection start, so a batch is one
/// statement): plans of nested loops over index lookups (each ask touches a few rows by
/// key, but the statistics of tables that grow fast, like `runs` in a new database, can
/// make a scan look cheaper), one generic plan (see [`batch_sql`]), and no JIT
/// compilation.
pub(super) const LANE_SETTINGS: &str = "-c enable_seqscan=off -c enable_bitmapscan=off \
    -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off \
    -c plan_cache_mode=force_generic_plan";

/// What every lane shares.
pub(super) struct Lanes {
    /// The lanes' own connections (one per lane, with [`LANE_SETTINGS`]).
    pool: Pool,
    /// The state claims move jobs to.
    claim_to: JobState,
    /// [`batch_sql`] for each [`Parts`] (by [`Parts::index`]), made when first needed.
    sql: [std::sync::OnceLock<String>; Parts::COUNT],
    /// The data of a claim's `job.state` event.
    claim_state: String,
    /// Where the asks wait; the lane holding it gathers the next batch.
    queue: Mutex<mpsc::Receiver<Ask>>,
    /// Batches in flight, and the asks in them.
    flying: std::sync::Mutex<(usize, usize)>,
    /// Signalled when a batch lands.
    landed: Notify,
}

impl Lanes {
    /// Lanes over `pool` running [`batch_sql`] for claims to `claim_to`, whose asks come
    /// from `queue`.
    pub(super) fn new(pool: Pool, claim_to: JobState, queue: mpsc::Receiver<Ask>) -> Lanes {
        Lanes {
            pool,
            claim_to,
            sql: std::array::from_fn(|_| std::sync::OnceLock::new()),
            claim_state: state_data(JobState::Queued, claim_to, None),
            queue: Mutex::new(queue),
            flying: std::sync::Mutex::new((0, 0)),
            landed: Notify::new(),
        }
    }

    /// Whether a gathered batch of `n` asks should go now: when nothing is in flight
    /// (an ask alone goes at once), or when it is as large as the batches in flight.
    /// Else it waits for more asks, for a batch to land, or [`GATHER_WAIT`] at most:
    /// sending it smaller would split the asks into ever smaller batches (each lane
    /// taking whatever arrived while the other ran), and the cost of a statement is
    /// mostly fixed.
    fn ready(&self, n: usize) -> bool {
        let (batches, asks) = *self.flying.lock().unwrap_or_else(|p| p.into_inner());
        batches == 0 || n >= BATCH_MAX || n * batches >= asks
    }

    /// Counts a batch of `n` asks taking off or landing.
    fn fly(&self, n: usize, taking_off: bool) {
        let mut flying = self.flying.lock().unwrap_or_else(|p| p.into_inner());
        if taking_off {
            flying.0 += 1;
            flying.1 += n;
        } else {
            flying.0 = flying.0.saturating_sub(1);
            flying.1 = flying.1.saturating_sub(n);
        }
    }
}

/// One lane: gathers a batch (see [`Lanes::ready`]), runs it as one statement, answers
/// each ask; until the store is gone (its sender dropped).
pub(super) async fn lane(lanes: Arc<Lanes>) {
    loop {
        let (batch, open) = gather(&lanes).await;
        // An asker that went away (a long poll whose client left) needs no claim.
        let batch: Vec<Ask> = batch
            .into_iter()
            .filter(|ask| !ask.reply.is_closed())
            .collect();
        if !batch.is_empty() {
            let n = batch.len();
            lanes.fly(n, true);
            run(&lanes, batch).await;
            lanes.fly(n, false);
            lanes.landed.notify_one();
        }
        if !open {
            return;
        }
    }
}

/// The next batch, and whether the queue is still open.
async fn gather(lanes: &Lanes) -> (Vec<Ask>, bool) {
    let mut queue = lanes.queue.lock().await;
    let mut batch = Vec::with_capacity(BATCH_MAX);
    // Set when the first ask is in.
    let mut deadline = None;
    loop {
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(ask) => batch.push(ask),
                Err(_) => break,
            }
        }
        if !batch.is_empty() && lanes.ready(batch.len()) {
            return (batch, true);
        }
        if !batch.is_empty() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + GATHER_WAIT);
        }
        let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + GATHER_WAIT);
        tokio::select! {
            ask = queue.recv() => match ask {
                Some(ask) => batch.push(ask),
                None => return (batch, false),
            },
            // A permit left by a landing while nobody waited wakes this at once; the
            // check above then runs again.
            () = lanes.landed.notified(), if !batch.is_empty() => {}
            // A batch in flight that takes long (a row lock it waits for) holds up the
            // asks gathered meanwhile no longer than this.
            () = tokio::time::sleep_until(until), if !batch.is_empty() => {
                return (batch, true);
            }
        }
    }
}

/// Runs one batch (again, a bounded number of times, when it lost a race) and answers
/// every ask in it.
async fn run(lanes: &Lanes, batch: Vec<Ask>) {
    let mut tries = 0u32;
    let rows = loop {
        tries += 1;
        match execute(lanes, &batch).await {
            Ok(rows) => break rows,
            // A claim raced another statement for a lock key; the next snapshot sees
            // the lock held.
            Err(e) if is_unique_violation(&e) && tries < 100 => {}
            // Never after a lost connection: the batch may have committed.
            Err(e)
                if tries < MAX_TRIES
                    && retryable(&e)
                    && !matches!(&e, TxError::Db(d) if d.is_closed()) =>
            {
                retry_pause(tries).await;
            }
            Err(e) => {
                let why = match e {
                    TxError::Db(e) => describe(&e),
                    TxError::Store(e) => e.to_string(),
                };
                for ask in batch {
                    // The asker may have gone away; nothing to do then.
                    let _ = ask.reply.send(Err(StoreError::Backend(why.clone())));
                }
                return;
            }
        }
    };
    let mut answers: Vec<Option<Result<Answer>>> = (0..batch.len()).map(|_| None).collect();
    for row in &rows {
        let n = match row.try_get::<_, i64>(0) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "a batch row has no ask number");
                continue;
            }
        };
        let Some(i) = usize::try_from(n - 1).ok().filter(|i| *i < batch.len()) else {
            tracing::error!(n, "a batch row names no ask of the batch");
            continue;
        };
        answers[i] = Some(read_answer(row, &batch[i]).map_err(StoreError::from));
    }
    for (ask, answer) in batch.into_iter().zip(answers) {
        let answer = answer.unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "the batch statement returned no row for an ask".into(),
            ))
        });
        // The asker may have gone away; nothing to do then.
        let _ = ask.reply.send(answer);
    }
}

/// Sends one batch as one statement (committed by itself).
async fn execute(lanes: &Lanes, batch: &[Ask]) -> R<Vec<Row>> {
    let client = lanes.pool.get().await.map_err(|e| {
        StoreError::Backend(format!("cannot get a connection to the database: {e}"))
    })?;
    let n = batch.len();
    let mut runs = Vec::with_capacity(n);
    let mut epochs = Vec::with_capacity(n);
    let mut tos = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut exits = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut branches = Vec::with_capacity(n);
    let mut bases = Vec::with_capacity(n);
    let mut commits = Vec::with_capacity(n);
    let mut files = Vec::with_capacity(n);
    let mut added = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut insights = Vec::with_capacity(n);
    let mut sessions = Vec::with_capacity(n);
    let mut diffs = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut factories = Vec::with_capacity(n);
    let mut ttls = Vec::with_capacity(n);
    for ask in batch {
        let f = ask.finish.as_ref();
        runs.push(f.map(|f| f.run));
        epochs.push(f.map(|f| f.epoch));
        tos.push(f.map(|f| f.to));
        reasons.push(f.and_then(|f| f.reason.as_deref()));
        outcomes.push(f.map(|f| f.outcome));
        exits.push(f.and_then(|f| f.exit_code));
        errors.push(f.and_then(|f| f.error.as_deref()));
        branches.push(f.and_then(|f| f.branch.as_deref()));
        bases.push(f.and_then(|f| f.base_commit.as_deref()));
        commits.push(f.and_then(|f| f.commit.as_deref()));
        files.push(f.and_then(|f| f.files));
        added.push(f.and_then(|f| f.added));
        deleted.push(f.and_then(|f| f.deleted));
        insights.push(f.and_then(|f| f.insights.as_deref()));
        sessions.push(f.and_then(|f| f.session.as_deref()));
        diffs.push(f.and_then(|f| f.diff.as_deref()));
        finished.push(f.map(|f| f.finished.as_str()));
        states.push(f.map(|f| f.state.as_str()));
        factories.push(ask.factory);
        ttls.push(ask.ttl_ms);
    }
    let (running, queued) = (JobState::Running.as_str(), JobState::Queued.as_str());
    let params: [&(dyn ToSql + Sync); 23] = [
        &runs,
        &epochs,
        &tos,
        &reasons,
        &outcomes,
        &exits,
        &errors,
        &branches,
        &bases,
        &commits,
        &files,
        &added,
        &deleted,
        &insights,
        &sessions,
        &diffs,
        &finished,
        &states,
        &factories,
        &ttls,
        &lanes.claim_state,
        &running,
        &queued,
    ];
    let parts = Parts::of(batch);
    if !parts.finishes && !parts.claims {
        // Every ask has a finish or a claim, so no batch is without both.
        return Err(StoreError::Corrupt("a batch with neither finish nor claim".into()).into());
    }
    let sql = lanes.sql[parts.index()].get_or_init(|| batch_sql(lanes.claim_to, parts));
    let stmt = client.prepare_cached(sql).await?;
    Ok(client.query(&stmt, &params).await?)
}

/// Reads the row of [`batch_sql`] that answers `ask`.
fn read_answer(row: &Row, ask: &Ask) -> R<Answer> {
    let factory_found: bool = row.try_get(1)?;
    let whole = ask.finish.as_ref().is_some_and(|f| f.want_job);
    let finished = match row.try_get::<_, Option<i64>>(2)? {
        Some(_) if whole => Some(Finished::Job(RawJob::read_at(row, 2)?)),
        Some(_) => Some(Finished::Row(JobRow::read(row, 2)?)),
        None => None,
    };
    let claim = read_claim(row, 2 + JOB_COLS_LEN, ask.ttl_ms)?;
    Ok(Answer {
        finished,
        claim,
        factory_found,
    })
}

/// Reads a claim's columns (job, attempt, epoch, run, lease expiry, spec, then the
/// job's agent state) starting at column `at`: `None` when they are NULL, nothing having
/// been claimed.
fn read_claim(row: &Row, at: usize, ttl_ms: i64) -> R<Option<Claim>> {
    let Some(job) = row.try_get::<_, Option<i64>>(at)? else {
        return Ok(None);
    };
    let attempt: i64 = row.try_get(at + 1)?;
    let spec: String = row.try_get(at + 5)?;
    let agent = AgentRow::read(row, at + 6)?;
    Ok(Some(Claim {
        job: ClaimedJob {
            id: JobId(job),
            spec: parse_json("job spec", &spec)?,
            checkpoint: agent.checkpoint(),
            resume_session: agent.session_id,
        },
        run: Lease {
            id: RunId(row.try_get(at + 3)?),
            attempt: to_u32("attempt", attempt)?,
            epoch: row.try_get(at + 2)?,
            lease_expires_at: row.try_get(at + 4)?,
            lease_ttl_ms: u64::try_from(ttl_ms).unwrap_or(0),
        },
        // The server decides delivery, not the store.
        deliver: false,
    }))
}
