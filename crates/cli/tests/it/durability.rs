//! SIGKILL the server mid-run, restart it on the same data dir: every job is still
//! there and succeeds exactly once. Runs whose lease ran out while the server was down
//! come back as lost and are retried (the first test); agents whose lease is still
//! valid keep running across the restart and are re-adopted, one attempt each (the
//! second, issue 3).

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
    // The machine "dies": the server and every run's process group with it.
    let pgids: Vec<i64> = ids[..3]
        .iter()
        .map(|id| {
            wait_for("the run's process", Duration::from_secs(60), || {
                let events = server.cli(&["events", id, "--json"]).json();
                events
                    .as_array()?
                    .iter()
                    .find(|e| e["kind"] == "run.started")
                    .and_then(|e| e["data"]["pgid"].as_i64())
            })
        })
        .collect();
    server.sigkill();
    for pgid in pgids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
    }

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

/// A script-engine agent file: it writes a file, sleeps, reports usage, says done.
fn agent_job(env: &Env, name: &str) -> std::path::PathBuf {
    let path = env.tmp.path().join(format!("{name}.md"));
    let text = format!(
        "---\ntitle: {name}\nrepo: {}\nengine: script\nmodel: claude-sonnet-4\nidempotency_key: {name}\n\
         steps:\n  - say: starting\n  - write: {name}.txt\n    content: before the restart\n\
         \x20 - sleep: 4\n  - append: {name}.txt\n    content: \", and after it\"\n\
         \x20 - usage: {{tokens_in: 1000, tokens_out: 100, cost_usd: 0.01}}\n  - say: done\n---\nAn agent.\n",
        env.repo().display()
    );
    std::fs::write(&path, text).expect("write agent job");
    path
}

#[test]
fn issue3_three_agents_keep_running_across_a_server_sigkill() {
    let env = Env::new();
    let flags = [
        "--seats",
        "3",
        "--lease-ttl",
        "60s",
        "--reaper-interval",
        "200ms",
    ];
    let server = env.serve(&flags);
    let files: Vec<std::path::PathBuf> = (0..3)
        .map(|i| agent_job(&env, &format!("agent-{i}")))
        .collect();
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let ids = submit(&server, &paths);
    assert_eq!(ids.len(), 3);
    // Wait until every agent has written its first file: they are mid-run.
    let pids: Vec<i64> = ids
        .iter()
        .map(|id| {
            wait_for("the agent's first step", Duration::from_secs(60), || {
                let events = server.cli(&["events", id, "--json"]).json();
                let events = events.as_array()?;
                let wrote = events.iter().any(|e| e["kind"] == "agent.tool_result");
                let pid = events
                    .iter()
                    .find(|e| e["kind"] == "run.started")
                    .and_then(|e| e["data"]["pid"].as_i64());
                if wrote { pid } else { None }
            })
        })
        .collect();
    server.sigkill();
    // The agents outlive the server.
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "agent process {pid} died with the server"
        );
    }

    let server = Server::start(&env.data(), &flags);
    for id in &ids {
        let j = server.wait_state(id, "succeeded", Duration::from_secs(90));
        let runs = j["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "job {id} ran once: {j:#}");
        assert_eq!(j["attempt"], 1, "{j:#}");
        assert_eq!(runs[0]["outcome"], "succeeded");
        let insights = &runs[0]["insights"];
        assert_eq!(insights["tokens_in"], 1000, "insights of job {id}: {j:#}");
        assert_eq!(insights["success"], true, "{j:#}");
        assert_eq!(runs[0]["files_changed"], 1, "{j:#}");
    }
    // The work done before and after the restart is in one commit per job. Delivery
    // follows the accepted finish, so a job may read succeeded a moment before its
    // branch exists: wait for the branch.
    for (i, id) in ids.iter().enumerate() {
        crate::harness::wait_for(
            &format!("branch gantry/{id} delivered"),
            Duration::from_secs(30),
            || {
                std::process::Command::new("git")
                    .arg("-C")
                    .arg(env.repo())
                    .args([
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        &format!("refs/heads/gantry/{id}"),
                    ])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
            },
        );
        let shown = crate::harness::git(
            &env.repo(),
            &["show", &format!("gantry/{id}:agent-{i}.txt")],
        );
        assert_eq!(shown, "before the restart, and after it");
    }
}
