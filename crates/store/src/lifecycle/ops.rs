//! The lifecycle's operations: reaping expired leases, stops, retries, pauses, and
//! what events uploaded or recorded mean for the store.

use super::*;
use crate::codec::not_found;

/// A running (or checking) job whose lease expired, as the reaper reads it.
pub(crate) struct Expired {
    job: i64,
    state: String,
    run: i64,
    epoch: i64,
    attempt: i64,
    max_attempts: i64,
    retry_on: String,
    backoff_ms: i64,
    stop: Option<String>,
    seq: i64,
}

impl Expired {
    /// The columns [`Expired::read`] expects, in order (`j` the job, `r` its run).
    pub(crate) const COLS: &str = "j.id, r.id, j.epoch, j.attempt, j.max_attempts, \
         j.retry_on, j.backoff_ms, j.stop_requested, j.event_seq, j.state";

    /// Reads [`Expired::COLS`].
    pub(crate) fn read<C: Columns>(r: &C) -> Result<Expired, C::Error> {
        Ok(Expired {
            job: r.col(0)?,
            run: r.col(1)?,
            epoch: r.col(2)?,
            attempt: r.col(3)?,
            max_attempts: r.col(4)?,
            retry_on: r.col(5)?,
            backoff_ms: r.col(6)?,
            stop: r.col(7)?,
            seq: r.col(8)?,
            state: r.col(9)?,
        })
    }
}

/// Returns every job whose lease expired to the lifecycle as outcome `lost`; returns
/// the runs it reaped.
pub(crate) async fn reap<T: WriteTx>(tx: &T) -> Result<Vec<RunId>, T::Error> {
    let expired = tx.expired_leases().await?;
    let mut reaped = Vec::with_capacity(expired.len());
    // Each job's events only change below, once, so the seqs read above stay current.
    for e in expired {
        let live = Live {
            job: JobId(e.job),
            run: RunId(e.run),
            state: parse_state(&e.state)?,
            attempt: to_u32("attempt", e.attempt)?,
            max_attempts: to_u32("max_attempts", e.max_attempts)?,
            retry_on: e.retry_on,
            backoff_ms: u64::try_from(e.backoff_ms).unwrap_or(0),
            stop: parse_stop(e.stop.as_deref())?,
            seq: e.seq,
            row: None,
            has_dependents: true,
        };
        if !tx.mark_lost(live.run).await? {
            continue;
        }
        let (job, run, epoch) = (e.job, e.run, e.epoch);
        let expired = Pending {
            run: Some(live.run),
            kind: ev::LEASE_EXPIRED,
            data: ev::LeaseExpired {
                run: live.run,
                epoch,
            }
            .text(),
        };
        let (to, _) = end_attempt(tx, &live, Outcome::Lost, None, vec![expired]).await?;
        tracing::info!(job, run, epoch, %to, "lease expired");
        reaped.push(live.run);
    }
    Ok(reaped)
}

/// What a stop needs from a job's row.
pub(crate) struct StopTarget {
    pub(crate) state: String,
    pub(crate) stop: Option<String>,
    pub(crate) current_run: Option<i64>,
    /// The job's `event_seq`, when read under the job's lock.
    pub(crate) seq: Option<i64>,
}

/// Cancels or kills a job: at once when it is not running, else by recording the stop
/// request that its factory sees on its next renew.
pub(crate) async fn stop<T: WriteTx>(tx: &T, id: JobId, kind: StopKind) -> Result<Job, T::Error> {
    let target = tx.stop_target(id).await?;
    let state = parse_state(&target.state)?;
    let (input, reason) = match kind {
        StopKind::Cancel => (Input::Cancel, "canceled on request"),
        StopKind::Kill => (Input::Kill, "killed on request"),
    };
    let req = StepRequest {
        seq: target.seq,
        ..StepRequest::new(id, state, input).reason(reason)
    };
    let requested = match transition(tx, req).await?.effect {
        Effect::None => None,
        Effect::RequestCancel => Some((StopKind::Cancel, ev::JOB_CANCEL_REQUESTED)),
        Effect::RequestKill => Some((StopKind::Kill, ev::JOB_KILL_REQUESTED)),
    };
    if let Some((want, kind)) = requested {
        // A kill already asked for is stronger than a later cancel: keep it.
        let keep_kill = parse_stop(target.stop.as_deref())? == Some(StopKind::Kill);
        if !keep_kill {
            tx.request_stop(id, want).await?;
        }
        let run = target.current_run.map(RunId);
        tx.add_event(EventRef {
            job: Some(id),
            run,
            kind,
            data: "{}",
        })
        .await?;
    }
    tx.load_job(id).await
}

/// Pauses claiming and kills every running or checking job; returns them.
pub(crate) async fn kill_all<T: WriteTx>(tx: &T) -> Result<Vec<JobId>, T::Error> {
    set_paused(tx, true).await?;
    let running = tx.running_jobs().await?;
    for &id in &running {
        stop(tx, id, StopKind::Kill).await?;
    }
    Ok(running)
}

/// Sends a finished job (failed, canceled, killed) back with one more attempt.
pub(crate) async fn retry<T: WriteTx>(tx: &T, id: JobId) -> Result<Job, T::Error> {
    tx.lock_job(id).await?;
    let job = tx.load_job(id).await?;
    if !matches!(
        job.state,
        JobState::Failed | JobState::Canceled | JobState::Killed
    ) {
        return Err(StoreError::WrongState {
            job: id,
            state: job.state,
            action: "retry",
        }
        .into());
    }
    let deps_met = deps_verdict(tx, id, job.deps_mode).await? == DepsVerdict::Met;
    tx.allow_attempt(id).await?;
    let reason = if deps_met {
        "retry requested"
    } else {
        "retry requested; waiting for dependencies"
    };
    let input = Input::Retry { deps_met };
    transition(tx, StepRequest::new(id, job.state, input).reason(reason)).await?;
    tx.load_job(id).await
}

/// Pauses or resumes claiming, recording the change; whether there was one.
pub(crate) async fn set_paused<T: WriteTx>(tx: &T, paused: bool) -> Result<bool, T::Error> {
    let changed = tx.set_paused_flag(paused).await?;
    if changed {
        let kind = if paused {
            ev::QUEUE_PAUSED
        } else {
            ev::QUEUE_RESUMED
        };
        tx.add_event(EventRef {
            job: None,
            run: None,
            kind,
            data: "{}",
        })
        .await?;
    }
    Ok(changed)
}

/// Applies what the events uploaded by a run (kind and JSON text of each, in order, all
/// recorded already) mean for the store: see [`apply_run_event`].
pub(crate) async fn apply_run_events<T: WriteTx>(
    tx: &T,
    live: &Live,
    events: &[(&str, &str)],
) -> Result<(), T::Error> {
    let mut state = live.state;
    for &(kind, data) in events {
        apply_run_event(tx, live, &mut state, kind, data).await?;
    }
    Ok(())
}

/// Applies what an event uploaded by a run means for the store: a checkpoint moves the
/// job's work-in-progress pointer, an insights snapshot becomes the run's live figures,
/// and the checking stage's events move the job (now in `state`) between running and
/// checking and keep the gates' results (see [`check::apply_check_event`]).
async fn apply_run_event<T: WriteTx>(
    tx: &T,
    live: &Live,
    state: &mut JobState,
    kind: &str,
    data: &str,
) -> Result<(), T::Error> {
    if super::check::apply_check_event(tx, live, state, kind, data).await? {
        return Ok(());
    }
    let invalid = |message: String| {
        StoreError::Invalid(gantry_core::SpecError {
            file: format!("event {kind} of run {}", live.run),
            line: None,
            field: Some("data".into()),
            message,
        })
    };
    match kind {
        ev::RUN_CHECKPOINT => {
            let cp: Checkpoint = serde_json::from_str(data).map_err(|e| {
                invalid(format!(
                    "a checkpoint needs wip_branch, wip_base and wip_commit: {e}"
                ))
            })?;
            tx.save_checkpoint(live.job, &cp).await?;
        }
        ev::RUN_STARTED => {
            // Kept on the run so `show` names what it received without the event log;
            // names only, as the event carries them.
            let started: ev::RunStarted = serde_json::from_str(data)
                .map_err(|e| invalid(format!("does not fit the run.started payload: {e}")))?;
            if !started.secrets.is_empty() {
                let text = serde_json::to_string(&started.secrets)
                    .map_err(|e| corrupt(format!("cannot encode run secrets: {e}")))?;
                tx.save_doc(live.run, super::RunDoc::Secrets, &text).await?;
            }
        }
        ev::AGENT_INSIGHTS => {
            // Checked to be insights before it is kept as the run's figures.
            let insights: Insights = serde_json::from_str(data)
                .map_err(|e| invalid(format!("not a valid insights snapshot: {e}")))?;
            let text = insights_text(&insights)?;
            tx.save_insights(live, &text, insights.session_id.as_deref())
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Records a server-side event `kind` with `data` (JSON text), of `job` or of none,
/// naming `run` (which must be a run of `job`, when both are named). Returns (id, seq).
pub(crate) async fn record_event<T: WriteTx>(
    tx: &T,
    e: EventRef<'_>,
) -> Result<(i64, i64), T::Error> {
    if let Some(run) = e.run {
        match (tx.job_of_run(run).await?, e.job) {
            (None, _) => return Err(not_found("run", run).into()),
            (Some(owner), Some(job)) if owner != job.0 => {
                return Err(not_found("run", format!("{run} of job {job}")).into());
            }
            _ => {}
        }
    }
    tx.add_event(e).await
}

/// A run's insights as stored (JSON text).
pub(crate) fn insights_text(insights: &Insights) -> Result<String, StoreError> {
    serde_json::to_string(insights).map_err(|e| corrupt(format!("cannot encode insights: {e}")))
}
