//! The one HTTP client of Gantry's API (`/v1`), used by the CLI and by remote
//! factories: one method per endpoint, typed with the wire types of `gantry-protocol`;
//! error bodies parsed into [`ErrorBody`] (so callers match on [`ErrorKind`]); and an
//! event stream over server-sent events ([`EventStream`]) that resumes with
//! `Last-Event-ID` when the connection drops.
//!
//! Invariant: a non-2xx answer always comes back as [`ClientError::Api`] with an
//! [`ErrorBody`]: the server's own, or, for an answer that is not a Gantry error body
//! (a proxy's page), one of kind [`ErrorKind::Http`] carrying the status and the text.

mod stream;

pub use stream::EventStream;

use bytes::Bytes;
use gantry_core::event::Event;
use gantry_core::{Job, JobId, JobState};
use gantry_protocol::{
    CreateToken, CreatedToken, ErrorBody, ErrorKind, FactoryStatus, KilledAll, Scope, Status,
    SubmitRequest, SubmitResponse, TokenInfo,
};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Jobs asked for per page of `GET /v1/jobs` (the server's most).
pub const PAGE: usize = 1000;

/// The most characters of a non-Gantry error answer kept in its message.
const MAX_RAW_ERROR_CHARS: usize = 500;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token cannot be sent in a header.
    #[error("invalid token: it must be printable ASCII without line breaks")]
    InvalidToken,
    /// The HTTP stack could not be set up.
    #[error("{message}")]
    Setup {
        /// What is wrong.
        message: String,
    },
    /// The extra CA file cannot be read or holds no usable certificate.
    #[error("cannot use the CA file {path}: {message}")]
    CaFile {
        /// The file given (`--ca-file`, `GANTRY_CA_FILE`).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The server's TLS certificate is not trusted: not signed by a system root nor by
    /// the extra CA, expired, or not for this host name.
    #[error("the server at {url} presented a TLS certificate this client does not trust: {cause}")]
    Untrusted {
        /// The URL requested.
        url: String,
        /// The certificate error and its causes, as text.
        cause: String,
    },
    /// No connection could be made (refused, timed out, DNS).
    #[error("cannot reach {url}: {cause}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The transport error and its causes, as text.
        cause: String,
    },
    /// The connection failed after it was made (the answer could not be read).
    #[error("talking to {url} failed: {cause}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The transport error and its causes, as text.
        cause: String,
    },
    /// The token file could not be read.
    #[error("cannot read the API token from {path}: {source}")]
    TokenFile {
        /// `<data-dir>/admin.token`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server answered with an error status.
    #[error("HTTP {status} {}: {}", body.error, body.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error body, or one of kind [`ErrorKind::Http`] for an answer
        /// that is not a Gantry error body.
        body: ErrorBody,
    },
    /// The server answered something that is not what the API promises.
    #[error("unexpected answer from {url}: {message}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// An event stream dropped and reconnecting kept failing.
    #[error("the event stream from {url} dropped: {message}")]
    StreamLost {
        /// The stream's URL.
        url: String,
        /// The last failure.
        message: String,
    },
}

/// Result of client calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A status as HTTP writes it, e.g. `409 Conflict`.
pub fn status_line(status: u16) -> String {
    match reqwest::StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    }
}

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    auth: Option<HeaderValue>,
    http: reqwest::Client,
}

/// The text of an error and all its causes, joined by ": ", so "connection refused" is
/// not hidden behind "error sending request".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a TLS certificate check failed somewhere in `e`'s causes. The rustls error
/// sits inside an `io::Error`, whose `source()` skips it, so each `io::Error`'s inner
/// error is looked at too.
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let rejected = |e: &(dyn std::error::Error + 'static)| {
        matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        )
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        if rejected(err) {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && (rejected(inner) || is_certificate_error(inner))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The error for a transport failure on `url`.
fn transport(url: &str, e: &reqwest::Error) -> ClientError {
    if is_certificate_error(e) {
        ClientError::Untrusted {
            url: url.to_string(),
            cause: chain(e),
        }
    } else if e.is_connect() || e.is_timeout() {
        ClientError::Unreachable {
            url: url.to_string(),
            cause: chain(e),
        }
    } else {
        ClientError::Transport {
            url: url.to_string(),
            cause: chain(e),
        }
    }
}

/// The error body of a non-2xx answer: the server's, or one of kind
/// [`ErrorKind::Http`] naming the status and the start of the text.
fn error_body(url: &str, status: reqwest::StatusCode, bytes: &[u8]) -> ErrorBody {
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(bytes) {
        return body;
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let text: String = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        text.chars().take(MAX_RAW_ERROR_CHARS).collect()
    };
    ErrorBody::new(
        ErrorKind::Http(status.as_u16()),
        format!("request to {url} answered HTTP {status}: {text}"),
    )
}

/// How a [`Client`] connects: the connect timeout and the trust of `https://` servers.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time allowed to open a connection (TCP and, for `https://`, the TLS handshake).
    pub connect_timeout: Duration,
    /// A PEM file of CA certificates trusted besides the system's roots (for a server
    /// whose certificate a private CA signed).
    pub ca_file: Option<PathBuf>,
}

impl ClientOptions {
    /// Options with `connect_timeout` and the system's roots only.
    pub fn new(connect_timeout: Duration) -> ClientOptions {
        ClientOptions {
            connect_timeout,
            ca_file: None,
        }
    }

    /// The same options, also trusting the CA certificates in `ca_file` when given.
    pub fn ca_file(mut self, ca_file: Option<&Path>) -> ClientOptions {
        self.ca_file = ca_file.map(Path::to_path_buf);
        self
    }
}

/// The certificates of the PEM file `path`: at least one, each parsed.
fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let bad = |message: String| ClientError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate bundle: {}", chain(&e))))?;
    if certs.is_empty() {
        return Err(bad(
            "it holds no certificate (expected PEM blocks of -----BEGIN CERTIFICATE-----)"
                .to_string(),
        ));
    }
    Ok(certs)
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7700`), sending `token`
    /// as a bearer token when given, giving up a connection after `connect_timeout`.
    /// An `https://` server must present a certificate the system's roots trust.
    pub fn new(base: &str, token: Option<&str>, connect_timeout: Duration) -> Result<Client> {
        Client::with_options(base, token, &ClientOptions::new(connect_timeout))
    }

    /// A client of the server at `base` (`http://` or `https://`), sending `token` as a
    /// bearer token when given, connecting as `opts` says. An `https://` server must
    /// present a certificate that the system's roots or the CAs of `opts.ca_file` trust.
    pub fn with_options(base: &str, token: Option<&str>, opts: &ClientOptions) -> Result<Client> {
        let auth = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| ClientError::InvalidToken)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(opts.connect_timeout);
        if let Some(path) = &opts.ca_file {
            builder = builder.tls_certs_merge(read_ca_file(path)?);
        }
        let http = builder.build().map_err(|e| ClientError::Setup {
            message: format!("cannot set up the HTTP client: {}", chain(&e)),
        })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            auth,
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.auth {
            Some(a) => rb.header(AUTHORIZATION, a.clone()),
            None => rb,
        }
    }

    /// Sends `rb`; a non-2xx answer is [`ClientError::Api`].
    async fn send(&self, rb: reqwest::RequestBuilder, path: &str) -> Result<reqwest::Response> {
        let url = self.url(path);
        let resp = rb.send().await.map_err(|e| transport(&url, &e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| transport(&url, &e))?;
        Err(ClientError::Api {
            status: status.as_u16(),
            body: error_body(&url, status, &bytes),
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T> {
        let url = self.url(path);
        let resp = self.send(rb, path).await?;
        let bytes = resp.bytes().await.map_err(|e| transport(&url, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            url,
            message: format!("cannot decode the JSON answer: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.request(reqwest::Method::GET, path), path)
            .await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json(self.request(reqwest::Method::POST, path), path)
            .await
    }

    /// POSTs `body` as JSON to `path` within `timeout`. `Ok(None)` is a 204 answer; an
    /// empty 2xx body reads as JSON `null` (unit answers may have none).
    pub async fn post_json<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>> {
        let url = self.url(path);
        let rb = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .timeout(timeout);
        let resp = self.send(rb, path).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport(&url, &e))?;
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| ClientError::BadResponse {
                url,
                message: format!(
                    "HTTP {status} with a body that is not what the API promises: {e}"
                ),
            })
    }

    /// `POST /v1/jobs`: submits a batch of job files, stored all or nothing.
    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse> {
        let path = "/v1/jobs";
        self.json(self.request(reqwest::Method::POST, path).json(req), path)
            .await
    }

    /// `GET /v1/jobs`: jobs, newest first, `limit` of them (all when `None`), following
    /// the server's pages (at most [`PAGE`] jobs each) with the `before` cursor.
    pub async fn jobs(&self, state: Option<JobState>, limit: Option<u32>) -> Result<Vec<Job>> {
        let wanted = limit.map_or(usize::MAX, |l| l as usize);
        let mut jobs: Vec<Job> = Vec::new();
        loop {
            let page = (wanted - jobs.len()).min(PAGE);
            let mut q = vec![format!("limit={page}")];
            if let Some(s) = state {
                q.push(format!("state={}", s.as_str()));
            }
            if let Some(last) = jobs.last() {
                q.push(format!("before={}", last.id));
            }
            let got: Vec<Job> = self.get(&format!("/v1/jobs?{}", q.join("&"))).await?;
            let full = got.len() == page;
            jobs.extend(got);
            if !full || jobs.len() >= wanted {
                return Ok(jobs);
            }
        }
    }

    /// `GET /v1/jobs/{id}`: one job with its runs, as typed values.
    pub async fn job(&self, id: JobId) -> Result<Job> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// `GET /v1/jobs/{id}`: one job with its runs, exactly as the server sent it.
    pub async fn job_value(&self, id: JobId) -> Result<serde_json::Value> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// `GET /v1/jobs/{id}/diff`: the diff of the latest attempt.
    pub async fn diff(&self, id: JobId) -> Result<Bytes> {
        let path = format!("/v1/jobs/{id}/diff");
        let url = self.url(&path);
        let resp = self
            .send(self.request(reqwest::Method::GET, &path), &path)
            .await?;
        resp.bytes().await.map_err(|e| transport(&url, &e))
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        self.post(&format!("/v1/jobs/{id}/cancel")).await
    }

    /// `POST /v1/jobs/{id}/kill`.
    pub async fn kill(&self, id: JobId) -> Result<Job> {
        self.post(&format!("/v1/jobs/{id}/kill")).await
    }

    /// `POST /v1/jobs/{id}/retry`.
    pub async fn retry(&self, id: JobId) -> Result<Job> {
        self.post(&format!("/v1/jobs/{id}/retry")).await
    }

    /// `POST /v1/kill-all`: kills every running job and pauses claiming.
    pub async fn kill_all(&self) -> Result<KilledAll> {
        self.post("/v1/kill-all").await
    }

    /// `POST /v1/pause`.
    pub async fn pause(&self) -> Result<Status> {
        self.post("/v1/pause").await
    }

    /// `POST /v1/resume`.
    pub async fn resume(&self) -> Result<Status> {
        self.post("/v1/resume").await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status> {
        self.get("/v1/status").await
    }

    /// `GET /v1/factories`: every registered factory with its running jobs and health.
    pub async fn factories(&self) -> Result<Vec<FactoryStatus>> {
        self.get("/v1/factories").await
    }

    /// `GET /v1/events?after=&job=&limit=`: one page of events, oldest first.
    pub async fn events_page(
        &self,
        job: Option<JobId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let mut path = format!("/v1/events?after={after}&limit={limit}");
        if let Some(j) = job {
            path.push_str(&format!("&job={j}"));
        }
        self.get(&path).await
    }

    /// Every event after `after` (of one job, or all), paging until the server has no
    /// more.
    pub async fn all_events(&self, job: Option<JobId>, after: i64) -> Result<Vec<Event>> {
        const PAGE: u32 = 1000;
        let mut out: Vec<Event> = Vec::new();
        let mut after = after;
        loop {
            let page = self.events_page(job, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            if last.id <= after {
                // A server that does not honour `after` would make this loop forever.
                return Err(ClientError::BadResponse {
                    url: self.url("/v1/events"),
                    message: format!("asked for events after {after}, got event {}", last.id),
                });
            }
            after = last.id;
            out.extend(page);
        }
        Ok(out)
    }

    /// `POST /v1/tokens`: creates a token; the answer holds its secret.
    pub async fn create_token(&self, name: &str, scope: Scope) -> Result<CreatedToken> {
        let path = "/v1/tokens";
        let body = CreateToken {
            name: name.to_string(),
            scope,
        };
        self.json(self.request(reqwest::Method::POST, path).json(&body), path)
            .await
    }

    /// `GET /v1/tokens`.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.get("/v1/tokens").await
    }

    /// `DELETE /v1/tokens/{name}`: revokes a token. Returns its record when the server
    /// sends one.
    pub async fn revoke_token(&self, name: &str) -> Result<Option<TokenInfo>> {
        let path = format!("/v1/tokens/{}", encode_segment(name));
        let url = self.url(&path);
        let resp = self
            .send(self.request(reqwest::Method::DELETE, &path), &path)
            .await?;
        let bytes = resp.bytes().await.map_err(|e| transport(&url, &e))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(serde_json::from_slice::<TokenInfo>(&bytes).ok())
    }

    /// A live stream of events after `after` (of one job, or all) over server-sent
    /// events. When the connection drops, the stream reconnects with `Last-Event-ID`
    /// set to the last event it yielded, so no event is lost or repeated.
    pub fn event_stream(&self, job: Option<JobId>, after: i64) -> EventStream {
        EventStream::new(self.clone(), job, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("ci-bot_1.x"), "ci-bot_1.x");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn error_bodies_are_parsed_into_kinds() {
        let url = "http://h/v1/runs/1/renew";
        let body = error_body(
            url,
            reqwest::StatusCode::CONFLICT,
            br#"{"error":"stale_lease","message":"gone"}"#,
        );
        assert_eq!(body.error, ErrorKind::StaleLease);
        assert_eq!(body.message, "gone");
        let raw = error_body(url, reqwest::StatusCode::BAD_GATEWAY, b" bad gateway\n");
        assert_eq!(raw.error, ErrorKind::Http(502));
        assert_eq!(
            raw.message,
            format!("request to {url} answered HTTP 502 Bad Gateway: bad gateway")
        );
    }
}
