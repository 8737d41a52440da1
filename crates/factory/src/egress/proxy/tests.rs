//! The proxy's request handling against hostile clients: oversized and endless heads,
//! a client trickling bytes, ports and hosts off the list, requests that are not
//! proxy requests; and what it sends upstream.

use super::*;
use gantry_core::sandbox::HostPort;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The hang guard of these tests: far above every limit they set.
const GUARD: Duration = Duration::from_secs(30);

fn allow(entries: &[&str]) -> Policy {
    Policy {
        allowed: entries
            .iter()
            .map(|e| Allowed {
                to: HostPort::parse(e).expect("entry"),
                trusted: true,
            })
            .collect(),
    }
}

fn limits() -> Limits {
    Limits {
        max_head_bytes: 1024,
        head_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_connections: 4,
    }
}

/// Serves one connection whose client end the test drives; returns that end and the
/// refusals, once the proxy is done with the connection.
async fn serve(
    policy: Policy,
    client: impl FnOnce(DuplexStream) -> tokio::task::JoinHandle<String>,
) -> (String, Vec<Denied>) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let seen = std::sync::Mutex::new(Vec::new());
    let talk = client(ours);
    let limits = limits();
    let report = |d| {
        seen.lock().expect("lock").push(d);
        None
    };
    let served = serve_connection(theirs, &policy, &limits, &report);
    tokio::time::timeout(GUARD, served)
        .await
        .expect("the proxy ended the connection");
    let answer = tokio::time::timeout(GUARD, talk)
        .await
        .expect("the client ended")
        .expect("client task");
    (answer, seen.into_inner().expect("lock"))
}

/// A client that sends `bytes`, then reads everything until the proxy closes.
fn sends(bytes: Vec<u8>) -> impl FnOnce(DuplexStream) -> tokio::task::JoinHandle<String> {
    move |mut s| {
        tokio::spawn(async move {
            let _ = s.write_all(&bytes).await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    }
}

#[tokio::test]
async fn an_oversized_head_is_refused_431() {
    let mut head = b"CONNECT example.com:443 HTTP/1.1\r\n".to_vec();
    while head.len() < 4096 {
        head.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let (answer, denied) = serve(allow(&["example.com"]), sends(head)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(denied.is_empty());
    // A head that never ends (no blank line) is cut at the limit too.
    let (answer, _) = serve(allow(&[]), sends(vec![b'a'; 4096])).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    // As are more headers than the parser holds.
    let mut many = b"CONNECT example.com:443 HTTP/1.1\r\n".to_vec();
    for i in 0..80 {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (answer, _) = serve(allow(&["example.com"]), sends(many)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn a_client_trickling_its_head_is_cut_off_408() {
    let trickle = |mut s: DuplexStream| {
        tokio::spawn(async move {
            // One byte at a time, forever: only the head timeout ends it.
            let mut out = Vec::new();
            for b in b"CONNECT example.com:443 HTTP/1.1\r\nX: "
                .iter()
                .chain(std::iter::repeat(&b'a'))
            {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::select! {
                    r = s.read_buf(&mut out) => if matches!(r, Ok(0) | Err(_)) { break },
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let (answer, denied) = serve(allow(&["example.com"]), trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(denied.is_empty());
}

#[tokio::test]
async fn connect_to_a_port_or_host_not_on_the_list_is_refused_and_reported() {
    let (answer, denied) = serve(
        allow(&["example.com:443"]),
        sends(b"CONNECT example.com:22 HTTP/1.1\r\n\r\n".to_vec()),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("example.com:22 is not allowed"), "{answer}");
    assert_eq!(
        denied,
        vec![Denied {
            host: "example.com".into(),
            port: 22,
            reason: "not allowed".into()
        }]
    );
    // Hosts match exactly, case aside: no suffix or prefix games.
    for target in [
        "evil-example.com:443",
        "example.com.evil.net:443",
        "EXAMPLE.com.:443",
    ] {
        let req = format!("CONNECT {target} HTTP/1.1\r\n\r\n").into_bytes();
        let (answer, denied) = serve(allow(&["example.com:443"]), sends(req)).await;
        assert!(answer.starts_with("HTTP/1.1 4"), "{target}: {answer}");
        assert!(denied.len() <= 1, "{target}");
    }
    // A plain request to a port off the list is refused the same way.
    let (answer, denied) = serve(
        allow(&["example.com:443"]),
        sends(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec()),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(denied[0].port, 80);
}

#[tokio::test]
async fn requests_that_are_not_proxy_requests_are_refused_400() {
    for req in [
        &b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"CONNECT example.com HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
        b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n",
        b"GET https://example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://user@example.com/ HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"CONNECT exa mple.com:443 HTTP/1.1\r\n\r\n",
    ] {
        let (answer, denied) = serve(allow(&["example.com"]), sends(req.to_vec())).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?}: {answer}",
            String::from_utf8_lossy(req)
        );
        assert!(denied.is_empty());
    }
}

#[tokio::test]
async fn an_allowed_connect_tunnels_both_ways_and_plain_http_is_rewritten() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    let got = tokio::spawn(async move {
        let mut heads = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = upstream.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.expect("read");
            heads.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            s.write_all(b"pong").await.expect("write");
        }
        heads
    });
    let entry = format!("127.0.0.1:{port}");
    // The bytes after the CONNECT head (a TLS hello, say) reach the upstream too.
    let req = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\nping").into_bytes();
    let (answer, denied) = serve(allow(&[&entry]), sends(req)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 Connection established\r\n\r\npong"),
        "{answer}"
    );
    assert!(denied.is_empty());
    let req = format!(
        "POST http://127.0.0.1:{port}/v1/messages?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: secret\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
    )
    .into_bytes();
    let (answer, _) = serve(allow(&[&entry]), sends(req)).await;
    assert_eq!(answer, "pong");
    let heads = got.await.expect("upstream");
    assert_eq!(heads[0], "ping");
    let plain = &heads[1];
    assert!(
        plain.starts_with("POST /v1/messages?x=1 HTTP/1.1\r\n"),
        "{plain}"
    );
    assert!(
        !plain.to_ascii_lowercase().contains("proxy-authorization"),
        "{plain}"
    );
    assert!(!plain.contains("keep-alive"), "{plain}");
    assert!(plain.contains("Connection: close\r\n\r\nhi"), "{plain}");
}

#[tokio::test]
async fn an_untrusted_entry_may_not_resolve_to_a_private_address() {
    let policy = Policy {
        allowed: vec![Allowed {
            to: HostPort::parse("localhost:9").expect("entry"),
            trusted: false,
        }],
    };
    let (answer, denied) = serve(
        policy,
        sends(b"CONNECT localhost:9 HTTP/1.1\r\n\r\n".to_vec()),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(denied[0].reason, "resolves to a private address");
}

#[test]
fn public_addresses_are_told_from_private_ones() {
    for ip in [
        "127.0.0.1",
        "10.1.2.3",
        "172.17.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ] {
        assert!(!is_public(ip.parse().expect("ip")), "{ip}");
    }
    for ip in ["1.1.1.1", "160.79.104.10", "2606:4700::1111"] {
        assert!(is_public(ip.parse().expect("ip")), "{ip}");
    }
}

#[tokio::test]
async fn a_run_holds_at_most_its_connections_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::channel(8);
    let _proxy = RunProxy::start(dir.path(), allow(&[]), limits(), tx).expect("start");
    let socket = dir.path().join(super::super::SOCKET_NAME);
    // Four idle connections hold every slot (each waits in its head timeout)...
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tokio::net::UnixStream::connect(&socket)
                .await
                .expect("connect"),
        );
    }
    // ...so the fifth is refused at once, while the others still wait.
    let mut fifth = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect");
    let mut out = String::new();
    tokio::time::timeout(GUARD, fifth.read_to_string(&mut out))
        .await
        .expect("answered")
        .expect("read");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
}
