//! Scenarios 1 and 2: a remote factory dies (SIGKILL) or freezes past its lease
//! (SIGSTOP, then SIGCONT) in the middle of a run.

use super::{
    LONG, Scene, assert_executions_match_runs, attempts, command_job, gated_script, host_pid, job,
    job_events, open_gate, run_process_alive, submit_texts, wait_claimed, wait_pid, wait_state,
};
use crate::harness::{Api, FactoryProc, RunSweeper, Server, create_token, git, wait_for};
use std::time::Duration;

/// A server without an embedded factory, a 3 s lease and a fast reaper, with two
/// remote factories of one seat each (one seat: a busy factory has no claim waiting on
/// the server that could take the job back while the factory is dead or frozen).
fn two_factories(scene: &Scene) -> (Server, Api, Vec<FactoryProc>, Vec<i64>, Vec<String>) {
    let server = scene.env.serve(&[
        "--no-factory",
        "--lease-ttl",
        "3s",
        "--reaper-interval",
        "200ms",
    ]);
    let api = Api::new(&server.url, &server.admin_token());
    let mut factories = Vec::new();
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for name in ["chaos-a", "chaos-b"] {
        let token = create_token(&server, name, "factory");
        let f = FactoryProc::start(&server.url, &token, name, 1, &scene.dir(name), &[]);
        ids.push(f.id(&server));
        factories.push(f);
        tokens.push(token);
    }
    (server, api, factories, ids, tokens)
}

/// Which of `ids` claimed: the index of the `run.claimed` event's factory.
#[track_caller]
fn claimer(claimed: &serde_json::Value, ids: &[i64]) -> usize {
    let factory = claimed["data"]["factory"]
        .as_i64()
        .unwrap_or_else(|| panic!("run.claimed names its factory: {claimed}"));
    ids.iter()
        .position(|id| *id == factory)
        .unwrap_or_else(|| panic!("factory {factory} is not one of ours {ids:?}: {claimed}"))
}

#[test]
fn issue4_chaos_sigkill_a_remote_factory_mid_run() {
    let sweeper = RunSweeper::new("sigkill-factory");
    let scene = Scene::new();
    let (server, api, mut factories, ids, _) = two_factories(&scene);
    let gate = scene.runs().join("gate");
    let text = command_job(
        "killed-factory",
        &scene.repo(),
        &gated_script(&scene.runs(), "job", &gate),
        &format!("max_attempts: 3\nbackoff: 100ms\n{}", sweeper.env_line()),
    );
    let id = submit_texts(&api, &[("killed-factory.md".to_string(), text)])[0];

    let first = wait_claimed(&api, id, 1);
    let dead = claimer(&first, &ids);
    let live = 1 - dead;
    let pid1 = wait_pid(&scene.runs(), "job", 1);
    assert!(run_process_alive(&sweeper, pid1), "attempt 1 runs");
    factories[dead].sigkill();

    // The lease runs out, the reaper takes the job back, the other factory claims it.
    let second = wait_claimed(&api, id, 2);
    assert_eq!(
        claimer(&second, &ids),
        live,
        "attempt 2 runs on the surviving factory {}: {second}",
        factories[live].name
    );
    let pid2 = wait_pid(&scene.runs(), "job", 2);
    assert_ne!(pid1, pid2);
    open_gate(&gate);
    let done = wait_state(&api, id, "succeeded", &server);

    let runs = done["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "two attempts: {done:#}");
    assert_eq!(runs[0]["attempt"], 1);
    assert_eq!(
        runs[0]["outcome"], "lost",
        "the killed attempt is lost: {done:#}"
    );
    assert_eq!(runs[0]["factory_id"], ids[dead], "{done:#}");
    assert!(
        runs[0]["commit"].is_null(),
        "a lost attempt has no commit: {done:#}"
    );
    assert_eq!(runs[1]["attempt"], 2);
    assert_eq!(runs[1]["outcome"], "succeeded", "{done:#}");
    assert_eq!(runs[1]["factory_id"], ids[live], "{done:#}");
    let (run1, run2) = (
        runs[0]["id"].as_i64().unwrap(),
        runs[1]["id"].as_i64().unwrap(),
    );

    let events = job_events(&api, id);
    let tried = attempts(&events);
    let outcomes: Vec<(i64, Option<String>)> =
        tried.iter().map(|a| (a.run, a.outcome.clone())).collect();
    assert_eq!(
        outcomes,
        vec![
            (run1, Some("lost".to_string())),
            (run2, Some("succeeded".to_string()))
        ],
        "the event log: attempt 1 lost, attempt 2 succeeded"
    );
    let expired: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "lease.expired")
        .collect();
    assert_eq!(expired.len(), 1, "one lease expiry: {expired:?}");
    assert_eq!(expired[0]["data"]["run"], run1);
    assert_eq!(expired[0]["data"]["epoch"], runs[0]["epoch"]);
    let requeued = events.iter().any(|e| {
        e["kind"] == "job.state"
            && e["data"]["from"] == "running"
            && e["data"]["to"] == "queued"
            && e["id"].as_i64() > expired[0]["id"].as_i64()
    });
    assert!(
        requeued,
        "the lost attempt sent the job back to the queue: {events:#?}"
    );
    let finished: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "run.finished")
        .collect();
    assert_eq!(finished.len(), 1, "only attempt 2 finished: {finished:?}");
    assert_eq!(finished[0]["run_id"], run2);
    // Nothing of the dead factory's attempt was accepted after its lease expired.
    let late: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["run_id"] == run1 && e["id"].as_i64() > expired[0]["id"].as_i64())
        .collect();
    assert!(
        late.is_empty(),
        "writes of the lost attempt after its expiry: {late:?}"
    );
    let reached = events
        .iter()
        .filter(|e| e["kind"] == "job.state" && e["data"]["to"] == "succeeded")
        .count();
    assert_eq!(reached, 1, "the job succeeded exactly once");
    assert_executions_match_runs(&api, &scene.runs(), "job", id);
    drop(factories);
    drop(server);
}

#[test]
fn issue4_chaos_sigstop_a_factory_past_its_lease() {
    let sweeper = RunSweeper::new("sigstop-factory");
    let scene = Scene::new();
    let (server, api, factories, ids, tokens) = two_factories(&scene);
    let runs_dir = scene.runs();
    let nonce = sweeper.mark.clone();
    // Each attempt writes its own content, then prints a line every 50 ms (so a frozen
    // factory has output to upload when it wakes) until its own gate opens.
    let script = format!(
        "echo $GANTRY_RUN_ID >> {d}/runs-job; \
         echo $$ $GANTRY_WORKSPACE > {d}/pid-$GANTRY_ATTEMPT.tmp && mv {d}/pid-$GANTRY_ATTEMPT.tmp {d}/pid-$GANTRY_ATTEMPT; \
         echo \"content of attempt $GANTRY_ATTEMPT ({nonce})\" > result.txt; \
         while [ ! -e {d}/gate-$GANTRY_ATTEMPT ]; do echo tick; sleep 0.05; done",
        d = runs_dir.display()
    );
    let text = command_job(
        "frozen-factory",
        &scene.repo(),
        &script,
        &format!("max_attempts: 3\nbackoff: 100ms\n{}", sweeper.env_line()),
    );
    let id = submit_texts(&api, &[("frozen-factory.md".to_string(), text)])[0];

    let first = wait_claimed(&api, id, 1);
    let frozen = claimer(&first, &ids);
    let (run1, epoch1) = (
        first["data"]["run"].as_i64().expect("the claimed run"),
        first["data"]["epoch"].as_i64().expect("the claimed epoch"),
    );
    let pid1 = wait_for("attempt 1's pid file", LONG, || {
        host_pid(&runs_dir.join("pid-1"))
    });
    // The attempt has written to the server under its lease before the freeze.
    wait_for("attempt 1's run.started event", LONG, || {
        job_events(&api, id)
            .iter()
            .any(|e| e["kind"] == "run.started")
            .then_some(())
    });
    let stale_before = api.counter("gantry_stale_writes_total");
    factories[frozen].sigstop();

    let second = wait_claimed(&api, id, 2);
    let other = claimer(&second, &ids);
    assert_ne!(other, frozen, "the frozen factory cannot claim: {second}");
    let second_claim = second["id"].as_i64().expect("event id");
    assert!(second["data"]["epoch"].as_i64() > Some(epoch1), "{second}");
    wait_for("attempt 2's pid file", LONG, || {
        host_pid(&runs_dir.join("pid-2"))
    });
    assert!(
        run_process_alive(&sweeper, pid1),
        "attempt 1's process runs on while its factory is frozen"
    );

    factories[frozen].sigcont();
    wait_for(
        "the woken factory to kill attempt 1's process (its lease is gone)",
        Duration::from_secs(30),
        || (!run_process_alive(&sweeper, pid1)).then_some(()),
    );
    // The woken factory may have sent nothing stale: its own clock tells it the lease
    // expired, and an output upload races the kill. So no count is asserted here (it
    // would pass on zero refusals); whatever it sent is in the counts below, and the
    // end of the test checks that nothing of attempt 1 was applied.
    // Late writes of the old attempt, as a slower factory would send them with its own
    // token, are refused too, while attempt 2 runs and after the job succeeded: each of
    // the three is recorded as an event and counted in /metrics.
    let late = Api::new(&server.url, &tokens[frozen]);
    let woken = refusals(&api, id).len();
    send_stale_writes(&late, run1, epoch1);
    let recorded = assert_refusals_counted(&api, id, run1, woken + 3, stale_before);

    open_gate(&runs_dir.join("gate-2"));
    let done = wait_state(&api, id, "succeeded", &server);
    let runs = done["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{done:#}");
    assert_eq!(runs[0]["id"], run1, "{done:#}");
    let run2 = runs[1]["id"].as_i64().unwrap();
    assert_eq!(runs[0]["outcome"], "lost", "{done:#}");
    assert!(runs[0]["commit"].is_null(), "{done:#}");
    assert_eq!(runs[1]["outcome"], "succeeded", "{done:#}");

    wait_for("the delivery of attempt 2", LONG, || {
        job_events(&api, id)
            .iter()
            .any(|e| e["kind"] == "delivery.pushed" || e["kind"] == "delivery.failed")
            .then_some(())
    });
    send_stale_writes(&late, run1, epoch1);
    assert_refusals_counted(&api, id, run1, recorded + 3, stale_before);
    let events = job_events(&api, id);
    let expired = events
        .iter()
        .find(|e| e["kind"] == "lease.expired" && e["data"]["run"] == run1)
        .unwrap_or_else(|| panic!("attempt 1's lease expired: {events:#?}"));
    let expired_at = expired["id"].as_i64().unwrap();
    assert!(expired_at < second_claim);
    // Every write of attempt 1 after its lease expired was refused: the only events of
    // run 1 from then on are the refusals, and each was counted.
    let after: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["run_id"] == run1 && e["id"].as_i64().unwrap() > expired_at)
        .collect();
    let accepted: Vec<&&serde_json::Value> = after
        .iter()
        .filter(|e| e["kind"] != "lease.stale_write_rejected")
        .collect();
    assert!(
        accepted.is_empty(),
        "writes of the stale attempt were applied: {accepted:#?}"
    );
    assert!(after.len() >= 6, "the late writes were refused: {after:#?}");
    for refusal in &after {
        assert_eq!(refusal["data"]["epoch"], epoch1, "{refusal}");
        assert_eq!(
            refusal["data"]["current_epoch"], runs[1]["epoch"],
            "{refusal}"
        );
    }
    let finished: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"] == "run.finished")
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["run_id"], run2);
    assert_eq!(attempts(&events).len(), 2);
    assert_executions_match_runs(&api, &runs_dir, "job", id);
    assert_eq!(
        job(&api, id)["runs"][0]["outcome"],
        "lost",
        "run 1 stays lost"
    );

    // The delivered branch holds attempt 2's work; attempt 1's never reached the source.
    let delivered: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["kind"].as_str().unwrap_or("").starts_with("delivery."))
        .collect();
    assert!(
        delivered.len() == 1 && delivered[0]["kind"] == "delivery.pushed",
        "attempt 2 was delivered: {delivered:#?}\n--- server log ---\n{}",
        server.log_text()
    );
    assert_eq!(delivered[0]["run_id"], run2);
    let repo = scene.repo();
    assert_eq!(
        git(&repo, &["show", &format!("gantry/{id}:result.txt")]),
        format!("content of attempt 2 ({nonce})")
    );
    let blob1 = {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["hash-object", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(format!("content of attempt 1 ({nonce})\n").as_bytes())?;
                c.wait_with_output()
            })
            .expect("git hash-object");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let has_blob = std::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["cat-file", "-e", &blob1])
        .status()
        .expect("git cat-file");
    assert!(
        !has_blob.success(),
        "attempt 1's content ({blob1}) reached the source repo: refs\n{}",
        git(&repo, &["for-each-ref"])
    );
    let subjects = git(&repo, &["log", "--all", "--format=%s"]);
    assert!(
        !subjects.contains(&format!("gantry job {id} attempt 1:")),
        "a commit of attempt 1 is reachable from a ref of the source:\n{subjects}"
    );
    drop(factories);
    drop(server);
}

/// The `lease.stale_write_rejected` events of job `job`.
fn refusals(api: &Api, job: i64) -> Vec<serde_json::Value> {
    job_events(api, job)
        .into_iter()
        .filter(|e| e["kind"] == "lease.stale_write_rejected")
        .collect()
}

/// Waits until the server recorded at least `at_least` refused writes of job `job` (the
/// only job of the scenario), all of run `stale` (a refusal of any other run is a live
/// write refused), and `gantry_stale_writes_total` rose from `before` by exactly as
/// many. Returns how many were recorded.
#[track_caller]
fn assert_refusals_counted(api: &Api, job: i64, stale: i64, at_least: usize, before: f64) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let recorded = refusals(api, job);
        let counted = api.counter("gantry_stale_writes_total") - before;
        let others: Vec<&serde_json::Value> =
            recorded.iter().filter(|e| e["run_id"] != stale).collect();
        assert!(
            others.is_empty(),
            "writes of a live run were refused: {others:#?}"
        );
        if recorded.len() >= at_least && recorded.len() as f64 == counted {
            return recorded.len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server recorded {} refused writes (lease.stale_write_rejected events), \
             at least {at_least} expected, and counted {counted} in \
             gantry_stale_writes_total:\n{recorded:#?}",
            recorded.len(),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a renewal, an event upload and a finish of run `run` under `epoch`, as its
/// factory would (with its token); each must be refused with 409 `stale_lease`.
#[track_caller]
fn send_stale_writes(factory: &Api, run: i64, epoch: i64) {
    let writes = [
        ("renew", serde_json::json!({ "epoch": epoch })),
        (
            "events",
            serde_json::json!({ "epoch": epoch, "events": [
                { "kind": "run.output", "data": { "stream": "stdout", "text": "late\n" } }
            ] }),
        ),
        (
            "finish",
            serde_json::json!({ "epoch": epoch, "outcome": "succeeded", "exit_code": 0 }),
        ),
    ];
    for (op, body) in writes {
        let (status, text) = factory
            .post(&format!("/v1/runs/{run}/{op}"), &body)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            status, 409,
            "a late {op} of stale run {run}: HTTP {status}: {text}"
        );
        let err: serde_json::Value = serde_json::from_str(&text).expect("an error body");
        assert_eq!(
            err["error"], "stale_lease",
            "a late {op} of stale run {run}: {text}"
        );
    }
}
