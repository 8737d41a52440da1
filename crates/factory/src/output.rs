//! A run's output: copied byte for byte to `stdout.log` / `stderr.log`, and streamed,
//! decoded leniently and batched, as `run.output` events.
//!
//! The log files are the complete record. Events are the live view: when uploads fall
//! behind (a slow or unreachable server), text beyond a backlog cap is left out of the
//! events (a marker says how much) instead of holding the process back or growing memory
//! without bound.

use crate::coordinator::{CoordError, Coordinator};
use gantry_core::RunId;
use gantry_core::event::{NewEvent, RUN_OUTPUT};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Time between two uploads of output events.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// An upload starts early once this much text is waiting.
const FLUSH_BYTES: usize = 64 * 1024;
/// Text waiting for upload beyond this is dropped from the events (not from the logs).
const BACKLOG_CAP: usize = 4 * 1024 * 1024;
/// Largest text of one event; a bigger backlog is cut into several events.
const EVENT_TEXT_MAX: usize = 256 * 1024;

/// Which stream a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Incremental, lossy UTF-8 decoding: invalid bytes become U+FFFD, and a character cut
/// in two by a read boundary is completed by the next read instead of being mangled.
#[derive(Debug, Default)]
pub(crate) struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Decodes `bytes` after what was held back, holding back an incomplete character
    /// at the end.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).expect("prefix checked by from_utf8"));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Decodes whatever was held back at the end of the stream.
    pub(crate) fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Text waiting for upload.
#[derive(Debug, Default)]
struct Backlog {
    /// Pieces in order; consecutive pieces of one stream are merged.
    pieces: Vec<(Stream, String)>,
    bytes: usize,
    /// Bytes left out per stream since the last marker.
    dropped: [usize; 2],
}

impl Backlog {
    fn push(&mut self, stream: Stream, text: &str) {
        if text.is_empty() {
            return;
        }
        let idx = stream as usize;
        if self.bytes + text.len() > BACKLOG_CAP {
            self.dropped[idx] += text.len();
            return;
        }
        if self.dropped[idx] > 0 {
            let marker = format!(
                "\n[gantry: {} bytes of {} were not streamed as events (upload backlog); the {}.log artifact has everything]\n",
                self.dropped[idx],
                stream.as_str(),
                stream.as_str()
            );
            self.dropped[idx] = 0;
            self.append(stream, &marker);
        }
        self.append(stream, text);
    }

    fn append(&mut self, stream: Stream, text: &str) {
        self.bytes += text.len();
        match self.pieces.last_mut() {
            Some((s, t)) if *s == stream && t.len() + text.len() <= EVENT_TEXT_MAX => {
                t.push_str(text)
            }
            _ => self.pieces.push((stream, text.to_string())),
        }
    }

    fn take_events(&mut self) -> Vec<NewEvent> {
        self.bytes = 0;
        std::mem::take(&mut self.pieces)
            .into_iter()
            .map(|(stream, text)| NewEvent {
                kind: RUN_OUTPUT.to_string(),
                data: serde_json::json!({ "stream": stream.as_str(), "text": text }),
            })
            .collect()
    }
}

/// The shared side of output streaming: readers push into it, one uploader drains it.
#[derive(Debug, Default)]
pub(crate) struct OutputHub {
    backlog: Mutex<Backlog>,
    wake: Notify,
}

impl OutputHub {
    fn push(&self, stream: Stream, text: &str) {
        let full = {
            let mut b = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
            b.push(stream, text);
            b.bytes >= FLUSH_BYTES
        };
        if full {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> Vec<NewEvent> {
        self.backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_events()
    }
}

/// Copies `reader` to the log file at `log` and into `hub` until end of file.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    log: &Path,
    stream: Stream,
    hub: Arc<OutputHub>,
) {
    let mut file = match tokio::fs::File::create(log).await {
        Ok(f) => Some(tokio::io::BufWriter::with_capacity(64 * 1024, f)),
        Err(e) => {
            tracing::warn!(path = %log.display(), error = %e, "cannot create output log");
            None
        }
    };
    let mut decoder = Utf8Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "reading process output failed");
                break;
            }
        };
        if let Some(f) = file.as_mut()
            && let Err(e) = f.write_all(&buf[..n]).await
        {
            tracing::warn!(path = %log.display(), error = %e, "writing output log failed; log stops here");
            file = None;
        }
        hub.push(stream, &decoder.push(&buf[..n]));
    }
    hub.push(stream, &decoder.finish());
    if let Some(mut f) = file
        && let Err(e) = f.flush().await
    {
        tracing::warn!(path = %log.display(), error = %e, "flushing output log failed");
    }
}

/// Uploads the hub's events every [`FLUSH_EVERY`] (or sooner when [`FLUSH_BYTES`] are
/// waiting) until `done` fires, then uploads what is left.
///
/// An upload that fails for a transient reason is kept and retried with the next one,
/// so events stay in order. A stale lease ends uploading for good: the run is no longer
/// ours and the supervisor learns it from the renewal.
pub(crate) async fn upload(
    hub: Arc<OutputHub>,
    coord: Arc<dyn Coordinator>,
    run: RunId,
    epoch: i64,
    done: Arc<Notify>,
) {
    let mut unsent: Vec<NewEvent> = Vec::new();
    let mut finishing = false;
    let mut final_tries = 0;
    loop {
        if !finishing {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = hub.wake.notified() => {}
                _ = done.notified() => finishing = true,
            }
        }
        unsent.extend(hub.take());
        if unsent.is_empty() {
            if finishing {
                return;
            }
            continue;
        }
        match coord.events(run, epoch, unsent.clone()).await {
            Ok(()) => unsent.clear(),
            Err(CoordError::Unavailable(e)) => {
                tracing::debug!(%run, error = %e, "output upload failed; will retry");
                // Keep the retry queue bounded: beyond the cap the oldest batch goes.
                let size: usize = unsent.iter().map(|e| e.data.to_string().len()).sum();
                if size > BACKLOG_CAP {
                    unsent.remove(0);
                }
                if finishing {
                    final_tries += 1;
                    if final_tries >= 5 {
                        tracing::warn!(%run, "giving up uploading the last output events");
                        return;
                    }
                    tokio::time::sleep(FLUSH_EVERY * final_tries).await;
                }
            }
            Err(e) => {
                tracing::warn!(%run, error = %e, "output upload refused; output stays in the logs only");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_completes_split_characters_and_replaces_invalid_bytes() {
        let mut d = Utf8Decoder::default();
        let snow = "é☃".as_bytes();
        assert_eq!(d.push(&snow[..1]), "");
        assert_eq!(d.push(&snow[1..3]), "é");
        assert_eq!(d.push(&snow[3..]), "☃");
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"x\xe2\x98"), "x");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn backlog_merges_by_stream_and_drops_beyond_the_cap_with_a_marker() {
        let mut b = Backlog::default();
        b.push(Stream::Stdout, "a");
        b.push(Stream::Stdout, "b");
        b.push(Stream::Stderr, "c");
        let ev = b.take_events();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data["text"], "ab");
        assert_eq!(ev[0].data["stream"], "stdout");
        assert_eq!(ev[1].data["stream"], "stderr");

        let big = "x".repeat(BACKLOG_CAP);
        b.push(Stream::Stdout, &big);
        b.push(Stream::Stdout, "lost");
        let _ = b.take_events();
        b.push(Stream::Stdout, "after");
        let text: String = b
            .take_events()
            .iter()
            .map(|e| e.data["text"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(
            text.contains("4 bytes of stdout were not streamed"),
            "{text}"
        );
        assert!(text.ends_with("after"), "{text}");
    }
}
