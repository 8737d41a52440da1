//! A run's output, read back from the files its process writes, turned into events and
//! uploaded, with the uploaded offsets kept in the run record.
//!
//! The files are the complete record; the process writes them directly and is never
//! held back by a slow upload. The tailer polls them (every [`TICK`], at once while
//! there is more to read), turns what is new into events and uploads them in order. An
//! upload that fails for a transient reason is retried as it was, before anything newer
//! is read. Only once a batch is accepted are its end offsets written to the run
//! record, so a factory that re-adopts the run continues exactly after what was
//! uploaded: nothing is lost, nothing sent twice.

use crate::record::{Offsets, RunRecord};
use gantry_core::RunId;
use gantry_core::event::{NewEvent, OutputStream, RunOutput};
use gantry_core::retry::Backoff;
use gantry_protocol::{CoordError, Coordinator};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Time between two looks at the output files when nothing new was found.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Most bytes read from one file per look; more waits for the next (immediate) look.
pub(crate) const READ_MAX: usize = 1024 * 1024;
/// Largest text of one `run.output` event; a bigger chunk is cut into several events.
const EVENT_TEXT_MAX: usize = 256 * 1024;
/// Tries of the last upload of a run before its output stays in the files only.
const FINAL_TRIES: u32 = 5;

/// The run record, shared by the supervisor and the tailer, and saved on every change.
#[derive(Debug, Clone)]
pub(crate) struct SharedRecord {
    data_dir: PathBuf,
    inner: Arc<Mutex<RunRecord>>,
}

impl SharedRecord {
    pub(crate) fn new(data_dir: &Path, record: RunRecord) -> SharedRecord {
        SharedRecord {
            data_dir: data_dir.to_path_buf(),
            inner: Arc::new(Mutex::new(record)),
        }
    }

    /// A copy of the record as it is now.
    pub(crate) fn get(&self) -> RunRecord {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the record and writes it (synchronously, so that a task aborted right
    /// after an upload cannot lose the offsets that upload advanced).
    pub(crate) fn update(&self, f: impl FnOnce(&mut RunRecord)) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        if let Err(e) = r.write(&self.data_dir) {
            tracing::warn!(error = %e, "cannot save the run record; a restart may not adopt this run");
        }
    }

    /// Removes the record file (the run is over).
    pub(crate) fn remove(&self) {
        let run = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claim
            .run
            .id;
        RunRecord::remove(&self.data_dir, run);
    }
}

/// One output file, read from a byte offset on.
#[derive(Debug)]
pub(crate) struct FileTail {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Bytes already handed out by [`FileTail::take`].
    consumed: u64,
    /// Bytes read after `consumed` and not handed out yet.
    buf: Vec<u8>,
}

impl FileTail {
    pub(crate) fn new(path: &Path, offset: u64) -> FileTail {
        FileTail {
            path: path.to_path_buf(),
            file: None,
            consumed: offset,
            buf: Vec::new(),
        }
    }

    /// Offset of the first byte not handed out yet.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Reads up to `max` new bytes into the buffer; returns how many came.
    pub(crate) fn fill(&mut self, max: usize) -> usize {
        if self.file.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot open output file");
                    }
                    return 0;
                }
            }
        }
        let Some(file) = &self.file else {
            return 0;
        };
        let pos = self.consumed + self.buf.len() as u64;
        // Only as much room as the file has new bytes: a run's buffers stay as small as
        // its output, which matters with hundreds of runs that print little.
        let available = file
            .metadata()
            .map(|m| m.len().saturating_sub(pos))
            .unwrap_or(max as u64);
        let want = usize::try_from(available).unwrap_or(max).min(max);
        if want == 0 {
            if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
                self.buf = Vec::new();
            }
            return 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let n = loop {
            match file.read_at(&mut self.buf[old..], pos) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "reading output file failed");
                    break 0;
                }
            }
        };
        self.buf.truncate(old + n);
        n
    }

    /// The bytes read and not handed out yet.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Hands out the first `n` buffered bytes.
    pub(crate) fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.buf.len());
        self.consumed += n as u64;
        self.buf.drain(..n).collect()
    }

    /// Drops the first `n` buffered bytes, as handled without being handed out.
    pub(crate) fn discard(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.consumed += n as u64;
        self.buf.drain(..n);
    }
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 character
/// that later bytes may complete.
pub(crate) fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    // A character is at most 4 bytes: look back at most 3 for its lead byte.
    for back in 1..=3.min(len) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return len,
        };
        return if back < need { len - back } else { len };
    }
    len
}

/// `run.output` events of `bytes`, read from `stream` at `offset`: decoded leniently
/// (invalid bytes become U+FFFD) and cut into events of at most [`EVENT_TEXT_MAX`].
pub(crate) fn text_events(stream: OutputStream, offset: u64, bytes: &[u8]) -> Vec<NewEvent> {
    let text = String::from_utf8_lossy(bytes);
    let mut events = Vec::new();
    let mut rest: &str = &text;
    // Offsets are of the file's bytes; after a replacement they are approximate, which
    // only matters to a reader that deduplicates, and lossless text keeps them exact.
    let mut at = offset;
    while !rest.is_empty() {
        let mut end = rest.len().min(EVENT_TEXT_MAX);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, after) = rest.split_at(end);
        events.push(NewEvent::of(&RunOutput {
            stream,
            text: piece.to_string(),
            offset: Some(at),
        }));
        at += piece.len() as u64;
        rest = after;
    }
    events
}

/// How the tailer turns stdout into events.
pub(crate) trait StdoutReader: Send {
    /// Turns the buffered bytes of `tail` into events, taking what it used; `last`
    /// says the file will not grow any more (take everything).
    fn read(&mut self, tail: &mut FileTail, last: bool) -> Vec<NewEvent>;
    /// What an agent reported, for the finish report (`None`: not an agent).
    fn insights(&self) -> Option<gantry_core::engine::Insights> {
        None
    }
    /// The attempt's outcome as the agent's own report decides it with `exit_code`
    /// (`None`: the exit code alone decides).
    fn outcome(&self, _exit_code: Option<i32>) -> Option<gantry_core::Outcome> {
        None
    }
}

/// Plain text stdout: `run.output` events.
#[derive(Debug, Default)]
pub(crate) struct TextReader;

impl StdoutReader for TextReader {
    fn read(&mut self, tail: &mut FileTail, last: bool) -> Vec<NewEvent> {
        read_text(OutputStream::Stdout, tail, last)
    }
}

fn read_text(stream: OutputStream, tail: &mut FileTail, last: bool) -> Vec<NewEvent> {
    let n = if last {
        tail.buffered().len()
    } else {
        complete_utf8_prefix(tail.buffered())
    };
    let offset = tail.consumed();
    let bytes = tail.take(n);
    text_events(stream, offset, &bytes)
}

/// Events and the offsets they end at, waiting to be uploaded.
struct Batch {
    events: Vec<NewEvent>,
    offsets: Offsets,
}

/// Reads a run's output files and uploads them as events until told the process is
/// gone, then reads to the end and returns.
pub(crate) struct Tailer {
    pub coord: Arc<dyn Coordinator>,
    pub run: RunId,
    pub epoch: i64,
    pub record: SharedRecord,
    pub stdout: FileTail,
    pub stderr: FileTail,
    pub reader: Box<dyn StdoutReader>,
    /// Turns true once no process of the run is left (the files stop growing).
    pub finishing: watch::Receiver<bool>,
    /// Wakes the tailer early (the process ended).
    pub wake: Arc<Notify>,
    /// Events to upload before any output (`run.started`), retried like output.
    /// (`coord` redacts what is uploaded: see [`crate::redact::Redacting`].)
    pub first: Vec<NewEvent>,
}

impl Tailer {
    /// Runs until the output is uploaded after `finishing`, or uploading is refused
    /// for good. Returns the stdout reader (which may carry what it learnt).
    pub(crate) async fn run(mut self) -> Box<dyn StdoutReader> {
        let mut final_tries = 0u32;
        let mut backoff = Backoff::new(TICK, Duration::from_secs(2));
        let mut saved = Offsets {
            stdout: self.stdout.consumed(),
            stderr: self.stderr.consumed(),
        };
        let first = std::mem::take(&mut self.first);
        let mut pending = (!first.is_empty()).then_some(Batch {
            events: first,
            offsets: saved,
        });
        loop {
            let last = *self.finishing.borrow();
            let mut more = false;
            if pending.is_none() {
                let out_n = self.stdout.fill(READ_MAX);
                let err_n = self.stderr.fill(READ_MAX);
                more = out_n == READ_MAX || err_n == READ_MAX;
                // The files stop growing once the process is gone: read to their end.
                let at_end = last && out_n == 0 && err_n == 0;
                let mut events = self.reader.read(&mut self.stdout, at_end);
                events.extend(read_text(OutputStream::Stderr, &mut self.stderr, at_end));
                let offsets = Offsets {
                    stdout: self.stdout.consumed(),
                    stderr: self.stderr.consumed(),
                };
                if events.is_empty() {
                    if offsets != saved {
                        self.record.update(|r| r.uploaded = offsets);
                        saved = offsets;
                    }
                    if at_end {
                        return self.reader;
                    }
                } else {
                    pending = Some(Batch { events, offsets });
                }
            }
            if let Some(batch) = &pending {
                match self
                    .coord
                    .events(self.run, self.epoch, batch.events.clone())
                    .await
                {
                    Ok(()) => {
                        let offsets = batch.offsets;
                        // No await between the accepted upload and the saved offsets.
                        self.record.update(|r| r.uploaded = offsets);
                        saved = offsets;
                        pending = None;
                        backoff.reset();
                        continue;
                    }
                    Err(CoordError::Unavailable(e)) => {
                        tracing::debug!(run = %self.run, error = %e, "output upload failed; will retry");
                        if last {
                            final_tries += 1;
                            if final_tries >= FINAL_TRIES {
                                tracing::warn!(run = %self.run, "giving up uploading the last output events; the output files have everything");
                                return self.reader;
                            }
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(run = %self.run, error = %e, "output upload refused; output stays in the files only");
                        return self.reader;
                    }
                }
            }
            if !more && !last {
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = self.wake.notified() => {}
                    changed = self.finishing.changed() => {
                        if changed.is_err() {
                            // The supervisor is gone (the run was left or dropped).
                            return self.reader;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_prefix_stops_before_an_incomplete_character_only() {
        let snow = "a☃".as_bytes();
        assert_eq!(complete_utf8_prefix(snow), 4);
        assert_eq!(complete_utf8_prefix(&snow[..3]), 1);
        assert_eq!(complete_utf8_prefix(&snow[..2]), 1);
        assert_eq!(complete_utf8_prefix(b"ab\xff"), 3);
        assert_eq!(complete_utf8_prefix(b""), 0);
        let e = "é".as_bytes();
        assert_eq!(complete_utf8_prefix(&e[..1]), 0);
    }

    #[test]
    fn text_events_decode_leniently_and_split_large_text() {
        let ev = text_events(OutputStream::Stdout, 5, b"caf\xc3\xa9 \xffbad");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data["text"], "café \u{FFFD}bad");
        assert_eq!(ev[0].data["offset"], 5);
        let big = "x".repeat(EVENT_TEXT_MAX + 10);
        let ev = text_events(OutputStream::Stderr, 0, big.as_bytes());
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].data["offset"], EVENT_TEXT_MAX as u64);
        assert_eq!(ev[1].data["stream"], "stderr");
    }

    #[test]
    fn a_file_tail_reads_from_its_offset_and_hands_out_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.log");
        let mut t = FileTail::new(&path, 2);
        assert_eq!(t.fill(10), 0, "a missing file reads as empty");
        std::fs::write(&path, "0123456789").expect("write");
        assert_eq!(t.fill(3), 3);
        assert_eq!(t.fill(3), 3);
        assert_eq!(t.take(4), b"2345");
        assert_eq!(t.consumed(), 6);
        assert_eq!(t.buffered(), b"67");
        assert_eq!(t.fill(100), 2);
        assert_eq!(t.take(100), b"6789");
        assert_eq!(t.consumed(), 10);
    }
}
