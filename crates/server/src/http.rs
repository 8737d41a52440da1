//! The HTTP API under `/v1`: routes, handlers and the event stream.

use crate::auth::{Administer, Authed, Operate, Read, RunFactory, Submit, new_token_secret};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam, QueryParams};
use crate::limits::StreamSlot;
use crate::service::{POLL_FALLBACK, Service, stopped};
use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Router, http::Method, http::Uri};
use futures_util::Stream;
use gantry_core::event::Event;
use gantry_core::{FactoryId, Job, JobId, JobState, RunId};
use gantry_protocol::{
    ClaimRequest, CreateToken, CreatedToken, ErrorKind, EventsUpload, FactoryStatus, FinishReport,
    HealthCheck, Heartbeat, HeartbeatAck, KilledAll, MAX_REPORTED_DIFF_BYTES, RegisterFactory,
    Registered, RenewRequest, Status, SubmitRequest, SubmitResponse, TokenInfo,
};
use gantry_store::JobFilter;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Largest accepted request body: job batches and event uploads with output fit well.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Largest accepted finish report: a diff of [`MAX_REPORTED_DIFF_BYTES`] grows up to
/// six times as JSON (a control character is written `\u001b`), plus room for the
/// rest of the report. A diff over the limit in a body under this one is refused with
/// a 400 naming the field, by the service.
const FINISH_BODY_LIMIT: usize = 6 * MAX_REPORTED_DIFF_BYTES + (1 << 20);

/// Events per page when none is asked for.
const DEFAULT_EVENTS_LIMIT: usize = 1000;
/// Largest page of events.
const MAX_EVENTS_LIMIT: usize = 10_000;
/// Events read from the store per query while streaming.
const STREAM_BATCH: usize = 500;
/// Interval of the keep-alive comments on an idle event stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The API router over `service`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/diff", get(job_diff))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/kill", post(kill))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/kill-all", post(kill_all))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/factories", post(register_factory).get(list_factories))
        .route("/v1/factories/{id}/claim", post(claim))
        .route("/v1/factories/{id}/heartbeat", post(heartbeat))
        .route("/v1/runs/{id}/renew", post(renew))
        .route("/v1/runs/{id}/events", post(upload_events))
        .route(
            "/v1/runs/{id}/finish",
            post(finish).layer(DefaultBodyLimit::max(FINISH_BODY_LIMIT)),
        )
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{name}", delete(revoke_token))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(service)
}

type Svc = State<Arc<Service>>;

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
        .with_hint("the API lives under /v1 (e.g. GET /v1/health, GET /v1/jobs)")
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::MethodNotAllowed,
        format!("{} does not accept {method}", uri.path()),
    )
}

/// `GET /metrics` (scope `reader` or above).
async fn metrics(State(svc): State<Arc<Service>>, _: Authed<Read>) -> Result<Response, ApiError> {
    let body = svc.metrics().render(&**svc.store()).await?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE_TEXT)], body).into_response())
}

async fn health() -> Json<HealthCheck> {
    Json(HealthCheck { ok: true })
}

async fn submit(
    State(svc): Svc,
    Authed(caller, _): Authed<Submit>,
    JsonBody(req): JsonBody<SubmitRequest>,
) -> Result<Json<SubmitResponse>, ApiError> {
    let resp = svc.submit(req, &caller.token).await?;
    let ids: Vec<JobId> = resp.jobs.iter().map(|s| s.id).collect();
    tracing::info!(token = %caller.token.name, jobs = ?ids, "jobs submitted");
    Ok(Json(resp))
}

/// Jobs a list answers when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The most jobs one list answers: more takes more pages (`before`, and the `Link`
/// header names the next one).
pub const MAX_LIST_LIMIT: usize = 1000;

async fn list_jobs(State(svc): Svc, _: Authed<Read>, q: QueryParams) -> Result<Response, ApiError> {
    q.only(&["state", "limit", "before"])?;
    let limit = q.get::<usize>("limit")?.unwrap_or(DEFAULT_LIST_LIMIT);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::bad_request(format!(
            "invalid value {limit} for query parameter `limit`: a page holds 1 to {MAX_LIST_LIMIT} jobs; `before` pages through more"
        ))
        .with_details(json!({ "field": "limit", "value": limit })));
    }
    let state = q.get::<JobState>("state")?;
    let filter = JobFilter {
        state,
        limit: Some(limit),
        before: q.get::<i64>("before")?.map(JobId),
    };
    // A list carries no bodies (the store leaves them out): ten jobs with large
    // instructions made one list answer hundreds of megabytes. The whole spec comes
    // with `GET /v1/jobs/{id}`.
    let jobs = svc.store().jobs(&filter).await?;
    let mut headers = HeaderMap::new();
    // A full page may have more behind it: name the next one (RFC 8288), as a cursor
    // rather than an offset, so jobs submitted meanwhile never shift the pages.
    if jobs.len() == limit
        && let Some(last) = jobs.last()
    {
        let state = state
            .map(|s| format!("&state={}", s.as_str()))
            .unwrap_or_default();
        let next = format!(
            "</v1/jobs?limit={limit}&before={}{state}>; rel=\"next\"",
            last.id
        );
        if let Ok(v) = axum::http::HeaderValue::from_str(&next) {
            headers.insert(axum::http::header::LINK, v);
        }
    }
    Ok((headers, Json(jobs)).into_response())
}

async fn show_job(
    State(svc): Svc,
    _: Authed<Read>,
    PathParam(id): PathParam<JobId>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(svc.job_with_runs(id).await?))
}

async fn job_diff(
    State(svc): Svc,
    _: Authed<Read>,
    PathParam(id): PathParam<JobId>,
) -> Result<Response, ApiError> {
    let diff = svc.diff(id).await?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], diff).into_response())
}

async fn cancel(
    State(svc): Svc,
    Authed(caller, _): Authed<Operate>,
    PathParam(id): PathParam<JobId>,
) -> Result<Json<Job>, ApiError> {
    let job = svc.store().cancel(id).await?;
    svc.stop_asked();
    tracing::info!(token = %caller.token.name, job = %id, state = %job.state, "cancel asked");
    Ok(Json(job))
}

async fn kill(
    State(svc): Svc,
    Authed(caller, _): Authed<Operate>,
    PathParam(id): PathParam<JobId>,
) -> Result<Json<Job>, ApiError> {
    let job = svc.store().kill(id).await?;
    svc.stop_asked();
    tracing::info!(token = %caller.token.name, job = %id, state = %job.state, "kill asked");
    Ok(Json(job))
}

async fn retry(
    State(svc): Svc,
    Authed(caller, _): Authed<Operate>,
    PathParam(id): PathParam<JobId>,
) -> Result<Json<Job>, ApiError> {
    let job = svc.store().retry(id).await?;
    tracing::info!(token = %caller.token.name, job = %id, state = %job.state, "retry asked");
    Ok(Json(job))
}

async fn kill_all(
    State(svc): Svc,
    Authed(caller, _): Authed<Operate>,
) -> Result<Json<KilledAll>, ApiError> {
    let jobs = svc.store().kill_all().await?;
    svc.stop_asked();
    tracing::warn!(token = %caller.token.name, ?jobs, "kill-all: claiming paused");
    Ok(Json(KilledAll { jobs }))
}

async fn pause(
    State(svc): Svc,
    Authed(caller, _): Authed<Operate>,
) -> Result<Json<Status>, ApiError> {
    svc.store().set_paused(true).await?;
    tracing::info!(token = %caller.token.name, "claiming paused");
    Ok(Json(svc.store().status().await?))
}

async fn resume(
    State(svc): Svc,
    Authed(caller, _): Authed<Operate>,
) -> Result<Json<Status>, ApiError> {
    svc.store().set_paused(false).await?;
    tracing::info!(token = %caller.token.name, "claiming resumed");
    Ok(Json(svc.store().status().await?))
}

async fn status(State(svc): Svc, _: Authed<Read>) -> Result<Json<Status>, ApiError> {
    Ok(Json(svc.store().status().await?))
}

/// `GET /v1/events`: an SSE stream when the client accepts `text/event-stream`, else a
/// JSON page.
async fn events(
    State(svc): Svc,
    Authed(caller, _): Authed<Read>,
    headers: HeaderMap,
    q: QueryParams,
) -> Result<Response, ApiError> {
    q.only(&["job", "after", "limit"])?;
    let job = q.get::<JobId>("job")?;
    let after = q.get::<i64>("after")?.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request(format!(
            "invalid value \"{after}\" for query parameter `after`: must be 0 or more"
        ))
        .with_details(json!({ "field": "after", "value": after })));
    }
    if let Some(job) = job {
        // A stream of a job that does not exist would wait forever for nothing.
        svc.store().job(job).await?;
    }
    let wants_stream = headers
        .get_all(ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/event-stream")));
    if wants_stream {
        let after = match headers.get("last-event-id") {
            None => after,
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid Last-Event-ID header {v:?}: expected an event id (an integer \
                         0 or more)"
                    ))
                    .with_details(json!({ "field": "Last-Event-ID" }))
                })?,
        };
        let limits = &svc.config().limits;
        let slot = svc
            .streams()
            .take(&caller.token.name, limits.max_streams_per_token)?;
        // Keep-alives also keep the stream from being closed as idle.
        let keep_alive = KEEP_ALIVE.min(limits.longest_silence());
        let stream = event_stream(svc, job, after, slot);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
            .into_response());
    }
    let limit = q.get::<usize>("limit")?.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if limit == 0 || limit > MAX_EVENTS_LIMIT {
        return Err(ApiError::bad_request(format!(
            "invalid value \"{limit}\" for query parameter `limit`: must be 1..={MAX_EVENTS_LIMIT}"
        ))
        .with_details(json!({ "field": "limit", "value": limit })));
    }
    Ok(Json(svc.store().events(after, job, limit).await?).into_response())
}

/// State of one event stream.
struct Follow {
    svc: Arc<Service>,
    job: Option<JobId>,
    /// Id of the last event sent.
    after: i64,
    buf: VecDeque<Event>,
    changes: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The token's stream slot, freed when the stream is dropped.
    _slot: StreamSlot,
}

/// Stored events after `after`, then live ones as they are recorded. Ends when the
/// server shuts down or the store fails (the client reconnects with `Last-Event-ID` and
/// loses nothing).
fn event_stream(
    svc: Arc<Service>,
    job: Option<JobId>,
    after: i64,
    slot: StreamSlot,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let follow = Follow {
        changes: svc.store().changes(),
        shutdown: svc.shutdown_signal(),
        svc,
        job,
        after,
        buf: VecDeque::new(),
        _slot: slot,
    };
    futures_util::stream::unfold(follow, |mut st| async move {
        loop {
            if let Some(ev) = st.buf.pop_front() {
                st.after = ev.id;
                return Some((Ok(sse_event(&ev)), st));
            }
            if *st.shutdown.borrow() {
                return None;
            }
            // Seen before querying, so an event committed during the query still wakes
            // the wait below.
            st.changes.borrow_and_update();
            match st.svc.store().events(st.after, st.job, STREAM_BATCH).await {
                Ok(events) if !events.is_empty() => {
                    st.buf.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, after = st.after, "event stream ends: store error");
                    return None;
                }
            }
            tokio::select! {
                changed = st.changes.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(POLL_FALLBACK).await;
                    }
                }
                _ = tokio::time::sleep(POLL_FALLBACK) => {}
                _ = stopped(&mut st.shutdown) => return None,
            }
        }
    })
}

/// One stored event as SSE: `id:` the event id, `event:` its kind, `data:` its JSON.
fn sse_event(ev: &Event) -> SseEvent {
    let out = match SseEvent::default().json_data(ev) {
        Ok(out) => out.id(ev.id.to_string()),
        Err(e) => {
            return SseEvent::default()
                .id(ev.id.to_string())
                .comment(format!("event {} cannot be encoded: {e}", ev.id));
        }
    };
    // An SSE field cannot hold a line break; such a kind stays in the data only.
    if ev.kind.contains(['\n', '\r']) {
        out
    } else {
        out.event(&ev.kind)
    }
}

/// `POST /v1/factories`: a factory name belongs to the token that registered it first,
/// and a factory token is bound to the first factory it registers (see
/// [`Service::register_for_token`]).
async fn register_factory(
    State(svc): Svc,
    Authed(caller, _): Authed<RunFactory>,
    JsonBody(reg): JsonBody<RegisterFactory>,
) -> Result<Json<Registered>, ApiError> {
    let id = svc.register_for_token(&caller.token, &reg).await?;
    tracing::info!(
        token = %caller.token.name, factory = %id, name = %reg.name,
        "factory registered"
    );
    Ok(Json(Registered { id }))
}

async fn list_factories(
    State(svc): Svc,
    _: Authed<Read>,
) -> Result<Json<Vec<FactoryStatus>>, ApiError> {
    Ok(Json(svc.factories().await?))
}

async fn heartbeat(
    State(svc): Svc,
    Authed(caller, _): Authed<RunFactory>,
    PathParam(id): PathParam<FactoryId>,
    JsonBody(hb): JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    caller.require_factory(&svc, id).await?;
    Ok(Json(svc.heartbeat(id, &hb).await?))
}

async fn claim(
    State(svc): Svc,
    Authed(caller, _): Authed<RunFactory>,
    PathParam(id): PathParam<FactoryId>,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<Response, ApiError> {
    caller.require_factory(&svc, id).await?;
    // A waiting claim sends nothing, so it must end well before the connection would
    // be closed as idle; the factory simply asks again.
    let wait = Duration::from_secs(req.wait_s).min(svc.config().limits.longest_silence());
    match svc.claim(id, wait).await? {
        Some(claim) => Ok(Json(claim).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn renew(
    State(svc): Svc,
    Authed(caller, _): Authed<RunFactory>,
    PathParam(id): PathParam<RunId>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> Result<Response, ApiError> {
    caller.require_run(&svc, id).await?;
    Ok(Json(svc.renew(id, req.epoch).await?).into_response())
}

async fn upload_events(
    State(svc): Svc,
    Authed(caller, _): Authed<RunFactory>,
    PathParam(id): PathParam<RunId>,
    JsonBody(req): JsonBody<EventsUpload>,
) -> Result<StatusCode, ApiError> {
    caller.require_run(&svc, id).await?;
    svc.append_events(id, req.epoch, req.events).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn finish(
    State(svc): Svc,
    Authed(caller, _): Authed<RunFactory>,
    PathParam(id): PathParam<RunId>,
    JsonBody(report): JsonBody<FinishReport>,
) -> Result<Json<Job>, ApiError> {
    caller.require_run(&svc, id).await?;
    Ok(Json(svc.finish(id, report).await?))
}

/// Longest token name.
const MAX_TOKEN_NAME: usize = 64;

async fn create_token(
    State(svc): Svc,
    Authed(caller, _): Authed<Administer>,
    JsonBody(req): JsonBody<CreateToken>,
) -> Result<Json<CreatedToken>, ApiError> {
    let valid = !req.name.is_empty()
        && req.name.len() <= MAX_TOKEN_NAME
        && req
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid {
        return Err(ApiError::bad_request(format!(
            "field `name` is {:?}: a token name is 1 to {MAX_TOKEN_NAME} characters of \
             letters, digits, `-`, `_`, `.` and `@`",
            req.name
        ))
        .with_details(json!({ "field": "name", "value": req.name })));
    }
    let token = new_token_secret();
    let info = svc
        .store()
        .create_token(&req.name, req.scope, &crate::auth::hash_token(&token))
        .await?;
    tracing::info!(token = %caller.token.name, name = %info.name, scope = %info.scope, "token created");
    Ok(Json(CreatedToken { info, token }))
}

async fn list_tokens(
    State(svc): Svc,
    _: Authed<Administer>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(svc.store().tokens().await?))
}

async fn revoke_token(
    State(svc): Svc,
    Authed(caller, _): Authed<Administer>,
    PathParam(name): PathParam<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let info = svc.store().revoke_token(&name).await?;
    tracing::info!(token = %caller.token.name, %name, "token revoked");
    Ok(Json(info))
}
