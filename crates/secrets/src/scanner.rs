//! The scanner: one case-insensitive Aho-Corasick pass over every rule's keywords, then
//! each hit rule's regex on the hit's line only (or a bounded window, for rules that
//! span lines). Text with no keyword costs one automaton pass and nothing more.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::check;
use crate::config::{Allowlist, ConfigError, SecretsConfig};
use crate::rules::{self, Kind};

/// How far past its hit a line rule's window reaches (to the end of that later line):
/// on code dense with keywords one regex call then covers several hits, whose fixed
/// cost outweighs scanning a few more bytes.
const LINE_WINDOW_EXTRA: usize = 256;
/// How far past its keyword a multi-line rule (a private key block) may reach.
const MULTILINE_SPAN: usize = 64 * 1024;
/// How far before its keyword a multi-line rule's match may start (`-----BEGIN` and a
/// key type come before `PRIVATE KEY`).
const MULTILINE_LEAD: usize = 256;

/// One credential found in text: the rule and the byte range of the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The rule's id.
    pub rule: Arc<str>,
    /// Byte offset of the value's first byte.
    pub start: usize,
    /// Byte offset one past the value's last byte.
    pub end: usize,
}

struct Rule {
    id: Arc<str>,
    regex: Regex,
    /// Capture groups that hold the value, first participating one wins.
    groups: Vec<usize>,
    entropy: f64,
    min_len: usize,
    multiline: bool,
    kind: Kind,
}

/// A compiled set of rules and an allowlist. Cheap to clone (the automata are shared).
#[derive(Clone)]
pub struct Scanner {
    rules: Arc<[Rule]>,
    prefilter: Option<AhoCorasick>,
    /// For each prefilter pattern, the rules it is a keyword of.
    keyword_rules: Arc<[Vec<usize>]>,
    /// Rules without keywords: their regex runs over the whole text.
    unfiltered: Arc<[usize]>,
    allowlist: Arc<Allowlist>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.rules.iter().map(|r| &*r.id).collect();
        f.debug_struct("Scanner").field("rules", &ids).finish()
    }
}

/// A stable, short fingerprint of a finding: hex of the first 8 bytes of
/// sha256(rule, NUL, value). It identifies a value without revealing it.
pub fn fingerprint(rule: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn push_builtin(
    rules: &mut Vec<Rule>,
    keywords: &mut Vec<(String, usize)>,
    b: rules::Builtin,
) -> Result<(), ConfigError> {
    let regex = Regex::new(&b.regex).map_err(|e| ConfigError::BadValue {
        file: "built-in rules".into(),
        key: b.id.into(),
        value: b.regex.clone(),
        message: e.to_string(),
    })?;
    keywords.extend(b.keywords.iter().map(|k| (k.to_string(), rules.len())));
    rules.push(Rule {
        id: b.id.into(),
        groups: value_groups(&regex),
        regex,
        entropy: b.entropy,
        min_len: b.min_len,
        multiline: b.multiline,
        kind: b.kind,
    });
    Ok(())
}

fn value_groups(regex: &Regex) -> Vec<usize> {
    let groups: Vec<usize> = regex
        .capture_names()
        .enumerate()
        .filter(|(_, n)| n.is_some_and(|n| n.starts_with("secret")))
        .map(|(i, _)| i)
        .collect();
    if groups.is_empty() { vec![0] } else { groups }
}

impl Scanner {
    /// Compiles the built-in rules (minus those `config` disables), `config`'s extra
    /// rules and its allowlist. That takes tens of milliseconds (about 75 ms in a debug
    /// build): build one per configuration and clone it, never one per text.
    pub fn new(config: &SecretsConfig) -> Result<Scanner, ConfigError> {
        let mut rules = Vec::new();
        let mut keywords: Vec<(String, usize)> = Vec::new();
        // Order is priority: where two rules match overlapping bytes the earlier one is
        // kept, so specific formats come first and assignments of any value last.
        let (specific, assignments): (Vec<_>, Vec<_>) = rules::builtins()
            .into_iter()
            .filter(|b| !config.disabled.iter().any(|d| d == b.id))
            .partition(|b| b.kind == Kind::Token);
        for b in specific {
            push_builtin(&mut rules, &mut keywords, b)?;
        }
        for r in &config.rules {
            keywords.extend(r.keywords.iter().map(|k| (k.to_lowercase(), rules.len())));
            rules.push(Rule {
                id: r.id.as_str().into(),
                groups: value_groups(&r.regex),
                regex: r.regex.clone(),
                entropy: r.entropy.unwrap_or(0.0),
                min_len: 1,
                multiline: false,
                kind: Kind::Token,
            });
        }
        for b in assignments {
            push_builtin(&mut rules, &mut keywords, b)?;
        }
        let mut patterns: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        for (k, rule) in keywords {
            match patterns.iter().position(|p| *p == k) {
                Some(i) => keyword_rules[i].push(rule),
                None => {
                    patterns.push(k);
                    keyword_rules.push(vec![rule]);
                }
            }
        }
        let with_keywords: Vec<usize> = keyword_rules.iter().flatten().copied().collect();
        let unfiltered = (0..rules.len())
            .filter(|i| !with_keywords.contains(i))
            .collect();
        let prefilter = if patterns.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(&patterns)
                .map_err(|e| ConfigError::BadValue {
                    file: "rules".into(),
                    key: "keywords".into(),
                    value: patterns.join(", "),
                    message: e.to_string(),
                })?;
            Some(ac)
        };
        Ok(Scanner {
            rules: rules.into(),
            prefilter,
            keyword_rules: keyword_rules.into(),
            unfiltered,
            allowlist: Arc::new(config.allowlist.clone()),
        })
    }

    /// The built-in rules with no configuration.
    pub fn builtin() -> Scanner {
        // The built-in table is compiled by every test; it cannot fail at run time.
        Scanner::new(&SecretsConfig::default()).expect("built-in rules compile")
    }

    /// The ids of the active rules, in order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }

    /// Whether `path` is allowlisted (its findings are never reported).
    pub fn path_allowed(&self, path: &str) -> bool {
        self.allowlist
            .paths
            .iter()
            .any(|g| crate::config::glob_match(g, path))
    }

    /// Every credential in `text`, ordered by start; values the allowlist names (by
    /// regex or fingerprint) are left out.
    pub fn scan_text(&self, text: &str) -> Vec<Match> {
        let mut out = Vec::new();
        if let Some(ac) = &self.prefilter {
            // Bytes up to which each rule has already run: later hits inside that
            // range would only repeat its work.
            // It is allocated on the first hit, so text without any costs nothing.
            let mut done: Vec<usize> = Vec::new();
            for hit in ac.find_overlapping_iter(text) {
                if done.is_empty() {
                    done = vec![0; self.rules.len()];
                }
                for &r in &self.keyword_rules[hit.pattern()] {
                    if hit.start() < done[r] {
                        continue;
                    }
                    let rule = &self.rules[r];
                    let (start, end) = if rule.multiline {
                        // Around the hit, not from its line's start: a block inside a
                        // long line (a JSON event with escaped newlines) may lie far
                        // past the start of that line.
                        let from = hit.start().saturating_sub(MULTILINE_LEAD);
                        let to = (hit.end() + MULTILINE_SPAN).min(text.len());
                        (
                            line_start(text, hit.start()).max(ceil_boundary(text, from)),
                            floor_boundary(text, to),
                        )
                    } else {
                        (
                            line_start(text, hit.start()),
                            line_end(text, (hit.end() + LINE_WINDOW_EXTRA).min(text.len())),
                        )
                    };
                    self.run_rule(r, text, start, end, &mut out);
                    done[r] = end;
                }
            }
        }
        for &r in self.unfiltered.iter() {
            self.run_rule(r, text, 0, text.len(), &mut out);
        }
        keep_first_rule(&mut out);
        out.into_iter()
            .map(|(r, start, end)| Match {
                rule: self.rules[r].id.clone(),
                start,
                end,
            })
            .collect()
    }

    /// The fingerprint of a match found in `text`.
    pub fn fingerprint_of(&self, m: &Match, text: &str) -> String {
        fingerprint(&m.rule, &text[m.start..m.end])
    }

    fn run_rule(&self, r: usize, text: &str, start: usize, end: usize, out: &mut Vec<Span>) {
        let rule = &self.rules[r];
        let window = &text[start..end];
        for caps in rule.regex.captures_iter(window) {
            let Some((value, quoted)) = rule
                .groups
                .iter()
                .enumerate()
                .find_map(|(n, &g)| caps.get(g).map(|m| (m, n == 0)))
            else {
                continue;
            };
            // A match in a documentation domain (`user:pass@example.com`) is an example.
            let whole = caps.get(0).map_or("", |m| m.as_str());
            if contains_ignore_case(whole, b"example.")
                || !self.accept(rule, value.as_str(), quoted)
            {
                continue;
            }
            out.push((r, start + value.start(), start + value.end()));
        }
    }

    fn accept(&self, rule: &Rule, value: &str, quoted: bool) -> bool {
        if value.len() < rule.min_len
            || check::is_placeholder(value)
            || check::entropy(value) < rule.entropy
        {
            return false;
        }
        if rule.kind == Kind::Assignment
            && (check::is_uuid(value)
                || check::is_word_slug(value)
                || check::is_path(value)
                || check::is_alphabet(value)
                || !check::mixes_classes(value)
                || (!quoted && check::looks_like_code(value)))
        {
            return false;
        }
        if self.allowlist.regexes.iter().any(|r| r.is_match(value)) {
            return false;
        }
        let fps = &self.allowlist.fingerprints;
        fps.is_empty() || !fps.contains(&fingerprint(&rule.id, value))
    }
}

/// A match before it is named: (rule index, start, end).
type Span = (usize, usize, usize);

/// Sorts `spans` and drops each one that overlaps a span of an earlier (more specific)
/// rule, and exact repeats.
fn keep_first_rule(spans: &mut Vec<Span>) {
    spans.sort_by_key(|&(r, s, e)| (s, std::cmp::Reverse(e), r));
    spans.dedup();
    let mut dropped = vec![false; spans.len()];
    for i in 0..spans.len() {
        let (ri, _, ei) = spans[i];
        for j in i + 1..spans.len() {
            let (rj, sj, _) = spans[j];
            if sj >= ei {
                break;
            }
            if ri <= rj {
                dropped[j] = true;
            } else {
                dropped[i] = true;
            }
        }
    }
    let mut i = 0;
    spans.retain(|_| {
        i += 1;
        !dropped[i - 1]
    });
}

fn contains_ignore_case(haystack: &str, needle: &[u8]) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn line_start(text: &str, at: usize) -> usize {
    memchr::memrchr(b'\n', &text.as_bytes()[..at]).map_or(0, |i| i + 1)
}

fn line_end(text: &str, at: usize) -> usize {
    memchr::memchr(b'\n', &text.as_bytes()[at..]).map_or(text.len(), |i| at + i)
}

fn ceil_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scanner_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + Clone>() {}
        shared::<Scanner>();
        shared::<crate::Redactor>();
    }

    #[test]
    fn overlapping_spans_keep_the_earlier_rule_and_the_longer_span() {
        let mut spans = vec![(3, 0, 10), (1, 2, 8), (0, 20, 30), (0, 20, 25), (2, 40, 45)];
        keep_first_rule(&mut spans);
        assert_eq!(spans, vec![(1, 2, 8), (0, 20, 30), (2, 40, 45)]);
    }
}
