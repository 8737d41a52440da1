//! Size caps (issue 15): oversized job fields are refused with a named `too_large`
//! error and nothing stored, lists carry no bodies, and a request body over the HTTP
//! limit answers 413 `too_large` rather than `bad_request`.

use crate::support::{TestServer, config, job_file, repo};
use gantry_core::Job;
use gantry_core::event::Event;
use gantry_protocol::ErrorBody;
use gantry_server::{Limits, ServeConfig};
use serde_json::json;

/// Largest request body of `POST /v1/jobs` (`BODY_LIMIT` in the server's http.rs).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

fn no_factory(data: &std::path::Path) -> ServeConfig {
    ServeConfig {
        embedded_factory: false,
        ..config(data)
    }
}

async fn error_of(resp: reqwest::Response, status: u16) -> ErrorBody {
    let got = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "{}", &text[..text.len().min(2000)]);
    serde_json::from_str(&text).expect("error body")
}

/// Submits one job file as admin and returns the raw answer.
async fn submit_raw(ts: &TestServer, file: &str, text: &str) -> reqwest::Response {
    ts.post(
        &ts.admin,
        "/v1/jobs",
        &json!({ "jobs": [{ "file": file, "text": text }] }),
    )
    .await
}

#[tokio::test]
async fn issue15_a_10mb_title_is_refused_by_name_and_nothing_is_stored() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;

    let title = "t".repeat(10 * 1024 * 1024);
    let text = job_file(&title, &repo, &["true"], "");
    let err = error_of(submit_raw(&ts, "huge.md", &text).await, 413).await;
    assert_eq!(err.error, "too_large");
    assert_eq!(err.details["field"], "title");
    assert_eq!(err.details["size"], 10 * 1024 * 1024);
    assert_eq!(err.details["limit"], Limits::default().max_title_bytes);
    assert_eq!(err.details["file"], "huge.md");
    assert!(
        err.message.contains("`title`")
            && err.message.contains(&(10 * 1024 * 1024).to_string())
            && err.message.contains("1024"),
        "the message names the field, its size and the limit: {}",
        err.message
    );
    assert!(
        err.message.len() < 1000,
        "the error does not echo the value"
    );

    // Nothing of the batch was stored: no job, no event.
    let jobs: Vec<Job> = ts.get_json("/v1/jobs").await;
    assert!(jobs.is_empty(), "{} jobs stored", jobs.len());
    let events: Vec<Event> = ts.get_json("/v1/events").await;
    assert!(events.is_empty(), "{} events stored", events.len());
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_body_labels_and_env_over_their_caps_are_named() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        max_body_bytes: 1000,
        max_label_bytes: 20,
        max_labels: 2,
        max_env_vars: 2,
        max_env_bytes: 100,
        max_job_file_bytes: 5000,
        ..Limits::default()
    };
    let mut ts = TestServer::start(ServeConfig {
        limits,
        ..no_factory(data.path())
    })
    .await;

    let long_arg = "a".repeat(6000);
    let cases: [(&str, String, &str, &str); 6] = [
        (
            "body.md",
            job_file("b", &repo, &["true"], "").replace("Do the thing.", &"x".repeat(1001)),
            "body",
            "bytes",
        ),
        (
            "label.md",
            job_file(
                "l",
                &repo,
                &["true"],
                &format!("labels: {{ team: {} }}\n", "y".repeat(40)),
            ),
            "labels.team",
            "bytes",
        ),
        (
            "labels.md",
            job_file(
                "l",
                &repo,
                &["true"],
                "labels: { a: '1', b: '2', c: '3' }\n",
            ),
            "labels",
            "entries",
        ),
        (
            "envs.md",
            job_file("e", &repo, &["true"], "env: { A: '1', B: '2', C: '3' }\n"),
            "env",
            "entries",
        ),
        (
            "env.md",
            job_file(
                "e",
                &repo,
                &["true"],
                &format!("env: {{ A: '{}' }}\n", "z".repeat(200)),
            ),
            "env",
            "bytes",
        ),
        (
            "file.md",
            job_file("f", &repo, &["echo", &long_arg], ""),
            "text",
            "bytes",
        ),
    ];
    for (file, text, field, unit) in cases {
        let err = error_of(submit_raw(&ts, file, &text).await, 413).await;
        assert_eq!(err.error, "too_large", "{file}: {err:?}");
        assert_eq!(err.details["field"], field, "{file}: {err:?}");
        assert_eq!(err.details["unit"], unit, "{file}: {err:?}");
        assert!(
            err.message.contains(&format!("`{field}`")) && err.message.contains(file),
            "{file}: {}",
            err.message
        );
    }
    let jobs: Vec<Job> = ts.get_json("/v1/jobs").await;
    assert!(jobs.is_empty(), "{} jobs stored", jobs.len());

    // Under the caps, the same fields are accepted.
    let ok = job_file(
        "fine",
        &repo,
        &["true"],
        "labels: { team: abc }\nenv: { A: '1' }\n",
    );
    let ids = ts.submit(&[("ok.md", ok)]).await;
    assert_eq!(ids.len(), 1);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_a_list_of_jobs_carries_no_bodies() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;

    // Three bodies of 512 KiB each, under the default 1 MiB cap.
    let body = "b".repeat(512 * 1024);
    let files: Vec<(&str, String)> = (0..3)
        .map(|n| {
            (
                "big.md",
                job_file(&format!("big {n}"), &repo, &["true"], "").replace("Do the thing.", &body),
            )
        })
        .collect();
    let ids = ts.submit(&files).await;

    let resp = ts.get(&ts.admin, "/v1/jobs?limit=10").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("list");
    assert!(
        text.len() < 64 * 1024,
        "the list is {} bytes: bodies are left out",
        text.len()
    );
    let jobs: Vec<Job> = serde_json::from_str(&text).expect("a list of jobs");
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        assert!(job.spec.body.is_empty(), "job {} has its body", job.id);
        assert!(job.title.starts_with("big "), "titles stay: {}", job.title);
    }

    // `show` still gives the whole spec.
    let job = ts.job(ids[0]).await;
    assert_eq!(job.spec.body.trim_end(), body);

    // The submit events stay small: a capped title, never the body.
    let events: Vec<Event> = ts.get_json("/v1/events").await;
    let submitted: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == gantry_core::event::JOB_SUBMITTED)
        .collect();
    assert_eq!(submitted.len(), 3);
    for ev in submitted {
        let size = ev.data.to_string().len();
        assert!(size < 2048, "job.submitted is {size} bytes: {}", ev.data);
        assert!(
            ev.data["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("big "))
        );
    }
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_a_request_body_over_the_http_limit_is_413_too_large() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;

    // One byte over: the server reads the whole body before it refuses, so the
    // connection closes cleanly and the answer is never lost to a reset.
    let resp = ts
        .http
        .post(ts.url("/v1/jobs"))
        .bearer_auth(&ts.admin)
        .header("content-type", "application/json")
        .body(vec![b'x'; BODY_LIMIT + 1])
        .send()
        .await
        .expect("POST sent");
    let err = error_of(resp, 413).await;
    assert_eq!(err.error, "too_large", "{err:?}");
    assert_eq!(err.details["field"], "request body", "{err:?}");
    assert!(err.hint.is_some(), "{err:?}");
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_limits_come_from_gantry_toml_and_bad_ones_are_refused() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        data.path().join("gantry.toml"),
        "[limits]\nmax_title_bytes = 10\nidle_timeout = \"2m\"\n",
    )
    .expect("write gantry.toml");
    let mut ts = TestServer::start(no_factory(data.path())).await;
    let limits = &ts
        .server
        .as_ref()
        .expect("running")
        .service()
        .config()
        .limits;
    assert_eq!(limits.max_title_bytes, 10);
    assert_eq!(limits.idle_timeout, std::time::Duration::from_secs(120));
    assert_eq!(limits.max_body_bytes, Limits::default().max_body_bytes);
    let text = job_file("eleven char", &repo, &["true"], "");
    let err = error_of(submit_raw(&ts, "t.md", &text).await, 413).await;
    assert_eq!(err.details["field"], "title");
    assert_eq!(err.details["limit"], 10);
    ts.shutdown().await;

    let data = tempfile::tempdir().expect("tempdir");
    let err = gantry_server::start(ServeConfig {
        limits: Limits {
            max_streams_per_token: 0,
            ..Limits::default()
        },
        ..no_factory(data.path())
    })
    .await
    .expect_err("a zero cap cannot work");
    let text = err.to_string();
    assert!(
        text.contains("limits.max_streams_per_token") && text.contains('0'),
        "{text}"
    );
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        data.path().join("gantry.toml"),
        "[limits]\nmax_titel_bytes = 1\n",
    )
    .expect("write gantry.toml");
    let err = gantry_server::start(no_factory(data.path()))
        .await
        .expect_err("a typo is refused");
    assert!(err.to_string().contains("max_titel_bytes"), "{err}");
}
