//! Rules both backends apply in the same way, kept once: the order in which a batch's
//! new jobs are stored, how an attempt's end decides retry and backoff, and what a
//! finish report records.

use crate::StoreError;
use gantry_core::api::FinishReport;
use gantry_core::retry;
use gantry_core::time::Millis;
use gantry_core::{DepRef, JobId, Outcome, ParsedJob, RunId, StopKind};

/// How an attempt ended, as the lifecycle will record it.
pub(crate) struct AttemptEnd {
    /// The outcome (a requested stop replaces `lost`).
    pub outcome: Outcome,
    /// Whether another attempt follows.
    pub retry: bool,
    /// When the next attempt may be claimed.
    pub not_before: Option<Millis>,
    /// The job's reason text.
    pub reason: Option<String>,
}

/// Decides retry, backoff and reason for an attempt that ended with `outcome`;
/// `attempts` is (this attempt, attempts allowed).
pub(crate) fn attempt_end(
    outcome: Outcome,
    stop: Option<StopKind>,
    attempts: (u32, u32),
    retry_on: &[Outcome],
    backoff_ms: u64,
    now: Millis,
) -> AttemptEnd {
    let (attempt, max_attempts) = attempts;
    // A stop that a person requested decides how the job ends when the run vanished
    // without saying (lost); a reported outcome is what really happened and stands.
    let outcome = match (outcome, stop) {
        (Outcome::Lost, Some(stop)) => stop.outcome(),
        (o, _) => o,
    };
    let retry = retry::should_retry(outcome, attempt, max_attempts, retry_on, stop.is_some());
    let (not_before, reason) = if retry {
        let delay = retry::backoff_ms_random(backoff_ms, attempt);
        (
            Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX))),
            Some(format!(
                "attempt {attempt} {outcome}; retrying in {delay} ms"
            )),
        )
    } else if outcome == Outcome::Succeeded {
        (None, None)
    } else {
        (None, Some(format!("attempt {attempt} {outcome}")))
    };
    AttemptEnd {
        outcome,
        retry,
        not_before,
        reason,
    }
}

/// Where a dependency of a new job points.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// A job stored before this batch.
    Stored(JobId),
    /// The new job at this index of the batch's new jobs.
    New(usize),
}

/// Depth-first order of the new jobs, deps first; a cycle is an error on the job that
/// closes it, naming the dep and the files around the cycle.
pub(crate) fn topo_order(
    jobs: &[ParsedJob],
    news: &[usize],
    edges: &[Vec<(Target, &DepRef)>],
) -> Result<Vec<usize>, StoreError> {
    const WHITE: u8 = 0;
    const GRAY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; news.len()];
    let mut order = Vec::with_capacity(news.len());
    for start in 0..news.len() {
        if color[start] != WHITE {
            continue;
        }
        color[start] = GRAY;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(&(node, next)) = stack.last() {
            let Some(&(target, dep)) = edges[node].get(next) else {
                color[node] = BLACK;
                order.push(node);
                stack.pop();
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            let Target::New(m) = target else {
                continue;
            };
            match color[m] {
                WHITE => {
                    color[m] = GRAY;
                    stack.push((m, 0));
                }
                GRAY => {
                    let from = stack.iter().position(|&(n, _)| n == m).unwrap_or(0);
                    let path: Vec<&str> = stack[from..]
                        .iter()
                        .map(|&(n, _)| jobs[news[n]].file.as_str())
                        .chain(std::iter::once(jobs[news[m]].file.as_str()))
                        .collect();
                    let pj = &jobs[news[node]];
                    return Err(pj
                        .error(
                            "deps",
                            format!("dependency cycle through {dep}: {}", path.join(" -> ")),
                        )
                        .into());
                }
                _ => {}
            }
        }
    }
    Ok(order)
}

/// The outcome of a finish report of `run`; a report without one is invalid.
pub(crate) fn report_outcome(run: RunId, report: &FinishReport) -> Result<Outcome, StoreError> {
    report.outcome.ok_or_else(|| {
        StoreError::Invalid(gantry_core::SpecError {
            file: format!("finish of run {run}"),
            line: None,
            field: Some("outcome".into()),
            message: "the finish report has no outcome".into(),
        })
    })
}

/// The data of the `run.finished` event of a finish with `outcome` (JSON text).
pub(crate) fn finished_data(outcome: Outcome, report: &FinishReport) -> Result<String, StoreError> {
    serde_json::to_string(&FinishedData {
        outcome: outcome.as_str(),
        exit_code: report.exit_code,
        error: report.error.as_deref(),
        branch: report.branch.as_deref(),
        base_commit: report.base_commit.as_deref(),
        commit: report.commit.as_deref(),
        files_changed: report.files_changed,
        lines_added: report.lines_added,
        lines_deleted: report.lines_deleted,
        insights: report.insights.as_ref(),
    })
    .map_err(|e| StoreError::Corrupt(format!("cannot encode the finish report: {e}")))
}

/// The data of a `run.finished` event.
#[derive(serde::Serialize)]
struct FinishedData<'a> {
    outcome: &'a str,
    exit_code: Option<i32>,
    error: Option<&'a str>,
    branch: Option<&'a str>,
    base_commit: Option<&'a str>,
    commit: Option<&'a str>,
    files_changed: Option<u32>,
    lines_added: Option<u32>,
    lines_deleted: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insights: Option<&'a gantry_core::engine::Insights>,
}
