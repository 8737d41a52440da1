//! Stopping work: cancel, kill, kill-all with pause, retry, shutdown and restart; and
//! the diff of a run.

use crate::support::{
    TestServer, alive, config, group_members, job_file, repo, started_pid, wait_group_gone,
};
use gantry_core::{Job, JobState, Outcome, StopKind};
use gantry_protocol::{ErrorBody, Status};
use serde_json::json;
use std::time::Duration;

/// A command that ignores SIGTERM and has a child in its group: only SIGKILL to the
/// whole group ends it all.
const STUBBORN: &[&str] = &["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000; wait"];

#[tokio::test]
async fn cancel_and_kill_end_a_running_job_and_leave_no_process() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let ids = ts
        .submit(&[
            ("sleep.md", job_file("sleep", &repo, &["sleep", "1000"], "")),
            ("stubborn.md", job_file("stubborn", &repo, STUBBORN, "")),
        ])
        .await;
    let (sleeper, stubborn) = (ids[0], ids[1]);
    let pid_sleeper = started_pid(&ts, sleeper).await;
    let pid_stubborn = started_pid(&ts, stubborn).await;
    assert!(alive(pid_sleeper) && alive(pid_stubborn));
    // Wait for the stubborn shell's children, so the kill has a group to kill.
    let deadline = tokio::time::Instant::now() + crate::support::HANG_GUARD;
    while group_members(pid_stubborn).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stubborn job never forked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A running job cannot be retried.
    let resp = ts
        .post(&ts.admin, &format!("/v1/jobs/{sleeper}/retry"), &json!({}))
        .await;
    assert_eq!(resp.status(), 409);
    let err: ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.error, "wrong_state");

    let job: Job = ts
        .post_json(&format!("/v1/jobs/{sleeper}/cancel"), &json!({}))
        .await;
    assert!(
        job.state == JobState::Canceled || job.stop_requested == Some(StopKind::Cancel),
        "{job:#?}"
    );
    let job: Job = ts
        .post_json(&format!("/v1/jobs/{stubborn}/kill"), &json!({}))
        .await;
    assert!(
        job.state == JobState::Killed || job.stop_requested == Some(StopKind::Kill),
        "{job:#?}"
    );

    let job = ts.wait_state(sleeper, JobState::Canceled).await;
    assert_eq!(job.runs[0].outcome, Some(Outcome::Canceled));
    let job = ts.wait_state(stubborn, JobState::Killed).await;
    assert_eq!(job.runs[0].outcome, Some(Outcome::Killed));
    wait_group_gone(pid_sleeper).await;
    wait_group_gone(pid_stubborn).await;
    assert!(!alive(pid_sleeper) && !alive(pid_stubborn));

    // A killed job can be retried: it runs again as attempt 2.
    let job: Job = ts
        .post_json(&format!("/v1/jobs/{stubborn}/retry"), &json!({}))
        .await;
    assert!(
        matches!(job.state, JobState::Queued | JobState::Running),
        "{job:#?}"
    );
    let deadline = tokio::time::Instant::now() + crate::support::HANG_GUARD;
    let pid2 = loop {
        let events = ts.events(Some(stubborn)).await;
        let started: Vec<_> = events.iter().filter(|e| e.kind == "run.started").collect();
        if started.len() == 2 {
            break started[1].data["pid"].as_i64().expect("pid") as i32;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retry never started: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let job: Job = ts
        .post_json(&format!("/v1/jobs/{stubborn}/kill"), &json!({}))
        .await;
    assert_eq!(job.attempt, 2);
    ts.wait_state(stubborn, JobState::Killed).await;
    wait_group_gone(pid2).await;
    ts.shutdown().await;
}

#[tokio::test]
async fn kill_all_kills_everything_running_and_pauses_claiming() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let ids = ts
        .submit(&[
            ("a.md", job_file("a", &repo, &["sleep", "1000"], "")),
            ("b.md", job_file("b", &repo, STUBBORN, "")),
        ])
        .await;
    let pids = [
        started_pid(&ts, ids[0]).await,
        started_pid(&ts, ids[1]).await,
    ];

    let resp: serde_json::Value = ts.post_json("/v1/kill-all", &json!({})).await;
    let mut asked: Vec<i64> = resp["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|v| v.as_i64())
        .collect();
    asked.sort();
    assert_eq!(asked, vec![ids[0].0, ids[1].0]);
    for id in &ids {
        ts.wait_state(*id, JobState::Killed).await;
    }
    for pid in pids {
        wait_group_gone(pid).await;
    }
    let status: Status = ts.get_json("/v1/status").await;
    assert!(status.paused);

    // While paused nothing is claimed, and there is no diff to show yet.
    let late = ts
        .submit(&[("c.md", job_file("c", &repo, &["true"], ""))])
        .await[0];
    ts.wait_claims_found_nothing(1).await;
    assert_eq!(ts.job(late).await.state, JobState::Queued);
    let resp = ts.get(&ts.admin, &format!("/v1/jobs/{late}/diff")).await;
    assert_eq!(resp.status(), 404);
    let err: ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.error, "not_found");
    assert!(err.hint.is_some_and(|h| h.contains("not run yet")));

    // Resuming lets it run.
    let status: Status = ts.post_json("/v1/resume", &json!({})).await;
    assert!(!status.paused);
    ts.wait_state(late, JobState::Succeeded).await;
    let status: Status = ts.post_json("/v1/pause", &json!({})).await;
    assert!(status.paused);
    assert_eq!(status.jobs.get("killed"), Some(&2));
    ts.shutdown().await;
}

#[tokio::test]
async fn the_diff_endpoint_returns_the_patch_of_the_latest_run() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let edit = &["sh", "-c", "printf 'third line\\n' >> README.md"];
    let id = ts.submit(&[("e.md", job_file("e", &repo, edit, ""))]).await[0];
    ts.wait_state(id, JobState::Succeeded).await;
    let resp = ts.get(&ts.admin, &format!("/v1/jobs/{id}/diff")).await;
    assert_eq!(resp.status(), 200);
    let ctype = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let diff = resp.text().await.expect("text");
    assert!(diff.contains("README.md"), "{diff}");
    assert!(diff.contains("+third line"), "{diff}");
    ts.shutdown().await;
}

#[tokio::test]
async fn shutdown_kills_runs_and_a_restart_runs_them_again() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = config(data.path());
    let mut ts = TestServer::start(cfg.clone()).await;
    // The default lease (60 s) would keep the job away for a minute if the restart did
    // not expire the old leases itself.
    assert_eq!(cfg.lease_ttl, Duration::from_secs(60));
    let id = ts
        .submit(&[(
            "s.md",
            job_file("s", &repo, &["sleep", "1000"], "backoff: 1s\n"),
        )])
        .await[0];
    let pid = started_pid(&ts, id).await;
    ts.shutdown().await;
    wait_group_gone(pid).await;

    let mut ts = TestServer::start(cfg).await;
    let deadline = tokio::time::Instant::now() + crate::support::HANG_GUARD;
    let job = loop {
        let job = ts.job(id).await;
        if job.state == JobState::Running && job.attempt == 2 && job.runs.len() == 2 {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never re-run: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job.runs[0].outcome, Some(Outcome::Lost));
    ts.post_json::<Job>(&format!("/v1/jobs/{id}/kill"), &json!({}))
        .await;
    ts.wait_state(id, JobState::Killed).await;
    ts.shutdown().await;
}
