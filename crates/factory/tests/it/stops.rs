//! Runs that are stopped: timeout, cancel, kill, lost lease, shutdown. None may leave a
//! process of its group behind.

use crate::support::*;
use gantry_core::{JobId, Outcome, RunId, StopKind};
use gantry_factory::artifacts_dir;

/// Waits until the run's group has at least `n` live processes (so the test really
/// stops a tree of processes, not a lone shell).
async fn wait_group_size(pgid: i32, n: usize) {
    wait_for(|| (live_members(pgid).len() >= n).then_some(())).await;
}

fn assert_group_gone(pgid: i32) {
    let left = group_members(pgid);
    assert!(
        left.is_empty(),
        "processes of group {pgid} remain: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_timed_out_and_leaves_nothing() {
    let h = Harness::start(1).await;
    // SIGTERM is ignored by the whole tree, so only the SIGKILL after the grace ends it.
    let mut s = spec(
        &h.repo,
        &[
            "sh",
            "-c",
            "trap '' TERM; echo started; sleep 1000 & sleep 1000; wait",
        ],
    );
    s.timeout_ms = Some(500);
    let report = h.run(claim(1, 1, 1, s)).await;
    assert_eq!(report.outcome, Some(Outcome::TimedOut), "{report:?}");
    assert_eq!(report.error, None);
    let pgid = started_pid(&h.coord.started(RunId(1)).await);
    assert_group_gone(pgid);
    assert!(!h.data.join("work/1-a1").exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sends_sigterm_waits_the_grace_then_kills() {
    let h = Harness::start(1).await;
    // The shell survives SIGTERM (its trap notes it), and keeps looping until SIGKILL.
    let script = r#"trap 'echo got-term; T=1' TERM
echo ready
while :; do
  if [ -n "$T" ]; then echo still-alive; T=; fi
  sleep 0.05
done"#;
    h.coord
        .push(claim(2, 2, 1, spec(&h.repo, &["sh", "-c", script])));
    let pgid = started_pid(&h.coord.started(RunId(2)).await);
    wait_for(|| {
        h.coord
            .output(RunId(2), "stdout")
            .contains("ready")
            .then_some(())
    })
    .await;
    h.coord
        .set_renew(RunId(2), RenewMode::Stop(StopKind::Cancel));
    let report = h.coord.finish_of(RunId(2)).await;
    assert_eq!(report.outcome, Some(Outcome::Canceled), "{report:?}");
    let out = h.coord.output(RunId(2), "stdout");
    assert!(out.contains("got-term"), "SIGTERM was sent first: {out:?}");
    assert!(
        out.contains("still-alive"),
        "the grace let it run on: {out:?}"
    );
    assert_group_gone(pgid);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_run_that_obeys_sigterm_ends_it_canceled() {
    let h = Harness::start(1).await;
    h.coord.push(claim(
        3,
        3,
        1,
        spec(&h.repo, &["sh", "-c", "echo ready; exec sleep 1000"]),
    ));
    h.coord.started(RunId(3)).await;
    wait_for(|| {
        h.coord
            .output(RunId(3), "stdout")
            .contains("ready")
            .then_some(())
    })
    .await;
    h.coord
        .set_renew(RunId(3), RenewMode::Stop(StopKind::Cancel));
    let report = h.coord.finish_of(RunId(3)).await;
    assert_eq!(report.outcome, Some(Outcome::Canceled));
    assert_eq!(report.exit_code, None, "ended by a signal");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leaves_no_process_of_the_group_even_sigterm_ignoring_grandchildren() {
    let h = Harness::start(1).await;
    // Children and grandchildren ignore SIGTERM; one grandchild is orphaned (its
    // parent subshell exits at once) so it is no longer our descendant by parentage.
    let script = r#"trap '' TERM
(sh -c 'sleep 1000 & sleep 1000; wait' &)
sh -c 'sleep 1000 & wait' &
sleep 1000 &
echo ready
wait"#;
    h.coord
        .push(claim(4, 4, 1, spec(&h.repo, &["sh", "-c", script])));
    let pgid = started_pid(&h.coord.started(RunId(4)).await);
    wait_group_size(pgid, 6).await;
    h.coord.set_renew(RunId(4), RenewMode::Stop(StopKind::Kill));
    let report = h.coord.finish_of(RunId(4)).await;
    assert_eq!(report.outcome, Some(Outcome::Killed), "{report:?}");
    assert_group_gone(pgid);
    assert!(!h.data.join("work/4-a1").exists());
    assert!(!h.data.join("runs/4.json").exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_renewal_kills_at_once_commits_nothing_and_reports_nothing() {
    let h = Harness::start(1).await;
    let script = "echo change > stale.txt; echo ready; trap '' TERM; sleep 1000 & wait";
    h.coord
        .push(claim(5, 5, 1, spec(&h.repo, &["sh", "-c", script])));
    let pgid = started_pid(&h.coord.started(RunId(5)).await);
    wait_for(|| {
        h.coord
            .output(RunId(5), "stdout")
            .contains("ready")
            .then_some(())
    })
    .await;
    // The lease is being renewed (so it is the renewal that turns stale below).
    wait_for(|| (h.coord.renew_count(RunId(5)) > 0).then_some(())).await;
    h.coord.set_renew(RunId(5), RenewMode::Stale);
    let work = h.data.join("work/5-a1");
    wait_for(|| (!work.exists()).then_some(())).await;
    assert_group_gone(pgid);
    let cache = h.cache();
    let (coord, _tmp) = h.stop().await;
    assert!(
        coord.finishes(RunId(5)).is_empty(),
        "no finish after a stale renewal"
    );
    assert_eq!(
        git(&cache, &["rev-parse", "refs/heads/gantry/5/a1"]),
        git(&cache, &["rev-parse", "main"]),
        "nothing committed on the attempt branch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_kills_the_run_once_the_lease_must_have_expired() {
    let h = Harness::start(1).await;
    let mut c = claim(
        6,
        6,
        1,
        spec(&h.repo, &["sh", "-c", "echo ready; sleep 1000"]),
    );
    c.run.lease_ttl_ms = 1_000;
    h.coord.push(c);
    let pgid = started_pid(&h.coord.started(RunId(6)).await);
    wait_for(|| {
        h.coord
            .output(RunId(6), "stdout")
            .contains("ready")
            .then_some(())
    })
    .await;
    h.coord.set_renew(RunId(6), RenewMode::Unavailable);
    let work = h.data.join("work/6-a1");
    wait_for(|| (!work.exists()).then_some(())).await;
    assert_group_gone(pgid);
    let (coord, _tmp) = h.stop().await;
    assert!(
        coord.finishes(RunId(6)).is_empty(),
        "no finish once the lease is lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_blips_shorter_than_the_lease_do_not_stop_the_run() {
    let h = Harness::start(1).await;
    let c = claim(
        7,
        7,
        1,
        spec(&h.repo, &["sh", "-c", "echo ready; sleep 1; echo done"]),
    );
    h.coord.set_renew(RunId(7), RenewMode::Unavailable);
    h.coord.push(c);
    h.coord.started(RunId(7)).await;
    wait_for(|| {
        h.coord
            .output(RunId(7), "stdout")
            .contains("ready")
            .then_some(())
    })
    .await;
    h.coord.set_renew(RunId(7), RenewMode::Ok);
    let report = h.coord.finish_of(RunId(7)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert!(h.coord.output(RunId(7), "stdout").contains("done"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_running_groups_without_reporting() {
    let h = Harness::start(2).await;
    h.coord.push(claim(
        8,
        8,
        1,
        spec(&h.repo, &["sh", "-c", "trap '' TERM; sleep 1000 & wait"]),
    ));
    h.coord
        .push(claim(9, 9, 1, spec(&h.repo, &["sleep", "1000"])));
    let a = started_pid(&h.coord.started(RunId(8)).await);
    let b = started_pid(&h.coord.started(RunId(9)).await);
    wait_group_size(a, 2).await;
    let data = h.data.clone();
    let (coord, _tmp) = h.stop().await;
    assert_group_gone(a);
    assert_group_gone(b);
    assert!(coord.finishes(RunId(8)).is_empty());
    assert!(coord.finishes(RunId(9)).is_empty());
    assert!(!data.join("runs/8.json").exists());
    assert!(
        artifacts_dir(&data, JobId(8), RunId(8))
            .join("prompt.md")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_requested_before_the_command_starts_ends_the_run_killed() {
    let h = Harness::start(1).await;
    h.coord
        .set_renew(RunId(10), RenewMode::Stop(StopKind::Kill));
    let report = h
        .run(claim(
            10,
            10,
            1,
            spec(&h.repo, &["sh", "-c", "echo ran > ran.txt; sleep 1000"]),
        ))
        .await;
    assert_eq!(report.outcome, Some(Outcome::Killed), "{report:?}");
    assert!(!h.data.join("work/10-a1").exists());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue3_kill_group_and_wait_returns_once_the_whole_detached_tree_is_gone() {
    use gantry_factory::process::{DetachedCommand, kill_group_and_wait, spawn_detached};
    let tmp = tempfile::tempdir().expect("tempdir");
    // What `gantry bench kill` measures: a tree whose members all ignore SIGTERM.
    let script = "trap '' TERM
(sh -c 'trap \"\" TERM; sleep 1000 & sleep 1000; wait' &)
sleep 1000 &
sleep 1000 &
wait";
    for round in 0..5 {
        let cmd = DetachedCommand {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            cwd: tmp.path().to_path_buf(),
            env: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
            stdin: None,
            stdout: tmp.path().join(format!("out{round}")),
            stderr: tmp.path().join(format!("err{round}")),
            exit_status: tmp.path().join(format!("status{round}")),
            confinement: None,
        };
        let d = spawn_detached(&cmd).await.expect("spawn");
        wait_for(|| (live_members(d.pid).len() >= 6).then_some(())).await;
        kill_group_and_wait(d.pid).await;
        assert!(
            live_members(d.pid).is_empty(),
            "round {round}: live members left: {:?}",
            group_members(d.pid)
        );
    }
}
