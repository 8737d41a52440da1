//! The HTTP server loop: accepts connections up to a cap, serves each with hyper's
//! HTTP/1 (over TLS when the server has a certificate), and closes connections whose
//! request header is late or on which nothing moves.
//!
//! With TLS the handshake runs inside the connection's task, under the same cap and
//! clocks: it counts toward the first request's header deadline, which runs from the
//! moment the connection opened, so a client that stalls its handshake is closed like
//! one that stalls its header, and a flood of handshakes is bounded by the cap.
//!
//! `axum::serve` sets none of these (hyper's header timeout needs a timer it does not
//! give), so a client sending a header line every few seconds, or nothing at all, held
//! a connection forever, and any number of them could be open.

use crate::limits::Limits;
use crate::service::stopped;
use axum::Router;
use axum::body::Body;
use gantry_protocol::{ErrorBody, ErrorKind};
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// How long a refused connection is given to take its 503 answer.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Most refused connections being answered at once; past it a refused connection is
/// closed without an answer, so a flood of connections cannot pile up refusal tasks.
const MAX_REFUSALS: usize = 64;

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` (through `tls` when given) until `shutdown` turns
/// true, then lets open connections finish their requests (event streams and long
/// polls end on shutdown) and returns once every connection is closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut tasks = JoinSet::new();
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "a connection task failed");
                }
                continue;
            }
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed; trying again");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                refusing = false;
                tasks.spawn(connection(
                    stream,
                    router.clone(),
                    limits.clone(),
                    tls.clone(),
                    permit,
                    shutdown.clone(),
                ));
            }
            Err(_) => {
                // Logged once per spell of refusals, so a flood does not flood the log.
                if !refusing {
                    tracing::warn!(
                        %peer, max_connections = limits.max_connections,
                        "refusing connections: too many open"
                    );
                }
                refusing = true;
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tasks.spawn(refuse(stream, limits.max_connections, tls.clone(), permit));
                }
            }
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Whether an accept error concerns only the connection being accepted (the peer
/// gave up), so the next accept may go on at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection (after its TLS handshake, with `tls`) until it closes, misses
/// its header deadline, stays silent past the idle timeout, or the server shuts down
/// (then it finishes the request in flight first). It holds `permit` until then.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(limits.header_read_timeout));
    // The socket is watched under TLS, so handshake and record bytes count as movement
    // and the deadlines cover the handshake too.
    let watched = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    match tls {
        None => http(watched, router, &limits, &activity, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                done = acceptor.accept(watched) => done,
                why = activity.overdue(limits.idle_timeout) => {
                    tracing::debug!(
                        header_read_timeout = ?limits.header_read_timeout,
                        "closing a connection during its TLS handshake: {why}"
                    );
                    return;
                }
                _ = stopped(&mut shutdown) => return,
            };
            match handshake {
                Ok(stream) => http(stream, router, &limits, &activity, shutdown).await,
                // A client that does not trust the certificate, or speaks plain HTTP to
                // a TLS port, ends here; its side has the reason.
                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
            }
        }
    }
    drop(permit);
}

/// Serves HTTP/1 on one connection's `io` until it closes, misses its header deadline,
/// stays silent past the idle timeout, or the server shuts down.
async fn http<I>(
    io: I,
    router: Router,
    limits: &Limits,
    activity: &Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let inner = TowerToHyperService::new(router);
    let requests = activity.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let guard = InFlight::start(&requests);
        let answer = inner.call(req);
        async move {
            let resp = answer.await?;
            // The request counts as in flight until its whole response is written
            // (hyper drops the body then), so a long response is no header wait.
            Ok::<_, Infallible>(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _held = &guard;
                    frame
                }))
            }))
        }
    });
    // The header timeout is kept here rather than by hyper: hyper's also runs while a
    // kept-alive connection waits for its next request, which would close idle
    // connections that clients expect to reuse after the header timeout already.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stopped(&mut shutdown), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            why = activity.overdue(limits.idle_timeout) => {
                tracing::debug!(
                    header_read_timeout = ?limits.header_read_timeout,
                    idle_timeout = ?limits.idle_timeout,
                    "closing a connection: {why}"
                );
                break;
            }
        }
    }
}

/// Answers a connection over the cap with a 503 naming the cap (after a TLS handshake,
/// with `tls`), then closes it; all within [`REFUSAL_GRACE`].
async fn refuse(
    stream: TcpStream,
    max: usize,
    tls: Option<TlsAcceptor>,
    _permit: OwnedSemaphorePermit,
) {
    let body = ErrorBody {
        error: ErrorKind::TooManyConnections,
        message: format!("the server has {max} connections open, the most it accepts"),
        hint: Some(
            "try again shortly, or raise `max_connections` under [limits] in the server's \
             gantry.toml"
                .to_string(),
        ),
        details: serde_json::json!({ "limit": max }),
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        match tls {
            None => send_and_close(stream, answer.as_bytes()).await,
            Some(acceptor) => {
                send_and_close(acceptor.accept(stream).await?, answer.as_bytes()).await
            }
        }
    })
    .await;
}

/// Writes `answer` and closes the sending side, then reads what the client sent before
/// closing: closing a socket with unread input resets the connection, and the client
/// could lose the answer.
async fn send_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    answer: &[u8],
) -> io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// No header deadline is running (stored in [`Activity::header_deadline_ms`]).
const NO_DEADLINE: u64 = u64::MAX;

/// What a connection's watchdog needs: when a byte last moved, when the request header
/// being received is due, and how many requests are in flight. Times are milliseconds
/// since the connection opened.
struct Activity {
    opened: Instant,
    header_timeout: Duration,
    last_ms: AtomicU64,
    /// When the header being received must be complete; [`NO_DEADLINE`] while none is
    /// being waited for (a request is in flight, or the connection is kept alive idle).
    header_deadline_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    /// A connection just opened: its first request's header is due within
    /// `header_timeout`, so a client that sends nothing is closed too.
    fn new(header_timeout: Duration) -> Activity {
        Activity {
            opened: Instant::now(),
            header_timeout,
            last_ms: AtomicU64::new(0),
            header_deadline_ms: AtomicU64::new(millis(header_timeout)),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.opened.elapsed())
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// Bytes moved. Bytes read while no request is in flight start a request's header,
    /// which is then due within the header timeout (unless one is already running).
    fn touch(&self, read: bool) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if read && self.in_flight.load(Ordering::Acquire) == 0 {
            let due = now.saturating_add(millis(self.header_timeout));
            let _ = self.header_deadline_ms.compare_exchange(
                NO_DEADLINE,
                due,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Resolves, with the reason, once the header being received is overdue or no
    /// byte has moved for `idle`.
    async fn overdue(&self, idle: Duration) -> &'static str {
        loop {
            let now = Instant::now();
            let idle_at = self.at(self.last_ms.load(Ordering::Relaxed)) + idle;
            if now >= idle_at {
                return "nothing moved for the idle timeout";
            }
            let header_ms = self.header_deadline_ms.load(Ordering::Acquire);
            let header_at = (header_ms != NO_DEADLINE).then(|| self.at(header_ms));
            if header_at.is_some_and(|at| now >= at) {
                return "the request header did not arrive within the header timeout";
            }
            // A header deadline set while this sleeps is at least a header timeout
            // away, so waking up that often never misses one.
            let next = header_at
                .map_or(idle_at, |at| at.min(idle_at))
                .min(now + self.header_timeout);
            tokio::time::sleep_until(next).await;
        }
    }
}

/// Milliseconds of `d`, saturating below [`NO_DEADLINE`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(NO_DEADLINE - 1)
        .min(NO_DEADLINE - 1)
}

/// One request in flight on a connection, from its complete header to the end of its
/// response: no header is being waited for meanwhile.
struct InFlight {
    activity: Arc<Activity>,
}

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity
            .header_deadline_ms
            .store(NO_DEADLINE, Ordering::Release);
        InFlight {
            activity: activity.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's socket that records when bytes move, for the idle timeout.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch(true);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
