//! The Docker sandbox: one container per process of a run, on the local Docker engine
//! (its API over the unix socket, through `bollard`).
//!
//! A container sees its run's worktree (read-write, at the same path and as working
//! directory), its artifacts directory (read-only: prompt, script) with the two output
//! files bound writable on top, a private `/tmp` and `HOME` (tmpfs), and the image's
//! own file system, read-only. Nothing else of the factory's machine: not the data
//! dir, other worktrees or any token. It runs as a non-root user that owns the
//! worktree ([`SANDBOX_UID`] when the factory is root, else the factory's own user),
//! with every capability dropped and no new privileges, without network unless the
//! job asks for it, and under the job's memory, CPU and pids limits.
//!
//! The process's output goes straight to the run's files (a `/bin/sh` wrapper in the
//! container opens them), so a factory that dies loses nothing; the exit status and
//! the OOM verdict come from the engine, which keeps a stopped container until the
//! factory removes it. Containers are labelled with the job, the run and the data dir
//! of the factory that started them, so a restarted factory can adopt its own and
//! sweep its leftovers without touching other factories' containers.

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use gantry_core::sandbox::Network;
use gantry_core::{JobId, RunId};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The label naming the job of a container.
pub const LABEL_JOB: &str = "dev.gantry.job";
/// The label naming the run of a container.
pub const LABEL_RUN: &str = "dev.gantry.run";
/// The label naming the data dir of the factory that started a container.
pub const LABEL_DATA_DIR: &str = "dev.gantry.data-dir";
/// The user and group a container runs as when the factory runs as root: the owner of
/// the worktree while the container runs.
pub const SANDBOX_UID: u32 = 10000;
/// The Docker engine's socket, unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The image of runs that name none, unless configured otherwise.
pub const DEFAULT_IMAGE: &str = "gantry-agent:latest";
/// How long a restarted factory waits for an engine that does not answer before it
/// lets its recorded container runs go, unless configured otherwise.
pub const DEFAULT_ENGINE_WAIT: Duration = Duration::from_secs(600);

/// How long one call to the engine may take (waiting for a container excepted).
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The client's own limit on a request: far away, since waiting for a container is
/// one long request; every other call is bounded by [`API_TIMEOUT`].
const CLIENT_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;

/// The wrapper the container starts: it opens the run's files as the process's stdin,
/// stdout and stderr and replaces itself with the command, so the command is the
/// container's first process and its exit status the container's.
const WRAPPER: &str = "i=$1 o=$2 e=$3; shift 3; exec \"$@\" <\"$i\" >\"$o\" 2>\"$e\"";

/// The Docker sandbox of a factory: where the engine is and what runs get by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// The engine's unix socket.
    pub socket: PathBuf,
    /// The image of jobs that name none.
    pub image: String,
    /// Whether jobs that ask for no sandbox kind run in Docker (else in the factory's
    /// process sandbox).
    pub default: bool,
    /// How long a restarted factory keeps the leases of its recorded container runs
    /// while the engine does not answer, waiting to adopt them; past it, it lets them
    /// go (their processes killed, their leases left to expire).
    pub engine_wait: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            image: DEFAULT_IMAGE.to_string(),
            default: false,
            engine_wait: DEFAULT_ENGINE_WAIT,
        }
    }
}

/// Why the Docker sandbox could not do something.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answers on the socket.
    #[error("no Docker engine answers on {socket}: {reason}")]
    Unreachable {
        /// The socket.
        socket: String,
        /// What went wrong.
        reason: String,
    },
    /// The image is not on the engine.
    #[error(
        "the docker image {image:?} is not on this factory's Docker engine: build or pull it there first (see docs/sandboxes.md)"
    )]
    ImageMissing {
        /// The image asked for.
        image: String,
    },
    /// A call to the engine failed.
    #[error("docker {action} failed: {reason}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// What the engine or the transport said.
        reason: String,
    },
    /// The worktree could not be handed to the container's user (or back).
    #[error("cannot change the owner of {path}: {source}")]
    Ownership {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// How a container stands, as the engine tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Its process runs; `pid` is its first process as the host sees it.
    Running {
        /// The host pid of the container's first process.
        pid: i32,
    },
    /// It ended with this status (128+N for signal N); `oom` when the kernel killed it
    /// for passing its memory limit.
    Exited {
        /// The exit status.
        code: i64,
        /// Killed by the memory limit.
        oom: bool,
    },
    /// No such container (never was, or removed).
    Gone,
}

/// A connection to the Docker engine.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
}

/// One container to start for a process of a run.
#[derive(Debug, Clone)]
pub struct ContainerRun {
    /// The job and the run, for the labels.
    pub ids: (JobId, RunId),
    /// The factory's data dir (absolute), for the labels.
    pub data_dir: PathBuf,
    /// The image.
    pub image: String,
    /// Program and arguments, as the image's `PATH` finds them.
    pub argv: Vec<OsString>,
    /// The environment (the image's own fills in what this leaves out, `PATH` first).
    pub env: Vec<(OsString, OsString)>,
    /// The worktree: bound at its own path, the working directory.
    pub worktree: PathBuf,
    /// Whether the worktree is bound read-only (a reviewer's copy of a result) rather
    /// than read-write (a run's worktree).
    pub worktree_read_only: bool,
    /// The artifacts directory: bound read-only at its own path.
    pub artifacts: PathBuf,
    /// The file read as stdin, else `/dev/null`.
    pub stdin: Option<PathBuf>,
    /// The file receiving stdout (created or truncated here).
    pub stdout: PathBuf,
    /// The file receiving stderr (created or truncated here).
    pub stderr: PathBuf,
    /// What the container may reach.
    pub network: Network,
    /// The egress proxy's socket and the forwarder of a `model` run.
    pub egress: Option<crate::egress::EgressMount>,
    /// Memory limit in bytes (swap included: none beyond it).
    pub memory_bytes: Option<u64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<u64>,
    /// Limit on processes and threads.
    pub pids: Option<u64>,
}

fn api(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |e| DockerError::Api {
        action,
        reason: e.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Runs one call to the engine within [`API_TIMEOUT`].
async fn bounded<T>(
    action: &'static str,
    call: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<Result<T, bollard::errors::Error>, DockerError> {
    tokio::time::timeout(API_TIMEOUT, call)
        .await
        .map_err(|_| DockerError::Api {
            action,
            reason: format!("no answer within {API_TIMEOUT:?}"),
        })
}

/// The user a container runs as: [`SANDBOX_UID`] when the factory is root (it hands
/// the worktree over), else the factory's own user, who owns the worktree already.
pub fn container_user() -> (u32, u32) {
    if nix::unistd::geteuid().is_root() {
        (SANDBOX_UID, SANDBOX_UID)
    } else {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }
}

/// Gives `path` and everything below it (symbolic links themselves, never followed) to
/// `uid:gid`. Only a root factory changes owners: otherwise the container runs as the
/// factory's user, who owns them already.
pub async fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), DockerError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let root = path.to_path_buf();
    let walk = move || {
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            let err = |source| DockerError::Ownership {
                path: p.clone(),
                source,
            };
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).map_err(err)?;
            let meta = std::fs::symlink_metadata(&p).map_err(err)?;
            if meta.is_dir() {
                for entry in std::fs::read_dir(&p).map_err(err)? {
                    stack.push(entry.map_err(err)?.path());
                }
            }
        }
        Ok(())
    };
    tokio::task::spawn_blocking(walk)
        .await
        .map_err(|e| DockerError::Ownership {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Gives the worktree and artifacts of a run back to the factory's user after its
/// container ended, so its git commands, redaction and removal work on files it owns.
pub async fn reclaim(paths: &[&Path]) -> Result<(), DockerError> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    for p in paths.iter().filter(|p| p.exists()) {
        chown_tree(p, uid, gid).await?;
    }
    Ok(())
}

impl Engine {
    /// Connects to the engine on `socket`, agrees on an API version both speak and
    /// checks that it answers.
    pub async fn connect(socket: &Path) -> Result<Engine, DockerError> {
        let shown = socket.display().to_string();
        let unreachable = |reason: String| DockerError::Unreachable {
            socket: shown.clone(),
            reason,
        };
        let docker =
            Docker::connect_with_unix(&shown, CLIENT_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {API_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(API_TIMEOUT, docker.ping())
            .await
            .map_err(|_| unreachable(format!("no answer within {API_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Engine { docker })
    }

    /// Checks that `image` is on the engine: a missing image is the run's error before
    /// anything starts, not a pull that hangs or a timeout.
    pub async fn check_image(&self, image: &str) -> Result<(), DockerError> {
        match bounded("image inspect", self.docker.inspect_image(image)).await? {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(DockerError::ImageMissing {
                image: image.to_string(),
            }),
            Err(e) => Err(api("image inspect")(e)),
        }
    }

    /// Creates and starts the container of `run`; returns its id. The output files
    /// are created (or truncated) first; they, the worktree and the artifacts directory
    /// are handed to the container's user (the factory's files are private to it, and
    /// the artifacts' read-only bind keeps them unwritable). A container that cannot
    /// start is removed.
    pub async fn start(&self, run: &ContainerRun) -> Result<String, DockerError> {
        self.check_image(&run.image).await?;
        let (uid, gid) = container_user();
        for p in [&run.stdout, &run.stderr] {
            std::fs::File::create(p).map_err(|source| DockerError::Ownership {
                path: p.clone(),
                source,
            })?;
            chown_tree(p, uid, gid).await?;
        }
        chown_tree(&run.worktree, uid, gid).await?;
        chown_tree(&run.artifacts, uid, gid).await?;
        let started = self.create_and_start(run, uid, gid).await;
        if started.is_err() {
            // Nothing runs: the files are the factory's again at once.
            if let Err(e) = reclaim(&[&run.worktree, &run.artifacts]).await {
                tracing::warn!(error = %e, "cannot give the worktree back to the factory's user");
            }
        }
        started
    }

    /// Creates and starts the container; one that cannot start is removed.
    async fn create_and_start(
        &self,
        run: &ContainerRun,
        uid: u32,
        gid: u32,
    ) -> Result<String, DockerError> {
        let body = container_body(run, uid, gid);
        let created = bounded(
            "create",
            self.docker
                .create_container(None::<CreateContainerOptions>, body),
        )
        .await?
        .map_err(api("create"))?;
        let id = created.id;
        let started = bounded("start", self.docker.start_container(&id, None)).await;
        if let Err(e) = started.and_then(|r| r.map_err(api("start"))) {
            self.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// How container `id` stands.
    pub async fn state(&self, id: &str) -> Result<ContainerState, DockerError> {
        let info = match bounded("inspect", self.docker.inspect_container(id, None)).await? {
            Ok(info) => info,
            Err(e) if is_not_found(&e) => return Ok(ContainerState::Gone),
            Err(e) => return Err(api("inspect")(e)),
        };
        let state = info.state.unwrap_or_default();
        if state.running == Some(true) || state.restarting == Some(true) {
            let pid = state.pid.and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
            return Ok(ContainerState::Running { pid });
        }
        Ok(ContainerState::Exited {
            code: state.exit_code.unwrap_or(-1),
            oom: state.oom_killed == Some(true),
        })
    }

    /// Returns once container `id` no longer runs (or is gone, or the engine cannot
    /// say): the prompt notice of a run's end.
    pub async fn wait(&self, id: &str) {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut stream = self.docker.wait_container(id, Some(options));
        // Any answer, an exit error included, means the container stopped; the state
        // itself is read with `state`.
        let _ = stream.next().await;
    }

    /// Sends `signal` (`SIGTERM`, ...) to the container's first process.
    pub async fn signal(&self, id: &str, signal: &str) {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        match bounded("kill", self.docker.kill_container(id, Some(options))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_not_found(&e) => {}
            // A container that already stopped answers 409: nothing to signal.
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            })) => {}
            Ok(Err(e)) => {
                tracing::warn!(container = id, signal, error = %e, "signalling the container failed")
            }
            Err(e) => {
                tracing::warn!(container = id, signal, error = %e, "signalling the container failed")
            }
        }
    }

    /// Kills and removes container `id` (every process in it ends with it) and returns
    /// once it is gone; a container already gone is fine, and so is one whose removal
    /// another call started (a stop's, racing the end of the watch).
    pub async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match bounded("remove", self.docker.remove_container(id, Some(options))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_not_found(&e) => {}
            Ok(Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            })) => self.until_gone(id).await,
            Ok(Err(e)) => {
                tracing::warn!(container = id, error = %e, "removing the container failed")
            }
            Err(e) => tracing::warn!(container = id, error = %e, "removing the container failed"),
        }
    }

    /// Waits (at most [`API_TIMEOUT`]) for a removal under way to finish.
    async fn until_gone(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + API_TIMEOUT;
        let mut delay = Duration::from_millis(2);
        while tokio::time::Instant::now() < deadline {
            match self.state(id).await {
                Ok(ContainerState::Gone) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(container = id, error = %e, "cannot look at a container being removed");
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
        tracing::warn!(container = id, "the container's removal did not finish");
    }

    /// The containers (running or not) that a factory on `data_dir` started: id, job
    /// and run.
    pub async fn containers_of(
        &self,
        data_dir: &Path,
    ) -> Result<Vec<(String, Option<RunId>)>, DockerError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_DATA_DIR}={}", data_dir.display())],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = bounded("list", self.docker.list_containers(Some(options)))
            .await?
            .map_err(api("list"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let run = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_RUN))
                    .and_then(|r| r.parse::<i64>().ok())
                    .map(RunId);
                Some((c.id?, run))
            })
            .collect())
    }
}

/// The create request of `run`'s container, running as `uid:gid`.
fn container_body(run: &ContainerRun, uid: u32, gid: u32) -> ContainerCreateBody {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let stdin = run
        .stdin
        .as_deref()
        .map_or_else(|| "/dev/null".to_string(), text);
    let mut cmd = vec![stdin, text(&run.stdout), text(&run.stderr)];
    // A `model` run's command starts through the forwarder (see `crate::egress`).
    let (egress_binds, launcher) = match (&run.network, &run.egress) {
        (Network::Model, Some(m)) => crate::egress::docker_launch(m),
        _ => (Vec::new(), Vec::new()),
    };
    cmd.extend(launcher.iter().map(|a| a.to_string_lossy().into_owned()));
    cmd.extend(run.argv.iter().map(|a| a.to_string_lossy().into_owned()));
    let env = run
        .env
        .iter()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    let labels = HashMap::from([
        (LABEL_JOB.to_string(), run.ids.0.to_string()),
        (LABEL_RUN.to_string(), run.ids.1.to_string()),
        (LABEL_DATA_DIR.to_string(), text(&run.data_dir)),
    ]);
    let bind = |p: &Path, mode: &str| format!("{}:{}:{mode}", text(p), text(p));
    // Docker mounts the deeper paths last, so the output files stay writable inside
    // the read-only artifacts directory.
    let mut binds = vec![
        bind(
            &run.worktree,
            if run.worktree_read_only { "ro" } else { "rw" },
        ),
        bind(&run.artifacts, "ro"),
        bind(&run.stdout, "rw"),
        bind(&run.stderr, "rw"),
    ];
    binds.extend(egress_binds);
    let tmpfs = HashMap::from([
        (
            "/tmp".to_string(),
            "rw,exec,nosuid,nodev,mode=1777".to_string(),
        ),
        (
            crate::sandbox::SANDBOX_HOME.to_string(),
            format!("rw,exec,nosuid,nodev,uid={uid},gid={gid},mode=0700"),
        ),
    ]);
    let memory = run.memory_bytes.and_then(|m| i64::try_from(m).ok());
    let host = HostConfig {
        binds: Some(binds),
        tmpfs: Some(tmpfs),
        network_mode: Some(
            match run.network {
                Network::Full => "bridge",
                // A `model` run reaches the proxy through a bound socket, not a network.
                Network::None | Network::Model => "none",
            }
            .to_string(),
        ),
        memory,
        // Swap counts against the same limit, so the limit is the limit.
        memory_swap: memory,
        nano_cpus: run.nano_cpus.and_then(|c| i64::try_from(c).ok()),
        pids_limit: run.pids.and_then(|p| i64::try_from(p).ok()),
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        readonly_rootfs: Some(true),
        // The output goes to the run's files; the engine keeps no second copy.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ..HostConfig::default()
    };
    ContainerCreateBody {
        image: Some(run.image.clone()),
        entrypoint: Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            WRAPPER.to_string(),
            "gantry-run".to_string(),
        ]),
        cmd: Some(cmd),
        env: Some(env),
        working_dir: Some(text(&run.worktree)),
        user: Some(format!("{uid}:{gid}")),
        labels: Some(labels),
        host_config: Some(host),
        ..ContainerCreateBody::default()
    }
}
