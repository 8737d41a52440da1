//! The PostgreSQL schema and its migrations.
//!
//! Migrations are numbered; `gantry_schema` records the versions applied. All pending
//! migrations run in one transaction under a transaction-level advisory lock, so several
//! servers starting at once against a new database migrate it exactly once (the others
//! wait for the lock, then find nothing to do), and a failed migration leaves nothing
//! behind.

use super::{PgError, describe};
use crate::{Result, StoreError};

/// The advisory lock key that serializes migrations ("GANT").
const MIGRATION_LOCK: i64 = 0x4741_4E54;

/// Schema migrations: entry `i` takes the database from version `i` to `i + 1`. Never
/// edit a released entry; append a new one instead.
pub(super) const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9, SCHEMA_V10, SCHEMA_V11,
];

/// Secrets handed to agents (issue 12): `runs.secrets`, the names of the secrets the
/// run's agent received (JSON list of strings; never a value).
const SCHEMA_V11: &str = r#"
ALTER TABLE runs ADD COLUMN secrets text;
"#;

/// Reviews (issue 11): `runs.checks`, the run's reviews, secret findings and fix rounds
/// (JSON, a `gantry_core::checks::RunChecks`).
const SCHEMA_V10: &str = r#"
ALTER TABLE runs ADD COLUMN checks text;
"#;

/// Checked results (issue 11):
/// - The state `checking`: a job whose factory checks what its agent produced. It holds
///   its run, lease and lock like a running job, so the lock index (which also lists the
///   leased jobs for the reaper) covers both states, and the claim functions pass over a
///   job whose lock a checking job holds, as they do for a running one (restated here
///   whole, as versions 3 and 6 wrote them but for that condition).
/// - `runs.gates`: the run's gate records (JSON: the latest result of each gate, in the
///   order the gates first started).
const SCHEMA_V9: &str = r#"
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state IN ('blocked', 'queued',
    'running', 'checking', 'succeeded', 'failed', 'canceled', 'killed'));
DROP INDEX jobs_running_lock;
CREATE UNIQUE INDEX jobs_running_lock ON jobs (lock_key)
    WHERE state IN ('running', 'checking');
ALTER TABLE runs ADD COLUMN gates text;

CREATE OR REPLACE FUNCTION gantry_claim_candidate(caps text[], now_ms bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    SET enable_sort = off
    AS $$
DECLARE
    picked bigint;
BEGIN
    SELECT j.id INTO picked
    FROM jobs j
    WHERE j.state = 'queued'
      AND (j.not_before IS NULL OR j.not_before <= now_ms)
      AND j.capabilities <@ caps
      AND (j.lock_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM jobs r WHERE r.state IN ('running', 'checking')
                  AND r.lock_key = j.lock_key))
    ORDER BY j.priority DESC, j.id
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED;
    RETURN picked;
END
$$;

CREATE OR REPLACE FUNCTION gantry_claim_batch(ns bigint[], caps text[], now_ms bigint)
    RETURNS TABLE (n bigint, job bigint)
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    SET enable_sort = off
    SET jit = off
    AS $$
DECLARE
    picked bigint[] := '{}';
    keys text[] := '{}';
    walking text;
    walk refcursor;
    open_walk boolean := false;
    done boolean := false;
    jid bigint;
    jkey text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(ns), 0) LOOP
        -- One walk serves consecutive claims of factories with the same capabilities;
        -- a new walk passes over the jobs this batch has picked (it holds their locks,
        -- so SKIP LOCKED would not skip them).
        IF NOT open_walk OR caps[i] IS DISTINCT FROM walking THEN
            IF open_walk THEN
                CLOSE walk;
            END IF;
            walking := caps[i];
            done := false;
            OPEN walk FOR
                SELECT j.id, j.lock_key
                FROM jobs j
                WHERE j.state = 'queued'
                  AND (j.not_before IS NULL OR j.not_before <= now_ms)
                  AND j.capabilities <@ walking::text[]
                  AND j.id <> ALL (picked)
                  AND (j.lock_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM jobs r WHERE r.state IN ('running', 'checking')
                  AND r.lock_key = j.lock_key))
                ORDER BY j.priority DESC, j.id
                FOR UPDATE OF j SKIP LOCKED;
            open_walk := true;
        END IF;
        CONTINUE WHEN done;
        LOOP
            FETCH walk INTO jid, jkey;
            IF NOT FOUND THEN
                done := true;
                EXIT;
            END IF;
            EXIT WHEN jkey IS NULL OR NOT (jkey = ANY (keys));
        END LOOP;
        CONTINUE WHEN done;
        picked := picked || jid;
        IF jkey IS NOT NULL THEN
            keys := keys || jkey;
        END IF;
        n := ns[i];
        job := jid;
        RETURN NEXT;
    END LOOP;
    IF open_walk THEN
        CLOSE walk;
    END IF;
END
$$;
"#;

/// Queue depth (issue 10): the queued jobs' capability arrays in an index of their own,
/// so that `/metrics` counts them by set with an index-only scan of this index rather
/// than a scan of every job (the planner still scans the table when nearly every job
/// is queued, which costs the same). It is partial, like `jobs_claim`: only a submit or a retry
/// adds an entry (a claim's new row version is not queued, so it adds none).
const SCHEMA_V8: &str = r#"
CREATE INDEX jobs_queued_caps ON jobs (capabilities) WHERE state = 'queued';
"#;

/// Identities (issue 15):
/// - `factories.token_id`: the token a factory name belongs to (the first to register
///   it), so another token cannot take the name, and with it the factory's runs, over.
///   NULL for names the server registered itself (its embedded factory). A factory
///   registered before this version belongs to the factory token bound to it (the live
///   one, else the latest), or to no token when none is (only an admin token may then
///   take it).
/// - Idempotency keys are per submitting token (`jobs.submitter`, the token's id; -1
///   for no token; 0 for every key stored before this version, which every token still
///   sees), unique per submitter. `submitter` stays NULL for keyless jobs, like their
///   key, so the partial index gains nothing from them.
const SCHEMA_V7: &str = r#"
ALTER TABLE factories ADD COLUMN token_id bigint REFERENCES tokens (id);
UPDATE factories f SET token_id = (
    SELECT t.id FROM tokens t WHERE t.factory_id = f.id
    ORDER BY (t.revoked_at IS NULL) DESC, t.id DESC LIMIT 1);
ALTER TABLE jobs ADD COLUMN submitter bigint;
UPDATE jobs SET submitter = 0 WHERE idempotency_key IS NOT NULL;
DROP INDEX jobs_idempotency_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (submitter, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"#;

/// Agents (issue 3): the insights of each run, and per job the agent session to resume
/// and the latest checkpoint. The job side lives in its own table, written only for jobs
/// that have one, so the `jobs` rows that every claim rewrites stay narrow.
const SCHEMA_V2: &str = r#"
ALTER TABLE runs ADD COLUMN insights text;
CREATE TABLE job_agent (
    job_id     bigint PRIMARY KEY REFERENCES jobs (id),
    session_id text,
    wip_branch text,
    wip_base   text,
    wip_commit text
);
"#;

/// Throughput (issue 4), after version 1 was first committed:
/// - `has_dependents`: set (under the row's lock) by a submit that makes a job depend on
///   this one, so that a finish, which reads it under the same lock, knows whether to
///   settle dependents without another query.
/// - The idempotency key's unique index becomes partial, so that the rewrites of keyless
///   jobs add nothing to it (a claim or finish changes the state, so it is not a HOT
///   update and adds an entry to every index whose condition the new row meets).
/// - `runs` loses its foreign key to `jobs`: runs are inserted only by the claim
///   statement, for the job it has just locked and updated (jobs are never deleted), and
///   the key cost every claim a check query.
/// - `gantry_claim_candidate`, the claim's pinned choice (see its comment).
const SCHEMA_V3: &str = r#"
ALTER TABLE jobs ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;
UPDATE jobs SET has_dependents = true WHERE id IN (SELECT dep_id FROM job_deps);
ALTER TABLE jobs DROP CONSTRAINT jobs_idempotency_key_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE runs DROP CONSTRAINT runs_job_id_fkey;

-- The claim's choice: the best queued job that is due, whose capabilities `caps` (a
-- factory's cap_set) contain, and whose lock no running job holds; locked, skipping
-- jobs that concurrent claims hold. A function so that its plan can be pinned: the walk
-- of jobs_claim in claim order that stops at the first fit. Left to the statistics, a
-- plan made while the table was small (a new database, a burst of submits before
-- autovacuum analyzes) reads every queued job through a bitmap and sorts them, at each
-- claim.
CREATE FUNCTION gantry_claim_candidate(caps text[], now_ms bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    SET enable_sort = off
    AS $$
DECLARE
    picked bigint;
BEGIN
    SELECT j.id INTO picked
    FROM jobs j
    WHERE j.state = 'queued'
      AND (j.not_before IS NULL OR j.not_before <= now_ms)
      AND j.capabilities <@ caps
      AND (j.lock_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM jobs r WHERE r.state = 'running' AND r.lock_key = j.lock_key))
    ORDER BY j.priority DESC, j.id
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED;
    RETURN picked;
END
$$;
"#;

/// Remote factories (issue 4): why a factory does not claim (its admission, from its
/// heartbeats), and each run's diff, reported by the factory that ran it so that any
/// replica can show it. Diffs live in a table of their own, written once per run, so
/// the `runs` rows that renewals rewrite stay narrow (and their updates HOT).
const SCHEMA_V5: &str = r#"
ALTER TABLE factories ADD COLUMN admission text;
CREATE TABLE run_diffs (
    run_id bigint PRIMARY KEY REFERENCES runs (id),
    patch  text NOT NULL
);
"#;

/// Queue throughput (issue 4): claims in batches. `gantry_claim_batch` picks the jobs
/// for several claims of one statement (see the store's batch statement) in one walk of
/// `jobs_claim` per set of capabilities, rather than one walk per claim: every walk
/// starts at the head of the queue, where the entries of jobs claimed since the last
/// vacuum lie, so walking once per batch is much of what batching saves.
///
/// It takes the claims in order (`ns` their numbers, `caps` the text form of each one's
/// factory's `cap_set`) and returns one row per claim that got a job. Each job goes to
/// the first claim whose factory can run it, in claim order (priority desc, then id); a
/// job whose lock key a running job or an earlier claim of the batch holds is passed
/// over; jobs other transactions hold are skipped (`SKIP LOCKED`). The caller leaves out
/// claims of unknown factories, and all of them while the queue is paused. The plan is
/// pinned as `gantry_claim_candidate`'s is, and JIT is off: the walk has no LIMIT (it
/// stops when the claims are served), so its estimated cost is that of the whole queue
/// and would otherwise pass `jit_above_cost`, compiling the query at every call for far
/// longer than the walk takes.
const SCHEMA_V6: &str = r#"
CREATE FUNCTION gantry_claim_batch(ns bigint[], caps text[], now_ms bigint)
    RETURNS TABLE (n bigint, job bigint)
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    SET enable_sort = off
    SET jit = off
    AS $$
DECLARE
    picked bigint[] := '{}';
    keys text[] := '{}';
    walking text;
    walk refcursor;
    open_walk boolean := false;
    done boolean := false;
    jid bigint;
    jkey text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(ns), 0) LOOP
        -- One walk serves consecutive claims of factories with the same capabilities;
        -- a new walk passes over the jobs this batch has picked (it holds their locks,
        -- so SKIP LOCKED would not skip them).
        IF NOT open_walk OR caps[i] IS DISTINCT FROM walking THEN
            IF open_walk THEN
                CLOSE walk;
            END IF;
            walking := caps[i];
            done := false;
            OPEN walk FOR
                SELECT j.id, j.lock_key
                FROM jobs j
                WHERE j.state = 'queued'
                  AND (j.not_before IS NULL OR j.not_before <= now_ms)
                  AND j.capabilities <@ walking::text[]
                  AND j.id <> ALL (picked)
                  AND (j.lock_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM jobs r WHERE r.state = 'running' AND r.lock_key = j.lock_key))
                ORDER BY j.priority DESC, j.id
                FOR UPDATE OF j SKIP LOCKED;
            open_walk := true;
        END IF;
        CONTINUE WHEN done;
        LOOP
            FETCH walk INTO jid, jkey;
            IF NOT FOUND THEN
                done := true;
                EXIT;
            END IF;
            EXIT WHEN jkey IS NULL OR NOT (jkey = ANY (keys));
        END LOOP;
        CONTINUE WHEN done;
        picked := picked || jid;
        IF jkey IS NOT NULL THEN
            keys := keys || jkey;
        END IF;
        n := ns[i];
        job := jid;
        RETURN NEXT;
    END LOOP;
    IF open_walk THEN
        CLOSE walk;
    END IF;
END
$$;
"#;

/// Many machines (issue 4): the figures of each factory's last heartbeat, and the
/// factory each factory token is bound to (the first it registered; it may act for no
/// other). At most one live token is bound to a factory, enforced by a unique index
/// rather than by checking: of two registrations racing to bind one factory to two
/// tokens, the second violates it and runs again, then sees the first's binding.
const SCHEMA_V4: &str = r#"
ALTER TABLE factories ADD COLUMN load_1m double precision;
ALTER TABLE factories ADD COLUMN free_memory_mb bigint;
ALTER TABLE factories ADD COLUMN free_disk_mb bigint;
ALTER TABLE tokens ADD COLUMN factory_id bigint REFERENCES factories (id);
CREATE UNIQUE INDEX tokens_live_factory ON tokens (factory_id)
    WHERE factory_id IS NOT NULL AND revoked_at IS NULL;
"#;

/// Version 1.
///
/// Queue tables are tuned for churn. Every claim and finish rewrites a `jobs` row and
/// finishes and renewals rewrite a `runs` row, so both leave dead tuples at the rate jobs
/// flow. `fillfactor` keeps room on each page so a rewritten row usually lands on its
/// own page (HOT updates for the updates that touch no indexed column: renewals, event
/// seqs, run results), and per-table autovacuum settings start vacuum after about 1% of
/// the table changed (rather than the default 20%) and let it run without cost-based
/// sleeping, so the claim index's dead entries are cleared while the queue is busy
/// instead of piling up in front of every claim scan. `events` is append-only: the
/// defaults (insert-driven vacuum, PostgreSQL 13+) suit it.
const SCHEMA_V1: &str = r#"
-- Every time the store records (leases, not_before, created_at, ...) is milliseconds
-- since the Unix epoch by the database's clock, never a client's.
CREATE FUNCTION gantry_now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE jobs (
    id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    state           text NOT NULL CHECK (state IN ('blocked', 'queued', 'running',
                      'succeeded', 'failed', 'canceled', 'killed')),
    priority        bigint NOT NULL,
    attempt         bigint NOT NULL DEFAULT 0,
    max_attempts    bigint NOT NULL,
    epoch           bigint NOT NULL DEFAULT 0,
    current_run     bigint,
    event_seq       bigint NOT NULL DEFAULT 0,
    lock_key        text,
    not_before      bigint,
    stop_requested  text,
    reason          text,
    created_at      bigint NOT NULL,
    started_at      bigint,
    finished_at     bigint,
    retry_on        text NOT NULL,
    backoff_ms      bigint NOT NULL,
    deps_mode       text NOT NULL,
    capabilities    text[] NOT NULL DEFAULT '{}',
    idempotency_key text UNIQUE
) WITH (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
-- The claim walks this index in claim order and stops at the first fit.
CREATE INDEX jobs_claim ON jobs (priority DESC, id) WHERE state = 'queued';
-- At most one running job per lock key, whatever the code above it does (NULL keys
-- never collide). It also lists the running jobs for the reaper.
CREATE UNIQUE INDEX jobs_running_lock ON jobs (lock_key) WHERE state = 'running';

-- The large, immutable part of a job, written once at submit.
CREATE TABLE job_specs (
    job_id bigint PRIMARY KEY REFERENCES jobs (id),
    title  text NOT NULL,
    deps   bigint[] NOT NULL DEFAULT '{}',
    spec   text NOT NULL
);

CREATE TABLE job_deps (
    job_id bigint NOT NULL REFERENCES jobs (id),
    dep_id bigint NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, dep_id)
);
CREATE INDEX job_deps_dep ON job_deps (dep_id, job_id);

CREATE TABLE factories (
    id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    seats        bigint NOT NULL,
    capabilities text[] NOT NULL DEFAULT '{}',
    -- What the factory satisfies, as a set a job's capabilities must be contained in:
    -- its capabilities plus the bare name of each `name=value` one (see
    -- `gantry_core::caps::satisfies`).
    cap_set      text[] NOT NULL DEFAULT '{}',
    last_seen    bigint NOT NULL
);

CREATE SEQUENCE runs_id_seq;
-- No foreign key to factories: every claim would take a share lock on its factory's
-- row, which renewals update, and the lockers of one row become a multixact. The
-- claim statement checks the factory itself, and factories are never deleted.
CREATE TABLE runs (
    id               bigint PRIMARY KEY DEFAULT nextval('runs_id_seq'),
    job_id           bigint NOT NULL REFERENCES jobs (id),
    attempt          bigint NOT NULL,
    epoch            bigint NOT NULL,
    factory_id       bigint,
    outcome          text,
    exit_code        integer,
    error            text,
    branch           text,
    base_commit      text,
    commit_sha       text,
    files_changed    bigint,
    lines_added      bigint,
    lines_deleted    bigint,
    started_at       bigint NOT NULL,
    finished_at      bigint,
    lease_expires_at bigint NOT NULL,
    UNIQUE (job_id, epoch)
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0
);
ALTER SEQUENCE runs_id_seq OWNED BY runs.id;

-- CACHE 1 (the default) on purpose: `last_value` must be the last id handed out by any
-- session, for the settled-events horizon below.
CREATE SEQUENCE events_id_seq;
-- No foreign keys: events are the most written rows, and every writer of an event has
-- just locked its job.
CREATE TABLE events (
    id     bigint PRIMARY KEY DEFAULT nextval('events_id_seq'),
    job_id bigint,
    run_id bigint,
    seq    bigint NOT NULL,
    kind   text NOT NULL,
    at     bigint NOT NULL,
    data   text NOT NULL
);
ALTER SEQUENCE events_id_seq OWNED BY events.id;
CREATE INDEX events_job ON events (job_id, id);

-- Event ids come from a sequence, so concurrent transactions may commit them out of
-- order: a reader that saw id 11 could later see 10 appear, and a follower paging by
-- id would skip it. This returns an id below which nothing can appear any more: the
-- last id handed out, once every transaction that was in progress when it was read has
-- ended. (Every writer of events has its transaction id before it takes an event id,
-- so any transaction still holding an unpublished id is in the snapshot's in-progress
-- list.) Transactions of other databases are skipped when their id is visible in
-- pg_stat_activity. NULL when they do not end within two seconds.
CREATE FUNCTION gantry_settled_event_id() RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    hi bigint;
    waiting xid8[];
    deadline timestamptz := clock_timestamp() + interval '2 seconds';
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO hi FROM events_id_seq;
    -- A new statement, so a snapshot taken after `hi` was read.
    waiting := ARRAY(SELECT pg_snapshot_xip(pg_current_snapshot()));
    IF cardinality(waiting) = 0 THEN
        RETURN hi;
    END IF;
    waiting := ARRAY(
        SELECT x FROM unnest(waiting) AS x
        WHERE NOT EXISTS (
            SELECT 1 FROM pg_stat_activity a
            WHERE a.backend_xid IS NOT NULL
              AND a.datname IS DISTINCT FROM current_database()
              AND a.backend_xid::text = (x::text::numeric % 4294967296)::text));
    -- Waits until a new snapshot no longer counts them in progress. (Not
    -- pg_xact_status: the commit log says "committed" a moment before the transaction
    -- leaves the in-progress list, and a snapshot taken in between does not see its rows.)
    LOOP
        waiting := ARRAY(SELECT x FROM unnest(waiting) AS x
                         WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot()));
        IF cardinality(waiting) = 0 THEN
            RETURN hi;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN NULL;
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
END
$$;

CREATE TABLE tokens (
    id         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    scope      text NOT NULL,
    hash       text NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    revoked_at bigint
);

CREATE TABLE queue (
    id     integer PRIMARY KEY CHECK (id = 1),
    paused boolean NOT NULL DEFAULT false
);
INSERT INTO queue (id, paused) VALUES (1, false);
"#;

/// Brings the schema of the database behind `client` up to date, in one transaction
/// under [`MIGRATION_LOCK`]. Fails, naming the database, when it was migrated by a newer
/// Gantry.
pub(super) async fn migrate(client: &mut tokio_postgres::Client, shown: &str) -> Result<()> {
    let fail = |what: &str, e: PgError| {
        StoreError::Backend(format!(
            "migrating the database {shown}: {what}: {}",
            describe(&e)
        ))
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| fail("cannot begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| fail("cannot take the migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS gantry_schema (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(|e| fail("cannot create gantry_schema", e))?;
    let version: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM gantry_schema", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| fail("cannot read the schema version", e))?;
    let known = MIGRATIONS.len();
    let current = usize::try_from(version).unwrap_or(0);
    if current > known {
        return Err(StoreError::Corrupt(format!(
            "the database {shown} has schema version {version}, newer than this Gantry \
             knows ({known}); upgrade Gantry to use it"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let to = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql)
            .await
            .map_err(|e| fail(&format!("schema version {to}"), e))?;
        tx.execute("INSERT INTO gantry_schema (version) VALUES ($1)", &[&to])
            .await
            .map_err(|e| fail(&format!("recording schema version {to}"), e))?;
    }
    tx.commit().await.map_err(|e| fail("cannot commit", e))?;
    if current < known {
        tracing::info!(
            database = shown,
            from = current,
            to = known,
            "migrated store schema"
        );
    }
    Ok(())
}
