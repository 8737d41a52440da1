//! `GET /metrics`: the Prometheus exposition after real runs, lease expiries and stale
//! writes, checked value by value and as a whole with `promtool check metrics`.

use crate::support::{TestServer, claim, config, job_file, register, repo};
use gantry_core::engine::Insights;
use gantry_core::{JobState, Outcome};
use gantry_protocol::Scope;
use gantry_server::ServeConfig;
use gantry_server::metrics::CONTENT_TYPE_TEXT;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Samples of an exposition by series (`name{labels}` exactly as written), checking
/// on the way that every sample belongs to a family announced by `# TYPE`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut families: Vec<String> = Vec::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().expect("TYPE names a family");
            families.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let name = series.split('{').next().expect("series has a name");
        assert!(
            families.iter().any(|f| name == f
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))),
            "sample {line:?} has no # TYPE line before it"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("sample {line:?}: bad value: {e}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "series {series} appears twice"
        );
    }
    out
}

/// The value of `series`, failing with the whole exposition when it is missing.
fn value(all: &BTreeMap<String, f64>, series: &str) -> f64 {
    *all.get(series)
        .unwrap_or_else(|| panic!("no series {series} in: {all:#?}"))
}

/// Runs `promtool check metrics` over `text`: the format and Prometheus' naming lints.
fn promtool_check(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so the /metrics output cannot be checked: run \
             ./scripts/test, which installs it (Debian package `prometheus`), or \
             `apt-get install prometheus` yourself"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write the exposition to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scrapes `/metrics` with `token`, checks the status and content type, and returns
/// the text.
async fn scrape(ts: &TestServer, token: &str) -> String {
    let resp = ts.get(token, "/metrics").await;
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    assert_eq!(ctype, CONTENT_TYPE_TEXT);
    text
}

#[tokio::test]
async fn issue4_metrics_after_real_runs_count_states_outcomes_claims_and_queue_depth() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(config(data.path())).await;
    let reader = ts.token("prometheus", Scope::Reader).await;
    let ids = ts
        .submit(&[
            ("ok.md", job_file("ok", &repo, &["sh", "-c", "exit 0"], "")),
            (
                "bad.md",
                job_file("bad", &repo, &["sh", "-c", "exit 3"], "max_attempts: 1\n"),
            ),
            // The embedded factory has no capabilities: this one stays queued.
            (
                "gpu.md",
                job_file(
                    "gpu",
                    &repo,
                    &["true"],
                    "capabilities: [gpu, docker]\nidempotency_key: gpu\n",
                ),
            ),
            (
                "after.md",
                job_file("after", &repo, &["true"], "deps: [gpu]\n"),
            ),
        ])
        .await;
    ts.wait_state(ids[0], JobState::Succeeded).await;
    ts.wait_state(ids[1], JobState::Failed).await;
    assert_eq!(ts.job(ids[2]).await.state, JobState::Queued);
    assert_eq!(ts.job(ids[3]).await.state, JobState::Blocked);

    let text = scrape(&ts, &reader).await;
    let all = samples(&text);
    for (state, n) in [
        ("blocked", 1.0),
        ("queued", 1.0),
        ("running", 0.0),
        ("checking", 0.0),
        ("succeeded", 1.0),
        ("failed", 1.0),
        ("canceled", 0.0),
        ("killed", 0.0),
    ] {
        assert_eq!(
            value(&all, &format!("gantry_jobs{{state=\"{state}\"}}")),
            n,
            "{state}"
        );
    }
    assert_eq!(
        value(&all, "gantry_queue_depth{capabilities=\"docker,gpu\"}"),
        1.0
    );
    assert_eq!(value(&all, "gantry_queue_depth{capabilities=\"\"}"), 0.0);
    assert_eq!(value(&all, "gantry_runs_active"), 0.0);
    assert_eq!(value(&all, "gantry_queue_paused"), 0.0);
    assert_eq!(
        value(&all, "gantry_runs_finished_total{outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        value(&all, "gantry_runs_finished_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        value(&all, "gantry_runs_finished_total{outcome=\"lost\"}"),
        0.0
    );
    assert_eq!(value(&all, "gantry_lease_expiries_total"), 0.0);
    for op in ["renew", "events", "finish"] {
        assert_eq!(
            value(
                &all,
                &format!("gantry_stale_writes_total{{operation=\"{op}\"}}")
            ),
            0.0,
            "{op}"
        );
    }
    // Two jobs were claimed, each by one store claim call.
    assert_eq!(
        value(
            &all,
            "gantry_claim_duration_seconds_count{result=\"claimed\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &all,
            "gantry_claim_duration_seconds_bucket{result=\"claimed\",le=\"+Inf\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &all,
            "gantry_claim_duration_seconds_count{result=\"error\"}"
        ),
        0.0
    );
    // The command engine reports no insights: no token series yet.
    assert!(
        !text.contains("gantry_agent_tokens_total{"),
        "no agent reported tokens: {text}"
    );
    promtool_check(&text);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_metrics_count_lease_expiries_stale_writes_and_agent_spend() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let cfg = ServeConfig {
        embedded_factory: false,
        lease_ttl: Duration::from_secs(2),
        reaper_interval: Duration::from_millis(100),
        ..config(data.path())
    };
    let mut ts = TestServer::start(cfg).await;
    // A factory token acts only for the factory it registered (issue 4): one each.
    let token = ts.token("factory-a", Scope::Factory).await;
    let token_b = ts.token("factory-b", Scope::Factory).await;
    let a = register(&ts, &token, "a", 1).await;
    let b = register(&ts, &token_b, "b", 1).await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], "backoff: 1s\n"))])
        .await[0];

    // A claims and goes silent; its lease expires and B gets the job.
    let ca = claim(&ts, &token, a).await;
    let cb = claim(&ts, &token_b, b).await;
    assert_eq!((ca.job.id, cb.job.id), (id, id));
    assert!(cb.run.epoch > ca.run.epoch);

    // Each fenced write of A is refused once.
    let run_a = ca.run.id;
    let writes = [
        ("renew", json!({ "epoch": ca.run.epoch })),
        (
            "events",
            json!({ "epoch": ca.run.epoch, "events": [
                { "kind": "run.output", "data": { "stream": "stdout", "text": "late\n" } }
            ]}),
        ),
        (
            "finish",
            json!({ "epoch": ca.run.epoch, "outcome": "succeeded", "exit_code": 0 }),
        ),
    ];
    for (op, body) in &writes {
        let resp = ts
            .post(&token, &format!("/v1/runs/{run_a}/{op}"), body)
            .await;
        assert_eq!(
            resp.status(),
            409,
            "{op}: {}",
            resp.text().await.unwrap_or_default()
        );
    }

    // B finishes with what its agent spent.
    let insights = Insights {
        model: Some("model \"x\"".to_string()),
        tokens_in: 1200,
        tokens_out: 300,
        tokens_cached: 1000,
        cost_usd: Some(0.25),
        ..Insights::default()
    };
    let finish = json!({
        "epoch": cb.run.epoch,
        "outcome": "succeeded",
        "exit_code": 0,
        "insights": insights,
    });
    let resp = ts
        .post(&token_b, &format!("/v1/runs/{}/finish", cb.run.id), &finish)
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let job = ts.job(id).await;
    assert_eq!(job.state, JobState::Succeeded);
    let lost = job
        .runs
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Lost))
        .count() as f64;
    assert_eq!(lost, 1.0, "{job:#?}");

    // A factory token may read, so it may scrape too.
    let text = scrape(&ts, &token).await;
    let all = samples(&text);
    assert_eq!(value(&all, "gantry_lease_expiries_total"), lost);
    assert_eq!(
        value(&all, "gantry_runs_finished_total{outcome=\"lost\"}"),
        lost
    );
    assert_eq!(
        value(&all, "gantry_runs_finished_total{outcome=\"succeeded\"}"),
        1.0
    );
    for (op, _) in &writes {
        assert_eq!(
            value(
                &all,
                &format!("gantry_stale_writes_total{{operation=\"{op}\"}}")
            ),
            1.0,
            "{op}"
        );
    }
    assert_eq!(
        value(
            &all,
            "gantry_claim_duration_seconds_count{result=\"claimed\"}"
        ),
        2.0
    );
    // B's long poll asked the store while A still held the lease.
    assert!(
        value(
            &all,
            "gantry_claim_duration_seconds_count{result=\"empty\"}"
        ) >= 1.0
    );
    assert_eq!(value(&all, "gantry_jobs{state=\"succeeded\"}"), 1.0);
    let labels = r#"engine="command",model="model \"x\"""#;
    for (kind, n) in [("in", 1200.0), ("out", 300.0), ("cached", 1000.0)] {
        assert_eq!(
            value(
                &all,
                &format!("gantry_agent_tokens_total{{{labels},kind=\"{kind}\"}}")
            ),
            n,
            "{kind}"
        );
    }
    assert_eq!(
        value(&all, &format!("gantry_agent_cost_usd_total{{{labels}}}")),
        0.25
    );
    promtool_check(&text);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_metrics_need_a_token() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let resp = ts
        .http
        .get(ts.url("/metrics"))
        .send()
        .await
        .expect("GET sent");
    assert_eq!(resp.status(), 401);
    let resp = ts.get("gtk_not-a-token", "/metrics").await;
    assert_eq!(resp.status(), 401);
    // An admin token reads everything, metrics included.
    let text = scrape(&ts, &ts.admin.clone()).await;
    assert!(text.contains("# TYPE gantry_jobs gauge"), "{text}");
    ts.shutdown().await;
}
