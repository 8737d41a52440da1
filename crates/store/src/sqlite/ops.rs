//! The store's write operations, each one transaction body run by the writer thread.

use super::*;
use crate::rules::{self, Target, topo_order};
use crate::{Binding, Result, StoreError};
use gantry_core::api::{FinishReport, Lease, RegisterFactory, Submitted};
use gantry_core::event::{self as ev};
use gantry_core::state::{self, Effect, Input};
use gantry_core::time::Millis;
use gantry_core::{
    DepRef, FactoryId, Job, JobId, JobState, Outcome, ParsedJob, RunId, StopKind, caps,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use std::collections::{HashMap, HashSet};
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

pub(super) fn submit_tx(
    tx: &Connection,
    jobs: &[ParsedJob],
    submitter: Option<i64>,
    now: Millis,
) -> Result<Vec<Submitted>> {
    let owner = rules::key_owner(submitter);
    // 1. Idempotency: which entries are new, and which name a job stored earlier (or an
    //    earlier entry of this batch with the same key); a key reused with a different
    //    spec refuses the batch.
    enum Slot {
        Existing(JobId),
        SameAs(usize),
        New(usize),
    }
    let mut slots = Vec::with_capacity(jobs.len());
    let mut news: Vec<usize> = Vec::new();
    let mut batch_keys: HashMap<&str, usize> = HashMap::new();
    for (i, pj) in jobs.iter().enumerate() {
        if let Some(key) = pj.spec.idempotency_key.as_deref() {
            if let Some(&n) = batch_keys.get(key) {
                rules::check_batch_key_reuse(pj, key, &jobs[news[n]])?;
                slots.push(Slot::SameAs(n));
                continue;
            }
            if let Some(id) = lookup_key(tx, owner, key)? {
                rules::check_key_reuse(pj, key, id, &stored_spec(tx, id)?)?;
                slots.push(Slot::Existing(id));
                continue;
            }
            batch_keys.insert(key, news.len());
        }
        slots.push(Slot::New(news.len()));
        news.push(i);
    }

    // 2. Resolve every new job's deps.
    let mut edges: Vec<Vec<(Target, &DepRef)>> = Vec::with_capacity(news.len());
    for &i in &news {
        let pj = &jobs[i];
        let mut targets: Vec<(Target, &DepRef)> = Vec::new();
        for dep in &pj.spec.deps {
            let target = match dep {
                DepRef::Id(id) => job_exists(tx, *id)?.then_some(Target::Stored(*id)),
                DepRef::Key(key) => match batch_keys.get(key.as_str()) {
                    Some(&n) => Some(Target::New(n)),
                    None => match lookup_key(tx, owner, key)? {
                        Some(id) => Some(Target::Stored(id)),
                        // A number written as a string ("12") matching no key is an id.
                        None => match key.trim().parse::<JobId>() {
                            Ok(id) if job_exists(tx, id)? => Some(Target::Stored(id)),
                            _ => None,
                        },
                    },
                },
            };
            let Some(target) = target else {
                return Err(pj
                    .error(
                        "deps",
                        format!("unknown dependency {dep}: no job has this id or idempotency key"),
                    )
                    .into());
            };
            targets.push((target, dep));
        }
        edges.push(targets);
    }

    // 3. Cycles among the new jobs (stored jobs cannot depend on new ones), and an order
    //    in which every new job comes after its new deps.
    let order = topo_order(jobs, &news, &edges)?;

    // 4. Store the new jobs in batch order, so ids follow submission order.
    let mut ids = Vec::with_capacity(news.len());
    for &i in &news {
        let spec = &jobs[i].spec;
        let state = if spec.deps.is_empty() {
            JobState::Queued
        } else {
            JobState::Blocked
        };
        let retry_on: Vec<&str> = spec.retry_on.iter().map(|o| o.as_str()).collect();
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| corrupt(format!("cannot encode job spec: {e}")))?;
        let caps_json = serde_json::to_string(&spec.capabilities)
            .map_err(|e| corrupt(format!("cannot encode capabilities: {e}")))?;
        tx.prepare_cached(
            "INSERT INTO jobs (state, priority, max_attempts, lock_key, deps_mode,
                 idempotency_key, submitter, capabilities, retry_on, backoff_ms, created_at,
                 event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1)",
        )?
        .execute(params![
            state.as_str(),
            spec.priority,
            spec.max_attempts.max(1),
            spec.lock,
            deps_mode_str(spec.deps_mode),
            spec.idempotency_key,
            spec.idempotency_key.as_ref().map(|_| owner),
            caps_json,
            retry_on.join(","),
            i64::try_from(spec.backoff_ms).unwrap_or(i64::MAX),
            now,
        ])?;
        let id = tx.last_insert_rowid();
        tx.prepare_cached("INSERT INTO job_specs (job_id, title, spec) VALUES (?1, ?2, ?3)")?
            .execute(params![id, spec.title, spec_json])?;
        let data = json!({"title": spec.title, "state": state.as_str()}).to_string();
        tx.prepare_cached(
            "INSERT INTO events (job_id, run_id, seq, kind, at, data) VALUES (?1, NULL, 1, ?2, ?3, ?4)",
        )?
        .execute(params![id, ev::JOB_SUBMITTED, now, data])?;
        ids.push(JobId(id));
    }

    // 5. Dependency rows, then settle the blocked jobs, deps first.
    for (n, targets) in edges.iter().enumerate() {
        if targets.is_empty() {
            continue;
        }
        let mut seen = HashSet::new();
        let mut dep_ids = Vec::new();
        for (t, _) in targets {
            let id = match *t {
                Target::Stored(id) => id,
                Target::New(m) => ids[m],
            };
            if seen.insert(id) {
                dep_ids.push(id.0);
                tx.prepare_cached("INSERT INTO job_deps (job_id, dep_id) VALUES (?1, ?2)")?
                    .execute(params![ids[n].0, id.0])?;
            }
        }
        let json = serde_json::to_string(&dep_ids).map_err(|e| corrupt(e.to_string()))?;
        tx.prepare_cached("UPDATE job_specs SET deps = ?2 WHERE job_id = ?1")?
            .execute(params![ids[n].0, json])?;
    }
    for n in order {
        if edges[n].is_empty() {
            continue;
        }
        if let Some(to) = settle_blocked(tx, ids[n], now)?
            && to.is_terminal()
        {
            settle_dependents(tx, ids[n], now)?;
        }
    }

    Ok(slots
        .into_iter()
        .map(|s| match s {
            Slot::Existing(id) => Submitted { id, existing: true },
            Slot::SameAs(n) => Submitted {
                id: ids[n],
                existing: true,
            },
            Slot::New(n) => Submitted {
                id: ids[n],
                existing: false,
            },
        })
        .collect())
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
    let mut fcaps_parsed: Option<Vec<String>> = None;
    // Walk the queued jobs in claim order (an index range scan on jobs_claim), skipping
    // those not yet due and those whose lock a running job holds; capabilities are
    // checked here because their matching rule is not SQL.
    let chosen = {
        let mut stmt = tx.prepare_cached(CLAIM_SCAN_SQL)?;
        let mut rows = stmt.query([now])?;
        let mut chosen = None;
        while let Some(row) = rows.next()? {
            let need = row.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?;
            if need != "[]" {
                let need: Vec<String> = parse_json("job capabilities", need)?;
                let have = match &mut fcaps_parsed {
                    Some(have) => have,
                    none => none.insert(parse_json("factory capabilities", &fcaps)?),
                };
                if !caps::satisfies(have, &need) {
                    continue;
                }
            }
            chosen = Some((
                JobId(row.get(0)?),
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ));
            break;
        }
        chosen
    };
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
    let claimed = format!(
        r#"{{"run":{},"attempt":{attempt},"epoch":{epoch},"factory":{},"lease_expires_at":{expires}}}"#,
        run.0, factory.0
    );
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

pub(super) fn finish_tx(
    tx: &Connection,
    live: &Live,
    report: &FinishReport,
    now: Millis,
) -> Result<JobRow> {
    let outcome = crate::rules::report_outcome(live.run, report)?;
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
    let data = crate::rules::finished_data(outcome, report)?;
    if let Some(insights) = &report.insights {
        save_insights(tx, live, insights)?;
    }
    let finished = Pending {
        run: Some(live.run),
        kind: ev::RUN_FINISHED,
        data,
    };
    end_attempt(tx, live, outcome, now, &[finished])?
        .1
        .ok_or_else(|| corrupt(format!("job {} was read without its row", live.job)))
}

pub(super) fn reap_tx(tx: &Connection, now: Millis) -> Result<Vec<RunId>> {
    type Row = (i64, i64, i64, i64, i64, String, i64, Option<String>, i64);
    let expired: Vec<Row> = tx
        .prepare_cached(
            "SELECT j.id, r.id, j.epoch, j.attempt, j.max_attempts, j.retry_on, j.backoff_ms,
                    j.stop_requested, j.event_seq
             FROM jobs j INDEXED BY jobs_running_lock JOIN runs r ON r.id = j.current_run
             WHERE j.state = 'running' AND r.lease_expires_at < ?1 ORDER BY j.id",
        )?
        .query_map([now], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut reaped = Vec::with_capacity(expired.len());
    // Each job's events only change below, once, so the seqs read above stay current.
    for (job, run, epoch, attempt, max_attempts, retry_on, backoff, stop, seq) in expired {
        let live = Live {
            job: JobId(job),
            run: RunId(run),
            attempt: to_u32("attempt", attempt)?,
            max_attempts: to_u32("max_attempts", max_attempts)?,
            retry_on,
            backoff_ms: u64::try_from(backoff).unwrap_or(0),
            stop: parse_stop(stop.as_deref())?,
            seq,
            row: None,
        };
        tx.prepare_cached(
            "UPDATE runs SET outcome = 'lost', finished_at = ?2 WHERE id = ?1 AND outcome IS NULL",
        )?
        .execute(params![run, now])?;
        let expired = Pending {
            run: Some(live.run),
            kind: ev::LEASE_EXPIRED,
            data: format!(r#"{{"run":{run},"epoch":{epoch}}}"#),
        };
        let to = end_attempt(tx, &live, Outcome::Lost, now, &[expired])?.0;
        tracing::info!(job, run, epoch, %to, "lease expired");
        reaped.push(live.run);
    }
    Ok(reaped)
}

/// Cancels or kills a job: at once when it is not running, else by recording the stop
/// request that its factory sees on its next renew.
pub(super) fn stop_tx(tx: &Connection, id: JobId, kind: StopKind, now: Millis) -> Result<Job> {
    let row: Option<(String, Option<String>, Option<i64>)> = tx
        .prepare_cached("SELECT state, stop_requested, current_run FROM jobs WHERE id = ?1")?
        .query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (st, stop, current_run) = row.ok_or_else(|| not_found("job", id))?;
    let state = parse_state(&st)?;
    let (input, reason) = match kind {
        StopKind::Cancel => (Input::Cancel, "canceled on request"),
        StopKind::Kill => (Input::Kill, "killed on request"),
    };
    let effect = transition(tx, id, state, input, Some(reason), None, now, None, &[])?.effect;
    let requested = match effect {
        Effect::None => None,
        Effect::RequestCancel => Some((StopKind::Cancel, ev::JOB_CANCEL_REQUESTED)),
        Effect::RequestKill => Some((StopKind::Kill, ev::JOB_KILL_REQUESTED)),
    };
    if let Some((want, kind)) = requested {
        // A kill already asked for is stronger than a later cancel: keep it.
        let keep_kill = parse_stop(stop.as_deref())? == Some(StopKind::Kill);
        if !keep_kill {
            tx.prepare_cached("UPDATE jobs SET stop_requested = ?2 WHERE id = ?1")?
                .execute(params![id.0, want.as_str()])?;
        }
        add_event(tx, Some(id), current_run.map(RunId), kind, "{}", now)?;
    }
    load_job(tx, id)
}

pub(super) fn retry_tx(tx: &Connection, id: JobId, now: Millis) -> Result<Job> {
    let job = load_job(tx, id)?;
    if !matches!(
        job.state,
        JobState::Failed | JobState::Canceled | JobState::Killed
    ) {
        return Err(StoreError::WrongState {
            job: id,
            state: job.state,
            action: "retry",
        });
    }
    let deps_met = deps_verdict(tx, id, job.deps_mode)? == DepsVerdict::Met;
    tx.prepare_cached(
        "UPDATE jobs SET max_attempts = max(max_attempts, attempt + 1), stop_requested = NULL
         WHERE id = ?1",
    )?
    .execute([id.0])?;
    let reason = if deps_met {
        "retry requested"
    } else {
        "retry requested; waiting for dependencies"
    };
    transition(
        tx,
        id,
        job.state,
        Input::Retry { deps_met },
        Some(reason),
        None,
        now,
        None,
        &[],
    )?;
    load_job(tx, id)
}

pub(super) fn set_paused_tx(tx: &Connection, paused: bool, now: Millis) -> Result<()> {
    let changed = tx
        .prepare_cached("UPDATE queue SET paused = ?1 WHERE id = 1 AND paused != ?1")?
        .execute([paused])?;
    if changed > 0 {
        let kind = if paused {
            ev::QUEUE_PAUSED
        } else {
            ev::QUEUE_RESUMED
        };
        add_event(tx, None, None, kind, "{}", now)?;
    }
    Ok(())
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}
