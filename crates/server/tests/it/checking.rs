//! The checking stage over HTTP (issue 11): a factory's event uploads move its job to
//! `checking` and back, the job shows its gates, the status and `/metrics` count the
//! state, and a `gates_failed` finish fails the job with the factory's reason.

use crate::support::{TestServer, claim, config, job_file, register, repo};
use gantry_core::api::Status;
use gantry_core::{JobState, Outcome};
use gantry_protocol::Scope;
use gantry_server::ServeConfig;
use serde_json::{Value, json};

/// Posts `body` to `path` as `token`, expecting the status `want`.
async fn post(ts: &TestServer, token: &str, path: &str, body: Value, want: u16) {
    let resp = ts.post(token, path, &body).await;
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, want, "POST {path}: {text}");
}

/// Posts `events` as the run `run` under `epoch`, expecting `want` back.
async fn upload(ts: &TestServer, token: &str, run: i64, epoch: i64, events: Value, want: u16) {
    let body = json!({ "epoch": epoch, "events": events });
    post(ts, token, &format!("/v1/runs/{run}/events"), body, want).await;
}

/// The value of one series of `GET /metrics`.
async fn metric(ts: &TestServer, series: &str) -> String {
    let text = ts
        .get(&ts.admin, "/metrics")
        .await
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test]
async fn a_factory_checks_its_result_and_the_job_shows_it() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    };
    let ts = TestServer::start(cfg).await;
    let token = ts.token("factory-a", Scope::Factory).await;
    let f = register(&ts, &token, "a", 1).await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let c = claim(&ts, &token, f).await;
    let (run, epoch) = (c.run.id.0, c.run.epoch);
    let gate = json!({ "name": "test", "passed": false, "exit_code": 1, "duration_ms": 40,
                       "tree": "abc", "reason": "exit 1", "output": "/o/test.log",
                       "round": 0 });
    let events = json!([
        { "kind": "run.checking", "data": { "round": 0 } },
        { "kind": "gate.started", "data": { "name": "test", "round": 0 } },
        { "kind": "gate.failed", "data": gate },
    ]);
    upload(&ts, &token, run, epoch, events, 204).await;
    let job = ts.job(id).await;
    assert_eq!(job.state, JobState::Checking);
    assert_eq!(job.runs[0].gates.len(), 1);
    assert_eq!(job.runs[0].gates[0].reason.as_deref(), Some("exit 1"));
    let status: Status = ts.get_json("/v1/status").await;
    assert_eq!(status.jobs["checking"], 1);
    assert_eq!(metric(&ts, "gantry_jobs{state=\"checking\"}").await, "1");
    assert_eq!(metric(&ts, "gantry_runs_active").await, "1");
    let listed: Value = ts.get_json("/v1/jobs?state=checking").await;
    assert!(
        listed.to_string().contains(&format!("\"id\":{id}")),
        "{listed}"
    );
    // Data that does not fit its kind is refused whole.
    let bad = json!([{ "kind": "run.fix_round", "data": { "round": 1 } }]);
    upload(&ts, &token, run, epoch, bad, 400).await;
    assert_eq!(ts.job(id).await.state, JobState::Checking);

    let finish = json!({ "epoch": epoch, "outcome": "gates_failed", "exit_code": 0,
                         "error": "gates_failed: test" });
    post(&ts, &token, &format!("/v1/runs/{run}/finish"), finish, 200).await;
    let job = ts.job(id).await;
    assert_eq!(job.state, JobState::Failed, "not retried by default");
    assert_eq!(job.runs[0].outcome, Some(Outcome::GatesFailed));
    assert_eq!(job.runs[0].error.as_deref(), Some("gates_failed: test"));
    assert_eq!(
        metric(&ts, "gantry_runs_finished_total{outcome=\"gates_failed\"}").await,
        "1"
    );
}
