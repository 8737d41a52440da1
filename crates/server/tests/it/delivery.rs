//! Issue 4, delivery of runs done by remote factories: a factory with a data dir of its
//! own publishes a succeeded run's commit at `refs/gantry/results/<run>` in the source,
//! and the server (which has none of the factory's objects) fetches it from there,
//! checks it, pushes `gantry/<job>` and removes the result ref. Diffs travel in the
//! finish report and are served from the store. Factories are driven by hand over HTTP
//! here, with real git repos, so every refusal can be checked exactly.

use crate::support::{TestServer, claim, config, git, has_ref, job_file, publish, register, repo};
use gantry_core::event::{DELIVERY_FAILED, DELIVERY_PUSHED};
use gantry_core::{FactoryId, JobId, JobState};
use gantry_protocol::{Claim, ErrorBody, MAX_REPORTED_DIFF_BYTES, Scope, result_ref};
use gantry_server::ServeConfig;
use gantry_store::testing::PgDb;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A factory token, its factory, and one submitted job for `repo`, on a server without
/// an embedded factory.
async fn one_job(ts: &TestServer, repo: &Path, name: &str) -> (String, FactoryId, JobId) {
    let token = ts.token(name, Scope::Factory).await;
    let factory = register(ts, &token, name, 1).await;
    let id = ts
        .submit(&[("j.md", job_file("j", repo, &["true"], "backoff: 1s\n"))])
        .await[0];
    (token, factory, id)
}

/// The refs of `repo` under `prefix`, one per line.
fn refs_under(repo: &Path, prefix: &str) -> String {
    git(repo, &["for-each-ref", "--format=%(refname)", prefix])
}

/// A finish report of a succeeded run.
fn succeeded(c: &Claim, commit: &str, published: Option<&str>, diff: &str) -> Value {
    json!({
        "epoch": c.run.epoch,
        "outcome": "succeeded",
        "exit_code": 0,
        "commit": commit,
        "result_ref": published,
        "diff": diff,
    })
}

fn server_config(data: &Path) -> ServeConfig {
    ServeConfig {
        embedded_factory: false,
        ..config(data)
    }
}

#[tokio::test]
async fn issue4_a_claim_says_whether_the_server_delivers() {
    let (_tmp, repo) = repo();
    for push in [true, false] {
        let data = tempfile::tempdir().expect("tempdir");
        let mut ts = TestServer::start(ServeConfig {
            push,
            ..server_config(data.path())
        })
        .await;
        let (token, factory, id) = one_job(&ts, &repo, "remote").await;
        let c = claim(&ts, &token, factory).await;
        assert_eq!(c.job.id, id);
        assert_eq!(c.deliver, push, "push {push}: {c:?}");
        ts.shutdown().await;
    }
}

#[tokio::test]
async fn issue4_a_published_result_is_delivered_its_ref_removed_and_its_diff_served() {
    let (tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(server_config(data.path())).await;
    let (token, factory, id) = one_job(&ts, &repo, "remote").await;
    let c = claim(&ts, &token, factory).await;
    assert!(c.deliver);
    let commit = publish(
        &repo,
        &tmp.path().join("factory"),
        c.run.id,
        "new.txt",
        "hi\n",
    );
    let published = result_ref(c.run.id);
    let diff = "diff --git a/new.txt b/new.txt\n+hi\n";
    let resp = ts
        .post(
            &token,
            &format!("/v1/runs/{}/finish", c.run.id),
            &succeeded(&c, &commit, Some(&published), diff),
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );

    // The finish answer means the delivery is done.
    assert_eq!(git(&repo, &["rev-parse", &format!("gantry/{id}")]), commit);
    assert_eq!(git(&repo, &["show", &format!("gantry/{id}:new.txt")]), "hi");
    assert_eq!(
        refs_under(&repo, "refs/gantry"),
        "",
        "the result ref is gone"
    );
    let events = ts.events(Some(id)).await;
    let pushed = events
        .iter()
        .find(|e| e.kind == DELIVERY_PUSHED)
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(pushed.data["commit"], commit.as_str());
    assert_eq!(pushed.data["result_ref"], published.as_str());

    // The diff comes from the store: this server's data dir holds no artifacts.
    assert!(!data.path().join("artifacts").exists());
    let resp = ts.get(&ts.admin, &format!("/v1/jobs/{id}/diff")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), diff);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_stale_finish_never_promotes_its_result_ref() {
    let (tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        lease_ttl: Duration::from_secs(1),
        reaper_interval: Duration::from_millis(100),
        ..server_config(data.path())
    })
    .await;
    let (token_a, a, id) = one_job(&ts, &repo, "factory-a").await;
    let token_b = ts.token("factory-b", Scope::Factory).await;
    let b = register(&ts, &token_b, "factory-b", 1).await;

    // A claims, stops renewing, and publishes late: B holds the job by then.
    let ca = claim(&ts, &token_a, a).await;
    let cb = claim(&ts, &token_b, b).await;
    assert_eq!((ca.job.id, cb.job.id), (id, id));
    let stale_commit = publish(&repo, &tmp.path().join("a"), ca.run.id, "x.txt", "stale\n");
    let stale_ref = result_ref(ca.run.id);
    let resp = ts
        .post(
            &token_a,
            &format!("/v1/runs/{}/finish", ca.run.id),
            &succeeded(&ca, &stale_commit, Some(&stale_ref), "stale diff\n"),
        )
        .await;
    assert_eq!(
        resp.status(),
        409,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id}")));

    // B may not name A's result as its own.
    let resp = ts
        .post(
            &token_b,
            &format!("/v1/runs/{}/finish", cb.run.id),
            &succeeded(&cb, &stale_commit, Some(&stale_ref), ""),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let err: ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.details["field"], "result_ref", "{err:?}");
    assert!(err.message.contains(&stale_ref), "{err:?}");
    assert_eq!(ts.job(id).await.state, JobState::Running, "nothing applied");

    // B's own result is delivered; A's is never promoted (its ref, a reaped run's
    // leftover, is removed in the background: see result_refs.rs).
    let commit = publish(
        &repo,
        &tmp.path().join("b"),
        cb.run.id,
        "x.txt",
        "current\n",
    );
    let resp = ts
        .post(
            &token_b,
            &format!("/v1/runs/{}/finish", cb.run.id),
            &succeeded(&cb, &commit, Some(&result_ref(cb.run.id)), "current diff\n"),
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(git(&repo, &["rev-parse", &format!("gantry/{id}")]), commit);
    assert_ne!(
        git(&repo, &["rev-parse", &format!("gantry/{id}")]),
        stale_commit
    );
    let pushed: Vec<_> = ts
        .events(Some(id))
        .await
        .into_iter()
        .filter(|e| e.kind == DELIVERY_PUSHED)
        .collect();
    assert_eq!(pushed.len(), 1, "{pushed:#?}");
    assert_eq!(pushed[0].run_id, Some(cb.run.id));
    let resp = ts.get(&ts.admin, &format!("/v1/jobs/{id}/diff")).await;
    assert_eq!(resp.text().await.expect("body"), "current diff\n");
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_result_ref_holding_another_commit_is_not_delivered() {
    let (tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(server_config(data.path())).await;
    let (token, factory, id) = one_job(&ts, &repo, "remote").await;
    let c = claim(&ts, &token, factory).await;
    let dir = tmp.path().join("factory");
    let published_commit = publish(&repo, &dir, c.run.id, "a.txt", "a\n");
    // A second commit the factory never published: the server cannot get it.
    std::fs::write(dir.join("b.txt"), "b\n").expect("write");
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "--quiet", "-m", "unpublished"]);
    let other = git(&dir, &["rev-parse", "HEAD"]);
    let published = result_ref(c.run.id);
    let resp = ts
        .post(
            &token,
            &format!("/v1/runs/{}/finish", c.run.id),
            &succeeded(&c, &other, Some(&published), ""),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(ts.job(id).await.state, JobState::Succeeded);
    let events = ts.events(Some(id)).await;
    let failed = events
        .iter()
        .find(|e| e.kind == DELIVERY_FAILED)
        .unwrap_or_else(|| panic!("{events:#?}"));
    let error = failed.data["error"].as_str().expect("error");
    assert!(
        error.contains(&other) && error.contains(&published_commit),
        "{error}"
    );
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id}")));
    // The ref holds the only copy of the factory's work outside the factory: kept.
    assert_eq!(git(&repo, &["rev-parse", &published]), published_commit);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_the_finish_route_takes_a_4_mib_diff_and_refuses_a_bigger_one_naming_it() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        push: false,
        ..server_config(data.path())
    })
    .await;
    let (token, factory, id) = one_job(&ts, &repo, "remote").await;
    let c = claim(&ts, &token, factory).await;
    let finish = format!("/v1/runs/{}/finish", c.run.id);
    let report = |diff: &str| json!({ "epoch": c.run.epoch, "outcome": "succeeded", "diff": diff });

    let over = "+".repeat(MAX_REPORTED_DIFF_BYTES + 1);
    let resp = ts.post(&token, &finish, &report(&over)).await;
    assert_eq!(resp.status(), 400);
    let err: ErrorBody = resp.json().await.expect("error body");
    assert_eq!(err.details["field"], "diff", "{err:?}");
    assert!(
        err.message.contains("`diff`")
            && err
                .message
                .contains(&(MAX_REPORTED_DIFF_BYTES + 1).to_string()),
        "{err:?}"
    );
    assert_eq!(ts.job(id).await.state, JobState::Running, "nothing applied");

    // Exactly at the limit, and made of characters JSON escapes six bytes long, so the
    // body (about 24 MiB) is over the limit of every other route.
    let at_limit = format!("+{}\n", "\u{1}".repeat(MAX_REPORTED_DIFF_BYTES - 2));
    assert_eq!(at_limit.len(), MAX_REPORTED_DIFF_BYTES);
    let resp = ts.post(&token, &finish, &report(&at_limit)).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let resp = ts.get(&ts.admin, &format!("/v1/jobs/{id}/diff")).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text().await.expect("body") == at_limit,
        "the diff is kept whole"
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_reported_diff_is_served_by_every_replica() {
    let (_tmp, repo) = repo();
    let db = PgDb::create().await;
    let (da, db_dir) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let replica = |dir: &Path| ServeConfig {
        db: Some(db.url.clone()),
        push: false,
        ..server_config(dir)
    };
    let mut a = TestServer::start(replica(da.path())).await;
    let mut b = TestServer::start(replica(db_dir.path())).await;
    let (token, factory, id) = one_job(&a, &repo, "remote").await;
    let c = claim(&a, &token, factory).await;
    let diff = "diff --git a/r.txt b/r.txt\n+replicated\n";
    let resp = a
        .post(
            &token,
            &format!("/v1/runs/{}/finish", c.run.id),
            &json!({ "epoch": c.run.epoch, "outcome": "succeeded", "diff": diff }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let dirs: [PathBuf; 2] = [da.path().join("artifacts"), db_dir.path().join("artifacts")];
    assert!(dirs.iter().all(|d| !d.exists()), "no replica has artifacts");
    for ts in [&a, &b] {
        let resp = ts.get(&ts.admin, &format!("/v1/jobs/{id}/diff")).await;
        assert_eq!(resp.status(), 200, "{}", ts.base);
        assert_eq!(resp.text().await.expect("body"), diff);
    }
    a.shutdown().await;
    b.shutdown().await;
}
