//! How jobs, runs, insights and events read in a terminal: labels, tables and one-line
//! summaries, with no I/O (printing is [`crate::output`]'s).

use crate::output::{self, Table};
use gantry_core::event::{
    self, Event, JobStateChanged, JobSubmitted, RunCheckpoint, RunClaimed, RunFinished, RunOutput,
    RunStarted,
};
use gantry_core::{Job, JobState, Run};

/// A job's state with a pending stop noted.
pub(crate) fn state_label(j: &Job) -> String {
    match j.stop_requested {
        Some(k) if j.state == JobState::Running => format!("running ({} requested)", k.as_str()),
        _ => j.state.to_string(),
    }
}

pub(crate) fn short_commit(c: &Option<String>) -> String {
    c.as_deref()
        .map(|c| c.chars().take(8).collect())
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The `+added/-deleted` cell of a run.
pub fn plus_minus(r: &Run) -> String {
    match (r.lines_added, r.lines_deleted) {
        (None, None) => "-".into(),
        (a, d) => format!("+{}/-{}", a.unwrap_or(0), d.unwrap_or(0)),
    }
}

/// The table of a job's runs.
pub fn runs_table(runs: &[Run], now: i64) -> Table {
    let mut t = Table::new(&[
        "RUN>", "ATTEMPT>", "EPOCH>", "OUTCOME", "EXIT>", "BRANCH", "COMMIT", "FILES>", "+/-",
        "STARTED", "TOOK",
    ]);
    for r in runs {
        t.row(vec![
            r.id.to_string(),
            r.attempt.to_string(),
            r.epoch.to_string(),
            r.outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| "running".into()),
            opt(r.exit_code),
            r.branch.clone().unwrap_or_else(|| "-".into()),
            short_commit(&r.commit),
            opt(r.files_changed),
            plus_minus(r),
            output::short_time(Some(r.started_at), now),
            r.finished_at
                .map(|f| output::short_duration(f - r.started_at))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

/// The engine of a job, with its model and mode when set.
pub(crate) fn engine_label(j: &Job) -> String {
    let spec = &j.spec;
    let mut out = spec.engine.name().to_string();
    if let Some(m) = &spec.model {
        out.push_str(&format!(", model {m}"));
    }
    if spec.yolo {
        out.push_str(", yolo");
    } else if let Some(p) = &spec.permission_mode {
        out.push_str(&format!(", {p}"));
    }
    if let Some(t) = spec.max_turns {
        out.push_str(&format!(", max {t} turns"));
    }
    if let Some(f) = spec.output {
        out.push_str(&format!(", output {}", f.as_str()));
    }
    out
}

/// A budget as `$5, 2000000 tokens, 60 turns`.
pub(crate) fn budget_label(b: &gantry_core::engine::Budget) -> String {
    let mut parts = Vec::new();
    if let Some(u) = b.usd {
        parts.push(format!("${u}"));
    }
    if let Some(t) = b.tokens {
        parts.push(format!("{t} tokens"));
    }
    if let Some(t) = b.turns {
        parts.push(format!("{t} turns"));
    }
    parts.join(", ")
}

/// The cost of a run or job: `$0.1355`, with `~` when estimated from the price table.
pub(crate) fn cost_label(i: &gantry_core::engine::Insights) -> String {
    match i.cost_usd {
        Some(c) if i.cost_estimated => format!("~${c:.4}"),
        Some(c) => format!("${c:.4}"),
        None => "-".into(),
    }
}

/// One line of insights: tokens, cost, turns, tool calls.
pub fn insights_label(i: &gantry_core::engine::Insights) -> String {
    let mut out = format!(
        "{} tokens in ({} cached), {} out, cost {}, {} turns, {} tool calls",
        i.tokens_in,
        i.tokens_cached,
        i.tokens_out,
        cost_label(i),
        i.turns,
        i.tool_calls
    );
    if i.tool_errors > 0 {
        out.push_str(&format!(" ({} failed)", i.tool_errors));
    }
    if let Some(m) = &i.model {
        out.push_str(&format!(", model {m}"));
    }
    out
}

/// The table of what each run's agent reported.
pub fn insights_table(runs: &[Run]) -> Table {
    let mut t = Table::new(&[
        "RUN>",
        "MODEL",
        "IN>",
        "CACHED>",
        "OUT>",
        "COST>",
        "TURNS>",
        "TOOLS>",
        "TOOL ERR>",
        "RESULT",
    ]);
    for r in runs {
        let Some(i) = &r.insights else { continue };
        t.row(vec![
            r.id.to_string(),
            i.model.clone().unwrap_or_else(|| "-".into()),
            i.tokens_in.to_string(),
            i.tokens_cached.to_string(),
            i.tokens_out.to_string(),
            cost_label(i),
            i.turns.to_string(),
            i.tool_calls.to_string(),
            i.tool_errors.to_string(),
            match (i.success, &i.error_kind) {
                (Some(true), _) => "success".into(),
                (Some(false), Some(k)) => k.clone(),
                (Some(false), None) => "failed".into(),
                (None, _) => "-".into(),
            },
        ]);
    }
    t
}

/// The gates of every run that has any: result, figure, time, and why one failed
/// (its output file is on the factory that ran it).
pub fn gates_table(runs: &[Run]) -> Table {
    let mut t = Table::new(&[
        "RUN>", "GATE", "RESULT", "EXIT>", "FIGURE>", "TIME>", "TREE", "WHY",
    ]);
    for r in runs {
        for g in &r.gates {
            t.row(vec![
                r.id.to_string(),
                g.name.clone(),
                if g.passed { "passed" } else { "failed" }.to_string(),
                opt(g.exit_code),
                g.figure
                    .map_or_else(|| "-".to_string(), |f| format!("{f:.2}")),
                format!("{:.1}s", g.duration_ms as f64 / 1000.0),
                g.tree.chars().take(10).collect(),
                g.reason.clone().unwrap_or_else(|| "-".to_string()),
            ]);
        }
    }
    t
}

/// Quotes an argv the way a shell would read it back.
pub(crate) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One event as a line: id, time, kind, and a summary of its data (kind and summary
/// come from workers and submitters, so they are kept to one escaped line).
pub fn event_line(e: &Event) -> String {
    format!(
        "{:>6}  {}  {:<20}  {}",
        e.id,
        output::clock_ms(e.at),
        output::field(&e.kind),
        output::field(&event_summary(e))
    )
}

/// A short human summary of an event's data: the kind's payload in words, or the data
/// itself for kinds without a summary (and data that does not fit its kind's payload).
pub fn event_summary(e: &Event) -> String {
    let d = &e.data;
    let typed = match e.kind.as_str() {
        event::JOB_SUBMITTED => e.payload::<JobSubmitted>().ok().map(|p| p.title),
        event::JOB_STATE => e.payload::<JobStateChanged>().ok().map(|p| {
            let mut out = format!("{} -> {}", p.from, p.to);
            if let Some(r) = p.reason {
                out.push_str(&format!(" ({r})"));
            }
            out
        }),
        event::RUN_CLAIMED => e
            .payload::<RunClaimed>()
            .ok()
            .map(|p| format!("run {} attempt {} epoch {}", p.run, p.attempt, p.epoch)),
        event::RUN_STARTED => e.payload::<RunStarted>().ok().map(|p| {
            let mut out = format!("pid {} on {}", p.pid, p.branch);
            if !p.secrets.is_empty() {
                out.push_str(&format!(", secrets {}", p.secrets.join(", ")));
            }
            out
        }),
        event::RUN_OUTPUT => e.payload::<RunOutput>().ok().map(|p| output_summary(&p)),
        event::RUN_FINISHED => e
            .payload::<RunFinished>()
            .ok()
            .map(|p| finished_summary(&p)),
        event::AGENT_INSIGHTS => Some(
            e.payload::<gantry_core::engine::Insights>()
                .map(|i| insights_label(&i))
                .unwrap_or_else(|_| d.to_string()),
        ),
        event::RUN_CHECKPOINT => e.payload::<RunCheckpoint>().ok().map(|p| {
            let short: String = p.commit.chars().take(8).collect();
            format!("{} at {short}", p.branch)
        }),
        kind if kind.starts_with("agent.") => Some(agent_summary(d)),
        _ => None,
    };
    typed.unwrap_or_else(|| {
        if d.as_object().is_some_and(|o| o.is_empty()) || d.is_null() {
            String::new()
        } else {
            d.to_string()
        }
    })
}

/// `[stream] first line…` of a piece of output.
fn output_summary(p: &RunOutput) -> String {
    let first = p.text.trim_end_matches('\n');
    let mut shown: String = first.chars().take(160).collect();
    if shown.len() < first.len() {
        shown.push('…');
    }
    format!("[{}] {}", p.stream.as_str(), shown.replace('\n', "⏎"))
}

/// `outcome exit N, F files +A/-D: error` of a finished run.
fn finished_summary(p: &RunFinished) -> String {
    let mut out = p.outcome.as_str().to_string();
    if let Some(c) = p.exit_code {
        out.push_str(&format!(" exit {c}"));
    }
    if let Some(f) = p.files_changed {
        out.push_str(&format!(
            ", {f} files +{}/-{}",
            p.lines_added.unwrap_or(0),
            p.lines_deleted.unwrap_or(0)
        ));
    }
    if let Some(err) = &p.error {
        out.push_str(&format!(": {err}"));
    }
    out
}

/// A normalized agent event in one line.
pub(crate) fn agent_summary(d: &serde_json::Value) -> String {
    use gantry_engine::AgentEvent;
    let Ok(ev) = serde_json::from_value::<AgentEvent>(d.clone()) else {
        return d.to_string();
    };
    let one_line = |t: &str| {
        let t = t.trim();
        let mut shown: String = t.chars().take(160).collect();
        if shown.len() < t.len() {
            shown.push('…');
        }
        shown.replace('\n', "⏎")
    };
    match ev {
        AgentEvent::SessionStarted { session_id, model } => format!(
            "session {session_id}{}",
            model.map(|m| format!(", model {m}")).unwrap_or_default()
        ),
        AgentEvent::TurnStarted { turn } => format!("turn {turn}"),
        AgentEvent::Message { text } => one_line(&text),
        AgentEvent::ToolCall { name, input, .. } => match input {
            Some(i) => format!("{name}: {}", one_line(&i)),
            None => name,
        },
        AgentEvent::ToolResult {
            is_error, output, ..
        } => format!(
            "{}{}",
            if is_error { "error" } else { "ok" },
            output
                .map(|o| format!(": {}", one_line(&o)))
                .unwrap_or_default()
        ),
        AgentEvent::Usage {
            tokens_in,
            tokens_out,
            tokens_cached,
            cost_usd,
            ..
        } => format!(
            "+{tokens_in} in ({tokens_cached} cached), +{tokens_out} out{}",
            cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default()
        ),
        AgentEvent::Notice { message } => one_line(&message),
        AgentEvent::Result {
            success,
            error_kind,
            num_turns,
            cost_usd,
            ..
        } => format!(
            "{}{}{}",
            if success {
                "success".to_string()
            } else {
                error_kind.unwrap_or_else(|| "failed".into())
            },
            num_turns
                .map(|n| format!(", {n} turns"))
                .unwrap_or_default(),
            cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default()
        ),
        AgentEvent::Raw { source_type, .. } => format!("({source_type})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::JobId;

    #[test]
    fn argv_is_quoted_for_a_shell() {
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            "echo 'hi' > x".into(),
            "".into(),
        ];
        assert_eq!(shell_words(&argv), r#"sh -c 'echo '\''hi'\'' > x' ''"#);
    }

    #[test]
    fn event_summaries() {
        let ev = |kind: &str, data: serde_json::Value| Event {
            id: 1,
            job_id: Some(JobId(1)),
            run_id: None,
            seq: 1,
            kind: kind.into(),
            at: 0,
            data,
        };
        assert_eq!(
            event_summary(&ev(
                event::JOB_STATE,
                serde_json::json!({"from": "blocked", "to": "canceled", "reason": "dependency 1 failed"})
            )),
            "blocked -> canceled (dependency 1 failed)"
        );
        assert_eq!(
            event_summary(&ev(
                event::RUN_FINISHED,
                serde_json::json!({"outcome": "failed", "exit_code": 3, "files_changed": 1, "lines_added": 2, "lines_deleted": 0})
            )),
            "failed exit 3, 1 files +2/-0"
        );
        assert_eq!(
            event_summary(&ev(
                event::RUN_OUTPUT,
                serde_json::json!({"stream": "stderr", "text": "a\nb\n"})
            )),
            "[stderr] a⏎b"
        );
    }
}
