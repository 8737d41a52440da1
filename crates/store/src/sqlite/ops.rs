//! The store's write operations, each one transaction body run by the writer thread.

use super::*;
use crate::lifecycle::{WriteTx, state_data};
use crate::rules::{self};
use crate::{Binding, Result};
use gantry_core::api::{FinishReport, Lease, RegisterFactory, Submitted};
use gantry_core::event::{self as ev, Payload};
use gantry_core::state::{self, Input};
use gantry_core::time::Millis;
use gantry_core::{FactoryId, JobId, JobState, ParsedJob, RunId, caps};
use rusqlite::{Connection, OptionalExtension, params};
use std::time::Duration;

/// Registers a factory by name (or updates the one of that name) and returns its id.
pub(super) fn register_tx(
    tx: &Connection,
    reg: &RegisterFactory,
    caps_json: &str,
    now: Millis,
) -> Result<i64> {
    Ok(tx
        .prepare_cached(
            "INSERT INTO factories (name, seats, capabilities, last_seen)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET seats = excluded.seats,
                 capabilities = excluded.capabilities, last_seen = excluded.last_seen
             RETURNING id",
        )?
        .query_row(params![reg.name, reg.seats, caps_json, now], |r| r.get(0))?)
}

/// Registers a factory for the token `token` (see
/// [`Store::register_factory_for_token`] and [`rules::registration`], which decides);
/// changes nothing when a binding is in the way.
pub(super) fn register_for_token_tx(
    tx: &Connection,
    reg: &RegisterFactory,
    caps_json: &str,
    token: i64,
    now: Millis,
) -> Result<Binding> {
    let (name, scope, bound_to): (String, String, Option<String>) = tx
        .prepare_cached(
            "SELECT t.name, t.scope, f.name FROM tokens t
             LEFT JOIN factories f ON f.id = t.factory_id WHERE t.id = ?1",
        )?
        .query_row([token], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?
        .ok_or_else(|| not_found("token", token))?;
    let who = rules::Registrant {
        id: token,
        name,
        scope: parse_scope(&scope)?,
        bound_to,
    };
    type HolderRow = (Option<i64>, Option<String>, bool, Option<String>);
    let existing: Option<HolderRow> = tx
        .prepare_cached(
            "SELECT f.token_id, r.name, r.revoked_at IS NULL,
                 (SELECT t.name FROM tokens t WHERE t.factory_id = f.id
                      AND t.revoked_at IS NULL AND t.id <> ?2 LIMIT 1)
             FROM factories f LEFT JOIN tokens r ON r.id = f.token_id
             WHERE f.name = ?1",
        )?
        .query_row(params![reg.name, token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let holder = existing.map(
        |(registrar, registrar_name, live, bound_live)| rules::NameHolder {
            registrar: registrar.map(|id| (id, registrar_name.unwrap_or_default(), live)),
            bound_live,
        },
    );
    let (own, bind) = match rules::registration(&reg.name, &who, holder.as_ref()) {
        rules::Registration::Go { own, bind } => (own, bind),
        rules::Registration::Refused(binding) => return Ok(binding),
    };
    let id = register_tx(tx, reg, caps_json, now)?;
    if own {
        tx.prepare_cached("UPDATE factories SET token_id = ?2 WHERE id = ?1")?
            .execute(params![id, token])?;
    }
    if bind {
        tx.prepare_cached("UPDATE tokens SET factory_id = ?2 WHERE id = ?1")?
            .execute(params![token, id])?;
    }
    Ok(Binding::Bound(FactoryId(id)))
}

/// Stores a batch (see [`Store::submit_as`]): planned by [`submit::plan`], then each
/// new job in batch order (so ids follow submission order), its deps, and its settling.
pub(super) fn submit_tx(
    tx: &Connection,
    jobs: &[ParsedJob],
    submitter: Option<i64>,
    now: Millis,
) -> Result<Vec<Submitted>> {
    let lite = Lite { conn: tx, now };
    let plan = run_sync(submit::plan(&lite, jobs, submitter))?;
    let mut ids = Vec::with_capacity(plan.news.len());
    for job in plan.new_jobs()? {
        let spec = job.spec;
        tx.prepare_cached(
            "INSERT INTO jobs (state, priority, max_attempts, lock_key, deps_mode,
                 idempotency_key, submitter, capabilities, retry_on, backoff_ms, created_at,
                 event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)",
        )?
        .execute(params![
            job.state.as_str(),
            job.priority,
            job.max_attempts,
            spec.lock,
            job.deps_mode,
            spec.idempotency_key,
            job.key_owner,
            job.capabilities,
            job.retry_on,
            job.backoff_ms,
            now,
        ])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached("INSERT INTO job_specs (job_id, title, spec) VALUES (?1, ?2, ?3)")?
            .execute(params![id, spec.title, job.spec_json])?;
        tx.prepare_cached(
            "INSERT INTO events (job_id, run_id, seq, kind, at, data) VALUES (?1, NULL, 1, ?2, ?3, ?4)",
        )?
        .execute(params![id, ev::JOB_SUBMITTED, now, job.submitted])?;
        ids.push(JobId(id));
    }
    for (n, &id) in ids.iter().enumerate() {
        if plan.edges[n].is_empty() {
            continue;
        }
        let dep_ids = plan.dep_ids(n, &ids);
        for dep in &dep_ids {
            tx.prepare_cached("INSERT INTO job_deps (job_id, dep_id) VALUES (?1, ?2)")?
                .execute(params![id.0, dep])?;
        }
        let json = serde_json::to_string(&dep_ids).map_err(|e| corrupt(e.to_string()))?;
        tx.prepare_cached("UPDATE job_specs SET deps = ?2 WHERE job_id = ?1")?
            .execute(params![id.0, json])?;
    }
    run_sync(plan.settle(&lite, &ids))
}

/// A claim as the writer makes it: the caller reads the job's spec after the commit
/// (see [`load_spec`]).
pub(super) struct RawClaim {
    pub(super) job: JobId,
    pub(super) run: Lease,
}

pub(super) fn claim_tx(
    tx: &Connection,
    factory: FactoryId,
    ttl: Duration,
    now: Millis,
) -> Result<Option<RawClaim>> {
    let (fcaps, paused): (String, bool) = tx
        .prepare_cached(CLAIM_FACTORY_SQL)?
        .query_row([factory.0], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| not_found("factory", factory))?;
    if paused {
        return Ok(None);
    }
    let chosen = choose(tx, &fcaps, now)?;
    let Some((job, attempt, epoch, seq)) = chosen else {
        return Ok(None);
    };
    let (to, _) =
        state::next(JobState::Queued, Input::Claim).map_err(|e| corrupt(e.to_string()))?;
    let attempt = attempt + 1;
    let epoch = epoch + 1;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let expires = now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
    tx.prepare_cached(RUN_INSERT_SQL)?
        .execute(params![job.0, attempt, epoch, factory.0, now, expires])?;
    let run = RunId(tx.last_insert_rowid());
    // The job's two new events take the next two seqs; the job was read in this
    // transaction, which holds the write lock, so nothing moved it in between.
    let updated = tx.prepare_cached(&claim_update_sql(to))?.execute(params![
        job.0,
        attempt,
        epoch,
        run.0,
        now,
        seq + 2
    ])?;
    if updated != 1 {
        return Err(corrupt(format!(
            "job {job} was not queued when claiming it"
        )));
    }
    let state = state_data(JobState::Queued, to, None);
    let claimed = ev::RunClaimed {
        run,
        attempt: to_u32("attempt", attempt)?,
        epoch,
        factory,
        lease_expires_at: expires,
    }
    .text();
    insert_events(
        tx,
        Some(job),
        &[
            EventRow {
                run: None,
                seq: seq + 1,
                kind: ev::JOB_STATE,
                data: &state,
            },
            EventRow {
                run: Some(run.0),
                seq: seq + 2,
                kind: ev::RUN_CLAIMED,
                data: &claimed,
            },
        ],
        now,
    )?;
    Ok(Some(RawClaim {
        job,
        run: Lease {
            id: run,
            attempt: to_u32("attempt", attempt)?,
            epoch,
            lease_expires_at: expires,
            lease_ttl_ms: ttl_ms,
        },
    }))
}

/// Records the finish of the live run and ends its attempt; returns the job's row as
/// the finish left it.
/// The first queued job in claim order that a factory with capabilities `fcaps` (a
/// JSON list) can run now: its id, attempt, epoch and `event_seq`.
fn choose(tx: &Connection, fcaps: &str, now: Millis) -> Result<Option<(JobId, i64, i64, i64)>> {
    let mut fcaps_parsed: Option<Vec<String>> = None;
    // Walk the queued jobs in claim order (an index range scan on jobs_claim), skipping
    // those not yet due and those whose lock a running job holds; capabilities are
    // checked here because their matching rule is not SQL.
    let mut stmt = tx.prepare_cached(CLAIM_SCAN_SQL)?;
    let mut rows = stmt.query([now])?;
    while let Some(row) = rows.next()? {
        let need = row.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?;
        if need != "[]" {
            let need: Vec<String> = parse_json("job capabilities", need)?;
            let have = match &mut fcaps_parsed {
                Some(have) => have,
                none => none.insert(parse_json("factory capabilities", fcaps)?),
            };
            if !caps::satisfies(have, &need) {
                continue;
            }
        }
        return Ok(Some((
            JobId(row.get(0)?),
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
        )));
    }
    Ok(None)
}

pub(super) fn finish_tx(
    tx: &Connection,
    live: &Live,
    report: &FinishReport,
    now: Millis,
) -> Result<JobRow> {
    let outcome = rules::report_outcome(live.run, report)?;
    tx.prepare_cached(FINISH_RUN_SQL)?.execute(params![
        live.run.0,
        outcome.as_str(),
        report.exit_code,
        report.error,
        report.branch,
        report.base_commit,
        report.commit,
        report.files_changed,
        report.lines_added,
        report.lines_deleted,
        now,
    ])?;
    if let Some(diff) = &report.diff {
        tx.prepare_cached("INSERT INTO run_diffs (run_id, patch) VALUES (?1, ?2)")?
            .execute(params![live.run.0, diff])?;
    }
    let data = rules::finished_data(outcome, report)?;
    let lite = Lite { conn: tx, now };
    if let Some(insights) = &report.insights {
        let text = insights_text(insights)?;
        run_sync(lite.save_insights(live, &text, insights.session_id.as_deref()))?;
    }
    let finished = Pending {
        run: Some(live.run),
        kind: ev::RUN_FINISHED,
        data,
    };
    let error = report.error.as_deref();
    run_sync(end_attempt(&lite, live, outcome, error, vec![finished]))?
        .1
        .ok_or_else(|| corrupt(format!("job {} was read without its row", live.job)))
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}
