//! SQLite's side of the row codecs (how [`Columns`] reads a `rusqlite` row), and the
//! statements that read rows, write events and move jobs, with their SQL.

use super::*;
use crate::Result;
use gantry_core::{Job, JobId, RunId};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension};

impl Columns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;

    fn col<T: Column>(&self, i: usize) -> rusqlite::Result<T> {
        self.get(i)
    }

    /// SQLite keeps a job's deps as a JSON list.
    fn ids(&self, i: usize) -> rusqlite::Result<Vec<i64>> {
        json_list(self, i)
    }

    /// SQLite keeps a factory's capabilities as a JSON list.
    fn strings(&self, i: usize) -> rusqlite::Result<Vec<String>> {
        json_list(self, i)
    }
}

/// Column `i` of `r`, a JSON list.
fn json_list<T: serde::de::DeserializeOwned>(
    r: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<Vec<T>> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)))
}

/// [`JOB_COLS`] for lists: the spec without its body (instructions may be large, and
/// a list is read often; the body comes with one job).
pub(super) const JOB_LIST_COLS: &str = "jobs.id, state, priority, attempt, max_attempts, \
     epoch, lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, \
     created_at, started_at, finished_at, title, deps, json_set(spec, '$.body', ''), \
     session_id, wip_branch, wip_base, wip_commit";

pub(super) fn load_job(tx: &Connection, id: JobId) -> Result<Job> {
    tx.prepare_cached(&format!("SELECT {JOB_COLS} FROM {JOB_FROM} WHERE id = ?1"))?
        .query_row([id.0], |r| RawJob::read(r))
        .optional()?
        .ok_or_else(|| not_found("job", id))?
        .into_job()
}

/// The immutable part of a job. Writes that return a job return its `jobs` row (see
/// [`JobRow`]) and their callers read this on the read connection, after the commit:
/// the one thread that all writes share then spends no time copying or decoding it.
pub(super) fn load_spec(tx: &Connection, id: JobId) -> Result<SpecRow> {
    tx.prepare_cached(LOAD_SPEC_SQL)?
        .query_row([id.0], |r| SpecRow::read(r, 0))
        .optional()?
        .ok_or_else(|| not_found("job", id))
}

/// Reads a job's agent state; the default when it has none.
pub(super) fn load_agent(tx: &Connection, id: JobId) -> Result<AgentRow> {
    Ok(tx
        .prepare_cached(
            "SELECT session_id, wip_branch, wip_base, wip_commit FROM job_agent WHERE job_id = ?1",
        )?
        .query_row([id.0], |r| AgentRow::read(r, 0))
        .optional()?
        .unwrap_or_default())
}

pub(super) fn job_exists(tx: &Connection, id: JobId) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?
        .exists([id.0])?)
}

pub(super) fn run_exists(tx: &Connection, id: RunId) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
        .exists([id.0])?)
}
