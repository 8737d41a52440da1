//! Tokens and scopes.

use crate::support::{TestServer, config, job_file, repo};
use gantry_core::api::{ErrorBody, Registered, Scope, TokenInfo};
use gantry_server::{ServeConfig, hash_token};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

fn no_factory(data: &std::path::Path) -> ServeConfig {
    ServeConfig {
        embedded_factory: false,
        ..config(data)
    }
}

async fn error_of(resp: reqwest::Response, status: u16) -> ErrorBody {
    assert_eq!(resp.status(), status);
    resp.json().await.expect("error body")
}

#[tokio::test]
async fn admin_token_file_is_owner_only_works_and_survives_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;
    let path = data.path().join("admin.token");
    let meta = std::fs::metadata(&path).expect("admin.token exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "admin.token mode");
    let secret = std::fs::read_to_string(&path).expect("read admin.token");
    assert_eq!(secret.trim(), ts.admin);
    assert!(ts.admin.starts_with("gtk_"), "{}", ts.admin);
    assert!(data.path().join("gantry.db").is_file());

    // It works, and only its hash is stored.
    let tokens: Vec<TokenInfo> = ts.get_json("/v1/tokens").await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].scope, Scope::Admin);
    let mut db = Vec::new();
    for entry in std::fs::read_dir(data.path())
        .expect("list data dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("gantry.db") {
            db.extend(std::fs::read(entry.path()).expect("read db file"));
        }
    }
    let contains = |needle: &str| db.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(&hash_token(&ts.admin)), "the hash is stored");
    assert!(!contains(&ts.admin), "the secret itself is not stored");
    ts.shutdown().await;

    // A restart keeps the same token rather than minting another.
    let mut ts = TestServer::start(no_factory(data.path())).await;
    assert_eq!(ts.admin, secret.trim());
    let tokens: Vec<TokenInfo> = ts.get_json("/v1/tokens").await;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    ts.shutdown().await;
}

#[tokio::test]
async fn a_lost_admin_token_is_replaced_on_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;
    let first = ts.admin.clone();
    ts.shutdown().await;
    std::fs::remove_file(data.path().join("admin.token")).expect("remove admin.token");

    let mut ts = TestServer::start(no_factory(data.path())).await;
    assert_ne!(ts.admin, first);
    let meta = std::fs::metadata(data.path().join("admin.token")).expect("admin.token again");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let tokens: Vec<TokenInfo> = ts.get_json("/v1/tokens").await;
    let names: Vec<&str> = tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"admin") && names.contains(&"admin-2"),
        "{names:?}"
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn scopes_are_enforced() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;
    let reader = ts.token("reader", Scope::Reader).await;
    let submitter = ts.token("submitter", Scope::Submitter).await;
    let operator = ts.token("operator", Scope::Operator).await;
    let factory = ts.token("factory", Scope::Factory).await;
    let job = json!({ "jobs": [{ "file": "a.md", "text": job_file("a", &repo, &["true"], "") }] });

    // Health needs no token; everything else does.
    let resp = ts
        .http
        .get(ts.url("/v1/health"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.expect("json"),
        json!({ "ok": true })
    );
    let resp = ts.http.get(ts.url("/v1/jobs")).send().await.expect("sent");
    let err = error_of(resp, 401).await;
    assert_eq!(err.error, "unauthorized");
    assert!(err.hint.expect("hint").contains("admin.token"));
    let resp = ts.get("gtk_not_a_real_token", "/v1/jobs").await;
    assert_eq!(error_of(resp, 401).await.error, "unauthorized");
    let resp = ts
        .http
        .get(ts.url("/v1/jobs"))
        .header("authorization", format!("Basic {reader}"))
        .send()
        .await
        .expect("sent");
    assert!(error_of(resp, 401).await.message.contains("Bearer"));

    // Reader reads, cannot submit.
    assert_eq!(ts.get(&reader, "/v1/jobs").await.status(), 200);
    assert_eq!(ts.get(&reader, "/v1/status").await.status(), 200);
    let err = error_of(ts.post(&reader, "/v1/jobs", &job).await, 403).await;
    assert_eq!(err.error, "forbidden");
    assert!(
        err.message.contains("reader") && err.message.contains("submitter"),
        "{}",
        err.message
    );
    // A forbidden request is refused before its body is even looked at.
    let resp = ts.post(&reader, "/v1/jobs", &json!({ "jobs": 5 })).await;
    assert_eq!(resp.status(), 403);

    // Submitter submits, cannot cancel or pause.
    let resp = ts.post(&submitter, "/v1/jobs", &job).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let id = ts.get_json::<Vec<gantry_core::Job>>("/v1/jobs").await[0].id;
    let resp = ts
        .post(&submitter, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(error_of(resp, 403).await.error, "forbidden");
    assert_eq!(
        ts.post(&submitter, "/v1/pause", &json!({})).await.status(),
        403
    );
    // Nor may it run the factory protocol or manage tokens.
    let reg = json!({ "name": "f", "seats": 1 });
    assert_eq!(
        ts.post(&submitter, "/v1/factories", &reg).await.status(),
        403
    );
    assert_eq!(ts.get(&operator, "/v1/tokens").await.status(), 403);
    let create = json!({ "name": "x", "scope": "admin" });
    assert_eq!(
        ts.post(&operator, "/v1/tokens", &create).await.status(),
        403
    );

    // Operator cancels.
    let resp = ts
        .post(&operator, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );

    // Factory registers and claims (nothing is queued: 204), cannot submit.
    let resp = ts.post(&factory, "/v1/factories", &reg).await;
    assert_eq!(resp.status(), 200);
    let Registered { id: fid } = resp.json().await.expect("registered");
    let resp = ts
        .post(
            &factory,
            &format!("/v1/factories/{fid}/claim"),
            &json!({ "wait_s": 0 }),
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(ts.post(&factory, "/v1/jobs", &job).await.status(), 403);
    assert_eq!(ts.get(&factory, "/v1/factories").await.status(), 200);

    // A revoked token is refused.
    let revoked: TokenInfo = {
        let resp = ts
            .http
            .delete(ts.url("/v1/tokens/reader"))
            .bearer_auth(&ts.admin)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("token info")
    };
    assert!(revoked.revoked_at.is_some());
    let err = error_of(ts.get(&reader, "/v1/jobs").await, 401).await;
    assert!(err.message.contains("revoked"), "{}", err.message);
    let resp = ts
        .http
        .delete(ts.url("/v1/tokens/nobody"))
        .bearer_auth(&ts.admin)
        .send()
        .await;
    assert_eq!(error_of(resp.expect("sent"), 404).await.error, "not_found");
    ts.shutdown().await;
}

#[tokio::test]
async fn token_requests_are_checked() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;
    let err = error_of(
        ts.post(
            &ts.admin,
            "/v1/tokens",
            &json!({ "name": "has space", "scope": "reader" }),
        )
        .await,
        400,
    )
    .await;
    assert!(
        err.message.contains("`name`") && err.message.contains("has space"),
        "{}",
        err.message
    );

    let err = error_of(
        ts.post(
            &ts.admin,
            "/v1/tokens",
            &json!({ "name": "ok", "scope": "root" }),
        )
        .await,
        400,
    )
    .await;
    assert!(
        err.message.contains("`scope`") && err.message.contains("root"),
        "{}",
        err.message
    );

    ts.token("dup", Scope::Reader).await;
    let err = error_of(
        ts.post(
            &ts.admin,
            "/v1/tokens",
            &json!({ "name": "dup", "scope": "reader" }),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(err.error, "exists");
    ts.shutdown().await;
}
