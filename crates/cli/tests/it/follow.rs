//! events and logs, with and without --follow (always under a hang guard).

use crate::harness::{Env, submit};
use std::time::Duration;

const GUARD: Duration = Duration::from_secs(60);

#[test]
fn logs_and_events_follow_a_running_job_to_its_end() {
    let env = Env::new();
    let server = env.serve(&[]);
    let job = env.job(
        "chatty",
        "",
        "echo out-1; sleep 0.3; echo err-1 >&2; sleep 0.3; echo out-2; sleep 1; echo out-3 > result.txt; echo done",
    );
    let id = submit(&server, &[&job]).remove(0);

    // Both follows start while the job is queued or running, and must end on their
    // own when it finishes.
    let (logs, events) = std::thread::scope(|s| {
        let logs = s.spawn(|| server.cli_timeout(&["logs", &id, "--follow"], GUARD));
        let events = s.spawn(|| server.cli_timeout(&["events", &id, "--follow", "--json"], GUARD));
        (logs.join().unwrap(), events.join().unwrap())
    });
    logs.ok();
    events.ok();
    let j = server.job(&id);
    assert_eq!(j["state"], "succeeded", "{j:#}");

    // stdout and stderr interleaved in the order they were written.
    let text = &logs.stdout;
    let pos = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("logs have {needle:?}\n{logs}"))
    };
    assert!(
        pos("out-1") < pos("err-1") && pos("err-1") < pos("out-2") && pos("out-2") < pos("done"),
        "{logs}"
    );

    // events --follow --json: one JSON event per line, ids increasing, the whole life.
    let evs: Vec<serde_json::Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let ids: Vec<i64> = evs.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let kinds: Vec<&str> = evs.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for k in [
        "job.submitted",
        "run.claimed",
        "run.started",
        "run.output",
        "run.finished",
    ] {
        assert!(kinds.contains(&k), "followed events include {k}: {kinds:?}");
    }
    assert!(
        evs.iter()
            .all(|e| e["job_id"].as_i64().map(|j| j.to_string()) == Some(id.clone()))
    );

    // Without --follow: the same history, as a JSON array and as lines.
    let all = server.cli(&["events", &id, "--json"]);
    all.ok();
    let arr = all.json();
    let arr = arr.as_array().unwrap();
    assert!(arr.len() >= evs.len(), "{all}");
    let human = server.cli(&["events", &id]);
    human.ok();
    assert!(
        human.stdout.contains("run.finished") && human.stdout.contains("succeeded exit 0"),
        "{human}"
    );
    assert!(human.stdout.contains("[stderr] err-1"), "{human}");

    // logs without --follow of a finished job print the same text.
    let again = server.cli(&["logs", &id]);
    again.ok();
    assert_eq!(again.stdout, logs.stdout);
    let json = server.cli(&["logs", &id, "--json"]);
    json.ok();
    assert!(
        json.json()
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] == "run.output"),
        "{json}"
    );
}

#[test]
fn follow_of_a_failed_job_ends_and_follow_of_a_finished_one_returns_at_once() {
    let env = Env::new();
    let server = env.serve(&[]);
    let job = env.job(
        "fails",
        "max_attempts: 1\n",
        "echo about to fail; sleep 0.5; exit 3",
    );
    let id = submit(&server, &[&job]).remove(0);
    let out = server.cli_timeout(&["events", &id, "--follow"], GUARD);
    out.ok();
    assert!(out.stdout.contains("failed exit 3"), "{out}");
    assert!(out.stdout.contains("-> failed"), "{out}");
    let out = server.cli_timeout(&["logs", &id, "--follow"], GUARD);
    out.ok();
    assert_eq!(out.stdout, "about to fail\n");

    let missing = server.cli_timeout(&["logs", "4242", "--follow"], GUARD);
    missing.expect_code(1);
    assert!(missing.stderr.contains("4242"), "{missing}");
}

#[test]
fn follow_survives_a_server_restart_without_losing_or_repeating_events() {
    let env = Env::new();
    let first = env.serve(&["--lease-ttl", "2s", "--reaper-interval", "200ms"]);
    let port = first.url.rsplit(':').next().unwrap().to_string();
    let listen = format!("127.0.0.1:{port}");
    // The first attempt dies with the server; the retry runs after the restart.
    let job = env.job(
        "survivor",
        "backoff: 100ms\n",
        "echo attempt $GANTRY_ATTEMPT; sleep 1.5; echo finished",
    );
    let id = submit(&first, &[&job]).remove(0);
    first.wait_state(&id, "running", GUARD);

    let (url, data, jid) = (first.url.clone(), env.data(), id.clone());
    let (following, under_way) = std::sync::mpsc::channel();
    let follower = std::thread::spawn(move || {
        let mut c = crate::harness::gantry();
        c.arg("--url")
            .arg(&url)
            .arg("--data-dir")
            .arg(&data)
            .args(["events", &jid, "--follow", "--json"]);
        crate::harness::run_telling_first_line(c, GUARD, Some(following))
    });
    // The follower has read from the first server before it stops, so the restart
    // happens mid-stream.
    under_way
        .recv_timeout(GUARD)
        .expect("the follower prints the events so far");
    assert_eq!(first.stop(), Some(0), "SIGTERM stops serve cleanly");
    let second = crate::harness::Server::start(
        &env.data(),
        &[
            "--listen",
            &listen,
            "--lease-ttl",
            "2s",
            "--reaper-interval",
            "200ms",
        ],
    );
    assert_eq!(second.url, format!("http://{listen}"));

    let out = follower.join().unwrap();
    out.ok();
    let done = second.job(&id);
    assert_eq!(
        done["state"], "succeeded",
        "the follow ended with the job\n{done:#}"
    );
    assert!(done["runs"].as_array().unwrap().len() >= 2, "{done:#}");

    let followed: Vec<i64> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let all = second.cli(&["events", &id, "--json"]).json();
    let stored: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(
        followed.windows(2).all(|w| w[0] < w[1]),
        "no repeats: {followed:?}"
    );
    let end = *followed.last().unwrap();
    let upto: Vec<i64> = stored.iter().copied().filter(|e| *e <= end).collect();
    assert_eq!(followed, upto, "no event lost across the restart");
    assert!(out.stdout.contains("\"run.finished\""), "{out}");
    assert!(
        out.stdout.contains("\"lease.expired\"") || out.stdout.contains("\"lost\""),
        "the killed attempt shows as lost\n{out}"
    );
}
