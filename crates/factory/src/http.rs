//! [`Coordinator`] over the HTTP API (`/v1`), for remote factories, on top of
//! `gantry-client`.
//!
//! Error mapping: HTTP 409 of kind [`ErrorKind::StaleLease`] on a run write is
//! [`CoordError::StaleLease`]; connection failures, timeouts, 408, 429 and 5xx are
//! [`CoordError::Unavailable`] (worth retrying); every other non-2xx answer is
//! [`CoordError::Refused`] with the server's error kind and message. An `https://`
//! server whose certificate is not trusted refuses the registration (kind
//! [`ErrorKind::UntrustedCertificate`]: the factory stops at once instead of retrying
//! forever); on later calls it is [`CoordError::Unavailable`], so a certificate
//! rotation gone wrong for a while costs retries, not the runs.

use async_trait::async_trait;
use gantry_client::{Client, ClientError, ClientOptions, status_line};
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, RunId};
use gantry_protocol::{
    Claim, ClaimRequest, CoordError, Coordinator, ErrorKind, EventsUpload, FinishReport, Heartbeat,
    HeartbeatAck, RegisterFactory, Registered, RenewRequest, Renewed,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// Time allowed for a request that does not long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a finish: its answer waits for the delivery, which may fetch the
/// published result into a server that has no cache of the repository yet.
const FINISH_TIMEOUT: Duration = Duration::from_secs(300);
/// Extra time allowed for a claim beyond its long-poll wait.
const CLAIM_SLACK: Duration = Duration::from_secs(30);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Coordinator`] that talks to a Gantry server over HTTP with a bearer token.
#[derive(Clone)]
pub struct HttpCoordinator {
    client: Client,
}

impl std::fmt::Debug for HttpCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCoordinator")
            .field("base", &self.client.base())
            .finish_non_exhaustive()
    }
}

/// A refusal of the server URL `base_url`, saying why.
fn invalid_url(base_url: &str, why: impl std::fmt::Display) -> CoordError {
    CoordError::Refused {
        kind: ErrorKind::InvalidUrl,
        message: format!("invalid server URL {base_url:?}: {why}"),
    }
}

impl HttpCoordinator {
    /// A coordinator for the server at `base_url` (e.g. `http://127.0.0.1:7700`),
    /// authenticating with the bearer `token` (scope `factory` or `admin`); an
    /// `https://` server must present a certificate the system's roots trust.
    pub fn new(base_url: &str, token: &str) -> Result<Self, CoordError> {
        HttpCoordinator::with_ca_file(base_url, token, None)
    }

    /// Like [`HttpCoordinator::new`], also trusting the CA certificates of the PEM file
    /// `ca_file` for an `https://` server. A CA file that cannot be used is refused
    /// with kind [`ErrorKind::InvalidCaFile`] and a message naming the file.
    pub fn with_ca_file(
        base_url: &str,
        token: &str,
        ca_file: Option<&Path>,
    ) -> Result<Self, CoordError> {
        let url = reqwest::Url::parse(base_url).map_err(|e| invalid_url(base_url, e))?;
        if !matches!(url.scheme(), "http" | "https") {
            let why = format!("the scheme must be http or https, not {:?}", url.scheme());
            return Err(invalid_url(base_url, why));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid_url(base_url, "no query or fragment allowed"));
        }
        let opts = ClientOptions::new(CONNECT_TIMEOUT).ca_file(ca_file);
        let client =
            Client::with_options(url.as_str(), Some(token), &opts).map_err(|e| match e {
                e @ ClientError::InvalidToken => CoordError::Refused {
                    kind: ErrorKind::InvalidToken,
                    message: e.to_string(),
                },
                e @ ClientError::CaFile { .. } => CoordError::Refused {
                    kind: ErrorKind::InvalidCaFile,
                    message: e.to_string(),
                },
                other => CoordError::Unavailable(other.to_string()),
            })?;
        Ok(HttpCoordinator { client })
    }

    /// POSTs `body` to `path` (under the base URL). `Ok(None)` is a 204 answer.
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
        run: Option<(RunId, i64)>,
    ) -> Result<Option<R>, CoordError> {
        self.client
            .post_json(path, body, timeout)
            .await
            .map_err(|e| coord_error(e, &self.client.url(path), run))
    }

    /// POSTs `body` to `path` for an answer that must not be a 204; `what` names it.
    async fn post_some<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        run: Option<(RunId, i64)>,
        what: &str,
    ) -> Result<R, CoordError> {
        let answer: Option<R> = self.post(path, body, REQUEST_TIMEOUT, run).await?;
        answer.ok_or_else(|| CoordError::Refused {
            kind: ErrorKind::InvalidResponse,
            message: format!("POST {path} answered 204 instead of {what}"),
        })
    }
}

/// What a failed call means to the factory loop.
fn coord_error(e: ClientError, url: &str, run: Option<(RunId, i64)>) -> CoordError {
    match e {
        ClientError::Api { status, body } => {
            if let (409, ErrorKind::StaleLease, Some((run, epoch))) = (status, &body.error, run) {
                return CoordError::StaleLease {
                    run,
                    epoch,
                    message: body.message,
                };
            }
            let message = match body.error {
                // Not a Gantry error body: its message already names the URL and status.
                ErrorKind::Http(_) => format!("POST {}", body.message),
                _ => format!("POST {url}: HTTP {}: {}", status_line(status), body.message),
            };
            if status >= 500 || status == 408 || status == 429 {
                return CoordError::Unavailable(message);
            }
            CoordError::Refused {
                kind: body.error,
                message,
            }
        }
        ClientError::BadResponse { message, .. } => CoordError::Refused {
            kind: ErrorKind::InvalidResponse,
            message: format!("POST {url}: {message}"),
        },
        ClientError::Unreachable { cause, .. } | ClientError::Transport { cause, .. } => {
            CoordError::Unavailable(format!("POST {url}: {cause}"))
        }
        other => CoordError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl Coordinator for HttpCoordinator {
    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        let path = "/v1/factories";
        let answer: Option<Registered> = self
            .client
            .post_json(path, reg, REQUEST_TIMEOUT)
            .await
            .map_err(|e| match e {
                e @ ClientError::Untrusted { .. } => CoordError::Refused {
                    kind: ErrorKind::UntrustedCertificate,
                    message: e.to_string(),
                },
                e => coord_error(e, &self.client.url(path), None),
            })?;
        let r = answer.ok_or_else(|| CoordError::Refused {
            kind: ErrorKind::InvalidResponse,
            message: format!("POST {path} answered 204 instead of the factory id"),
        })?;
        Ok(r.id)
    }

    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        let path = format!("/v1/factories/{factory}/heartbeat");
        self.post_some(&path, hb, None, "the heartbeat interval")
            .await
    }

    async fn claim(&self, factory: FactoryId, wait: Duration) -> Result<Option<Claim>, CoordError> {
        // Whole seconds on the wire; round up so a short wait still waits.
        let wait_s = wait.as_millis().div_ceil(1000) as u64;
        self.post(
            &format!("/v1/factories/{factory}/claim"),
            &ClaimRequest { wait_s },
            Duration::from_secs(wait_s) + CLAIM_SLACK,
            None,
        )
        .await
    }

    async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, CoordError> {
        let path = format!("/v1/runs/{run}/renew");
        self.post_some(
            &path,
            &RenewRequest { epoch },
            Some((run, epoch)),
            "the lease",
        )
        .await
    }

    async fn events(
        &self,
        run: RunId,
        epoch: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), CoordError> {
        let _: Option<serde_json::Value> = self
            .post(
                &format!("/v1/runs/{run}/events"),
                &EventsUpload { epoch, events },
                REQUEST_TIMEOUT,
                Some((run, epoch)),
            )
            .await?;
        Ok(())
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<(), CoordError> {
        let epoch = report.epoch;
        let _: Option<serde_json::Value> = self
            .post(
                &format!("/v1/runs/{run}/finish"),
                &report,
                FINISH_TIMEOUT,
                Some((run, epoch)),
            )
            .await?;
        Ok(())
    }
}
