//! Limits that keep one client from taking the server's memory or connections: size
//! caps of submitted jobs, the HTTP server's timeouts and connection cap, and the cap on
//! event streams open at once per token.
//!
//! Caps apply when a job is submitted; jobs stored before a cap was lowered are served
//! as they are.

use crate::error::ApiError;
use axum::http::StatusCode;
use gantry_core::ParsedJob;
use gantry_protocol::ErrorKind;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The highest `max_title_bytes` accepted: a title is copied into the `job.submitted`
/// event and into every job list, so it has to stay small whatever the configuration.
pub const TITLE_CEILING: usize = 64 * 1024;

/// Size caps of submitted jobs and limits of the HTTP server (`[limits]` in
/// `gantry.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest job title, in bytes (at most [`TITLE_CEILING`]).
    pub max_title_bytes: usize,
    /// Longest job body (the markdown instructions), in bytes.
    pub max_body_bytes: usize,
    /// Longest label, its key and value together, in bytes.
    pub max_label_bytes: usize,
    /// Most labels on one job.
    pub max_labels: usize,
    /// Most environment variables on one job.
    pub max_env_vars: usize,
    /// Largest environment of one job: names and values together, in bytes.
    pub max_env_bytes: usize,
    /// Largest job file (front matter and body), in bytes.
    pub max_job_file_bytes: usize,
    /// How long a client has to send a request's whole header, counted from when the
    /// connection opens or from the first byte of each later request.
    pub header_read_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed: a
    /// kept-alive connection no request comes on, a stalled upload, a client that
    /// stopped reading its response. Long-poll claims and event-stream keep-alives are
    /// kept well inside it.
    pub idle_timeout: Duration,
    /// Most connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Most event streams (`GET /v1/events` as SSE) one token may have open at once;
    /// one more is answered 429.
    pub max_streams_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_title_bytes: 1024,
            max_body_bytes: 1024 * 1024,
            max_label_bytes: 256,
            max_labels: 64,
            max_env_vars: 128,
            max_env_bytes: 64 * 1024,
            max_job_file_bytes: 2 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_streams_per_token: 16,
        }
    }
}

impl Limits {
    /// Checks the values that cannot work: the first wrong one as `(field, value,
    /// reason)`.
    pub fn invalid(&self) -> Option<(&'static str, String, String)> {
        let counts = [
            ("max_title_bytes", self.max_title_bytes),
            ("max_body_bytes", self.max_body_bytes),
            ("max_label_bytes", self.max_label_bytes),
            ("max_labels", self.max_labels),
            ("max_env_vars", self.max_env_vars),
            ("max_env_bytes", self.max_env_bytes),
            ("max_job_file_bytes", self.max_job_file_bytes),
            ("max_connections", self.max_connections),
            ("max_streams_per_token", self.max_streams_per_token),
        ];
        if let Some((field, value)) = counts.iter().find(|(_, v)| *v == 0) {
            return Some((field, value.to_string(), "must be more than 0".to_string()));
        }
        if self.max_title_bytes > TITLE_CEILING {
            return Some((
                "max_title_bytes",
                self.max_title_bytes.to_string(),
                format!(
                    "must be at most {TITLE_CEILING}: a title is copied into events and job lists"
                ),
            ));
        }
        for (field, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Some((
                    field,
                    format!("{value:?}"),
                    "must be at least 100ms".to_string(),
                ));
            }
        }
        None
    }

    /// How long a long-poll claim may wait without sending a byte: half the idle
    /// timeout, so a waiting claim is never closed as idle.
    pub fn longest_silence(&self) -> Duration {
        self.idle_timeout / 2
    }

    /// Refuses (413 `too_large`) a job file of the batch at `index` whose title, body,
    /// labels, environment or whole text is over its cap, naming the field, its size
    /// and the limit.
    pub fn check_job(&self, index: usize, text: &str, job: &ParsedJob) -> Result<(), ApiError> {
        let spec = &job.spec;
        let over = |field: String, size: usize, limit: usize, key: &str| {
            too_large(index, job, field, size, limit, key)
        };
        if spec.title.len() > self.max_title_bytes {
            return Err(over(
                "title".into(),
                spec.title.len(),
                self.max_title_bytes,
                "max_title_bytes",
            )
            .into());
        }
        if spec.body.len() > self.max_body_bytes {
            return Err(over(
                "body".into(),
                spec.body.len(),
                self.max_body_bytes,
                "max_body_bytes",
            )
            .into());
        }
        if spec.labels.len() > self.max_labels {
            return Err(over(
                "labels".into(),
                spec.labels.len(),
                self.max_labels,
                "max_labels",
            )
            .in_entries()
            .into());
        }
        for (key, value) in &spec.labels {
            let size = key.len() + value.len();
            if size > self.max_label_bytes {
                return Err(over(
                    format!("labels.{}", short(key)),
                    size,
                    self.max_label_bytes,
                    "max_label_bytes",
                )
                .into());
            }
        }
        if spec.env.len() > self.max_env_vars {
            return Err(over(
                "env".into(),
                spec.env.len(),
                self.max_env_vars,
                "max_env_vars",
            )
            .in_entries()
            .into());
        }
        let env_bytes: usize = spec.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > self.max_env_bytes {
            return Err(over("env".into(), env_bytes, self.max_env_bytes, "max_env_bytes").into());
        }
        if text.len() > self.max_job_file_bytes {
            return Err(over(
                "text".into(),
                text.len(),
                self.max_job_file_bytes,
                "max_job_file_bytes",
            )
            .into());
        }
        Ok(())
    }
}

/// The first 64 bytes of `key` (whole characters), so an error about a huge key stays
/// small.
fn short(key: &str) -> String {
    const KEEP: usize = 64;
    if key.len() <= KEEP {
        return key.to_string();
    }
    let mut end = KEEP;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

/// An over-limit error in bytes; [`Oversize::in_entries`] rewords it for a count.
fn too_large(
    index: usize,
    job: &ParsedJob,
    field: String,
    size: usize,
    limit: usize,
    key: &str,
) -> Oversize {
    Oversize {
        index,
        file: job.file.clone(),
        line: job
            .field_lines
            .get(field.split('.').next().unwrap_or(&field))
            .copied(),
        field,
        size,
        limit,
        key: key.to_string(),
        unit: "bytes",
    }
}

/// The parts of a `too_large` error, before it is worded.
struct Oversize {
    index: usize,
    file: String,
    line: Option<usize>,
    field: String,
    size: usize,
    limit: usize,
    key: String,
    unit: &'static str,
}

impl Oversize {
    /// The size is a number of entries, not of bytes.
    fn in_entries(mut self) -> Oversize {
        self.unit = "entries";
        self
    }
}

impl From<Oversize> for ApiError {
    fn from(c: Oversize) -> ApiError {
        let at = match c.line {
            Some(line) => format!("{}:{line}", c.file),
            None => c.file.clone(),
        };
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::TooLarge,
            format!(
                "{at}: field `{}` has {} {unit}, over the limit of {} {unit}",
                c.field,
                c.size,
                c.limit,
                unit = c.unit
            ),
        )
        .with_hint(format!(
            "shorten it, or raise `{}` under [limits] in the server's gantry.toml; nothing \
             of this batch was stored",
            c.key
        ))
        .with_details(json!({
            "job": c.index,
            "file": c.file,
            "line": c.line,
            "field": c.field,
            "size": c.size,
            "limit": c.limit,
            "unit": c.unit,
        }))
    }
}

/// The event streams open per token, so one token cannot hold the server's
/// connections open with streams.
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

impl StreamSlots {
    /// Takes a stream slot of `token` (held until the returned guard is dropped), or
    /// refuses (429 `too_many_streams`) when it has `max` open already.
    pub fn take(self: &Arc<Self>, token: &str, max: usize) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(token.to_string()).or_insert(0);
        if *n >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::TooManyStreams,
                format!("token {token:?} has {n} event streams open, the most it may have ({max})"),
            )
            .with_hint(
                "close a stream first, or raise `max_streams_per_token` under [limits] in the \
                 server's gantry.toml",
            )
            .with_details(json!({ "token": token, "open": *n, "limit": max })));
        }
        *n += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            token: token.to_string(),
        })
    }

    /// Streams `token` has open now.
    pub fn open(&self, token: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(token).copied().unwrap_or(0)
    }
}

/// One open event stream's slot; dropping it (the stream ended or its client left)
/// frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    token: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_counted_per_token_and_freed_on_drop() {
        let slots = Arc::new(StreamSlots::default());
        let a1 = slots.take("a", 2).expect("first");
        let _a2 = slots.take("a", 2).expect("second");
        let err = slots.take("a", 2).expect_err("third is over the cap");
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.kind(), &ErrorKind::TooManyStreams);
        let _b = slots.take("b", 2).expect("another token has its own slots");
        drop(a1);
        assert_eq!(slots.open("a"), 1);
        let _a3 = slots.take("a", 2).expect("a freed slot is taken again");
    }

    #[test]
    fn defaults_are_valid_and_zero_is_named() {
        assert_eq!(Limits::default().invalid(), None);
        let bad = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(bad.invalid().map(|(f, _, _)| f), Some("max_connections"));
        let bad = Limits {
            max_title_bytes: TITLE_CEILING + 1,
            ..Limits::default()
        };
        assert_eq!(bad.invalid().map(|(f, _, _)| f), Some("max_title_bytes"));
    }

    #[test]
    fn short_keys_keep_whole_characters() {
        let key = "é".repeat(100);
        let s = short(&key);
        assert!(s.len() <= 64 + "…".len(), "{s}");
        assert!(s.ends_with('…'));
    }
}
