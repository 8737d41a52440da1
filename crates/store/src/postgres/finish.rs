//! Finishes: the full finish of a run (fenced, settling dependents), the report as
//! the finish statements take it, and which finishes may go in a batch instead.

use super::*;
use crate::lifecycle::{Fence, Pending, StateWrite, check_fence, plan_end, state_data};
use crate::rules::attempt_end;
use gantry_core::event::{self as ev};
use gantry_core::state::{self, Input};
use gantry_core::{Job, JobId, JobState, Outcome, RunId};
use tokio_postgres::types::ToSql;

/// The fence: a run's job, locked, with what a fenced write needs. `$1` run.
static FENCE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(fence_sql);

fn fence_sql() -> String {
    let job_cols: Vec<String> = JOB_ROW_COLS
        .split(',')
        .map(|c| format!("j.{}", c.trim()))
        .collect();
    format!(
        "SELECT r.job_id, r.epoch, j.current_run, j.retry_on, j.backoff_ms, j.event_seq,
                gantry_now_ms(), {}, j.has_dependents
         FROM runs r JOIN jobs j ON j.id = r.job_id
         WHERE r.id = $1
         FOR NO KEY UPDATE OF j",
        job_cols.join(", ")
    )
}

/// A finish in one statement: [`STEP_SQL`]'s twelve parameters, then the run's report
/// (`$13` run, `$14` outcome, `$15` exit code, `$16` error, `$17` branch, `$18` base,
/// `$19` commit, `$20`..`$22` diff stats, `$23` insights, kept only when reported) and
/// `$24` the agent session to keep on the job, when reported.
const FINISH_SQL: &str = concat!(
    "WITH r AS (
    UPDATE runs SET outcome = $14, exit_code = $15, error = $16, branch = $17,
        base_commit = $18, commit_sha = $19, files_changed = $20, lines_added = $21,
        lines_deleted = $22, finished_at = $6, insights = coalesce($23, insights)
    WHERE id = $13
), a AS (
    INSERT INTO job_agent (job_id, session_id) SELECT $1, $24::text WHERE $24::text IS NOT NULL
    ON CONFLICT (job_id) DO UPDATE SET session_id = excluded.session_id
), ",
    step_sql_tail!()
);

impl PgStore {
    /// Runs a fenced write: begins, locks and checks the fence, in one round trip. A
    /// stale write records its rejection (the caller commits it) and yields
    /// [`StoreError::StaleLease`].
    pub(super) async fn fenced_begin(
        &self,
        tx: &mut Tx,
        run: RunId,
        epoch: i64,
        op: &'static str,
    ) -> R<std::result::Result<Live, StoreError>> {
        let stmt = tx.prep(&FENCE_SQL).await?;
        tx.open = true;
        let c = tx.client();
        let params: [&(dyn ToSql + Sync); 1] = [&run.0];
        let (began, row) = tokio::join!(c.batch_execute("BEGIN"), c.query_opt(&stmt, &params));
        began?;
        let row = row?.ok_or_else(|| not_found("run", run))?;
        tx.now = row.try_get(6)?;
        let fence = Fence {
            job: JobId(row.try_get(0)?),
            run_epoch: row.try_get(1)?,
            current_run: row.try_get(2)?,
            retry_on: row.try_get(3)?,
            backoff_ms: row.try_get(4)?,
            seq: row.try_get(5)?,
            row: JobRow::read(&row, 7)?,
            has_dependents: row.try_get(7 + JOB_ROW_COLS_LEN)?,
        };
        check_fence(&*tx, fence, run, epoch, op).await
    }

    /// The finish of `run` in full: begins, locks and checks the fence, records the
    /// report and moves the job on (settling dependents), and commits; a stale finish
    /// commits only its rejection. Lost races run it again.
    pub(super) async fn finish_full(&self, run: RunId, report: FinishReport) -> Result<Job> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut tx = self.conn().await?;
            let out = match self
                .fenced_begin(&mut tx, run, report.epoch, "finish")
                .await
            {
                Ok(Ok(live)) => {
                    match self.finish_live(&mut tx, &live, &report).await {
                        // Committed already, unless it settled dependents.
                        Ok(raw) if !tx.open => Ok(Ok(raw)),
                        out => tx.end(out.map(Ok)).await,
                    }
                }
                Ok(Err(stale)) => tx.end(Ok(Err(stale))).await,
                Err(e) => tx.end(Err(e)).await,
            };
            match out {
                Err(e) if tries < MAX_TRIES && retryable(&e) => retry_pause(tries).await,
                Err(e) => return Err(e.into()),
                Ok(Ok(raw)) => {
                    self.changed();
                    return raw.into_job();
                }
                Ok(Err(stale)) => {
                    self.changed();
                    return Err(stale);
                }
            }
        }
    }

    /// The finish of a live run: records the report, moves the job on, and commits,
    /// in one statement pipelined with the commit, unless dependents need settling.
    async fn finish_live(&self, tx: &mut Tx, live: &Live, report: &FinishReport) -> R<RawJob> {
        let rep = EncodedReport::new(live.run, report)?;
        let finished = Pending {
            run: Some(live.run),
            kind: ev::RUN_FINISHED,
            data: rep.finished.clone(),
        };
        let error = report.error.as_deref();
        let plan: StateWrite = plan_end(live, rep.outcome, error, tx.now, vec![finished])?;
        let stmt = tx.prep(FINISH_SQL).await?;
        let step = StepParams::new(&plan);
        let mut params: Vec<&(dyn ToSql + Sync)> = step.params().to_vec();
        params.push(&live.run.0);
        params.extend(rep.params());
        if let Some(diff) = &report.diff {
            // Before the pipelined finish and commit, inside the fenced transaction: a
            // stale finish rolls the diff back with everything else.
            tx.client()
                .execute(
                    "INSERT INTO run_diffs (run_id, patch) VALUES ($1, $2)",
                    &[&live.run.0, diff],
                )
                .await?;
        }
        let settle = live.has_dependents && plan.to.is_terminal();
        let c = tx.client();
        let row = if settle {
            let row = c.query_opt(&stmt, &params).await?;
            settle_dependents(&*tx, live.job).await?;
            row
        } else {
            let (row, commit) =
                tokio::join!(c.query_opt(&stmt, &params), c.batch_execute("COMMIT"));
            let row = row?;
            match commit {
                Ok(()) => tx.open = false,
                Err(e) => {
                    return Err(
                        StoreError::Backend(format!("commit failed: {}", describe(&e))).into(),
                    );
                }
            }
            row
        };
        let row = row.ok_or_else(|| {
            corrupt(format!(
                "job {} was not running when ending its attempt",
                live.job
            ))
        })?;
        let mut raw = RawJob::read(&row)?;
        if rep.session.is_some() {
            // Saved by the same statement, whose join cannot see it yet.
            raw.agent.session_id = rep.session.clone();
        }
        Ok(raw)
    }
}

/// A finish report as the finish statements take it.
struct EncodedReport<'a> {
    report: &'a FinishReport,
    outcome: Outcome,
    outcome_str: &'static str,
    files: Option<i64>,
    added: Option<i64>,
    deleted: Option<i64>,
    /// The run's insights as JSON text, when reported.
    insights: Option<String>,
    /// The agent session to keep on the job, when reported.
    session: Option<String>,
    /// The data of the `run.finished` event (JSON text).
    finished: String,
}

impl<'a> EncodedReport<'a> {
    /// Encodes the report of a finish of `run`; a report without an outcome is invalid.
    fn new(run: RunId, report: &'a FinishReport) -> R<EncodedReport<'a>> {
        let outcome = crate::rules::report_outcome(run, report)?;
        let finished = crate::rules::finished_data(outcome, report)?;
        let insights = report
            .insights
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| corrupt(format!("cannot encode insights: {e}")))?;
        Ok(EncodedReport {
            report,
            outcome,
            outcome_str: outcome.as_str(),
            files: report.files_changed.map(i64::from),
            added: report.lines_added.map(i64::from),
            deleted: report.lines_deleted.map(i64::from),
            insights,
            session: report.insights.as_ref().and_then(|i| i.session_id.clone()),
            finished,
        })
    }

    /// Outcome, exit code, error, branch, base, commit, the three diff stats, insights
    /// and session, in the order both finish statements take them.
    fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.outcome_str,
            &self.report.exit_code,
            &self.report.error,
            &self.report.branch,
            &self.report.base_commit,
            &self.report.commit,
            &self.files,
            &self.added,
            &self.deleted,
            &self.insights,
            &self.session,
        ]
    }
}

/// A lease length in ms, as the database takes it.
pub(super) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The finish of `run` with `report` as a batch ask, when its end needs nothing from
/// the job's row (see [`fixed_plan`]); `None` when the full finish must run (which also
/// refuses a report without an outcome, once it has checked the fence).
pub(super) fn simple_finish(
    run: RunId,
    report: &FinishReport,
    want_job: bool,
) -> Result<Option<batch::FinishAsk>> {
    let Some(to) = report.outcome.and_then(fixed_plan) else {
        return Ok(None);
    };
    let rep = EncodedReport::new(run, report)?;
    Ok(Some(batch::FinishAsk {
        run: run.0,
        epoch: report.epoch,
        to: to.as_str(),
        reason: None,
        outcome: rep.outcome_str,
        exit_code: report.exit_code,
        error: report.error.clone(),
        branch: report.branch.clone(),
        base_commit: report.base_commit.clone(),
        commit: report.commit.clone(),
        files: rep.files,
        added: rep.added,
        deleted: rep.deleted,
        insights: rep.insights,
        session: rep.session,
        diff: report.diff.clone(),
        finished: rep.finished,
        state: state_data(JobState::Running, to, None),
        want_job,
    }))
}

/// The target state of ending a running attempt with `outcome`, when neither it nor
/// anything else the end writes depends on the job's row (its attempt, retry policy or
/// stop request): only then may a finish be written without reading the row first.
/// That holds for an outcome that is never retried (so no stop request or attempt count
/// changes it) and whose end carries no reason (which would name the attempt): a
/// success. `None` for every other outcome.
pub(super) fn fixed_plan(outcome: Outcome) -> Option<JobState> {
    if outcome.is_retryable_kind() {
        return None;
    }
    let end = attempt_end(outcome, None, (1, 1), &[], 0, 0);
    if end.retry || end.reason.is_some() || end.not_before.is_some() || end.outcome != outcome {
        return None;
    }
    let input = Input::AttemptEnded {
        outcome,
        retry: false,
    };
    let (to, _) = state::next(JobState::Running, input).ok()?;
    to.is_terminal().then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed plan is what the full finish would plan for any row: every stop request,
    /// attempt count, retry policy and clock give the same end.
    #[test]
    fn fixed_plans_hold_for_every_row() {
        let mut fixed = Vec::new();
        for outcome in Outcome::ALL {
            let Some(to) = fixed_plan(outcome) else {
                continue;
            };
            fixed.push(outcome);
            for stop in [None, Some(StopKind::Cancel), Some(StopKind::Kill)] {
                for attempts in [(1, 1), (1, 3), (2, 3), (5, 5)] {
                    for retry_on in [&[][..], &Outcome::ALL[..]] {
                        for now in [0, 1_795_000_000_000] {
                            let end = attempt_end(outcome, stop, attempts, retry_on, 5_000, now);
                            assert!(!end.retry && end.reason.is_none() && end.not_before.is_none());
                            let input = Input::AttemptEnded {
                                outcome: end.outcome,
                                retry: end.retry,
                            };
                            let (planned, _) =
                                state::next(JobState::Running, input).expect("a transition");
                            assert_eq!(planned, to, "{outcome} with {stop:?} at {attempts:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(fixed, [Outcome::Succeeded]);
    }
}
