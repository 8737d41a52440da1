//! Error hints (issue 15): the 401 hint does not reveal the server's file system, and a
//! scope refusal names each scope once.

use crate::support::{TestServer, config};
use gantry_protocol::{ErrorBody, Scope};
use gantry_server::ServeConfig;
use serde_json::json;

async fn error_of(resp: reqwest::Response, status: u16) -> ErrorBody {
    let got = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).expect("error body")
}

#[tokio::test]
async fn issue15_the_401_hint_names_the_admin_token_file_without_its_path() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let dir = data.path().display().to_string();

    let no_header = ts.http.get(ts.url("/v1/jobs")).send().await.expect("sent");
    let wrong = ts.get("gtk_not_a_real_token", "/v1/jobs").await;
    let malformed = ts
        .http
        .get(ts.url("/v1/jobs"))
        .header("authorization", "Basic abc")
        .send()
        .await
        .expect("sent");
    for resp in [no_header, wrong, malformed] {
        let err = error_of(resp, 401).await;
        let hint = err.hint.expect("a hint");
        assert!(hint.contains("admin.token"), "{hint}");
        assert!(
            !hint.contains(&dir) && !hint.contains('/'),
            "the hint shows no path: {hint}"
        );
        assert!(!err.message.contains(&dir), "{}", err.message);
    }
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_a_scope_refusal_names_each_scope_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        embedded_factory: false,
        ..config(data.path())
    })
    .await;
    let reader = ts.token("reader", Scope::Reader).await;

    let resp = ts
        .post(
            &reader,
            "/v1/tokens",
            &json!({ "name": "x", "scope": "admin" }),
        )
        .await;
    let err = error_of(resp, 403).await;
    let hint = err.hint.expect("a hint");
    assert_eq!(hint, "use a token with scope admin");

    let resp = ts.post(&reader, "/v1/pause", &json!({})).await;
    let hint = error_of(resp, 403).await.hint.expect("a hint");
    assert_eq!(hint, "use a token with scope operator (or admin)");
    ts.shutdown().await;
}
