//! [`EventStream`]: the live event stream (`GET /v1/events` as `text/event-stream`),
//! parsed with `eventsource-stream` and resumed with `Last-Event-ID` after a drop.

use crate::{Client, ClientError, Result, transport};
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use gantry_core::JobId;
use gantry_core::event::Event;
use gantry_core::retry::Backoff;
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

/// The parsed server-sent events of one connection.
type Messages = Pin<
    Box<
        dyn Stream<
                Item = std::result::Result<
                    eventsource_stream::Event,
                    EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// Reconnect attempts in a row before a dropped stream is given up.
const MAX_RECONNECTS: u32 = 8;

/// Events as they happen; see [`Client::event_stream`].
pub struct EventStream {
    client: Client,
    job: Option<JobId>,
    last_id: i64,
    messages: Option<Messages>,
    ready: VecDeque<Event>,
    failures: u32,
    /// Pauses between reconnections: from 200 ms, capped at 3 s, 6 to 12 s in all
    /// before giving up.
    backoff: Backoff,
}

impl EventStream {
    /// A stream of the events after `after` (of `job`, or all); it connects on the
    /// first [`EventStream::next`].
    pub(crate) fn new(client: Client, job: Option<JobId>, after: i64) -> EventStream {
        EventStream {
            client,
            job,
            last_id: after,
            messages: None,
            ready: VecDeque::new(),
            failures: 0,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(3)),
        }
    }

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
        self.messages = Some(Box::pin(resp.bytes_stream().eventsource()));
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
            let url = self.client.url(&self.path());
            let Some(messages) = self.messages.as_mut() else {
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
            match messages.next().await {
                Some(Ok(msg)) => {
                    if msg.data.is_empty() {
                        continue;
                    }
                    let ev: Event =
                        serde_json::from_str(&msg.data).map_err(|e| ClientError::BadResponse {
                            url: url.clone(),
                            message: format!("cannot decode event {:?}: {e}", msg.data),
                        })?;
                    self.ready.push_back(ev);
                    self.failures = 0;
                    self.backoff.reset();
                }
                Some(Err(EventStreamError::Transport(e))) => {
                    let err = transport(&url, &e);
                    self.messages = None;
                    self.reconnect_pause(err).await?;
                }
                Some(Err(e)) => {
                    let err = ClientError::BadResponse {
                        url: url.clone(),
                        message: format!("cannot parse the event stream: {e}"),
                    };
                    self.messages = None;
                    self.reconnect_pause(err).await?;
                }
                None => {
                    let err = ClientError::BadResponse {
                        url: url.clone(),
                        message: "the server closed the stream".to_string(),
                    };
                    self.messages = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An event of id `id` as the server writes it in a `data:` line.
    fn event_json(id: i64) -> String {
        format!(
            r#"{{"id":{id},"job_id":1,"run_id":null,"seq":{id},"kind":"run.output","at":"2026-01-01T00:00:00.000Z","data":{{"text":"line {id}\n"}}}}"#
        )
    }

    /// Reads one request's head and returns it, lower-cased.
    async fn read_head(conn: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.expect("read request");
            assert!(n > 0, "the client closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&head).to_lowercase()
    }

    #[tokio::test]
    async fn a_dropped_stream_resumes_after_the_last_id() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            // The first connection sends event 1 (split across writes, with a comment
            // and CRLF line ends) and drops; the second must ask for what follows it.
            for (i, body) in [
                format!(": hi\r\nid: 1\r\ndata: {}\r\n\r\n", event_json(1)),
                format!("id: 2\ndata: {}\n\n", event_json(2)),
            ]
            .into_iter()
            .enumerate()
            {
                let (mut conn, _) = listener.accept().await.expect("accept");
                heads.push(read_head(&mut conn).await);
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                conn.write_all(head.as_bytes()).await.expect("write head");
                let (a, b) = body.split_at(body.len() / 2);
                conn.write_all(a.as_bytes()).await.expect("write");
                conn.flush().await.expect("flush");
                conn.write_all(b.as_bytes()).await.expect("write");
                if i == 1 {
                    // Hold the second stream open until the client has read it.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            heads
        });
        let client = Client::new(&format!("http://{addr}"), Some("t"), Duration::from_secs(5))
            .expect("client");
        let mut stream = client.event_stream(Some(JobId(1)), 0);
        let first = stream.next().await.expect("event 1");
        assert_eq!(first.id, 1);
        let second = stream.next().await.expect("event 2 after the reconnect");
        assert_eq!(second.id, 2);
        assert_eq!(second.data["text"], "line 2\n");
        assert_eq!(stream.last_id(), 2);
        let heads = server.await.expect("server");
        assert!(heads[0].contains("last-event-id: 0"), "{}", heads[0]);
        assert!(heads[1].contains("last-event-id: 1"), "{}", heads[1]);
        assert!(heads[1].contains("authorization: bearer t"), "{}", heads[1]);
    }
}
