//! `gantry factory` (issue 4): a remote factory over HTTP runs the jobs of a server
//! that has none of its own, its succeeded runs are delivered although the server has
//! none of its objects, their diffs are served from the store, and it stops cleanly on
//! SIGTERM.

use crate::harness::{Env, Server, gantry, git, submit, wait_for};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Creates a factory token named `name` and starts `gantry factory` with it and a data
/// dir of its own, `data` (as on another machine).
fn start_factory(server: &Server, name: &str, data: &Path) -> Child {
    let token = crate::harness::create_token(server, name, "factory");
    gantry()
        .args([
            "factory",
            "--url",
            &server.url,
            "--token",
            &token,
            "--data-dir",
        ])
        .arg(data)
        .args(["--name", name, "--seats", "2", "--min-free-memory", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gantry factory")
}

/// SIGTERMs the factory and checks that it exits 0.
fn stop_factory(mut factory: Child) {
    let pid = i32::try_from(factory.id()).expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let code = wait_for("the factory to exit", Duration::from_secs(30), || {
        factory.try_wait().expect("try_wait")
    });
    let mut err = String::new();
    if let Some(mut e) = factory.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(code.success(), "gantry factory exited {code:?}: {err}");
}

/// The refs of `repo` under `prefix`, one per line.
fn refs_under(repo: &Path, prefix: &str) -> String {
    git(repo, &["for-each-ref", "--format=%(refname)", prefix])
        .trim()
        .to_string()
}

#[test]
fn issue4_a_remote_factory_runs_jobs_and_stops_on_sigterm() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let factory_data = env.tmp.path().join("factory-data");
    let factory = start_factory(&server, "worker-1", &factory_data);

    let a = env.job("remote-a", "", "echo a > a.txt");
    let b = env.job("remote-b", "", "echo b > b.txt; exit 3");
    let ids = submit(&server, &[a.as_path(), b.as_path()]);
    let done = server.wait_state(&ids[0], "succeeded", Duration::from_secs(60));
    assert_eq!(done["runs"][0]["files_changed"], 1, "{done:#}");
    assert_eq!(done["runs"][0]["branch"], format!("gantry/{}/a1", ids[0]));
    let failed = wait_for("the failing job to fail", Duration::from_secs(90), || {
        let j = server.job(&ids[1]);
        (j["state"] == "failed").then_some(j)
    });
    assert_eq!(failed["runs"][0]["exit_code"], 3, "{failed:#}");
    // The worktrees are the factory's, under its own data dir.
    assert!(factory_data.join("repos").is_dir());

    // SIGTERM: the factory stops and exits 0.
    stop_factory(factory);
}

#[test]
fn issue4_a_remote_factorys_run_is_delivered_and_its_diff_served_from_the_store() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let factory_data = env.tmp.path().join("factory-data");
    let factory = start_factory(&server, "worker-1", &factory_data);
    let job = env.job("deliver", "", "printf \"remote change\\n\" > README.md");
    let id = submit(&server, &[job.as_path()]).remove(0);
    let done = server.wait_state(&id, "succeeded", Duration::from_secs(60));
    let commit = done["runs"][0]["commit"]
        .as_str()
        .expect("the run's commit")
        .to_string();

    // The delivery follows the accepted finish: its event comes once the branch is
    // pushed and the result ref removed.
    let pushed = wait_for("the delivery", Duration::from_secs(60), || {
        let events = server.cli(&["events", &id, "--json"]).json();
        let events = events.as_array()?.clone();
        if let Some(failed) = events.iter().find(|e| e["kind"] == "delivery.failed") {
            panic!("the delivery failed: {failed:#}");
        }
        events.into_iter().find(|e| e["kind"] == "delivery.pushed")
    });
    assert_eq!(pushed["data"]["commit"], commit.as_str(), "{pushed:#}");
    let repo = env.repo();
    let branch = format!("gantry/{id}");
    assert_eq!(
        git(&repo, &["rev-parse", &branch]).trim(),
        commit,
        "{}",
        server.log_text()
    );
    assert_eq!(
        git(&repo, &["show", &format!("{branch}:README.md")]),
        "remote change"
    );
    assert_eq!(
        refs_under(&repo, "refs/gantry/results"),
        "",
        "no result ref is left"
    );
    // The server delivered a commit only the factory had made: its objects came from
    // the result ref into a cache of the server's own.
    assert!(server.data_dir.join("repos").is_dir());

    let diff = server.cli(&["diff", &id]);
    diff.ok();
    assert!(
        diff.stdout.contains("+remote change") && diff.stdout.contains("-# test repo"),
        "{diff}"
    );
    // Served from the store: the server's data dir holds no artifacts of the run.
    assert!(!server.data_dir.join("artifacts").join(&id).exists());
    stop_factory(factory);
}

#[test]
fn issue4_a_server_with_push_off_gets_no_result_ref_from_a_remote_factory() {
    let env = Env::new();
    let server = env.serve(&["--no-factory", "--no-push"]);
    let factory_data = env.tmp.path().join("factory-data");
    let factory = start_factory(&server, "worker-1", &factory_data);
    let job = env.job("no-push", "", "echo kept > kept.txt");
    let id = submit(&server, &[job.as_path()]).remove(0);
    server.wait_state(&id, "succeeded", Duration::from_secs(60));
    let repo = env.repo();
    assert_eq!(refs_under(&repo, "refs/gantry"), "", "nothing published");
    assert_eq!(
        refs_under(&repo, "refs/heads/gantry"),
        "",
        "nothing delivered"
    );
    let diff = server.cli(&["diff", &id]);
    diff.ok();
    assert!(diff.stdout.contains("+kept"), "{diff}");
    stop_factory(factory);
}
