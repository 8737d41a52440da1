//! Processes of runs: started detached, signalled and killed as a whole process group,
//! and recognised again after a restart without ever hitting a reused pid.
//!
//! A run's process is started through a tiny `sh` shim, in its own session and process
//! group (the shim leads both), with stdin from a file or `/dev/null` and stdout and
//! stderr written straight to files. The shim waits for the real command and writes its
//! exit status atomically to a file, so the status is captured even while no factory
//! watches: the factory that started the run may die and a later one finds both the
//! output and the status on disk. One signal to the group reaches the command and
//! everything it started (unless a descendant deliberately leaves with `setsid`).

use gantry_core::{JobId, RunId};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// The shim: ignores nothing (traps with a handler are reset to the default in the
/// command it starts), survives SIGHUP/SIGINT/SIGTERM itself so that it outlives the
/// command and records how it ended (POSIX defers a trap until the foreground command
/// completes), then writes the status to `$1` through a temporary file and a rename.
/// A command killed by signal N ends with status 128+N. `PWD`, which the shell sets,
/// is unset so the command's environment is exactly the one given.
const SHIM: &str = "trap : HUP INT TERM
unset PWD
s=$1
shift
\"$@\"
c=$?
printf '%s\\n' \"$c\" > \"$s.tmp\" && mv -f \"$s.tmp\" \"$s\"
";

/// The name the shim runs under (`$0`), which also makes it easy to spot in `ps`.
const SHIM_NAME: &str = "gantry-run";

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program is not an executable file, or not found on `PATH`.
    #[error("cannot start the command {program:?}: {reason}")]
    NotFound {
        /// The program as given.
        program: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The argv is empty.
    #[error("the command is empty")]
    Empty,
    /// A file for stdin, stdout or stderr could not be opened.
    #[error("cannot open {path} for the command's {what}: {source}")]
    Io {
        /// `stdin`, `stdout` or `stderr`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The shim could not be started.
    #[error("cannot start the command {program:?}: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The run's limits could not be put in place.
    #[error("cannot limit the command {program:?}: {source}")]
    Limits {
        /// The program as given.
        program: String,
        /// What went wrong.
        #[source]
        source: crate::sandbox::limits::LimitError,
    },
    /// The process vanished before its identity could be read.
    #[error("the command {program:?} ended before its pid and start time were known")]
    Vanished {
        /// The program as given.
        program: String,
    },
}

/// What identifies a run's process: enough to find its process group again, and to
/// tell the recorded process from a later one that reused its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// Pid of the group leader (the shim).
    pub pid: i32,
    /// Process group id (equal to `pid`: the shim leads its own group and session).
    pub pgid: i32,
    /// Start time of the leader, field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
    /// The job.
    pub job: JobId,
    /// The run.
    pub run: RunId,
}

/// A command to start detached, with everything it needs spelled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedCommand {
    /// Program and arguments. A program without `/` is looked up on the `PATH` of
    /// `env`; one with `/` is taken relative to `cwd`.
    pub argv: Vec<OsString>,
    /// Working directory.
    pub cwd: PathBuf,
    /// The whole environment (nothing of the factory's is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// File read as stdin; `None` means `/dev/null`.
    pub stdin: Option<PathBuf>,
    /// File that receives stdout (created or truncated).
    pub stdout: PathBuf,
    /// File that receives stderr (created or truncated).
    pub stderr: PathBuf,
    /// File the exit status is written to when the command ends.
    pub exit_status: PathBuf,
    /// The sandbox the command runs in, with `cwd` as its worktree; `None` runs it
    /// with the factory's own view of the machine.
    pub confinement: Option<crate::sandbox::Confinement>,
}

/// A process started by [`spawn_detached`].
#[derive(Debug)]
pub struct Detached {
    /// Pid, process group and start time of the shim that leads the group.
    pub pid: i32,
    /// Start time of the shim (see [`PidRecord::start_time`]).
    pub start_time: u64,
    /// The shim as a child of this process: waiting for it is a prompt notice that the
    /// run ended (the status itself is read from the exit status file). Dropping it
    /// neither kills nor disturbs the run.
    pub child: tokio::process::Child,
}

/// How a command ended, as its exit status file tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was ended by this signal (the shell reports 128+N).
    Signal(i32),
}

impl Exit {
    /// Whether the command exited 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The exit code, when it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }

    /// Reads a status as the shell reports it: 128+N for signal N (N at most 64).
    pub fn from_shell(status: i32) -> Exit {
        if (129..=128 + 64).contains(&status) {
            Exit::Signal(status - 128)
        } else {
            Exit::Code(status)
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(n) => match Signal::try_from(*n) {
                Ok(sig) => write!(f, "signal {n} ({sig})"),
                Err(_) => write!(f, "signal {n}"),
            },
        }
    }
}

/// Reads the exit status file written by the shim: `None` while there is none (the
/// command still runs, or its shim was killed before it could write one).
pub fn read_exit_status(path: &Path) -> Option<Result<Exit, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("cannot read {}: {e}", path.display()))),
    };
    Some(
        text.trim()
            .parse::<i32>()
            .map(Exit::from_shell)
            .map_err(|_| format!("{} holds no exit status: {text:?}", path.display())),
    )
}

/// The `setsid` program, when this system has one (util-linux and busybox do).
fn setsid_program() -> Option<&'static Path> {
    static SETSID: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETSID
        .get_or_init(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let dirs = std::env::split_paths(&path)
                .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
            let found = dirs.map(|d| d.join("setsid")).find(|p| is_executable(p));
            if found.is_none() {
                tracing::warn!(
                    "no setsid program found: runs get their own process group but share the factory's session"
                );
            }
            found
        })
        .as_deref()
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `program` the way `execvp` would with `env`'s `PATH`, so that a missing
/// program is reported by name instead of as the shim's exit 127.
pub fn resolve_program(
    program: &OsStr,
    cwd: &Path,
    env: &[(OsString, OsString)],
) -> Result<PathBuf, ProcessError> {
    let shown = program.to_string_lossy().into_owned();
    if program.is_empty() {
        return Err(ProcessError::Empty);
    }
    let path = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        let full = cwd.join(path);
        return if is_executable(&full) {
            Ok(full)
        } else if full.exists() {
            Err(ProcessError::NotFound {
                program: shown,
                reason: "not an executable file".to_string(),
            })
        } else {
            Err(ProcessError::NotFound {
                program: shown,
                reason: "no such file".to_string(),
            })
        };
    }
    let search = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(&search)
        .map(|dir| cwd.join(dir).join(path))
        .find(|p| is_executable(p))
        .ok_or_else(|| ProcessError::NotFound {
            program: shown,
            reason: "not found on PATH".to_string(),
        })
}

/// Starts `cmd` detached: through the shim, in its own session and process group, with
/// its output going straight to files. Returns once the shim leads its group.
pub async fn spawn_detached(cmd: &DetachedCommand) -> Result<Detached, ProcessError> {
    let Some((program, args)) = cmd.argv.split_first() else {
        return Err(ProcessError::Empty);
    };
    let shown = program.to_string_lossy().into_owned();
    let resolved = resolve_program(program, &cmd.cwd, &cmd.env)?;
    let path_var = cmd
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_os_str());
    let wall = cmd
        .confinement
        .as_ref()
        .map(|c| c.prefix(&resolved, &cmd.cwd, path_var))
        .unwrap_or_default();
    let open = |what, path: &Path, write: bool| {
        let f = if write {
            std::fs::File::create(path)
        } else {
            std::fs::File::open(path)
        };
        f.map_err(|source| ProcessError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let stdin = match &cmd.stdin {
        Some(p) => Stdio::from(open("stdin", p, false)?),
        None => Stdio::null(),
    };
    // The limits go in place before the process starts: it joins its cgroups between
    // fork and exec, and `prlimit` (inside the sandbox) sets its rlimits.
    let limited = match cmd.confinement.as_ref().and_then(|c| c.limits.as_ref()) {
        Some(l) => l
            .limiter
            .prepare(&l.limits, &cmd.exit_status)
            .map_err(|source| ProcessError::Limits {
                program: shown.clone(),
                source,
            })?,
        None => Default::default(),
    };
    let stdout = open("stdout", &cmd.stdout, true)?;
    let stderr = open("stderr", &cmd.stderr, true)?;
    // A stale status of an earlier start would pass for this one's.
    let _ = std::fs::remove_file(&cmd.exit_status);

    let setsid = setsid_program();
    let mut command = match setsid {
        // `setsid` calls setsid(2) itself and execs the shell (it forks only when it
        // already leads a group, which a fresh child of ours does not).
        Some(s) => {
            let mut c = tokio::process::Command::new(s);
            c.arg("/bin/sh");
            c
        }
        None => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.process_group(0);
            c
        }
    };
    command
        .arg("-c")
        .arg(SHIM)
        .arg(SHIM_NAME)
        .arg(&cmd.exit_status)
        .args(&wall)
        .args(&limited.inner)
        .arg(&resolved)
        .args(args)
        .current_dir(&cmd.cwd)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin)
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    if limited.joins() {
        // SAFETY: the closure only calls `write(2)` on files opened before the fork,
        // which is async-signal-safe, and allocates nothing. Joining in the child is the
        // only way its descendants cannot start outside the cgroup.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || limited.join());
        }
    }
    let child = command.spawn().map_err(|source| ProcessError::Spawn {
        program: shown.clone(),
        source,
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| ProcessError::Vanished {
            program: shown.clone(),
        })?;
    if setsid.is_some() {
        // Until `setsid` ran, the child is still in our group and session: wait until it
        // leads its own, so that signalling the group never reaches us.
        let mut delay = Duration::from_micros(200);
        for _ in 0..200 {
            match stat_fields(pid) {
                Some(f) if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pid) => break,
                None => break,
                Some(_) => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(10));
        }
    }
    let start_time = start_time(pid).ok_or(ProcessError::Vanished { program: shown })?;
    Ok(Detached {
        pid,
        start_time,
        child,
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, which may itself contain
/// spaces and parentheses (so we split after the last `)`). Index 0 is field 3 (state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

/// Start time of process `pid` (field 22 of `/proc/<pid>/stat`), or `None` when there
/// is no such process.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether the recorded leader still runs: same pid, same start time, not a zombie.
pub fn is_alive(p: &PidRecord) -> bool {
    stat_fields(p.pid).is_some_and(|f| {
        f.get(19).and_then(|t| t.parse::<u64>().ok()) == Some(p.start_time)
            && !matches!(f.first().map(String::as_str), Some("Z" | "X"))
    })
}

/// Whether group `p.pgid` is provably the recorded run's, so that signalling it cannot
/// hit anyone else:
/// - the recorded leader still exists with the recorded start time (a pid reused by an
///   unrelated process has a different start time); or
/// - the leader is gone, but members of the group remain whose environment names the
///   recorded job and run (Linux does not reuse a pid as a new process or group id
///   while a group of that id still has members, so these are the run's descendants).
pub fn group_is_run(p: &PidRecord) -> bool {
    if p.pgid <= 1 || p.pid <= 1 {
        return false;
    }
    match start_time(p.pid) {
        Some(t) => t == p.start_time,
        None => live_group_members(p.pgid)
            .into_iter()
            .any(|pid| env_names_run(pid, p.job, p.run)),
    }
}

/// Pids of the processes of group `pgid` that are not zombies, read from `/proc`.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat_fields(*pid).is_some_and(|f| {
                f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
                    && !matches!(f.first().map(String::as_str), Some("Z" | "X"))
            })
        })
        .collect()
}

/// Pids of live processes whose environment names `run` of `job`: how the processes of
/// a run are found when no pid of it was recorded.
pub fn processes_of_run(job: JobId, run: RunId) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && env_names_run(*pid, job, run))
        .collect()
}

/// Kills the processes of `run` of `job` found by their environment (and the process
/// groups they lead), for a run whose pid was never recorded; returns once none is
/// left alive, or after about two seconds.
pub async fn kill_run_processes(job: JobId, run: RunId) {
    for _ in 0..200 {
        let pids = processes_of_run(job, run);
        let live: Vec<i32> = pids
            .into_iter()
            .filter(|pid| {
                stat_fields(*pid)
                    .is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z" | "X")))
            })
            .collect();
        if live.is_empty() {
            return;
        }
        for pid in live {
            let leads_group = stat_fields(pid)
                .and_then(|f| f.get(2).and_then(|g| g.parse::<i32>().ok()))
                == Some(pid);
            if leads_group {
                signal_group(pid, Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            reap_group(pid);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(%job, %run, "processes of the run survive SIGKILL");
}

/// Sends `signal` to every process of group `pgid`. Returns whether the group existed.
pub fn signal_group(pgid: i32, signal: Signal) -> bool {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pgid, %signal, error = %e, "signalling process group failed");
            true
        }
    }
}

/// How long [`kill_group_and_wait`] keeps reaping a group of which only zombies remain.
const ZOMBIE_WAIT: Duration = Duration::from_millis(50);

/// Reaps members of group `pgid` that are our children (the shim is; others are when
/// this process is a child subreaper and their parent died), so they do not linger as
/// zombies.
fn reap_group(pgid: i32) {
    loop {
        match waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// SIGKILLs group `pgid` and returns once no process of it remains, children that
/// ignore SIGTERM included: what `gantry bench kill` measures.
///
/// "Remains" means a member that is not a zombie: a zombie is dead, and when someone
/// else must reap it (this process is not its parent and init may not reap), waiting
/// longer cannot help.
///
/// The group's members that are our children are reaped here, which is fine for runs:
/// their exit status comes from the exit status file, not from `wait`.
pub async fn kill_group_and_wait(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    let mut delay = Duration::from_micros(500);
    let mut rounds = 0u32;
    let mut zombies_since = None;
    loop {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        reap_group(pgid);
        match kill(Pid::from_raw(-pgid), None) {
            Err(Errno::ESRCH) => return,
            Err(e) => {
                tracing::warn!(pgid, error = %e, "probing process group failed");
                return;
            }
            Ok(()) => {}
        }
        rounds += 1;
        // Only zombies left: they are dead. Those re-parented to us (a subreaper) are
        // reaped above within moments; others are someone else's to reap, and waiting
        // longer for them cannot help.
        if rounds >= 2 && live_group_members(pgid).is_empty() {
            let since = *zombies_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= ZOMBIE_WAIT {
                tracing::debug!(pgid, "only unreaped zombies remain in the process group");
                return;
            }
        }
        if rounds.is_multiple_of(500) {
            tracing::warn!(pgid, live = ?live_group_members(pgid), "process group survives SIGKILL");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Whether the environment of process `pid` says it belongs to `run` of `job`
/// (`GANTRY_RUN_ID` and `GANTRY_JOB_ID`, which every run's process inherits).
fn env_names_run(pid: i32, job: JobId, run: RunId) -> bool {
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want_run = format!("GANTRY_RUN_ID={run}");
    let want_job = format!("GANTRY_JOB_ID={job}");
    let mut has_run = false;
    let mut has_job = false;
    for var in env.split(|b| *b == 0) {
        has_run |= var == want_run.as_bytes();
        has_job |= var == want_job.as_bytes();
    }
    has_run && has_job
}

/// Makes this process a child subreaper, so descendants of a run whose parent died are
/// re-parented to us (and reaped by [`kill_group_and_wait`]) instead of to init, which
/// in containers often does not reap. The factory does it when it starts.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphaned zombies may linger");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable_and_missing_pid_has_none() {
        let me = std::process::id() as i32;
        let a = start_time(me).expect("own stat is readable");
        assert_eq!(start_time(me), Some(a));
        // Pids above pid_max (at most 2^22) never exist.
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn shell_statuses_above_128_are_signals() {
        assert_eq!(Exit::from_shell(0), Exit::Code(0));
        assert_eq!(Exit::from_shell(3), Exit::Code(3));
        assert_eq!(Exit::from_shell(128), Exit::Code(128));
        assert_eq!(Exit::from_shell(137), Exit::Signal(9));
        assert_eq!(Exit::from_shell(143), Exit::Signal(15));
        assert_eq!(Exit::from_shell(255), Exit::Code(255));
        assert_eq!(Exit::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert!(Exit::Code(0).success() && !Exit::Code(1).success());
    }

    #[test]
    fn exit_status_files_are_read_or_named_when_bad() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exit_status");
        assert!(read_exit_status(&path).is_none());
        std::fs::write(&path, "137\n").expect("write");
        assert_eq!(read_exit_status(&path), Some(Ok(Exit::Signal(9))));
        std::fs::write(&path, "nope").expect("write");
        let err = read_exit_status(&path)
            .expect("present")
            .expect_err("garbage");
        assert!(err.contains("exit_status"), "{err}");
    }

    #[test]
    fn programs_are_resolved_on_the_runs_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = vec![(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))];
        let sh = resolve_program(OsStr::new("sh"), dir.path(), &env).expect("sh is on PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        let err = resolve_program(OsStr::new("no-such-program-xyz"), dir.path(), &env)
            .expect_err("missing");
        assert!(err.to_string().contains("no-such-program-xyz"), "{err}");
        std::fs::write(dir.path().join("data.txt"), "x").expect("write");
        let err = resolve_program(OsStr::new("./data.txt"), dir.path(), &env)
            .expect_err("not executable");
        assert!(err.to_string().contains("not an executable"), "{err}");
    }
}
