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
        added_files(diff, |file| self.flush(file, &mut findings));
        findings
    }

    fn flush(&self, added: Added, findings: &mut Vec<Finding>) {
        let Some(path) = &added.path else { return };
        if added.lines.is_empty() || self.path_allowed(path) {
            return;
        }
        for m in self.scan_text(&added.text) {
            findings.push(Finding {
                file: path.clone(),
                line: added.line_at(m.start),
                fingerprint: self.fingerprint_of(&m, &added.text),
                rule: m.rule.to_string(),
            });
        }
    }
}

/// Calls `each` with the added lines of every file of `diff`.
fn added_files(diff: &str, mut each: impl FnMut(Added)) {
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
            each(std::mem::take(&mut file));
        } else if let Some(path) = line.strip_prefix("+++ ") {
            each(std::mem::take(&mut file));
            file.path = new_path(path);
        } else if let Some(header) = line.strip_prefix("@@ ")
            && let Some((old, new, start)) = hunk_header(header)
        {
            hunk = (old, new);
            next_line = start;
            file.text.push('\n');
        }
    }
    each(file);
}

impl Added {
    /// The new-file line number of byte `offset` of the added text.
    fn line_at(&self, offset: usize) -> u32 {
        let i = self.lines.partition_point(|&(off, _)| off <= offset);
        self.lines[i.saturating_sub(1)].1
    }
}

/// Every occurrence of a literal value on an added line of `diff`: each of `literals`
/// is a rule id and a value, such as the secrets handed to an agent, which no rule may
/// match. No path or fingerprint allowlist applies: such a value is a real credential
/// wherever it lands. Values shorter than [`crate::MIN_LITERAL_LEN`] are ignored.
pub fn scan_diff_literals(diff: &str, literals: &[(&str, &str)]) -> Vec<Finding> {
    let literals: Vec<(&str, &str)> = literals
        .iter()
        .copied()
        .filter(|(_, v)| v.len() >= crate::MIN_LITERAL_LEN)
        .collect();
    let mut findings = Vec::new();
    if literals.is_empty() {
        return findings;
    }
    // Literal values are plain strings: building their automaton cannot fail within
    // the default size limits.
    let Ok(ac) = aho_corasick::AhoCorasick::new(literals.iter().map(|(_, v)| v)) else {
        return findings;
    };
    added_files(diff, |file| {
        let Some(path) = &file.path else { return };
        if file.lines.is_empty() {
            return;
        }
        for m in ac.find_overlapping_iter(&file.text) {
            let (rule, value) = literals[m.pattern().as_usize()];
            findings.push(Finding {
                file: path.clone(),
                line: file.line_at(m.start()),
                rule: rule.to_string(),
                fingerprint: crate::fingerprint(rule, value),
            });
        }
    });
    findings
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
    fn literal_values_are_found_on_added_lines_only_whatever_the_allowlist() {
        let value = "hunter2-but-longer";
        let diff = format!(
            "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,3 @@\n keep\n-old {value}\n+see {value}\n kept\n\
             diff --git a/tests/fixtures/x b/tests/fixtures/x\n--- /dev/null\n+++ b/tests/fixtures/x\n@@ -0,0 +1,2 @@\n+one\n+two {value} and {value}\n"
        );
        let found = scan_diff_literals(
            &diff,
            &[("job-secret:DEMO", value), ("job-secret:SHORT", "abc")],
        );
        let places: Vec<(&str, u32, &str)> = found
            .iter()
            .map(|f| (f.file.as_str(), f.line, f.rule.as_str()))
            .collect();
        assert_eq!(
            places,
            [
                ("a.txt", 2, "job-secret:DEMO"),
                ("tests/fixtures/x", 2, "job-secret:DEMO"),
                ("tests/fixtures/x", 2, "job-secret:DEMO"),
            ]
        );
        assert_eq!(
            found[0].fingerprint,
            crate::fingerprint("job-secret:DEMO", value)
        );
        assert!(!format!("{found:?}").contains(value));
        assert!(scan_diff_literals(&diff, &[]).is_empty());
        // The rules alone see nothing here: the value matches none.
        assert!(Scanner::builtin().scan_diff(&diff).is_empty());
    }

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
