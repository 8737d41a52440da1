//! SQLite-only checks: the file itself, reopening it, the lock index, and several
//! stores (as several processes would) sharing one file.

use crate::helpers::*;
use gantry_core::api::Scope;
use gantry_core::event::NewEvent;
use gantry_core::{JobState, Outcome};
use gantry_store::{Clock, JobFilter, SqliteStore, Store, StoreError};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn everything_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("gantry.db");
    let (ids, run, f) = {
        let s = SqliteStore::open(&path).expect("open");
        let ids = submit(
            &s,
            vec![job("a").key("a").lock("l"), job("b").dep_key("a"), job("c")],
        )
        .await;
        let f = factory(&s, "f", &["docker"]).await;
        let c = claim(&s, f).await;
        s.append_events(
            c.run.id,
            c.run.epoch,
            vec![NewEvent {
                kind: "run.output".into(),
                data: json!({"text": "x"}),
            }],
        )
        .await
        .expect("events");
        s.create_token("admin", Scope::Admin, "hash")
            .await
            .expect("token");
        s.set_paused(true).await.expect("pause");
        (ids, c, f)
    };
    let s = SqliteStore::open(&path).expect("reopen");
    let a = s.job(ids[0]).await.expect("a");
    assert_eq!(
        (a.state, a.epoch, a.lock.as_deref()),
        (JobState::Running, 1, Some("l"))
    );
    assert_eq!(a.spec.body, "Instructions of a.\n");
    assert_eq!(s.job(ids[1]).await.expect("b").state, JobState::Blocked);
    assert_eq!(s.jobs(&JobFilter::default()).await.expect("jobs").len(), 3);
    assert_eq!(s.runs(ids[0]).await.expect("runs")[0].id, run.run.id);
    assert_eq!(
        s.factories().await.expect("factories")[0].capabilities,
        vec!["docker".to_string()]
    );
    assert!(s.token_by_hash("hash").await.expect("token").is_some());
    assert!(s.status().await.expect("status").paused);
    let kinds = kinds_of(&s, ids[0]).await;
    assert_eq!(
        kinds,
        vec!["job.submitted", "job.state", "run.claimed", "run.output"]
    );
    // The lease and the seq counter carry on where they were.
    s.renew(run.run.id, run.run.epoch, LONG)
        .await
        .expect("renew after reopen");
    finish(&s, &run, Outcome::Succeeded).await;
    assert_eq!(s.job(ids[1]).await.expect("b").state, JobState::Queued);
    let seqs: Vec<i64> = events_of(&s, ids[0]).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    s.set_paused(false).await.expect("resume");
    assert!(s.claim(f, LONG).await.expect("claim").is_some());
}

#[tokio::test]
async fn the_lock_index_refuses_a_second_running_job_with_the_same_lock() {
    let t = crate::new_store();
    let s = &*t.store;
    let ids = submit(
        s,
        vec![job("a").lock("repo"), job("b").lock("repo"), job("c")],
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    assert_eq!(c.job.id, ids[0]);
    assert_eq!(
        claim(s, f).await.job.id,
        ids[2],
        "b is skipped while a holds the lock"
    );
    assert!(s.claim(f, LONG).await.expect("claim").is_none());
    let conn = rusqlite::Connection::open(t.dir.path().join("gantry.db")).expect("open raw");
    let err = conn
        .execute(
            "UPDATE jobs SET state = 'running' WHERE id = ?1",
            [ids[1].0],
        )
        .expect_err("unique index");
    assert!(
        err.to_string()
            .contains("UNIQUE constraint failed: jobs.lock_key"),
        "{err}"
    );
    finish(s, &c, Outcome::Succeeded).await;
    assert_eq!(claim(s, f).await.job.id, ids[1]);
}

#[tokio::test]
async fn the_database_is_in_wal_mode_with_a_schema_version() {
    let t = crate::new_store();
    let conn = rusqlite::Connection::open(t.dir.path().join("gantry.db")).expect("open raw");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, gantry_store::MIGRATIONS.len() as i64);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).expect("write");
    let err = SqliteStore::open(&path).expect_err("not a database");
    let msg = err.to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("not a Gantry database"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "these are my notes, not a database\n".repeat(200),
        "the file is left alone"
    );
}

#[test]
fn another_applications_database_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path).expect("create");
    conn.execute_batch("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');")
        .expect("schema");
    drop(conn);
    let err = SqliteStore::open(&path).expect_err("foreign database");
    let msg = err.to_string();
    assert!(
        msg.contains("other.db") && msg.contains("not a Gantry database"),
        "{msg}"
    );
    let conn = rusqlite::Connection::open(&path).expect("reopen");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM recipes", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_newer_schema_is_refused_naming_the_file_and_version() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("gantry.db");
    drop(SqliteStore::open(&path).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("raw");
    conn.execute_batch("PRAGMA user_version = 99")
        .expect("bump");
    drop(conn);
    let err = SqliteStore::open(&path).expect_err("newer schema");
    let msg = err.to_string();
    assert!(msg.contains("gantry.db") && msg.contains("99"), "{msg}");
    assert!(matches!(err, StoreError::Corrupt(_)));
}

#[test]
fn a_missing_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("no/such/dir/gantry.db");
    let err = SqliteStore::open(&path).expect_err("missing dir");
    assert!(err.to_string().contains("no/such/dir/gantry.db"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_reap_and_claim_safely() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("gantry.db");
    // One clock for both, as two processes on one machine share the system's.
    let clock = Clock::system();
    let a: Arc<dyn Store> =
        Arc::new(SqliteStore::open_with_clock(&path, clock.clone()).expect("open a"));
    let b: Arc<dyn Store> =
        Arc::new(SqliteStore::open_with_clock(&path, clock.clone()).expect("open b"));
    let ids = submit(&*a, (0..20).map(|i| job(&format!("j{i}"))).collect()).await;
    let fa = factory(&*a, "fa", &[]).await;
    let fb = factory(&*b, "fb", &[]).await;
    // Both stores claim concurrently: every job exactly once.
    let ta = tokio::spawn({
        let a = a.clone();
        async move {
            let mut got = Vec::new();
            while let Some(c) = a.claim(fa, Duration::from_millis(10)).await.expect("claim") {
                got.push(c.job.id);
            }
            got
        }
    });
    let tb = tokio::spawn({
        let b = b.clone();
        async move {
            let mut got = Vec::new();
            while let Some(c) = b.claim(fb, Duration::from_millis(10)).await.expect("claim") {
                got.push(c.job.id);
            }
            got
        }
    });
    let mut all = ta.await.expect("a");
    all.extend(tb.await.expect("b"));
    all.sort();
    assert_eq!(all, ids);
    clock.advance(Duration::from_millis(40));
    let (ra, rb) = tokio::join!(a.reap(), b.reap());
    let mut reaped = ra.expect("reap a");
    reaped.extend(rb.expect("reap b"));
    assert_eq!(reaped.len(), 20);
    assert_eq!(reaped.iter().collect::<BTreeSet<_>>().len(), 20);
    for id in ids {
        assert_eq!(a.job(id).await.expect("job").state, JobState::Queued);
    }
}

/// A database made by the spine (schema version 1) opens under the agent schema
/// (version 2) with its jobs and runs intact and the new fields empty.
#[tokio::test]
async fn issue3_a_version_1_database_migrates_with_its_jobs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gantry.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("create v1");
        conn.execute_batch(gantry_store::MIGRATIONS[0])
            .expect("v1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.pragma_update(None, "application_id", gantry_store::APPLICATION_ID)
            .expect("application id");
        let spec = serde_json::to_string(&crate::helpers::job("old.md").0.spec).expect("spec");
        conn.execute_batch(&format!(
            "INSERT INTO jobs (id, state, priority, attempt, max_attempts, epoch, created_at,
                               retry_on, backoff_ms, deps_mode)
             VALUES (7, 'succeeded', 5, 1, 3, 1, 1000, '[\"lost\"]', 5000, 'succeeded');
             INSERT INTO job_specs (job_id, title, spec) VALUES (7, 'old job', '{}');
             INSERT INTO runs (id, job_id, attempt, epoch, outcome, exit_code, started_at,
                               finished_at, lease_expires_at)
             VALUES (3, 7, 1, 1, 'succeeded', 0, 1000, 2000, 61000);",
            spec.replace('\'', "''")
        ))
        .expect("v1 rows");
    }
    let store = gantry_store::SqliteStore::open(&path).expect("open migrates");
    let job = store.job(gantry_core::JobId(7)).await.expect("old job");
    assert_eq!(job.title, "old job");
    assert_eq!(job.state, gantry_core::JobState::Succeeded);
    assert_eq!((job.session_id, job.checkpoint), (None, None));
    let runs = store.runs(gantry_core::JobId(7)).await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].insights, None);
    assert_eq!(runs[0].exit_code, Some(0));
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("reopen raw");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, gantry_store::MIGRATIONS.len() as i64);
}

/// Issue 15: a version 4 database keeps its idempotency keys (seen by every token, so
/// resubmitting an old job finds it) and gives each factory to the factory token bound
/// to it; a factory no token is bound to is left to admin tokens.
#[tokio::test]
async fn issue15_a_version_4_database_keeps_keys_and_gives_factories_to_their_tokens() {
    use gantry_core::api::{RegisterFactory, Scope};
    use gantry_store::{Binding, Store};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gantry.db");
    let old = crate::helpers::job("old.md").key("old-key").0;
    {
        let mut conn = rusqlite::Connection::open(&path).expect("create v4");
        let tx = conn.transaction().expect("begin");
        for sql in &gantry_store::MIGRATIONS[..4] {
            tx.execute_batch(sql).expect("schema");
        }
        tx.commit().expect("commit");
        conn.pragma_update(None, "user_version", 4)
            .expect("version");
        conn.pragma_update(None, "application_id", gantry_store::APPLICATION_ID)
            .expect("application id");
        let spec = serde_json::to_string(&old.spec).expect("spec");
        conn.execute_batch(&format!(
            "INSERT INTO jobs (id, state, priority, max_attempts, created_at, retry_on,
                               backoff_ms, deps_mode, idempotency_key)
             VALUES (7, 'queued', 5, 3, 1000, 'lost', 5000, 'succeeded', 'old-key');
             INSERT INTO job_specs (job_id, title, spec) VALUES (7, 'job old.md', '{}');
             INSERT INTO factories (id, name, seats, last_seen) VALUES (1, 'A', 1, 1000);
             INSERT INTO factories (id, name, seats, last_seen) VALUES (2, 'B', 1, 1000);
             INSERT INTO tokens (id, name, scope, hash, created_at, factory_id)
             VALUES (1, 'a', 'factory', 'ha', 1000, 1);
             INSERT INTO tokens (id, name, scope, hash, created_at)
             VALUES (2, 'other', 'factory', 'ho', 1000);",
            spec.replace('\'', "''")
        ))
        .expect("v4 rows");
    }
    let store = gantry_store::SqliteStore::open(&path).expect("open migrates");
    let again = store
        .submit_as(vec![old.clone()], Some(2))
        .await
        .expect("resubmit");
    assert_eq!(
        (again[0].id, again[0].existing),
        (gantry_core::JobId(7), true)
    );
    let job = store.job(gantry_core::JobId(7)).await.expect("old job");
    assert_eq!(job.idempotency_key.as_deref(), Some("old-key"));
    let reg = |name: &str| RegisterFactory {
        name: name.into(),
        seats: 1,
        capabilities: Vec::new(),
    };
    assert_eq!(
        store
            .register_factory_for_token(&reg("A"), 2)
            .await
            .expect("register"),
        Binding::FactoryTaken {
            factory: "A".into(),
            token: "a".into()
        }
    );
    assert_eq!(
        store
            .register_factory_for_token(&reg("B"), 2)
            .await
            .expect("register"),
        Binding::NameReserved {
            factory: "B".into()
        }
    );
    let admin = store
        .create_token("root", Scope::Admin, "hr")
        .await
        .expect("admin");
    assert_eq!(
        store
            .register_factory_for_token(&reg("B"), admin.id)
            .await
            .expect("register"),
        Binding::Bound(gantry_core::FactoryId(2))
    );
}

/// Issue 11: a version 6 database migrates to the checking state: its state constraint
/// takes `checking` (and still refuses what is no state), the lock index covers
/// checking jobs as it does running ones, and the file stays sound.
#[tokio::test]
async fn issue11_a_version_6_database_learns_the_checking_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gantry.db");
    {
        let mut conn = rusqlite::Connection::open(&path).expect("create v6");
        let tx = conn.transaction().expect("begin");
        for sql in &gantry_store::MIGRATIONS[..6] {
            tx.execute_batch(sql).expect("schema");
        }
        tx.commit().expect("commit");
        conn.pragma_update(None, "user_version", 6)
            .expect("version");
        conn.pragma_update(None, "application_id", gantry_store::APPLICATION_ID)
            .expect("application id");
    }
    let store = gantry_store::SqliteStore::open(&path).expect("open migrates");
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("reopen raw");
    let insert = |id: i64, state: &str, lock: &str| {
        conn.execute(
            "INSERT INTO jobs (id, state, priority, max_attempts, created_at, retry_on,
                               backoff_ms, deps_mode, lock_key)
             VALUES (?1, ?2, 5, 3, 1000, '[]', 5000, 'succeeded', ?3)",
            rusqlite::params![id, state, lock],
        )
    };
    insert(1, "checking", "repo").expect("checking is a state");
    insert(2, "bogus", "other").expect_err("bogus is not");
    insert(3, "running", "repo").expect_err("the checking job holds the lock");
    insert(4, "queued", "repo").expect("a queued job may wait for it");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
}
