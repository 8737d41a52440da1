//! Tokens and scopes.

use crate::support::{TestServer, config, job_file, repo};
use gantry_protocol::{ErrorBody, Registered, Scope, TokenInfo};
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

/// Who may call a route: the scopes whose tokens pass its scope check. `None` for a
/// public route (no token needed).
type Allowed = Option<&'static [Scope]>;

const PUBLIC: Allowed = None;
const READ: Allowed = Some(&[
    Scope::Admin,
    Scope::Operator,
    Scope::Submitter,
    Scope::Reader,
    Scope::Factory,
]);
const SUBMIT: Allowed = Some(&[Scope::Admin, Scope::Operator, Scope::Submitter]);
const OPERATE: Allowed = Some(&[Scope::Admin, Scope::Operator]);
const FACTORY: Allowed = Some(&[Scope::Admin, Scope::Factory]);
const ADMIN: Allowed = Some(&[Scope::Admin]);

/// Every (method, path) the router serves, read from the router's source: a route
/// added without a row in the scope matrix fails the matrix test. (axum's `Router`
/// cannot list its routes, so its source is the list.)
fn routes_in_router_source() -> std::collections::BTreeSet<(String, String)> {
    let src = include_str!("../../src/http.rs");
    let start = src.find("pub fn router(").expect("http.rs defines router");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("router ends")];
    let mut routes = std::collections::BTreeSet::new();
    for chunk in body.split(".route(").skip(1) {
        // The call's arguments: up to the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = chunk
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("a .route( call is closed");
        let call = &chunk[..end];
        let path = call
            .split('"')
            .nth(1)
            .expect("a route's first argument is its path");
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                matches!(call[..i].chars().next_back(), Some('.' | ' ' | '\n' | ','))
            });
            if called {
                routes.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    routes
}

/// The scope matrix (issue 15): every route of the router × every scope, a token that
/// does not exist and no token, as one table. Each cell is 401 (no or unknown token),
/// 403 (the token's scope does not allow the route) or allowed (any other answer: the
/// requests name a job, run, factory and token that do not exist, or carry a body the
/// route refuses, so an allowed call changes nothing but the queue's pause).
#[tokio::test]
async fn scope_matrix_every_route_every_scope_and_no_token() {
    use reqwest::Method;
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(no_factory(data.path())).await;
    let mut tokens: Vec<(String, Option<String>)> = vec![
        ("no token".to_string(), None),
        (
            "unknown token".to_string(),
            Some("gtk_not_a_real_token".to_string()),
        ),
    ];
    for scope in Scope::ALL {
        let secret = if scope == Scope::Admin {
            ts.admin.clone()
        } else {
            ts.token(&format!("matrix-{scope}"), scope).await
        };
        tokens.push((scope.to_string(), Some(secret)));
    }
    let none = || None::<serde_json::Value>;
    let rows: Vec<(Method, &str, &str, Allowed, Option<serde_json::Value>)> = vec![
        (Method::GET, "/v1/health", "/v1/health", PUBLIC, none()),
        (Method::GET, "/metrics", "/metrics", READ, none()),
        (
            Method::POST,
            "/v1/jobs",
            "/v1/jobs",
            SUBMIT,
            Some(json!({ "jobs": [] })),
        ),
        (Method::GET, "/v1/jobs", "/v1/jobs", READ, none()),
        (
            Method::GET,
            "/v1/jobs/{id}",
            "/v1/jobs/999999",
            READ,
            none(),
        ),
        (
            Method::GET,
            "/v1/jobs/{id}/diff",
            "/v1/jobs/999999/diff",
            READ,
            none(),
        ),
        (
            Method::POST,
            "/v1/jobs/{id}/cancel",
            "/v1/jobs/999999/cancel",
            OPERATE,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/jobs/{id}/kill",
            "/v1/jobs/999999/kill",
            OPERATE,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/jobs/{id}/retry",
            "/v1/jobs/999999/retry",
            OPERATE,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/kill-all",
            "/v1/kill-all",
            OPERATE,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/pause",
            "/v1/pause",
            OPERATE,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/resume",
            "/v1/resume",
            OPERATE,
            Some(json!({})),
        ),
        (Method::GET, "/v1/status", "/v1/status", READ, none()),
        (Method::GET, "/v1/events", "/v1/events", READ, none()),
        (
            Method::POST,
            "/v1/factories",
            "/v1/factories",
            FACTORY,
            Some(json!({ "name": "" })),
        ),
        (Method::GET, "/v1/factories", "/v1/factories", READ, none()),
        (
            Method::POST,
            "/v1/factories/{id}/claim",
            "/v1/factories/999999/claim",
            FACTORY,
            Some(json!({ "wait_s": 0 })),
        ),
        (
            Method::POST,
            "/v1/factories/{id}/heartbeat",
            "/v1/factories/999999/heartbeat",
            FACTORY,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/runs/{id}/renew",
            "/v1/runs/999999/renew",
            FACTORY,
            Some(json!({ "epoch": 1 })),
        ),
        (
            Method::POST,
            "/v1/runs/{id}/events",
            "/v1/runs/999999/events",
            FACTORY,
            Some(json!({ "epoch": 1, "events": [] })),
        ),
        (
            Method::POST,
            "/v1/runs/{id}/finish",
            "/v1/runs/999999/finish",
            FACTORY,
            Some(json!({ "epoch": 1, "outcome": "failed" })),
        ),
        (
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            ADMIN,
            Some(json!({ "name": "", "scope": "reader" })),
        ),
        (Method::GET, "/v1/tokens", "/v1/tokens", ADMIN, none()),
        (
            Method::DELETE,
            "/v1/tokens/{name}",
            "/v1/tokens/no-such-token",
            ADMIN,
            none(),
        ),
    ];

    // The matrix has a row for every route the router serves, and no other.
    let in_matrix: std::collections::BTreeSet<(String, String)> = rows
        .iter()
        .map(|(method, route, ..)| (method.to_string(), route.to_string()))
        .collect();
    let served = routes_in_router_source();
    assert!(!served.is_empty(), "no routes read from http.rs");
    assert_eq!(
        in_matrix, served,
        "every route needs a row in the scope matrix (left: matrix, right: router)"
    );

    let mut wrong = Vec::new();
    for (method, route, path, allowed, body) in &rows {
        for (who, secret) in &tokens {
            let mut req = ts.http.request(method.clone(), ts.url(path));
            if let Some(secret) = secret {
                req = req.bearer_auth(secret);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let status = req.send().await.expect("request sent").status().as_u16();
            let scope = Scope::ALL.iter().find(|s| s.to_string() == *who);
            let expected = match (allowed, secret.is_some() && scope.is_some()) {
                (None, _) => "allowed",
                (Some(_), false) => "401",
                (Some(scopes), true) if scope.is_some_and(|s| scopes.contains(s)) => "allowed",
                (Some(_), true) => "403",
            };
            let got = match status {
                401 => "401",
                403 => "403",
                _ => "allowed",
            };
            if got != expected {
                wrong.push(format!(
                    "{method} {route} as {who}: expected {expected}, got {status}"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "scope matrix cells wrong:\n{}",
        wrong.join("\n")
    );
    ts.shutdown().await;
}
