//! `kill_orphans`: kills the groups recorded by run records, never a reused pid.

use crate::support::*;
use gantry_core::{JobId, RunId};
use gantry_factory::kill_orphans;
use gantry_factory::process::{PidRecord, start_time};
use gantry_factory::record::RunRecord;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command};

/// Starts `sh -c script` as the leader of its own process group.
fn spawn_group(script: &str, envs: &[(&str, &str)]) -> Child {
    Command::new("sh")
        .args(["-c", script])
        .envs(envs.iter().copied())
        .process_group(0)
        .spawn()
        .expect("spawn sh")
}

fn record(child: &Child, job: i64, run: i64, start_time: u64) -> PidRecord {
    let pid = child.id() as i32;
    PidRecord {
        pid,
        pgid: pid,
        start_time,
        job: JobId(job),
        run: RunId(run),
    }
}

/// Writes the run record of `run` of `job` naming `process` under `data`.
fn write_record(data: &Path, job: i64, run: i64, process: Option<PidRecord>) -> std::path::PathBuf {
    let rec = run_record(data, claim(job, run, 1, spec(data, &["true"])), process);
    std::fs::create_dir_all(data.join("runs")).expect("mkdir runs");
    rec.write(data).expect("write record");
    RunRecord::path(data, RunId(run))
}

#[tokio::test]
async fn kills_a_recorded_group_and_removes_the_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_group("sleep 1000 & sleep 1000; wait", &[]);
    let pgid = child.id() as i32;
    wait_for(|| (live_members(pgid).len() >= 3).then_some(())).await;
    let st = start_time(pgid).expect("start time");
    let path = write_record(tmp.path(), 1, 1, Some(record(&child, 1, 1, st)));

    assert_eq!(kill_orphans(tmp.path()), 1);
    let status = child.wait().expect("reap leader");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    // The background sleeps were killed with the group (they may linger as zombies of
    // whoever adopted them, but none is alive).
    wait_for(|| live_members(pgid).is_empty().then_some(())).await;
    assert!(!path.exists(), "record removed");
    assert_eq!(kill_orphans(tmp.path()), 0, "nothing left to kill");
}

#[tokio::test]
async fn ignores_a_record_whose_pid_was_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_group("sleep 1000", &[]);
    let pid = child.id() as i32;
    let st = start_time(pid).expect("start time");
    // Same pid, another start time: a different process that happens to have the pid.
    let path = write_record(tmp.path(), 2, 2, Some(record(&child, 2, 2, st + 1)));

    assert_eq!(kill_orphans(tmp.path()), 0);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    assert!(!path.exists(), "stale record removed");
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[tokio::test]
async fn kills_survivors_of_a_dead_leader_only_when_they_carry_the_runs_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The leader exits at once; its background sleep stays in the group.
    let ids = [("GANTRY_JOB_ID", "3"), ("GANTRY_RUN_ID", "33")];
    let mut ours = spawn_group("sleep 1000 & echo", &ids);
    let pgid = ours.id() as i32;
    let st = start_time(pgid).expect("start time");
    ours.wait().expect("leader exits");
    wait_for(|| (live_members(pgid).len() == 1).then_some(())).await;
    write_record(tmp.path(), 3, 33, Some(record(&ours, 3, 33, st)));

    // A group whose survivors name another run is not touched.
    let other_ids = [("GANTRY_JOB_ID", "4"), ("GANTRY_RUN_ID", "99")];
    let mut other = spawn_group("sleep 1000 & echo", &other_ids);
    let other_pgid = other.id() as i32;
    let other_st = start_time(other_pgid).expect("start time");
    other.wait().expect("leader exits");
    wait_for(|| (live_members(other_pgid).len() == 1).then_some(())).await;
    write_record(tmp.path(), 4, 44, Some(record(&other, 4, 44, other_st)));

    assert_eq!(kill_orphans(tmp.path()), 1);
    wait_for(|| live_members(pgid).is_empty().then_some(())).await;
    assert_eq!(
        live_members(other_pgid).len(),
        1,
        "the other group is left alone"
    );
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(other_pgid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("clean up the other group");
}

#[tokio::test]
async fn a_missing_work_dir_or_garbage_record_is_harmless() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert_eq!(kill_orphans(tmp.path()), 0);
    let runs = tmp.path().join("runs");
    std::fs::create_dir_all(&runs).expect("mkdir");
    std::fs::write(runs.join("9.json"), "not json").expect("write");
    assert_eq!(kill_orphans(tmp.path()), 0);
    assert!(!runs.join("9.json").exists());
}

#[tokio::test]
async fn a_record_without_a_process_kills_the_processes_that_carry_the_runs_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Ids no other test uses: the processes are found by their environment.
    let ids = [("GANTRY_JOB_ID", "905"), ("GANTRY_RUN_ID", "9055")];
    let mut ours = spawn_group("exec sleep 1000", &ids);
    // Until its last exec is done (sh, then sleep), a process's /proc environ may be
    // its parent's, or briefly unreadable: wait for the sleep itself.
    let pid = ours.id();
    wait_for(|| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        (comm.trim() == "sleep" && env.windows(18).any(|w| w == b"GANTRY_RUN_ID=9055"))
            .then_some(())
    })
    .await;
    let path = write_record(tmp.path(), 905, 9055, None);
    assert_eq!(kill_orphans(tmp.path()), 1);
    let status = ours.wait().expect("reap");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    assert!(!path.exists(), "record removed");
}
