//! Issue 4, leftover result refs: a remote factory publishes a succeeded run's commit at
//! `refs/gantry/results/<run>` in the source before it finishes. When that finish is
//! refused as stale, or never comes because the factory died and its run was reaped,
//! the server removes the ref, and no other: a run still running keeps its own.
//! Factories are driven by hand over HTTP, with real git repos.

use crate::support::{
    HANG_GUARD, TestServer, claim, config, git, has_ref, job_file, publish, register, repo,
};
use gantry_core::{FactoryId, JobState, Outcome};
use gantry_protocol::{Claim, ErrorBody, Scope, result_ref};
use gantry_server::ServeConfig;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Waits until the source has no ref `refname` (bounded by the hang guard).
async fn wait_ref_gone(repo: &Path, refname: &str) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while has_ref(repo, refname) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{refname} is still in the source: {}",
            git(repo, &["for-each-ref", "refs/gantry"])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A factory token and its registered factory.
async fn factory(ts: &TestServer, name: &str) -> (String, FactoryId) {
    let token = ts.token(name, Scope::Factory).await;
    let id = register(ts, &token, name, 1).await;
    (token, id)
}

/// Renewals of one lease, as a live factory sends them, until [`Renewing::stop`].
struct Renewing {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u32>,
}

impl Renewing {
    /// Ends the renewals after the one in flight and returns how many were accepted.
    /// A refused renewal panics the task, and awaiting it here makes that panic fail the
    /// test; aborting the task instead would drop the panic unseen.
    async fn stop(self) -> u32 {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("every renewal of a live run is accepted")
    }
}

/// Keeps the lease of `c` renewed, as a live factory does, until stopped. The first
/// renewal is always sent, so a stopped loop has checked at least one answer.
fn keep_renewing(ts: &TestServer, token: &str, c: &Claim) -> Renewing {
    let (http, url) = (
        ts.http.clone(),
        ts.url(&format!("/v1/runs/{}/renew", c.run.id)),
    );
    let (token, body) = (token.to_string(), json!({ "epoch": c.run.epoch }));
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut accepted = 0;
        loop {
            let resp = http.post(&url).bearer_auth(&token).json(&body).send().await;
            let status = resp.map(|r| r.status().as_u16()).unwrap_or(0);
            assert_eq!(status, 200, "the renewal of a live run is accepted");
            accepted += 1;
            // The interval of a factory's renewals, not a wait for something to happen.
            tokio::select! {
                _ = &mut stopped => return accepted,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    });
    Renewing { stop, task }
}

/// A finish report of a succeeded run naming its result ref.
fn succeeded(c: &Claim, commit: &str) -> serde_json::Value {
    json!({
        "epoch": c.run.epoch,
        "outcome": "succeeded",
        "exit_code": 0,
        "commit": commit,
        "result_ref": result_ref(c.run.id),
    })
}

#[tokio::test]
async fn issue4_a_stale_finish_removes_its_published_result_ref() {
    let (tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    // The reaper's first tick comes at start, and no other for an hour: the run is
    // reaped by hand below, so only the refused finish can remove its ref.
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        lease_ttl: Duration::from_secs(1),
        reaper_interval: Duration::from_secs(3600),
        ..config(data.path())
    })
    .await;
    let (token_a, a) = factory(&ts, "factory-a").await;
    let (token_b, b) = factory(&ts, "factory-b").await;
    let id_a = ts
        .submit(&[("a.md", job_file("a", &repo, &["true"], "max_attempts: 1\n"))])
        .await[0];
    let ca = claim(&ts, &token_a, a).await;
    assert_eq!(ca.job.id, id_a);

    // A stops renewing; its lease expires and the run is returned as lost.
    let store = ts
        .server
        .as_ref()
        .expect("server running")
        .service()
        .store()
        .clone();
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !store.reap().await.expect("reap").contains(&ca.run.id) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "run A is never reaped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ts.job(id_a).await.state, JobState::Failed);

    // B runs another job of the same source and publishes its result too.
    let id_b = ts
        .submit(&[("b.md", job_file("b", &repo, &["true"], ""))])
        .await[0];
    let cb = claim(&ts, &token_b, b).await;
    assert_eq!(cb.job.id, id_b);
    let commit_b = publish(&repo, &tmp.path().join("b"), cb.run.id, "b.txt", "b\n");

    // A comes back, publishes late and finishes: refused, and its ref removed.
    let commit_a = publish(&repo, &tmp.path().join("a"), ca.run.id, "a.txt", "a\n");
    let resp = ts
        .post(
            &token_a,
            &format!("/v1/runs/{}/finish", ca.run.id),
            &succeeded(&ca, &commit_a),
        )
        .await;
    assert_eq!(resp.status(), 409);
    let err: ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.error, "stale_lease", "{err:?}");
    assert_eq!(err.details["run"], ca.run.id.0, "{err:?}");
    wait_ref_gone(&repo, &result_ref(ca.run.id)).await;
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id_a}")));

    // B's ref, of a run still running, is untouched and delivered at B's finish.
    assert_eq!(git(&repo, &["rev-parse", &result_ref(cb.run.id)]), commit_b);
    assert_eq!(ts.job(id_b).await.state, JobState::Running);
    let resp = ts
        .post(
            &token_b,
            &format!("/v1/runs/{}/finish", cb.run.id),
            &succeeded(&cb, &commit_b),
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(
        git(&repo, &["rev-parse", &format!("gantry/{id_b}")]),
        commit_b
    );
    assert_eq!(git(&repo, &["for-each-ref", "refs/gantry"]), "");
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_reaped_run_has_its_published_result_ref_removed() {
    let (tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        lease_ttl: Duration::from_secs(2),
        reaper_interval: Duration::from_millis(100),
        ..config(data.path())
    })
    .await;
    let (token_a, a) = factory(&ts, "factory-a").await;
    let (token_b, b) = factory(&ts, "factory-b").await;
    let id_a = ts
        .submit(&[("a.md", job_file("a", &repo, &["true"], "max_attempts: 1\n"))])
        .await[0];
    let ca = claim(&ts, &token_a, a).await;
    assert_eq!(ca.job.id, id_a);
    let id_b = ts
        .submit(&[("b.md", job_file("b", &repo, &["true"], ""))])
        .await[0];
    let cb = claim(&ts, &token_b, b).await;
    assert_eq!(cb.job.id, id_b);
    let renewing_b = keep_renewing(&ts, &token_b, &cb);

    // A publishes its result while its lease is held, then dies before it finishes.
    let renewing_a = keep_renewing(&ts, &token_a, &ca);
    publish(&repo, &tmp.path().join("a"), ca.run.id, "a.txt", "a\n");
    assert!(renewing_a.stop().await >= 1, "A's lease was renewed");
    let commit_b = publish(&repo, &tmp.path().join("b"), cb.run.id, "b.txt", "b\n");

    // The reaper returns A's run as lost and its ref is removed.
    wait_ref_gone(&repo, &result_ref(ca.run.id)).await;
    let job_a = ts.job(id_a).await;
    assert_eq!(job_a.state, JobState::Failed, "{job_a:#?}");
    assert_eq!(job_a.runs[0].outcome, Some(Outcome::Lost), "{job_a:#?}");
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id_a}")));

    // B's ref, of a run still running, is left alone.
    assert_eq!(git(&repo, &["rev-parse", &result_ref(cb.run.id)]), commit_b);
    assert_eq!(ts.job(id_b).await.state, JobState::Running);
    assert!(renewing_b.stop().await >= 1, "B's lease was renewed");
    ts.shutdown().await;
}
