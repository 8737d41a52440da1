//! `https://` servers: one whose certificate a CA file vouches for is reached, one whose
//! certificate nothing trusts is refused at once with an error naming the URL, and a
//! bad CA file is an error naming the file.

use gantry_client::{Client, ClientError, ClientOptions};
use gantry_core::JobId;
use gantry_testkit::tls::TestCa;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto::aws_lc_rs};

/// An HTTPS server on loopback with a certificate of `ca` that answers every request
/// with the body `diff`. It runs until the test ends.
async fn https_server(ca: &TestCa, dir: &Path) -> SocketAddr {
    let files = ca.server_cert(dir, "server", &["localhost", "127.0.0.1"]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(&files.key).expect("key");
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake: nothing to do.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndiff";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn options(ca_file: Option<&Path>) -> ClientOptions {
    ClientOptions::new(Duration::from_secs(5)).ca_file(ca_file)
}

fn job() -> JobId {
    "1".parse().expect("a job id")
}

#[tokio::test]
async fn a_server_signed_by_the_ca_file_is_reached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Gantry client test CA");
    let ca_file = ca.write_pem(dir.path(), "ca.pem");
    let addr = https_server(&ca, dir.path()).await;
    for host in ["localhost", "127.0.0.1"] {
        let base = format!("https://{host}:{}", addr.port());
        let client =
            Client::with_options(&base, Some("t"), &options(Some(&ca_file))).expect("client");
        let diff = client.diff(job()).await.expect("the diff over https");
        assert_eq!(&diff[..], b"diff", "{base}");
    }
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_naming_the_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Gantry client test CA");
    let addr = https_server(&ca, dir.path()).await;
    let base = format!("https://127.0.0.1:{}", addr.port());
    // No CA file: only the system's roots, which know nothing of the test CA. So is a
    // CA file of another CA.
    let other = TestCa::new("Another CA").write_pem(dir.path(), "other.pem");
    for ca_file in [None, Some(other.as_path())] {
        let client = Client::with_options(&base, Some("t"), &options(ca_file)).expect("client");
        let started = std::time::Instant::now();
        let err = client.diff(job()).await.expect_err("an untrusted server");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the refusal took {:?}",
            started.elapsed()
        );
        match &err {
            ClientError::Untrusted { url, cause } => {
                assert_eq!(url, &format!("{base}/v1/jobs/1/diff"));
                assert!(cause.contains("certificate"), "{cause}");
            }
            other => panic!("expected Untrusted, got {other:?}"),
        }
        assert!(err.to_string().contains(&base), "{err}");
    }
}

#[test]
fn a_bad_ca_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    for path in [&missing, &garbage, &broken] {
        let err = Client::with_options("https://127.0.0.1:1", None, &options(Some(path)))
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        match &err {
            ClientError::CaFile { path: p, .. } => assert_eq!(p, path),
            other => panic!("expected CaFile, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
