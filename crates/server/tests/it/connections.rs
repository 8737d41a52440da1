//! Connection limits (issue 15), with real sockets: slow and silent clients are closed
//! by the header-read timeout, a stalled upload by the idle timeout, connections past
//! the cap are answered 503, and event streams past a token's cap 429.

use crate::support::{TestServer, config};
use gantry_protocol::{ErrorBody, Scope};
use gantry_server::{Limits, ServeConfig};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Outer bound on waiting for the server to close a connection: many times the
/// timeouts under test, so only a connection that is never closed fails it.
const CLOSE_BOUND: Duration = Duration::from_secs(30);

fn server_config(data: &std::path::Path, limits: Limits) -> ServeConfig {
    ServeConfig {
        embedded_factory: false,
        limits,
        ..config(data)
    }
}

fn addr(ts: &TestServer) -> SocketAddr {
    ts.server.as_ref().expect("running").addr()
}

/// Reads until the server closes the connection (end of file or a reset) and returns
/// what it sent; panics when it stays open past [`CLOSE_BOUND`].
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(CLOSE_BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{what}: the server kept the connection open for {CLOSE_BOUND:?}"
    );
    got
}

#[tokio::test]
async fn issue15_slow_and_silent_clients_are_closed_by_the_header_timeout() {
    let data = tempfile::tempdir().expect("tempdir");
    let header_timeout = Duration::from_secs(3);
    let mut ts = TestServer::start(server_config(
        data.path(),
        Limits {
            header_read_timeout: header_timeout,
            ..Limits::default()
        },
    ))
    .await;
    let addr = addr(&ts);

    let mut clients = Vec::new();
    for n in 0..5 {
        // Sends a request line, then one more header line every 2 s, never the end of
        // the header: each line arrives within the timeout, the whole header never does.
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (rd, mut wr) = stream.into_split();
            let opened = Instant::now();
            let trickle = tokio::spawn(async move {
                let mut line = 0;
                if wr
                    .write_all(b"GET /v1/health HTTP/1.1\r\nHost: gantry\r\n")
                    .await
                    .is_err()
                {
                    return line;
                }
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    line += 1;
                    let header = format!("X-Slow-{line}: {n}\r\n");
                    if wr.write_all(header.as_bytes()).await.is_err() {
                        return line;
                    }
                }
            });
            let mut stream = rd;
            let mut got = Vec::new();
            let closed = tokio::time::timeout(CLOSE_BOUND, async {
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => got.extend_from_slice(&buf[..k]),
                    }
                }
            })
            .await;
            trickle.abort();
            assert!(
                closed.is_ok(),
                "slow client {n}: still open after {CLOSE_BOUND:?}"
            );
            assert!(
                !String::from_utf8_lossy(&got).contains("200 OK"),
                "slow client {n} was never answered: {}",
                String::from_utf8_lossy(&got)
            );
            opened.elapsed()
        }));
    }
    for n in 0..5 {
        // Connects and sends nothing at all.
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let opened = Instant::now();
            let got = read_until_closed(&mut stream, &format!("silent client {n}")).await;
            assert!(got.is_empty(), "silent client {n} got {got:?}");
            opened.elapsed()
        }));
    }
    for client in clients {
        let lasted = client.await.expect("client task");
        // Closed by the timeout, not before it (a little slack for timer granularity).
        assert!(
            lasted + Duration::from_millis(200) >= header_timeout,
            "closed after {lasted:?}, before the {header_timeout:?} header timeout"
        );
    }

    // The server still answers well-behaved clients.
    let resp = ts
        .http
        .get(ts.url("/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(resp.status(), 200);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_a_stalled_upload_is_closed_by_the_idle_timeout() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(server_config(
        data.path(),
        Limits {
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
    ))
    .await;

    // A whole header announcing a body of 1000 bytes, then a few bytes of it and
    // nothing more: the header timeout no longer applies, the idle timeout does.
    let mut stream = TcpStream::connect(addr(&ts)).await.expect("connect");
    let request = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: gantry\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"jobs\"",
        ts.admin
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send header");
    read_until_closed(&mut stream, "stalled upload").await;
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_a_kept_alive_connection_outlives_the_header_timeout_until_idle() {
    let data = tempfile::tempdir().expect("tempdir");
    let idle = Duration::from_secs(4);
    let mut ts = TestServer::start(server_config(
        data.path(),
        Limits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: idle,
            ..Limits::default()
        },
    ))
    .await;

    // One whole request and its answer; then the connection waits, kept alive, for a
    // next request that never comes. Clients reuse such connections, so only the idle
    // timeout may close it, not the much shorter header timeout.
    let mut stream = TcpStream::connect(addr(&ts)).await.expect("connect");
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: gantry\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("{\"ok\":true}") {
        let n = tokio::time::timeout(CLOSE_BOUND, stream.read(&mut buf))
            .await
            .expect("an answer within the bound")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let rest = read_until_closed(&mut stream, "kept-alive connection").await;
    assert!(rest.is_empty(), "{rest:?}");
    let lasted = answered.elapsed();
    assert!(
        lasted + Duration::from_millis(200) >= idle,
        "closed {lasted:?} after the answer: before the {idle:?} idle timeout"
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn issue15_connections_past_the_cap_are_answered_503_until_one_closes() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(server_config(
        data.path(),
        Limits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
    ))
    .await;
    let addr = addr(&ts);

    // Three connections take every slot (the listener accepts in arrival order, so
    // they are served before the fourth is looked at).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut extra = TcpStream::connect(addr).await.expect("connect");
    extra
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: gantry\r\n\r\n")
        .await
        .expect("send");
    let answer = read_until_closed(&mut extra, "connection over the cap").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the fourth connection is refused: {answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    let err: ErrorBody = serde_json::from_str(body).expect("an error body");
    assert_eq!(err.error, "too_many_connections");
    assert_eq!(err.details["limit"], 3);

    // A held connection is still served: the cap refuses new ones only.
    held[0]
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: gantry\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let answer = read_until_closed(&mut held[0], "held connection").await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Its slot is free again once the server has seen it close.
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        let client = reqwest::Client::new();
        let resp = client.get(ts.url("/v1/health")).send().await.expect("sent");
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 503);
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    ts.shutdown().await;
}

/// Opens `GET /v1/events` as a stream with `token`.
async fn open_stream(ts: &TestServer, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(ts.url("/v1/events"))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("stream asked")
}

#[tokio::test]
async fn issue15_event_streams_past_a_tokens_cap_are_429() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(server_config(
        data.path(),
        Limits {
            max_streams_per_token: 2,
            // Short, so keep-alives (a third of it at most) soon show the server that a
            // dropped stream's client is gone.
            idle_timeout: Duration::from_secs(3),
            ..Limits::default()
        },
    ))
    .await;
    let reader = ts.token("watcher", Scope::Reader).await;

    let first = open_stream(&ts, &reader).await;
    assert_eq!(first.status(), 200);
    let second = open_stream(&ts, &reader).await;
    assert_eq!(second.status(), 200);
    let third = open_stream(&ts, &reader).await;
    assert_eq!(third.status(), 429);
    let err: ErrorBody = third.json().await.expect("error body");
    assert_eq!(err.error, "too_many_streams");
    assert_eq!(err.details["limit"], 2);
    assert_eq!(err.details["token"], "watcher");
    assert!(err.message.contains("watcher"), "{}", err.message);

    // The cap is per token: another token streams as usual, and JSON pages are no
    // streams.
    let other = open_stream(&ts, &ts.admin).await;
    assert_eq!(other.status(), 200);
    assert_eq!(ts.get(&reader, "/v1/events").await.status(), 200);

    // A stream closed by its client frees its slot.
    drop(first);
    let deadline = Instant::now() + CLOSE_BOUND;
    let again = loop {
        let resp = open_stream(&ts, &reader).await;
        if resp.status() == 200 {
            break resp;
        }
        assert_eq!(resp.status(), 429);
        assert!(
            Instant::now() < deadline,
            "the freed stream slot was never reused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((again, second, other));
    ts.shutdown().await;
}
