//! Scenario 3: the server is SIGKILLed while remote factories run jobs, then started
//! again on the same address and the same database (SQLite in its data dir, or
//! PostgreSQL). The factories keep their runs going, reconnect and finish them: every
//! job ends once, in success, after exactly one attempt.

use super::{
    LONG, Scene, assert_each_succeeded_once, assert_executions_match_runs, command_job,
    gated_script, job, job_events, open_gate, run_process_alive, stdout_text, submit_texts,
    wait_pid, wait_state,
};
use crate::harness::{
    Api, FactoryProc, PgDatabase, RunSweeper, Server, create_token, git, wait_for,
};
use std::time::Duration;

/// Gated jobs that fill every seat when the server dies.
const HELD: usize = 4;

/// Scenario 3 on one backend: PostgreSQL when `db` is given, else SQLite in the
/// server's data dir.
fn server_sigkill(backend: &str, db: Option<&PgDatabase>) {
    let sweeper = RunSweeper::new(&format!("server-kill-{backend}"));
    let scene = Scene::new();
    let data = scene.dir("server-data");
    // The lease outlasts the restart: the runs must survive it without a retry.
    let mut flags: Vec<String> = [
        "--no-factory",
        "--lease-ttl",
        "10s",
        "--reaper-interval",
        "200ms",
    ]
    .map(String::from)
    .to_vec();
    if let Some(db) = db {
        flags.extend(["--db".to_string(), db.url.clone()]);
    }
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(&data, &args);
    let api = Api::new(&server.url, &server.admin_token());
    let factories: Vec<FactoryProc> = ["chaos-a", "chaos-b"]
        .iter()
        .map(|name| {
            let token = create_token(&server, name, "factory");
            FactoryProc::start(&server.url, &token, name, 2, &scene.dir(name), &[])
        })
        .collect();

    let gate = scene.runs().join("gate");
    let mark = sweeper.env_line();
    let mut texts = Vec::new();
    for i in 0..HELD {
        let name = format!("held{i}");
        texts.push((
            format!("{name}.md"),
            command_job(
                &name,
                &scene.repo(),
                &gated_script(&scene.runs(), &name, &gate),
                &format!("priority: 9\nidempotency_key: {name}\n{mark}"),
            ),
        ));
    }
    // Queued behind the held ones when the server dies (every seat is taken), and one
    // blocked on a dependency.
    for i in 0..2 {
        let name = format!("queued{i}");
        texts.push((
            format!("{name}.md"),
            command_job(
                &name,
                &scene.repo(),
                &format!("echo {name}; echo {name} > {name}.txt"),
                &format!("priority: 1\n{mark}"),
            ),
        ));
    }
    texts.push((
        "blocked.md".to_string(),
        command_job(
            "blocked",
            &scene.repo(),
            "echo blocked; echo blocked > blocked.txt",
            &format!("deps: [held0]\n{mark}"),
        ),
    ));
    let ids = submit_texts(&api, &texts);
    assert_eq!(ids.len(), HELD + 3);

    let pids: Vec<i32> = (0..HELD)
        .map(|i| wait_pid(&scene.runs(), &format!("held{i}"), 1))
        .collect();
    // Each held run has reported its start and its first output under its lease.
    for (i, id) in ids[..HELD].iter().enumerate() {
        wait_for(
            &format!("the first output of held{i} to be uploaded"),
            LONG,
            || {
                stdout_text(&job_events(&api, *id))
                    .contains(&format!("before-held{i}"))
                    .then_some(())
            },
        );
    }
    for id in &ids[HELD..] {
        let state = job(&api, *id)["state"].clone();
        assert!(
            state == "queued" || state == "blocked",
            "job {id} waits while the held jobs run: {state}"
        );
    }

    let addr = server.addr();
    server.sigkill();
    for (i, pid) in pids.iter().enumerate() {
        assert!(
            run_process_alive(&sweeper, *pid),
            "held{i}'s process {pid} died with the server"
        );
    }
    let mut again = vec!["--listen".to_string(), addr];
    again.extend(flags.iter().cloned());
    let args: Vec<&str> = again.iter().map(String::as_str).collect();
    let server = Server::start(&data, &args);
    let api = Api::new(&server.url, &server.admin_token());

    // The factories reconnect: each held run's lease is renewed by the new server.
    for (i, id) in ids[..HELD].iter().enumerate() {
        let before = job(&api, *id)["runs"][0]["lease_expires_at"].clone();
        wait_for(
            &format!("held{i}'s factory to renew its lease with the restarted server"),
            Duration::from_secs(30),
            || {
                let j = job(&api, *id);
                assert_eq!(j["state"], "running", "held{i} runs on: {j:#}");
                (j["runs"][0]["lease_expires_at"] != before).then_some(())
            },
        );
        assert!(
            run_process_alive(&sweeper, pids[i]),
            "held{i}'s process runs on across the restart"
        );
    }
    open_gate(&gate);
    for id in &ids {
        wait_state(&api, *id, "succeeded", &server);
    }

    let listed = api.get_json("/v1/jobs?limit=1000");
    let mut listed: Vec<i64> = listed
        .as_array()
        .expect("a list of jobs")
        .iter()
        .map(|j| j["id"].as_i64().expect("an id"))
        .collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected, "every job is there, exactly once");
    let tried = assert_each_succeeded_once(&api, &ids);
    for (id, attempts) in &tried {
        assert_eq!(attempts.len(), 1, "job {id} ran once: {attempts:?}");
        let j = job(&api, *id);
        assert_eq!(j["attempt"], 1, "{j:#}");
    }
    for (i, id) in ids[..HELD].iter().enumerate() {
        assert_executions_match_runs(&api, &scene.runs(), &format!("held{i}"), *id);
    }
    // Each job's work reached the source once: one delivery, on its own branch.
    let names: Vec<String> = (0..HELD)
        .map(|i| format!("held{i}"))
        .chain((0..2).map(|i| format!("queued{i}")))
        .chain(["blocked".to_string()])
        .collect();
    for (name, id) in names.iter().zip(&ids) {
        let delivered = wait_for(&format!("the delivery of {name}"), LONG, || {
            let events = job_events(&api, *id);
            let kinds: Vec<String> = events
                .iter()
                .filter_map(|e| e["kind"].as_str())
                .filter(|k| k.starts_with("delivery."))
                .map(String::from)
                .collect();
            (!kinds.is_empty()).then_some(kinds)
        });
        assert_eq!(delivered, ["delivery.pushed"], "{name} was delivered once");
        let file = git(&scene.repo(), &["show", &format!("gantry/{id}:{name}.txt")]);
        assert!(
            file.starts_with(name.as_str()),
            "{name}.txt on gantry/{id}: {file:?}"
        );
    }
    // The output of each held run, before and after the restart, was uploaded exactly
    // once: nothing lost, nothing sent twice.
    for (i, id) in ids[..HELD].iter().enumerate() {
        let events = job_events(&api, *id);
        assert_eq!(
            stdout_text(&events),
            format!("before-held{i}\nafter-held{i}\n"),
            "held{i}'s output"
        );
        // The lease held throughout: it never expired, and no write of the run was
        // refused while it ran (a renewal that crosses the finish may be refused after).
        let finished = events
            .iter()
            .find(|e| e["kind"] == "run.finished")
            .and_then(|e| e["id"].as_i64())
            .expect("the run finished");
        let lapses: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| {
                e["kind"] == "lease.expired"
                    || (e["kind"] == "lease.stale_write_rejected"
                        && e["id"].as_i64() < Some(finished))
            })
            .collect();
        assert!(lapses.is_empty(), "held{i} lost its lease: {lapses:#?}");
    }
    drop(factories);
    drop(server);
}

#[test]
fn issue4_chaos_sigkill_the_server_mid_run_sqlite() {
    server_sigkill("sqlite", None);
}

#[test]
fn issue4_chaos_sigkill_the_server_mid_run_postgres() {
    let db = PgDatabase::create("server_kill");
    server_sigkill("postgres", Some(&db));
}
