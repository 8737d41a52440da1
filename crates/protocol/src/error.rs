//! The error body of every non-2xx answer, and [`ErrorKind`], its machine-readable
//! kind.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The machine-readable kind of an error: the `error` field of an [`ErrorBody`].
///
/// On the wire it is a snake_case string (`stale_lease`, `not_found`, ...). The server
/// writes only the kinds in [`ErrorKind::SERVER`]; a client names its own failures
/// with the client-side kinds ([`ErrorKind::InvalidUrl`], [`ErrorKind::InvalidToken`],
/// [`ErrorKind::InvalidCaFile`], [`ErrorKind::UntrustedCertificate`],
/// [`ErrorKind::InvalidResponse`], [`ErrorKind::Http`]), and a kind this build does not
/// know (a newer server) is kept as [`ErrorKind::Other`] so it is never lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `bad_request` (400): the request is malformed or names an invalid value.
    BadRequest,
    /// `unauthorized` (401): no token, or one the server does not know.
    Unauthorized,
    /// `forbidden` (403): the token's scope does not allow the request.
    Forbidden,
    /// `not_found` (404): no such job, run, factory, token or route.
    NotFound,
    /// `method_not_allowed` (405).
    MethodNotAllowed,
    /// `internal` (500): the server failed.
    Internal,
    /// `invalid_job` (400): a job file of the batch is invalid.
    InvalidJob,
    /// `stale_lease` (409): the run's lease is gone; the factory kills the run.
    StaleLease,
    /// `wrong_state` (409): the job is not in a state that allows the action.
    WrongState,
    /// `exists` (409): a token of that name exists.
    Exists,
    /// `idempotency_conflict` (409): an idempotency key reused with other content.
    IdempotencyConflict,
    /// `factory_name_taken` (409): the factory name belongs to another token.
    FactoryNameTaken,
    /// `sandbox_unavailable` (503): the job would have to run without a sandbox.
    SandboxUnavailable,
    /// `too_large` (413): a body or a field is over its limit.
    TooLarge,
    /// `too_many_streams` (429): the token has the most event streams open.
    TooManyStreams,
    /// `too_many_connections` (503): the server has the most connections open.
    TooManyConnections,
    /// `invalid_url` (client side): the server URL cannot be used.
    InvalidUrl,
    /// `invalid_token` (client side): the token cannot be sent in a header.
    InvalidToken,
    /// `invalid_ca_file` (client side): the extra CA file cannot be read or holds no
    /// certificate.
    InvalidCaFile,
    /// `untrusted_certificate` (client side): the `https://` server's certificate is
    /// not trusted (not signed by a system root nor by the extra CA, or not for its name).
    UntrustedCertificate,
    /// `invalid_response` (client side): the answer is not what the API promises.
    InvalidResponse,
    /// `http_<status>` (client side): a non-2xx answer without a Gantry error body.
    Http(u16),
    /// A kind this build does not know, kept as the server wrote it.
    Other(String),
}

impl ErrorKind {
    /// Every kind the server writes, for tests and documentation.
    pub const SERVER: [ErrorKind; 16] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Internal,
        ErrorKind::InvalidJob,
        ErrorKind::StaleLease,
        ErrorKind::WrongState,
        ErrorKind::Exists,
        ErrorKind::IdempotencyConflict,
        ErrorKind::FactoryNameTaken,
        ErrorKind::SandboxUnavailable,
        ErrorKind::TooLarge,
        ErrorKind::TooManyStreams,
        ErrorKind::TooManyConnections,
    ];

    /// The kinds without a payload that only a client names (its own failures).
    pub const CLIENT: [ErrorKind; 5] = [
        ErrorKind::InvalidUrl,
        ErrorKind::InvalidToken,
        ErrorKind::InvalidCaFile,
        ErrorKind::UntrustedCertificate,
        ErrorKind::InvalidResponse,
    ];

    /// The wire name of a kind without a payload; `None` for [`ErrorKind::Http`] and
    /// [`ErrorKind::Other`], whose names are built from their payload.
    fn fixed_name(&self) -> Option<&'static str> {
        Some(match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Internal => "internal",
            ErrorKind::InvalidJob => "invalid_job",
            ErrorKind::StaleLease => "stale_lease",
            ErrorKind::WrongState => "wrong_state",
            ErrorKind::Exists => "exists",
            ErrorKind::IdempotencyConflict => "idempotency_conflict",
            ErrorKind::FactoryNameTaken => "factory_name_taken",
            ErrorKind::SandboxUnavailable => "sandbox_unavailable",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::TooManyStreams => "too_many_streams",
            ErrorKind::TooManyConnections => "too_many_connections",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::InvalidToken => "invalid_token",
            ErrorKind::InvalidCaFile => "invalid_ca_file",
            ErrorKind::UntrustedCertificate => "untrusted_certificate",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Http(_) | ErrorKind::Other(_) => return None,
        })
    }

    /// The kind named `code` on the wire; never fails (an unknown code is
    /// [`ErrorKind::Other`]).
    pub fn parse(code: &str) -> ErrorKind {
        let mut named = ErrorKind::SERVER.iter().chain(&ErrorKind::CLIENT);
        if let Some(k) = named.find(|k| k.fixed_name() == Some(code)) {
            return k.clone();
        }
        let status = code
            .strip_prefix("http_")
            .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok());
        match status {
            Some(status) => ErrorKind::Http(status),
            None => ErrorKind::Other(code.to_string()),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Http(status) => write!(f, "http_{status}"),
            ErrorKind::Other(code) => f.write_str(code),
            kind => f.write_str(kind.fixed_name().unwrap_or_default()),
        }
    }
}

impl From<&str> for ErrorKind {
    fn from(code: &str) -> ErrorKind {
        ErrorKind::parse(code)
    }
}

/// A kind equals its wire name, so a test can say `assert_eq!(kind, "not_found")`.
impl PartialEq<str> for ErrorKind {
    fn eq(&self, other: &str) -> bool {
        *self == ErrorKind::parse(other)
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorKind, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ErrorKind::parse(&code))
    }
}

/// The error body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind, e.g. [`ErrorKind::StaleLease`], [`ErrorKind::NotFound`].
    pub error: ErrorKind,
    /// What failed and with what value.
    pub message: String,
    /// What to do about it, when there is something to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Kind-specific details (e.g. run, epoch and current_epoch for `stale_lease`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl ErrorBody {
    /// A body of `kind` with `message`, no hint, no details.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: kind,
            message: message.into(),
            hint: None,
            details: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code as the server writes it today, in the order of [`ErrorKind::SERVER`].
    const CODES: [&str; 16] = [
        "bad_request",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "internal",
        "invalid_job",
        "stale_lease",
        "wrong_state",
        "exists",
        "idempotency_conflict",
        "factory_name_taken",
        "sandbox_unavailable",
        "too_large",
        "too_many_streams",
        "too_many_connections",
    ];

    #[test]
    fn every_server_code_round_trips() {
        for (kind, code) in ErrorKind::SERVER.iter().zip(CODES) {
            let json = serde_json::to_string(kind).expect("serializes");
            assert_eq!(json, format!("\"{code}\""));
            let back: ErrorKind = serde_json::from_str(&json).expect("parses");
            assert_eq!(&back, kind);
            assert_eq!(back, code);
            assert!(!matches!(back, ErrorKind::Other(_)), "{code} is known");
        }
    }

    #[test]
    fn client_kinds_and_unknown_codes_round_trip() {
        for (code, kind) in [
            ("invalid_url", ErrorKind::InvalidUrl),
            ("invalid_token", ErrorKind::InvalidToken),
            ("invalid_ca_file", ErrorKind::InvalidCaFile),
            ("untrusted_certificate", ErrorKind::UntrustedCertificate),
            ("invalid_response", ErrorKind::InvalidResponse),
            ("http_403", ErrorKind::Http(403)),
            ("http_4030", ErrorKind::Other("http_4030".into())),
            (
                "from_a_newer_server",
                ErrorKind::Other("from_a_newer_server".into()),
            ),
        ] {
            assert_eq!(ErrorKind::parse(code), kind);
            assert_eq!(kind.to_string(), code);
        }
    }

    #[test]
    fn error_body_wire_format_is_unchanged() {
        let body = ErrorBody {
            hint: Some("kill the run".into()),
            details: serde_json::json!({ "run": 3 }),
            ..ErrorBody::new(ErrorKind::StaleLease, "stale")
        };
        let json = serde_json::to_value(&body).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "error": "stale_lease",
                "message": "stale",
                "hint": "kill the run",
                "details": { "run": 3 },
            })
        );
        let bare: ErrorBody = serde_json::from_str(r#"{"error":"not_found","message":"m"}"#)
            .expect("parses without hint and details");
        assert_eq!(bare, ErrorBody::new(ErrorKind::NotFound, "m"));
    }
}
