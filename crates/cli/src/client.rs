//! The HTTP client of Gantry's API (`/v1`): one method per endpoint, typed with the
//! wire types of `gantry_core::api`, plus an event stream over server-sent events that
//! resumes with `Last-Event-ID` when the connection drops.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use gantry_core::event::Event;
use gantry_core::retry::Backoff;
use gantry_core::{Job, JobId, JobState};
use gantry_protocol::{
    CreateToken, CreatedToken, ErrorBody, ErrorKind, FactoryStatus, KilledAll, Scope, Status,
    SubmitRequest, SubmitResponse, TokenInfo,
};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// Jobs asked for per page of `GET /v1/jobs` (the server's most).
pub const PAGE: usize = 1000;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (refused, timed out, DNS).
    #[error("cannot reach {url}: {cause}")]
    Unreachable {
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
    /// The server answered with an error body.
    #[error("HTTP {status} {}: {}", body.error, body.message)]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error body.
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

/// A client of one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// The text of an error and all its causes, joined by ": ".
fn chain(e: &dyn std::error::Error) -> String {
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

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7700`), sending `token`
    /// as a bearer token when given.
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::BadResponse {
                url: base.to_string(),
                message: format!("cannot set up the HTTP client: {}", chain(&e)),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, path: &str) -> Result<reqwest::Response> {
        let url = self.url(path);
        let resp = rb.send().await.map_err(|e| transport(&url, &e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| transport(&url, &e))?;
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => Err(ClientError::Api {
                status: status.as_u16(),
                body: ErrorBody {
                    error: ErrorKind::parse(
                        &status
                            .canonical_reason()
                            .unwrap_or("error")
                            .to_lowercase()
                            .replace(' ', "_"),
                    ),
                    message: format!(
                        "{} {} answered HTTP {status}: {}",
                        "request to",
                        url,
                        String::from_utf8_lossy(&bytes).trim()
                    ),
                    hint: None,
                    details: serde_json::Value::Null,
                },
            }),
        }
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
        EventStream {
            client: self.clone(),
            job,
            last_id: after,
            body: None,
            parser: SseParser::default(),
            ready: VecDeque::new(),
            failures: 0,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(3)),
        }
    }
}

fn transport(url: &str, e: &reqwest::Error) -> ClientError {
    if e.is_connect() || e.is_timeout() {
        ClientError::Unreachable {
            url: url.to_string(),
            cause: chain(e),
        }
    } else {
        ClientError::BadResponse {
            url: url.to_string(),
            message: chain(e),
        }
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Events as they happen; see [`Client::event_stream`].
pub struct EventStream {
    client: Client,
    job: Option<JobId>,
    last_id: i64,
    body: Option<Body>,
    parser: SseParser,
    ready: VecDeque<Event>,
    failures: u32,
    /// Pauses between reconnections: from 200 ms, capped at 3 s, 6 to 12 s in all
    /// before giving up.
    backoff: Backoff,
}

/// Reconnect attempts in a row before a dropped stream is given up.
const MAX_RECONNECTS: u32 = 8;

impl EventStream {
    /// The id of the last event yielded (or the starting point).
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    fn path(&self) -> String {
        match self.job {
            Some(j) => format!("/v1/events?job={j}"),
            None => "/v1/events".to_string(),
        }
    }

    async fn connect(&mut self) -> Result<()> {
        let path = self.path();
        let rb = self
            .client
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header("Last-Event-ID", self.last_id.to_string());
        let resp = self.client.send(rb, &path).await?;
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !ctype.starts_with("text/event-stream") {
            return Err(ClientError::BadResponse {
                url: self.client.url(&path),
                message: format!("expected text/event-stream, got content type {ctype:?}"),
            });
        }
        self.parser = SseParser::default();
        self.body = Some(Box::pin(resp.bytes_stream()));
        Ok(())
    }

    /// The next event. `None` never happens on a live server: the stream waits for new
    /// events. Errors are final (the server refused the stream, or reconnecting failed
    /// [`MAX_RECONNECTS`] times in a row).
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                // A replay after a reconnect may repeat what we already yielded if the
                // server ignored Last-Event-ID; the global id orders everything, so
                // anything not newer is a duplicate.
                if ev.id > self.last_id {
                    self.last_id = ev.id;
                    return Ok(ev);
                }
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                match self.connect().await {
                    Ok(()) => continue,
                    Err(e @ ClientError::Api { .. }) | Err(e @ ClientError::TokenFile { .. }) => {
                        return Err(e);
                    }
                    Err(e) => {
                        self.reconnect_pause(e).await?;
                        continue;
                    }
                }
            };
            match body.next().await {
                Some(Ok(chunk)) => {
                    for msg in self.parser.push(&chunk) {
                        if msg.data.is_empty() {
                            continue;
                        }
                        let ev: Event = serde_json::from_str(&msg.data).map_err(|e| {
                            ClientError::BadResponse {
                                url: self.client.url(&self.path()),
                                message: format!("cannot decode event {:?}: {e}", msg.data),
                            }
                        })?;
                        self.ready.push_back(ev);
                    }
                    self.failures = 0;
                    self.backoff.reset();
                }
                Some(Err(e)) => {
                    self.body = None;
                    let err = transport(&self.client.url(&self.path()), &e);
                    self.reconnect_pause(err).await?;
                }
                None => {
                    self.body = None;
                    let err = ClientError::BadResponse {
                        url: self.client.url(&self.path()),
                        message: "the server closed the stream".to_string(),
                    };
                    self.reconnect_pause(err).await?;
                }
            }
        }
    }

    async fn reconnect_pause(&mut self, err: ClientError) -> Result<()> {
        self.failures += 1;
        if self.failures > MAX_RECONNECTS {
            return Err(ClientError::StreamLost {
                url: self.client.url(&self.path()),
                message: err.to_string(),
            });
        }
        tracing::debug!(error = %err, attempt = self.failures, last_id = self.last_id, "event stream dropped; reconnecting");
        tokio::time::sleep(self.backoff.next_delay()).await;
        Ok(())
    }
}

/// One server-sent event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` field.
    pub event: Option<String>,
    /// `data:` lines joined by newlines.
    pub data: String,
}

/// An incremental parser of the `text/event-stream` format.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseMessage,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; returns the messages completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data || self.cur.id.is_some() || self.cur.event.is_some() {
                    out.push(std::mem::take(&mut self.cur));
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "id" => self.cur.id = Some(value.to_string()),
                "event" => self.cur.event = Some(value.to_string()),
                "data" => {
                    if self.has_data {
                        self.cur.data.push('\n');
                    }
                    self.cur.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_comments_and_crlf() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nid: 7\nevent: run.out").is_empty());
        let msgs = p.push(b"put\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 8\ndata:x\n\n");
        assert_eq!(
            msgs,
            vec![
                SseMessage {
                    id: Some("7".into()),
                    event: Some("run.output".into()),
                    data: "{\"a\":\n1}".into()
                },
                SseMessage {
                    id: Some("8".into()),
                    event: None,
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("ci-bot_1.x"), "ci-bot_1.x");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
