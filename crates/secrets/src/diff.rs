//! Scanning a unified diff: only added lines, each finding mapped to its file and its
//! line number in the new file.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scanner::Scanner;

/// A credential added by a diff. It names where the value is and which rule found it,
/// never the value: its `Display` and `Debug` carry only the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The path in the new tree.
    pub file: String,
    /// The 1-based line number in the new file where the value starts.
    pub line: u32,
    /// The rule's id.
    pub rule: String,
    /// A stable hash of rule and value (see [`crate::fingerprint`]).
    pub fingerprint: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} (fingerprint {})",
            self.file, self.line, self.rule, self.fingerprint
        )
    }
}

/// The added lines of one file, joined by newlines, with the new-file line number of
/// each.
#[derive(Default)]
struct Added {
    path: Option<String>,
    text: String,
    /// (byte offset in `text`, line number) of each added line.
    lines: Vec<(usize, u32)>,
}

impl Scanner {
    /// Every credential on an added line of `diff` (unified format, as `git diff`
    /// prints it), except in allowlisted paths. Consecutive added lines are scanned
    /// together so that a multi-line value (a private key block) is found whole.
    pub fn scan_diff(&self, diff: &str) -> Vec<Finding> {
        let mut findings = Vec::new();
        let mut file = Added::default();
        // Lines still expected in the current hunk: (old side, new side).
        let mut hunk = (0u32, 0u32);
        let mut next_line = 0u32;
        for line in diff.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if hunk.0 > 0 || hunk.1 > 0 {
                match line.as_bytes().first() {
                    Some(b'+') => {
                        file.lines.push((file.text.len(), next_line));
                        file.text.push_str(&line[1..]);
                        file.text.push('\n');
                        next_line += 1;
                        hunk.1 = hunk.1.saturating_sub(1);
                    }
                    Some(b'-') => hunk.0 = hunk.0.saturating_sub(1),
                    Some(b'\\') => {}
                    _ => {
                        // A context line ends a run of added lines.
                        file.text.push('\n');
                        next_line += 1;
                        hunk.0 = hunk.0.saturating_sub(1);
                        hunk.1 = hunk.1.saturating_sub(1);
                    }
                }
                continue;
            }
            if line.starts_with("diff --git ") {
                self.flush(&mut file, &mut findings);
            } else if let Some(path) = line.strip_prefix("+++ ") {
                self.flush(&mut file, &mut findings);
                file.path = new_path(path);
            } else if let Some(header) = line.strip_prefix("@@ ")
                && let Some((old, new, start)) = hunk_header(header)
            {
                hunk = (old, new);
                next_line = start;
                file.text.push('\n');
            }
        }
        self.flush(&mut file, &mut findings);
        findings
    }

    fn flush(&self, file: &mut Added, findings: &mut Vec<Finding>) {
        let added = std::mem::take(file);
        let Some(path) = added.path else { return };
        if added.lines.is_empty() || self.path_allowed(&path) {
            return;
        }
        for m in self.scan_text(&added.text) {
            let i = added.lines.partition_point(|&(off, _)| off <= m.start);
            let line = added.lines[i.saturating_sub(1)].1;
            findings.push(Finding {
                file: path.clone(),
                line,
                fingerprint: self.fingerprint_of(&m, &added.text),
                rule: m.rule.to_string(),
            });
        }
    }
}

/// The path of a `+++` line: `b/` stripped, C-style quoting undone, `None` for a
/// deleted file.
fn new_path(raw: &str) -> Option<String> {
    let raw = raw.split('\t').next().unwrap_or(raw);
    if raw == "/dev/null" {
        return None;
    }
    let unquoted = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => unquote(inner),
        None => raw.to_string(),
    };
    Some(
        unquoted
            .strip_prefix("b/")
            .map(str::to_string)
            .unwrap_or(unquoted),
    )
}

/// Undoes git's C-style path quoting (`\"`, `\\`, `\t`, `\n` and octal bytes).
fn unquote(inner: &str) -> String {
    let b = inner.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            let c = b[i + 1];
            let octal = b
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|x| (b'0'..=b'7').contains(x)));
            if let Some(d) = octal {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
                continue;
            }
            out.push(match c {
                b't' => b'\t',
                b'n' => b'\n',
                other => other,
            });
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `-a,b +c,d @@...` into (old count, new count, new start).
fn hunk_header(header: &str) -> Option<(u32, u32, u32)> {
    let mut parts = header.split_whitespace();
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let count = |range: &str| -> Option<(u32, u32)> {
        match range.split_once(',') {
            Some((s, n)) => Some((s.parse().ok()?, n.parse().ok()?)),
            None => Some((range.parse().ok()?, 1)),
        }
    };
    let (_, old_n) = count(old)?;
    let (new_start, new_n) = count(new)?;
    Some((old_n, new_n, new_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_paths() {
        assert_eq!(hunk_header("-1,3 +1,4 @@ fn x()"), Some((3, 4, 1)));
        assert_eq!(hunk_header("-0,0 +1 @@"), Some((0, 1, 1)));
        assert_eq!(new_path("b/src/a.rs"), Some("src/a.rs".into()));
        assert_eq!(new_path("/dev/null"), None);
        assert_eq!(
            new_path("\"b/sp ace\\303\\251.txt\""),
            Some("sp aceé.txt".into())
        );
    }
}
