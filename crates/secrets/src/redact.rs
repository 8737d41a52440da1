//! Redaction: every value a rule matches, and every literal value handed to an agent,
//! replaced by `[REDACTED:<rule>]` (`[REDACTED:env]` for literals) before text is
//! stored or served.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::scanner::Scanner;

/// Literal values shorter than this are not redacted: they would hit ordinary words.
pub const MIN_LITERAL_LEN: usize = 8;

/// The label of a literal value's redaction.
const ENV_LABEL: &str = "env";

/// Redacts rule matches and known literal values from text.
#[derive(Clone, Debug)]
pub struct Redactor {
    scanner: Scanner,
    literals: Option<AhoCorasick>,
    env_label: Arc<str>,
}

/// How `value` appears inside a JSON string, when that differs from the value itself.
fn json_escaped(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    (out != value).then_some(out)
}

impl Redactor {
    /// A redactor for `scanner`'s rules plus `values` (the values of the variables
    /// passed to an agent). Values shorter than [`MIN_LITERAL_LEN`] bytes are ignored;
    /// each value is also matched in its JSON-escaped form, as events carry it.
    pub fn new<I, S>(scanner: Scanner, values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut patterns: Vec<String> = Vec::new();
        for v in values {
            let v = v.as_ref();
            if v.len() < MIN_LITERAL_LEN {
                continue;
            }
            patterns.extend(json_escaped(v));
            patterns.push(v.to_string());
        }
        patterns.sort();
        patterns.dedup();
        // Literal values are plain strings: building their automaton cannot fail
        // within the default size limits, and if it ever did the rules still apply.
        let literals = (!patterns.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        Redactor {
            scanner,
            literals,
            env_label: ENV_LABEL.into(),
        }
    }

    /// The scanner this redactor applies.
    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// `text` with every secret replaced; borrowed, without allocating, when there is
    /// nothing to replace. Overlapping matches are merged into one replacement named
    /// after the first. Give it whole lines or whole documents: a value split between
    /// two calls (two chunks of a stream) is not recognised in either.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut spans: Vec<(usize, usize, Arc<str>)> = self
            .scanner
            .scan_text(text)
            .into_iter()
            .map(|m| (m.start, m.end, m.rule))
            .collect();
        if let Some(ac) = &self.literals {
            spans.extend(
                ac.find_iter(text)
                    .map(|m| (m.start(), m.end(), self.env_label.clone())),
            );
        }
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end, label)) = spans.next() {
            // Merge every span that overlaps this one into a single replacement.
            while let Some((_, e, _)) = spans.next_if(|&(s, _, _)| s < end) {
                end = end.max(e);
            }
            out.push_str(&text[copied..start]);
            out.push_str("[REDACTED:");
            out.push_str(&label);
            out.push(']');
            copied = end;
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}
