//! `gantry serve --tls-cert/--tls-key` (issue 12), with certificates made at test time:
//! the API over HTTPS, the connection limits and timeouts on TLS connections (a stalled
//! handshake is closed by the header timeout; past the cap the 503 comes over TLS), and
//! certificate or key files that cannot be used stop the start with an error naming
//! the file.

use crate::support::{TestServer, config};
use gantry_protocol::ErrorBody;
use gantry_server::{Limits, ServeConfig, ServerError, TlsFiles};
use gantry_testkit::tls::TestCa;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Outer bound on waiting for the server to close a connection: many times the
/// timeouts under test, so only a connection that is never closed fails it.
const CLOSE_BOUND: Duration = Duration::from_secs(30);

/// A server without an embedded factory, serving TLS with a certificate of `ca` for
/// `localhost` and `127.0.0.1`.
fn tls_config(data: &Path, ca: &TestCa, limits: Limits) -> ServeConfig {
    let files = ca.server_cert(
        data.parent().expect("a parent"),
        "server",
        &["localhost", "127.0.0.1"],
    );
    ServeConfig {
        embedded_factory: false,
        limits,
        tls: Some(TlsFiles {
            cert: files.cert,
            key: files.key,
        }),
        ..config(data)
    }
}

/// A client trusting `ca` (besides the system's roots).
fn client_trusting(ca: &TestCa) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(ca.pem().as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_merge(certs)
        .timeout(CLOSE_BOUND)
        .build()
        .expect("client")
}

/// Reads until the server closes the connection; panics when it stays open past
/// [`CLOSE_BOUND`].
async fn wait_closed(stream: &mut TcpStream, what: &str) {
    let closed = tokio::time::timeout(CLOSE_BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {CLOSE_BOUND:?}");
}

#[tokio::test]
async fn issue12_the_api_is_served_over_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ca = TestCa::new("Gantry server test CA");
    let mut ts = TestServer::start(tls_config(&data, &ca, Limits::default())).await;
    let server = ts.server.as_ref().expect("running");
    let port = server.addr().port();
    assert_eq!(server.url(), format!("https://127.0.0.1:{port}"));

    let client = client_trusting(&ca);
    for host in ["127.0.0.1", "localhost"] {
        let resp = client
            .get(format!("https://{host}:{port}/v1/status"))
            .bearer_auth(&ts.admin)
            .send()
            .await
            .expect("status over https");
        assert_eq!(resp.status(), 200, "{host}");
    }

    // Plain HTTP to the TLS port is no request: the handshake fails and the server
    // closes the connection at once rather than leaving the client waiting.
    let mut plain = TcpStream::connect(server.addr()).await.expect("connect");
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: gantry\r\n\r\n")
        .await
        .expect("send");
    let sent = Instant::now();
    wait_closed(&mut plain, "plain HTTP on the TLS port").await;
    let lasted = sent.elapsed();
    assert!(lasted < Duration::from_secs(5), "closed after {lasted:?}");

    // A client that does not know the CA refuses the certificate.
    let err = reqwest::Client::new()
        .get(format!("https://127.0.0.1:{port}/v1/health"))
        .send()
        .await
        .expect_err("an untrusted certificate");
    assert!(chain(&err).contains("certificate"), "{}", chain(&err));
    ts.shutdown().await;
}

/// An error with its causes, as text.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

#[tokio::test]
async fn issue12_a_stalled_tls_handshake_is_closed_by_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ca = TestCa::new("Gantry server test CA");
    let header_timeout = Duration::from_secs(2);
    let mut ts = TestServer::start(tls_config(
        &data,
        &ca,
        Limits {
            header_read_timeout: header_timeout,
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
    ))
    .await;
    let addr = ts.server.as_ref().expect("running").addr();

    // One client sends nothing; another sends the start of a TLS record (a handshake
    // record announcing 512 bytes) and then nothing more.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("send");
    for (stream, what) in [
        (&mut silent, "silent client"),
        (&mut partial, "half a handshake"),
    ] {
        wait_closed(stream, what).await;
        let lasted = opened.elapsed();
        assert!(
            lasted + Duration::from_millis(200) >= header_timeout,
            "{what}: closed after {lasted:?}, before the {header_timeout:?} header timeout"
        );
    }

    // Well-behaved clients are still served.
    let resp = client_trusting(&ca)
        .get(format!(
            "{}/v1/health",
            ts.server.as_ref().expect("running").url()
        ))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), 200);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue12_tls_connections_past_the_cap_are_answered_503_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let ca = TestCa::new("Gantry server test CA");
    let mut ts = TestServer::start(tls_config(
        &data,
        &ca,
        Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
    ))
    .await;
    let url = ts.server.as_ref().expect("running").url();
    let addr = ts.server.as_ref().expect("running").addr();

    // Two connections that never start their handshake take every slot: a handshake
    // in progress holds a slot like any connection.
    let held = [
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    let client = client_trusting(&ca);
    let deadline = Instant::now() + CLOSE_BOUND;
    // The listener accepts in arrival order, so the held ones are counted first; the
    // loop only guards against a refusal racing its own accept.
    let resp = loop {
        let resp = client
            .get(format!("{url}/v1/health"))
            .send()
            .await
            .expect("an answer over TLS");
        if resp.status() == 503 || Instant::now() >= deadline {
            break resp;
        }
    };
    assert_eq!(resp.status(), 503);
    let err: ErrorBody = resp.json().await.expect("an error body");
    assert_eq!(err.error, "too_many_connections");
    assert_eq!(err.details["limit"], 2);

    drop(held);
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        let resp = client
            .get(format!("{url}/v1/health"))
            .send()
            .await
            .expect("sent");
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(
            Instant::now() < deadline,
            "the freed slots were never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ts.shutdown().await;
}

#[tokio::test]
async fn issue12_unusable_certificate_or_key_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Gantry server test CA");
    let good = ca.server_cert(dir.path(), "good", &["localhost"]);
    let other = ca.server_cert(dir.path(), "other", &["localhost"]);
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");

    let cases = [
        // (cert, key, the file the error must name, what it must say)
        (&missing, &good.key, &missing, "certificate file"),
        (&empty, &good.key, &empty, "no certificate"),
        (&good.key, &good.key, &good.key, "no certificate"),
        (&good.cert, &missing, &missing, "key file"),
        (&good.cert, &good.cert, &good.cert, "no private key"),
        (&good.cert, &other.key, &other.key, "does not go with"),
    ];
    for (n, (cert, key, named, says)) in cases.into_iter().enumerate() {
        let cfg = ServeConfig {
            embedded_factory: false,
            tls: Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            ..config(&dir.path().join(format!("data{n}")))
        };
        let err = gantry_server::start(cfg)
            .await
            .err()
            .unwrap_or_else(|| panic!("case {n}: the server started"));
        assert!(matches!(err, ServerError::Tls { .. }), "case {n}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&named.display().to_string()) && text.contains(says),
            "case {n}: {text}"
        );
    }
}
