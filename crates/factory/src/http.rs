//! [`Coordinator`] over the HTTP API (`/v1`), for remote factories.
//!
//! Error mapping: HTTP 409 with `{"error":"stale_lease"}` on a run write is
//! [`CoordError::StaleLease`]; connection failures, timeouts, 408, 429 and 5xx are
//! [`CoordError::Unavailable`] (worth retrying); every other non-2xx answer is
//! [`CoordError::Refused`] with the server's error kind and message.

use async_trait::async_trait;
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, RunId};
use gantry_protocol::{
    Claim, ClaimRequest, CoordError, Coordinator, ErrorBody, ErrorKind, EventsUpload, FinishReport,
    Heartbeat, HeartbeatAck, RegisterFactory, Registered, RenewRequest, Renewed,
};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Time allowed for a request that does not long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a finish: its answer waits for the delivery, which may fetch the
/// published result into a server that has no cache of the repository yet.
const FINISH_TIMEOUT: Duration = Duration::from_secs(300);
/// Extra time allowed for a claim beyond its long-poll wait.
const CLAIM_SLACK: Duration = Duration::from_secs(30);

/// A [`Coordinator`] that talks to a Gantry server over HTTP with a bearer token.
#[derive(Debug, Clone)]
pub struct HttpCoordinator {
    client: reqwest::Client,
    base: String,
    auth: HeaderValue,
}

impl HttpCoordinator {
    /// A coordinator for the server at `base_url` (e.g. `http://127.0.0.1:7700`),
    /// authenticating with the bearer `token` (scope `factory` or `admin`).
    pub fn new(base_url: &str, token: &str) -> Result<Self, CoordError> {
        let url = reqwest::Url::parse(base_url).map_err(|e| CoordError::Refused {
            kind: ErrorKind::InvalidUrl,
            message: format!("invalid server URL {base_url:?}: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CoordError::Refused {
                kind: ErrorKind::InvalidUrl,
                message: format!(
                    "invalid server URL {base_url:?}: the scheme must be http or https, not {:?}",
                    url.scheme()
                ),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(CoordError::Refused {
                kind: ErrorKind::InvalidUrl,
                message: format!("invalid server URL {base_url:?}: no query or fragment allowed"),
            });
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| CoordError::Refused {
                kind: ErrorKind::InvalidToken,
                message: "invalid token: it must be printable ASCII without line breaks"
                    .to_string(),
            })?;
        auth.set_sensitive(true);
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CoordError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpCoordinator {
            client,
            base: url.as_str().trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// POSTs `body` to `path` (under the base URL). `Ok(None)` is a 204 answer.
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
        run: Option<(RunId, i64)>,
    ) -> Result<Option<R>, CoordError> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .post(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| CoordError::Unavailable(format!("POST {url}: {}", error_chain(&e))))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            CoordError::Unavailable(format!(
                "POST {url}: reading the answer failed: {}",
                error_chain(&e)
            ))
        })?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            // Unit answers (events, finish) may have an empty or any JSON body.
            let parsed = if bytes.is_empty() {
                serde_json::from_slice(b"null")
            } else {
                serde_json::from_slice(&bytes)
            };
            return parsed.map(Some).map_err(|e| CoordError::Refused {
                kind: ErrorKind::InvalidResponse,
                message: format!(
                    "POST {url}: HTTP {status} with a body that is not what the API promises: {e}"
                ),
            });
        }
        Err(map_error(&url, status, &bytes, run))
    }
}

/// The error for a non-2xx answer.
fn map_error(url: &str, status: StatusCode, body: &[u8], run: Option<(RunId, i64)>) -> CoordError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = match &parsed {
        Some(b) => b.message.clone(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            } else {
                text.chars().take(500).collect()
            }
        }
    };
    let kind = parsed.map(|b| b.error);
    if let (StatusCode::CONFLICT, Some(ErrorKind::StaleLease), Some((run, epoch))) =
        (status, &kind, run)
    {
        return CoordError::StaleLease {
            run,
            epoch,
            message,
        };
    }
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return CoordError::Unavailable(format!("POST {url}: HTTP {status}: {message}"));
    }
    CoordError::Refused {
        kind: kind.unwrap_or(ErrorKind::Http(status.as_u16())),
        message: format!("POST {url}: HTTP {status}: {message}"),
    }
}

/// An error with its causes, so "connection refused" is not hidden behind "error
/// sending request".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

#[async_trait]
impl Coordinator for HttpCoordinator {
    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        let r: Option<Registered> = self
            .post("/v1/factories", reg, REQUEST_TIMEOUT, None)
            .await?;
        r.map(|r| r.id).ok_or_else(|| CoordError::Refused {
            kind: ErrorKind::InvalidResponse,
            message: "POST /v1/factories answered 204 instead of the factory id".to_string(),
        })
    }

    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        let path = format!("/v1/factories/{factory}/heartbeat");
        let ack: Option<HeartbeatAck> = self.post(&path, hb, REQUEST_TIMEOUT, None).await?;
        ack.ok_or_else(|| CoordError::Refused {
            kind: ErrorKind::InvalidResponse,
            message: format!("POST {path} answered 204 instead of the heartbeat interval"),
        })
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
        let r: Option<Renewed> = self
            .post(
                &format!("/v1/runs/{run}/renew"),
                &RenewRequest { epoch },
                REQUEST_TIMEOUT,
                Some((run, epoch)),
            )
            .await?;
        r.ok_or_else(|| CoordError::Refused {
            kind: ErrorKind::InvalidResponse,
            message: format!("POST /v1/runs/{run}/renew answered 204 instead of the lease"),
        })
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
