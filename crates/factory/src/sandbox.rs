//! Sandboxes: the wall between a run's process and everything else on the factory's
//! machine.
//!
//! Every job is untrusted code. Without a wall, a job runs as the factory's user and can
//! walk from its worktree up into the data dir: read the admin token, write the
//! database, read and change other jobs' worktrees, prompts and logs. The default
//! sandbox is bubblewrap (`bwrap`): the run gets a new mount, PID, IPC and UTS
//! namespace whose root is an empty tmpfs holding only
//! - the system directories, read-only (`/usr`, `/bin`, `/lib*`, `/sbin`, `/etc`),
//! - each directory of the run's `PATH` and the directory of its program, read-only,
//! - its own worktree, read-write, and its own artifacts directory (prompt, script),
//!   read-only,
//! - a private `/tmp`, a private `HOME` (`/home/gantry`), a fresh `/proc` and a minimal
//!   `/dev`,
//!
//! with no capabilities (even when the factory runs as root) and no new privileges.
//!
//! The data dir (and any path the factory names as hidden, such as a token file) is
//! covered by an empty tmpfs before the run's own paths are bound back on top, so it is
//! invisible even when it lies below a bound directory. The network is the run's own
//! (a network namespace with loopback only) unless the job asks for `full` (the
//! factory's) or `model` (an egress proxy reached through a forwarder: see
//! [`crate::egress`]). A new PID
//! namespace means no process of the run outlives it: when the command ends, the
//! namespace's init ends and the kernel kills whatever is left, even a process that
//! left the run's process group with `setsid`.
//!
//! The factory's own git commands on a worktree never trust what the run could write
//! there (see `workspace::WorktreeGit`), because the worktree is the one place a run
//! may change.

pub mod limits;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the start-up probe of `bwrap` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-only system directories bound into every bubblewrap sandbox, when they exist.
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];

/// The private home directory of a sandboxed run.
pub const SANDBOX_HOME: &str = "/home/gantry";

/// How a factory contains the processes of its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// bubblewrap, the program at this path (the default: `bwrap` on `PATH`).
    Bwrap {
        /// The `bwrap` program.
        program: PathBuf,
    },
    /// No wall at all: a run sees everything the factory's user sees. Only ever chosen
    /// by an explicit opt-out (`--allow-unsandboxed-jobs`).
    None,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::Bwrap {
            program: PathBuf::from("bwrap"),
        }
    }
}

/// Why a sandbox cannot be used on this machine.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `bwrap` is not installed (or not on `PATH`).
    #[error(
        "bubblewrap ({program}) is not installed: install the package `bubblewrap` so that jobs run sandboxed"
    )]
    NotInstalled {
        /// The program looked for.
        program: String,
    },
    /// `bwrap` exists but cannot create a sandbox here (no user namespaces, seccomp, ...).
    #[error("bubblewrap ({program}) cannot create a sandbox on this machine: {reason}")]
    Broken {
        /// The program tried.
        program: String,
        /// What it said, or why it could not run.
        reason: String,
    },
}

impl Sandbox {
    /// The sandbox's name, as advertised and logged: `bwrap` or `none`.
    pub fn kind(&self) -> &'static str {
        match self {
            Sandbox::Bwrap { .. } => "bwrap",
            Sandbox::None => "none",
        }
    }

    /// Checks that this sandbox works on this machine by starting a trivial process in
    /// it, with the same namespaces a run gets. A program that worked once is not
    /// started again in this process (`gantry serve` decides on its sandbox, then its
    /// embedded factory checks it at start).
    pub async fn probe(&self) -> Result<(), SandboxError> {
        static WORKED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        let Sandbox::Bwrap { program } = self else {
            return Ok(());
        };
        let worked = || WORKED.lock().unwrap_or_else(|p| p.into_inner());
        if worked().contains(program) {
            return Ok(());
        }
        probe_bwrap(program).await?;
        worked().push(program.clone());
        Ok(())
    }
}

/// Starts `true` in a bubblewrap sandbox made with `program`.
async fn probe_bwrap(program: &Path) -> Result<(), SandboxError> {
    let shown = program.display().to_string();
    let mut cmd = tokio::process::Command::new(program);
    // `--as-pid-1`: without bwrap's own init in the namespace, nothing is left to
    // be re-parented to this process (a child subreaper) as a zombie.
    cmd.args([
        "--unshare-all",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--as-pid-1",
    ]);
    for dir in SYSTEM_DIRS {
        if Path::new(dir).exists() {
            cmd.args(["--ro-bind", dir, dir]);
        }
    }
    cmd.args(["--proc", "/proc", "--dev", "/dev", "--", "true"])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(SandboxError::Broken {
                program: shown,
                reason: format!("it did not finish within {PROBE_TIMEOUT:?}"),
            });
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SandboxError::NotInstalled { program: shown });
        }
        Ok(Err(e)) => {
            return Err(SandboxError::Broken {
                program: shown,
                reason: e.to_string(),
            });
        }
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Broken {
            program: shown,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Everything a sandbox needs to know about one run, besides its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The sandbox to run in.
    pub sandbox: Sandbox,
    /// The factory's data dir: hidden, whatever else is bound.
    pub data_dir: PathBuf,
    /// Other paths of the factory's to hide (token files, configuration).
    pub hidden: Vec<PathBuf>,
    /// Paths of the run's own it may read (its artifacts directory: prompt, script).
    pub readable: Vec<PathBuf>,
    /// Paths every run may read, chosen by whoever runs the factory (a toolchain).
    pub read_only: Vec<PathBuf>,
    /// Paths every run may write, chosen by whoever runs the factory (a shared build
    /// cache). The data dir stays hidden even below one of them.
    pub read_write: Vec<PathBuf>,
    /// Whether the working directory is bound read-only (a reviewer's copy of a result)
    /// rather than writable (a run's worktree).
    pub worktree_read_only: bool,
    /// What the run may reach on the network.
    pub network: gantry_core::sandbox::Network,
    /// The egress proxy's socket and the forwarder of a `model` run.
    pub egress: Option<crate::egress::EgressMount>,
    /// The run's limits on memory, CPU and pids, and what enforces them (see
    /// [`limits`]); `None` when the job sets none.
    pub limits: Option<RunLimits>,
}

/// A run's limits and the factory's mechanism for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// The limits.
    pub limits: limits::Limits,
    /// What enforces them.
    pub limiter: limits::Limiter,
}

impl Confinement {
    /// The argv prefix that starts `program` (as resolved on the factory's side) in
    /// the sandbox, with `worktree` as the only writable host path and working
    /// directory, and the directories of `path_var` readable. Empty for
    /// [`Sandbox::None`]; the program and its arguments follow it.
    pub fn prefix(
        &self,
        program: &Path,
        worktree: &Path,
        path_var: Option<&OsStr>,
    ) -> Vec<OsString> {
        let Sandbox::Bwrap { program: bwrap } = &self.sandbox else {
            return Vec::new();
        };
        let mut a = Args(vec![bwrap.clone().into_os_string()]);
        // No `--die-with-parent`: a factory restart must leave runs running for the
        // next factory to adopt. The shim, not the factory, is bwrap's parent anyway.
        // A factory running as root would otherwise hand its runs every capability
        // (within their user namespace): none is needed to run an agent.
        a.push(["--unshare-all", "--cap-drop", "ALL"]);
        let (net_binds, launcher) = crate::egress::bwrap_args(self.network, self.egress.as_ref());
        for dir in SYSTEM_DIRS {
            a.system(Path::new(dir));
        }
        // The private `/tmp` goes first, so that paths below it bound later show.
        a.push(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        a.push(["--dir", SANDBOX_HOME, "--setenv", "HOME", SANDBOX_HOME]);
        for dir in path_var.map(std::env::split_paths).into_iter().flatten() {
            if dir.is_absolute() {
                a.readonly(&dir);
            }
        }
        if let Some(dir) = program.parent() {
            a.readonly(dir);
        }
        for path in &self.read_only {
            a.readonly(path);
        }
        for path in self.read_write.iter().filter(|p| p.exists()) {
            a.push([OsStr::new("--bind"), path.as_os_str(), path.as_os_str()]);
        }
        // Hidden paths go on top of everything bound so far, so that a data dir below
        // a bound directory (say `/opt/gantry`) is covered too.
        for hidden in std::iter::once(&self.data_dir).chain(&self.hidden) {
            a.hide(hidden);
        }
        for path in self.readable.iter().filter(|p| p.exists()) {
            a.bind_ro(path);
        }
        let bind = if self.worktree_read_only {
            "--ro-bind"
        } else {
            "--bind"
        };
        a.push([OsStr::new(bind), worktree.as_os_str(), worktree.as_os_str()]);
        a.push([OsStr::new("--chdir"), worktree.as_os_str()]);
        a.push(net_binds);
        a.push(["--"]);
        a.push(launcher);
        a.0
    }
}

/// bwrap arguments under construction.
struct Args(Vec<OsString>);

impl Args {
    fn push<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0
            .extend(args.into_iter().map(|s| s.as_ref().to_os_string()));
    }

    /// Makes the system directory `path` readable: a symbolic link is recreated as one
    /// (merged-`/usr` systems link `/bin` to `usr/bin`), a directory is bound
    /// read-only. A path that does not exist is left out.
    fn system(&mut self, path: &Path) {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(path) {
                Ok(target) => self.push([
                    OsStr::new("--symlink"),
                    target.as_os_str(),
                    path.as_os_str(),
                ]),
                Err(_) => self.bind_ro(path),
            },
            Ok(_) => self.bind_ro(path),
            Err(_) => {}
        }
    }

    /// Makes `path` readable, unless a system directory already holds it, it is the
    /// root (which would show everything), or it does not exist.
    fn readonly(&mut self, path: &Path) {
        let covered = SYSTEM_DIRS.iter().any(|d| path.starts_with(d));
        if covered || path.parent().is_none() || !path.exists() {
            return;
        }
        self.bind_ro(path);
    }

    fn bind_ro(&mut self, path: &Path) {
        self.push([OsStr::new("--ro-bind"), path.as_os_str(), path.as_os_str()]);
    }

    /// Covers `path` with an empty tmpfs (a directory) or an empty file.
    fn hide(&mut self, path: &Path) {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => self.push([OsStr::new("--tmpfs"), path.as_os_str()]),
            Ok(_) => self.push([
                OsStr::new("--ro-bind"),
                OsStr::new("/dev/null"),
                path.as_os_str(),
            ]),
            Err(_) => {}
        }
    }
}
