//! `sandbox:` in a job file (issue 12): a kind's name or a map with the Docker image,
//! network and limits; the kind becomes a required capability; every bad key or value
//! is refused naming file, line and field.

use gantry_core::JobSpec;
use gantry_core::SpecError;
use gantry_core::sandbox::{HostPort, MAX_ALLOW, Network, SandboxKind, SandboxSpec};
use gantry_core::spec::parse_job_file;

fn parse(front: &str) -> JobSpec {
    match parse_job_file("jobs/a.md", &format!("---\n{front}---\nDo it.\n")) {
        Ok(p) => p.spec,
        Err(e) => panic!("expected {front:?} to parse, got: {e}"),
    }
}

fn refuse(front: &str, line: usize, needle: &str) -> SpecError {
    let e = match parse_job_file("jobs/a.md", &format!("---\n{front}---\nDo it.\n")) {
        Ok(p) => panic!("expected an error for {front:?}, got {:#?}", p.spec),
        Err(e) => e,
    };
    assert_eq!(e.field.as_deref(), Some("sandbox"), "field of: {e}");
    assert_eq!(e.line, Some(line), "line of: {e}");
    assert!(
        e.message.contains(needle),
        "{:?} should contain {needle:?}",
        e.message
    );
    e
}

const HEAD: &str = "title: t\nrepo: /src/r\ncommand: [true]\n";

#[test]
fn a_kind_by_name_requires_its_capability() {
    let s = parse(&format!("{HEAD}capabilities: [gpu]\nsandbox: bwrap\n"));
    assert_eq!(s.sandbox, Some(SandboxSpec::of(SandboxKind::Bwrap)));
    assert_eq!(s.capabilities, vec!["gpu", "sandbox:bwrap"]);
    let s = parse(&format!(
        "{HEAD}capabilities: [sandbox:none]\nsandbox: none\n"
    ));
    assert_eq!(s.capabilities, vec!["sandbox:none"], "not added twice");
    let s = parse(HEAD);
    assert_eq!(s.sandbox, None);
    assert!(s.capabilities.is_empty());
}

#[test]
fn bwrap_takes_the_limits_and_none_refuses_them() {
    let s = parse(&format!(
        "{HEAD}sandbox: {{ kind: bwrap, memory: 512m, cpus: 0.5, pids: 64 }}\n"
    ));
    let sb = s.sandbox.expect("sandbox");
    assert_eq!(sb.kind, SandboxKind::Bwrap);
    assert_eq!(sb.memory_bytes, Some(512 << 20));
    assert_eq!(sb.nano_cpus, Some(500_000_000));
    assert_eq!(sb.pids, Some(64));
    assert_eq!(sb.image, None);
    refuse(
        &format!("{HEAD}sandbox:\n  kind: none\n  pids: 64\n"),
        7,
        "sandbox.pids applies to the bwrap and docker kinds, not to none",
    );
}

#[test]
fn a_docker_map_with_every_key() {
    let s = parse(&format!(
        "{HEAD}sandbox: {{ kind: docker, image: gantry-agent:latest, network: full, memory: 2g, cpus: 1.5, pids: 512 }}\n"
    ));
    let sb = s.sandbox.expect("sandbox");
    assert_eq!(sb.kind, SandboxKind::Docker);
    assert_eq!(sb.image.as_deref(), Some("gantry-agent:latest"));
    assert_eq!(sb.network, Some(Network::Full));
    assert_eq!(sb.memory_bytes, Some(2 << 30));
    assert_eq!(sb.nano_cpus, Some(1_500_000_000));
    assert_eq!(sb.pids, Some(512));
    assert_eq!(s.capabilities, vec!["sandbox:docker"]);
    // The spec survives the wire and the database.
    let json = serde_json::to_string(&sb).expect("json");
    let back: SandboxSpec = serde_json::from_str(&json).expect("back");
    assert_eq!(back, sb);
}

#[test]
fn bad_sandboxes_name_the_line_and_the_problem() {
    refuse(
        &format!("{HEAD}sandbox: podman\n"),
        5,
        "unknown sandbox kind \"podman\"",
    );
    refuse(
        &format!("{HEAD}sandbox: [docker]\n"),
        5,
        "expected a sandbox kind",
    );
    refuse(
        &format!("{HEAD}sandbox: {{ image: x }}\n"),
        5,
        "needs a `kind:`",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  memroy: 2g\n"),
        7,
        "unknown key \"memroy\"",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  kind: bwrap\n"),
        7,
        "duplicate key `kind` (first set on line 6)",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: bwrap\n  image: x\n"),
        7,
        "applies to the docker kind only",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  network: lan\n"),
        7,
        "one of none, model, full",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  memory: 2x\n"),
        7,
        "unit",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  memory: 1k\n"),
        7,
        "at least 6m",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  cpus: 0\n"),
        7,
        "above 0.001",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  cpus: two\n"),
        7,
        "a number of CPUs",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  pids: 1\n"),
        7,
        "whole number",
    );
    refuse(
        &format!("{HEAD}sandbox:\n  kind: docker\n  image: \"-rm\"\n"),
        7,
        "image reference",
    );
}

#[test]
fn network_and_allow_apply_to_bwrap_and_docker() {
    let s = parse(&format!(
        "{HEAD}sandbox: {{ kind: bwrap, network: model, allow: [example.com, 127.0.0.1:8080, \"[::1]:9\"] }}\n"
    ));
    let sb = s.sandbox.expect("sandbox");
    assert_eq!(sb.kind, SandboxKind::Bwrap);
    assert_eq!(sb.network, Some(Network::Model));
    let allow: Vec<String> = sb.allow.iter().map(HostPort::to_string).collect();
    assert_eq!(allow, ["example.com:443", "127.0.0.1:8080", "[::1]:9"]);
    let json = serde_json::to_string(&sb).expect("json");
    assert!(json.contains("\"127.0.0.1:8080\""), "{json}");
    let back: SandboxSpec = serde_json::from_str(&json).expect("back");
    assert_eq!(back, sb);
    let s = parse(&format!(
        "{HEAD}sandbox:\n  kind: docker\n  network: model\n  allow:\n    - api.example.com:8443\n"
    ));
    assert_eq!(s.sandbox.expect("sandbox").allow[0].port, 8443);
    let s = parse(&format!(
        "{HEAD}sandbox: {{ kind: bwrap, network: full }}\n"
    ));
    assert_eq!(s.sandbox.expect("sandbox").network, Some(Network::Full));
}

#[test]
fn bad_allow_entries_name_the_value() {
    refuse(
        &format!("{HEAD}sandbox: {{ kind: bwrap, network: model, allow: [\"example.com:0\"] }}\n"),
        5,
        "\"example.com:0\" is not a host[:port] (port 0 is not a port)",
    );
    refuse(
        &format!(
            "{HEAD}sandbox:\n  kind: docker\n  network: model\n  allow:\n    - ok.com\n    - \"bad host\"\n"
        ),
        10,
        "\"bad host\" is not a host[:port]",
    );
    refuse(
        &format!("{HEAD}sandbox: {{ kind: bwrap, network: model, allow: example.com }}\n"),
        5,
        "a list of hosts",
    );
    refuse(
        &format!("{HEAD}sandbox: {{ kind: bwrap, allow: [example.com] }}\n"),
        5,
        "needs `network: model`",
    );
    refuse(
        &format!("{HEAD}sandbox: {{ kind: none, network: full }}\n"),
        5,
        "not to none",
    );
    let many: Vec<String> = (0..=MAX_ALLOW).map(|i| format!("h{i}.com")).collect();
    refuse(
        &format!(
            "{HEAD}sandbox: {{ kind: bwrap, network: model, allow: [{}] }}\n",
            many.join(", ")
        ),
        5,
        &format!("{} entries; at most {MAX_ALLOW}", MAX_ALLOW + 1),
    );
}
