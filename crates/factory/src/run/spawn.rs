//! Starting a run's process: the prompt, the environment, the sandbox and the record.

use super::{Supervisor, now_ms};
use crate::agent;
use crate::process::{self, DetachedCommand, PidRecord};
use crate::tail::SharedRecord;
use crate::workspace;
use gantry_core::event::{NewEvent, RunStarted};
use std::ffi::OsString;
use std::path::Path;

/// Variables passed from the factory's environment to a run, when set.
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TERM", "TZ"];

impl Supervisor {
    /// Writes the prompt and the record, starts the process detached and records it.
    /// Returns the `run.started` event, which goes out as the first upload of the run's
    /// output, so it is retried like the output while the server is unreachable.
    pub(super) async fn spawn(
        &self,
        record: &SharedRecord,
    ) -> Result<(process::Detached, NewEvent), String> {
        let rec = record.get();
        let spec = &self.claim.job.spec;
        let prompt = rec.artifacts.join("prompt.md");
        tokio::fs::write(&prompt, spec.body.as_bytes())
            .await
            .map_err(|e| format!("cannot write the prompt file {}: {e}", prompt.display()))?;
        let launch = agent::launch(
            spec,
            (self.job(), self.run_id()),
            self.claim.job.resume_session.as_deref(),
            &self.ctx.cfg.engines,
            &prompt,
            &rec.artifacts,
        )
        .map_err(|e| e.to_string())?;
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        for var in ENV_ALLOWLIST {
            if let Some(v) = std::env::var_os(var) {
                env.push((var.into(), v));
            }
        }
        for (k, v) in launch.env {
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
            ("GANTRY_PROMPT_FILE", prompt.clone().into_os_string()),
            ("GANTRY_WORKSPACE", rec.worktree.clone().into_os_string()),
        ];
        for (k, v) in gantry_vars {
            env.retain(|(name, _)| name != k);
            env.push((k.into(), v));
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
        // between leaves a record from which the process can still be found.
        record.update(|_| {});
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
            r.started_at_ms = started_at_ms;
        });
        tracing::info!(pid = detached.pid, "command started");
        let started = NewEvent::of(&RunStarted {
            pid: detached.pid,
            pgid: detached.pid,
            branch: rec.branch.clone(),
            workspace: rec.worktree.clone(),
            base_commit: rec.base_commit.clone(),
        });
        Ok((detached, started))
    }

    /// The wall around this run: the factory's sandbox, the data dir and the
    /// factory's own paths hidden, the run's artifacts (prompt, script) readable.
    fn confinement(&self, artifacts: &Path) -> Option<crate::sandbox::Confinement> {
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
        })
    }
}
