//! `network: model` through the real `gantry serve` (issue 12): the run's command is
//! started by the binary's own `gantry sandbox-forward`, reaches a host the server's
//! gantry.toml allows through the egress proxy, and a refused host is an event.

use crate::harness::Env;
use std::io::Write;
use std::time::Duration;

#[test]
fn issue12_a_model_run_reaches_the_configured_host_through_gantry_sandbox_forward() {
    let env = Env::new();
    // A host service on 127.0.0.1: only the operator's allowlist may open it to runs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nreached-through-gantry");
        }
    });
    std::fs::create_dir_all(env.data()).expect("data dir");
    std::fs::write(
        env.data().join("gantry.toml"),
        format!("[factory]\negress_allow = [\"127.0.0.1:{port}\"]\n"),
    )
    .expect("write gantry.toml");
    let server = env.serve(&[]);
    let script = format!(
        "p=${{HTTPS_PROXY##*:}}; \
         printf \"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n\" | busybox nc -w 5 127.0.0.1 $p; echo; \
         printf \"CONNECT denied.example:443 HTTP/1.1\\r\\n\\r\\n\" | busybox nc -w 5 127.0.0.1 $p; echo; \
         busybox nc -w 2 127.0.0.1 {port} </dev/null; echo; echo end-of-probe"
    );
    let job = env.job(
        "model",
        "sandbox: { kind: bwrap, network: model }\n",
        &script,
    );
    let out = server.cli(&["submit", job.to_str().expect("utf8")]);
    out.ok();
    let id = out.stdout.trim().to_string();
    let state = server.wait_state(&id, "succeeded", Duration::from_secs(60));
    assert_eq!(state["state"], "succeeded", "{state:#}");
    let logs = server.cli(&["logs", &id]);
    logs.ok();
    assert!(logs.stdout.contains("end-of-probe"), "{logs}");
    assert_eq!(
        logs.stdout.matches("reached-through-gantry").count(),
        1,
        "through the proxy once, directly never: {logs}"
    );
    assert!(logs.stdout.contains("403 Forbidden"), "{logs}");
    let events = server.cli(&["events", &id, "--json"]);
    events.ok();
    let denied: Vec<serde_json::Value> = events
        .json()
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "sandbox.egress_denied")
        .cloned()
        .collect();
    assert_eq!(denied.len(), 1, "{events}");
    assert_eq!(denied[0]["data"]["host"], "denied.example");
    assert_eq!(denied[0]["data"]["port"], 443);
    server.stop();
}
