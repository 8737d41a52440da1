//! Row mapping and the small pure rules the PostgreSQL backend shares with the SQLite
//! one (same meaning, same messages).

use super::R;
use crate::StoreError;
use gantry_core::api::{Checkpoint, Scope, TokenInfo};
use gantry_core::event::Event;
use gantry_core::state::Input;
use gantry_core::time::Millis;
use gantry_core::{DepsMode, FactoryId, Job, JobId, JobState, Outcome, Run, RunId, StopKind};
use tokio_postgres::Row;

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(super) fn not_found(what: &'static str, id: impl std::fmt::Display) -> StoreError {
    StoreError::NotFound {
        what,
        id: id.to_string(),
    }
}

pub(super) fn parse_state(s: &str) -> Result<JobState, StoreError> {
    s.parse().map_err(corrupt)
}

pub(super) fn parse_outcome(s: &str) -> Result<Outcome, StoreError> {
    s.parse().map_err(corrupt)
}

pub(super) fn parse_stop(s: Option<&str>) -> Result<Option<StopKind>, StoreError> {
    s.map(|s| StopKind::parse(s).ok_or_else(|| corrupt(format!("unknown stop request {s:?}"))))
        .transpose()
}

pub(super) fn parse_deps_mode(s: &str) -> Result<DepsMode, StoreError> {
    match s {
        "succeeded" => Ok(DepsMode::Succeeded),
        "finished" => Ok(DepsMode::Finished),
        other => Err(corrupt(format!("unknown deps_mode {other:?}"))),
    }
}

pub(super) fn deps_mode_str(m: DepsMode) -> &'static str {
    match m {
        DepsMode::Succeeded => "succeeded",
        DepsMode::Finished => "finished",
    }
}

pub(super) fn parse_retry_on(s: &str) -> Result<Vec<Outcome>, StoreError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(parse_outcome)
        .collect()
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(super) fn to_u32(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} out of range")))
}

fn opt_u32(what: &str, v: Option<i64>) -> Result<Option<u32>, StoreError> {
    v.map(|v| to_u32(what, v)).transpose()
}

/// What a factory satisfies, as a set that a job's capabilities must be contained in:
/// its capabilities, plus the bare name of each `name=value` one. A job's `name` is in
/// it exactly when some capability is `name` or `name=<anything>`, and a job's
/// `name=value` exactly when the factory has that very capability, which is the rule of
/// [`gantry_core::caps::satisfies`] (checked against it by a test).
pub(super) fn cap_set(capabilities: &[String]) -> Vec<String> {
    let mut set: Vec<String> = capabilities.to_vec();
    for cap in capabilities {
        if let Some((name, _)) = cap.split_once('=') {
            set.push(name.to_string());
        }
    }
    set.sort();
    set.dedup();
    set
}

/// The columns [`JobRow::read`] expects, in order.
pub(super) const JOB_ROW_COLS: &str = "id, state, priority, attempt, max_attempts, epoch, \
     lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at";

/// [`JOB_ROW_COLS`] then the spec's and the agent state's columns, from [`JOB_FROM`].
pub(super) const JOB_COLS: &str = "jobs.id, state, priority, attempt, max_attempts, epoch, \
     lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, created_at, \
     started_at, finished_at, title, deps, spec, session_id, wip_branch, wip_base, wip_commit";

/// [`JOB_COLS`] for lists: the spec without its body (instructions may be large, and
/// a list is read often; the body comes with one job).
pub(super) const JOB_LIST_COLS: &str = "jobs.id, state, priority, attempt, max_attempts, \
     epoch, lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, \
     created_at, started_at, finished_at, title, deps, \
     jsonb_set(spec::jsonb, '{body}', '\"\"')::text, session_id, wip_branch, wip_base, \
     wip_commit";

/// How many columns [`JOB_COLS`] has.
pub(super) const JOB_COLS_LEN: usize = 22;

/// How many columns [`JOB_ROW_COLS`] has.
pub(super) const JOB_ROW_COLS_LEN: usize = 15;

/// A job's row joined with its spec and its agent state.
pub(super) const JOB_FROM: &str = "jobs JOIN job_specs ON job_specs.job_id = jobs.id \
     LEFT JOIN job_agent ON job_agent.job_id = jobs.id";

/// The columns [`read_run`] expects, in order.
pub(super) const RUN_COLS: &str = "id, job_id, attempt, epoch, factory_id, outcome, exit_code, \
     error, branch, base_commit, commit_sha, files_changed, lines_added, lines_deleted, \
     started_at, finished_at, lease_expires_at, insights";

/// The columns [`read_token`] expects, in order.
pub(super) const TOKEN_COLS: &str = "id, name, scope, created_at, revoked_at, factory_id";

/// The columns [`read_event`] expects, in order.
pub(super) const EVENT_COLS: &str = "id, job_id, run_id, seq, kind, at, data";

/// A `jobs` row as stored, before its text columns are parsed.
#[derive(Clone)]
pub(super) struct JobRow {
    pub(super) id: i64,
    pub(super) state: String,
    pub(super) priority: i64,
    pub(super) attempt: i64,
    pub(super) max_attempts: i64,
    pub(super) epoch: i64,
    pub(super) lock_key: Option<String>,
    pub(super) deps_mode: String,
    pub(super) idempotency_key: Option<String>,
    pub(super) stop_requested: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) not_before: Option<i64>,
    pub(super) created_at: i64,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: Option<i64>,
}

impl JobRow {
    /// Reads [`JOB_ROW_COLS`] starting at column `at`.
    pub(super) fn read(r: &Row, at: usize) -> R<JobRow> {
        Ok(JobRow {
            id: r.try_get(at)?,
            state: r.try_get(at + 1)?,
            priority: r.try_get(at + 2)?,
            attempt: r.try_get(at + 3)?,
            max_attempts: r.try_get(at + 4)?,
            epoch: r.try_get(at + 5)?,
            lock_key: r.try_get(at + 6)?,
            deps_mode: r.try_get(at + 7)?,
            idempotency_key: r.try_get(at + 8)?,
            stop_requested: r.try_get(at + 9)?,
            reason: r.try_get(at + 10)?,
            not_before: r.try_get(at + 11)?,
            created_at: r.try_get(at + 12)?,
            started_at: r.try_get(at + 13)?,
            finished_at: r.try_get(at + 14)?,
        })
    }
}

/// A job's agent state (`job_agent`), absent for most jobs.
#[derive(Debug, Default)]
pub(super) struct AgentRow {
    pub(super) session_id: Option<String>,
    pub(super) wip_branch: Option<String>,
    pub(super) wip_base: Option<String>,
    pub(super) wip_commit: Option<String>,
}

impl AgentRow {
    /// Reads the four columns of `job_agent` starting at column `at`.
    pub(super) fn read(r: &Row, at: usize) -> R<AgentRow> {
        Ok(AgentRow {
            session_id: r.try_get(at)?,
            wip_branch: r.try_get(at + 1)?,
            wip_base: r.try_get(at + 2)?,
            wip_commit: r.try_get(at + 3)?,
        })
    }

    pub(super) fn checkpoint(&self) -> Option<Checkpoint> {
        match (&self.wip_branch, &self.wip_base, &self.wip_commit) {
            (Some(branch), Some(base), Some(commit)) => Some(Checkpoint {
                branch: branch.clone(),
                base: base.clone(),
                commit: commit.clone(),
            }),
            _ => None,
        }
    }
}

/// A whole job as stored, before its text columns are parsed.
pub(super) struct RawJob {
    pub(super) row: JobRow,
    pub(super) title: String,
    pub(super) deps: Vec<i64>,
    pub(super) spec: String,
    pub(super) agent: AgentRow,
}

impl RawJob {
    /// Reads [`JOB_COLS`].
    pub(super) fn read(r: &Row) -> R<RawJob> {
        RawJob::read_at(r, 0)
    }

    /// Reads [`JOB_COLS`] starting at column `at`.
    pub(super) fn read_at(r: &Row, at: usize) -> R<RawJob> {
        Ok(RawJob {
            row: JobRow::read(r, at)?,
            title: r.try_get(at + 15)?,
            deps: r.try_get(at + 16)?,
            spec: r.try_get(at + 17)?,
            agent: AgentRow::read(r, at + 18)?,
        })
    }

    pub(super) fn into_job(self) -> Result<Job, StoreError> {
        let RawJob {
            row,
            title,
            deps,
            spec,
            agent,
        } = self;
        Ok(Job {
            id: JobId(row.id),
            state: parse_state(&row.state)?,
            title,
            priority: u8::try_from(row.priority)
                .map_err(|_| corrupt(format!("priority {} out of range", row.priority)))?,
            attempt: to_u32("attempt", row.attempt)?,
            max_attempts: to_u32("max_attempts", row.max_attempts)?,
            epoch: row.epoch,
            lock: row.lock_key,
            deps: deps.into_iter().map(JobId).collect(),
            deps_mode: parse_deps_mode(&row.deps_mode)?,
            idempotency_key: row.idempotency_key,
            stop_requested: parse_stop(row.stop_requested.as_deref())?,
            reason: row.reason,
            not_before: row.not_before,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            spec: parse_json("job spec", &spec)?,
            checkpoint: agent.checkpoint(),
            session_id: agent.session_id,
            insights: None,
            runs: Vec::new(),
        })
    }
}

/// Reads [`RUN_COLS`].
pub(super) fn read_run(r: &Row) -> R<Run> {
    let outcome: Option<String> = r.try_get(5)?;
    let insights: Option<String> = r.try_get(17)?;
    Ok(Run {
        id: RunId(r.try_get(0)?),
        job_id: JobId(r.try_get(1)?),
        attempt: to_u32("attempt", r.try_get(2)?)?,
        epoch: r.try_get(3)?,
        factory_id: r.try_get::<_, Option<i64>>(4)?.map(FactoryId),
        outcome: outcome.as_deref().map(parse_outcome).transpose()?,
        exit_code: r.try_get(6)?,
        error: r.try_get(7)?,
        branch: r.try_get(8)?,
        base_commit: r.try_get(9)?,
        commit: r.try_get(10)?,
        files_changed: opt_u32("files_changed", r.try_get(11)?)?,
        lines_added: opt_u32("lines_added", r.try_get(12)?)?,
        lines_deleted: opt_u32("lines_deleted", r.try_get(13)?)?,
        started_at: r.try_get(14)?,
        finished_at: r.try_get(15)?,
        lease_expires_at: r.try_get(16)?,
        insights: insights
            .as_deref()
            .map(|text| parse_json("run insights", text))
            .transpose()?,
    })
}

/// Reads [`TOKEN_COLS`].
pub(super) fn read_token(r: &Row) -> R<TokenInfo> {
    let scope: String = r.try_get(2)?;
    Ok(TokenInfo {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        scope: scope.parse::<Scope>().map_err(corrupt)?,
        created_at: r.try_get(3)?,
        revoked_at: r.try_get(4)?,
        factory: r.try_get::<_, Option<i64>>(5)?.map(FactoryId),
    })
}

/// A figure of a heartbeat as PostgreSQL stores it (a bigint is signed).
pub(super) fn mb_to_sql(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// A stored figure of a heartbeat, refusing what no heartbeat could have sent.
pub(super) fn mb_from_sql(what: &str, v: Option<i64>) -> Result<Option<u64>, StoreError> {
    v.map(|v| u64::try_from(v).map_err(|_| corrupt(format!("{what} {v} is negative"))))
        .transpose()
}

/// Reads [`EVENT_COLS`].
pub(super) fn read_event(r: &Row) -> R<Event> {
    let data: String = r.try_get(6)?;
    Ok(Event {
        id: r.try_get(0)?,
        job_id: r.try_get::<_, Option<i64>>(1)?.map(JobId),
        run_id: r.try_get::<_, Option<i64>>(2)?.map(RunId),
        seq: r.try_get(3)?,
        kind: r.try_get(4)?,
        at: r.try_get::<_, Millis>(5)?,
        data: parse_json("event data", &data)?,
    })
}

/// The data of a `job.state` event.
pub(super) fn state_data(from: JobState, to: JobState, reason: Option<&str>) -> String {
    // The states are plain words; only the reason needs JSON quoting.
    let reason = serde_json::to_string(&reason).unwrap_or_else(|_| "null".into());
    format!(r#"{{"from":"{from}","to":"{to}","reason":{reason}}}"#)
}

pub(super) fn action_of(input: Input) -> &'static str {
    match input {
        Input::DepsMet | Input::DepFailed => "settle dependencies",
        Input::Claim => "claim",
        Input::AttemptEnded { .. } => "end attempt",
        Input::Cancel => "cancel",
        Input::Kill => "kill",
        Input::Retry { .. } => "retry",
    }
}

/// What a blocked job's dependencies say.
#[derive(Debug, PartialEq)]
pub(super) enum DepsVerdict {
    /// Some dependency has not finished (well enough) yet.
    Wait,
    /// Every dependency is satisfied.
    Met,
    /// A dependency ended badly and the job needs every one to succeed.
    Failed(String),
}

pub(super) fn judge_deps(mode: DepsMode, deps: &[(i64, JobState)]) -> DepsVerdict {
    match mode {
        DepsMode::Succeeded => {
            if let Some((id, st)) = deps
                .iter()
                .find(|(_, st)| st.is_terminal() && *st != JobState::Succeeded)
            {
                return DepsVerdict::Failed(format!("dependency {id} {st}"));
            }
            if deps.iter().all(|(_, st)| *st == JobState::Succeeded) {
                DepsVerdict::Met
            } else {
                DepsVerdict::Wait
            }
        }
        DepsMode::Finished => {
            if deps.iter().all(|(_, st)| st.is_terminal()) {
                DepsVerdict::Met
            } else {
                DepsVerdict::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_cols_len_counts_the_job_columns() {
        assert_eq!(JOB_COLS.split(',').count(), JOB_COLS_LEN);
        assert_eq!(JOB_ROW_COLS.split(',').count(), JOB_ROW_COLS_LEN);
        assert_eq!(JOB_ROW_COLS_LEN + 7, JOB_COLS_LEN);
    }

    #[test]
    fn cap_set_containment_is_caps_satisfies() {
        let factories: Vec<Vec<String>> = [
            vec![],
            vec!["docker"],
            vec!["docker=24", "gpu=h100"],
            vec!["gpu=a100", "gpu"],
            vec!["a=1", "a=2", "b"],
        ]
        .iter()
        .map(|f| f.iter().map(|s| s.to_string()).collect())
        .collect();
        let jobs: Vec<Vec<String>> = [
            vec![],
            vec!["docker"],
            vec!["docker=24"],
            vec!["docker=25"],
            vec!["gpu"],
            vec!["gpu=a100"],
            vec!["gpu=h100", "docker"],
            vec!["a"],
            vec!["a=2", "b"],
            vec!["b=1"],
            vec!["c"],
        ]
        .iter()
        .map(|j| j.iter().map(|s| s.to_string()).collect())
        .collect();
        for f in &factories {
            let set = cap_set(f);
            for j in &jobs {
                let contained = j.iter().all(|need| set.contains(need));
                assert_eq!(
                    contained,
                    gantry_core::caps::satisfies(f, j),
                    "factory {f:?}, job {j:?}"
                );
            }
        }
    }

    #[test]
    fn judge_deps_by_mode() {
        use JobState::*;
        let s = DepsMode::Succeeded;
        assert_eq!(judge_deps(s, &[]), DepsVerdict::Met);
        assert_eq!(
            judge_deps(s, &[(1, Succeeded), (2, Running)]),
            DepsVerdict::Wait
        );
        assert_eq!(
            judge_deps(s, &[(1, Queued), (2, Killed)]),
            DepsVerdict::Failed("dependency 2 killed".into())
        );
        assert_eq!(
            judge_deps(DepsMode::Finished, &[(1, Failed), (2, Canceled)]),
            DepsVerdict::Met
        );
    }
}
