//! Errors: [`ServerError`] for starting and stopping the server, [`ApiError`] for what
//! one request (HTTP or in-process) gets back.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_core::SpecError;
use gantry_protocol::{ErrorBody, ErrorKind};
use gantry_store::StoreError;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file or directory of the data dir could not be created, read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "create data dir".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TLS certificate or key file cannot be used; the message says why.
    #[error("TLS {what} {path}: {message}")]
    Tls {
        /// Which file: "certificate file" or "key file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration value cannot work; the message names the field and the value.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// The config file (`gantry.toml`) cannot be read or is invalid.
    #[error(transparent)]
    ConfigFile(#[from] crate::config::ConfigError),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// The embedded factory could not be set up.
    #[error("embedded factory: {0}")]
    Factory(String),
    /// A background task (HTTP server, reaper, factory) failed or panicked.
    #[error("{task} task failed: {message}")]
    Task {
        /// Which task.
        task: &'static str,
        /// What happened.
        message: String,
    },
}

/// A refused or failed request: an HTTP status plus the [`ErrorBody`] sent with it.
///
/// The in-process coordinator gets the same value, so the embedded factory sees the
/// same refusals a remote one does.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.body.error,
            self.status.as_u16(),
            self.body.message
        )
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error of `kind` with `status` and `message`, no hint, no details.
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::new(kind, message),
        }
    }

    /// Adds a hint: what to do about it.
    pub fn with_hint(mut self, hint: impl Into<String>) -> ApiError {
        self.body.hint = Some(hint.into());
        self
    }

    /// Adds kind-specific details.
    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.body.details = details;
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::BadRequest, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    /// 500 `internal`. The message is logged as well, since it points at a bug or a
    /// broken environment rather than at the caller.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(%message, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            message,
        )
    }

    /// 400 `invalid_job`, naming file, line and field in the details.
    pub fn invalid_job(e: &SpecError) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidJob,
            e.to_string(),
        )
        .with_details(json!({ "file": e.file, "line": e.line, "field": e.field }))
    }

    /// The error kind ([`ErrorKind::StaleLease`], [`ErrorKind::NotFound`], ...).
    pub fn kind(&self) -> &ErrorKind {
        &self.body.error
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match &e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::StaleLease {
                job,
                run,
                epoch,
                current_epoch,
                state,
            } => ApiError::new(StatusCode::CONFLICT, ErrorKind::StaleLease, e.to_string())
                .with_hint(
                    "this worker's lease is gone (expired or re-claimed): kill the run \
                         and push nothing",
                )
                .with_details(json!({
                    "job": job,
                    "run": run,
                    "epoch": epoch,
                    "current_epoch": current_epoch,
                    "state": state,
                })),
            StoreError::Invalid(spec) => ApiError::invalid_job(spec),
            StoreError::WrongState { job, state, action } => {
                ApiError::new(StatusCode::CONFLICT, ErrorKind::WrongState, e.to_string())
                    .with_details(json!({ "job": job, "state": state, "action": action }))
            }
            StoreError::Exists { what, name } => {
                ApiError::new(StatusCode::CONFLICT, ErrorKind::Exists, e.to_string())
                    .with_details(json!({ "what": what, "name": name }))
            }
            StoreError::IdempotencyConflict { file, key, job, .. } => ApiError::new(
                StatusCode::CONFLICT,
                ErrorKind::IdempotencyConflict,
                e.to_string(),
            )
            .with_hint(
                "an idempotency key names one job: submit the same content again, \
                         or give the changed job another key",
            )
            .with_details(json!({ "file": file, "key": key, "job": job })),
            StoreError::Corrupt(_) | StoreError::Backend(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}
