//! The backend-independent conformance suite: every case is an `async fn` taking a
//! fresh, empty [`TestStore`] and using only the `Store` trait. The [`cases!`] list at
//! the end runs each one against every backend, as `conformance::sqlite::<case>` and
//! `conformance::postgres::<case>`.

use crate::TestStore;
use crate::helpers::*;
use gantry_core::api::{FinishReport, Heartbeat, RegisterFactory, Scope};
use gantry_core::event::NewEvent;
use gantry_core::{JobId, JobState, Outcome, StopKind};
use gantry_store::{Binding, JobFilter, StoreError};
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn assert_stale(err: StoreError, job: JobId, epoch: i64, current: i64) {
    match err {
        StoreError::StaleLease {
            job: j,
            epoch: e,
            current_epoch,
            ..
        } => {
            assert_eq!((j, e, current_epoch), (job, epoch, current));
        }
        other => panic!("expected a stale lease, got {other:?}"),
    }
}

async fn claims_by_priority_then_submission_order(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("a").priority(5),
            job("b").priority(9),
            job("c").priority(5),
            job("d").priority(1),
            job("e").priority(9),
        ],
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let order = drain(s, f).await;
    assert_eq!(order, vec![ids[1], ids[4], ids[0], ids[2], ids[3]]);
    let later = submit1(s, job("f").priority(0)).await;
    assert_eq!(drain(s, f).await, vec![later]);
}

async fn claim_sets_lease_run_and_events(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let before = gantry_core::time::now_millis();
    let c = s
        .claim(f, Duration::from_secs(30))
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!(c.job.id, id);
    assert_eq!(c.job.spec.title, "job a");
    assert_eq!((c.run.attempt, c.run.epoch), (1, 1));
    assert_eq!(c.run.lease_ttl_ms, 30_000);
    assert!(c.run.lease_expires_at >= before + 30_000);
    let j = s.job(id).await.expect("job");
    assert_eq!(j.state, JobState::Running);
    assert_eq!((j.attempt, j.epoch), (1, 1));
    assert!(j.started_at.is_some());
    let runs = s.runs(id).await.expect("runs");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, c.run.id);
    assert_eq!(runs[0].factory_id, Some(f));
    assert_eq!(runs[0].outcome, None);
    assert_eq!(s.run(c.run.id).await.expect("run"), runs[0]);
    assert_eq!(
        kinds_of(s, id).await,
        vec!["job.submitted", "job.state", "run.claimed"]
    );
    assert!(s.claim(f, LONG).await.expect("claim").is_none());
}

async fn unknown_factory_and_job_are_not_found(t: TestStore) {
    let s = &*t.store;
    let err = s
        .claim(gantry_core::FactoryId(99), LONG)
        .await
        .expect_err("no such factory");
    assert!(
        matches!(&err, StoreError::NotFound { what: "factory", id } if id == "99"),
        "{err:?}"
    );
    let err = s.job(JobId(42)).await.expect_err("no such job");
    assert!(matches!(&err, StoreError::NotFound { what: "job", id } if id == "42"));
    let err = s.run(gantry_core::RunId(7)).await.expect_err("no such run");
    assert!(matches!(&err, StoreError::NotFound { what: "run", .. }));
    let err = s
        .renew(gantry_core::RunId(7), 1, LONG)
        .await
        .expect_err("no such run");
    assert!(matches!(&err, StoreError::NotFound { what: "run", .. }));
}

async fn deps_block_until_succeeded(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a").key("a"), job("b").dep_key("a")]).await;
    assert_eq!(s.job(ids[1]).await.expect("job").state, JobState::Blocked);
    assert_eq!(s.job(ids[1]).await.expect("job").deps, vec![ids[0]]);
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    assert_eq!(c.job.id, ids[0]);
    assert!(
        s.claim(f, LONG).await.expect("claim").is_none(),
        "b is blocked"
    );
    finish(s, &c, Outcome::Succeeded).await;
    assert_eq!(s.job(ids[1]).await.expect("job").state, JobState::Queued);
    assert_eq!(
        transitions(s, ids[1]).await,
        vec![("blocked".into(), "queued".into(), None)]
    );
    assert_eq!(claim(s, f).await.job.id, ids[1]);
}

async fn failed_dep_cancels_dependents_transitively_unless_finished_mode(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("a").key("a").attempts(1),
            job("b").key("b").dep_key("a"),
            job("c").dep_key("b"),
            job("d").dep_key("a").finished_mode(),
        ],
    )
    .await;
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    let f = factory(s, "f", &[]).await;
    let cl = claim(s, f).await;
    let after = finish(s, &cl, Outcome::Failed).await;
    assert_eq!(after.state, JobState::Failed);
    let jb = s.job(b).await.expect("b");
    assert_eq!(jb.state, JobState::Canceled);
    assert_eq!(
        jb.reason.as_deref(),
        Some(format!("dependency {a} failed").as_str())
    );
    assert!(jb.finished_at.is_some());
    let jc = s.job(c).await.expect("c");
    assert_eq!(jc.state, JobState::Canceled);
    assert_eq!(
        jc.reason.as_deref(),
        Some(format!("dependency {b} canceled").as_str())
    );
    assert_eq!(
        transitions(s, c).await,
        vec![(
            "blocked".into(),
            "canceled".into(),
            Some(format!("dependency {b} canceled"))
        )]
    );
    assert_eq!(s.job(d).await.expect("d").state, JobState::Queued);
    assert_eq!(claim(s, f).await.job.id, d);
}

async fn a_dep_that_already_ended_badly_cancels_at_submit(t: TestStore) {
    let s = &*t.store;
    let a = submit1(s, job("a")).await;
    s.cancel(a).await.expect("cancel");
    let ids = submit(
        s,
        vec![
            job("b").key("b").dep_id(a),
            job("c").dep_key("b"),
            job("d").dep_id(a).finished_mode(),
        ],
    )
    .await;
    let jb = s.job(ids[0]).await.expect("b");
    assert_eq!(jb.state, JobState::Canceled);
    assert_eq!(
        jb.reason.as_deref(),
        Some(format!("dependency {a} canceled").as_str())
    );
    assert_eq!(s.job(ids[1]).await.expect("c").state, JobState::Canceled);
    assert_eq!(s.job(ids[2]).await.expect("d").state, JobState::Queued);
    let ev = events_of(s, ids[0]).await;
    assert_eq!(ev[0].kind, "job.submitted");
    assert_eq!(
        ev[1].data["reason"],
        json!(format!("dependency {a} canceled"))
    );
}

async fn unknown_dep_refuses_the_whole_batch(t: TestStore) {
    let s = &*t.store;
    let err = s
        .submit(vec![
            job("good.md").key("g").0,
            job("bad.md").dep_key("nope").0,
        ])
        .await
        .expect_err("unknown dep");
    let StoreError::Invalid(e) = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(e.file, "bad.md");
    assert_eq!(e.field.as_deref(), Some("deps"));
    assert_eq!(e.line, Some(7));
    assert!(e.message.contains("\"nope\""), "{}", e.message);
    let err = s
        .submit(vec![job("bad2.md").dep_id(JobId(999)).0])
        .await
        .expect_err("unknown id");
    assert!(err.to_string().contains("999"), "{err}");
    assert!(err.to_string().contains("bad2.md:7"), "{err}");
    assert!(
        s.jobs(&JobFilter::default())
            .await
            .expect("jobs")
            .is_empty()
    );
    assert!(s.events(0, None, 100).await.expect("events").is_empty());
    // The key of the refused batch was not stored either.
    let ok = s.submit(vec![job("g2").key("g").0]).await.expect("submit");
    assert!(!ok[0].existing);
}

async fn dependency_cycles_are_refused(t: TestStore) {
    let s = &*t.store;
    let err = s
        .submit(vec![
            job("x.md").key("x").0,
            job("a.md").key("a").dep_key("b").0,
            job("b.md").key("b").dep_key("c").0,
            job("c.md").key("c").dep_key("a").dep_key("x").0,
        ])
        .await
        .expect_err("cycle");
    let StoreError::Invalid(e) = err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(e.field.as_deref(), Some("deps"));
    assert!(e.message.contains("cycle"), "{}", e.message);
    assert!(
        e.message.contains("a.md -> b.md -> c.md -> a.md"),
        "{}",
        e.message
    );
    let err = s
        .submit(vec![job("self.md").key("me").dep_key("me").0])
        .await
        .expect_err("self cycle");
    assert!(err.to_string().contains("self.md -> self.md"), "{err}");
    assert!(
        s.jobs(&JobFilter::default())
            .await
            .expect("jobs")
            .is_empty()
    );
}

async fn same_batch_key_deps_resolve_both_ways(t: TestStore) {
    let s = &*t.store;
    // "first" depends on a key defined later in the batch; "third" on an earlier one.
    let ids = submit(
        s,
        vec![
            job("first").key("first").dep_key("second"),
            job("second").key("second"),
            job("third").dep_key("first"),
        ],
    )
    .await;
    assert_eq!(s.job(ids[0]).await.expect("first").deps, vec![ids[1]]);
    assert_eq!(s.job(ids[2]).await.expect("third").deps, vec![ids[0]]);
    assert_eq!(s.job(ids[0]).await.expect("first").state, JobState::Blocked);
    // A later batch can name the keys of earlier ones, and a number-like key that
    // matches no key is taken as a job id.
    let more = submit(
        s,
        vec![
            job("fourth").dep_key("second"),
            job("fifth").dep_key(&ids[1].to_string()),
        ],
    )
    .await;
    assert_eq!(s.job(more[0]).await.expect("fourth").deps, vec![ids[1]]);
    assert_eq!(s.job(more[1]).await.expect("fifth").deps, vec![ids[1]]);
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    assert_eq!(c.job.id, ids[1]);
    finish(s, &c, Outcome::Succeeded).await;
    let mut next = drain(s, f).await;
    next.sort();
    assert_eq!(next, vec![ids[0], more[0], more[1]]);
}

/// Issue 15: a list of ten jobs with 14 MB bodies was 210 MB. Lists leave bodies out;
/// one job keeps its body whole.
async fn issue15_lists_leave_bodies_out_and_one_job_keeps_its_body(t: TestStore) {
    let s = &*t.store;
    let mut big = job("big").0;
    big.spec.body = "instructions \"quoted\" and long\n".repeat(1000);
    let body = big.spec.body.clone();
    let ids = s.submit(vec![big, job("small").0]).await.expect("submit");
    for filter in [
        JobFilter::default(),
        JobFilter {
            state: Some(JobState::Queued),
            limit: Some(10),
            before: None,
        },
    ] {
        let listed = s.jobs(&filter).await.expect("jobs");
        assert_eq!(listed.len(), 2, "{filter:?}");
        for j in &listed {
            assert_eq!(j.spec.body, "", "a listed job has no body: {filter:?}");
            assert!(
                j.title.starts_with("job "),
                "the rest of the spec is there: {j:?}"
            );
        }
    }
    assert_eq!(s.job(ids[0].id).await.expect("job").spec.body, body);
}

/// Issue 10: a cursor pages through a list, with or without a state filter.
async fn issue10_a_cursor_pages_through_the_jobs(t: TestStore) {
    let s = &*t.store;
    let ids: Vec<JobId> = s
        .submit((0..7).map(|i| job(&format!("p{i}")).0).collect())
        .await
        .expect("submit")
        .into_iter()
        .map(|j| j.id)
        .collect();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .jobs(&JobFilter {
                limit: Some(3),
                before,
                ..JobFilter::default()
            })
            .await
            .expect("page");
        seen.extend(page.iter().map(|j| j.id));
        match page.last() {
            Some(last) if page.len() == 3 => before = Some(last.id),
            _ => break,
        }
    }
    seen.reverse();
    assert_eq!(seen, ids, "every job once, newest first");
    let queued = s
        .jobs(&JobFilter {
            state: Some(JobState::Queued),
            limit: Some(10),
            before: Some(ids[2]),
        })
        .await
        .expect("filtered");
    assert_eq!(
        queued.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );
}

async fn idempotency_key_returns_the_existing_job(t: TestStore) {
    let s = &*t.store;
    let first = s.submit(vec![job("a").key("k").0]).await.expect("submit");
    assert!(!first[0].existing);
    let again = s
        .submit(vec![
            job("a").key("k").0,
            job("new").key("n").0,
            job("new").key("n").0,
        ])
        .await
        .expect("submit");
    assert_eq!(again[0].id, first[0].id);
    assert!(again[0].existing);
    assert!(!again[1].existing);
    assert_eq!(again[2].id, again[1].id);
    assert!(again[2].existing);
    assert_eq!(s.jobs(&JobFilter::default()).await.expect("jobs").len(), 2);
    let j = s.job(first[0].id).await.expect("job");
    assert_eq!(j.title, "job a");
    assert_eq!(j.idempotency_key.as_deref(), Some("k"));
    assert_eq!(
        kinds_of(s, first[0].id).await,
        vec!["job.submitted"],
        "nothing recorded for the repeat"
    );
}

/// Issue 15: a key reused with other content is a conflict naming the key and the job,
/// and the batch stores nothing; keys are per submitting token.
async fn issue15_idempotency_keys_are_per_token_and_conflict_on_new_content(t: TestStore) {
    let s = &*t.store;
    let alice = s
        .create_token("alice", Scope::Submitter, "ha")
        .await
        .expect("create");
    let bob = s
        .create_token("bob", Scope::Submitter, "hb")
        .await
        .expect("create");
    let first = s
        .submit_as(vec![job("a").key("k").0], Some(alice.id))
        .await
        .expect("submit");
    let a = first[0].id;

    // The same token, the same key, other content: refused, naming the key and job.
    let err = s
        .submit_as(
            vec![job("other").0, job("a").key("k").priority(9).0],
            Some(alice.id),
        )
        .await
        .expect_err("a key reused with other content is a conflict");
    match &err {
        StoreError::IdempotencyConflict { file, key, job, .. } => {
            assert_eq!((file.as_str(), key.as_str(), *job), ("a", "k", Some(a)));
        }
        other => panic!("expected an idempotency conflict, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("job {a}")), "{err}");
    assert_eq!(
        s.jobs(&JobFilter::default()).await.expect("jobs").len(),
        1,
        "the refused batch stored nothing"
    );
    assert_eq!(
        s.job(a).await.expect("job").priority,
        5,
        "the job is unchanged"
    );

    // Two files of one batch with one key and different content: refused too.
    let err = s
        .submit_as(
            vec![job("b").key("m").0, job("c").key("m").0],
            Some(alice.id),
        )
        .await
        .expect_err("one key, two contents in a batch");
    assert!(
        matches!(&err, StoreError::IdempotencyConflict { job: None, .. }),
        "{err:?}"
    );

    // The same content again: the existing job.
    let again = s
        .submit_as(vec![job("a").key("k").0], Some(alice.id))
        .await
        .expect("resubmit");
    assert_eq!((again[0].id, again[0].existing), (a, true));

    // Another token's key is not seen: bob's job of the same key is a job of his own,
    // whatever its content, and his deps by key resolve to his jobs.
    let bobs = s
        .submit_as(vec![job("a").key("k").priority(9).0], Some(bob.id))
        .await
        .expect("bob submits");
    assert!(!bobs[0].existing);
    assert_ne!(bobs[0].id, a);
    let dep = s
        .submit_as(vec![job("d").dep_key("k").0], Some(bob.id))
        .await
        .expect("dep by key");
    assert_eq!(s.job(dep[0].id).await.expect("job").deps, vec![bobs[0].id]);
    let again = s
        .submit_as(vec![job("a").key("k").priority(9).0], Some(bob.id))
        .await
        .expect("bob resubmits");
    assert_eq!((again[0].id, again[0].existing), (bobs[0].id, true));
    // And no token's keys are their own as well.
    let none = s.submit(vec![job("a").key("k").0]).await.expect("no token");
    assert!(!none[0].existing);
    assert_eq!(s.jobs(&JobFilter::default()).await.expect("jobs").len(), 4);
}

async fn lock_exclusion_under_concurrent_claims(t: TestStore) {
    let s = t.store.clone();
    let mut batch = Vec::new();
    for i in 0..36 {
        let j = job(&format!("j{i}"));
        batch.push(match i % 4 {
            0 => j.lock("alpha"),
            1 => j.lock("beta"),
            2 => j.lock("gamma"),
            _ => j,
        });
    }
    submit(&*s, batch).await;
    let held: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        let held = held.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let f = factory(&*s, &format!("w{w}"), &[]).await;
            let mut idle = 0;
            while idle < 50 {
                let Some(c) = s.claim(f, LONG).await.expect("claim") else {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                };
                idle = 0;
                let lock = c.job.spec.lock.clone();
                if let Some(l) = &lock {
                    assert!(
                        held.lock().expect("lock").insert(l.clone()),
                        "lock {l} claimed twice"
                    );
                }
                let running = s
                    .jobs(&JobFilter {
                        state: Some(JobState::Running),
                        limit: None,
                        ..JobFilter::default()
                    })
                    .await
                    .expect("jobs");
                let locks: Vec<_> = running.iter().filter_map(|j| j.lock.clone()).collect();
                let unique: HashSet<_> = locks.iter().collect();
                assert_eq!(
                    unique.len(),
                    locks.len(),
                    "two running jobs share a lock: {locks:?}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
                // Release our record before the store releases the lock.
                if let Some(l) = &lock {
                    held.lock().expect("lock").remove(l);
                }
                finish(&*s, &c, Outcome::Succeeded).await;
                done.lock().expect("done").push(c.job.id);
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("no hang")
            .expect("worker");
    }
    let done = done.lock().expect("done").clone();
    assert_eq!(done.len(), 36);
    assert_eq!(
        done.iter().collect::<HashSet<_>>().len(),
        36,
        "no job claimed twice"
    );
}

async fn capability_matching(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("docker").caps(&["docker"]).priority(9),
            job("gpu").caps(&["gpu=a100"]).priority(9),
            job("plain").priority(1),
        ],
    )
    .await;
    let bare = factory(s, "bare", &[]).await;
    let wrong_gpu = factory(s, "h100", &["docker=24", "gpu=h100"]).await;
    let a100 = factory(s, "a100", &["gpu=a100", "gpu"]).await;
    assert_eq!(
        claim(s, bare).await.job.id,
        ids[2],
        "bare gets only the plain job"
    );
    assert!(s.claim(bare, LONG).await.expect("claim").is_none());
    assert_eq!(
        claim(s, wrong_gpu).await.job.id,
        ids[0],
        "docker=24 satisfies docker"
    );
    assert!(s.claim(wrong_gpu, LONG).await.expect("claim").is_none());
    assert_eq!(claim(s, a100).await.job.id, ids[1]);
}

async fn issue10_queue_depth_counts_queued_jobs_by_capability_set(t: TestStore) {
    let s = &*t.store;
    assert!(
        s.queue_depth().await.expect("queue depth").is_empty(),
        "an empty store has no queued set"
    );
    let ids = submit(
        s,
        vec![
            job("gpu-docker").caps(&["gpu", "docker"]),
            job("docker-gpu-gpu").caps(&["docker", "gpu", "gpu"]),
            job("docker").caps(&["docker"]),
            job("plain-1"),
            job("plain-2").key("plain-2"),
            job("blocked").caps(&["blocked"]).dep_key("plain-2"),
            job("canceled").caps(&["canceled"]),
            job("running").caps(&["running"]).priority(9),
        ],
    )
    .await;
    s.cancel(ids[6]).await.expect("cancel");
    let f = factory(s, "runner", &["running"]).await;
    assert_eq!(claim(s, f).await.job.id, ids[7]);
    let depth = s.queue_depth().await.expect("queue depth");
    assert_eq!(
        depth.into_iter().collect::<Vec<_>>(),
        vec![
            (String::new(), 2),
            ("docker".to_string(), 1),
            ("docker,gpu".to_string(), 2),
        ],
        "only queued jobs count, and lists of one set in any order or repetition are one"
    );
}

async fn stale_writes_after_expiry_and_reclaim_are_refused_and_recorded(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f1 = factory(s, "f1", &[]).await;
    let f2 = factory(s, "f2", &[]).await;
    let old = s
        .claim(f1, Duration::from_millis(400))
        .await
        .expect("claim")
        .expect("claimable");
    assert!(s.reap().await.expect("reap").is_empty(), "not expired yet");
    t.pass(Duration::from_millis(450)).await;
    assert_eq!(s.reap().await.expect("reap"), vec![old.run.id]);
    let lost = s.run(old.run.id).await.expect("run");
    assert_eq!(lost.outcome, Some(Outcome::Lost));
    let j = s.job(id).await.expect("job");
    assert_eq!(j.state, JobState::Queued);
    assert!(j.not_before.is_some(), "retried with backoff");
    // Let it be claimable again without waiting for the backoff.
    s.cancel(id).await.expect("cancel");
    s.retry(id).await.expect("retry");
    let new = claim(s, f2).await;
    assert_eq!(new.job.id, id);
    assert_eq!((new.run.attempt, new.run.epoch), (2, 2));

    let err = s
        .renew(old.run.id, old.run.epoch, LONG)
        .await
        .expect_err("stale renew");
    assert_stale(err, id, 1, 2);
    let err = s
        .append_events(
            old.run.id,
            old.run.epoch,
            vec![NewEvent {
                kind: "run.output".into(),
                data: json!({"stream": "stdout", "text": "late"}),
            }],
        )
        .await
        .expect_err("stale events");
    assert_stale(err, id, 1, 2);
    let err = s
        .finish(old.run.id, report(&old, Outcome::Succeeded))
        .await
        .expect_err("stale finish");
    assert_stale(err, id, 1, 2);
    // The right epoch on the wrong run is stale too.
    let err = s.renew(old.run.id, 2, LONG).await.expect_err("wrong run");
    assert_stale(err, id, 2, 2);

    let events = events_of(s, id).await;
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "lease.stale_write_rejected")
        .map(|e| {
            (
                e.data["op"].as_str().unwrap_or("").to_string(),
                e.data["epoch"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            ("renew".to_string(), json!(1)),
            ("events".to_string(), json!(1)),
            ("finish".to_string(), json!(1)),
            ("renew".to_string(), json!(2)),
        ]
    );
    let stale = events
        .iter()
        .find(|e| e.kind == "lease.stale_write_rejected")
        .expect("event");
    assert_eq!(stale.data["current_epoch"], json!(2));
    assert_eq!(stale.data["run"], json!(old.run.id.0));
    assert!(
        events.iter().all(|e| e.kind != "run.output"),
        "nothing of the stale upload"
    );
    assert_eq!(
        events.iter().filter(|e| e.kind == "lease.expired").count(),
        1
    );

    // The new run is unaffected.
    let j = s.job(id).await.expect("job");
    assert_eq!((j.state, j.epoch), (JobState::Running, 2));
    assert_eq!(
        s.run(old.run.id).await.expect("run").outcome,
        Some(Outcome::Lost)
    );
    let renewed = s.renew(new.run.id, 2, LONG).await.expect("renew");
    assert_eq!(renewed.stop, None);
    s.append_events(
        new.run.id,
        2,
        vec![NewEvent {
            kind: "run.output".into(),
            data: json!({"stream": "stdout", "text": "hi"}),
        }],
    )
    .await
    .expect("events");
    let done = finish(s, &new, Outcome::Succeeded).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert!(done.finished_at.is_some());
}

async fn failed_attempts_retry_with_backoff_until_max_attempts(t: TestStore) {
    let s = &*t.store;
    let id = submit1(
        s,
        job("a")
            .attempts(2)
            .retry_on(&[Outcome::Failed])
            .backoff_ms(1000),
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c1 = claim(s, f).await;
    let before = gantry_core::time::now_millis();
    let j = finish(s, &c1, Outcome::Failed).await;
    let after = gantry_core::time::now_millis();
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.attempt, 1);
    let nb = j.not_before.expect("backoff");
    assert!(
        nb >= before + 800 && nb <= after + 1200,
        "not_before {nb} is 1000 ms ±20% after {before}..{after}"
    );
    // Claim until the retry comes due. Every answer is checked, whatever the machine's
    // speed: a refusal is right while the clock is before not_before, and a claim must
    // not be answered before it (the store's clock is this machine's, so a grant the
    // store made on time cannot be answered earlier; a few milliseconds allow for the
    // rounding of the database's clock). A store that ignored the backoff would hand
    // out the job on the first ask, a whole backoff too early.
    let deadline = gantry_core::time::now_millis() + 60_000;
    let mut refused = 0;
    let c2 = loop {
        let asked = s.claim(f, LONG).await.expect("claim");
        let answered = gantry_core::time::now_millis();
        if let Some(c) = asked {
            assert!(
                answered + 5 >= nb,
                "claimed at {answered}, {} ms before not_before {nb} ({refused} refusals first)",
                nb - answered
            );
            break c;
        }
        assert!(answered < deadline, "the retry came due");
        refused += 1;
        // Nothing wakes a claimer when a backoff ends (only commits do): poll it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((c2.run.attempt, c2.run.epoch), (2, 2));
    let j = finish(s, &c2, Outcome::Failed).await;
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.reason.as_deref(), Some("attempt 2 failed"));
    let runs = s.runs(id).await.expect("runs");
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .all(|r| r.outcome == Some(Outcome::Failed) && r.exit_code == Some(1))
    );
}

async fn retry_on_decides_which_outcomes_retry(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("default-lost-only"),
            job("timeouts").retry_on(&[Outcome::TimedOut]).backoff_ms(1),
        ],
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    assert_eq!(
        finish(s, &c, Outcome::Failed).await.state,
        JobState::Failed,
        "failed is not retried by default"
    );
    let c = claim(s, f).await;
    assert_eq!(c.job.id, ids[1]);
    let j = finish(s, &c, Outcome::TimedOut).await;
    assert_eq!(j.state, JobState::Queued);
    assert!(
        j.reason.as_deref().unwrap_or("").contains("timed_out"),
        "{:?}",
        j.reason
    );
}

async fn finish_records_the_report(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let err = s
        .finish(
            c.run.id,
            FinishReport {
                epoch: 1,
                ..FinishReport::default()
            },
        )
        .await
        .expect_err("no outcome");
    assert!(err.to_string().contains("outcome"), "{err}");
    assert_eq!(
        s.job(id).await.expect("job").state,
        JobState::Running,
        "nothing applied"
    );
    let rep = FinishReport {
        epoch: 1,
        outcome: Some(Outcome::Succeeded),
        exit_code: Some(0),
        error: None,
        branch: Some(format!("gantry/{id}/a1")),
        base_commit: Some("abc".into()),
        commit: Some("def".into()),
        files_changed: Some(2),
        lines_added: Some(10),
        lines_deleted: Some(3),
        insights: None,
        diff: None,
        result_ref: None,
    };
    let j = s.finish(c.run.id, rep).await.expect("finish");
    assert_eq!(j.state, JobState::Succeeded);
    let r = s.run(c.run.id).await.expect("run");
    assert_eq!(r.outcome, Some(Outcome::Succeeded));
    assert_eq!(
        r.branch.as_deref(),
        Some(format!("gantry/{id}/a1").as_str())
    );
    assert_eq!(
        (r.base_commit.as_deref(), r.commit.as_deref()),
        (Some("abc"), Some("def"))
    );
    assert_eq!(
        (r.files_changed, r.lines_added, r.lines_deleted),
        (Some(2), Some(10), Some(3))
    );
    assert!(r.finished_at.is_some());
    let fin = events_of(s, id)
        .await
        .into_iter()
        .find(|e| e.kind == "run.finished")
        .expect("event");
    assert_eq!(fin.data["outcome"], json!("succeeded"));
    assert_eq!(fin.data["lines_added"], json!(10));
    assert_eq!(fin.run_id, Some(c.run.id));
}

async fn cancel_and_kill_queued_jobs_at_once(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![job("a"), job("b"), job("c").key("c"), job("d").dep_key("c")],
    )
    .await;
    let j = s.cancel(ids[0]).await.expect("cancel");
    assert_eq!(j.state, JobState::Canceled);
    assert_eq!(j.reason.as_deref(), Some("canceled on request"));
    let j = s.kill(ids[1]).await.expect("kill");
    assert_eq!(j.state, JobState::Killed);
    // Killing a dependency cancels its dependents.
    s.kill(ids[2]).await.expect("kill");
    let d = s.job(ids[3]).await.expect("d");
    assert_eq!(d.state, JobState::Canceled);
    assert_eq!(
        d.reason.as_deref(),
        Some(format!("dependency {} killed", ids[2]).as_str())
    );
    let err = s.cancel(ids[0]).await.expect_err("already canceled");
    assert!(
        matches!(
            err,
            StoreError::WrongState {
                state: JobState::Canceled,
                action: "cancel",
                ..
            }
        ),
        "{err:?}"
    );
    let f = factory(s, "f", &[]).await;
    assert!(s.claim(f, LONG).await.expect("claim").is_none());
}

async fn cancel_and_kill_running_jobs_through_their_factory(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b")]).await;
    let f = factory(s, "f", &[]).await;
    let ca = claim(s, f).await;
    let cb = claim(s, f).await;

    let j = s.cancel(ids[0]).await.expect("cancel");
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.stop_requested, Some(StopKind::Cancel));
    assert_eq!(
        s.renew(ca.run.id, ca.run.epoch, LONG)
            .await
            .expect("renew")
            .stop,
        Some(StopKind::Cancel)
    );
    assert!(
        kinds_of(s, ids[0])
            .await
            .contains(&"job.cancel_requested".to_string())
    );
    let j = finish(s, &ca, Outcome::Canceled).await;
    assert_eq!(j.state, JobState::Canceled);
    assert_eq!(j.stop_requested, None);

    s.cancel(ids[1]).await.expect("cancel");
    let j = s.kill(ids[1]).await.expect("kill");
    assert_eq!(j.stop_requested, Some(StopKind::Kill));
    let j = s.cancel(ids[1]).await.expect("cancel after kill");
    assert_eq!(
        j.stop_requested,
        Some(StopKind::Kill),
        "a kill is not weakened"
    );
    assert_eq!(
        s.renew(cb.run.id, cb.run.epoch, LONG)
            .await
            .expect("renew")
            .stop,
        Some(StopKind::Kill)
    );
    assert!(
        kinds_of(s, ids[1])
            .await
            .contains(&"job.kill_requested".to_string())
    );
    // A stop request wins over the retry policy, whatever the run reports.
    let j = finish(s, &cb, Outcome::Lost).await;
    assert_eq!(j.state, JobState::Killed);
}

async fn kill_all_pauses_and_asks_every_running_job_to_die(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b"), job("c")]).await;
    let f = factory(s, "f", &[]).await;
    let ca = claim(s, f).await;
    let cb = claim(s, f).await;
    let mut asked = s.kill_all().await.expect("kill all");
    asked.sort();
    assert_eq!(asked, vec![ids[0], ids[1]]);
    assert!(s.status().await.expect("status").paused);
    assert!(s.claim(f, LONG).await.expect("claim").is_none(), "paused");
    for c in [&ca, &cb] {
        assert_eq!(
            s.renew(c.run.id, c.run.epoch, LONG)
                .await
                .expect("renew")
                .stop,
            Some(StopKind::Kill)
        );
        assert_eq!(finish(s, c, Outcome::Killed).await.state, JobState::Killed);
    }
    s.set_paused(false).await.expect("resume");
    assert_eq!(claim(s, f).await.job.id, ids[2]);
    let queue: Vec<_> = s
        .events(0, None, 1000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.job_id.is_none())
        .map(|e| (e.kind, e.seq))
        .collect();
    assert_eq!(
        queue,
        vec![
            ("queue.paused".to_string(), 0),
            ("queue.resumed".to_string(), 0)
        ]
    );
}

async fn status_counts_jobs_by_state(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a").key("a"), job("b").dep_key("a"), job("c")]).await;
    s.cancel(ids[2]).await.expect("cancel");
    let st = s.status().await.expect("status");
    assert!(!st.paused);
    assert_eq!(st.jobs["queued"], 1);
    assert_eq!(st.jobs["blocked"], 1);
    assert_eq!(st.jobs["canceled"], 1);
    assert_eq!(st.jobs["running"], 0);
    assert_eq!(st.jobs["checking"], 0);
    assert_eq!(st.jobs.len(), 8);
    let canceled = s
        .jobs(&JobFilter {
            state: Some(JobState::Canceled),
            limit: None,
            ..JobFilter::default()
        })
        .await
        .expect("jobs");
    assert_eq!(
        canceled.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2]]
    );
    let newest = s
        .jobs(&JobFilter {
            state: None,
            limit: Some(2),
            ..JobFilter::default()
        })
        .await
        .expect("jobs");
    assert_eq!(
        newest.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
}

async fn manual_retry_of_finished_jobs(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("a").key("a").attempts(1),
            job("b").key("b"),
            job("c").dep_key("b"),
        ],
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    finish(s, &c, Outcome::Failed).await;
    let err = s.retry(ids[1]).await.expect_err("queued");
    assert!(matches!(
        err,
        StoreError::WrongState {
            action: "retry",
            state: JobState::Queued,
            ..
        }
    ));
    let j = s.retry(ids[0]).await.expect("retry");
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.max_attempts, 2);
    assert_eq!(j.finished_at, None);
    let c = claim(s, f).await;
    assert_eq!((c.job.id, c.run.attempt), (ids[0], 2));
    finish(s, &c, Outcome::Succeeded).await;
    // A dependent canceled by its dep's failure waits for the dep when retried.
    let b = claim(s, f).await;
    assert_eq!(b.job.id, ids[1]);
    s.kill(ids[1]).await.expect("kill");
    finish(s, &b, Outcome::Killed).await;
    assert_eq!(s.job(ids[2]).await.expect("c").state, JobState::Canceled);
    s.retry(ids[1]).await.expect("retry b");
    let j = s.retry(ids[2]).await.expect("retry c");
    assert_eq!(j.state, JobState::Blocked);
    let b = claim(s, f).await;
    finish(s, &b, Outcome::Succeeded).await;
    assert_eq!(s.job(ids[2]).await.expect("c").state, JobState::Queued);
}

async fn reap_is_idempotent_under_concurrent_reapers(t: TestStore) {
    let s = t.store.clone();
    let ids = submit(&*s, (0..6).map(|i| job(&format!("j{i}"))).collect()).await;
    let f = factory(&*s, "f", &[]).await;
    let mut runs = BTreeSet::new();
    for _ in 0..6 {
        let c = s
            .claim(f, Duration::from_millis(10))
            .await
            .expect("claim")
            .expect("claimable");
        runs.insert(c.run.id);
    }
    t.pass(Duration::from_millis(60)).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.reap().await.expect("reap") }));
    }
    let mut reaped = Vec::new();
    for task in tasks {
        reaped.extend(task.await.expect("reaper"));
    }
    assert_eq!(reaped.len(), 6, "each run reaped exactly once: {reaped:?}");
    assert_eq!(reaped.into_iter().collect::<BTreeSet<_>>(), runs);
    assert!(s.reap().await.expect("reap").is_empty());
    for id in ids {
        let j = s.job(id).await.expect("job");
        assert_eq!((j.state, j.attempt), (JobState::Queued, 1));
        assert_eq!(
            kinds_of(&*s, id)
                .await
                .iter()
                .filter(|k| *k == "lease.expired")
                .count(),
            1
        );
    }
}

async fn reaping_a_job_with_a_stop_request_ends_it_as_requested(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b"), job("c").attempts(1)]).await;
    let f = factory(s, "f", &[]).await;
    for _ in 0..3 {
        s.claim(f, Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("claimable");
    }
    s.cancel(ids[0]).await.expect("cancel");
    s.kill(ids[1]).await.expect("kill");
    let mut expired = s.expire_leases_of(f).await.expect("expire");
    expired.sort();
    assert_eq!(expired.len(), 3);
    assert_eq!(s.reap().await.expect("reap").len(), 3);
    assert_eq!(s.job(ids[0]).await.expect("a").state, JobState::Canceled);
    assert_eq!(s.job(ids[1]).await.expect("b").state, JobState::Killed);
    let c = s.job(ids[2]).await.expect("c");
    assert_eq!(c.state, JobState::Failed, "lost with no attempts left");
    assert_eq!(c.reason.as_deref(), Some("attempt 1 lost"));
}

async fn expire_leases_of_touches_only_that_factory(t: TestStore) {
    let s = &*t.store;
    submit(s, vec![job("a"), job("b")]).await;
    let f1 = factory(s, "f1", &[]).await;
    let f2 = factory(s, "f2", &[]).await;
    let c1 = claim(s, f1).await;
    let c2 = claim(s, f2).await;
    assert_eq!(
        s.expire_leases_of(f1).await.expect("expire"),
        vec![c1.run.id]
    );
    assert_eq!(s.reap().await.expect("reap"), vec![c1.run.id]);
    assert!(s.renew(c2.run.id, c2.run.epoch, LONG).await.is_ok());
}

async fn factories_register_by_name(t: TestStore) {
    let s = &*t.store;
    let a = factory(s, "host-a", &["docker"]).await;
    let b = factory(s, "host-b", &[]).await;
    assert_ne!(a, b);
    let again = s
        .register_factory(&gantry_core::api::RegisterFactory {
            name: "host-a".into(),
            seats: 9,
            capabilities: vec!["gpu".into()],
        })
        .await
        .expect("register");
    assert_eq!(again, a);
    let list = s.factories().await.expect("factories");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, a);
    assert_eq!(
        (list[0].seats, list[0].capabilities.clone()),
        (9, vec!["gpu".to_string()])
    );
}

async fn tokens(t: TestStore) {
    let s = &*t.store;
    let admin = s
        .create_token("admin", Scope::Admin, "h1")
        .await
        .expect("create");
    assert_eq!(
        (admin.name.as_str(), admin.scope, admin.revoked_at),
        ("admin", Scope::Admin, None)
    );
    s.create_token("ci", Scope::Factory, "h2")
        .await
        .expect("create");
    let err = s
        .create_token("admin", Scope::Reader, "h3")
        .await
        .expect_err("dup name");
    assert!(
        matches!(&err, StoreError::Exists { what: "token", name } if name == "admin"),
        "{err:?}"
    );
    let err = s
        .create_token("other", Scope::Reader, "h1")
        .await
        .expect_err("dup hash");
    assert!(matches!(err, StoreError::Exists { .. }), "{err:?}");
    assert_eq!(
        s.token_by_hash("h1").await.expect("lookup"),
        Some(admin.clone())
    );
    assert_eq!(s.token_by_hash("nope").await.expect("lookup"), None);
    let revoked = s.revoke_token("admin").await.expect("revoke");
    assert!(revoked.revoked_at.is_some());
    assert_eq!(s.token_by_hash("h1").await.expect("lookup"), None);
    let all = s.tokens().await.expect("tokens");
    assert_eq!(
        all.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        vec!["admin", "ci"]
    );
    assert!(all[0].revoked_at.is_some());
    let err = s.revoke_token("ghost").await.expect_err("unknown");
    assert!(matches!(&err, StoreError::NotFound { what: "token", id } if id == "ghost"));
}

async fn events_page_globally_and_count_per_job(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b")]).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    s.append_events(
        c.run.id,
        c.run.epoch,
        (0..3)
            .map(|i| NewEvent {
                kind: "run.output".into(),
                data: json!({"text": format!("line {i}")}),
            })
            .collect(),
    )
    .await
    .expect("events");
    let server = s
        .record_event(
            Some(ids[1]),
            None,
            NewEvent {
                kind: "delivery.pushed".into(),
                data: json!({"x": 1}),
            },
        )
        .await
        .expect("record");
    assert_eq!((server.seq, server.job_id), (2, Some(ids[1])));
    let global = s
        .record_event(
            None,
            None,
            NewEvent {
                kind: "note".into(),
                data: json!({}),
            },
        )
        .await
        .expect("record");
    assert_eq!(global.seq, 0);
    let err = s
        .record_event(
            Some(ids[1]),
            Some(c.run.id),
            NewEvent {
                kind: "x".into(),
                data: json!({}),
            },
        )
        .await
        .expect_err("run of another job");
    assert!(
        matches!(err, StoreError::NotFound { what: "run", .. }),
        "{err:?}"
    );
    let err = s
        .record_event(
            Some(JobId(999)),
            None,
            NewEvent {
                kind: "x".into(),
                data: json!({}),
            },
        )
        .await
        .expect_err("unknown job");
    assert!(
        matches!(err, StoreError::NotFound { what: "job", .. }),
        "{err:?}"
    );

    let a = events_of(s, ids[0]).await;
    assert_eq!(
        a.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=a.len() as i64).collect::<Vec<_>>()
    );
    let outputs: Vec<_> = a.iter().filter(|e| e.kind == "run.output").collect();
    assert_eq!(outputs.len(), 3);
    assert!(outputs.iter().all(|e| e.run_id == Some(c.run.id)));
    assert_eq!(outputs[2].data["text"], json!("line 2"));

    let all = s.events(0, None, 1000).await.expect("all");
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s.events(after, None, 3).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().expect("non-empty").id;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let a_after = s.events(a[1].id, Some(ids[0]), 2).await.expect("page");
    assert_eq!(a_after, a[2..4].to_vec());
    assert!(all.last().expect("events").at >= all[0].at);
}

async fn changes_are_signaled_after_writes(t: TestStore) {
    let s = &*t.store;
    let mut rx = s.changes();
    let seen = *rx.borrow_and_update();
    submit1(s, job("a")).await;
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("signaled in time")
        .expect("sender alive");
    assert!(*rx.borrow_and_update() > seen);
}

async fn concurrent_writes_stay_isolated_when_some_fail(t: TestStore) {
    let s = t.store.clone();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let good = job(&format!("good{i}.md")).key(&format!("good{i}"));
            if i % 2 == 0 {
                // A batch whose second file is bad: nothing of it may be stored, even
                // though other operations commit alongside it.
                let bad = job(&format!("bad{i}.md")).dep_key("missing");
                s.submit(vec![good.0, bad.0]).await.map(|_| false)
            } else {
                s.submit(vec![good.0]).await.map(|_| true)
            }
        }));
    }
    let mut stored = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.expect("task") {
            Ok(true) => stored += 1,
            Err(StoreError::Invalid(e)) => assert_eq!(e.file, format!("bad{i}.md")),
            other => panic!("batch {i}: {other:?}"),
        }
    }
    assert_eq!(stored, 20);
    let jobs = s.jobs(&JobFilter::default()).await.expect("jobs");
    assert_eq!(jobs.len(), 20);
    assert!(jobs.iter().all(|j| {
        let n: usize = j.idempotency_key.as_deref().unwrap_or("")["good".len()..]
            .parse()
            .expect("number");
        n % 2 == 1
    }));
    let events = s.events(0, None, 1000).await.expect("events");
    assert_eq!(
        events.len(),
        20,
        "one job.submitted per stored job, none for refused batches"
    );
}

async fn the_queue_benchmark_burns_everything_down(t: TestStore) {
    let report = gantry_store::bench::queue(t.store.clone(), 300, 4)
        .await
        .expect("bench");
    assert_eq!((report.jobs, report.workers), (300, 4));
    assert!(report.jobs_per_s > 0.0);
    assert!(report.p50_claim_ms <= report.p99_claim_ms);
    let st = t.store.status().await.expect("status");
    assert_eq!(st.jobs["succeeded"], 300);
    assert_eq!(st.jobs["queued"] + st.jobs["running"], 0);
    let text = report.to_string();
    let last = text.lines().last().expect("a line");
    let keys: Vec<&str> = last
        .split(' ')
        .map(|kv| kv.split_once('=').expect("key=value").0)
        .collect();
    assert_eq!(keys, vec!["jobs_per_s", "p50_claim_ms", "p99_claim_ms"]);
    for kv in last.split(' ') {
        let v: f64 = kv
            .split_once('=')
            .expect("key=value")
            .1
            .parse()
            .expect("a number");
        assert!(v >= 0.0);
    }
}

async fn issue4_a_reported_diff_is_kept_with_its_run_and_a_stale_one_is_not(t: TestStore) {
    let s = &*t.store;
    let f = factory(s, "f", &[]).await;
    let ids = submit(s, vec![job("a").attempts(2).backoff_ms(0), job("b")]).await;
    let first = claim(s, f).await;
    assert_eq!(first.job.id, ids[0]);
    assert_eq!(s.run_diff(first.run.id).await.expect("diff"), None);
    // The lease expires and the job runs again; the first attempt's late finish, diff
    // and all, is refused and stores nothing.
    s.expire_leases_of(f).await.expect("expire");
    s.reap().await.expect("reap");
    let second = claim(s, f).await;
    assert_eq!(second.job.id, ids[0]);
    let patch = "diff --git a/x b/x\n+caf\u{e9} \u{1f600}\n".to_string();
    let stale = s
        .finish(
            first.run.id,
            FinishReport {
                epoch: first.run.epoch,
                outcome: Some(Outcome::Succeeded),
                diff: Some("stale diff".into()),
                ..FinishReport::default()
            },
        )
        .await
        .expect_err("stale");
    assert!(matches!(stale, StoreError::StaleLease { .. }), "{stale:?}");
    assert_eq!(s.run_diff(first.run.id).await.expect("diff"), None);
    s.finish(
        second.run.id,
        FinishReport {
            epoch: second.run.epoch,
            outcome: Some(Outcome::Succeeded),
            diff: Some(patch.clone()),
            ..FinishReport::default()
        },
    )
    .await
    .expect("finish");
    assert_eq!(s.run_diff(second.run.id).await.expect("diff"), Some(patch));
    // A run without a diff, and a run that does not exist.
    let other = claim(s, f).await;
    finish(s, &other, Outcome::Failed).await;
    assert_eq!(s.run_diff(other.run.id).await.expect("diff"), None);
    let err = s
        .run_diff(gantry_core::RunId(9999))
        .await
        .expect_err("no such run");
    assert!(
        matches!(&err, StoreError::NotFound { what: "run", .. }),
        "{err:?}"
    );
}

async fn finish_returns_the_job_as_stored(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("ok").key("ok"),
            job("retried").retry_on(&[Outcome::Failed]),
            job("last").attempts(1).retry_on(&[Outcome::Failed]),
            job("canceled"),
            job("killed"),
            job("dependent").dep_key("ok"),
        ],
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let claims: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(claim(s, f).await);
        }
        v
    };
    s.cancel(ids[3]).await.expect("cancel");
    s.kill(ids[4]).await.expect("kill");
    let cases = [
        (0, Outcome::Succeeded, JobState::Succeeded),
        (1, Outcome::Failed, JobState::Queued),
        (2, Outcome::Failed, JobState::Failed),
        (3, Outcome::Canceled, JobState::Canceled),
        (4, Outcome::Succeeded, JobState::Succeeded),
    ];
    for (i, outcome, state) in cases {
        assert_eq!(claims[i].job.id, ids[i]);
        let returned = finish(s, &claims[i], outcome).await;
        assert_eq!(returned.state, state, "job {i}");
        assert_eq!(returned, s.job(ids[i]).await.expect("job"), "job {i}");
    }
    let retried = s.job(ids[1]).await.expect("retried");
    assert!(retried.not_before.is_some() && retried.reason.is_some());
    assert_eq!(retried.stop_requested, None);
    assert_eq!(
        s.job(ids[5]).await.expect("dependent").state,
        JobState::Queued
    );
}

async fn a_jobs_events_page_like_the_global_log_filtered_to_it(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, (0..4).map(|i| job(&format!("j{i}"))).collect()).await;
    let f = factory(s, "f", &[]).await;
    // Interleave the jobs' events, as concurrent work does.
    let a = claim(s, f).await;
    let b = claim(s, f).await;
    for c in [&b, &a, &b] {
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
    }
    s.cancel(ids[3]).await.expect("cancel");
    finish(s, &a, Outcome::Failed).await;
    finish(s, &b, Outcome::Succeeded).await;
    let all = s.events(0, None, 10_000).await.expect("all");
    for &id in &ids {
        let mine: Vec<_> = all
            .iter()
            .filter(|e| e.job_id == Some(id))
            .cloned()
            .collect();
        assert_eq!(mine[0].kind, "job.submitted");
        for after in std::iter::once(0).chain(mine.iter().map(|e| e.id)) {
            for limit in [1, 2, 3, 100] {
                let want: Vec<_> = mine
                    .iter()
                    .filter(|e| e.id > after)
                    .take(limit)
                    .cloned()
                    .collect();
                let got = s.events(after, Some(id), limit).await.expect("page");
                assert_eq!(got, want, "job {id} after {after} limit {limit}");
            }
        }
    }
}

/// Issue 2: an idle `gantry serve` spun at full CPU because a claim that found nothing
/// still signalled a change, waking every long-polling claimer to claim again.
async fn issue2_operations_that_change_nothing_do_not_signal_changes(t: TestStore) {
    let s = &*t.store;
    let f = factory(s, "f", &[]).await;
    let mut changes = s.changes();
    changes.borrow_and_update();
    for _ in 0..3 {
        assert!(
            s.claim(f, Duration::from_secs(30))
                .await
                .expect("claim")
                .is_none()
        );
        assert!(s.reap().await.expect("reap").is_empty());
    }
    assert!(
        !changes.has_changed().expect("store alive"),
        "an empty claim or reap must not wake waiters"
    );
    // A real change still wakes them.
    submit1(s, job("a")).await;
    assert!(
        changes.has_changed().expect("store alive"),
        "a submit must wake waiters"
    );
}

// --- Agents (issue 3): insights, sessions to resume, checkpoints --------------------

fn insights(session: &str, tokens_in: u64, cost: f64) -> gantry_core::engine::Insights {
    gantry_core::engine::Insights {
        model: Some("claude-sonnet-4".into()),
        session_id: Some(session.into()),
        tokens_in,
        tokens_out: 10,
        tokens_cached: 5,
        cost_usd: Some(cost),
        turns: 2,
        tool_calls: 3,
        tool_errors: 1,
        success: Some(false),
        ..Default::default()
    }
}

async fn issue3_insights_snapshots_and_finish_are_kept_on_the_run(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let live = insights("sess-1", 100, 0.5);
    s.append_events(
        c.run.id,
        c.run.epoch,
        vec![NewEvent {
            kind: gantry_core::event::AGENT_INSIGHTS.to_string(),
            data: serde_json::to_value(&live).expect("json"),
        }],
    )
    .await
    .expect("snapshot");
    let r = s.run(c.run.id).await.expect("run");
    assert_eq!(
        r.insights.as_ref(),
        Some(&live),
        "live figures while running"
    );
    assert_eq!(
        s.job(id).await.expect("job").session_id.as_deref(),
        Some("sess-1")
    );

    let last = insights("sess-1", 300, 1.25);
    s.finish(
        c.run.id,
        FinishReport {
            epoch: c.run.epoch,
            outcome: Some(Outcome::Failed),
            exit_code: Some(1),
            insights: Some(last.clone()),
            ..FinishReport::default()
        },
    )
    .await
    .expect("finish");
    assert_eq!(
        s.run(c.run.id).await.expect("run").insights,
        Some(last.clone())
    );
    let finished = s
        .events(0, Some(id), 1000)
        .await
        .expect("events")
        .into_iter()
        .find(|e| e.kind == gantry_core::event::RUN_FINISHED)
        .expect("run.finished");
    assert_eq!(finished.data["insights"]["tokens_in"], json!(300));
}

async fn issue3_a_retry_gets_the_session_and_the_checkpoint(t: TestStore) {
    let s = &*t.store;
    let id = submit1(
        s,
        job("a")
            .attempts(3)
            .retry_on(&[Outcome::Failed])
            .backoff_ms(0),
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    assert_eq!(c.job.resume_session, None);
    assert_eq!(c.job.checkpoint, None);
    let cp =
        json!({"wip_branch": format!("gantry/{id}/wip"), "wip_base": "b0", "wip_commit": "c1"});
    s.append_events(
        c.run.id,
        c.run.epoch,
        vec![NewEvent {
            kind: gantry_core::event::RUN_CHECKPOINT.to_string(),
            data: cp,
        }],
    )
    .await
    .expect("checkpoint");
    let j = s.job(id).await.expect("job");
    let want = gantry_core::api::Checkpoint {
        branch: format!("gantry/{id}/wip"),
        base: "b0".into(),
        commit: "c1".into(),
    };
    assert_eq!(j.checkpoint.as_ref(), Some(&want));
    s.finish(
        c.run.id,
        FinishReport {
            epoch: c.run.epoch,
            outcome: Some(Outcome::Failed),
            exit_code: Some(1),
            insights: Some(insights("sess-9", 1, 0.1)),
            ..FinishReport::default()
        },
    )
    .await
    .expect("finish");
    // The retry is due after its backoff; the helper's jobs back off by 0 ms.
    let again = claim(s, f).await;
    assert_eq!(again.job.id, id);
    assert_eq!(again.job.resume_session.as_deref(), Some("sess-9"));
    assert_eq!(again.job.checkpoint, Some(want));
}

async fn issue3_a_bad_checkpoint_is_refused_and_nothing_is_stored(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let before = s.events(0, Some(id), 1000).await.expect("events").len();
    let err = s
        .append_events(
            c.run.id,
            c.run.epoch,
            vec![
                NewEvent {
                    kind: "run.output".to_string(),
                    data: json!({"text": "hi"}),
                },
                NewEvent {
                    kind: gantry_core::event::RUN_CHECKPOINT.to_string(),
                    data: json!({"wip_branch": "x"}),
                },
            ],
        )
        .await
        .expect_err("a checkpoint without its commit");
    assert!(err.to_string().contains("wip_commit"), "{err}");
    let j = s.job(id).await.expect("job");
    assert_eq!(j.checkpoint, None);
    assert_eq!(
        s.events(0, Some(id), 1000).await.expect("events").len(),
        before,
        "the whole upload was refused"
    );
}

async fn issue3_budget_exceeded_fails_the_job_without_retry(t: TestStore) {
    let s = &*t.store;
    let id = submit1(
        s,
        job("a")
            .attempts(3)
            .retry_on(&[Outcome::Failed])
            .backoff_ms(0),
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let j = s
        .finish(
            c.run.id,
            FinishReport {
                epoch: c.run.epoch,
                outcome: Some(Outcome::BudgetExceeded),
                error: Some("budget exceeded: tokens 120 > limit 100".into()),
                ..FinishReport::default()
            },
        )
        .await
        .expect("finish");
    assert_eq!((j.id, j.state), (id, JobState::Failed));
    assert_eq!(j.attempt, 1);
    assert_eq!(
        s.run(c.run.id).await.expect("run").outcome,
        Some(Outcome::BudgetExceeded)
    );
    assert!(
        s.claim(f, Duration::from_secs(30))
            .await
            .expect("claim")
            .is_none()
    );
}

async fn issue4_heartbeats_are_kept_and_running_jobs_counted_per_factory(t: TestStore) {
    let s = &*t.store;
    let f1 = factory(s, "f1", &[]).await;
    let f2 = factory(s, "f2", &[]).await;
    let fresh = s.factories().await.expect("factories");
    assert_eq!(fresh.len(), 2);
    for f in &fresh {
        assert_eq!(f.stats, Heartbeat::default(), "no heartbeat yet");
        assert_eq!(f.running, 0);
        assert!(f.last_seen_ago_ms < 60_000, "{f:?}");
    }

    let hb = Heartbeat {
        load_1m: Some(1.25),
        free_memory_mb: Some(2048),
        free_disk_mb: Some(u64::from(u32::MAX) * 4),
        admission: Some("free memory 12 MiB is below the 512 MiB minimum".into()),
    };
    s.heartbeat(f1, &hb).await.expect("heartbeat");
    let list = s.factories().await.expect("factories");
    assert_eq!((list[0].id, &list[0].stats), (f1, &hb));
    assert!(list[0].last_seen >= fresh[0].last_seen);
    assert_eq!(list[1].stats, Heartbeat::default(), "f2 sent nothing");
    // Registering again under the same name keeps the last figures.
    factory(s, "f1", &[]).await;
    assert_eq!(s.factories().await.expect("factories")[0].stats, hb);
    // Admission open again: the reason is cleared.
    let open = Heartbeat {
        admission: None,
        ..hb.clone()
    };
    s.heartbeat(f1, &open).await.expect("heartbeat");
    assert_eq!(s.factories().await.expect("factories")[0].stats, open);

    let err = s
        .heartbeat(gantry_core::FactoryId(99), &hb)
        .await
        .expect_err("no such factory");
    assert!(
        matches!(&err, StoreError::NotFound { what: "factory", id } if id == "99"),
        "{err:?}"
    );

    submit(s, vec![job("a"), job("b"), job("c"), job("d")]).await;
    let a = claim(s, f1).await;
    let b = claim(s, f1).await;
    let c = claim(s, f2).await;
    let running = |list: Vec<gantry_store::FactoryInfo>| -> Vec<u32> {
        list.iter().map(|f| f.running).collect()
    };
    assert_eq!(running(s.factories().await.expect("factories")), vec![2, 1]);
    finish(s, &a, Outcome::Succeeded).await;
    assert_eq!(running(s.factories().await.expect("factories")), vec![1, 1]);
    // A job whose lease f1 lost and f2 claimed again counts for f2 only: the count
    // follows the job's current run.
    assert_eq!(
        s.expire_leases_of(f1).await.expect("expire"),
        vec![b.run.id]
    );
    assert_eq!(s.reap().await.expect("reap"), vec![b.run.id]);
    assert_eq!(running(s.factories().await.expect("factories")), vec![0, 1]);
    let again = s
        .claim(f2, LONG)
        .await
        .expect("claim")
        .expect("the lost job or the last one");
    assert_ne!(again.job.id, c.job.id);
    assert_eq!(running(s.factories().await.expect("factories")), vec![0, 2]);
}

async fn issue4_a_factory_token_is_bound_to_the_first_factory_it_registers(t: TestStore) {
    let s = &*t.store;
    let reg = |name: &str, seats: u32| RegisterFactory {
        name: name.to_string(),
        seats,
        capabilities: Vec::new(),
    };
    let t1 = s
        .create_token("t1", Scope::Factory, "h1")
        .await
        .expect("create");
    let t2 = s
        .create_token("t2", Scope::Factory, "h2")
        .await
        .expect("create");
    assert_eq!(t1.factory, None, "a new token is bound to nothing");

    let Binding::Bound(a) = s
        .register_factory_for_token(&reg("A", 2), t1.id)
        .await
        .expect("register")
    else {
        panic!("t1 binds to A");
    };
    assert_eq!(
        s.token_by_hash("h1")
            .await
            .expect("lookup")
            .expect("live")
            .factory,
        Some(a)
    );
    // Again under its own name: the same factory, updated.
    assert_eq!(
        s.register_factory_for_token(&reg("A", 3), t1.id)
            .await
            .expect("register"),
        Binding::Bound(a)
    );
    assert_eq!(s.factories().await.expect("factories")[0].seats, 3);

    // Under another name: refused, naming both, and no factory B appears.
    assert_eq!(
        s.register_factory_for_token(&reg("B", 1), t1.id)
            .await
            .expect("register"),
        Binding::TokenTaken {
            token: "t1".into(),
            factory: "A".into()
        }
    );
    // Another token for A: refused while t1 is live, and A is left as it was.
    assert_eq!(
        s.register_factory_for_token(&reg("A", 9), t2.id)
            .await
            .expect("register"),
        Binding::FactoryTaken {
            factory: "A".into(),
            token: "t1".into()
        }
    );
    let list = s.factories().await.expect("factories");
    assert_eq!(
        list.iter()
            .map(|f| (f.name.as_str(), f.seats))
            .collect::<Vec<_>>(),
        vec![("A", 3)]
    );
    assert_eq!(
        s.token_by_hash("h2")
            .await
            .expect("lookup")
            .expect("live")
            .factory,
        None
    );

    // t2 takes a name of its own.
    let Binding::Bound(b) = s
        .register_factory_for_token(&reg("B", 1), t2.id)
        .await
        .expect("register")
    else {
        panic!("t2 binds to B");
    };
    assert_ne!(a, b);

    // Once t1 is revoked, a new token may take A over (a rotated token).
    s.revoke_token("t1").await.expect("revoke");
    let t3 = s
        .create_token("t3", Scope::Factory, "h3")
        .await
        .expect("create");
    assert_eq!(
        s.register_factory_for_token(&reg("A", 3), t3.id)
            .await
            .expect("register"),
        Binding::Bound(a)
    );
    let bindings: Vec<(String, Option<gantry_core::FactoryId>)> = s
        .tokens()
        .await
        .expect("tokens")
        .into_iter()
        .map(|t| (t.name, t.factory))
        .collect();
    assert_eq!(
        bindings,
        vec![
            ("t1".to_string(), Some(a)),
            ("t2".to_string(), Some(b)),
            ("t3".to_string(), Some(a)),
        ]
    );

    let err = s
        .register_factory_for_token(&reg("C", 1), 999)
        .await
        .expect_err("no such token");
    assert!(
        matches!(&err, StoreError::NotFound { what: "token", .. }),
        "{err:?}"
    );
}

/// Issue 15: a factory name belongs to the token that registered it first, admin
/// tokens included, so a factory token cannot take over a factory by its name.
async fn issue15_a_factory_name_belongs_to_the_token_that_registered_it(t: TestStore) {
    let s = &*t.store;
    let reg = |name: &str| RegisterFactory {
        name: name.into(),
        seats: 1,
        capabilities: Vec::new(),
    };
    let admin = s
        .create_token("root", Scope::Admin, "ha")
        .await
        .expect("create");
    let admin2 = s
        .create_token("root2", Scope::Admin, "ha2")
        .await
        .expect("create");
    let thief = s
        .create_token("thief", Scope::Factory, "hf")
        .await
        .expect("create");

    // An admin registers X; a factory token registering X is refused, naming the
    // token X belongs to, and is left unbound.
    let Binding::Bound(x) = s
        .register_factory_for_token(&reg("X"), admin.id)
        .await
        .expect("register")
    else {
        panic!("the admin registers X");
    };
    assert_eq!(
        s.register_factory_for_token(&reg("X"), thief.id)
            .await
            .expect("register"),
        Binding::FactoryTaken {
            factory: "X".into(),
            token: "root".into()
        }
    );
    let thief_now = s.token_by_hash("hf").await.expect("lookup").expect("live");
    assert_eq!(
        thief_now.factory, None,
        "the refused token is bound to nothing"
    );
    // The admin that registered X re-registers it, and so may another admin (admins
    // act for any factory), without taking it over; admins are never bound.
    for id in [admin.id, admin2.id] {
        assert_eq!(
            s.register_factory_for_token(&reg("X"), id)
                .await
                .expect("register"),
            Binding::Bound(x)
        );
    }
    assert_eq!(
        s.register_factory_for_token(&reg("X"), thief.id)
            .await
            .expect("register"),
        Binding::FactoryTaken {
            factory: "X".into(),
            token: "root".into()
        },
        "X still belongs to the admin that registered it first"
    );

    // A name the server registered itself belongs to no token: a factory token may
    // not take it, an admin may.
    let e = s.register_factory(&reg("E")).await.expect("register");
    assert_eq!(
        s.register_factory_for_token(&reg("E"), thief.id)
            .await
            .expect("register"),
        Binding::NameReserved {
            factory: "E".into()
        }
    );
    assert_eq!(
        s.register_factory_for_token(&reg("E"), admin2.id)
            .await
            .expect("register"),
        Binding::Bound(e)
    );

    // Once the admin token is revoked, X is free for the next token.
    s.revoke_token("root").await.expect("revoke");
    assert_eq!(
        s.register_factory_for_token(&reg("X"), thief.id)
            .await
            .expect("register"),
        Binding::Bound(x)
    );
    let bound = s.token_by_hash("hf").await.expect("lookup").expect("live");
    assert_eq!(bound.factory, Some(x));
    assert_eq!(
        s.factories()
            .await
            .expect("factories")
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        vec!["X", "E"]
    );
}

async fn issue4_tokens_racing_for_one_factory_bind_it_once(t: TestStore) {
    let store = t.store.clone();
    let mut ids = Vec::new();
    for i in 0..8 {
        let tok = store
            .create_token(&format!("t{i}"), Scope::Factory, &format!("h{i}"))
            .await
            .expect("create");
        ids.push(tok.id);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let store = store.clone();
            tokio::spawn(async move {
                let reg = RegisterFactory {
                    name: "X".into(),
                    seats: 1,
                    capabilities: Vec::new(),
                };
                store
                    .register_factory_for_token(&reg, id)
                    .await
                    .expect("register")
            })
        })
        .collect();
    let mut bound = 0;
    for task in tasks {
        match task.await.expect("task") {
            Binding::Bound(_) => bound += 1,
            Binding::FactoryTaken { factory, .. } => assert_eq!(factory, "X"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(bound, 1, "exactly one token holds X");
    let holders = store
        .tokens()
        .await
        .expect("tokens")
        .into_iter()
        .filter(|t| t.factory.is_some())
        .count();
    assert_eq!(holders, 1);
}

/// Generates, for each case, one test per backend: `sqlite::<case>` and
/// `postgres::<case>` (which fails, saying how to get a server, when
/// `GANTRY_TEST_PG_URL` is unset).
/// The position of the first event of `kind` of `job` in the global log.
fn position(events: &[gantry_core::event::Event], job: JobId, kind: &str) -> usize {
    events
        .iter()
        .position(|e| e.job_id == Some(job) && e.kind == kind)
        .unwrap_or_else(|| panic!("job {job} has no {kind} event"))
}

async fn issue4_finish_and_claim_finishes_then_claims_the_next(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b").priority(3)]).await;
    let f = factory(s, "f", &[]).await;
    let first = claim(s, f).await;
    assert_eq!(first.job.id, ids[0]);
    let (done, next) = s
        .finish_and_claim(first.run.id, report(&first, Outcome::Succeeded), f, LONG)
        .await
        .expect("finish and claim");
    assert_eq!(done, JobState::Succeeded);
    let a = s.job(ids[0]).await.expect("job");
    assert_eq!(
        (a.state, a.epoch),
        (JobState::Succeeded, 1),
        "the job as stored"
    );
    assert!(a.finished_at.is_some());
    let run = s.run(first.run.id).await.expect("run");
    assert_eq!(
        (run.outcome, run.exit_code),
        (Some(Outcome::Succeeded), Some(0))
    );
    assert!(run.finished_at.is_some());
    let next = next.expect("the next job");
    assert_eq!(next.job.id, ids[1]);
    assert_eq!(next.job.spec.title, "job b");
    assert_eq!((next.run.attempt, next.run.epoch), (1, 1));
    assert_eq!(next.run.lease_ttl_ms, 600_000);
    let b = s.job(ids[1]).await.expect("job");
    assert_eq!((b.state, b.epoch), (JobState::Running, 1));
    assert_eq!(s.runs(ids[1]).await.expect("runs")[0].factory_id, Some(f));
    assert_eq!(
        kinds_of(s, ids[0]).await,
        [
            "job.submitted",
            "job.state",
            "run.claimed",
            "run.finished",
            "job.state"
        ]
    );
    let seqs: Vec<i64> = events_of(s, ids[0]).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(
        kinds_of(s, ids[1]).await,
        ["job.submitted", "job.state", "run.claimed"]
    );
    let events = s.events(0, None, 100).await.expect("events");
    assert!(
        position(&events, ids[0], "run.finished") < position(&events, ids[1], "run.claimed"),
        "the finish is logged before the claim"
    );
    // With nothing left, the finish is recorded and nothing is claimed.
    let (last, none) = s
        .finish_and_claim(next.run.id, report(&next, Outcome::Succeeded), f, LONG)
        .await
        .expect("finish and claim");
    assert_eq!(last, JobState::Succeeded);
    assert_eq!(s.job(ids[1]).await.expect("job").state, JobState::Succeeded);
    assert!(none.is_none());
}

async fn issue4_finish_and_claim_hands_a_lock_to_the_next_job(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a").lock("l"), job("b").lock("l"), job("c")]).await;
    let f = factory(s, "f", &[]).await;
    let g = factory(s, "g", &[]).await;
    let first = claim(s, f).await;
    assert_eq!(first.job.id, ids[0]);
    // The lock is held: another factory gets the job without it.
    assert_eq!(claim(s, g).await.job.id, ids[2]);
    assert!(s.claim(g, LONG).await.expect("claim").is_none());
    let (done, next) = s
        .finish_and_claim(first.run.id, report(&first, Outcome::Succeeded), f, LONG)
        .await
        .expect("finish and claim");
    assert_eq!(done, JobState::Succeeded);
    assert_eq!(next.expect("the lock's next job").job.id, ids[1]);
    let events = s.events(0, None, 100).await.expect("events");
    assert!(
        position(&events, ids[0], "run.finished") < position(&events, ids[1], "run.claimed"),
        "the log shows the lock released before it is taken again"
    );
}

async fn issue4_a_stale_finish_and_claim_is_refused_and_claims_nothing(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b")]).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let stale = FinishReport {
        epoch: c.run.epoch + 7,
        ..report(&c, Outcome::Succeeded)
    };
    let err = s
        .finish_and_claim(c.run.id, stale, f, LONG)
        .await
        .expect_err("stale");
    assert_stale(err, ids[0], c.run.epoch + 7, c.run.epoch);
    let a = s.job(ids[0]).await.expect("job");
    assert_eq!((a.state, a.epoch), (JobState::Running, c.run.epoch));
    assert_eq!(s.run(c.run.id).await.expect("run").outcome, None);
    assert_eq!(s.job(ids[1]).await.expect("job").state, JobState::Queued);
    assert_eq!(
        kinds_of(s, ids[0]).await.last().map(String::as_str),
        Some("lease.stale_write_rejected")
    );
}

async fn issue4_finish_and_claim_plans_retries_and_settles_dependents(t: TestStore) {
    let s = &*t.store;
    let ids = submit(
        s,
        vec![
            job("flaky")
                .retry_on(&[Outcome::Failed])
                .backoff_ms(1_000)
                .key("flaky"),
            job("child").dep_key("flaky"),
            job("other"),
        ],
    )
    .await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    assert_eq!(c.job.id, ids[0]);
    // A failed attempt with attempts left goes back to the queue after its backoff; the
    // claim takes the next job that is claimable now.
    let (done, next) = s
        .finish_and_claim(c.run.id, report(&c, Outcome::Failed), f, LONG)
        .await
        .expect("finish and claim");
    assert_eq!(done, JobState::Queued);
    let a = s.job(ids[0]).await.expect("job");
    assert!(a.not_before.is_some() && a.reason.is_some());
    let next = next.expect("the other job");
    assert_eq!(next.job.id, ids[2]);
    s.finish(next.run.id, report(&next, Outcome::Succeeded))
        .await
        .expect("finish");
    // The retry, once due, succeeds, and the dependent it unblocks is claimed at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let again = loop {
        if let Some(c) = s.claim(f, LONG).await.expect("claim") {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the retry came due");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((again.job.id, again.run.attempt), (ids[0], 2));
    let (done, next) = s
        .finish_and_claim(again.run.id, report(&again, Outcome::Succeeded), f, LONG)
        .await
        .expect("finish and claim");
    assert_eq!(done, JobState::Succeeded);
    assert_eq!(next.expect("the dependent").job.id, ids[1]);
}

async fn issue4_finish_and_claim_keeps_the_session_and_the_diff(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b"), job("c"), job("d")]).await;
    let f = factory(s, "f", &[]).await;
    let g = factory(s, "g", &[]).await;
    let a = claim(s, f).await;
    let b = claim(s, g).await;
    let patch = "diff --git a/x b/x\n+x\n".to_string();
    let with_all = |c: &gantry_core::api::Claim, session: &str| FinishReport {
        epoch: c.run.epoch,
        outcome: Some(Outcome::Succeeded),
        exit_code: Some(0),
        diff: Some(patch.clone()),
        insights: Some(insights(session, 1, 0.1)),
        ..FinishReport::default()
    };
    // A worker's finish-and-claim and a finish on its own, at once: on PostgreSQL they
    // may share one batch, one wanting the job whole and the other its state only.
    let (done, job) = tokio::join!(
        s.finish_and_claim(a.run.id, with_all(&a, "sess-a"), f, LONG),
        s.finish(b.run.id, with_all(&b, "sess-b")),
    );
    let (done, next) = done.expect("finish and claim");
    let job = job.expect("finish");
    assert_eq!(done, JobState::Succeeded);
    assert!(next.is_some(), "a job was left to claim");
    assert_eq!((job.id, job.state), (ids[1], JobState::Succeeded));
    assert_eq!(job.spec.title, "job b");
    assert_eq!(job.session_id.as_deref(), Some("sess-b"));
    assert_eq!(job, s.job(ids[1]).await.expect("job"), "the job as stored");
    for (run, id, session) in [(&a, ids[0], "sess-a"), (&b, ids[1], "sess-b")] {
        assert_eq!(
            s.run_diff(run.run.id).await.expect("diff").as_deref(),
            Some(patch.as_str())
        );
        let stored = s.job(id).await.expect("job");
        assert_eq!(stored.session_id.as_deref(), Some(session));
        let r = s.run(run.run.id).await.expect("run");
        assert_eq!(
            r.insights.and_then(|i| i.session_id).as_deref(),
            Some(session)
        );
    }
}

async fn issue4_finish_and_claim_for_an_unknown_factory_keeps_the_finish(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let err = s
        .finish_and_claim(
            c.run.id,
            report(&c, Outcome::Succeeded),
            gantry_core::FactoryId(99),
            LONG,
        )
        .await
        .expect_err("no such factory");
    assert!(
        matches!(&err, StoreError::NotFound { what: "factory", id } if id == "99"),
        "{err:?}"
    );
    // As a finish followed by a claim: the finish stands.
    assert_eq!(s.job(id).await.expect("job").state, JobState::Succeeded);
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let t = crate::new_store();
                    let kept = t.kept();
                    super::$case(t).await;
                    kept.check_event_payloads().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let t = crate::new_pg_store().await;
                    let kept = t.kept();
                    super::$case(t).await;
                    kept.check_event_payloads().await;
                }
            )*
        }
    };
}

// The checking stage's cases, run by the macro above.
mod checking;
// The secrets a run received (issue 12).
mod secrets;

cases! {
    issue4_finish_and_claim_finishes_then_claims_the_next,
    issue4_finish_and_claim_hands_a_lock_to_the_next_job,
    issue4_a_stale_finish_and_claim_is_refused_and_claims_nothing,
    issue4_finish_and_claim_plans_retries_and_settles_dependents,
    issue4_finish_and_claim_for_an_unknown_factory_keeps_the_finish,
    issue4_finish_and_claim_keeps_the_session_and_the_diff,
    issue4_a_reported_diff_is_kept_with_its_run_and_a_stale_one_is_not,
    issue3_insights_snapshots_and_finish_are_kept_on_the_run,
    issue3_a_retry_gets_the_session_and_the_checkpoint,
    issue3_a_bad_checkpoint_is_refused_and_nothing_is_stored,
    issue3_budget_exceeded_fails_the_job_without_retry,
    claims_by_priority_then_submission_order,
    claim_sets_lease_run_and_events,
    unknown_factory_and_job_are_not_found,
    deps_block_until_succeeded,
    failed_dep_cancels_dependents_transitively_unless_finished_mode,
    a_dep_that_already_ended_badly_cancels_at_submit,
    unknown_dep_refuses_the_whole_batch,
    dependency_cycles_are_refused,
    same_batch_key_deps_resolve_both_ways,
    idempotency_key_returns_the_existing_job,
    lock_exclusion_under_concurrent_claims,
    capability_matching,
    issue10_queue_depth_counts_queued_jobs_by_capability_set,
    stale_writes_after_expiry_and_reclaim_are_refused_and_recorded,
    failed_attempts_retry_with_backoff_until_max_attempts,
    retry_on_decides_which_outcomes_retry,
    finish_records_the_report,
    cancel_and_kill_queued_jobs_at_once,
    cancel_and_kill_running_jobs_through_their_factory,
    kill_all_pauses_and_asks_every_running_job_to_die,
    status_counts_jobs_by_state,
    manual_retry_of_finished_jobs,
    reap_is_idempotent_under_concurrent_reapers,
    reaping_a_job_with_a_stop_request_ends_it_as_requested,
    expire_leases_of_touches_only_that_factory,
    factories_register_by_name,
    tokens,
    events_page_globally_and_count_per_job,
    changes_are_signaled_after_writes,
    concurrent_writes_stay_isolated_when_some_fail,
    the_queue_benchmark_burns_everything_down,
    finish_returns_the_job_as_stored,
    a_jobs_events_page_like_the_global_log_filtered_to_it,
    issue2_operations_that_change_nothing_do_not_signal_changes,
    issue4_heartbeats_are_kept_and_running_jobs_counted_per_factory,
    issue4_a_factory_token_is_bound_to_the_first_factory_it_registers,
    issue4_tokens_racing_for_one_factory_bind_it_once,
    issue15_idempotency_keys_are_per_token_and_conflict_on_new_content,
    issue15_a_factory_name_belongs_to_the_token_that_registered_it,
    issue15_lists_leave_bodies_out_and_one_job_keeps_its_body,
    issue10_a_cursor_pages_through_the_jobs,
}
