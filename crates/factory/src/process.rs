//! Process groups: signalling a run's whole group, making sure none of it is left, and
//! pid records that let a restarted factory kill what a previous incarnation left.
//!
//! Every run's command is started as the leader of its own process group, so one signal
//! reaches the command and everything it started (unless a descendant deliberately
//! leaves the group with `setsid`). A pid record `<data>/work/<job>-a<attempt>.pid`
//! names the group while the run lives; [`kill_orphans`] reads them after a restart.

use gantry_core::{JobId, RunId};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a run's pid record holds: enough to find its process group again, and to tell
/// the recorded process from a later one that reused its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// Pid of the group leader (the run's command).
    pub pid: i32,
    /// Process group id (equal to `pid`: the command leads its own group).
    pub pgid: i32,
    /// Start time of the leader, field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
    /// The job.
    pub job: JobId,
    /// The run.
    pub run: RunId,
}

impl PidRecord {
    /// Where the record of attempt `attempt` of `job` lives: `<data>/work/<job>-a<attempt>.pid`.
    pub fn path(data_dir: &Path, job: JobId, attempt: u32) -> PathBuf {
        data_dir.join("work").join(format!("{job}-a{attempt}.pid"))
    }

    /// Writes the record atomically (a temporary file renamed into place), so a crash
    /// never leaves half a record behind.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }

    /// Reads a record written by [`PidRecord::write`].
    pub fn read(path: &Path) -> std::io::Result<PidRecord> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("pid record {} is not valid: {e}", path.display()),
            )
        })
    }
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

/// Sends `signal` to every process of group `pgid`. Returns whether the group existed.
pub(crate) fn signal_group(pgid: i32, signal: Signal) -> bool {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            tracing::warn!(pgid, %signal, error = %e, "signalling process group failed");
            true
        }
    }
}

/// Reaps members of group `pgid` that are our children (they are when this process is a
/// child subreaper and their parent died), so they do not linger as zombies.
fn reap_group(pgid: i32) {
    loop {
        match waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// SIGKILLs group `pgid` until no process of it remains.
///
/// "Remains" means `kill(-pgid, 0)` still succeeds. When the only members left are
/// zombies that someone else must reap (this process is not their parent and init does
/// not reap), waiting longer cannot help: after a while those count as gone.
///
/// Call it only after the leader was reaped (its `wait` returned): the group's members
/// are reaped here by group, which must not steal the leader's exit status.
pub(crate) async fn kill_group_and_wait(pgid: i32) {
    let mut delay = Duration::from_millis(5);
    let mut rounds = 0u32;
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
        // Only zombies left for a while (SIGKILL is delivered in well under a second).
        if rounds >= 100 && live_group_members(pgid).is_empty() {
            tracing::debug!(pgid, "only unreaped zombies remain in the process group");
            return;
        }
        if rounds % 500 == 0 {
            tracing::warn!(pgid, live = ?live_group_members(pgid), "process group survives SIGKILL");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
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

/// Kills the process groups that a previous incarnation of the factory left behind,
/// as named by the pid records under `<data>/work/`, and removes the records.
/// Returns the number of groups killed.
///
/// A group is killed only when it is provably the recorded run's:
/// - the recorded leader still exists with the recorded start time (a pid reused by an
///   unrelated process has a different start time and is left alone); or
/// - the leader is gone, but members of the group remain whose environment names the
///   recorded job and run (Linux does not reuse a pid as a new process or group id while
///   a group of that id still has members, so these are the run's descendants).
///
/// Called by a restarted `gantry serve` (or `gantry factory`) before it registers again.
pub fn kill_orphans(data_dir: &Path) -> usize {
    let work = data_dir.join("work");
    let Ok(dir) = std::fs::read_dir(&work) else {
        return 0;
    };
    let mut killed = 0;
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let record = match PidRecord::read(&path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable pid record removed");
                let _ = std::fs::remove_file(&path);
                continue;
            }
        };
        if record.pgid <= 1 || record.pid <= 1 {
            tracing::warn!(?record, "pid record with an impossible pid removed");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let ours = match start_time(record.pid) {
            Some(t) => t == record.start_time,
            None => live_group_members(record.pgid)
                .into_iter()
                .any(|pid| env_names_run(pid, record.job, record.run)),
        };
        if ours {
            tracing::info!(job = %record.job, run = %record.run, pgid = record.pgid, "killing orphaned run");
            if signal_group(record.pgid, Signal::SIGKILL) {
                killed += 1;
            }
        } else {
            tracing::debug!(?record, "pid record names no live process of its run");
        }
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove pid record");
        }
    }
    killed
}

/// Makes this process a child subreaper, so descendants of a run whose parent died are
/// re-parented to us (and reaped by [`kill_group_and_wait`]) instead of to init, which
/// in containers often does not reap.
pub(crate) fn become_subreaper() {
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
    fn pid_record_round_trips_and_bad_record_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("1-a1.pid");
        let rec = PidRecord {
            pid: 10,
            pgid: 10,
            start_time: 42,
            job: JobId(1),
            run: RunId(2),
        };
        rec.write(&path).expect("write");
        assert_eq!(PidRecord::read(&path).expect("read"), rec);
        std::fs::write(&path, b"{nope").expect("write garbage");
        let err = PidRecord::read(&path).expect_err("garbage must not parse");
        assert!(err.to_string().contains("1-a1.pid"), "{err}");
    }
}
