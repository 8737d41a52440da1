//! AI review: what a job asks of its reviewer, and reading the reviewer's verdict.
//!
//! The reviewer is an agent run on a read-only checkout of the result. It is asked to
//! end with a JSON verdict `{score, verdict, findings}`; agents wrap it in prose and
//! code fences, so [`parse_verdict`] takes the last JSON object in the final message
//! that reads as a verdict. A missing or malformed verdict is a failed review with that
//! reason, never a crash.

use crate::engine::Insights;
use crate::spec::{EngineKind, Step};
use serde::{Deserialize, Serialize};

/// The score a review must reach when the job does not say.
pub const DEFAULT_THRESHOLD: f64 = 0.8;
/// The longest reviewer instructions.
pub const MAX_INSTRUCTIONS: usize = 64 * 1024;
/// The most findings kept from one verdict; the rest are counted, not kept.
pub const MAX_FINDINGS: usize = 200;
/// The longest finding message kept.
pub const MAX_FINDING_MESSAGE: usize = 2048;

/// A validated review request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewSpec {
    /// The reviewer's engine: an agent CLI, or the script engine (deterministic, for
    /// tests and the demo).
    pub engine: EngineKind,
    /// The model asked of the reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The lowest score that passes, in 0..=1.
    pub threshold: f64,
    /// What the reviewer should look for, beyond the job's own instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// The script engine's steps (only with `engine: script`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

/// Which review a job asked for in its file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewChoice {
    /// No review.
    #[default]
    None,
    /// A review written in the job file.
    Inline(ReviewSpec),
    /// A named profile of `gantry.toml`, resolved by the server at submit.
    Profile(String),
}

impl ReviewChoice {
    /// Whether the job asked for no review.
    pub fn is_none(&self) -> bool {
        matches!(self, ReviewChoice::None)
    }
}

/// A review request that could not be accepted: the key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct ReviewError {
    /// The key, e.g. `threshold` or `steps[2].run`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

const REVIEW_KEYS: [&str; 5] = ["engine", "model", "threshold", "instructions", "steps"];

/// Reads a review request (a JSON object, from YAML or TOML), checking every rule.
pub fn parse_review(v: &serde_json::Value) -> Result<ReviewSpec, ReviewError> {
    let err = |key: &str, message: String| ReviewError {
        key: key.to_string(),
        message,
    };
    let serde_json::Value::Object(map) = v else {
        return Err(err(
            "review",
            "expected a map like `{ engine: claude-code, threshold: 0.9 }` or a profile name"
                .to_string(),
        ));
    };
    if let Some(k) = map.keys().find(|k| !REVIEW_KEYS.contains(&k.as_str())) {
        return Err(err(
            k,
            format!("unknown key (known: {})", REVIEW_KEYS.join(", ")),
        ));
    }
    let text = |key: &str| -> Result<Option<String>, ReviewError> {
        match map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(err(key, "expected a non-empty string".to_string())),
        }
    };
    let engine_name = text("engine")?.ok_or_else(|| {
        err(
            "engine",
            "missing `engine`: claude-code, codex or script".to_string(),
        )
    })?;
    let engine = match EngineKind::parse(&engine_name) {
        Some(e) if e.is_agent_cli() || e == EngineKind::Script => e,
        _ => {
            return Err(err(
                "engine",
                format!("`{engine_name}` cannot review (use claude-code, codex or script)"),
            ));
        }
    };
    let threshold = match map.get("threshold") {
        None | Some(serde_json::Value::Null) => DEFAULT_THRESHOLD,
        Some(serde_json::Value::Number(n)) => n
            .as_f64()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| err("threshold", format!("{n} is not within 0..=1")))?,
        Some(_) => return Err(err("threshold", "expected a number in 0..=1".to_string())),
    };
    let instructions = text("instructions")?;
    if instructions
        .as_ref()
        .is_some_and(|i| i.len() > MAX_INSTRUCTIONS)
    {
        return Err(err(
            "instructions",
            format!("longer than {MAX_INSTRUCTIONS} bytes"),
        ));
    }
    let steps = match (map.get("steps"), engine) {
        (None | Some(serde_json::Value::Null), EngineKind::Script) => {
            return Err(err(
                "steps",
                "the script engine reviews by its steps: give `steps`".to_string(),
            ));
        }
        (None | Some(serde_json::Value::Null), _) => Vec::new(),
        (Some(s), EngineKind::Script) => crate::engine::parse_steps(s).map_err(|e| {
            err(
                &format!("steps[{}].{}", e.index, e.field),
                e.message.to_string(),
            )
        })?,
        (Some(_), _) => {
            return Err(err(
                "steps",
                format!("only the script engine takes steps, not {engine_name}"),
            ));
        }
    };
    Ok(ReviewSpec {
        engine,
        model: text("model")?,
        threshold,
        instructions,
        steps,
    })
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Must be fixed.
    High,
    /// Should be fixed.
    Medium,
    /// May be fixed.
    Low,
    /// A remark.
    Info,
}

/// One thing the reviewer found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The file, relative to the repository root, when the finding is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// How serious it is.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
}

/// The reviewer's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// 0 (reject) to 1 (ship it).
    pub score: f64,
    /// The reviewer's word for it (`approve`, `request_changes`, ...), as given.
    pub verdict: String,
    /// What it found, at most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Findings left out past [`MAX_FINDINGS`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub findings_dropped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Verdict {
    /// Whether the verdict passes `threshold`.
    pub fn passes(&self, threshold: f64) -> bool {
        self.score >= threshold
    }
}

/// What one review of a run's result gave: the verdict and whether it passed, or why
/// there was none, with what the reviewer spent (counted in the run's figures too, and
/// shown apart here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewResult {
    /// The check round it reviewed (0: the agent's first result).
    pub round: u32,
    /// The reviewer's engine.
    pub engine: EngineKind,
    /// The model asked of it, when the review named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whether the result passed: a verdict scoring at least `threshold`.
    pub passed: bool,
    /// The score needed.
    pub threshold: f64,
    /// The verdict, when the reviewer gave a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why the review failed without a verdict (the reviewer failed, gave none, or gave
    /// a malformed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The tree it reviewed.
    pub tree: String,
    /// How long the reviewer ran.
    pub duration_ms: u64,
    /// What the reviewer spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insights: Option<Insights>,
}

impl ReviewResult {
    /// The verdict's score, when there was one.
    pub fn score(&self) -> Option<f64> {
        self.verdict.as_ref().map(|v| v.score)
    }
}

/// The most of the diff a reviewer's prompt quotes; past it, the prompt lists the
/// changed files and the reviewer reads them in its checkout.
pub const MAX_PROMPT_DIFF: usize = 96 * 1024;
/// The most of the job's own instructions a reviewer's prompt quotes.
pub const MAX_PROMPT_JOB: usize = 16 * 1024;

/// What a reviewer is told about the result it reviews.
#[derive(Debug, Clone, Copy)]
pub struct ReviewBrief<'a> {
    /// The job's title.
    pub title: &'a str,
    /// The job's instructions to its agent.
    pub job: &'a str,
    /// What the review asks beyond them.
    pub instructions: Option<&'a str>,
    /// The change: `git diff` of the result against its base.
    pub diff: &'a str,
    /// The change in brief: `git diff --stat`.
    pub stat: &'a str,
    /// The gates' results on this tree.
    pub gates: &'a [crate::gate::GateResult],
}

/// The reviewer's prompt: the job, what to look for, the gates' results, the change
/// (capped, with the changed files listed when it is cut), and the verdict asked for.
pub fn prompt(b: &ReviewBrief<'_>) -> String {
    use std::fmt::Write as _;
    let mut p = String::from(
        "You are reviewing the result of an autonomous coding agent's job. Your working \
         directory is a read-only copy of the result: read any file you need, change \
         nothing.\n\n",
    );
    let _ = writeln!(p, "## The job: {}\n", b.title.trim());
    let _ = writeln!(
        p,
        "{}\n",
        crate::text::clip_marked(b.job.trim(), MAX_PROMPT_JOB)
    );
    p.push_str("## What to look for\n\n");
    match b.instructions {
        Some(i) => {
            let _ = writeln!(p, "{}\n", i.trim());
        }
        None => p.push_str(
            "Does the change do what the job asks, correctly and completely? Look for bugs, \
             missing tests, security problems and changes the job did not ask for.\n\n",
        ),
    }
    if !b.gates.is_empty() {
        p.push_str("## Checks that ran on this result\n\n");
        for g in b.gates {
            let status = if g.passed { "passed" } else { "failed" };
            let figure = g
                .figure
                .map(|f| format!(", figure {f:.2}"))
                .unwrap_or_default();
            let _ = writeln!(p, "- `{}` {status}{figure}", g.name);
        }
        p.push('\n');
    }
    p.push_str("## The change\n\n");
    let _ = writeln!(p, "```\n{}\n```\n", b.stat.trim_end());
    if b.diff.len() <= MAX_PROMPT_DIFF {
        let _ = writeln!(p, "```diff\n{}\n```\n", b.diff.trim_end());
    } else {
        let _ = writeln!(
            p,
            "```diff\n{}\n```\n(The diff is {} bytes; only its first {MAX_PROMPT_DIFF} are \
             shown. Read the changed files listed above in your working directory.)\n",
            crate::text::clip_marked(b.diff, MAX_PROMPT_DIFF),
            b.diff.len()
        );
    }
    p.push_str(
        "## Your answer\n\nEnd your answer with one JSON object, and nothing after it:\n\
         {\"score\": <0 to 1>, \"verdict\": \"approve\" or \"request_changes\", \"findings\": \
         [{\"file\": \"path\", \"line\": 1, \"severity\": \"high|medium|low|info\", \"message\": \
         \"what is wrong and how to fix it\"}]}\n\
         A score of 1 means ship it as it is; 0 means it must not ship.\n",
    );
    p
}

/// Why a reviewer's message gave no verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictError {
    /// No JSON object in the message at all.
    #[error("the reviewer's final message holds no JSON verdict")]
    Missing,
    /// The last JSON object with a `score` is not a valid verdict.
    #[error("the reviewer's verdict is malformed: {0}")]
    Malformed(String),
}

/// The verdict in a reviewer's final message: the last JSON object in it that has a
/// `score`, read leniently (a `score` given as a string, a missing `verdict` or
/// `findings`, unknown keys and unknown severities are accepted; a score outside 0..=1
/// or not a number is not).
pub fn parse_verdict(message: &str) -> Result<Verdict, VerdictError> {
    let mut last_err = None;
    for object in json_objects(message).into_iter().rev() {
        let Some(score) = object.get("score") else {
            continue;
        };
        match verdict_of(score, &object) {
            Ok(v) => return Ok(v),
            Err(e) => {
                last_err.get_or_insert(e);
                // The last object with a score decides; an earlier one is only an
                // example the reviewer quoted.
                break;
            }
        }
    }
    Err(last_err.map_or(VerdictError::Missing, VerdictError::Malformed))
}

fn verdict_of(
    score: &serde_json::Value,
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<Verdict, String> {
    let score = match score {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("score {score} is not a number"))?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("score {score} is not within 0..=1"));
    }
    let verdict = match object.get("verdict") {
        Some(serde_json::Value::String(s)) => s.trim().to_string(),
        _ => String::new(),
    };
    let items = match object.get("findings") {
        None | Some(serde_json::Value::Null) => &Vec::new(),
        Some(serde_json::Value::Array(items)) => items,
        Some(_) => return Err("findings is not a list".to_string()),
    };
    let findings: Vec<Finding> = items
        .iter()
        .take(MAX_FINDINGS)
        .filter_map(finding_of)
        .collect();
    Ok(Verdict {
        score,
        verdict,
        findings,
        findings_dropped: items.len().saturating_sub(MAX_FINDINGS),
    })
}

/// A finding read leniently: a bare string is a message; a missing severity is medium.
fn finding_of(v: &serde_json::Value) -> Option<Finding> {
    let (file, line, severity, message) = match v {
        serde_json::Value::String(s) => (None, None, None, s.clone()),
        serde_json::Value::Object(m) => (
            m.get("file").and_then(|f| f.as_str()).map(str::to_string),
            m.get("line")
                .and_then(|l| l.as_u64())
                .and_then(|l| u32::try_from(l).ok()),
            m.get("severity").and_then(|s| s.as_str()),
            m.get("message")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
        ),
        _ => return None,
    };
    let severity = match severity.map(str::to_ascii_lowercase).as_deref() {
        Some("high" | "critical" | "error" | "blocker") => Severity::High,
        Some("low" | "minor" | "nit") => Severity::Low,
        Some("info" | "note") => Severity::Info,
        _ => Severity::Medium,
    };
    let mut message = message.trim().to_string();
    if message.is_empty() {
        return None;
    }
    if message.len() > MAX_FINDING_MESSAGE {
        let mut cut = MAX_FINDING_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Some(Finding {
        file,
        line,
        severity,
        message,
    })
}

/// Every top-level JSON object in `text`, in order: each `{` that starts a balanced,
/// parseable object (strings and escapes respected) is one, and scanning resumes after
/// it.
fn json_objects(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|b| *b == b'{') {
        let start = i + off;
        let end = balanced_end(bytes, start);
        let parsed = end.and_then(|end| serde_json::from_str(&text[start..end]).ok());
        match (end, parsed) {
            // Objects nested in this one are part of it: go on after it.
            (Some(end), Some(serde_json::Value::Object(map))) => {
                out.push(map);
                i = end;
            }
            _ => i = start + 1,
        }
    }
    out
}

/// The end (exclusive) of the balanced `{...}` starting at `start`.
fn balanced_end(bytes: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, b) in bytes.iter().enumerate().skip(start) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::GateResult;

    fn gate(name: &str, passed: bool) -> GateResult {
        GateResult {
            name: name.into(),
            passed,
            exit_code: Some(0),
            figure: Some(91.5),
            duration_ms: 1,
            tree: "t".into(),
            reason: None,
            output: "o".into(),
            output_tail: String::new(),
        }
    }

    #[test]
    fn the_prompt_quotes_the_job_gates_and_a_capped_diff() {
        let gates = [gate("coverage", true)];
        let small = ReviewBrief {
            title: "Add a greeting",
            job: "Write hello.txt",
            instructions: Some("Check the spelling."),
            diff: "+hello",
            stat: " hello.txt | 1 +",
            gates: &gates,
        };
        let p = prompt(&small);
        for part in [
            "Add a greeting",
            "Write hello.txt",
            "Check the spelling.",
            "`coverage` passed, figure 91.50",
            "+hello",
            "hello.txt | 1 +",
        ] {
            assert!(p.contains(part), "{part:?} missing from {p}");
        }
        // The prompt's own example verdict is not a verdict: a reviewer echoing it gives none.
        assert_eq!(parse_verdict(&p), Err(VerdictError::Missing));
        let big = "+x\n".repeat(MAX_PROMPT_DIFF);
        let p = prompt(&ReviewBrief {
            diff: &big,
            ..small
        });
        assert!(
            p.len() < MAX_PROMPT_DIFF + 4096,
            "capped: {} bytes",
            p.len()
        );
        assert!(p.contains("only its first"));
    }
}
