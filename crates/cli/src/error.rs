//! What the CLI reports when something fails: a kind, a message, the causes behind it
//! and hints about what to do (in the style of jj). Every failure of a command ends up
//! here, and [`crate::output`] renders it.

use crate::command::UsageError;
use gantry_client::ClientError;
use std::fmt;

/// The broad class of a failure: it picks the exit code and default hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The command line was wrong (exit code 2).
    Usage,
    /// The server could not be reached.
    Unreachable,
    /// No token, or the server refused it (401).
    Unauthorized,
    /// The token's scope does not allow the request (403).
    Forbidden,
    /// The job, token or route does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The server refused the input (400, 422): e.g. an invalid job file.
    Invalid,
    /// The server failed, or answered something the CLI did not understand.
    Server,
    /// A local file or process failed.
    Local,
}

/// A failure as shown to a person.
#[derive(Debug, Clone)]
pub struct CliError {
    /// Its class.
    pub kind: Kind,
    /// What failed, naming the value.
    pub message: String,
    /// Lines of detail (e.g. every error of a refused batch, or the underlying cause).
    pub causes: Vec<String>,
    /// What to do about it.
    pub hints: Vec<String>,
    /// Preformatted text to show instead of the standard form (clap's own messages).
    pub rendered: Option<String>,
}

impl CliError {
    /// A new error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            causes: Vec::new(),
            hints: Vec::new(),
            rendered: None,
        }
    }

    /// A local failure (file, process).
    pub fn local(message: impl Into<String>) -> CliError {
        CliError::new(Kind::Local, message)
    }

    /// Adds a cause line.
    pub fn cause(mut self, cause: impl Into<String>) -> CliError {
        self.causes.push(cause.into());
        self
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hints.push(hint.into());
        self
    }

    /// The process exit code: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Usage => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<UsageError> for CliError {
    fn from(e: UsageError) -> CliError {
        let help = if e.subcommand.is_empty() {
            "gantry --help".to_string()
        } else {
            format!("gantry {} --help", e.subcommand)
        };
        CliError::new(Kind::Usage, e.to_string()).hint(format!("see `{help}`"))
    }
}

/// Maps a client failure to what a person should read, with hints that name the URL or
/// the token file involved.
pub fn from_client(e: ClientError, url: &str) -> CliError {
    match e {
        ClientError::Unreachable { cause, .. } => CliError::new(
            Kind::Unreachable,
            format!("cannot reach the Gantry server at {url}"),
        )
        .cause(cause)
        .hint("start it with `gantry serve`, or pass --url (or set GANTRY_URL)"),
        ClientError::TokenFile { path, source } => {
            let p = path.display();
            let mut err = CliError::new(
                Kind::Unauthorized,
                format!("cannot read the API token from {p}"),
            )
            .cause(source.to_string());
            if source.kind() == std::io::ErrorKind::NotFound {
                err = err.hint(format!(
                    "`gantry serve` writes {p} on first start; run this where the server keeps its data (--data-dir, GANTRY_DATA_DIR), or pass --token (GANTRY_TOKEN)"
                ));
            } else {
                err = err.hint(format!(
                    "check the permissions of {p}, or pass --token (GANTRY_TOKEN)"
                ));
            }
            err
        }
        e @ ClientError::InvalidToken => CliError::new(Kind::Unauthorized, e.to_string())
            .hint("check the token passed with --token (GANTRY_TOKEN) or in the token file"),
        ClientError::Setup { message } => CliError::local(message),
        e @ ClientError::CaFile { .. } => CliError::new(Kind::Usage, e.to_string())
            .hint("--ca-file (GANTRY_CA_FILE) takes a PEM file of CA certificates (-----BEGIN CERTIFICATE----- blocks)"),
        ClientError::Untrusted { url: u, cause } => CliError::new(
            Kind::Unreachable,
            format!("the server at {u} presented a TLS certificate that is not trusted"),
        )
        .cause(cause)
        .hint("if a private CA signed the server's certificate, pass its certificate with --ca-file (GANTRY_CA_FILE); check too that the URL's host name is one the certificate names"),
        ClientError::Api { status, body } => {
            let kind = match status {
                400 | 422 => Kind::Invalid,
                401 => Kind::Unauthorized,
                403 => Kind::Forbidden,
                404 => Kind::NotFound,
                409 => Kind::Conflict,
                _ => Kind::Server,
            };
            let mut err = CliError::new(kind, body.message.clone());
            for line in detail_lines(&body.details) {
                if line != body.message {
                    err = err.cause(line);
                }
            }
            if let Some(h) = body.hint {
                err = err.hint(h);
            } else {
                match kind {
                    Kind::Unauthorized => {
                        err = err.hint(
                            "the server refused the token: pass a valid one with --token (GANTRY_TOKEN), or check that <data-dir>/admin.token belongs to this server",
                        )
                    }
                    Kind::Forbidden => {
                        err = err.hint("this token's scope does not allow it: use a token with a wider scope (`gantry token create --scope ...`)")
                    }
                    Kind::NotFound => err = err.hint("`gantry ls` lists the jobs"),
                    Kind::Server if status >= 500 => {
                        err = err.hint("the server failed; its log (run it with -v) says more")
                    }
                    _ => {}
                }
            }
            if kind == Kind::Server {
                err = err.cause(format!("HTTP {status} ({})", body.error));
            }
            err
        }
        ClientError::BadResponse { url: u, message }
        | ClientError::Transport {
            url: u,
            cause: message,
        } => CliError::new(Kind::Server, format!("unexpected answer from {u}"))
            .cause(message)
            .hint("is --url pointing at a Gantry server of the same version?"),
        ClientError::StreamLost { url: u, message } => CliError::new(
            Kind::Unreachable,
            format!("the event stream from {u} dropped and could not be resumed"),
        )
        .cause(message)
        .hint("run the command again; it resumes from the start of the job's events"),
    }
}

/// The human lines hidden in an error body's `details`: a list of errors (strings or
/// `{file, line, field, message}` objects) under `errors`, or a single one.
fn detail_lines(details: &serde_json::Value) -> Vec<String> {
    let list = match details {
        serde_json::Value::Object(m) => match m.get("errors") {
            Some(serde_json::Value::Array(a)) => a.clone(),
            _ => return Vec::new(),
        },
        serde_json::Value::Array(a) => a.clone(),
        _ => return Vec::new(),
    };
    list.iter()
        .filter_map(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(_) => {
                serde_json::from_value::<gantry_core::SpecError>(v.clone())
                    .map(|e| e.to_string())
                    .ok()
                    .or_else(|| {
                        v.get("message")
                            .and_then(|m| m.as_str())
                            .map(str::to_string)
                    })
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_protocol::ErrorBody;

    #[test]
    fn an_answer_that_is_not_an_error_body_keeps_its_status() {
        let e = from_client(
            ClientError::Api {
                status: 502,
                body: ErrorBody::new(
                    gantry_protocol::ErrorKind::Http(502),
                    "request to http://127.0.0.1:7700/v1/status answered HTTP 502 Bad Gateway: oops",
                ),
            },
            "http://127.0.0.1:7700",
        );
        assert_eq!(e.kind, Kind::Server);
        assert!(
            e.causes.contains(&"HTTP 502 (http_502)".to_string()),
            "{:?}",
            e.causes
        );
    }

    fn api(status: u16, error: &str, message: &str, details: serde_json::Value) -> CliError {
        from_client(
            ClientError::Api {
                status,
                body: ErrorBody {
                    error: error.into(),
                    message: message.into(),
                    hint: None,
                    details,
                },
            },
            "http://127.0.0.1:7700",
        )
    }

    #[test]
    fn status_codes_pick_kinds() {
        for (status, kind) in [
            (400, Kind::Invalid),
            (401, Kind::Unauthorized),
            (403, Kind::Forbidden),
            (404, Kind::NotFound),
            (409, Kind::Conflict),
            (422, Kind::Invalid),
            (500, Kind::Server),
        ] {
            let e = api(status, "x", "m", serde_json::Value::Null);
            assert_eq!(e.kind, kind, "HTTP {status}");
            assert_eq!(e.exit_code(), 1);
            assert_eq!(e.message, "m");
        }
    }

    #[test]
    fn spec_errors_in_details_become_causes() {
        let details = serde_json::json!({"errors": [
            {"file": "a.md", "line": 3, "field": "priority", "message": "priority 12 is out of range 0..=9"},
            "b.md:2: field `deps`: unknown dependency \"nope\"",
        ]});
        let e = api(400, "invalid_job", "2 job files were refused", details);
        assert_eq!(
            e.causes,
            vec![
                "a.md:3: field `priority`: priority 12 is out of range 0..=9".to_string(),
                "b.md:2: field `deps`: unknown dependency \"nope\"".to_string(),
            ]
        );
    }

    #[test]
    fn missing_token_file_names_the_path() {
        let e = from_client(
            ClientError::TokenFile {
                path: "/x/.gantry/admin.token".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
            "http://127.0.0.1:7700",
        );
        assert!(e.message.contains("/x/.gantry/admin.token"));
        assert!(e.hints[0].contains("/x/.gantry/admin.token"));
    }

    #[test]
    fn usage_errors_exit_2() {
        let e = CliError::from(UsageError {
            subcommand: "serve".into(),
            arg: "--seats <N>".into(),
            value: "x".into(),
            reason: "expected a number".into(),
        });
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.hints, vec!["see `gantry serve --help`".to_string()]);
    }
}
