//! The run supervisor: one claimed job from workspace to finish report.
//!
//! Steps: prepare the worktree, start the command in its own process group with a
//! cleared environment, stream its output, renew the lease, stop it on request, on
//! timeout, on a lost lease or on shutdown, make sure no process of its group is left,
//! commit and measure the changes, remove the worktree and report.
//!
//! A lost lease (renewal refused, or the server unreachable until the lease must have
//! expired) and a factory shutdown end the run without a report: the job is no longer
//! (or soon no longer) ours, and the reaper hands it out again.

use crate::coordinator::{CoordError, Coordinator};
use crate::output::{self, OutputHub, Stream};
use crate::process::{self, PidRecord};
use crate::workspace::{self, LiveGuard};
use crate::{FactoryConfig, artifacts_dir, attempt_branch, worktree_dir};
use gantry_core::api::{Claim, FinishReport};
use gantry_core::event::{NewEvent, RUN_STARTED};
use gantry_core::{JobId, Outcome, RunId, StopKind};
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

/// Variables passed from the factory's environment to a run, when set.
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "TZ"];

/// First delay between retries of a failed call to the coordinator.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest delay between retries of a failed finish.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the lease renewer knows about the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseState {
    /// Renewed, nothing asked.
    Held,
    /// Renewed, and a person asked to stop the run this way.
    Stop(StopKind),
    /// The lease is not ours any more (or may not be): why.
    Lost(String),
}

/// Everything a run needs from its factory.
#[derive(Clone)]
pub(crate) struct RunContext {
    pub cfg: Arc<FactoryConfig>,
    pub coord: Arc<dyn Coordinator>,
    pub shutdown: watch::Receiver<bool>,
}

/// Renews the lease every `interval` until the receiver side is dropped; on transport
/// errors retries with backoff until the lease must have expired by our own clock.
async fn renew_loop(
    coord: Arc<dyn Coordinator>,
    run: RunId,
    epoch: i64,
    ttl: Duration,
    interval: Duration,
    claimed_at: Instant,
    state: watch::Sender<LeaseState>,
) {
    // The lease is known good until `deadline`: the time we *sent* the last successful
    // renewal plus the TTL, which is never later than the server's own expiry. The
    // first deadline counts from when the claim reached us, a little after the server
    // started the lease; a tenth of the TTL absorbs that delay and clock-rate drift.
    let ttl = ttl - ttl / 10;
    let mut deadline = claimed_at + ttl;
    let interval = interval.min(ttl / 3).max(Duration::from_millis(10));
    let mut next = Instant::now() + interval;
    let mut backoff = RETRY_FIRST;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.min(deadline)) => {}
            _ = state.closed() => return,
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = state.send(LeaseState::Lost(
                "the server could not be reached before the lease expired".to_string(),
            ));
            return;
        }
        let answer = tokio::time::timeout(deadline - now, coord.renew(run, epoch)).await;
        match answer {
            Ok(Ok(renewed)) => {
                deadline = now + ttl;
                backoff = RETRY_FIRST;
                next = Instant::now() + interval;
                if let Some(stop) = renewed.stop {
                    state.send_if_modified(|s| match s {
                        LeaseState::Held => {
                            *s = LeaseState::Stop(stop);
                            true
                        }
                        LeaseState::Stop(StopKind::Cancel) if stop == StopKind::Kill => {
                            *s = LeaseState::Stop(stop);
                            true
                        }
                        _ => false,
                    });
                }
            }
            Ok(Err(e @ (CoordError::StaleLease { .. } | CoordError::Refused { .. }))) => {
                let _ = state.send(LeaseState::Lost(format!("lease renewal refused: {e}")));
                return;
            }
            Ok(Err(CoordError::Unavailable(e))) => {
                tracing::warn!(%run, error = %e, "lease renewal failed; retrying");
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(interval);
            }
            Err(_elapsed) => {
                // Loops back and finds the deadline passed.
                next = Instant::now();
            }
        }
    }
}

/// How the process part of a run ended.
struct ProcessEnd {
    status: Option<ExitStatus>,
    /// Outcome forced by a stop, a timeout or a lost lease (else the exit decides).
    forced: Option<Outcome>,
    /// The lease was lost or the factory is shutting down: no report.
    abandoned: Option<String>,
}

/// Runs one claimed job to the end.
pub(crate) async fn run_claim(ctx: RunContext, claim: Claim) {
    let job = claim.job.id;
    let run = claim.run.id;
    let span = tracing::info_span!("run", %job, %run, attempt = claim.run.attempt);
    let claimed_at = Instant::now();
    let ttl = Duration::from_millis(claim.run.lease_ttl_ms.max(1));
    let (lease_tx, lease_rx) = watch::channel(LeaseState::Held);
    let renewer = tokio::spawn(renew_loop(
        ctx.coord.clone(),
        run,
        claim.run.epoch,
        ttl,
        ctx.cfg.renew_interval,
        claimed_at,
        lease_tx,
    ));
    let sup = Supervisor {
        ctx,
        claim,
        lease: lease_rx,
    };
    sup.run().instrument(span).await;
    renewer.abort();
}

struct Supervisor {
    ctx: RunContext,
    claim: Claim,
    lease: watch::Receiver<LeaseState>,
}

impl Supervisor {
    fn job(&self) -> JobId {
        self.claim.job.id
    }
    fn run_id(&self) -> RunId {
        self.claim.run.id
    }
    fn epoch(&self) -> i64 {
        self.claim.run.epoch
    }
    fn data(&self) -> &Path {
        &self.ctx.cfg.data_dir
    }

    fn lost(&self) -> Option<String> {
        match &*self.lease.borrow() {
            LeaseState::Lost(why) => Some(why.clone()),
            _ => None,
        }
    }

    async fn run(mut self) {
        let job = self.job();
        let attempt = self.claim.run.attempt;
        let spec = self.claim.job.spec.clone();
        let branch = attempt_branch(job, attempt);
        let wt = worktree_dir(self.data(), job, attempt);
        let _live = LiveGuard::new(&wt);
        let artifacts = artifacts_dir(self.data(), job, self.run_id());
        let mut report = FinishReport {
            epoch: self.epoch(),
            ..FinishReport::default()
        };

        if let Err(e) = tokio::fs::create_dir_all(&artifacts).await {
            report.outcome = Some(Outcome::Failed);
            report.error = Some(format!(
                "cannot create the artifact directory {}: {e}",
                artifacts.display()
            ));
            self.report(report).await;
            return;
        }

        let mut shutdown = self.ctx.shutdown.clone();
        let prepared = tokio::select! {
            p = workspace::prepare(self.data(), &spec.repo, spec.base.as_deref(), &wt, &branch) => Some(p),
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(prepared) = prepared else {
            tracing::info!("shutdown during workspace setup; run abandoned");
            self.cleanup_abandoned(&wt).await;
            return;
        };
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "workspace setup failed");
                report.outcome = Some(Outcome::Failed);
                report.error = Some(format!("workspace setup failed: {e}"));
                self.cleanup_abandoned(&wt).await;
                self.report(report).await;
                return;
            }
        };
        report.branch = Some(branch.clone());
        report.base_commit = Some(prepared.base_commit.clone());
        if let Some(why) = self.lost() {
            tracing::warn!(reason = %why, "lease lost during workspace setup; run abandoned");
            self.remove_worktree(&prepared.cache, &wt).await;
            return;
        }

        let end = self
            .run_process(&wt, &artifacts, &branch, &prepared.base_commit)
            .await;
        let end = match end {
            Ok(end) => end,
            Err(spawn_error) => ProcessEnd {
                status: None,
                forced: Some(Outcome::Failed),
                abandoned: None,
            }
            .with_error(&mut report, spawn_error),
        };
        if let Some(why) = end.abandoned.or_else(|| self.lost()) {
            tracing::warn!(reason = %why, "run abandoned: no commit, no report");
            self.remove_worktree(&prepared.cache, &wt).await;
            return;
        }
        report.exit_code = end.status.and_then(|s| s.code());
        report.outcome = Some(match end.forced {
            Some(o) => o,
            None if end.status.is_some_and(|s| s.success()) => Outcome::Succeeded,
            None => Outcome::Failed,
        });
        if report.outcome == Some(Outcome::Failed)
            && report.error.is_none()
            && let Some(status) = end.status
            && status.code().is_none()
        {
            report.error = Some(format!("the command was ended by a signal ({status})"));
        }

        let message = commit_message(job, attempt, &spec.title);
        let committed = workspace::commit_changes(
            &prepared.cache,
            &wt,
            &branch,
            &prepared.base_commit,
            &message,
            &artifacts.join("diff.patch"),
        )
        .await;
        match committed {
            Ok(changes) => {
                report.commit = Some(changes.commit);
                report.files_changed = Some(changes.files_changed);
                report.lines_added = Some(changes.lines_added);
                report.lines_deleted = Some(changes.lines_deleted);
            }
            Err(e) => {
                tracing::warn!(error = %e, "committing the attempt failed");
                report.outcome = Some(match report.outcome {
                    Some(Outcome::Succeeded) | None => Outcome::Failed,
                    Some(other) => other,
                });
                let msg = format!("committing the attempt's changes failed: {e}");
                report.error = Some(match report.error.take() {
                    Some(prev) => format!("{prev}; {msg}"),
                    None => msg,
                });
            }
        }
        self.remove_worktree(&prepared.cache, &wt).await;
        if let Some(why) = self.lost() {
            tracing::warn!(reason = %why, "lease lost while wrapping up; no report");
            return;
        }
        self.report(report).await;
    }

    /// Starts the command and supervises it to its end. `Err` is a spawn failure.
    async fn run_process(
        &mut self,
        wt: &Path,
        artifacts: &Path,
        branch: &str,
        base_commit: &str,
    ) -> Result<ProcessEnd, String> {
        // A stop asked for while the workspace was being prepared: don't even start.
        if let LeaseState::Stop(kind) = *self.lease.borrow() {
            tracing::info!(
                stop = kind.as_str(),
                "stop requested before the command started"
            );
            return Ok(ProcessEnd {
                status: None,
                forced: Some(kind.outcome()),
                abandoned: None,
            });
        }
        let spec = &self.claim.job.spec;
        let job = self.job();
        let run = self.run_id();
        let attempt = self.claim.run.attempt;
        let prompt = artifacts.join("prompt.md");
        tokio::fs::write(&prompt, spec.body.as_bytes())
            .await
            .map_err(|e| format!("cannot write the prompt file {}: {e}", prompt.display()))?;
        let Some((program, args)) = spec.command.split_first() else {
            return Err("the job has an empty command".to_string());
        };

        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(wt)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for var in ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        cmd.envs(&spec.env)
            .env("GANTRY_JOB_ID", job.to_string())
            .env("GANTRY_RUN_ID", run.to_string())
            .env("GANTRY_ATTEMPT", attempt.to_string())
            .env("GANTRY_PROMPT_FILE", absolute(&prompt))
            .env("GANTRY_WORKSPACE", absolute(wt));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the command {program:?}: {e}"))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| "the command exited before its pid was known".to_string())?;
        // The command leads its own group (process_group(0)), so pgid == pid.
        let pgid = pid;
        let record_path = PidRecord::path(self.data(), job, attempt);
        match process::start_time(pid) {
            Some(start_time) => {
                let record = PidRecord {
                    pid,
                    pgid,
                    start_time,
                    job,
                    run,
                };
                if let Err(e) = record.write(&record_path) {
                    tracing::warn!(path = %record_path.display(), error = %e, "cannot write pid record");
                }
            }
            None => tracing::warn!(pid, "cannot read the start time of the command"),
        }
        tracing::info!(pid, "command started");

        let hub = Arc::new(OutputHub::default());
        let done = Arc::new(Notify::new());
        let uploader = tokio::spawn(output::upload(
            hub.clone(),
            self.ctx.coord.clone(),
            run,
            self.epoch(),
            done.clone(),
        ));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            let (h, log) = (hub.clone(), artifacts.join("stdout.log"));
            pumps.push(tokio::spawn(async move {
                output::pump(out, &log, Stream::Stdout, h).await
            }));
        }
        if let Some(err) = child.stderr.take() {
            let (h, log) = (hub.clone(), artifacts.join("stderr.log"));
            pumps.push(tokio::spawn(async move {
                output::pump(err, &log, Stream::Stderr, h).await
            }));
        }
        let started = NewEvent {
            kind: RUN_STARTED.to_string(),
            data: serde_json::json!({
                "pid": pid,
                "branch": branch,
                "workspace": absolute(wt),
                "base_commit": base_commit,
            }),
        };
        if let Err(e) = self
            .ctx
            .coord
            .events(run, self.epoch(), vec![started])
            .await
        {
            tracing::warn!(error = %e, "cannot report run.started");
        }

        let end = self.supervise(&mut child, pgid).await;
        // The leader is reaped: now make sure nothing of its group survives.
        process::kill_group_and_wait(pgid).await;
        if let Err(e) = std::fs::remove_file(&record_path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %record_path.display(), error = %e, "cannot remove pid record");
        }
        // Descendants that left the group with setsid could hold the pipes open; don't
        // wait for them forever (the logs then end here).
        for mut p in pumps {
            if tokio::time::timeout(Duration::from_secs(5), &mut p)
                .await
                .is_err()
            {
                tracing::warn!("output still open after the process group ended; closing it");
                p.abort();
            }
        }
        if end.abandoned.is_none() && self.lost().is_none() {
            done.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(30), uploader).await;
        } else {
            uploader.abort();
        }
        Ok(end)
    }

    /// Waits for the command to end, applying stops, the timeout, lease loss and shutdown.
    async fn supervise(&mut self, child: &mut tokio::process::Child, pgid: i32) -> ProcessEnd {
        let timeout = self.claim.job.spec.timeout_ms.map(Duration::from_millis);
        let timeout_at = timeout.map(|t| Instant::now() + t);
        let grace = self.ctx.cfg.kill_grace;
        let mut forced: Option<Outcome> = None;
        let mut abandoned: Option<String> = None;
        let mut kill_at: Option<Instant> = None;
        let mut shutdown = self.ctx.shutdown.clone();
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        // A stop already seen before the process started applies at once.
        let mut lease_changed = true;
        loop {
            if lease_changed {
                lease_changed = false;
                let state = self.lease.borrow_and_update().clone();
                match state {
                    LeaseState::Held => {}
                    LeaseState::Stop(StopKind::Kill) => {
                        if forced != Some(Outcome::Killed) && abandoned.is_none() {
                            tracing::info!("kill requested: SIGKILL to the process group");
                            forced = Some(Outcome::Killed);
                            process::signal_group(pgid, Signal::SIGKILL);
                            kill_at = None;
                        }
                    }
                    LeaseState::Stop(StopKind::Cancel) => {
                        if forced.is_none() && abandoned.is_none() {
                            tracing::info!("cancel requested: SIGTERM to the process group");
                            forced = Some(Outcome::Canceled);
                            process::signal_group(pgid, Signal::SIGTERM);
                            kill_at = Some(Instant::now() + grace);
                        }
                    }
                    LeaseState::Lost(why) => {
                        if abandoned.is_none() {
                            tracing::warn!(reason = %why, "lease lost: SIGKILL to the process group");
                            process::signal_group(pgid, Signal::SIGKILL);
                            abandoned = Some(why);
                            kill_at = None;
                        }
                    }
                }
            }
            let timeout_sleep = match (timeout_at, forced, &abandoned) {
                (Some(t), None, None) => t,
                _ => far,
            };
            tokio::select! {
                status = child.wait() => {
                    let status = match status {
                        Ok(s) => Some(s),
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting for the command failed");
                            None
                        }
                    };
                    return ProcessEnd { status, forced, abandoned };
                }
                _ = tokio::time::sleep_until(timeout_sleep) => {
                    tracing::info!(timeout = ?timeout, "timeout passed: SIGTERM to the process group");
                    forced = Some(Outcome::TimedOut);
                    process::signal_group(pgid, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)) => {
                    tracing::info!(grace = ?grace, "grace period over: SIGKILL to the process group");
                    process::signal_group(pgid, Signal::SIGKILL);
                    kill_at = None;
                }
                changed = self.lease.changed() => {
                    if changed.is_err() {
                        // The renewer ended without a verdict (it cannot, short of a bug);
                        // we can no longer know that the lease holds.
                        if abandoned.is_none() && self.lost().is_none() {
                            process::signal_group(pgid, Signal::SIGKILL);
                            abandoned = Some("the lease renewer stopped".to_string());
                        }
                    } else {
                        lease_changed = true;
                    }
                }
                _ = shutdown.wait_for(|s| *s), if abandoned.is_none() => {
                    tracing::info!("factory shutting down: SIGKILL to the process group");
                    process::signal_group(pgid, Signal::SIGKILL);
                    abandoned = Some("the factory is shutting down".to_string());
                    kill_at = None;
                }
            }
        }
    }

    async fn remove_worktree(&self, cache: &Path, wt: &Path) {
        if let Err(e) = workspace::remove_worktree(cache, wt).await {
            tracing::warn!(path = %wt.display(), error = %e, "cannot remove worktree");
        }
    }

    /// Removes a worktree directory left by a failed or abandoned setup.
    async fn cleanup_abandoned(&self, wt: &Path) {
        let cache = workspace::cache_dir(self.data(), &self.claim.job.spec.repo);
        if cache.join("HEAD").is_file() {
            self.remove_worktree(&cache, wt).await;
        } else if tokio::fs::symlink_metadata(wt).await.is_ok() {
            let _ = tokio::fs::remove_dir_all(wt).await;
        }
    }

    /// Sends the finish report, retrying transient failures while the lease holds.
    async fn report(&self, report: FinishReport) {
        let run = self.run_id();
        let mut backoff = RETRY_FIRST;
        let shutdown = self.ctx.shutdown.clone();
        if let Some(why) = self.lost() {
            tracing::warn!(reason = %why, "lease lost; no report");
            return;
        }
        loop {
            match self.ctx.coord.finish(run, report.clone()).await {
                Ok(()) => {
                    tracing::info!(outcome = ?report.outcome, "run finished");
                    return;
                }
                Err(CoordError::Unavailable(e)) => {
                    if let Some(why) = self.lost() {
                        tracing::warn!(error = %e, reason = %why, "finish not delivered before the lease was lost");
                        return;
                    }
                    if *shutdown.borrow() {
                        tracing::warn!(error = %e, "finish not delivered before shutdown");
                        return;
                    }
                    tracing::warn!(error = %e, "finish failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "finish refused");
                    return;
                }
            }
        }
    }
}

impl ProcessEnd {
    fn with_error(self, report: &mut FinishReport, error: String) -> ProcessEnd {
        tracing::warn!(%error, "the command could not be started");
        report.error = Some(error);
        self
    }
}

fn commit_message(job: JobId, attempt: u32, title: &str) -> String {
    let title: String = title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "gantry job {job} attempt {attempt}: {}\n\nGantry-Job: {job}\nGantry-Attempt: {attempt}\n",
        title.trim()
    )
}

/// `p` made absolute against the current directory (a relative data dir stays usable
/// from the worktree, which is the process's working directory).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
