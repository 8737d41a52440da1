//! Watching a run's process to its end: output, stops, timeout, lease and shutdown.

use super::lease::LeaseState;
use super::{AbortOnDrop, ProcessEnd, Supervisor, now_ms};
use crate::agent;

use super::target::Target;
use crate::process::{self, Exit};
use crate::record::{Offsets, RunRecord};
use crate::tail::{FileTail, SharedRecord, StdoutReader, TICK, Tailer, TextReader};
use gantry_core::event::NewEvent;
use gantry_core::{Outcome, StopKind};
use nix::sys::signal::Signal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Time between two looks at a run's exit status when its shim is our child.
const OWN_TICK: Duration = Duration::from_secs(1);

/// How long the last output upload of a run may take before the run is wrapped up.
const DRAIN_MAX: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Watches the recorded process to its end: tails and uploads its output, applies
    /// stops, the timeout, lease loss and shutdown, then makes sure nothing of its
    /// group is left. `child` is the shim when this factory started it (a prompt
    /// notice of its end); `own` says the group was started by this factory, so it
    /// may be signalled without checking whose it is. `first` goes out before any
    /// output.
    pub(super) async fn watch(
        &mut self,
        record: &SharedRecord,
        mut child: Option<tokio::process::Child>,
        own: bool,
        first: Vec<NewEvent>,
    ) -> ProcessEnd {
        let rec = record.get();
        let target = match Target::of(&rec, self.ctx.docker.as_ref()) {
            Ok(t) => t,
            Err(error) => {
                return ProcessEnd {
                    forced: Some(Outcome::Failed),
                    error: Some(error),
                    ..ProcessEnd::default()
                };
            }
        };
        let (tailer, breach_rx) = self.start_tailer(record, &rec, first);
        let mut w = Watch {
            ender: target.ender(),
            target,
            end: ProcessEnd {
                forced: rec.forced,
                ..ProcessEnd::default()
            },
            kill_at: None,
            next_checkpoint: Instant::now() + self.ctx.cfg.engines.checkpoint_interval,
            checkpointing: None,
            shutting_down: false,
        };
        // A stop applied before a restart is carried on: the grace starts again.
        match rec.forced {
            Some(Outcome::Killed | Outcome::BudgetExceeded) => {
                w.target.signal(Signal::SIGKILL);
            }
            Some(_) => w.kill_at = Some(Instant::now() + self.ctx.cfg.kill_grace),
            None => {}
        }
        self.watch_loop(record, &mut child, &mut w, breach_rx).await;
        if w.end.left_running {
            return w.end;
        }
        // The leader ended: now make sure nothing of its group (or container) survives.
        w.target.end_all(own, &record.get()).await;
        self.settle_limits(&record.get(), &w.target, &mut w.end)
            .await;
        drop(child);
        self.checkpoint_on_stop(record, &mut w).await;
        let mut end = w.end;
        if end.abandoned.is_some() || self.lost().is_some() {
            // The run is no longer ours to upload; its files stay, redacted below.
            tailer.stop().await;
        } else {
            tailer.drain(&mut end).await;
        }
        self.redact_outputs(record).await;
        end
    }

    /// Rewrites the output files of the run's process redacted, once the tailer is
    /// done with them. The record says so first: a factory that adopts the run after
    /// this point must not read the rewritten files from the old offsets.
    async fn redact_outputs(&self, record: &SharedRecord) {
        let Some(redactor) = self.redactor.clone() else {
            return;
        };
        record.update(|r| r.outputs_redacted = true);
        let rec = record.get();
        crate::redact::files(redactor, vec![rec.stdout, rec.stderr]).await;
    }

    /// Starts the tailer that uploads the run's output; returns it and the channel on
    /// which an agent's reader reports a passed budget limit.
    fn start_tailer(
        &self,
        record: &SharedRecord,
        rec: &RunRecord,
        first: Vec<NewEvent>,
    ) -> (TailerTask, watch::Receiver<Option<String>>) {
        let (finish_tx, finish_rx) = watch::channel(false);
        let (breach_tx, breach_rx) = watch::channel(None::<String>);
        let wake = Arc::new(Notify::new());
        let spec = &self.claim.job.spec;
        // Files already redacted were read to their end before: they are replayed
        // whole (for an agent's insights) and nothing of them is uploaded again.
        let uploaded = if rec.outputs_redacted {
            let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            Offsets {
                stdout: len(&rec.stdout),
                stderr: len(&rec.stderr),
            }
        } else {
            rec.uploaded
        };
        let tailer = Tailer {
            coord: self.ctx.coord.clone(),
            run: self.run_id(),
            epoch: self.epoch(),
            record: record.clone(),
            stdout: FileTail::new(&rec.stdout, uploaded.stdout),
            stderr: FileTail::new(&rec.stderr, uploaded.stderr),
            reader: match agent::format_of(spec) {
                Some(format) => Box::new(agent::AgentReader::new(
                    agent::Watcher::new(format, spec, &self.ctx.cfg.engines.prices)
                        .spent(self.prior.clone()),
                    breach_tx,
                    Some((rec.stdout.as_path(), uploaded.stdout)),
                )),
                None => Box::new(TextReader),
            },
            finishing: finish_rx,
            wake: wake.clone(),
            first,
        };
        let task = TailerTask {
            task: AbortOnDrop(tokio::spawn(tailer.run())),
            finish: finish_tx,
            wake,
        };
        (task, breach_rx)
    }

    /// The loop of [`Supervisor::watch`]: until the process ended (or the factory
    /// leaves it running), applies what happens to it.
    async fn watch_loop(
        &mut self,
        record: &SharedRecord,
        child: &mut Option<tokio::process::Child>,
        w: &mut Watch,
        mut breach_rx: watch::Receiver<Option<String>>,
    ) {
        let rec = record.get();
        let timeout = self.claim.job.spec.timeout_ms.map(Duration::from_millis);
        let timeout_at = timeout.map(|t| {
            let elapsed = Duration::from_millis(now_ms().saturating_sub(rec.started_at_ms));
            Instant::now() + t.saturating_sub(elapsed)
        });
        let grace = self.ctx.cfg.kill_grace;
        let mut shutdown = self.ctx.shutdown.clone();
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let interval = self.ctx.cfg.engines.checkpoint_interval;
        let mut lease_changed = true;
        // The shim of a run this factory started says when it ends (its reaping wakes
        // the loop), so looking at the files is only a safety net then; an adopted
        // run's end is only seen by looking.
        let own = child.is_some() || w.ender.is_some();
        let mut tick = tokio::time::interval(if own { OWN_TICK } else { TICK });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if lease_changed {
                lease_changed = false;
                let state = self.lease.borrow_and_update().clone();
                self.apply_lease(state, &w.target, &mut w.end, &mut w.kill_at, record);
            }
            // Liveness first, then the status: a process that wrote its status and
            // ended between the two looks would otherwise pass for one that ended
            // without a status.
            let alive = w.target.alive(&rec.exit_status, &mut w.end).await;
            if look(alive, &rec.exit_status, &mut w.end) {
                return;
            }
            let timeout_sleep = match (timeout_at, w.end.forced, &w.end.abandoned) {
                (Some(t), None, None) => t,
                _ => far,
            };
            let quiet = w.end.forced.is_none() && w.end.abandoned.is_none();
            tokio::select! {
                // The shim is reaped; its status is in the file (checked above).
                _ = reaped(child) => {}
                // The container stopped; its status is read above.
                _ = finished(&mut w.ender) => {}
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(timeout_sleep) => {
                    tracing::info!(timeout = ?timeout, "timeout passed: SIGTERM to the process group");
                    self.force(record, &mut w.end, Outcome::TimedOut);
                    w.target.signal(Signal::SIGTERM);
                    w.kill_at = Some(Instant::now() + grace);
                }
                _ = tokio::time::sleep_until(w.kill_at.unwrap_or(far)) => {
                    tracing::info!(grace = ?grace, "grace period over: SIGKILL to the process group");
                    w.target.signal(Signal::SIGKILL);
                    w.kill_at = None;
                }
                // Checkpoints run beside the watch, so a stop is never held up by one.
                _ = tokio::time::sleep_until(w.next_checkpoint), if w.checkpointing.is_none() && quiet => {
                    let ck = self.checkpointer(record);
                    w.checkpointing = Some(AbortOnDrop(tokio::spawn(async move {
                        if let Err(e) = ck.take().await {
                            tracing::warn!(error = %e, "checkpoint failed");
                        }
                    })));
                }
                _ = finished(&mut w.checkpointing) => {
                    w.next_checkpoint = Instant::now() + interval;
                }
                // A budget limit passed: stop at once, it must not spend more.
                Ok(why) = breach_rx.wait_for(Option::is_some), if quiet => {
                    tracing::info!(reason = ?*why, "budget exceeded: SIGKILL to the process group");
                    drop(why);
                    self.force(record, &mut w.end, Outcome::BudgetExceeded);
                    w.target.signal(Signal::SIGKILL);
                    w.kill_at = None;
                }
                changed = self.lease.changed() => {
                    if changed.is_err() {
                        // The renewer ended without a verdict (it cannot, short of a bug);
                        // we can no longer know that the lease holds.
                        if w.end.abandoned.is_none() && self.lost().is_none() {
                            w.target.signal(Signal::SIGKILL);
                            w.end.abandoned = Some("the lease renewer stopped".to_string());
                        }
                    } else {
                        lease_changed = true;
                    }
                }
                // A closed channel means the factory itself is gone (its task was
                // dropped): the process runs on for the next factory to adopt.
                Ok(_) = shutdown.wait_for(|s| *s), if w.end.abandoned.is_none() => {
                    if self.ctx.cfg.leave_runs_on_shutdown {
                        tracing::info!("factory shutting down: the run is left running for the next factory");
                        w.end.left_running = true;
                        return;
                    }
                    tracing::info!("factory shutting down: SIGKILL to the process group");
                    w.target.signal(Signal::SIGKILL);
                    w.end.abandoned = Some("the factory is shutting down".to_string());
                    w.shutting_down = true;
                    w.kill_at = None;
                }
            }
        }
    }

    /// After the process ended: a graceful stop keeps the work in progress for the
    /// next attempt (an interrupted periodic checkpoint is finished first; the
    /// worktree no longer changes).
    async fn checkpoint_on_stop(&self, record: &SharedRecord, w: &mut Watch) {
        if let Some(mut task) = w.checkpointing.take() {
            let _ = (&mut task.0).await;
        }
        let graceful = matches!(
            w.end.forced,
            Some(Outcome::Canceled | Outcome::TimedOut | Outcome::BudgetExceeded)
        ) || w.shutting_down;
        if graceful
            && self.lost().is_none()
            && let Err(e) = self.checkpointer(record).take().await
        {
            tracing::warn!(error = %e, "checkpoint on stop failed");
        }
    }

    /// Applies what the renewer learnt to the process group.
    fn apply_lease(
        &self,
        state: LeaseState,
        target: &Target,
        end: &mut ProcessEnd,
        kill_at: &mut Option<Instant>,
        record: &SharedRecord,
    ) {
        match state {
            LeaseState::Held => {}
            LeaseState::Stop(StopKind::Kill) => {
                if end.forced != Some(Outcome::Killed) && end.abandoned.is_none() {
                    tracing::info!("kill requested: SIGKILL to the process group");
                    self.force(record, end, Outcome::Killed);
                    target.signal(Signal::SIGKILL);
                    *kill_at = None;
                }
            }
            LeaseState::Stop(StopKind::Cancel) => {
                if end.forced.is_none() && end.abandoned.is_none() {
                    tracing::info!("cancel requested: SIGTERM to the process group");
                    self.force(record, end, Outcome::Canceled);
                    target.signal(Signal::SIGTERM);
                    *kill_at = Some(Instant::now() + self.ctx.cfg.kill_grace);
                }
            }
            LeaseState::Lost(why) => {
                if end.abandoned.is_none() {
                    tracing::warn!(reason = %why, "lease lost: SIGKILL to the process group");
                    target.signal(Signal::SIGKILL);
                    end.abandoned = Some(why);
                    *kill_at = None;
                }
            }
        }
    }

    /// Records a forced outcome, in memory and in the run record.
    fn force(&self, record: &SharedRecord, end: &mut ProcessEnd, outcome: Outcome) {
        end.forced = Some(outcome);
        record.update(|r| r.forced = Some(outcome));
    }
}

/// Waits for a spawned task to end (then forgets it); never returns when there is none.
async fn finished(task: &mut Option<AbortOnDrop<()>>) {
    match task {
        Some(t) => {
            let _ = (&mut t.0).await;
            *task = None;
        }
        None => std::future::pending().await,
    }
}

/// Waits for the shim to end and reaps it (then forgets it); never returns when there
/// is no shim to wait for.
async fn reaped(child: &mut Option<tokio::process::Child>) {
    match child {
        Some(c) => {
            let _ = c.wait().await;
            *child = None;
        }
        None => std::future::pending().await,
    }
}

/// The state of one watch over a run's process, kept across the turns of its loop.
struct Watch {
    /// The process group or container of the run.
    target: Target,
    /// Ends when the run's container stops (none for a process group: its shim's
    /// reaping says so).
    ender: Option<AbortOnDrop<()>>,
    /// How the process part of the run ended, as far as known.
    end: ProcessEnd,
    /// When the group gets SIGKILL, after the grace of a SIGTERM.
    kill_at: Option<Instant>,
    /// When the next periodic checkpoint is due.
    next_checkpoint: Instant,
    /// The periodic checkpoint being taken, if any.
    checkpointing: Option<AbortOnDrop<()>>,
    /// The factory is shutting down (a graceful stop: the work in progress is kept).
    shutting_down: bool,
}

/// The tailer of a run, running beside the watch.
struct TailerTask {
    task: AbortOnDrop<Box<dyn StdoutReader>>,
    /// Turned true when the process ended: the tailer uploads the rest and stops.
    finish: watch::Sender<bool>,
    /// Wakes the tailer at once.
    wake: Arc<Notify>,
}

impl TailerTask {
    /// Tells the tailer the process ended, waits (at most [`DRAIN_MAX`]) for the last
    /// upload, and takes what the reader of the output learnt.
    async fn drain(mut self, end: &mut ProcessEnd) {
        let _ = self.finish.send(true);
        self.wake.notify_one();
        match tokio::time::timeout(DRAIN_MAX, &mut self.task.0).await {
            Ok(Ok(reader)) => {
                end.insights = reader.insights();
                end.verdict = reader.outcome(end.exit.and_then(Exit::code));
                if end.verdict == Some(Outcome::BudgetExceeded) && end.forced.is_none() {
                    // The last lines passed the budget as the process ended by itself.
                    end.forced = Some(Outcome::BudgetExceeded);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "the output tailer failed"),
            Err(_) => {
                tracing::warn!("the last output upload took too long; the files have everything");
                self.stop().await;
            }
        }
    }

    /// Stops the tailer without a last upload and waits until it is gone, so nothing
    /// reads the output files any more.
    async fn stop(mut self) {
        self.task.0.abort();
        let _ = (&mut self.task.0).await;
    }
}

/// Looks at the exit status of a process found `alive` or not just before; says
/// whether the watch is over, with what it found in `end`.
fn look(alive: bool, exit_status: &Path, end: &mut ProcessEnd) -> bool {
    if end.abandoned.is_some() {
        return !alive;
    }
    match process::read_exit_status(exit_status) {
        Some(Ok(exit)) => {
            end.exit = Some(exit);
            true
        }
        Some(Err(e)) => {
            end.error = Some(e);
            true
        }
        None if !alive => {
            // The shim was killed before it could write a status: by us (a stop), or
            // while no factory watched.
            if end.forced.is_none() {
                end.error = Some(
                    "the run's process ended without an exit status (it was killed, or the machine restarted)"
                        .to_string(),
                );
                // Nothing the job did ended it: the attempt was lost, and
                // `retry_on: [lost]` (the default) runs it again.
                end.forced = Some(Outcome::Lost);
            }
            true
        }
        None => false,
    }
}
