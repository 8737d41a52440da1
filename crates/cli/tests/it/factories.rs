//! `gantry factories` (issue 4): the registered factories with their seats, running
//! jobs, capabilities, heartbeat figures, whether they claim (and why not) and health,
//! as a table and as JSON.

use crate::harness::{Env, Server, gantry, submit, wait_for};
use std::process::{Child, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn issue4_factories_lists_the_embedded_factory_with_its_running_job() {
    let env = Env::new();
    let server = env.serve(&["--seats", "3", "--cap", "gpu=a100"]);
    let sleeper = env.job("sleeper", "", "sleep 60");
    let id = submit(&server, &[&sleeper]).remove(0);
    server.wait_state(&id, "running", LONG);

    let out = server.cli(&["factories", "--json"]);
    out.ok();
    let list = out.json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{out}");
    let f = &list[0];
    assert_eq!(f["name"], "embedded", "{f:#}");
    assert_eq!(f["seats"], 3, "{f:#}");
    // Its own capability, and the sandbox it offers (a job's `sandbox:` requires it).
    assert_eq!(
        f["capabilities"],
        serde_json::json!(["gpu=a100", "sandbox:bwrap"]),
        "{f:#}"
    );
    assert_eq!(f["running"], 1, "{f:#}");
    // Its lease renewals count as signs of life.
    assert_eq!(f["health"], "up", "{f:#}");
    assert!(f["last_seen"].is_string(), "{f:#}");
    assert!(f["last_seen_ago_ms"].is_u64(), "{f:#}");

    let table = server.cli(&["factories"]);
    table.ok();
    let mut lines = table.stdout.lines();
    let header = lines.next().unwrap_or_default();
    for column in [
        "NAME",
        "SEATS",
        "RUNNING",
        "CAPABILITIES",
        "LAST SEEN",
        "HEALTH",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("embedded") && row.contains("gpu=a100") && row.ends_with("up"),
        "{table}"
    );

    server.cli(&["kill", &id]).ok();
    server.wait_state(&id, "killed", LONG);
    server.stop();
}

/// A `gantry factory` child, SIGKILLed if the test ends without stopping it.
struct FactoryProcess(Option<Child>);

impl FactoryProcess {
    /// Starts `gantry factory` for `server` with a token of scope factory, named
    /// `name`, with its data in `data` and `extra` arguments.
    fn start(server: &Server, name: &str, data: &std::path::Path, extra: &[&str]) -> Self {
        let token = crate::harness::create_token(server, name, "factory");
        let child = gantry()
            .args([
                "factory",
                "--url",
                &server.url,
                "--token",
                &token,
                "--data-dir",
            ])
            .arg(data)
            .args(["--name", name])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gantry factory");
        FactoryProcess(Some(child))
    }

    /// SIGTERMs the factory; it must exit 0.
    fn stop(mut self) {
        let mut child = self.0.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM gantry factory");
        let status = wait_for("the factory to exit", LONG, || {
            child.try_wait().expect("try_wait")
        });
        assert!(status.success(), "gantry factory exited {status:?}");
    }
}

impl Drop for FactoryProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn issue4_factories_show_the_heartbeat_and_why_a_factory_does_not_claim() {
    let env = Env::new();
    let server = env.serve(&["--no-factory"]);
    let data = env.tmp.path().join("factory-data");
    // No disk has this much free: the factory never claims, and says so.
    let factory = FactoryProcess::start(
        &server,
        "full-disk",
        &data,
        &["--min-free-memory", "0", "--min-free-disk", "999999999999"],
    );
    let listed = wait_for("the factory's first heartbeat", LONG, || {
        let out = server.cli(&["factories", "--json"]);
        out.ok();
        out.json()
            .as_array()
            .and_then(|l| l.iter().find(|f| f["name"] == "full-disk").cloned())
            .filter(|f| f["admission"].is_string())
    });
    let reason = listed["admission"].as_str().unwrap();
    assert!(
        reason.starts_with("not claiming: ")
            && reason.contains("free on the disk of")
            && reason.contains("under the minimum of 999999999999 MiB"),
        "{listed:#}"
    );
    assert!(
        listed["load_1m"].as_f64().is_some_and(|l| l >= 0.0),
        "{listed:#}"
    );
    assert!(
        listed["free_memory_mb"].as_u64().is_some_and(|m| m > 0),
        "{listed:#}"
    );
    assert!(listed["free_disk_mb"].is_u64(), "{listed:#}");
    assert_eq!(listed["health"], "up", "{listed:#}");
    let id = listed["id"].as_i64().unwrap();

    let table = server.cli(&["factories"]);
    table.ok();
    let mut lines = table.stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("CLAIMING") && header.ends_with("HEALTH"),
        "{table}"
    );
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("full-disk") && row.contains(" no ") && row.ends_with("up"),
        "{table}"
    );
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l == format!("full-disk ({id}): {reason}")),
        "the reason is printed under the table\n{table}"
    );

    let job = env.job("waits", "", "true");
    let job_id = submit(&server, &[&job]).remove(0);
    assert_eq!(server.job(&job_id)["state"], "queued");
    factory.stop();
    assert_eq!(
        server.job(&job_id)["state"],
        "queued",
        "a factory that does not claim never took the job"
    );
    server.stop();
}
