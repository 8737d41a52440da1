//! `gantry serve --tls-cert FILE --tls-key FILE`: the server's TLS configuration,
//! loaded once at start so a bad file stops the server with an error naming it.
//!
//! rustls on the aws-lc-rs provider, TLS 1.2 and 1.3, HTTP/1.1 only (ALPN), no client
//! certificates: clients authenticate with bearer tokens.

use crate::ServerError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto::aws_lc_rs};

/// The PEM files of the server's certificate (its chain, leaf first) and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM `CERTIFICATE` blocks, the server's own first).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

fn cert_error(path: &Path, message: impl Into<String>) -> ServerError {
    ServerError::Tls {
        what: "certificate file",
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn key_error(path: &Path, message: impl Into<String>) -> ServerError {
    ServerError::Tls {
        what: "key file",
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Why a PEM file cannot be used, in words (a missing file reads as the I/O error).
fn pem_problem(e: pem::Error) -> String {
    match e {
        pem::Error::Io(io) => io.to_string(),
        pem::Error::NoItemsFound => "no PEM block of the expected kind in it".to_string(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// Reads `files` and builds the acceptor every connection's handshake goes through.
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(&files.cert, pem_problem(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(&files.cert, pem_problem(e)))?;
    if certs.is_empty() {
        return Err(cert_error(
            &files.cert,
            "it holds no certificate (expected PEM blocks of -----BEGIN CERTIFICATE-----)",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        pem::Error::NoItemsFound => key_error(
            &files.key,
            "it holds no private key (expected a PEM block such as -----BEGIN PRIVATE KEY-----)",
        ),
        e => key_error(&files.key, pem_problem(e)),
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(&files.cert, format!("no TLS version fits: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            key_error(
                &files.key,
                format!(
                    "it does not go with the certificate in {}: {e}",
                    files.cert.display()
                ),
            )
        })?;
    // The API speaks HTTP/1.1 only; saying so spares clients a failed HTTP/2 attempt.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
