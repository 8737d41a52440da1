//! SIGKILL the server mid-run, restart it on the same data dir: every job is still
//! there, the running ones come back as lost and are retried, all succeed once.

use crate::harness::{Env, Server, submit, wait_for};
use std::time::Duration;

#[test]
fn sigkill_mid_run_then_restart_loses_and_duplicates_nothing() {
    let env = Env::new();
    let server = env.serve(&[
        "--seats",
        "3",
        "--lease-ttl",
        "2s",
        "--reaper-interval",
        "200ms",
    ]);
    let mut files = Vec::new();
    for i in 0..3 {
        files.push(env.job(
            &format!("durable-{i}"),
            &format!("idempotency_key: durable-{i}\nbackoff: 100ms\n"),
            &format!("sleep 2; echo {i} > out-{i}.txt"),
        ));
    }
    // A fourth one waits behind a dependency, so a blocked job survives too.
    files.push(env.job(
        "durable-dep",
        "deps: [durable-0]\nbackoff: 100ms\n",
        "echo dep > dep.txt",
    ));
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let ids = submit(&server, &paths);
    assert_eq!(ids.len(), 4);
    for id in &ids[..3] {
        server.wait_state(id, "running", Duration::from_secs(60));
    }
    // Give the processes a moment to really start.
    std::thread::sleep(Duration::from_millis(300));
    server.sigkill();

    let server = Server::start(
        &env.data(),
        &[
            "--seats",
            "3",
            "--lease-ttl",
            "2s",
            "--reaper-interval",
            "200ms",
        ],
    );
    for id in &ids {
        server.wait_state(id, "succeeded", Duration::from_secs(90));
    }
    let list = server.cli(&["ls", "--json"]).json();
    let mut listed: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap().to_string())
        .collect();
    listed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(listed, expected, "every job is there, exactly once");

    for id in &ids[..3] {
        let j = server.job(id);
        let runs = j["runs"].as_array().unwrap();
        let outcomes: Vec<&str> = runs
            .iter()
            .map(|r| r["outcome"].as_str().unwrap_or("none"))
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == "succeeded").count(),
            1,
            "job {id}: exactly one succeeded run: {outcomes:?}"
        );
        assert_eq!(
            outcomes.first(),
            Some(&"lost"),
            "job {id}: the killed run came back as lost: {outcomes:?}"
        );
        assert_eq!(outcomes.last(), Some(&"succeeded"), "{outcomes:?}");
        let epochs: Vec<i64> = runs.iter().map(|r| r["epoch"].as_i64().unwrap()).collect();
        assert!(
            epochs.windows(2).all(|w| w[0] < w[1]),
            "epochs never reused: {epochs:?}"
        );
        assert_eq!(j["attempt"].as_u64().unwrap() as usize, runs.len());
    }
    let dep = server.job(&ids[3]);
    assert_eq!(
        dep["runs"].as_array().unwrap().len(),
        1,
        "the blocked job ran once: {dep:#}"
    );

    // Submitting the same keys again after the restart still returns the same jobs.
    let again = submit(&server, &paths[..3]);
    assert_eq!(again, ids[..3].to_vec());
    let count = wait_for("ls", Duration::from_secs(5), || {
        Some(
            server
                .cli(&["ls", "--json"])
                .json()
                .as_array()
                .unwrap()
                .len(),
        )
    });
    assert_eq!(count, 4, "no duplicate job rows");
}
