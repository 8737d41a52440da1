//! TLS to PostgreSQL as the URL asks for it, with libpq's meaning: `sslmode` and
//! `sslrootcert` mean what they mean to `psql`, so one URL works for both.
//!
//! | `sslmode`         | TLS                      | certificate checked                     |
//! |-------------------|--------------------------|-----------------------------------------|
//! | `disable`         | never                    | -                                       |
//! | `prefer` (default)| if the server offers it  | only when `sslrootcert` is given (chain)|
//! | `require`         | always                   | only when `sslrootcert` is given (chain)|
//! | `verify-ca`       | always                   | chain                                   |
//! | `verify-full`     | always                   | chain and host name                     |
//!
//! The chain is checked against the CA certificates of `sslrootcert` (a PEM file), or
//! the system's roots when it is absent or `system`. tokio-postgres knows `disable`,
//! `prefer` and `require` only, and no `sslrootcert`: [`split_url`] takes both out of
//! the URL and hands the driver `require` for the two verify modes; the checks are the
//! connector's ([`connector`]). `allow` (plain first, TLS as a fallback) is refused:
//! the driver cannot do it.
//!
//! rustls on the aws-lc-rs provider, as everywhere in Gantry.

use crate::{Result, StoreError};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every connection of a store is made with.
pub(crate) type Connector = MakeRustlsConnect;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing: the connection is encrypted, the server unauthenticated (libpq's
    /// `prefer` and `require` without a root certificate).
    Nothing,
    /// The chain up to a trusted root, not the host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// What a URL asks of TLS, beyond what the driver reads itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// How much of the certificate is checked.
    pub check: Check,
    /// `sslrootcert`: the CA certificates to check against; `None` for the system's.
    pub root_cert: Option<PathBuf>,
}

/// Decodes the `%XX` escapes of a URL query component, as libpq does; a `%` not
/// followed by two hex digits stays as it is.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits make at most 255: the cast loses nothing.
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes `sslmode` and `sslrootcert` out of a PostgreSQL URL: returns the URL for the
/// driver (with `sslmode=require` for the verify modes) and what the connector must
/// check. A mode the driver cannot honour is an error naming it.
pub(crate) fn split_url(url: &str) -> Result<(String, TlsSettings)> {
    let invalid =
        |message: String| StoreError::Backend(format!("invalid PostgreSQL URL: {message}"));
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut mode: Option<String> = None;
    let mut root_cert: Option<PathBuf> = None;
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match percent_decode(key).as_str() {
            "sslmode" => mode = Some(percent_decode(value)),
            "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
            _ => kept.push(param),
        }
    }
    let (driver_mode, check) = match mode.as_deref() {
        None | Some("prefer") => ("prefer", Check::Nothing),
        Some("disable") => ("disable", Check::Nothing),
        Some("require") => ("require", Check::Nothing),
        Some("verify-ca") => ("require", Check::Chain),
        Some("verify-full") => ("require", Check::Full),
        Some("allow") => {
            return Err(invalid(
                "sslmode=allow is not supported; use disable, prefer, require, verify-ca or \
                 verify-full"
                    .to_string(),
            ));
        }
        Some(other) => {
            return Err(invalid(format!(
                "unknown sslmode {other:?}; expected disable, prefer, require, verify-ca or \
                 verify-full"
            )));
        }
    };
    // A root certificate given for `prefer` or `require` is there to be used: the chain
    // is checked, as libpq does for `require`.
    let root_cert = root_cert.filter(|p| p.as_os_str() != "system");
    let check = match (check, &root_cert) {
        (Check::Nothing, Some(_)) => Check::Chain,
        (check, _) => check,
    };
    let mut out = format!("{base}?sslmode={driver_mode}");
    for param in kept {
        out.push('&');
        out.push_str(param);
    }
    Ok((out, TlsSettings { check, root_cert }))
}

/// The CA certificates to check the server's against.
fn roots(settings: &TlsSettings) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match &settings.root_cert {
        Some(path) => {
            let bad = |message: String| {
                StoreError::Backend(format!(
                    "cannot use sslrootcert {}: {message}",
                    path.display()
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("it holds no PEM certificate".to_string()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::Backend(format!(
                    "sslmode asks to check the server's certificate, but no system root \
                     certificate could be loaded ({:?}); name the CA with sslrootcert=PATH",
                    found.errors
                )));
            }
        }
    }
    Ok(roots)
}

/// One connection to `url` (not pooled), with TLS as the URL asks: what the store's
/// pool, lanes and listener do, for checks the `Store` trait cannot make.
#[cfg(feature = "testing")]
pub(crate) async fn connect_one(url: &str) -> Result<tokio_postgres::Client> {
    let (url, settings) = split_url(url)?;
    let (client, connection) = tokio_postgres::connect(&url, connector(&settings)?)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot connect: {}", super::tx::describe(&e))))?;
    // The connection ends once the client is gone; its result says nothing more.
    tokio::spawn(connection);
    Ok(client)
}

/// The connector for `settings`: one TLS configuration shared by every connection.
pub(crate) fn connector(settings: &TlsSettings) -> Result<Connector> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("cannot set up TLS: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match settings.check {
        Check::Nothing => Arc::new(Unchecked { provider }),
        check => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(settings)?), provider)
                    .build()
                    .map_err(|e| StoreError::Backend(format!("cannot set up TLS: {e}")))?;
            if check == Check::Full {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Accepts any certificate, checking only that the server holds its key (the
/// handshake's signatures): libpq's `prefer` and `require` without a root certificate.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks the chain but not the host name (`verify-ca`). The WebPKI verifier checks the
/// chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Check, Option<PathBuf>) {
        let (url, s) = split_url(url).expect("valid");
        (url, s.check, s.root_cert)
    }

    #[test]
    fn modes_map_to_the_driver_and_the_checks() {
        let base = "postgres://gantry@db:5432/gantry";
        for (query, driver, check) in [
            ("", "prefer", Check::Nothing),
            ("?sslmode=prefer", "prefer", Check::Nothing),
            ("?sslmode=disable", "disable", Check::Nothing),
            ("?sslmode=require", "require", Check::Nothing),
            ("?sslmode=verify-ca", "require", Check::Chain),
            ("?sslmode=verify-full", "require", Check::Full),
        ] {
            let (url, got, root) = split(&format!("{base}{query}"));
            assert_eq!(url, format!("{base}?sslmode={driver}"), "{query}");
            assert_eq!(got, check, "{query}");
            assert_eq!(root, None, "{query}");
        }
    }

    #[test]
    fn sslrootcert_is_taken_out_and_makes_the_chain_checked() {
        let (url, check, root) = split(
            "postgres://u@h/d?application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&sslmode=require&connect_timeout=5",
        );
        assert_eq!(
            url,
            "postgres://u@h/d?sslmode=require&application_name=x&connect_timeout=5"
        );
        assert_eq!(check, Check::Chain);
        assert_eq!(root, Some(PathBuf::from("/etc/ca dir/ca.pem")));
        let (_, check, root) = split("postgres://u@h/d?sslmode=verify-full&sslrootcert=/ca.pem");
        assert_eq!(check, Check::Full);
        assert_eq!(root, Some(PathBuf::from("/ca.pem")));
        // `system` names the system's roots, as in libpq.
        let (_, check, root) = split("postgres://u@h/d?sslmode=verify-ca&sslrootcert=system");
        assert_eq!((check, root), (Check::Chain, None));
    }

    #[test]
    fn escapes_are_decoded_and_odd_ones_kept() {
        assert_eq!(percent_decode("%2Fa%20b"), "/a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn modes_the_driver_cannot_honour_are_refused() {
        for mode in ["allow", "verify_full", "on"] {
            let err = split_url(&format!("postgres://u@h/d?sslmode={mode}"))
                .expect_err(mode)
                .to_string();
            assert!(err.contains(mode) && err.contains("sslmode"), "{err}");
        }
    }

    #[test]
    fn an_unusable_root_certificate_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        for path in [missing, empty] {
            let settings = TlsSettings {
                check: Check::Full,
                root_cert: Some(path.clone()),
            };
            let err = connector(&settings).err().expect("refused").to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }
}
