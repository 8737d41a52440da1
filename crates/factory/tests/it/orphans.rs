//! `kill_orphans`: kills the groups recorded by pid records, never a reused pid.

use crate::support::*;
use gantry_core::{JobId, RunId};
use gantry_factory::kill_orphans;
use gantry_factory::process::{PidRecord, start_time};
use std::os::unix::process::{CommandExt, ExitStatusExt};
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

#[tokio::test]
async fn kills_a_recorded_group_and_removes_the_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    let mut child = spawn_group("sleep 1000 & sleep 1000; wait", &[]);
    let pgid = child.id() as i32;
    wait_for(|| (live_members(pgid).len() >= 3).then_some(())).await;
    let st = start_time(pgid).expect("start time");
    let path = PidRecord::path(tmp.path(), JobId(1), 1);
    record(&child, 1, 1, st).write(&path).expect("write record");

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
    std::fs::create_dir_all(tmp.path().join("work")).expect("mkdir");
    let mut child = spawn_group("sleep 1000", &[]);
    let pid = child.id() as i32;
    let st = start_time(pid).expect("start time");
    // Same pid, another start time: a different process that happens to have the pid.
    let path = PidRecord::path(tmp.path(), JobId(2), 1);
    record(&child, 2, 2, st + 1)
        .write(&path)
        .expect("write record");

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
    std::fs::create_dir_all(tmp.path().join("work")).expect("mkdir");
    // The leader exits at once; its background sleep stays in the group.
    let ids = [("GANTRY_JOB_ID", "3"), ("GANTRY_RUN_ID", "33")];
    let mut ours = spawn_group("sleep 1000 & echo", &ids);
    let pgid = ours.id() as i32;
    let st = start_time(pgid).expect("start time");
    ours.wait().expect("leader exits");
    wait_for(|| (live_members(pgid).len() == 1).then_some(())).await;
    let path = PidRecord::path(tmp.path(), JobId(3), 1);
    record(&ours, 3, 33, st).write(&path).expect("write record");

    // A group whose survivors name another run is not touched.
    let other_ids = [("GANTRY_JOB_ID", "4"), ("GANTRY_RUN_ID", "99")];
    let mut other = spawn_group("sleep 1000 & echo", &other_ids);
    let other_pgid = other.id() as i32;
    let other_st = start_time(other_pgid).expect("start time");
    other.wait().expect("leader exits");
    wait_for(|| (live_members(other_pgid).len() == 1).then_some(())).await;
    record(&other, 4, 44, other_st)
        .write(&PidRecord::path(tmp.path(), JobId(4), 1))
        .expect("write record");

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
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    std::fs::write(work.join("9-a1.pid"), "not json").expect("write");
    assert_eq!(kill_orphans(tmp.path()), 0);
    assert!(!work.join("9-a1.pid").exists());
}
