//! PostgreSQL-only checks: what only shows with several store instances (replicas) on
//! one database, real concurrency, and the LISTEN/NOTIFY signal.

use crate::helpers::*;
use crate::{PgDb, pg_server_url};
use gantry_core::event::NewEvent;
use gantry_core::{JobId, JobState, Outcome};
use gantry_store::{PgOptions, PgStore, Store};
use serde_json::json;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A store instance on `db` with these options.
async fn instance(db: &PgDb, opts: PgOptions) -> Arc<PgStore> {
    Arc::new(
        PgStore::connect(&db.url, opts)
            .await
            .expect("connect to the test database"),
    )
}

/// Options whose poller never fires during a test, so only notifications wake waiters.
fn no_poll() -> PgOptions {
    PgOptions {
        poll_interval: Duration::from_secs(3600),
        ..PgOptions::default()
    }
}

/// Waits until the instance's LISTEN connection is `up`.
async fn until_listening(store: &PgStore, up: bool) {
    let mut rx = store.listening();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|l| *l == up))
        .await
        .expect("the listener changes state in time")
        .expect("store alive");
}

/// Waits (bounded) for a change signal after `rx`'s last seen value; true if one came.
async fn woken(rx: &mut tokio::sync::watch::Receiver<u64>, within: Duration) -> bool {
    matches!(tokio::time::timeout(within, rx.changed()).await, Ok(Ok(())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_from_two_instances_never_share_a_job_or_a_lock() {
    let db = PgDb::create().await;
    let a = instance(&db, PgOptions::default()).await;
    let b = instance(&db, PgOptions::default()).await;
    let mut batch = Vec::new();
    for i in 0..240 {
        let j = job(&format!("j{i}"));
        batch.push(match i % 6 {
            0 => j.lock("alpha"),
            1 => j.lock("beta"),
            2 => j.lock("gamma"),
            _ => j,
        });
    }
    let ids = submit(&*a, batch).await;
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let claimed: Arc<Mutex<Vec<JobId>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let s: Arc<dyn Store> = if w % 2 == 0 { a.clone() } else { b.clone() };
        let (held, claimed) = (held.clone(), claimed.clone());
        tasks.push(tokio::spawn(async move {
            let f = factory(&*s, &format!("w{w}"), &[]).await;
            let mut idle = 0;
            while idle < 100 {
                let Some(c) = s.claim(f, LONG).await.expect("claim") else {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                idle = 0;
                claimed.lock().expect("claimed").push(c.job.id);
                let lock = c.job.spec.lock.clone();
                if let Some(l) = &lock {
                    assert!(
                        held.lock().expect("held").insert(l.clone()),
                        "lock {l} held twice"
                    );
                }
                tokio::task::yield_now().await;
                if let Some(l) = &lock {
                    held.lock().expect("held").remove(l);
                }
                finish(&*s, &c, Outcome::Succeeded).await;
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("no hang")
            .expect("worker");
    }
    let claimed = claimed.lock().expect("claimed").clone();
    assert_eq!(claimed.len(), ids.len(), "every job claimed once");
    assert_eq!(
        claimed.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no job claimed twice"
    );
    let st = a.status().await.expect("status");
    assert_eq!(st.jobs["succeeded"], 240);
    // The event log agrees: per lock, claims and ends alternate.
    let events = a.events(0, None, 100_000).await.expect("events");
    let lock_of: HashMap<JobId, Option<String>> = a
        .jobs(&Default::default())
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| (j.id, j.lock))
        .collect();
    let mut holder: HashMap<String, JobId> = HashMap::new();
    for e in &events {
        let Some(job) = e.job_id else { continue };
        let Some(Some(lock)) = lock_of.get(&job) else {
            continue;
        };
        match e.kind.as_str() {
            "run.claimed" => {
                if let Some(other) = holder.insert(lock.clone(), job) {
                    panic!("lock {lock} claimed by {job} while {other} held it");
                }
            }
            "run.finished" => {
                assert_eq!(holder.remove(lock), Some(job), "lock {lock} released");
            }
            _ => {}
        }
    }
}

/// Workers on two instances that each finish a job and claim the next in one call, as
/// the queue benchmark does, so that the claims and finishes of several workers share
/// batches: jobs with lock keys, dependencies (whose finishes take the full path) and a
/// first attempt that fails and is retried. Every job ends once in success, no job runs
/// twice at once, and the event log shows every lock and dependency respected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue4_batched_finish_and_claim_workers_keep_locks_deps_and_retries() {
    let db = PgDb::create().await;
    let a = instance(&db, PgOptions::default()).await;
    let b = instance(&db, PgOptions::default()).await;
    let mut batch = Vec::new();
    for i in 0..240 {
        let mut j = job(&format!("j{i}")).key(&format!("k{i}")).backoff_ms(50);
        j = match i % 6 {
            0 => j.lock("alpha"),
            1 => j.lock("beta"),
            _ => j,
        };
        if i % 20 == 19 {
            j = j.dep_key(&format!("k{}", i - 1));
        }
        if i % 10 == 3 {
            j = j.retry_on(&[Outcome::Failed]);
        }
        batch.push(j);
    }
    let ids = submit(&*a, batch).await;
    let flaky: HashSet<JobId> = (0..240).filter(|i| i % 10 == 3).map(|i| ids[i]).collect();
    let flaky = Arc::new(flaky);
    let running: Arc<Mutex<HashSet<JobId>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let s: Arc<dyn Store> = if w % 2 == 0 { a.clone() } else { b.clone() };
        let (running, flaky) = (running.clone(), flaky.clone());
        tasks.push(tokio::spawn(async move {
            let f = factory(&*s, &format!("w{w}"), &[]).await;
            let mut idle = 0;
            let mut next = None;
            while idle < 200 {
                let c = match next.take() {
                    Some(c) => c,
                    None => match s.claim(f, LONG).await.expect("claim") {
                        Some(c) => c,
                        None => {
                            idle += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    },
                };
                idle = 0;
                assert!(
                    running.lock().expect("running").insert(c.job.id),
                    "job {} claimed while it ran",
                    c.job.id
                );
                tokio::task::yield_now().await;
                running.lock().expect("running").remove(&c.job.id);
                let outcome = if flaky.contains(&c.job.id) && c.run.attempt == 1 {
                    Outcome::Failed
                } else {
                    Outcome::Succeeded
                };
                let (done, claimed) = s
                    .finish_and_claim(c.run.id, report(&c, outcome), f, LONG)
                    .await
                    .expect("finish and claim");
                let expected = match outcome {
                    Outcome::Succeeded => JobState::Succeeded,
                    _ => JobState::Queued,
                };
                assert_eq!(done, expected, "job {}", c.job.id);
                next = claimed;
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("no hang")
            .expect("worker");
    }
    let st = a.status().await.expect("status");
    assert_eq!(st.jobs["succeeded"], 240);
    for (i, id) in ids.iter().enumerate() {
        let runs = a.runs(*id).await.expect("runs");
        let attempts = if i % 10 == 3 { 2 } else { 1 };
        assert_eq!(runs.len(), attempts, "job {i} ran {attempts} time(s)");
    }
    // The event log agrees: per lock, claims and ends alternate; a dependent is claimed
    // only after its dependency finished; every job's seqs count up from 1.
    let events = a.events(0, None, 100_000).await.expect("events");
    let jobs: HashMap<JobId, gantry_core::Job> = a
        .jobs(&Default::default())
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    let mut holder: HashMap<String, JobId> = HashMap::new();
    let mut succeeded: HashSet<JobId> = HashSet::new();
    let mut seqs: HashMap<JobId, i64> = HashMap::new();
    for e in &events {
        let Some(job) = e.job_id else { continue };
        let last = seqs.entry(job).or_insert(0);
        assert_eq!(e.seq, *last + 1, "job {job}'s events in seq order");
        *last = e.seq;
        let lock = jobs[&job].lock.clone();
        match e.kind.as_str() {
            "run.claimed" => {
                for dep in &jobs[&job].deps {
                    assert!(
                        succeeded.contains(dep),
                        "job {job} claimed before dep {dep}"
                    );
                }
                if let Some(lock) = lock
                    && let Some(other) = holder.insert(lock.clone(), job)
                {
                    panic!("lock {lock} claimed by {job} while {other} held it");
                }
            }
            "run.finished" => {
                if let Some(lock) = lock {
                    assert_eq!(holder.remove(&lock), Some(job), "lock {lock} released");
                }
                if e.data["outcome"] == "succeeded" {
                    succeeded.insert(job);
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_wakes_a_waiting_claim_on_another_instance() {
    let db = PgDb::create().await;
    let waiter = instance(&db, no_poll()).await;
    let writer = instance(&db, no_poll()).await;
    until_listening(&waiter, true).await;
    let f = factory(&*waiter, "f", &[]).await;
    let mut rx = waiter.changes();
    rx.borrow_and_update();
    assert!(waiter.claim(f, LONG).await.expect("claim").is_none());
    let id = submit1(&*writer, job("a")).await;
    assert!(
        woken(&mut rx, Duration::from_secs(10)).await,
        "the other instance's submit woke the waiter (no poller runs)"
    );
    assert_eq!(claim(&*waiter, f).await.job.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_still_wake_with_listen_off_through_the_poller() {
    let db = PgDb::create().await;
    let waiter = instance(
        &db,
        PgOptions {
            listen: false,
            poll_interval: Duration::from_millis(100),
            ..PgOptions::default()
        },
    )
    .await;
    let writer = instance(&db, no_poll()).await;
    assert!(!*waiter.listening().borrow());
    let f = factory(&*waiter, "f", &[]).await;
    let mut rx = waiter.changes();
    rx.borrow_and_update();
    let id = submit1(&*writer, job("a")).await;
    assert!(
        woken(&mut rx, Duration::from_secs(10)).await,
        "the poller saw the other instance's submit"
    );
    assert_eq!(claim(&*waiter, f).await.job.id, id);
    // Once it has seen that claim, nothing changes, and the poller stays quiet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rx.borrow_and_update();
    assert!(!woken(&mut rx, Duration::from_millis(400)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_listener_listens_again() {
    let db = PgDb::create().await;
    let waiter = instance(&db, no_poll()).await;
    let writer = instance(&db, no_poll()).await;
    until_listening(&waiter, true).await;
    until_listening(&writer, true).await;
    let admin = db.client().await;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'gantry-listener' AND datname = current_database()",
            &[],
        )
        .await
        .expect("terminate the listeners");
    assert_eq!(killed.len(), 2, "both instances' listeners");
    until_listening(&waiter, false).await;
    until_listening(&waiter, true).await;
    let f = factory(&*waiter, "f", &[]).await;
    let mut rx = waiter.changes();
    rx.borrow_and_update();
    let id = submit1(&*writer, job("a")).await;
    assert!(
        woken(&mut rx, Duration::from_secs(10)).await,
        "the new listening connection hears the other instance"
    );
    assert_eq!(claim(&*waiter, f).await.job.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reapers_on_two_instances_requeue_each_expired_job_once() {
    let db = PgDb::create().await;
    let a = instance(&db, PgOptions::default()).await;
    let b = instance(&db, PgOptions::default()).await;
    let ids = submit(&*a, (0..30).map(|i| job(&format!("j{i}"))).collect()).await;
    let f = factory(&*a, "f", &[]).await;
    let mut runs = BTreeSet::new();
    for _ in 0..30 {
        let c = a
            .claim(f, Duration::from_millis(50))
            .await
            .expect("claim")
            .expect("claimable");
        runs.insert(c.run.id);
    }
    db.pass(Duration::from_millis(60)).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..3 {
                mine.extend(s.reap().await.expect("reap"));
            }
            mine
        }));
    }
    let mut reaped = Vec::new();
    for task in tasks {
        reaped.extend(task.await.expect("reaper"));
    }
    assert_eq!(reaped.len(), 30, "each run reaped exactly once: {reaped:?}");
    assert_eq!(reaped.into_iter().collect::<BTreeSet<_>>(), runs);
    for id in ids {
        let j = b.job(id).await.expect("job");
        assert_eq!((j.state, j.attempt), (JobState::Queued, 1));
        let kinds = kinds_of(&*b, id).await;
        assert_eq!(kinds.iter().filter(|k| *k == "lease.expired").count(), 1);
        let runs = b.runs(id).await.expect("runs");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, Some(Outcome::Lost));
    }
}

/// A dependent submitted on one instance while its dependency finishes on another is
/// settled by one of the two, never left blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dependent_submitted_while_its_dependency_finishes_is_never_stranded() {
    let db = PgDb::create().await;
    let a = instance(&db, PgOptions::default()).await;
    let b = instance(&db, PgOptions::default()).await;
    let f = factory(&*a, "f", &[]).await;
    for round in 0..25 {
        let dep = submit1(&*a, job(&format!("dep{round}"))).await;
        let c = claim(&*a, f).await;
        assert_eq!(c.job.id, dep);
        let finisher = {
            let a = a.clone();
            tokio::spawn(async move { finish(&*a, &c, Outcome::Succeeded).await })
        };
        let submitter = {
            let b = b.clone();
            tokio::spawn(
                async move { submit1(&*b, job(&format!("child{round}")).dep_id(dep)).await },
            )
        };
        finisher.await.expect("finisher");
        let child = submitter.await.expect("submitter");
        let state = a.job(child).await.expect("child").state;
        assert_eq!(
            state,
            JobState::Queued,
            "round {round}: the child was stranded"
        );
        let c = claim(&*a, f).await;
        assert_eq!(c.job.id, child);
        finish(&*a, &c, Outcome::Succeeded).await;
    }
}

/// Events commit out of id order under concurrency; a follower paging by id (as an SSE
/// stream does, on any replica) must still see every one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_paging_by_id_misses_no_event_of_concurrent_writers() {
    let db = PgDb::create().await;
    let a = instance(&db, PgOptions::default()).await;
    let b = instance(&db, PgOptions::default()).await;
    submit(&*a, (0..8).map(|i| job(&format!("j{i}"))).collect()).await;
    let f = factory(&*a, "f", &[]).await;
    let mut claims = Vec::new();
    for _ in 0..8 {
        claims.push(claim(&*a, f).await);
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = {
        let b = b.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = b.events(after, None, 7).await.expect("page");
                if page.is_empty() && finished {
                    return seen;
                }
                match page.last() {
                    Some(last) => after = last.id,
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
                seen.extend(page.into_iter().map(|e| e.id));
            }
        })
    };
    let mut writers = Vec::new();
    for (i, c) in claims.into_iter().enumerate() {
        let s: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            for n in 0..25 {
                s.append_events(
                    c.run.id,
                    c.run.epoch,
                    vec![
                        NewEvent {
                            kind: "run.output".into(),
                            data: json!({"n": n}),
                        };
                        (n % 3) + 1
                    ],
                )
                .await
                .expect("append");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("follower ends")
        .expect("follower");
    let all: Vec<i64> = a
        .events(0, None, 100_000)
        .await
        .expect("all")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(seen, all, "the follower saw every event once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_instances_migrate_a_new_database_at_once() {
    let db = PgDb::create().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            PgStore::connect(&url, PgOptions::default()).await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("connect and migrate");
    }
    let client = db.client().await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM gantry_schema ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Each version applied once, in order, whatever the number of instances.
    assert!(!versions.is_empty());
    assert_eq!(versions, (1..=versions.len() as i32).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_schema_is_refused_by_name() {
    let db = PgDb::create().await;
    drop(instance(&db, PgOptions::default()).await);
    let client = db.client().await;
    client
        .execute("INSERT INTO gantry_schema (version) VALUES (99)", &[])
        .await
        .expect("bump the version");
    let err = PgStore::connect(&db.url, PgOptions::default())
        .await
        .expect_err("newer schema");
    let msg = err.to_string();
    assert!(msg.contains("99") && msg.contains(&db.name), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_times_come_from_the_database_clock() {
    let db = PgDb::create().await;
    let s = instance(&db, PgOptions::default()).await;
    submit1(&*s, job("a")).await;
    let f = factory(&*s, "f", &[]).await;
    let client = db.client().await;
    let before: i64 = client
        .query_one("SELECT gantry_now_ms()", &[])
        .await
        .expect("clock")
        .get(0);
    let c = s
        .claim(f, Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimable");
    let after: i64 = client
        .query_one("SELECT gantry_now_ms()", &[])
        .await
        .expect("clock")
        .get(0);
    assert!(
        c.run.lease_expires_at >= before + 30_000 && c.run.lease_expires_at <= after + 30_000,
        "{before} + 30 s <= {} <= {after} + 30 s",
        c.run.lease_expires_at
    );
}

#[test]
fn the_postgres_tests_know_their_server() {
    // Fails loudly (never skips) when the variable is missing.
    assert!(pg_server_url().starts_with("postgres"));
}
