//! The job lifecycle inside a write transaction, once for both backends: state changes
//! through [`state::next`] and their events, dependency judgement and settling, the
//! fence of a run's writes, the end of an attempt, reaping, stops, retries and pauses.
//!
//! A backend supplies its SQL through [`WriteTx`], one method a statement (or a few);
//! everything that decides is here. PostgreSQL's transaction awaits its statements;
//! SQLite's runs them on its writer thread without waiting, and drives these functions
//! with [`run_sync`].

use crate::StoreError;
use crate::codec::{Columns, to_backoff, to_u32};
use crate::codec::{JobRow, corrupt, parse_deps_mode, parse_retry_on, parse_state, parse_stop};
use crate::rules::{AttemptEnd, attempt_end};
use gantry_core::api::Checkpoint;
use gantry_core::engine::Insights;
use gantry_core::event::{self as ev, Payload};
use gantry_core::state::{self, Effect, Input};
use gantry_core::time::Millis;
use gantry_core::{DepsMode, Job, JobId, JobState, Outcome, RunId, StopKind};
use std::future::Future;
use std::task::{Context, Poll, Waker};

mod check;
mod ops;
pub(crate) use check::{RunDoc, gate_results, run_checks};
pub(crate) use ops::*;

/// A backend's write transaction, as the lifecycle uses it. Each method runs the
/// backend's own statements; none decides anything the lifecycle decides.
pub(crate) trait WriteTx {
    /// The backend's error (it carries a [`StoreError`] too).
    type Error: From<StoreError>;

    /// The transaction's clock.
    fn now(&self) -> Millis;

    /// Appends an event; a job's event takes the job's next `seq`. Returns (id, seq).
    async fn add_event(&self, e: EventRef<'_>) -> Result<(i64, i64), Self::Error>;

    /// The job of a run; `None` for an unknown run.
    async fn job_of_run(&self, run: RunId) -> Result<Option<i64>, Self::Error>;

    /// A job's `event_seq`, taking its row lock where the backend has row locks.
    async fn event_seq(&self, job: JobId) -> Result<i64, Self::Error>;

    /// Writes a state change; false when the job was not in `w.from`.
    async fn write_state(&self, w: &StateWrite) -> Result<bool, Self::Error>;

    /// A job's deps and their states (as stored).
    async fn dep_states(&self, job: JobId) -> Result<Vec<(i64, String)>, Self::Error>;

    /// A blocked job's deps mode (as stored) and, when the backend read it under the
    /// job's lock, its `event_seq`; `None` when the job is not blocked.
    async fn blocked(&self, job: JobId) -> Result<Option<(String, Option<i64>)>, Self::Error>;

    /// The jobs that depend on `job`.
    async fn dependents(&self, job: JobId) -> Result<Vec<JobId>, Self::Error>;

    /// What a stop of `job` needs from its row (see [`StopTarget`]).
    async fn stop_target(&self, job: JobId) -> Result<StopTarget, Self::Error>;

    /// Records the stop request `kind` on a running job.
    async fn request_stop(&self, job: JobId, kind: StopKind) -> Result<(), Self::Error>;

    /// Locks a job's row for a retry, where the backend has row locks.
    async fn lock_job(&self, job: JobId) -> Result<(), Self::Error>;

    /// One job, as stored now.
    async fn load_job(&self, job: JobId) -> Result<Job, Self::Error>;

    /// Allows one more attempt of a finished job and clears its stop request.
    async fn allow_attempt(&self, job: JobId) -> Result<(), Self::Error>;

    /// Pauses or resumes claiming; whether that changed anything.
    async fn set_paused_flag(&self, paused: bool) -> Result<bool, Self::Error>;

    /// The running and checking jobs, by id.
    async fn running_jobs(&self) -> Result<Vec<JobId>, Self::Error>;

    /// The running and checking jobs whose lease expired (see [`Expired`]), by job id.
    async fn expired_leases(&self) -> Result<Vec<Expired>, Self::Error>;

    /// Records a run as lost; false when it turned out not to be (a renewal got there
    /// first), so it is not reaped.
    async fn mark_lost(&self, run: RunId) -> Result<bool, Self::Error>;

    /// Moves a job's work-in-progress pointer to a checkpoint.
    async fn save_checkpoint(&self, job: JobId, cp: &Checkpoint) -> Result<(), Self::Error>;

    /// One of a run's JSON documents (its text), when it has one.
    async fn load_doc(&self, run: RunId, doc: RunDoc) -> Result<Option<String>, Self::Error>;

    /// Keeps one of a run's JSON documents.
    async fn save_doc(&self, run: RunId, doc: RunDoc, text: &str) -> Result<(), Self::Error>;

    /// Keeps a run's insights (JSON text), and the agent session on its job.
    async fn save_insights(
        &self,
        live: &Live,
        text: &str,
        session: Option<&str>,
    ) -> Result<(), Self::Error>;
}

/// Runs a lifecycle future of a backend whose statements never wait (SQLite's, run on
/// its writer thread): such a future is ready at its first poll.
pub(crate) fn run_sync<T>(f: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => Err(StoreError::Backend(
            "a store operation that never waits waited".into(),
        )),
    }
}

/// An event to append: of a job (then it takes the job's next `seq`) or of none,
/// naming a run or not.
#[derive(Clone, Copy)]
pub(crate) struct EventRef<'a> {
    pub(crate) job: Option<JobId>,
    pub(crate) run: Option<RunId>,
    pub(crate) kind: &'a str,
    /// JSON text.
    pub(crate) data: &'a str,
}

/// An event recorded together with a state change, just before its `job.state`.
pub(crate) struct Pending {
    pub(crate) run: Option<RunId>,
    pub(crate) kind: &'static str,
    /// JSON text.
    pub(crate) data: String,
}

/// A state change asked of the lifecycle.
pub(crate) struct StepRequest {
    pub(crate) job: JobId,
    pub(crate) from: JobState,
    pub(crate) input: Input,
    pub(crate) reason: Option<String>,
    pub(crate) not_before: Option<Millis>,
    /// The job's `event_seq`, when the caller has just read it in this transaction
    /// (under the job's lock, where the backend has row locks); else it is read.
    pub(crate) seq: Option<i64>,
    /// Events to record before the `job.state`.
    pub(crate) pending: Vec<Pending>,
}

impl StepRequest {
    /// Moves `job` from `from` by `input`, with no reason, no not_before, no events
    /// before its `job.state`, and its `event_seq` read when needed.
    pub(crate) fn new(job: JobId, from: JobState, input: Input) -> StepRequest {
        StepRequest {
            job,
            from,
            input,
            reason: None,
            not_before: None,
            seq: None,
            pending: Vec::new(),
        }
    }

    /// The same request with `reason`.
    pub(crate) fn reason(mut self, reason: impl Into<String>) -> StepRequest {
        self.reason = Some(reason.into());
        self
    }
}

/// A job after [`step`].
pub(crate) struct Stepped {
    pub(crate) to: JobState,
    pub(crate) effect: Effect,
}

/// A state change as a backend writes it: one update of the job (state, reason,
/// not_before, finished_at, `event_seq`; a stop request is kept only while running),
/// guarded by the state it comes from, and one insert of its events in order.
pub(crate) struct StateWrite {
    pub(crate) job: i64,
    pub(crate) from: JobState,
    pub(crate) to: JobState,
    pub(crate) reason: Option<String>,
    pub(crate) not_before: Option<Millis>,
    pub(crate) finished_at: Option<Millis>,
    /// The job's `event_seq` after the change (the seq of its `job.state`).
    pub(crate) last_seq: i64,
    pub(crate) now: Millis,
    /// The events' runs, seqs, kinds and data (JSON text): the pending ones, then
    /// `job.state`.
    pub(crate) runs: Vec<Option<i64>>,
    pub(crate) seqs: Vec<i64>,
    pub(crate) kinds: Vec<&'static str>,
    pub(crate) datas: Vec<String>,
}

impl StateWrite {
    /// The write of moving `req.job` from `req.from` to `to`, its `event_seq` being
    /// `seq` before.
    pub(crate) fn new(req: StepRequest, to: JobState, seq: i64, now: Millis) -> StateWrite {
        let state = state_data(req.from, to, req.reason.as_deref());
        let n = req.pending.len() + 1;
        let (mut runs, mut kinds, mut datas) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for p in req.pending {
            runs.push(p.run.map(|r| r.0));
            kinds.push(p.kind);
            datas.push(p.data);
        }
        runs.push(None);
        kinds.push(ev::JOB_STATE);
        datas.push(state);
        let n = n as i64;
        StateWrite {
            job: req.job.0,
            from: req.from,
            to,
            reason: req.reason,
            not_before: req.not_before,
            finished_at: to.is_terminal().then_some(now),
            last_seq: seq + n,
            now,
            runs,
            seqs: (seq + 1..=seq + n).collect(),
            kinds,
            datas,
        }
    }
}

/// The data of a `job.state` event.
pub(crate) fn state_data(from: JobState, to: JobState, reason: Option<&str>) -> String {
    ev::JobStateChanged {
        from,
        to,
        reason: reason.map(str::to_string),
    }
    .text()
}

/// The action an input stands for, in a refusal's message.
pub(crate) fn action_of(input: Input) -> &'static str {
    match input {
        Input::DepsMet | Input::DepFailed => "settle dependencies",
        Input::Claim => "claim",
        Input::CheckBegan => "begin checking",
        Input::FixRoundBegan => "begin a fix round",
        Input::AttemptEnded { .. } => "end attempt",
        Input::Cancel => "cancel",
        Input::Kill => "kill",
        Input::Retry { .. } => "retry",
    }
}

/// Where `input` takes a job in state `from`, or the refusal.
fn next(job: JobId, from: JobState, input: Input) -> Result<(JobState, Effect), StoreError> {
    state::next(from, input).map_err(|_| StoreError::WrongState {
        job,
        state: from,
        action: action_of(input),
    })
}

/// Moves a job as `req` asks, through [`state::next`], recording its pending events and
/// then `job.state` (one update of the job, one insert of the events), and returns the
/// new state and the effect. Does not settle dependents: see [`transition`].
pub(crate) async fn step<T: WriteTx>(tx: &T, req: StepRequest) -> Result<Stepped, T::Error> {
    let (job, from) = (req.job, req.from);
    let (to, effect) = next(job, from, req.input)?;
    if to == from {
        for p in &req.pending {
            let (run, kind, data) = (p.run, p.kind, p.data.as_str());
            tx.add_event(EventRef {
                job: Some(job),
                run,
                kind,
                data,
            })
            .await?;
        }
        return Ok(Stepped { to, effect });
    }
    let seq = match req.seq {
        Some(seq) => seq,
        None => tx.event_seq(job).await?,
    };
    if !tx
        .write_state(&StateWrite::new(req, to, seq, tx.now()))
        .await?
    {
        return Err(corrupt(format!("job {job} was not {from} when moving it to {to}")).into());
    }
    Ok(Stepped { to, effect })
}

/// [`step`], then, when the job reached a terminal state, re-evaluates its blocked
/// dependents (transitively) in the same transaction.
pub(crate) async fn transition<T: WriteTx>(tx: &T, req: StepRequest) -> Result<Stepped, T::Error> {
    let (job, from) = (req.job, req.from);
    let stepped = step(tx, req).await?;
    if stepped.to != from && stepped.to.is_terminal() {
        settle_dependents(tx, job).await?;
    }
    Ok(stepped)
}

/// What a blocked job's dependencies say.
#[derive(Debug, PartialEq)]
pub(crate) enum DepsVerdict {
    /// Some dependency has not finished (well enough) yet.
    Wait,
    /// Every dependency is satisfied.
    Met,
    /// A dependency ended badly and the job needs every one to succeed.
    Failed(String),
}

/// Judges a job's dependencies (id and state of each) by its deps mode.
pub(crate) fn judge_deps(mode: DepsMode, deps: &[(i64, JobState)]) -> DepsVerdict {
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

/// What a job's dependencies say now.
pub(crate) async fn deps_verdict<T: WriteTx>(
    tx: &T,
    job: JobId,
    mode: DepsMode,
) -> Result<DepsVerdict, T::Error> {
    let mut deps = Vec::new();
    for (id, st) in tx.dep_states(job).await? {
        deps.push((id, parse_state(&st)?));
    }
    Ok(judge_deps(mode, &deps))
}

/// Re-evaluates a blocked job; returns its new state when it moved.
pub(crate) async fn settle_blocked<T: WriteTx>(
    tx: &T,
    job: JobId,
) -> Result<Option<JobState>, T::Error> {
    let Some((mode, seq)) = tx.blocked(job).await? else {
        return Ok(None);
    };
    let (input, reason) = match deps_verdict(tx, job, parse_deps_mode(&mode)?).await? {
        DepsVerdict::Wait => return Ok(None),
        DepsVerdict::Met => (Input::DepsMet, None),
        DepsVerdict::Failed(reason) => (Input::DepFailed, Some(reason)),
    };
    let req = StepRequest {
        reason,
        seq,
        ..StepRequest::new(job, JobState::Blocked, input)
    };
    Ok(Some(step(tx, req).await?.to))
}

/// Re-evaluates the blocked dependents of a job that just reached a terminal state,
/// following cancellations transitively (with a work list, so long chains do not
/// deepen the stack).
pub(crate) async fn settle_dependents<T: WriteTx>(tx: &T, job: JobId) -> Result<(), T::Error> {
    let mut work = vec![job];
    while let Some(done) = work.pop() {
        for dep in tx.dependents(done).await? {
            if let Some(to) = settle_blocked(tx, dep).await?
                && to.is_terminal()
            {
                work.push(dep);
            }
        }
    }
    Ok(())
}

/// A running (or checking) job as a fenced write sees it.
pub(crate) struct Live {
    pub(crate) job: JobId,
    pub(crate) run: RunId,
    /// The job's state when the write began: running or checking.
    pub(crate) state: JobState,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) retry_on: String,
    pub(crate) backoff_ms: u64,
    pub(crate) stop: Option<StopKind>,
    /// The job's `event_seq`.
    pub(crate) seq: i64,
    /// The job's row, when the fence read it (a finish returns it, changed).
    pub(crate) row: Option<JobRow>,
    /// Whether some job depends on this one (as far as the backend tracks it; true
    /// when it does not know).
    pub(crate) has_dependents: bool,
}

/// What the fence of a write naming a run read: the run's job and epoch, and what a
/// fenced write needs of the job.
pub(crate) struct Fence {
    pub(crate) job: JobId,
    pub(crate) run_epoch: i64,
    pub(crate) current_run: Option<i64>,
    pub(crate) retry_on: String,
    pub(crate) backoff_ms: i64,
    pub(crate) seq: i64,
    pub(crate) row: JobRow,
    pub(crate) has_dependents: bool,
}

/// Checks that `run` is the current run of a job running (or checking) under `epoch`. When it is not,
/// records `lease.stale_write_rejected` and returns the error to give the writer (the
/// caller keeps the record and nothing else).
pub(crate) async fn check_fence<T: WriteTx>(
    tx: &T,
    fence: Fence,
    run: RunId,
    epoch: i64,
    op: &str,
) -> Result<Result<Live, StoreError>, T::Error> {
    let Fence { job, row, .. } = fence;
    let state = parse_state(&row.state)?;
    let current_epoch = row.epoch;
    let live = state.is_active()
        && current_epoch == epoch
        && fence.run_epoch == epoch
        && fence.current_run == Some(run.0);
    if !live {
        let data = ev::StaleWriteRejected {
            run,
            epoch,
            current_epoch,
            op: op.to_string(),
        };
        tx.add_event(EventRef {
            job: Some(job),
            run: Some(run),
            kind: ev::STALE_WRITE_REJECTED,
            data: &data.text(),
        })
        .await?;
        tracing::warn!(%job, %run, epoch, current_epoch, %state, op, "stale write rejected");
        return Ok(Err(StoreError::StaleLease {
            job,
            run,
            epoch,
            current_epoch,
            state,
        }));
    }
    Ok(Ok(Live {
        job,
        run,
        state,
        attempt: to_u32("attempt", row.attempt)?,
        max_attempts: to_u32("max_attempts", row.max_attempts)?,
        retry_on: fence.retry_on,
        backoff_ms: to_backoff(fence.backoff_ms)?,
        stop: parse_stop(row.stop_requested.as_deref())?,
        seq: fence.seq,
        row: Some(row),
        has_dependents: fence.has_dependents,
    }))
}

/// The write that ends the running (or checking) attempt of `live` with `outcome` (and
/// the `error` its report gave, if any): the retry policy (a stop request wins over it
/// and decides the state), the target state and its reason, with the `pending` events
/// (what ended the attempt) before its `job.state`.
pub(crate) fn plan_end(
    live: &Live,
    outcome: Outcome,
    error: Option<&str>,
    now: Millis,
    pending: Vec<Pending>,
) -> Result<StateWrite, StoreError> {
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
    let reason = crate::rules::reason_with_error(reason, outcome, error);
    let input = Input::AttemptEnded { outcome, retry };
    let (to, _) = next(live.job, live.state, input)?;
    let req = StepRequest {
        reason,
        not_before,
        pending,
        ..StepRequest::new(live.job, live.state, input)
    };
    Ok(StateWrite::new(req, to, live.seq, now))
}

/// Ends the running (or checking) attempt of `live` with `outcome` and the `error` its
/// report gave (see [`plan_end`]), and moves the job on, settling its dependents when
/// it ended. Returns the state reached and the fence's row of the job with the same
/// change made.
pub(crate) async fn end_attempt<T: WriteTx>(
    tx: &T,
    live: &Live,
    outcome: Outcome,
    error: Option<&str>,
    pending: Vec<Pending>,
) -> Result<(JobState, Option<JobRow>), T::Error> {
    let w = plan_end(live, outcome, error, tx.now(), pending)?;
    if !tx.write_state(&w).await? {
        return Err(corrupt(format!(
            "job {} was not {} when ending its attempt",
            live.job, live.state
        ))
        .into());
    }
    if w.to.is_terminal() {
        settle_dependents(tx, live.job).await?;
    }
    let row = live.row.clone().map(|mut row| {
        row.apply_step(w.to, w.reason.as_deref(), w.not_before, w.now);
        row
    });
    Ok((w.to, row))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_deps_by_mode() {
        use JobState::*;
        let s = DepsMode::Succeeded;
        let f = DepsMode::Finished;
        assert_eq!(judge_deps(s, &[]), DepsVerdict::Met);
        assert_eq!(
            judge_deps(s, &[(1, Succeeded), (2, Running)]),
            DepsVerdict::Wait
        );
        assert_eq!(
            judge_deps(s, &[(1, Succeeded), (2, Succeeded)]),
            DepsVerdict::Met
        );
        assert_eq!(
            judge_deps(s, &[(1, Queued), (2, Killed)]),
            DepsVerdict::Failed("dependency 2 killed".into())
        );
        assert_eq!(
            judge_deps(f, &[(1, Failed), (2, Canceled)]),
            DepsVerdict::Met
        );
        assert_eq!(
            judge_deps(f, &[(1, Failed), (2, Blocked)]),
            DepsVerdict::Wait
        );
    }
}
