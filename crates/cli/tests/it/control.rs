//! cancel, kill, kill --all, pause/resume and retry against real running processes.

use crate::harness::{Env, submit, wait_for};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn cancel_then_retry_then_kill() {
    let env = Env::new();
    let server = env.serve(&["--seats", "2", "--kill-grace", "1s"]);
    let sleeper = env.job("sleeper", "", "echo started; sleep 60");
    let id = submit(&server, &[&sleeper]).remove(0);
    server.wait_state(&id, "running", LONG);

    let out = server.cli(&["cancel", &id]);
    out.ok();
    assert!(out.stdout.contains(&format!("job {id}:")), "{out}");
    let j = server.wait_state(&id, "canceled", LONG);
    assert_eq!(j["runs"][0]["outcome"], "canceled", "{j:#}");

    let out = server.cli(&["retry", &id, "--json"]);
    out.ok();
    let after = out.json();
    assert!(
        after["state"] == "queued" || after["state"] == "running",
        "{after:#}"
    );
    assert!(after["max_attempts"].as_u64().unwrap() >= 2, "{after:#}");
    let j = wait_for("the retried job to run again", LONG, || {
        let j = server.job(&id);
        (j["state"] == "running" && j["runs"].as_array().map(Vec::len) == Some(2)).then_some(j)
    });
    assert_eq!(j["runs"][1]["attempt"], 2, "{j:#}");

    let out = server.cli(&["kill", &id]);
    out.ok();
    let j = server.wait_state(&id, "killed", LONG);
    assert_eq!(j["runs"][1]["outcome"], "killed", "{j:#}");

    // Retrying a job that is not finished is a conflict with a clear error.
    let queued = env.job("never-runs", "capabilities: [unicorn]\n", "true");
    let qid = submit(&server, &[&queued]).remove(0);
    let out = server.cli(&["retry", &qid]);
    out.expect_code(1);
    assert!(out.stderr.starts_with("Error:"), "{out}");
    // Killing a queued job ends it at once.
    let out = server.cli(&["kill", &qid, "--json"]);
    out.ok();
    assert_eq!(out.json()["state"], "killed", "{out}");
}

#[test]
fn kill_all_pauses_and_resume_restarts_claiming() {
    let env = Env::new();
    let server = env.serve(&["--seats", "2"]);
    let a = env.job("sleep-a", "", "sleep 60");
    let b = env.job("sleep-b", "", "sleep 60");
    let ids = submit(&server, &[&a, &b]);
    for id in &ids {
        server.wait_state(id, "running", LONG);
    }

    let out = server.cli(&["kill", "--all", "--json"]);
    out.ok();
    let mut killed: Vec<String> = out.json()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap().to_string())
        .collect();
    killed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(killed, expected, "{out}");
    for id in &ids {
        server.wait_state(id, "killed", LONG);
    }
    let st = server.cli(&["status", "--json"]);
    assert_eq!(
        st.json()["paused"],
        true,
        "kill --all pauses claiming\n{st}"
    );
    let st = server.cli(&["status"]);
    assert!(st.stdout.contains("paused"), "{st}");

    // Nothing starts while paused.
    let c = env.job("after-pause", "", "echo ran");
    let cid = submit(&server, &[&c]).remove(0);
    crate::harness::Api::new(&server.url, &server.admin_token()).wait_claims_found_nothing(1);
    assert_eq!(
        server.job(&cid)["state"],
        "queued",
        "a paused queue starts nothing"
    );

    let out = server.cli(&["resume"]);
    out.ok();
    assert!(out.stdout.contains("claiming: active"), "{out}");
    server.wait_state(&cid, "succeeded", LONG);

    // pause and resume by hand, human and JSON.
    let out = server.cli(&["pause", "--json"]);
    out.ok();
    assert_eq!(out.json()["paused"], true);
    let out = server.cli(&["resume", "--json"]);
    assert_eq!(out.json()["paused"], false);

    // kill --all with nothing running still pauses, and says so.
    let out = server.cli(&["kill", "--all"]);
    out.ok();
    assert!(out.stdout.contains("no running jobs"), "{out}");
    assert!(out.stderr.contains("gantry resume"), "{out}");
}

#[test]
fn serve_says_where_it_listens_and_stops_on_sigterm() {
    let env = Env::new();
    let server = env.serve(&["--seats", "1"]);
    let token_path = env.data().join("admin.token");
    let token_line = format!("admin token: {}", token_path.display());
    // The lines after the listening one may still be on their way.
    let said = wait_for("serve to print the admin token's path", LONG, || {
        let said = server.stdout();
        said.contains(&token_line).then_some(said)
    });
    assert!(
        said.contains(&format!("listening on {}", server.url)),
        "{said}"
    );
    let meta = std::fs::metadata(&token_path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "admin.token is private"
    );
    // A second server on the same port is refused with a clear error.
    let port = server.url.rsplit(':').next().unwrap().to_string();
    let other = env.tmp.path().join("other-data");
    let out = crate::harness::run(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{port}")) && out.stderr.contains("Hint:"),
        "{out}"
    );
    assert_eq!(
        server.stop(),
        Some(0),
        "SIGTERM shuts serve down gracefully with exit code 0"
    );
}
