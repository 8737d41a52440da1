//! The egress proxy of one `model` run: an HTTP proxy on a Unix socket that speaks
//! `CONNECT host:port` (HTTPS and any TLS) and plain absolute-form requests
//! (`GET http://host/path`, for a model base URL that is `http://`), and lets through
//! only hosts on the run's allowlist.
//!
//! Everything a run sends is bounded: the request head's size ([`Limits::max_head_bytes`])
//! and the time to send it ([`Limits::head_timeout`], so a client that trickles bytes
//! cannot hold a connection), the connections open at once per run
//! ([`Limits::max_connections`]), the time to reach the upstream and the time a
//! tunnel may sit idle. A host that is not allowed, and an allowed name of the job's
//! that resolves to a loopback, private or link-local address, is refused with `403`
//! and reported as a [`Denied`].

use super::Allowed;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

/// The most refusals of one run reported as events; later ones are only logged.
pub const MAX_DENIED_EVENTS: usize = 100;

/// The bounds of a run's proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub head_timeout: Duration,
    /// Time to resolve and connect to the upstream.
    pub connect_timeout: Duration,
    /// Time a tunnel may carry nothing either way before it is closed.
    pub idle_timeout: Duration,
    /// Connections of the run open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            // Model APIs stream long answers; a quiet stream of ten minutes is dead.
            idle_timeout: Duration::from_secs(600),
            max_connections: 64,
        }
    }
}

/// A refused attempt: the host and port asked for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The host as the run wrote it (lower case).
    pub host: String,
    /// The port.
    pub port: u16,
    /// Why it was refused.
    pub reason: String,
}

/// A refusal on its way to the run's events, and the sender that says it went out
/// (or was given up): the client gets its `403` only then, so a run that sees the
/// refusal finds the event recorded.
#[derive(Debug)]
pub struct Reported {
    /// The refusal.
    pub denied: Denied,
    /// Dropped or sent once the event is out.
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// How long a refused client waits for its refusal's event to go out.
const REPORT_WAIT: Duration = Duration::from_secs(5);

/// Reports a refusal; what it returns (if anything) resolves once it is recorded.
pub type Report<'a> = dyn Fn(Denied) -> Option<tokio::sync::oneshot::Receiver<()>> + Sync + 'a;

/// Why the proxy of a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket path is longer than a Unix socket address holds.
    #[error(
        "the egress proxy's socket path {0} is longer than a unix socket allows (107 bytes): give the factory a shorter data dir"
    )]
    PathTooLong(PathBuf),
    /// The directory or the socket could not be made.
    #[error("cannot listen on the egress proxy's socket {path}: {source}")]
    Io {
        /// The socket or its directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What the run may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The allowlist.
    pub allowed: Vec<Allowed>,
}

impl Policy {
    /// Whether `host:port` is allowed, and whether it may be a private address.
    fn check(&self, host: &str, port: u16) -> Option<bool> {
        self.allowed
            .iter()
            .find(|a| a.to.host == host && a.to.port == port)
            .map(|a| a.trusted)
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    connect: bool,
    host: String,
    port: u16,
    /// The head to send upstream (plain HTTP only): origin-form request line, the
    /// client's headers without the proxy's and hop-by-hop ones, `Connection: close`.
    upstream_head: Vec<u8>,
    /// Length of the client's head in the buffer.
    len: usize,
}

/// Why a request head was refused before any upstream was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeadError {
    /// Bigger than the limit (431).
    TooLarge,
    /// Not a proxy request this proxy speaks (400), saying why.
    Bad(String),
}

/// Headers a proxy must not pass on.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Parses a complete request head at the start of `buf` (`Ok(None)`: not complete yet).
fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Bad(format!("malformed request: {e}"))),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    if method.eq_ignore_ascii_case("CONNECT") {
        let hp = gantry_core::sandbox::HostPort::parse(target)
            .ok()
            .filter(|_| target.contains(':'))
            .ok_or_else(|| HeadError::Bad(format!("CONNECT needs host:port, not {target:?}")))?;
        return Ok(Some(Head {
            connect: true,
            host: hp.host,
            port: hp.port,
            upstream_head: Vec::new(),
            len,
        }));
    }
    let hp = super::url_host_port(target)
        .filter(|_| target.len() >= 7 && target[..7].eq_ignore_ascii_case("http://"))
        .ok_or_else(|| {
            HeadError::Bad(format!(
                "this is a proxy: send CONNECT host:port or an absolute http:// URL, not {target:?}"
            ))
        })?;
    let after_scheme = &target[7..];
    let path = match after_scheme.find(['/', '?']) {
        Some(i) if after_scheme.as_bytes()[i] == b'/' => after_scheme[i..].to_string(),
        Some(i) => format!("/{}", &after_scheme[i..]),
        None => "/".to_string(),
    };
    let version = if req.version == Some(0) { "1.0" } else { "1.1" };
    let mut up = format!("{method} {path} HTTP/{version}\r\n").into_bytes();
    for h in req.headers.iter() {
        if HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)) {
            continue;
        }
        up.extend_from_slice(h.name.as_bytes());
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    // One request per connection: the next one may be for another host.
    up.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some(Head {
        connect: false,
        host: hp.host,
        port: hp.port,
        upstream_head: up,
        len,
    }))
}

/// Whether `ip` is an address on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast, multicast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local())
            }
        },
    }
}

/// A simple answer to the client, closing the connection.
async fn answer<S: AsyncWrite + Unpin>(client: &mut S, code: u16, reason: &str, body: &str) {
    let text = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(text.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Serves one client connection of a run: reads its request head within the limits,
/// refuses it or connects it upstream, then carries bytes both ways until either side
/// ends or nothing moves for [`Limits::idle_timeout`].
pub async fn serve_connection<S>(
    mut client: S,
    policy: &Policy,
    limits: &Limits,
    denied: &Report<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = tokio::time::timeout(limits.head_timeout, read_head(&mut client, limits)).await;
    let (head, buf) = match head {
        Err(_) => {
            return answer(
                &mut client,
                408,
                "Request Timeout",
                "request head too slow\n",
            )
            .await;
        }
        Ok(Err(HeadError::TooLarge)) => {
            return answer(
                &mut client,
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
            )
            .await;
        }
        Ok(Err(HeadError::Bad(why))) => {
            return answer(&mut client, 400, "Bad Request", &format!("{why}\n")).await;
        }
        Ok(Ok(h)) => h,
    };
    let deny = |reason: &str| Denied {
        host: head.host.clone(),
        port: head.port,
        reason: reason.to_string(),
    };
    let Some(trusted) = policy.check(&head.host, head.port) else {
        reported(denied(deny("not allowed"))).await;
        let body = format!(
            "gantry egress proxy: {}:{} is not allowed for this run\n",
            head.host, head.port
        );
        return answer(&mut client, 403, "Forbidden", &body).await;
    };
    let upstream = tokio::time::timeout(
        limits.connect_timeout,
        connect(&head.host, head.port, trusted),
    )
    .await;
    let mut upstream = match upstream {
        Err(_) => {
            return answer(
                &mut client,
                504,
                "Gateway Timeout",
                "upstream did not answer\n",
            )
            .await;
        }
        Ok(Err(Connect::Private)) => {
            reported(denied(deny("resolves to a private address"))).await;
            let body = format!(
                "gantry egress proxy: {} resolves to a private address\n",
                head.host
            );
            return answer(&mut client, 403, "Forbidden", &body).await;
        }
        Ok(Err(Connect::Failed(why))) => {
            return answer(&mut client, 502, "Bad Gateway", &format!("{why}\n")).await;
        }
        Ok(Ok(s)) => s,
    };
    let rest = &buf[head.len..];
    let sent = if head.connect {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
    } else {
        upstream.write_all(&head.upstream_head).await
    };
    if sent.is_err() || upstream.write_all(rest).await.is_err() {
        return;
    }
    pump(client, upstream, limits.idle_timeout).await;
}

/// Waits (at most [`REPORT_WAIT`]) until a refusal's event is out.
async fn reported(ack: Option<tokio::sync::oneshot::Receiver<()>>) {
    if let Some(ack) = ack {
        let _ = tokio::time::timeout(REPORT_WAIT, ack).await;
    }
}

/// Reads until a whole request head is in the buffer; returns it and the buffer
/// (which may hold the first bytes after the head).
async fn read_head<S: AsyncRead + Unpin>(
    client: &mut S,
    limits: &Limits,
) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| HeadError::Bad(e.to_string()))?;
        if n == 0 {
            return Err(HeadError::Bad(
                "the connection closed before a whole request head".to_string(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf, limits.max_head_bytes)? {
            return Ok((head, buf));
        }
    }
}

enum Connect {
    /// Every address of the host is private and the entry may not be.
    Private,
    Failed(String),
}

/// Resolves `host` and connects to its first address the entry may reach.
async fn connect(host: &str, port: u16, trusted: bool) -> Result<tokio::net::TcpStream, Connect> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Connect::Failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    let usable: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| trusted || is_public(a.ip()))
        .collect();
    if usable.is_empty() && !addrs.is_empty() {
        return Err(Connect::Private);
    }
    let mut last = format!("{host} has no address");
    for addr in usable {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("cannot connect to {host}:{port} ({addr}): {e}"),
        }
    }
    Err(Connect::Failed(last))
}

/// Carries bytes both ways until both sides ended, or nothing moved for `idle`.
async fn pump<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut a_open, mut b_open) = (true, true);
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    while a_open || b_open {
        tokio::select! {
            r = ar.read(&mut abuf), if a_open => match r {
                Ok(0) | Err(_) => { a_open = false; let _ = bw.shutdown().await; }
                Ok(n) => if tokio::time::timeout(idle, bw.write_all(&abuf[..n])).await.map_or(true, |r| r.is_err()) { return },
            },
            r = br.read(&mut bbuf), if b_open => match r {
                Ok(0) | Err(_) => { b_open = false; let _ = aw.shutdown().await; }
                Ok(n) => if tokio::time::timeout(idle, aw.write_all(&bbuf[..n])).await.map_or(true, |r| r.is_err()) { return },
            },
            _ = tokio::time::sleep(idle) => return,
        }
    }
}

/// The proxy of one run, listening on its socket until dropped. Dropping it closes the
/// socket and every connection; the socket's directory stays (a sandbox binds the
/// directory, so a later factory adopting the run listens there again).
pub struct RunProxy {
    task: tokio::task::JoinHandle<()>,
    socket: PathBuf,
}

impl Drop for RunProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl RunProxy {
    /// Listens on `<dir>/sock` (the directory made 0711 and the socket 0666, so a
    /// container's user may connect; the data dir above keeps everyone else out) and
    /// serves the run's connections. Refusals go to `denied`, at most
    /// [`MAX_DENIED_EVENTS`] of them.
    pub fn start(
        dir: &Path,
        policy: Policy,
        limits: Limits,
        denied: mpsc::Sender<Reported>,
    ) -> Result<RunProxy, ProxyError> {
        use std::os::unix::fs::PermissionsExt;
        let socket = dir.join(super::SOCKET_NAME);
        if socket.as_os_str().len() > 107 {
            return Err(ProxyError::PathTooLong(socket));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ProxyError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(io(dir))?;
        // A socket left by an earlier factory (of an adopted run) is replaced.
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).map_err(io(&socket))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(io(&socket))?;
        let shared = Arc::new((policy, limits, denied, AtomicUsize::new(0)));
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(RunProxy { task, socket })
    }
}

type Shared = Arc<(Policy, Limits, mpsc::Sender<Reported>, AtomicUsize)>;

async fn accept_loop(listener: tokio::net::UnixListener, shared: Shared) {
    let open = Arc::new(Semaphore::new(shared.1.max_connections));
    // The connections live in this set: aborting the loop drops them all.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the egress proxy cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            conns.spawn(async move {
                answer(
                    &mut stream,
                    503,
                    "Service Unavailable",
                    "too many connections\n",
                )
                .await;
            });
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            let (policy, limits, tx, count) = &*shared;
            let report = |d: Denied| {
                tracing::info!(host = %d.host, port = d.port, reason = %d.reason, "egress denied");
                if count.fetch_add(1, Ordering::Relaxed) >= MAX_DENIED_EVENTS {
                    return None;
                }
                let (done, ack) = tokio::sync::oneshot::channel();
                tx.try_send(Reported { denied: d, done }).ok()?;
                Some(ack)
            };
            serve_connection(stream, policy, limits, &report).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests;
