//! `HttpCoordinator` against a tiny local HTTP server that answers canned responses.

use gantry_core::{FactoryId, Outcome, RunId, StopKind};
use gantry_factory::{CoordError, Coordinator, HttpCoordinator};
use gantry_protocol::{Claim, FinishReport, Heartbeat, HeartbeatAck};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One request as the server saw it.
#[derive(Debug)]
struct Request {
    head: String,
    body: String,
}

/// Serves exactly one connection with `status` and `body`; returns the base URL and
/// the request it received.
async fn serve_once(status: &str, body: &str) -> (String, oneshot::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read the head, then as much body as content-length says.
        let (head, body) = loop {
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "client closed early");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_string();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (
                        head,
                        String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned(),
                    );
                }
            }
        };
        sock.write_all(response.as_bytes()).await.expect("write");
        sock.shutdown().await.ok();
        let _ = tx.send(Request { head, body });
    });
    (format!("http://{addr}"), rx)
}

fn coord(base: &str) -> HttpCoordinator {
    HttpCoordinator::new(base, "secret-token").expect("coordinator")
}

#[tokio::test]
async fn a_409_stale_lease_is_stale_lease_naming_run_and_epoch() {
    let body = r#"{"error":"stale_lease","message":"run 5 wrote with epoch 3, but job 1 is queued at epoch 4","details":{"run":5,"epoch":3,"current_epoch":4}}"#;
    let (base, req) = serve_once("409 Conflict", body).await;
    let err = coord(&base).renew(RunId(5), 3).await.expect_err("stale");
    match err {
        CoordError::StaleLease {
            run,
            epoch,
            message,
        } => {
            assert_eq!((run, epoch), (RunId(5), 3));
            assert!(message.contains("epoch 4"), "{message}");
        }
        other => panic!("expected StaleLease, got {other:?}"),
    }
    let req = req.await.expect("request seen");
    assert!(
        req.head.starts_with("POST /v1/runs/5/renew HTTP/1.1"),
        "{}",
        req.head
    );
    assert!(
        req.head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("authorization: Bearer secret-token")),
        "{}",
        req.head
    );
    let sent: serde_json::Value = serde_json::from_str(&req.body).expect("json body");
    assert_eq!(sent, serde_json::json!({"epoch": 3}));
}

#[tokio::test]
async fn stale_lease_on_finish_and_events_too() {
    let body = r#"{"error":"stale_lease","message":"stale"}"#;
    let (base, _req) = serve_once("409 Conflict", body).await;
    let report = FinishReport {
        epoch: 8,
        outcome: Some(Outcome::Succeeded),
        ..FinishReport::default()
    };
    let err = coord(&base)
        .finish(RunId(2), report)
        .await
        .expect_err("stale");
    assert!(
        matches!(
            err,
            CoordError::StaleLease {
                run: RunId(2),
                epoch: 8,
                ..
            }
        ),
        "{err:?}"
    );
    let (base, _req) = serve_once("409 Conflict", body).await;
    let err = coord(&base)
        .events(RunId(2), 8, vec![])
        .await
        .expect_err("stale");
    assert!(matches!(err, CoordError::StaleLease { .. }), "{err:?}");
}

#[tokio::test]
async fn a_409_of_another_kind_is_refused_with_that_kind() {
    let (base, _req) = serve_once(
        "409 Conflict",
        r#"{"error":"wrong_state","message":"job 1 is queued"}"#,
    )
    .await;
    let err = coord(&base).renew(RunId(1), 1).await.expect_err("refused");
    match err {
        CoordError::Refused { kind, message } => {
            assert_eq!(kind, "wrong_state");
            assert!(message.contains("job 1 is queued"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn server_errors_and_throttling_are_unavailable() {
    for status in [
        "500 Internal Server Error",
        "503 Service Unavailable",
        "429 Too Many Requests",
    ] {
        let (base, _req) =
            serve_once(status, r#"{"error":"internal","message":"db is down"}"#).await;
        let err = coord(&base)
            .renew(RunId(1), 1)
            .await
            .expect_err("unavailable");
        match err {
            CoordError::Unavailable(msg) => {
                assert!(msg.contains(&status[..3]), "{msg}");
                assert!(msg.contains("/v1/runs/1/renew"), "{msg}");
            }
            other => panic!("{status}: expected Unavailable, got {other:?}"),
        }
    }
    // A 502 from a proxy with a non-JSON body.
    let (base, _req) = serve_once("502 Bad Gateway", "<html>bad gateway</html>").await;
    let err = coord(&base)
        .claim(FactoryId(1), Duration::from_secs(1))
        .await
        .expect_err("unavailable");
    assert!(
        matches!(err, CoordError::Unavailable(ref m) if m.contains("bad gateway")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = coord(&format!("http://{addr}"))
        .renew(RunId(1), 1)
        .await
        .expect_err("nobody listens");
    match err {
        CoordError::Unavailable(msg) => assert!(msg.contains(&addr.to_string()), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_and_not_found_errors_are_refused_with_their_kind() {
    let (base, _req) = serve_once(
        "401 Unauthorized",
        r#"{"error":"unauthorized","message":"bad token"}"#,
    )
    .await;
    let err = coord(&base)
        .register(&gantry_protocol::RegisterFactory {
            name: "f".to_string(),
            seats: 1,
            capabilities: vec![],
        })
        .await
        .expect_err("refused");
    assert!(
        matches!(err, CoordError::Refused { ref kind, .. } if kind == "unauthorized"),
        "{err:?}"
    );

    let (base, _req) = serve_once(
        "404 Not Found",
        r#"{"error":"not_found","message":"factory 9 not found"}"#,
    )
    .await;
    let err = coord(&base)
        .claim(FactoryId(9), Duration::from_millis(10))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, CoordError::Refused { ref kind, .. } if kind == "not_found"),
        "{err:?}"
    );

    // A bare 403 without a JSON body still gets a kind.
    let (base, _req) = serve_once("403 Forbidden", "").await;
    let err = coord(&base).renew(RunId(1), 1).await.expect_err("refused");
    assert!(
        matches!(err, CoordError::Refused { ref kind, .. } if kind == "http_403"),
        "{err:?}"
    );
}

#[tokio::test]
async fn claim_answers_none_on_204_and_the_claim_on_200() {
    let (base, req) = serve_once("204 No Content", "").await;
    let got = coord(&base)
        .claim(FactoryId(3), Duration::from_millis(1500))
        .await
        .expect("claim");
    assert_eq!(got, None);
    let req = req.await.expect("request");
    assert!(
        req.head.starts_with("POST /v1/factories/3/claim "),
        "{}",
        req.head
    );
    let sent: serde_json::Value = serde_json::from_str(&req.body).expect("json");
    assert_eq!(
        sent,
        serde_json::json!({"wait_s": 2}),
        "waits are rounded up"
    );

    let claim_json = serde_json::json!({
        "job": {"id": 4, "spec": serde_json::to_value(crate::support::spec(std::path::Path::new("/r"), &["true"])).expect("spec")},
        "run": {"id": 9, "attempt": 2, "epoch": 5, "lease_expires_at": "2026-01-01T00:00:00.000Z", "lease_ttl_ms": 60000}
    });
    let (base, _req) = serve_once("200 OK", &claim_json.to_string()).await;
    let got: Claim = coord(&base)
        .claim(FactoryId(3), Duration::from_secs(1))
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(got.job.id, gantry_core::JobId(4));
    assert_eq!(
        (got.run.id, got.run.attempt, got.run.epoch),
        (RunId(9), 2, 5)
    );
}

#[tokio::test]
async fn renew_returns_the_stop_request() {
    let (base, _req) = serve_once(
        "200 OK",
        r#"{"lease_expires_at":"2026-01-01T00:00:00.000Z","stop":"kill"}"#,
    )
    .await;
    let r = coord(&base).renew(RunId(1), 1).await.expect("renewed");
    assert_eq!(r.stop, Some(StopKind::Kill));
}

#[tokio::test]
async fn a_2xx_with_a_body_that_is_not_the_api_is_refused_as_invalid_response() {
    let (base, _req) = serve_once("200 OK", r#"{"unexpected":true}"#).await;
    let err = coord(&base).renew(RunId(1), 1).await.expect_err("bad body");
    assert!(
        matches!(err, CoordError::Refused { ref kind, .. } if kind == "invalid_response"),
        "{err:?}"
    );
}

#[test]
fn bad_urls_and_tokens_are_refused_naming_the_value() {
    for url in ["not a url", "ftp://host/", "http://h/?q=1"] {
        let err = HttpCoordinator::new(url, "t").expect_err(url);
        assert!(err.to_string().contains(url), "{err}");
    }
    let err = HttpCoordinator::new("http://127.0.0.1:7700", "a\nb").expect_err("newline");
    assert!(err.to_string().contains("token"), "{err}");
    // A path prefix is kept (a server behind a reverse proxy).
    HttpCoordinator::new("http://127.0.0.1:7700/gantry/", "t").expect("prefix ok");
}

#[tokio::test]
async fn issue4_a_heartbeat_posts_the_figures_and_returns_the_interval() {
    let (base, req) = serve_once("200 OK", r#"{"interval_ms":10000,"down_after_ms":30000}"#).await;
    let hb = Heartbeat {
        load_1m: Some(0.25),
        free_memory_mb: Some(2048),
        free_disk_mb: None,
        admission: Some("not claiming: low disk".to_string()),
    };
    let ack = coord(&base)
        .heartbeat(FactoryId(7), &hb)
        .await
        .expect("heartbeat");
    assert_eq!(
        ack,
        HeartbeatAck {
            interval_ms: 10_000,
            down_after_ms: 30_000
        }
    );
    let req = req.await.expect("request");
    assert!(
        req.head.starts_with("POST /v1/factories/7/heartbeat "),
        "{}",
        req.head
    );
    let sent: serde_json::Value = serde_json::from_str(&req.body).expect("json");
    assert_eq!(
        sent,
        serde_json::json!({
            "load_1m": 0.25,
            "free_memory_mb": 2048,
            "free_disk_mb": null,
            "admission": "not claiming: low disk"
        }),
        "a figure not measured is null, never 0"
    );
}

#[tokio::test]
async fn issue4_a_heartbeat_of_a_forgotten_factory_is_refused_as_not_found() {
    let (base, _req) = serve_once(
        "404 Not Found",
        r#"{"error":"not_found","message":"factory 7 not found"}"#,
    )
    .await;
    let err = coord(&base)
        .heartbeat(FactoryId(7), &Heartbeat::default())
        .await
        .expect_err("unknown factory");
    assert!(
        matches!(err, CoordError::Refused { ref kind, ref message } if kind == "not_found" && message.contains("factory 7")),
        "{err:?}"
    );
}
