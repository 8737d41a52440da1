//! Starting a run's process in a Docker container (the docker sandbox), and which
//! sandbox kind a run gets.

use super::spawn::FixLaunch;
use super::{Supervisor, now_ms};
use crate::docker::{ContainerRun, Engine};
use crate::record::RunRecord;
use crate::tail::SharedRecord;
use crate::workspace;
use gantry_core::event::{NewEvent, RunStarted};
use gantry_core::sandbox::SandboxKind;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

/// Variables of the factory's own environment that make no sense in a container: the
/// image has its own `PATH` and user, and the container a private `HOME`.
const HOST_ONLY: &[&str] = &["PATH", "HOME", "USER"];

impl Supervisor {
    /// The kind of wall this run's processes get: the job's `sandbox:` kind, else
    /// Docker when the factory makes it the default, else the factory's process
    /// sandbox (bubblewrap, or none).
    pub(super) fn sandbox_kind(&self) -> SandboxKind {
        if let Some(s) = &self.claim.job.spec.sandbox {
            return s.kind;
        }
        match &self.ctx.cfg.docker {
            Some(d) if d.default => SandboxKind::Docker,
            _ => match self.ctx.cfg.sandbox {
                crate::Sandbox::Bwrap { .. } => SandboxKind::Bwrap,
                crate::Sandbox::None => SandboxKind::None,
            },
        }
    }

    /// Starts the run's process in a new container, records the container and returns
    /// the `run.started` event. A missing image or an engine that refuses fails the
    /// start, naming why.
    pub(super) async fn spawn_container(
        &self,
        record: &SharedRecord,
        fix: Option<&FixLaunch>,
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        stdin: Option<PathBuf>,
    ) -> Result<NewEvent, String> {
        let rec = record.get();
        let (engine, run) = self.container_run(&rec, argv, env, stdin)?;
        // A stale status of an earlier start would pass for this one's.
        let _ = std::fs::remove_file(&rec.exit_status);
        record.update(|r| r.outputs_redacted = false);
        let id = engine.start(&run).await.map_err(|e| e.to_string())?;
        let started_at_ms = now_ms();
        record.update(|r| {
            r.process = None;
            r.container = Some(id.clone());
            // The job's timeout counts from its first process: fix rounds keep it.
            if fix.is_none() {
                r.started_at_ms = started_at_ms;
            }
        });
        let pid = match engine.state(&id).await {
            Ok(crate::docker::ContainerState::Running { pid }) => pid,
            _ => 0,
        };
        tracing::info!(container = %id, image = %run.image, pid, "command started in a container");
        Ok(NewEvent::of(&RunStarted {
            pid,
            pgid: pid,
            branch: rec.branch.clone(),
            workspace: rec.worktree.clone(),
            base_commit: rec.base_commit.clone(),
            // The agent's environment (given) holds the job's secrets, as in `spawn`.
            secrets: self
                .secrets
                .as_ref()
                .map(|s| s.names().map(str::to_string).collect())
                .unwrap_or_default(),
            container: Some(id),
        }))
    }

    /// The container of one of this run's processes (the agent's, or a gate's: the
    /// same image, network and limits), with the factory's engine.
    pub(super) fn container_run(
        &self,
        rec: &RunRecord,
        argv: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        stdin: Option<PathBuf>,
    ) -> Result<(Arc<Engine>, ContainerRun), String> {
        let cfg = &self.ctx.cfg;
        let (Some(engine), Some(docker)) = (&self.ctx.docker, &cfg.docker) else {
            return Err(
                "the job asks for the docker sandbox, but this factory has no Docker engine"
                    .to_string(),
            );
        };
        let spec = self.claim.job.spec.sandbox.clone();
        let spec =
            spec.unwrap_or_else(|| gantry_core::sandbox::SandboxSpec::of(SandboxKind::Docker));
        let job_env = &self.claim.job.spec.env;
        let mut env: Vec<(OsString, OsString)> = env
            .into_iter()
            .filter(|(k, _)| {
                let name = k.to_string_lossy();
                !HOST_ONLY.contains(&name.as_ref()) || job_env.contains_key(name.as_ref())
            })
            .collect();
        if !job_env.contains_key("HOME") {
            env.push(("HOME".into(), crate::sandbox::SANDBOX_HOME.into()));
        }
        let run = ContainerRun {
            ids: (self.job(), self.run_id()),
            data_dir: workspace::absolute(&cfg.data_dir),
            image: spec.image.clone().unwrap_or_else(|| docker.image.clone()),
            argv,
            env,
            worktree: rec.worktree.clone(),
            worktree_read_only: false,
            artifacts: rec.artifacts.clone(),
            stdin,
            stdout: rec.stdout.clone(),
            stderr: rec.stderr.clone(),
            network: self.network(),
            egress: self.egress_mount(),
            memory_bytes: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            pids: spec.pids,
        };
        Ok((engine.clone(), run))
    }
}
