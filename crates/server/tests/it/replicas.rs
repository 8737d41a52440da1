//! Issue 4, many machines: `gantry serve --db postgres://...` behaves as it does on
//! SQLite, and several replicas on one database act as one server: any replica takes any
//! request and serves any event stream with exact replay, idempotency keys and deps
//! resolve across them, and every replica runs the reaper without requeuing a job twice.
//!
//! Each test has a fresh database of its own ([`PgDb`]) on the server named by
//! `GANTRY_TEST_PG_URL`, and each replica a data dir of its own, as on separate machines.

use crate::support::{
    SseReader, TestServer, claim, config, git, has_ref, job_file, register, repo,
};
use gantry_core::event::{DELIVERY_PUSHED, Event, JOB_STATE, LEASE_EXPIRED, RUN_OUTPUT};
use gantry_core::{Job, JobId, JobState, Outcome};
use gantry_protocol::{Scope, SubmitResponse};
use gantry_server::ServeConfig;
use gantry_store::testing::PgDb;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// A replica's config: its own data dir, the shared database, an embedded factory or not.
fn replica(data_dir: &Path, db: &PgDb, embedded_factory: bool) -> ServeConfig {
    ServeConfig {
        db: Some(db.url.clone()),
        embedded_factory,
        ..config(data_dir)
    }
}

/// A command job that prints `marker-before`, waits until `flag` exists, prints
/// `marker-after` and adds a line to README.md (so it has something to deliver).
fn gated_job(title: &str, repo: &Path, flag: &Path, extra: &str) -> String {
    let script = format!(
        "echo marker-before; while [ ! -e '{}' ]; do sleep 0.02; done; echo marker-after; \
         printf 'third\\n' >> README.md",
        flag.display()
    );
    job_file(title, repo, &["sh", "-c", &script], extra)
}

/// Whether `ev` is output of the run that contains `text`.
fn is_output(ev: &Event, text: &str) -> bool {
    ev.kind == RUN_OUTPUT && ev.data["text"].as_str().is_some_and(|t| t.contains(text))
}

/// Reads `stream` until the delivery event of `job`, checking the SSE fields on the way;
/// returns the events read.
async fn read_until_delivered(stream: &mut SseReader, job: JobId) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let msg = stream.next().await;
        assert_eq!(msg.id, msg.event.id, "id: is the event id");
        assert_eq!(msg.kind, msg.event.kind, "event: is the kind");
        assert_eq!(msg.event.job_id, Some(job), "only the job's events");
        let done = msg.event.kind == DELIVERY_PUSHED;
        out.push(msg.event);
        if done {
            return out;
        }
    }
}

/// The value of the unlabeled metric `name` in `ts`'s `/metrics`.
async fn metric(ts: &TestServer, name: &str) -> u64 {
    let resp = ts.get(&ts.admin, "/metrics").await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name} is not a whole number: {e}"))
}

/// The `to` state of every `job.state` event of `events`, in order.
fn states(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == JOB_STATE)
        .map(|e| e.data["to"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn issue4_a_job_runs_succeeds_and_is_delivered_on_postgres() {
    let db = PgDb::create().await;
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(replica(data.path(), &db, true)).await;
    // No SQLite file: the store is the database.
    assert!(!data.path().join(gantry_server::DB_FILE).exists());
    let edit = [
        "sh",
        "-c",
        "printf 'third\\n' >> README.md && echo added > NEW.txt && echo done",
    ];
    let id = ts
        .submit(&[("edit.md", job_file("edit", &repo, &edit, ""))])
        .await[0];

    let job = ts.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(job.runs.len(), 1, "{job:#?}");
    let run = &job.runs[0];
    assert_eq!(run.outcome, Some(Outcome::Succeeded));
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(
        run.branch.as_deref(),
        Some(format!("gantry/{id}/a1").as_str())
    );
    let commit = run.commit.clone().expect("a commit");
    assert_ne!(Some(&commit), run.base_commit.as_ref(), "changes committed");
    assert_eq!(run.files_changed, Some(2));
    assert_eq!(run.lines_added, Some(2));
    assert_eq!(run.lines_deleted, Some(0));

    let pushed = ts.wait_event(id, DELIVERY_PUSHED).await;
    assert_eq!(pushed.data["branch"], format!("gantry/{id}"));
    assert_eq!(pushed.data["commit"], commit.as_str());
    assert_eq!(git(&repo, &["rev-parse", &format!("gantry/{id}")]), commit);
    assert_eq!(
        git(&repo, &["show", &format!("gantry/{id}:NEW.txt")]),
        "added"
    );
    assert!(!has_ref(&repo, &format!("refs/heads/gantry/{id}/a1")));
    let events = ts.events(Some(id)).await;
    assert!(
        events.iter().any(|e| is_output(e, "done")),
        "the run's output is in the log: {events:#?}"
    );
    assert_eq!(
        states(&events).last().map(String::as_str),
        Some("succeeded")
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_any_replica_serves_a_jobs_stream_with_exact_replay() {
    let db = PgDb::create().await;
    let (tmp, repo) = repo();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let mut a = TestServer::start(replica(dir_a.path(), &db, true)).await;
    let mut b = TestServer::start(replica(dir_b.path(), &db, false)).await;
    // Each replica minted an admin token into its own data dir; both live in the shared
    // database, so either replica accepts either.
    assert_ne!(a.admin, b.admin);
    assert_eq!(b.get(&a.admin, "/v1/status").await.status(), 200);
    assert_eq!(a.get(&b.admin, "/v1/status").await.status(), 200);

    // Submitted through B, which has no factory: A's embedded factory runs it.
    let flag = tmp.path().join("go");
    let id = b
        .submit(&[("gated.md", gated_job("gated", &repo, &flag, ""))])
        .await[0];

    // B's stream: everything up to the run's first output, which A's factory writes
    // while the run waits for the flag.
    let stream_path = format!("/v1/events?job={id}");
    let mut on_b = SseReader::open(&b, &stream_path, None).await;
    let mut head = Vec::new();
    loop {
        let msg = on_b.next().await;
        assert_eq!(msg.id, msg.event.id);
        let cut = is_output(&msg.event, "marker-before");
        head.push(msg.event);
        if cut {
            break;
        }
    }
    let cut = head.last().expect("events before the cut").id;

    // The rest of the run happens while both streams are open: B's goes on, and a client
    // that reconnects to A with B's last id resumes there.
    let mut on_a = SseReader::open(&a, &stream_path, Some(cut)).await;
    std::fs::write(&flag, "").expect("write the flag");
    let rest_b = read_until_delivered(&mut on_b, id).await;
    let rest_a = read_until_delivered(&mut on_a, id).await;
    let job = b.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.runs.len(), 1);

    // The log, read as JSON pages from either replica, is the same.
    let stored = a.events(Some(id)).await;
    assert_eq!(stored, b.events(Some(id)).await);
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id), "{stored:#?}");
    assert!(stored.iter().any(|e| is_output(e, "marker-after")));
    // B's stream carried every event of the job in order, those A wrote included.
    let on_b_all: Vec<Event> = head.iter().chain(&rest_b).cloned().collect();
    assert_eq!(on_b_all, stored);
    // A's stream replayed exactly the events after B's last id: no gap, no duplicate.
    let after_cut: Vec<Event> = stored.iter().filter(|e| e.id > cut).cloned().collect();
    assert!(!after_cut.is_empty());
    assert_eq!(rest_a, after_cut);

    // `?after=` pages are the same on both replicas, job-filtered or not.
    for after in [0, stored[1].id, cut, stored[stored.len() - 2].id] {
        for path in [
            format!("/v1/events?job={id}&after={after}&limit=3"),
            format!("/v1/events?after={after}&limit=3"),
        ] {
            let page_a: Vec<Event> = a.get_json(&path).await;
            let page_b: Vec<Event> = b.get_json(&path).await;
            assert!(!page_a.is_empty(), "{path}");
            assert_eq!(page_a, page_b, "{path}");
            assert!(page_a.iter().all(|e| e.id > after), "{path}");
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn issue4_every_replica_reaps_and_an_expired_lease_is_requeued_once() {
    const JOBS: usize = 4;
    const TTL: Duration = Duration::from_secs(1);
    let db = PgDb::create().await;
    let (_tmp, repo) = repo();
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        let cfg = ServeConfig {
            lease_ttl: TTL,
            // Short, so the three reapers race for every expired lease.
            reaper_interval: Duration::from_millis(10),
            ..replica(dir.path(), &db, false)
        };
        replicas.push(TestServer::start(cfg).await);
    }
    let r = |i: usize| &replicas[i % replicas.len()];

    // A fake factory over HTTP: it claims through one replica or another and never
    // renews its first leases.
    let token = r(0).token("fake", Scope::Factory).await;
    let factory = register(r(1), &token, "fake", JOBS as u32).await;
    let files: Vec<(String, String)> = (0..JOBS)
        .map(|i| {
            let title = format!("job{i}");
            let text = job_file(&title, &repo, &["true"], "max_attempts: 3\nbackoff: 0s\n");
            (format!("{title}.md"), text)
        })
        .collect();
    let files: Vec<(&str, String)> = files.iter().map(|(f, t)| (f.as_str(), t.clone())).collect();
    let ids = r(2).submit(&files).await;
    let mut first = Vec::new();
    for i in 0..JOBS {
        first.push(claim(r(i), &token, factory).await);
    }
    let claimed: BTreeSet<JobId> = first.iter().map(|c| c.job.id).collect();
    assert_eq!(claimed, ids.iter().copied().collect());
    assert!(first.iter().all(|c| c.run.attempt == 1), "{first:#?}");

    // The leases expire; some reaper returns each job to the queue.
    for (i, id) in ids.iter().enumerate() {
        r(i).wait_state(*id, JobState::Queued).await;
    }
    // The old holder's writes are refused from now on, through any replica.
    for (i, c) in first.iter().enumerate() {
        let resp = r(i + 1)
            .post(
                &token,
                &format!("/v1/runs/{}/renew", c.run.id),
                &json!({ "epoch": c.run.epoch }),
            )
            .await;
        assert_eq!(
            resp.status(),
            409,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    // Second attempts, renewed through rotating replicas past one TTL while every reaper
    // keeps running: a lease renewed through one replica is never reaped by another.
    let mut second = Vec::new();
    for i in 0..JOBS {
        second.push(claim(r(i + 2), &token, factory).await);
    }
    for c2 in &second {
        let c1 = first
            .iter()
            .find(|c| c.job.id == c2.job.id)
            .expect("every job was claimed before");
        assert_eq!(c2.run.attempt, 2, "{c2:#?}");
        assert_eq!(c2.run.epoch, c1.run.epoch + 1, "{c2:#?}");
    }
    let renew_every = TTL / 4;
    for round in 0..6 {
        for (i, c) in second.iter().enumerate() {
            let resp = r(round + i)
                .post(
                    &token,
                    &format!("/v1/runs/{}/renew", c.run.id),
                    &json!({ "epoch": c.run.epoch }),
                )
                .await;
            assert_eq!(
                resp.status(),
                200,
                "round {round}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        tokio::time::sleep(renew_every).await;
    }
    for (i, c) in second.iter().enumerate() {
        let finish = json!({ "epoch": c.run.epoch, "outcome": "succeeded", "exit_code": 0 });
        let resp = r(i)
            .post(&token, &format!("/v1/runs/{}/finish", c.run.id), &finish)
            .await;
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    // Each job was requeued exactly once: one lease.expired naming its first run, two
    // runs with consecutive attempts and epochs, the first lost, the second succeeded.
    for (i, id) in ids.iter().enumerate() {
        let job: Job = r(i).wait_state(*id, JobState::Succeeded).await;
        assert_eq!(job.attempt, 2, "{job:#?}");
        let attempts: Vec<u32> = job.runs.iter().map(|run| run.attempt).collect();
        assert_eq!(attempts, [1, 2], "{job:#?}");
        let outcomes: Vec<Option<Outcome>> = job.runs.iter().map(|run| run.outcome).collect();
        assert_eq!(
            outcomes,
            [Some(Outcome::Lost), Some(Outcome::Succeeded)],
            "{job:#?}"
        );
        assert_eq!(job.runs[1].epoch, job.runs[0].epoch + 1);
        let events = r(i + 1).events(Some(*id)).await;
        let expired: Vec<&Event> = events.iter().filter(|e| e.kind == LEASE_EXPIRED).collect();
        assert_eq!(expired.len(), 1, "{events:#?}");
        assert_eq!(expired[0].run_id, Some(job.runs[0].id), "{events:#?}");
        assert_eq!(expired[0].data["epoch"], json!(job.runs[0].epoch));
        assert_eq!(
            states(&events),
            ["running", "queued", "running", "succeeded"],
            "{events:#?}"
        );
    }
    // Each reap was counted by the one replica that did it.
    let mut reaped = 0;
    for ts in &replicas {
        reaped += metric(ts, "gantry_lease_expiries_total").await;
    }
    assert_eq!(reaped, JOBS as u64);
    for ts in &mut replicas {
        ts.shutdown().await;
    }
}

#[tokio::test]
async fn issue4_idempotency_keys_and_deps_resolve_across_replicas() {
    let db = PgDb::create().await;
    let (tmp, repo) = repo();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let mut a = TestServer::start(replica(dir_a.path(), &db, true)).await;
    let mut b = TestServer::start(replica(dir_b.path(), &db, false)).await;
    // Idempotency keys, and deps written as keys, are per token (issue 15): one token
    // submits through both replicas (each made an admin token of its own).
    b.admin = a.admin.clone();

    // Through B: the base job, which runs on A's factory until the flag appears.
    let flag = tmp.path().join("go");
    let base_file = gated_job("base", &repo, &flag, "idempotency_key: base-key\n");
    let base = b.submit(&[("base.md", base_file.clone())]).await[0];

    // Through A: a batch depending on B's key, and on a key of the same batch.
    let x_file = job_file(
        "x",
        &repo,
        &["true"],
        "idempotency_key: x-key\ndeps: [base-key]\n",
    );
    let y_file = job_file("y", &repo, &["true"], "deps: [x-key]\n");
    let batch = json!({ "jobs": [
        { "file": "x.md", "text": x_file },
        { "file": "y.md", "text": y_file },
    ]});
    let resp: SubmitResponse = a.post_json("/v1/jobs", &batch).await;
    let (x, y) = (resp.jobs[0].id, resp.jobs[1].id);
    assert!(resp.jobs.iter().all(|s| !s.existing), "{resp:#?}");
    let job_x = b.job(x).await;
    assert_eq!(job_x.deps, [base]);
    assert_eq!(job_x.state, JobState::Blocked, "base is still running");
    assert_eq!(b.job(y).await.deps, [x]);

    // The same keys through the other replica return the jobs stored first.
    let again_b: SubmitResponse = b
        .post_json(
            "/v1/jobs",
            &json!({ "jobs": [{ "file": "x.md", "text": x_file }] }),
        )
        .await;
    assert_eq!(again_b.jobs[0].id, x);
    assert!(again_b.jobs[0].existing);
    let again_a: SubmitResponse = a
        .post_json(
            "/v1/jobs",
            &json!({ "jobs": [{ "file": "base.md", "text": base_file }] }),
        )
        .await;
    assert_eq!(again_a.jobs[0].id, base);
    assert!(again_a.jobs[0].existing);

    // The deps resolve: base succeeds, then x, then y.
    std::fs::write(&flag, "").expect("write the flag");
    let done: Vec<Job> = vec![
        b.wait_state(base, JobState::Succeeded).await,
        a.wait_state(x, JobState::Succeeded).await,
        b.wait_state(y, JobState::Succeeded).await,
    ];
    assert!(done[0].finished_at <= done[1].started_at, "{done:#?}");
    assert!(done[1].finished_at <= done[2].started_at, "{done:#?}");
    for ts in [&a, &b] {
        let all: Vec<Job> = ts.get_json("/v1/jobs").await;
        assert_eq!(all.len(), 3, "no duplicate stored: {all:#?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Replicas started together on a new database race for the first admin token's name;
/// every one of them must start (the loser takes the next name).
#[tokio::test]
async fn issue4_replicas_started_at_once_on_a_new_database_all_start() {
    let db = PgDb::create().await;
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let starts = dirs
        .iter()
        .map(|d| gantry_server::start(replica(d.path(), &db, false)));
    let results = futures_util::future::join_all(starts).await;
    for r in &results {
        assert!(r.is_ok(), "{:?}", r.as_ref().err());
    }
}

/// Each replica's embedded factory is a factory of its own on a shared database (one
/// row each, named after its host and data dir), not one row for all.
#[tokio::test]
async fn issue4_replicas_embedded_factories_are_told_apart() {
    let db = PgDb::create().await;
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestServer::start(replica(a_dir.path(), &db, true)).await;
    let b = TestServer::start(replica(b_dir.path(), &db, true)).await;
    // Each embedded factory registers once its loop starts, after the server is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut names: Vec<String> = loop {
        let list: Vec<serde_json::Value> = a.get_json("/v1/factories").await;
        let names: Vec<String> = list
            .iter()
            .filter_map(|f| f["name"].as_str().map(str::to_string))
            .collect();
        if names.len() >= 2 || std::time::Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().all(|n| gantry_server::is_embedded_name(n)),
        "{names:?}"
    );
    assert_ne!(names[0], names[1]);
    drop((a, b));
}
