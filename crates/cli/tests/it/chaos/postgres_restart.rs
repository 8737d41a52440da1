//! Scenario 4: PostgreSQL restarts under a running server, twice (`pg_ctl restart -m
//! fast` while jobs run, then a crash with `stop -m immediate` during which the jobs
//! end, and a start), while remote factories run jobs. No job is lost and none is claimed twice at once: each
//! ends with exactly one succeeded run, and the event log never shows two running
//! attempts of one job.
//!
//! The cluster is the test's own (the one of `GANTRY_TEST_PG_URL` serves other tests at
//! the same time and must not be restarted).

use super::{
    Scene, assert_each_succeeded_once, assert_executions_match_runs, command_job, gated_script,
    job, open_gate, run_process_alive, submit_texts, wait_pid, wait_state,
};
use crate::harness::{
    Api, FactoryProc, PgCluster, RunSweeper, Server, create_token, note, pg_server_url, wait_for,
};
use std::time::Duration;

/// Jobs per phase: as many as the factories have seats.
const PER_PHASE: usize = 4;

/// Waits until the server answers a query of the store again.
#[track_caller]
fn wait_store_back(api: &Api, what: &str) {
    wait_for(
        &format!("the server to reach PostgreSQL again after {what}"),
        Duration::from_secs(60),
        || matches!(api.get("/v1/status"), Ok((200, _))).then_some(()),
    );
}

#[test]
fn issue4_chaos_restart_postgres_mid_run() {
    // Like every PostgreSQL test, this one fails without the suite's server, although
    // it runs a cluster of its own.
    let _ = pg_server_url();
    let sweeper = RunSweeper::new("pg-restart");
    let scene = Scene::new();
    let cluster = PgCluster::start();
    let server = Server::start(
        &scene.dir("server-data"),
        &[
            "--no-factory",
            "--lease-ttl",
            "10s",
            "--reaper-interval",
            "200ms",
            "--db",
            &cluster.url(),
        ],
    );
    let api = Api::new(&server.url, &server.admin_token());
    let factories: Vec<FactoryProc> = ["chaos-a", "chaos-b"]
        .iter()
        .map(|name| {
            let token = create_token(&server, name, "factory");
            FactoryProc::start(&server.url, &token, name, 2, &scene.dir(name), &[])
        })
        .collect();

    let gates = [scene.runs().join("gate-1"), scene.runs().join("gate-2")];
    let mut texts = Vec::new();
    for (phase, gate) in gates.iter().enumerate() {
        for i in 0..PER_PHASE {
            let name = format!("p{phase}j{i}");
            texts.push((
                format!("{name}.md"),
                command_job(
                    &name,
                    &scene.repo(),
                    &gated_script(&scene.runs(), &name, gate),
                    // Phase 0 first; phase 1 waits in the queue meanwhile.
                    &format!(
                        "priority: {}\nmax_attempts: 5\nbackoff: 100ms\n{}",
                        9 - phase,
                        sweeper.env_line()
                    ),
                ),
            ));
        }
    }
    let ids = submit_texts(&api, &texts);
    let (phase0, phase1) = ids.split_at(PER_PHASE);
    for i in 0..PER_PHASE {
        wait_pid(&scene.runs(), &format!("p0j{i}"), 1);
    }

    // A clean restart while phase 0 runs: every connection of the server is cut.
    cluster.restart_fast();
    wait_store_back(&api, "pg_ctl restart -m fast");
    for id in phase0 {
        let j = job(&api, *id);
        assert_eq!(
            j["state"], "running",
            "the restart did not end the run: {j:#}"
        );
    }
    open_gate(&gates[0]);
    for id in phase0 {
        wait_state(&api, *id, "succeeded", &server);
    }
    // Phase 1 runs now. The database crashes, and the jobs end while it is down: their
    // finish reports wait for it to come back.
    let pids: Vec<i32> = (0..PER_PHASE)
        .map(|i| {
            let dir = scene.runs();
            let name = format!("p1j{i}");
            let attempt = wait_for(
                &format!("{name} to start (any attempt)"),
                Duration::from_secs(90),
                || (1..=5).find(|a| dir.join(format!("pid-{name}-{a}")).exists()),
            );
            wait_pid(&dir, &name, attempt)
        })
        .collect();
    cluster.stop_immediate();
    open_gate(&gates[1]);
    for pid in pids {
        wait_for(
            "a phase 1 job's process to end while the database is down",
            Duration::from_secs(30),
            || (!run_process_alive(&sweeper, pid)).then_some(()),
        );
    }
    cluster.start_server();
    wait_store_back(&api, "pg_ctl stop -m immediate and start");
    for id in phase1 {
        wait_state(&api, *id, "succeeded", &server);
    }

    let tried = assert_each_succeeded_once(&api, &ids);
    for (k, id) in ids.iter().enumerate() {
        let name = format!("p{}j{}", k / PER_PHASE, k % PER_PHASE);
        assert_executions_match_runs(&api, &scene.runs(), &name, *id);
    }
    let retried: Vec<(i64, usize)> = tried
        .iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(id, a)| (*id, a.len()))
        .collect();
    note(&format!(
        "postgres restart: jobs with more than one attempt: {retried:?}"
    ));
    drop(factories);
    drop(server);
    drop(cluster);
}
