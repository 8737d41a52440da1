//! The SQLite schema: its versions, the migrations between them, and how a file is
//! recognized as Gantry's.

use crate::{Result, StoreError};
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// Schema migrations: entry `i` takes the database from `user_version` `i` to `i + 1`.
/// Never edit a released entry; append a new one instead. Public so tests can build a
/// database at an older version and check that opening it migrates it intact.
pub const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9,
];

/// `PRAGMA application_id` of a Gantry database ("GANT"), so a foreign SQLite file is
/// recognized before anything is written to it.
pub const APPLICATION_ID: i32 = 0x4741_4E54;

/// Secrets handed to agents (issue 12): `runs.secrets`, the names of the secrets the
/// run's agent received (JSON list of strings; never a value).
pub(super) const SCHEMA_V9: &str = r#"
ALTER TABLE runs ADD COLUMN secrets TEXT;
"#;

/// Reviews (issue 11): `runs.checks`, the run's reviews, secret findings and fix rounds
/// (JSON, a `gantry_core::checks::RunChecks`).
pub(super) const SCHEMA_V8: &str = r#"
ALTER TABLE runs ADD COLUMN checks TEXT;
"#;

/// Checked results (issue 11):
/// - The state `checking`: a job whose factory checks what its agent produced. It
///   holds its run, lease and lock like a running job, so the lock index (which also
///   lists the leased jobs for the reaper) covers both states. SQLite cannot alter a
///   CHECK constraint, and rebuilding `jobs` would mean rebuilding every table that
///   refers to it; the constraint is widened in the stored schema instead, as SQLite's
///   documentation allows for a constraint every row already meets, and
///   `writable_schema=RESET` reloads it. The index's DDL changes the schema cookie, so
///   other connections reload it too.
/// - `runs.gates`: the run's gate records (JSON: the latest result of each gate, in the
///   order the gates first started).
pub(super) const SCHEMA_V7: &str = r#"
PRAGMA writable_schema = ON;
UPDATE sqlite_master
    SET sql = replace(sql, 'OR state = ''running'' OR', 'OR state = ''running'' OR state = ''checking'' OR')
    WHERE type = 'table' AND name = 'jobs';
PRAGMA writable_schema = RESET;
DROP INDEX jobs_running_lock;
CREATE UNIQUE INDEX jobs_running_lock ON jobs (lock_key)
    WHERE state = 'running' OR state = 'checking';
ALTER TABLE runs ADD COLUMN gates TEXT;
"#;

/// Queue depth (issue 10): the queued jobs' capability lists in an index of their own,
/// so that `/metrics` counts them by set with a scan of this index alone, in order and
/// without reading a row. It is partial, like `jobs_claim`: a job enters it when it is
/// queued and leaves it when it is claimed or ended, and the rest of the table never
/// does.
pub(super) const SCHEMA_V6: &str = r#"
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
///   sees). SQLite cannot drop the old column's UNIQUE constraint without rebuilding
///   the table, so that column is renamed, emptied and left unused, and the keys move
///   to a new column under a unique index per submitter. Both new `jobs` columns stay
///   NULL for keyless jobs, which keeps the index partial and the rows narrow.
pub(super) const SCHEMA_V5: &str = r#"
ALTER TABLE factories ADD COLUMN token_id INTEGER REFERENCES tokens (id);
UPDATE factories SET token_id = (
    SELECT t.id FROM tokens t WHERE t.factory_id = factories.id
    ORDER BY t.revoked_at IS NULL DESC, t.id DESC LIMIT 1);
ALTER TABLE jobs RENAME COLUMN idempotency_key TO unscoped_key;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN submitter INTEGER;
UPDATE jobs SET idempotency_key = unscoped_key, unscoped_key = NULL, submitter = 0
    WHERE unscoped_key IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (submitter, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"#;

/// Remote factories (issue 4): why a factory does not claim (its admission, from its
/// heartbeats), and each run's diff, reported by the factory that ran it so that any
/// server can show it. Diffs live in a table of their own, written once per run, so the
/// `runs` rows that renewals rewrite stay narrow.
pub(super) const SCHEMA_V4: &str = r#"
ALTER TABLE factories ADD COLUMN admission TEXT;
CREATE TABLE run_diffs (
    run_id INTEGER PRIMARY KEY REFERENCES runs (id),
    patch  TEXT NOT NULL
);
"#;

/// Many machines (issue 4): the figures of each factory's last heartbeat, and the
/// factory each factory token is bound to (the first it registered; it may act for no
/// other). At most one live token is bound to a factory, enforced by a unique index
/// rather than by checking, so two tokens racing for one name cannot both win.
pub(super) const SCHEMA_V3: &str = r#"
ALTER TABLE factories ADD COLUMN load_1m REAL;
ALTER TABLE factories ADD COLUMN free_memory_mb INTEGER;
ALTER TABLE factories ADD COLUMN free_disk_mb INTEGER;
ALTER TABLE tokens ADD COLUMN factory_id INTEGER REFERENCES factories (id);
CREATE UNIQUE INDEX tokens_live_factory ON tokens (factory_id)
    WHERE factory_id IS NOT NULL AND revoked_at IS NULL;
"#;

/// Agents (issue 3): the insights of each run, and per job the agent session to resume
/// and the latest checkpoint. The job side lives in its own table, written only for jobs
/// that have one, so the narrow `jobs` rows that every claim rewrites stay narrow.
pub(super) const SCHEMA_V2: &str = r#"
ALTER TABLE runs ADD COLUMN insights TEXT;
CREATE TABLE job_agent (
    job_id     INTEGER PRIMARY KEY REFERENCES jobs (id),
    session_id TEXT,
    wip_branch TEXT,
    wip_base   TEXT,
    wip_commit TEXT
);
"#;

pub(super) const SCHEMA_V1: &str = r#"
-- What claims and finishes rewrite, kept narrow: every update rewrites the whole row,
-- and the narrower the rows, the fewer pages a commit of neighbouring jobs touches.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Written as ORs, not `IN (...)`: SQLite builds an ephemeral table for an IN list at
    -- every execution of a statement that checks it, which every claim and finish is.
    state           TEXT NOT NULL CHECK (state = 'blocked' OR state = 'queued'
                      OR state = 'running' OR state = 'succeeded' OR state = 'failed'
                      OR state = 'canceled' OR state = 'killed'),
    priority        INTEGER NOT NULL,
    attempt         INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL,
    epoch           INTEGER NOT NULL DEFAULT 0,
    current_run     INTEGER,
    event_seq       INTEGER NOT NULL DEFAULT 0,
    lock_key        TEXT,
    not_before      INTEGER,
    stop_requested  TEXT,
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    retry_on        TEXT NOT NULL,
    backoff_ms      INTEGER NOT NULL,
    deps_mode       TEXT NOT NULL,
    capabilities    TEXT NOT NULL DEFAULT '[]',
    idempotency_key TEXT UNIQUE
);
-- The claim query walks this index in claim order and stops at the first fit.
CREATE INDEX jobs_claim ON jobs (priority DESC, id) WHERE state = 'queued';
-- At most one running job per lock key, whatever the code above it does. (NULL keys
-- never collide. The condition has no `lock_key IS NOT NULL`: the planner checks that
-- term against every query's comparisons with bound values, and marks those statements
-- for re-preparing at each new binding, which costs more than the NULL entries.)
-- It also lists the running jobs for the reaper. There is deliberately no index on
-- state alone: every claim and finish would rewrite two of its pages, and only rare
-- listings would use it.
CREATE UNIQUE INDEX jobs_running_lock ON jobs (lock_key) WHERE state = 'running';

-- The large, immutable part of a job, written once at submit and never rewritten.
CREATE TABLE job_specs (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
    title  TEXT NOT NULL,
    deps   TEXT NOT NULL DEFAULT '[]',
    spec   TEXT NOT NULL
);

CREATE TABLE job_deps (
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    dep_id INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, dep_id)
) WITHOUT ROWID;
CREATE INDEX job_deps_dep ON job_deps (dep_id, job_id);

CREATE TABLE factories (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL UNIQUE,
    seats        INTEGER NOT NULL,
    capabilities TEXT NOT NULL DEFAULT '[]',
    last_seen    INTEGER NOT NULL
);

CREATE TABLE runs (
    id               INTEGER PRIMARY KEY,
    job_id           INTEGER NOT NULL REFERENCES jobs (id),
    attempt          INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    factory_id       INTEGER REFERENCES factories (id),
    outcome          TEXT,
    exit_code        INTEGER,
    error            TEXT,
    branch           TEXT,
    base_commit      TEXT,
    commit_sha       TEXT,
    files_changed    INTEGER,
    lines_added      INTEGER,
    lines_deleted    INTEGER,
    started_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    lease_expires_at INTEGER NOT NULL,
    UNIQUE (job_id, epoch)
);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY,
    job_id INTEGER,
    run_id INTEGER,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    at     INTEGER NOT NULL,
    data   TEXT NOT NULL
);
-- No foreign keys here: events are the most written rows, and every writer of an
-- event has just read (or locked) its job and run; `record_event` checks them itself.
-- A job's events are found through two partial indexes. Its first event (seq 1,
-- `job.submitted`) is written at submit, in job order, so it lands at the end of
-- `events_job_first`. Its later events go to `events_job`; as jobs are worked in
-- roughly submission order, those land near the end of that index too. (One index
-- over both would put every later event into the middle of pages packed with the
-- first events of the jobs after it, splitting a page every few commits.)
CREATE INDEX events_job_first ON events (job_id) WHERE seq = 1;
CREATE INDEX events_job ON events (job_id, id) WHERE seq > 1;

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    scope      TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE queue (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    paused INTEGER NOT NULL DEFAULT 0
);
INSERT INTO queue (id, paused) VALUES (1, 0);
"#;

pub(super) fn identify(conn: &Connection) -> rusqlite::Result<(i32, i64, i64)> {
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok((app_id, version, tables))
}

pub(super) fn check_identity(path: &Path, app_id: i32, version: i64, tables: i64) -> Result<()> {
    let shown = path.display();
    let fresh = app_id == 0 && version == 0 && tables == 0;
    if app_id != APPLICATION_ID && !fresh {
        return Err(StoreError::Corrupt(format!(
            "{shown} is not a Gantry database (application_id {app_id:#x}, \
             user_version {version}, {tables} schema objects)"
        )));
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Corrupt(format!(
            "{shown} has schema version {version}, newer than this Gantry knows ({known}); \
             upgrade Gantry to open it"
        )));
    }
    Ok(())
}

/// Brings the schema up to date, one migration per transaction. The version is read
/// again inside each write transaction, so two processes opening a new file at once do
/// not both migrate it.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (app_id, version, tables) = identify(&tx)?;
        check_identity(path, app_id, version, tables)?;
        let Some(sql) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(sql).map_err(|e| {
            StoreError::Backend(format!(
                "migrating {} to schema version {}: {e}",
                path.display(),
                version + 1
            ))
        })?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version = version + 1, "migrated store schema");
    }
}

// ---------------------------------------------------------------------------------------
// Row mapping
// ---------------------------------------------------------------------------------------
