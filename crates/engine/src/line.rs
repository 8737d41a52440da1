//! Splitting a byte stream into lines of any length.

/// Collects bytes that arrive in arbitrary chunks and hands out complete lines.
///
/// Lines may be of any length (a single Claude line can be many megabytes); bytes are
/// decoded as lossy UTF-8 only once a line is complete, so a character split across
/// chunks decodes whole. A `\r\n` ending is stripped like `\n`.
#[derive(Debug, Default, Clone)]
pub struct LineBuffer {
    /// Bytes of the line not yet terminated.
    pending: Vec<u8>,
}

impl LineBuffer {
    /// An empty buffer.
    pub fn new() -> LineBuffer {
        LineBuffer::default()
    }

    /// Adds `bytes` and returns every line they complete, without line endings.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..pos]);
            lines.push(take_line(&mut self.pending));
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
        lines
    }

    /// The last line when the stream ended without a line ending, if any.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            None
        } else {
            Some(take_line(&mut self.pending))
        }
    }

    /// How many bytes wait for their line ending.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Empties `pending` into a string, dropping a trailing `\r`.
fn take_line(pending: &mut Vec<u8>) -> String {
    if pending.last() == Some(&b'\r') {
        pending.pop();
    }
    let line = String::from_utf8_lossy(pending).into_owned();
    pending.clear();
    line
}
