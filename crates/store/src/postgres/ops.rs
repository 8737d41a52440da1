//! Write operations whose statements are PostgreSQL's own: storing a planned batch and
//! registering factories.

use super::*;
use crate::submit::{self, NewJob};
use gantry_core::event::{self as ev};
use gantry_core::{FactoryId, JobId, ParsedJob};

/// Stores a batch (see [`Store::submit_as`]): planned by [`submit::plan`], then stored
/// in batch order (so ids follow submission order) with one statement a table, then
/// settled.
pub(super) async fn submit_tx(
    tx: &Tx,
    jobs: &[ParsedJob],
    submitter: Option<i64>,
) -> R<Vec<Submitted>> {
    let plan = submit::plan(tx, jobs, submitter).await?;
    if plan.news.is_empty() {
        return Ok(plan.answer(&[]));
    }
    // Mark the stored jobs depended on, which locks them, so none of them ends unseen
    // between reading its state (in planning) and this commit: a finish reads the mark
    // under the same lock and settles dependents when it is set.
    if !plan.stored.is_empty() {
        tx.execute(
            "WITH t AS (SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE)
             UPDATE jobs SET has_dependents = true FROM t
             WHERE jobs.id = t.id AND NOT jobs.has_dependents",
            &[&plan.stored],
        )
        .await?;
    }
    let new_jobs = plan.new_jobs()?;
    // New jobs that other new jobs depend on start marked (see above).
    let ids = insert_jobs(tx, &new_jobs, &plan.depended()).await?;
    let dep_lists: Vec<Vec<i64>> = (0..ids.len()).map(|n| plan.dep_ids(n, &ids)).collect();
    let titles: Vec<&str> = new_jobs.iter().map(|j| j.spec.title.as_str()).collect();
    let specs: Vec<&str> = new_jobs.iter().map(|j| j.spec_json.as_str()).collect();
    let submitted: Vec<&str> = new_jobs.iter().map(|j| j.submitted.as_str()).collect();
    let deps_json: Vec<String> = dep_lists
        .iter()
        .map(|list| serde_json::to_string(list).unwrap_or_else(|_| "[]".into()))
        .collect();
    let raw_ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
    tx.execute(
        "INSERT INTO job_specs (job_id, title, deps, spec)
         SELECT x.id, x.title, ARRAY(SELECT json_array_elements_text(x.deps::json)::bigint),
             x.spec
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
             AS x(id, title, deps, spec)",
        &[&raw_ids, &titles, &deps_json, &specs],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO events (job_id, run_id, seq, kind, at, data)
             SELECT x.id, NULL, 1, '{}', $2, x.data
             FROM unnest($1::bigint[], $3::text[]) WITH ORDINALITY AS x(id, data, ord)
             ORDER BY x.ord",
            ev::JOB_SUBMITTED
        ),
        &[&raw_ids, &tx.now, &submitted],
    )
    .await?;
    let mut dep_jobs = Vec::new();
    let mut dep_deps = Vec::new();
    for (n, list) in dep_lists.iter().enumerate() {
        for &d in list {
            dep_jobs.push(raw_ids[n]);
            dep_deps.push(d);
        }
    }
    if !dep_jobs.is_empty() {
        tx.execute(
            "INSERT INTO job_deps (job_id, dep_id) SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            &[&dep_jobs, &dep_deps],
        )
        .await?;
    }
    plan.settle(tx, &ids).await
}

/// Inserts the `jobs` rows of a batch's new jobs in one statement (`depended`: which
/// start marked as depended on); returns their ids in batch order.
async fn insert_jobs(tx: &Tx, new_jobs: &[NewJob<'_>], depended: &[bool]) -> R<Vec<JobId>> {
    let n = new_jobs.len();
    let states: Vec<&str> = new_jobs.iter().map(|j| j.state.as_str()).collect();
    let priorities: Vec<i64> = new_jobs.iter().map(|j| j.priority).collect();
    let max_attempts: Vec<i64> = new_jobs.iter().map(|j| j.max_attempts).collect();
    let locks: Vec<Option<&str>> = new_jobs.iter().map(|j| j.spec.lock.as_deref()).collect();
    let modes: Vec<&str> = new_jobs.iter().map(|j| j.deps_mode).collect();
    let keys: Vec<Option<&str>> = new_jobs
        .iter()
        .map(|j| j.spec.idempotency_key.as_deref())
        .collect();
    let owners: Vec<Option<i64>> = new_jobs.iter().map(|j| j.key_owner).collect();
    let caps: Vec<&str> = new_jobs.iter().map(|j| j.capabilities.as_str()).collect();
    let retry_ons: Vec<&str> = new_jobs.iter().map(|j| j.retry_on.as_str()).collect();
    let backoffs: Vec<i64> = new_jobs.iter().map(|j| j.backoff_ms).collect();
    let rows = tx
        .query(
            "INSERT INTO jobs (state, priority, max_attempts, lock_key, deps_mode,
                 idempotency_key, submitter, capabilities, retry_on, backoff_ms, created_at,
                 event_seq, has_dependents)
             SELECT x.state, x.priority, x.max_attempts, x.lock_key, x.deps_mode, x.key,
                 x.submitter, ARRAY(SELECT json_array_elements_text(x.caps::json)),
                 x.retry_on, x.backoff_ms, $10, 1, x.depended
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::bigint[], $11::boolean[],
                         $12::bigint[])
                 WITH ORDINALITY AS x(state, priority, max_attempts, lock_key, deps_mode,
                                      key, caps, retry_on, backoff_ms, depended, submitter,
                                      ord)
             ORDER BY x.ord
             RETURNING id",
            &[
                &states,
                &priorities,
                &max_attempts,
                &locks,
                &modes,
                &keys,
                &caps,
                &retry_ons,
                &backoffs,
                &tx.now,
                &depended,
                &owners,
            ],
        )
        .await?;
    let mut ids: Vec<i64> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    // One statement's ids come from the sequence in row order, so sorted they are in
    // batch order.
    ids.sort_unstable();
    if ids.len() != n {
        return Err(corrupt(format!("stored {} of {n} new jobs", ids.len())).into());
    }
    Ok(ids.into_iter().map(JobId).collect())
}

/// Registers a factory by name (or updates the one of that name) and returns its id.
pub(super) async fn register_tx(tx: &Tx, reg: &RegisterFactory) -> R<i64> {
    let set = cap_set(&reg.capabilities);
    let seats = i64::from(reg.seats);
    let row = tx
        .query_one(
            "INSERT INTO factories (name, seats, capabilities, cap_set, last_seen)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET seats = excluded.seats,
                 capabilities = excluded.capabilities, cap_set = excluded.cap_set,
                 last_seen = excluded.last_seen
             RETURNING id",
            &[&reg.name, &seats, &reg.capabilities, &set, &tx.now],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// Registers a factory for the token `token` (see [`Store::register_factory_for_token`]
/// and [`rules::registration`], which decides); changes nothing when a binding is in
/// the way.
///
/// The token's row is locked first, so registrations with one token take turns, and
/// an existing factory's row is locked before its holder is read. Two tokens racing for
/// a new name both insert it: the loser violates the name's unique index and runs again,
/// seeing the winner's row; two racing to bind one factory are settled by the unique
/// index `tokens_live_factory` the same way.
pub(super) async fn register_for_token_tx(
    tx: &Tx,
    reg: &RegisterFactory,
    token: i64,
) -> R<Binding> {
    let row = tx
        .query_opt(
            "SELECT t.name, t.scope, f.name FROM tokens t
             LEFT JOIN factories f ON f.id = t.factory_id WHERE t.id = $1 FOR UPDATE OF t",
            &[&token],
        )
        .await?
        .ok_or_else(|| not_found("token", token))?;
    let scope: String = row.try_get(1)?;
    let who = rules::Registrant {
        id: token,
        name: row.try_get(0)?,
        scope: scope.parse::<Scope>().map_err(corrupt)?,
        bound_to: row.try_get(2)?,
    };
    let existing = tx
        .query_opt(
            "SELECT f.id, f.token_id, r.name, r.revoked_at IS NULL,
                 (SELECT t.name FROM tokens t WHERE t.factory_id = f.id
                      AND t.revoked_at IS NULL AND t.id <> $2 LIMIT 1)
             FROM factories f LEFT JOIN tokens r ON r.id = f.token_id
             WHERE f.name = $1 FOR UPDATE OF f",
            &[&reg.name, &token],
        )
        .await?;
    let holder = match &existing {
        None => None,
        Some(row) => {
            let registrar: Option<i64> = row.try_get(1)?;
            let registrar_name: Option<String> = row.try_get(2)?;
            let live: bool = row.try_get(3)?;
            Some(rules::NameHolder {
                registrar: registrar.map(|id| (id, registrar_name.unwrap_or_default(), live)),
                bound_live: row.try_get(4)?,
            })
        }
    };
    let (own, bind) = match rules::registration(&reg.name, &who, holder.as_ref()) {
        rules::Registration::Go { own, bind } => (own, bind),
        rules::Registration::Refused(binding) => return Ok(binding),
    };
    let id = match &existing {
        Some(row) => {
            let id: i64 = row.try_get(0)?;
            let set = cap_set(&reg.capabilities);
            let seats = i64::from(reg.seats);
            tx.execute(
                "UPDATE factories SET seats = $2, capabilities = $3, cap_set = $4,
                     last_seen = $5, token_id = CASE WHEN $6 THEN $7 ELSE token_id END
                 WHERE id = $1",
                &[&id, &seats, &reg.capabilities, &set, &tx.now, &own, &token],
            )
            .await?;
            id
        }
        None => {
            let set = cap_set(&reg.capabilities);
            let seats = i64::from(reg.seats);
            // A plain insert: a racing registration of the same new name makes one of
            // the two violate the unique index and run again (see above).
            tx.query_one(
                "INSERT INTO factories (name, seats, capabilities, cap_set, last_seen, token_id)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&reg.name, &seats, &reg.capabilities, &set, &tx.now, &token],
            )
            .await?
            .try_get(0)?
        }
    };
    if bind {
        tx.execute(
            "UPDATE tokens SET factory_id = $2 WHERE id = $1",
            &[&token, &id],
        )
        .await?;
    }
    Ok(Binding::Bound(FactoryId(id)))
}

pub(super) fn is_unique_violation(e: &TxError) -> bool {
    matches!(e, TxError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
}
