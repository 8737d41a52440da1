//! Starting a run's process: the prompt, the environment, the sandbox and the record.

use super::{Supervisor, now_ms};
use crate::agent;
use crate::process::{self, DetachedCommand, PidRecord};
use crate::record::RunRecord;
use crate::tail::SharedRecord;
use crate::workspace;
use gantry_core::event::{NewEvent, RunStarted};
use gantry_core::sandbox::SandboxKind;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a fix round's process starts: the round (from 1), the file holding its prompt
/// ([`gantry_core::fix::prompt`]), and the agent session it resumes.
///
/// Claude Code runs with `--resume=<session>` and Codex with `exec ... resume
/// <session>`, the prompt on their stdin. The command and script engines run the job
/// again with `GANTRY_FIX_ROUND=<round>` and `GANTRY_FIX_PROMPT_FILE=<prompt>` in their
/// environment (`GANTRY_PROMPT_FILE` still names the job's own prompt).
pub(super) struct FixLaunch {
    /// The round, from 1.
    pub round: u32,
    /// The fix prompt's file.
    pub prompt: PathBuf,
    /// The agent session to resume, when the run recorded one.
    pub session: Option<String>,
}

/// Variables passed from the factory's environment to a run, when set.
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "TZ"];

impl Supervisor {
    /// Writes the prompt and the record, starts the process detached (or in its
    /// container) and records it. Returns the shim to wait for (none for a container)
    /// and the `run.started` event, which goes out as the first upload of the run's
    /// output, so it is retried like the output while the server is unreachable.
    /// `fix` starts a fix round's process instead of the first (see [`FixLaunch`]).
    pub(super) async fn spawn(
        &self,
        record: &SharedRecord,
        fix: Option<&FixLaunch>,
    ) -> Result<(Option<tokio::process::Child>, NewEvent), String> {
        let rec = record.get();
        let spec = &self.claim.job.spec;
        let prompt = rec.artifacts.join("prompt.md");
        if fix.is_none() {
            tokio::fs::write(&prompt, spec.body.as_bytes())
                .await
                .map_err(|e| format!("cannot write the prompt file {}: {e}", prompt.display()))?;
        }
        // An agent resumes its session with the fix prompt as its prompt; a command or
        // script job runs again and finds the fix prompt through its environment.
        let (agent_prompt, resume) = match fix {
            Some(f) => (f.prompt.as_path(), f.session.as_deref()),
            None => (prompt.as_path(), self.claim.job.resume_session.as_deref()),
        };
        let walled = agent::walled(spec, self.sandbox_kind() != SandboxKind::None);
        let launch = agent::launch(
            &walled,
            (self.job(), self.run_id()),
            resume,
            &self.ctx.cfg.engines,
            agent_prompt,
            &rec.artifacts,
        )
        .map_err(|e| e.to_string())?;
        self.egress.as_ref().map_err(String::clone)?;
        let mut env = self.run_env(&rec, launch.env);
        // The job's secrets go to the agent's processes only: not to its gates (the
        // repository's commands) nor to its reviewer (see `run_env`).
        let secrets = self.secrets.as_ref().map_err(String::clone)?;
        for (k, v) in secrets.env() {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        if let Some(f) = fix {
            env.push(("GANTRY_FIX_ROUND".into(), f.round.to_string().into()));
            env.push((
                "GANTRY_FIX_PROMPT_FILE".into(),
                f.prompt.clone().into_os_string(),
            ));
        }
        if self.sandbox_kind() == SandboxKind::Docker {
            let started = self
                .spawn_container(record, fix, launch.argv, env, launch.stdin)
                .await?;
            return Ok((None, started));
        }
        let cmd = DetachedCommand {
            argv: launch.argv,
            cwd: rec.worktree.clone(),
            env,
            stdin: launch.stdin,
            stdout: rec.stdout.clone(),
            stderr: rec.stderr.clone(),
            exit_status: rec.exit_status.clone(),
            confinement: self.confinement(&rec.artifacts),
        };
        // The record goes down before the process starts, so that a factory dying in
        // between leaves a record from which the process can still be found. The new
        // process's files are read from their start, not yet redacted.
        record.update(|r| r.outputs_redacted = false);
        let detached = process::spawn_detached(&cmd)
            .await
            .map_err(|e| e.to_string())?;
        let started_at_ms = now_ms();
        record.update(|r| {
            r.process = Some(PidRecord {
                pid: detached.pid,
                pgid: detached.pid,
                start_time: detached.start_time,
                job: self.job(),
                run: self.run_id(),
            });
            // The job's timeout counts from its first process: fix rounds keep it.
            if fix.is_none() {
                r.started_at_ms = started_at_ms;
            }
        });
        tracing::info!(pid = detached.pid, "command started");
        let started = NewEvent::of(&RunStarted {
            pid: detached.pid,
            pgid: detached.pid,
            branch: rec.branch.clone(),
            workspace: rec.worktree.clone(),
            base_commit: rec.base_commit.clone(),
            secrets: secrets.names().map(str::to_string).collect(),
            container: None,
        });
        Ok((Some(detached.child), started))
    }

    /// The environment of the run's processes (the agent's, its gates' and its
    /// reviewer's): the factory's allowlisted variables, then `engine` (what the engine
    /// passes through), the job's own `env`, and the `GANTRY_*` variables naming the
    /// run. Not the job's secrets, which [`Supervisor::spawn`] adds for the agent alone.
    pub(super) fn run_env(
        &self,
        rec: &RunRecord,
        engine: Vec<(OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        let spec = &self.claim.job.spec;
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        for var in ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(var) {
                env.push((var.into(), v));
            }
        }
        for (k, v) in engine {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        for (k, v) in &spec.env {
            env.retain(|(name, _)| name != k.as_str());
            env.push((k.into(), v.into()));
        }
        let gantry_vars = [
            ("GANTRY_JOB_ID", OsString::from(self.job().to_string())),
            ("GANTRY_RUN_ID", OsString::from(self.run_id().to_string())),
            (
                "GANTRY_ATTEMPT",
                OsString::from(self.claim.run.attempt.to_string()),
            ),
            (
                "GANTRY_PROMPT_FILE",
                rec.artifacts.join("prompt.md").into_os_string(),
            ),
            ("GANTRY_WORKSPACE", rec.worktree.clone().into_os_string()),
        ];
        for (k, v) in gantry_vars {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v));
        }
        self.add_proxy_env(&mut env);
        env
    }

    /// The wall around this run: the factory's sandbox, the data dir and the
    /// factory's own paths hidden, the run's artifacts (prompt, script) readable.
    pub(super) fn confinement(&self, artifacts: &Path) -> Option<crate::sandbox::Confinement> {
        let cfg = &self.ctx.cfg;
        if cfg.sandbox == crate::Sandbox::None {
            return None;
        }
        Some(crate::sandbox::Confinement {
            sandbox: cfg.sandbox.clone(),
            data_dir: workspace::absolute(&cfg.data_dir),
            hidden: cfg.hidden_paths.clone(),
            readable: vec![workspace::absolute(artifacts)],
            read_only: cfg.sandbox_read_only.clone(),
            read_write: cfg.sandbox_read_write.clone(),
            worktree_read_only: false,
            network: self.network(),
            egress: self.egress_mount(),
            limits: self.run_limits(),
        })
    }

    /// After the run's process group ended: a run that did not succeed because a limit
    /// stopped it says so in its error (`oom: ...`, `pids: ...`, `cpu: ...`), and its
    /// cgroup goes. A container's memory kill is read from the engine instead.
    pub(super) async fn settle_limits(
        &self,
        rec: &RunRecord,
        target: &super::target::Target,
        end: &mut super::ProcessEnd,
    ) {
        if !matches!(target, super::target::Target::Group(_)) {
            return;
        }
        let confinement = self.confinement(&rec.artifacts);
        let breach = crate::sandbox::limits::settle(confinement.as_ref(), &rec.exit_status).await;
        let succeeded = process::read_exit_status(&rec.exit_status)
            .is_some_and(|e| e.is_ok_and(process::Exit::success));
        if let Some(b) = breach
            && !succeeded
            && end.error.is_none()
        {
            end.error = Some(b.reason("run"));
        }
    }

    /// The limits the job's `sandbox:` sets, for a run outside a container (a
    /// container has its own), with the factory's mechanism for them.
    fn run_limits(&self) -> Option<crate::sandbox::RunLimits> {
        let spec = self.claim.job.spec.sandbox.as_ref()?;
        if self.sandbox_kind() == SandboxKind::Docker {
            return None;
        }
        let timeout = self.claim.job.spec.timeout_ms.map(Duration::from_millis);
        let limits = crate::sandbox::limits::Limits::of(spec, timeout);
        if limits.is_empty() {
            return None;
        }
        let limiter =
            (self.ctx.cfg.limiter.clone()).unwrap_or_else(crate::sandbox::limits::Limiter::detect);
        Some(crate::sandbox::RunLimits { limits, limiter })
    }
}
