//! Remote factories (issue 4): a factory token acts only for the factory it registered
//! first, heartbeats carry the machine's figures, and `GET /v1/factories` shows each
//! factory's running jobs and health.

use crate::support::{TestServer, config, job_file, repo};
use gantry_core::api::{
    Claim, ErrorBody, FactoryStatus, Health, HeartbeatAck, Registered, Renewed, Scope,
};
use gantry_core::{FactoryId, JobState};
use gantry_server::ServeConfig;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

/// A server without the embedded factory, so only the test's factories claim.
fn remote_only(data: &std::path::Path) -> ServeConfig {
    ServeConfig {
        embedded_factory: false,
        ..config(data)
    }
}

async fn register(ts: &TestServer, token: &str, name: &str) -> FactoryId {
    let resp = ts
        .post(token, "/v1/factories", &json!({ "name": name, "seats": 2 }))
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    resp.json::<Registered>().await.expect("registered").id
}

async fn claim(ts: &TestServer, token: &str, factory: FactoryId) -> Claim {
    let resp = ts
        .post(
            token,
            &format!("/v1/factories/{factory}/claim"),
            &json!({ "wait_s": 30 }),
        )
        .await;
    assert_eq!(resp.status(), 200, "a job is claimable within the wait");
    resp.json().await.expect("claim")
}

async fn forbidden(resp: reqwest::Response) -> ErrorBody {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 403, "{text}");
    let body: ErrorBody = serde_json::from_str(&text).expect("error body");
    assert_eq!(body.error, "forbidden", "{body:?}");
    assert!(body.hint.is_some(), "a refusal says what to do: {body:?}");
    body
}

async fn factories(ts: &TestServer) -> Vec<FactoryStatus> {
    ts.get_json("/v1/factories").await
}

#[tokio::test]
async fn issue4_a_factory_token_registering_a_second_name_is_forbidden() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let tb = ts.token("token-b", Scope::Factory).await;

    let a = register(&ts, &ta, "host-a").await;
    assert_eq!(
        register(&ts, &ta, "host-a").await,
        a,
        "registering again (a restart) keeps the id"
    );

    let reg_b = json!({ "name": "host-b", "seats": 1 });
    let err = forbidden(ts.post(&ta, "/v1/factories", &reg_b).await).await;
    assert!(
        err.message.contains("\"host-a\"") && err.message.contains("\"host-b\""),
        "names both factories: {err:?}"
    );
    assert_eq!(
        (&err.details["factory"], &err.details["asked"]),
        (&json!("host-a"), &json!("host-b"))
    );

    // Another token cannot take host-a over while token-a is live.
    let reg_a = json!({ "name": "host-a", "seats": 1 });
    let err = forbidden(ts.post(&tb, "/v1/factories", &reg_a).await).await;
    assert!(
        err.message.contains("token-a") && err.message.contains("token-b"),
        "{err:?}"
    );
    // The embedded factory's name is the server's.
    let reg_embedded = json!({ "name": gantry_server::EMBEDDED_FACTORY_NAME, "seats": 1 });
    forbidden(ts.post(&tb, "/v1/factories", &reg_embedded).await).await;

    let list = factories(&ts).await;
    assert_eq!(
        list.iter()
            .map(|f| (f.name.as_str(), f.seats))
            .collect::<Vec<_>>(),
        vec![("host-a", 2)],
        "no refused registration changed or added a factory"
    );

    // token-b registers a name of its own; admin tokens register any factory.
    let b = register(&ts, &tb, "host-b").await;
    assert_ne!(a, b);
    assert_eq!(register(&ts, &ts.admin, "host-a").await, a);
    register(&ts, &ts.admin, "host-c").await;
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_factory_token_cannot_claim_or_heartbeat_for_another_factory() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let tb = ts.token("token-b", Scope::Factory).await;
    let unbound = ts.token("token-new", Scope::Factory).await;
    let a = register(&ts, &ta, "host-a").await;
    let b = register(&ts, &tb, "host-b").await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];

    let wait0 = json!({ "wait_s": 0 });
    let err = forbidden(
        ts.post(&ta, &format!("/v1/factories/{b}/claim"), &wait0)
            .await,
    )
    .await;
    assert!(
        err.message.contains("host-a") && err.message.contains("host-b"),
        "{err:?}"
    );
    forbidden(
        ts.post(&unbound, &format!("/v1/factories/{b}/claim"), &wait0)
            .await,
    )
    .await;
    let hb = json!({ "load_1m": 0.5, "free_memory_mb": 100, "free_disk_mb": 200 });
    forbidden(
        ts.post(&ta, &format!("/v1/factories/{b}/heartbeat"), &hb)
            .await,
    )
    .await;
    let job = ts.job(id).await;
    assert_eq!(
        job.state,
        JobState::Queued,
        "the refused claim took nothing"
    );
    let listed = factories(&ts).await;
    assert!(
        listed.iter().all(|f| f.stats.load_1m.is_none()),
        "the refused heartbeat recorded nothing: {listed:?}"
    );

    // Each token works for its own factory.
    let resp = ts
        .post(&ta, &format!("/v1/factories/{a}/heartbeat"), &hb)
        .await;
    assert_eq!(resp.status(), 200);
    let c = claim(&ts, &tb, b).await;
    assert_eq!(c.job.id, id);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_run_refuses_writes_from_another_factorys_token() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let tb = ts.token("token-b", Scope::Factory).await;
    let a = register(&ts, &ta, "host-a").await;
    register(&ts, &tb, "host-b").await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let c = claim(&ts, &ta, a).await;
    let (run, epoch) = (c.run.id, c.run.epoch);

    let err = forbidden(
        ts.post(
            &tb,
            &format!("/v1/runs/{run}/renew"),
            &json!({ "epoch": epoch }),
        )
        .await,
    )
    .await;
    assert!(
        err.message.contains("host-a") && err.message.contains("host-b"),
        "{err:?}"
    );
    let upload = json!({ "epoch": epoch, "events": [
        { "kind": "run.output", "data": { "stream": "stdout", "text": "forged\n" } }
    ]});
    forbidden(
        ts.post(&tb, &format!("/v1/runs/{run}/events"), &upload)
            .await,
    )
    .await;
    let finish = json!({ "epoch": epoch, "outcome": "succeeded", "exit_code": 0 });
    forbidden(
        ts.post(&tb, &format!("/v1/runs/{run}/finish"), &finish)
            .await,
    )
    .await;

    // Nothing was applied: the job runs on under A's lease, with no forged output.
    let job = ts.job(id).await;
    assert_eq!((job.state, job.epoch), (JobState::Running, epoch));
    assert_eq!(job.runs.len(), 1);
    assert_eq!(job.runs[0].factory_id, Some(a));
    assert_eq!(job.runs[0].outcome, None);
    let events = ts.events(Some(id)).await;
    assert!(
        !events.iter().any(|e| e.data["text"] == "forged\n"),
        "{events:#?}"
    );

    // A's own token (and an admin's) still write to it.
    let resp = ts
        .post(
            &ta,
            &format!("/v1/runs/{run}/renew"),
            &json!({ "epoch": epoch }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let renewed: Renewed = resp.json().await.expect("renewed");
    assert_eq!(renewed.stop, None);
    let resp = ts
        .post(
            &ts.admin,
            &format!("/v1/runs/{run}/renew"),
            &json!({ "epoch": epoch }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let resp = ts
        .post(&ta, &format!("/v1/runs/{run}/finish"), &finish)
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(ts.job(id).await.state, JobState::Succeeded);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_factories_list_figures_running_jobs_and_health() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    // A factory is down after half the lease TTL without a word: 1.5 s here.
    let mut ts = TestServer::start(ServeConfig {
        lease_ttl: Duration::from_secs(3),
        ..remote_only(data.path())
    })
    .await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let a = register(&ts, &ta, "host-a").await;
    let hb = json!({ "load_1m": 1.5, "free_memory_mb": 2048, "free_disk_mb": 10240 });
    let resp = ts
        .post(&ta, &format!("/v1/factories/{a}/heartbeat"), &hb)
        .await;
    assert_eq!(resp.status(), 200);
    let ack: HeartbeatAck = resp.json().await.expect("ack");
    assert_eq!(
        ack,
        HeartbeatAck {
            interval_ms: 500,
            down_after_ms: 1500
        }
    );

    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let c = claim(&ts, &ta, a).await;
    assert_eq!(c.job.id, id);
    let raw: Vec<Value> = ts.get_json("/v1/factories").await;
    assert_eq!(raw.len(), 1);
    let f = &raw[0];
    assert_eq!(
        (
            &f["name"],
            &f["seats"],
            &f["running"],
            &f["load_1m"],
            &f["free_memory_mb"],
            &f["free_disk_mb"],
            &f["health"]
        ),
        (
            &json!("host-a"),
            &json!(2),
            &json!(1),
            &json!(1.5),
            &json!(2048),
            &json!(10240),
            &json!("up")
        ),
        "{f:#}"
    );
    assert!(f["last_seen"].is_string(), "{f:#}");

    // Silent past the threshold: down (the figures stay what they were).
    let deadline = Instant::now() + Duration::from_secs(20);
    let down = loop {
        let list = factories(&ts).await;
        if list[0].health == Health::Down {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "never marked down: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(down.last_seen_ago_ms > 1500, "{down:?}");
    assert_eq!(down.stats.free_disk_mb, Some(10240));

    // A heartbeat brings it back up.
    let resp = ts
        .post(&ta, &format!("/v1/factories/{a}/heartbeat"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    let up = factories(&ts).await.remove(0);
    assert_eq!(up.health, Health::Up, "{up:?}");
    assert_eq!(up.stats.load_1m, None, "the new heartbeat measured nothing");

    // A heartbeat of an unknown factory is 404 (it registers again); a bad figure 400.
    let resp = ts
        .post(&ts.admin, "/v1/factories/99/heartbeat", &json!({}))
        .await;
    assert_eq!(resp.status(), 404);
    let resp = ts
        .post(
            &ta,
            &format!("/v1/factories/{a}/heartbeat"),
            &json!({ "load_1m": -1.0 }),
        )
        .await;
    assert_eq!(resp.status(), 400);
    ts.shutdown().await;
}
