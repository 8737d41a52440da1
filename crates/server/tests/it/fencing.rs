//! The fencing protocol over HTTP: after a lease expired and the job was claimed again,
//! every write of the old holder gets 409 `stale_lease` and is recorded.

use crate::support::{TestServer, claim, config, job_file, register, repo};
use gantry_core::event::{LEASE_EXPIRED, STALE_WRITE_REJECTED};
use gantry_core::{Job, JobState, Outcome};
use gantry_protocol::{ErrorBody, Renewed, Scope};
use gantry_server::ServeConfig;
use serde_json::json;
use std::time::Duration;

async fn stale(resp: reqwest::Response) -> ErrorBody {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 409, "{text}");
    serde_json::from_str(&text).expect("error body")
}

#[tokio::test]
async fn writes_under_an_expired_and_reclaimed_lease_get_409_stale_lease() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = ServeConfig {
        embedded_factory: false,
        lease_ttl: Duration::from_secs(1),
        reaper_interval: Duration::from_millis(100),
        ..config(data.path())
    };
    let mut ts = TestServer::start(cfg).await;
    // A factory token acts only for the factory it registered (issue 4): one each.
    let token = ts.token("factory-a", Scope::Factory).await;
    let token_b = ts.token("factory-b", Scope::Factory).await;
    let a = register(&ts, &token, "a", 1).await;
    let b = register(&ts, &token_b, "b", 1).await;
    assert_ne!(a, b);
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], "backoff: 1s\n"))])
        .await[0];

    let ca = claim(&ts, &token, a).await;
    assert_eq!(ca.job.id, id);
    assert_eq!(ca.run.attempt, 1);
    assert_eq!(ca.run.lease_ttl_ms, 1000);

    // A stops renewing: the lease expires, the reaper returns the job as lost, and B's
    // long-poll claim gets it once its backoff has passed.
    let cb = claim(&ts, &token_b, b).await;
    assert_eq!(cb.job.id, id);
    assert_eq!(cb.run.attempt, 2);
    assert!(cb.run.epoch > ca.run.epoch);
    let events = ts.events(Some(id)).await;
    assert!(
        events.iter().any(|e| e.kind == LEASE_EXPIRED),
        "{events:#?}"
    );

    // Every write of A is refused and names the epochs.
    let run_a = ca.run.id;
    let err = stale(
        ts.post(
            &token,
            &format!("/v1/runs/{run_a}/renew"),
            &json!({ "epoch": ca.run.epoch }),
        )
        .await,
    )
    .await;
    assert_eq!(err.error, "stale_lease");
    assert_eq!(err.details["run"], run_a.0);
    assert_eq!(err.details["epoch"], ca.run.epoch);
    assert_eq!(err.details["current_epoch"], cb.run.epoch);
    let upload = json!({ "epoch": ca.run.epoch, "events": [
        { "kind": "run.output", "data": { "stream": "stdout", "text": "late\n" } }
    ]});
    let err = stale(
        ts.post(&token, &format!("/v1/runs/{run_a}/events"), &upload)
            .await,
    )
    .await;
    assert_eq!(err.error, "stale_lease");
    let finish = json!({ "epoch": ca.run.epoch, "outcome": "succeeded", "exit_code": 0 });
    let err = stale(
        ts.post(&token, &format!("/v1/runs/{run_a}/finish"), &finish)
            .await,
    )
    .await;
    assert_eq!(err.error, "stale_lease");

    let events = ts.events(Some(id)).await;
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| e.kind == STALE_WRITE_REJECTED)
        .collect();
    assert!(rejected.len() >= 3, "one per refused write: {events:#?}");
    assert!(
        rejected.iter().all(|e| e.data["epoch"] == ca.run.epoch),
        "{rejected:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.kind == "run.output" && e.data["text"] == "late\n"),
        "the stale upload was not applied: {events:#?}"
    );
    let job = ts.job(id).await;
    assert_eq!(job.state, JobState::Running, "A's finish changed nothing");
    assert_eq!(job.epoch, cb.run.epoch);

    // B, the current holder, renews, uploads and finishes fine.
    let run_b = cb.run.id;
    let resp = ts
        .post(
            &token_b,
            &format!("/v1/runs/{run_b}/renew"),
            &json!({ "epoch": cb.run.epoch }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let renewed: Renewed = resp.json().await.expect("renewed");
    assert!(renewed.stop.is_none());
    let upload = json!({ "epoch": cb.run.epoch, "events": [
        { "kind": "run.output", "data": { "stream": "stdout", "text": "on time\n" } }
    ]});
    let resp = ts
        .post(&token_b, &format!("/v1/runs/{run_b}/events"), &upload)
        .await;
    assert_eq!(resp.status(), 204);
    let finish = json!({ "epoch": cb.run.epoch, "outcome": "succeeded", "exit_code": 0 });
    let resp = ts
        .post(&token_b, &format!("/v1/runs/{run_b}/finish"), &finish)
        .await;
    assert_eq!(resp.status(), 200);
    let job: Job = resp.json().await.expect("job");
    assert_eq!(job.state, JobState::Succeeded);

    let job = ts.job(id).await;
    let outcomes: Vec<_> = job.runs.iter().map(|r| (r.id, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (run_a, Some(Outcome::Lost)),
            (run_b, Some(Outcome::Succeeded))
        ]
    );
    let events = ts.events(Some(id)).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "run.output" && e.data["text"] == "on time\n")
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn workers_cannot_upload_server_event_kinds() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let token = ts.token("f", Scope::Factory).await;
    let f = register(&ts, &token, "f", 1).await;
    ts.submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await;
    let c = claim(&ts, &token, f).await;
    for kind in ["delivery.pushed", "lease.expired", "bad kind\n"] {
        let upload = json!({ "epoch": c.run.epoch, "events": [{ "kind": kind, "data": {} }] });
        let resp = ts
            .post(&token, &format!("/v1/runs/{}/events", c.run.id), &upload)
            .await;
        assert_eq!(resp.status(), 400);
        let err: ErrorBody = resp.json().await.expect("error body");
        assert!(err.message.contains("events[0].kind"), "{}", err.message);
    }
    // A finish without an outcome names the field.
    let resp = ts
        .post(
            &token,
            &format!("/v1/runs/{}/finish", c.run.id),
            &json!({ "epoch": c.run.epoch }),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let err: ErrorBody = resp.json().await.expect("error body");
    assert!(err.message.contains("`outcome`"), "{}", err.message);
    ts.shutdown().await;
}

#[tokio::test]
async fn the_in_process_coordinator_is_fenced_the_same_way() {
    use gantry_factory::{CoordError, Coordinator};
    use gantry_protocol::{FinishReport, RegisterFactory};
    use gantry_server::LocalCoordinator;

    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = ServeConfig {
        embedded_factory: false,
        lease_ttl: Duration::from_secs(1),
        reaper_interval: Duration::from_millis(100),
        ..config(data.path())
    };
    let mut ts = TestServer::start(cfg).await;
    let coord = LocalCoordinator::new(ts.server.as_ref().expect("running").service().clone());
    let reg = |name: &str| RegisterFactory {
        name: name.to_string(),
        seats: 1,
        capabilities: vec![],
    };
    let a = coord.register(&reg("a")).await.expect("register a");
    let b = coord.register(&reg("b")).await.expect("register b");
    let bad = coord
        .register(&RegisterFactory {
            seats: 0,
            ..reg("c")
        })
        .await;
    assert!(
        matches!(&bad, Err(CoordError::Refused { kind, message }) if kind == "bad_request" && message.contains("seats")),
        "{bad:?}"
    );

    // Nothing queued: the long poll waits, then answers None.
    assert!(
        coord
            .claim(a, Duration::from_millis(300))
            .await
            .expect("claim")
            .is_none()
    );
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], "backoff: 1s\n"))])
        .await[0];
    let ca = coord
        .claim(a, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(ca.job.id, id);
    let cb = coord
        .claim(b, Duration::from_secs(60))
        .await
        .expect("claim")
        .expect("the job again");
    assert_eq!(cb.job.id, id);

    let renew = coord.renew(ca.run.id, ca.run.epoch).await;
    assert!(
        matches!(&renew, Err(CoordError::StaleLease { run, epoch, .. }) if *run == ca.run.id && *epoch == ca.run.epoch),
        "{renew:?}"
    );
    let report = FinishReport {
        epoch: ca.run.epoch,
        outcome: Some(Outcome::Succeeded),
        ..FinishReport::default()
    };
    assert!(matches!(
        coord.finish(ca.run.id, report).await,
        Err(CoordError::StaleLease { .. })
    ));

    let report = FinishReport {
        epoch: cb.run.epoch,
        outcome: Some(Outcome::Succeeded),
        ..FinishReport::default()
    };
    coord
        .finish(cb.run.id, report)
        .await
        .expect("current holder finishes");
    assert_eq!(ts.job(id).await.state, JobState::Succeeded);
    ts.shutdown().await;
}
