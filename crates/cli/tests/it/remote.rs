//! `gantry factory` (issue 4): a remote factory over HTTP runs the jobs of a server
//! that has none of its own, and stops cleanly on SIGTERM.

use crate::harness::{Env, gantry, submit, wait_for};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn issue4_a_remote_factory_runs_jobs_and_stops_on_sigterm() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let created = server.cli(&[
        "token", "create", "--name", "worker-1", "--scope", "factory",
    ]);
    created.ok();
    let token = created
        .stdout
        .lines()
        .find(|l| l.starts_with("gtk_"))
        .expect("the new token's secret")
        .trim()
        .to_string();
    let factory_data = env.tmp.path().join("factory-data");
    let mut factory = gantry()
        .args([
            "factory",
            "--url",
            &server.url,
            "--token",
            &token,
            "--data-dir",
        ])
        .arg(&factory_data)
        .args([
            "--name",
            "worker-1",
            "--seats",
            "2",
            "--min-free-memory",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gantry factory");

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
