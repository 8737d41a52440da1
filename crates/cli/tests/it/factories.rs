//! `gantry factories` (issue 4): the registered factories with their seats, running
//! jobs, capabilities and health, as a table and as JSON.

use crate::harness::{Env, submit};
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
    assert_eq!(f["capabilities"], serde_json::json!(["gpu=a100"]), "{f:#}");
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
