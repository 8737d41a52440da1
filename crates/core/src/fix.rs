//! Fix rounds: what the checking stage tells the agent when its result failed, and
//! the reason a job fails with when the last round did not fix it.
//!
//! The prompt names each failure so the agent can act without asking: a gate's name,
//! its command and the tail of its output; the review's findings; the paths that
//! conflict with the base; where a secret was found (never its value). Everything in it
//! is capped, so a gate that prints megabytes cannot blow the agent's context.

use crate::review::Finding;
use std::fmt::Write as _;

/// The most of one gate's output a prompt quotes.
pub const MAX_QUOTED_OUTPUT: usize = 4096;
/// The longest prompt a fix round sends.
pub const MAX_PROMPT: usize = 32 * 1024;
/// The most review findings or conflicting paths a prompt lists.
pub const MAX_LISTED: usize = 50;

/// One reason a result failed its checks.
#[derive(Debug, Clone, PartialEq)]
pub enum FixReason {
    /// A gate failed.
    Gate {
        /// The gate's name.
        name: String,
        /// Its command.
        command: String,
        /// Why it failed, in words (`exited 1`, `timed out after 10m`, a figure under
        /// its minimum).
        why: String,
        /// The tail of its output.
        output_tail: String,
    },
    /// The review scored the result under its threshold, or gave no verdict.
    Review {
        /// The score, when there was a verdict.
        score: Option<f64>,
        /// The score needed.
        threshold: f64,
        /// Why it failed when there was no verdict.
        why: Option<String>,
        /// What the reviewer found.
        findings: Vec<Finding>,
    },
    /// The result no longer merges onto the tip of its base.
    Conflict {
        /// The base branch.
        base: String,
        /// The paths that conflict.
        paths: Vec<String>,
    },
    /// A credential in the result.
    Secret {
        /// The file.
        file: String,
        /// The line in it.
        line: u32,
        /// The rule that found it.
        rule: String,
    },
}

impl FixReason {
    /// The job's failure reason when the last round ended with this one first:
    /// `gates_failed: <gate>`, `review_rejected`, `conflict` or `secret_found`.
    pub fn failure_reason(&self) -> String {
        match self {
            FixReason::Gate { name, .. } => format!("gates_failed: {name}"),
            FixReason::Review { .. } => "review_rejected".to_string(),
            FixReason::Conflict { .. } => "conflict".to_string(),
            FixReason::Secret { .. } => "secret_found".to_string(),
        }
    }

    /// One line for a `run.fix_round` event and `gantry show`.
    pub fn summary(&self) -> String {
        match self {
            FixReason::Gate { name, why, .. } => format!("gate {name}: {why}"),
            FixReason::Review {
                score: Some(s),
                threshold,
                findings,
                ..
            } => format!(
                "review scored {s:.2} (needs {threshold:.2}), {} findings",
                findings.len()
            ),
            FixReason::Review { why, .. } => {
                format!("review: {}", why.as_deref().unwrap_or("no verdict"))
            }
            FixReason::Conflict { base, paths } => {
                format!("conflicts with {base} in {} paths", paths.len())
            }
            FixReason::Secret { file, line, rule } => {
                format!("secret ({rule}) at {file}:{line}")
            }
        }
    }
}

/// The prompt of fix round `round` (from 1) of `rounds`, naming every reason.
pub fn prompt(round: u32, rounds: u32, reasons: &[FixReason]) -> String {
    let mut p = format!(
        "Your change did not pass Gantry's checks (fix round {round} of {rounds}). \
         Fix what is listed below in the same worktree, then stop. Do not weaken, skip or \
         delete a check to make it pass.\n"
    );
    for reason in reasons {
        p.push('\n');
        section(&mut p, reason);
    }
    cap(p, MAX_PROMPT)
}

fn section(p: &mut String, reason: &FixReason) {
    // Writing to a String cannot fail.
    let _ = match reason {
        FixReason::Gate {
            name,
            command,
            why,
            output_tail,
        } => writeln!(
            p,
            "## Gate `{name}` failed: {why}\nCommand: `{command}`\nEnd of its output:\n```\n{}\n```",
            tail(output_tail, MAX_QUOTED_OUTPUT).trim_end()
        ),
        FixReason::Review {
            score,
            threshold,
            why,
            findings,
        } => {
            let head = match (score, why) {
                (Some(s), _) => format!("scored {s:.2}, under the {threshold:.2} needed"),
                (None, Some(w)) => w.clone(),
                (None, None) => "gave no verdict".to_string(),
            };
            let _ = writeln!(p, "## The review {head}");
            for f in findings.iter().take(MAX_LISTED) {
                let place = match (&f.file, f.line) {
                    (Some(file), Some(line)) => format!("{file}:{line}: "),
                    (Some(file), None) => format!("{file}: "),
                    _ => String::new(),
                };
                let _ = writeln!(p, "- [{:?}] {place}{}", f.severity, f.message);
            }
            more(p, findings.len())
        }
        FixReason::Conflict { base, paths } => {
            let _ = writeln!(
                p,
                "## Your branch conflicts with the current `{base}`\nMerge the current `{base}` into your work and resolve these paths:"
            );
            for path in paths.iter().take(MAX_LISTED) {
                let _ = writeln!(p, "- {path}");
            }
            more(p, paths.len())
        }
        FixReason::Secret { file, line, rule } => writeln!(
            p,
            "## A credential ({rule}) is in {file} at line {line}\nRemove it; read it from the environment or a secret store instead."
        ),
    };
}

fn more(p: &mut String, n: usize) -> std::fmt::Result {
    if n > MAX_LISTED {
        writeln!(p, "- ... and {} more", n - MAX_LISTED)
    } else {
        Ok(())
    }
}

/// The last `max` bytes of `s`, starting on a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// `s` cut to `max` bytes on a character boundary, saying so.
fn cap(mut s: String, max: usize) -> String {
    const CUT: &str = "\n[... cut: the prompt is capped]\n";
    if s.len() <= max {
        return s;
    }
    let mut end = max - CUT.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(CUT);
    s
}
