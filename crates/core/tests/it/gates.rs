//! Gates in job files (the job's own list, a profile's name, fix rounds) and the
//! figures a gate is judged by: lcov, Cobertura and a regex capture.

use gantry_core::SpecError;
use gantry_core::gate::{
    self, DEFAULT_FIX_ROUNDS, DEFAULT_GATE_TIMEOUT_MS, Gate, GateChoice, Metric, MetricError,
    MetricFormat,
};
use gantry_core::spec::parse_job_file;
use serde_json::json;

/// A valid command job's fields on lines 2 to 4; what the test adds starts on line 5.
const BASE: &str = "title: t\nrepo: /src/r\ncommand: [x]\n";

fn parse(front: &str) -> Result<gantry_core::JobSpec, SpecError> {
    parse_job_file("jobs/g.md", &format!("---\n{BASE}{front}---\nbody\n")).map(|p| p.spec)
}

#[track_caller]
fn refused(front: &str, line: usize, needles: &[&str]) {
    let e = match parse(front) {
        Ok(spec) => panic!("expected an error, got {:#?}", spec.gates),
        Err(e) => e,
    };
    assert_eq!(e.field.as_deref(), Some("gates"), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    for needle in needles {
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
    }
}

#[test]
fn the_issue_example_parses_with_defaults_filled_in() {
    let spec = parse(
        r#"gates:
  - { name: fmt,  run: "cargo fmt --check" }
  - { name: test, run: "cargo test", timeout: 10m }
  - { name: coverage, run: "make cov", metric: { file: lcov.info, format: lcov, min: 85 } }
fix_rounds: 3
keep_going: true
"#,
    )
    .expect("valid");
    let GateChoice::Inline(gates) = &spec.gates else {
        panic!("inline gates: {:?}", spec.gates);
    };
    assert_eq!(
        gates,
        &vec![
            Gate {
                name: "fmt".into(),
                run: "cargo fmt --check".into(),
                timeout_ms: DEFAULT_GATE_TIMEOUT_MS,
                metric: None,
            },
            Gate {
                name: "test".into(),
                run: "cargo test".into(),
                timeout_ms: 600_000,
                metric: None,
            },
            Gate {
                name: "coverage".into(),
                run: "make cov".into(),
                timeout_ms: DEFAULT_GATE_TIMEOUT_MS,
                metric: Some(Metric {
                    file: Some("lcov.info".into()),
                    format: MetricFormat::Lcov,
                    min: 85.0,
                }),
            },
        ]
    );
    assert_eq!((spec.fix_rounds, spec.keep_going), (3, true));
}

#[test]
fn a_job_without_gates_gets_the_default_fix_rounds_and_stores_no_gates_key() {
    let spec = parse("").expect("valid");
    assert_eq!(spec.gates, GateChoice::None);
    assert_eq!(spec.fix_rounds, DEFAULT_FIX_ROUNDS);
    assert!(!spec.keep_going);
    let stored = serde_json::to_value(&spec).expect("json");
    assert!(stored.get("gates").is_none(), "{stored}");
    // A spec stored before gates existed reads back with the defaults.
    let mut old = stored.clone();
    old.as_object_mut().expect("object").remove("fix_rounds");
    old.as_object_mut().expect("object").remove("keep_going");
    let back: gantry_core::JobSpec = serde_json::from_value(old).expect("old spec");
    assert_eq!(back, spec);
}

#[test]
fn a_profile_name_is_kept_for_the_server_to_resolve() {
    let spec = parse("gates: strict\n").expect("valid");
    assert_eq!(spec.gates, GateChoice::Profile("strict".into()));
    let back: gantry_core::JobSpec =
        serde_json::from_value(serde_json::to_value(&spec).expect("json")).expect("round trip");
    assert_eq!(back.gates, spec.gates);
    refused("gates: \"no spaces\"\n", 5, &["invalid profile name"]);
}

#[test]
fn bad_gates_are_refused_naming_the_gate_line_and_key() {
    refused(
        "gates:\n  - { name: a, run: x }\n  - { name: b }\n",
        7,
        &["gate 2 `run`", "missing `run`"],
    );
    refused(
        "gates:\n  - { name: a, run: x }\n  - { name: a, run: y }\n",
        7,
        &["gate 2 `name`", "duplicate gate name `a`"],
    );
    refused(
        "gates:\n  - { name: 'a b', run: x }\n",
        6,
        &["invalid gate name"],
    );
    refused(
        "gates:\n  - { name: a, run: x, timeout: 0 }\n",
        6,
        &["`timeout`", "longer than zero"],
    );
    refused(
        "gates:\n  - { name: a, run: x, timeout: soon }\n",
        6,
        &["`timeout`", "invalid duration \"soon\""],
    );
    refused(
        "gates:\n  - { name: a, run: x, tmeout: 5s }\n",
        6,
        &["unknown key `tmeout`", "known: name, run, timeout, metric"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { file: c.xml, format: jacoco, min: 1 } }\n",
        6,
        &["`metric.format`", "unknown format `jacoco`"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { format: regex, pattern: 'cov [0-9]+', min: 1 } }\n",
        6,
        &["`metric.pattern`", "no capture group"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { format: regex, pattern: '(', min: 1 } }\n",
        6,
        &["`metric.pattern`", "invalid regex"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { file: ../../etc/passwd, format: lcov, min: 1 } }\n",
        6,
        &["`metric.file`", "leaves the worktree"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { format: lcov, min: 1 } }\n",
        6,
        &["`metric.file`", "read from a file"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { file: l, format: lcov, min: 850 } }\n",
        6,
        &["`metric.min`", "not a percentage"],
    );
    refused(
        "gates:\n  - { name: a, run: x, metric: { file: l, format: lcov, min: high } }\n",
        6,
        &["`metric.min`", "expected a number"],
    );
    refused("gates: 3\n", 5, &["expected a list of gates"]);
    let many: String = (0..33)
        .map(|i| format!("  - {{ name: g{i}, run: x }}\n"))
        .collect();
    refused(&format!("gates:\n{many}"), 5, &["33 gates", "at most 32"]);
}

#[test]
fn fix_rounds_and_keep_going_are_checked() {
    let e = parse("fix_rounds: 11\n").expect_err("too many");
    assert_eq!(e.field.as_deref(), Some("fix_rounds"), "{e}");
    assert!(e.message.contains("0..=10"), "{e}");
    let e = parse("keep_going: yes please\n").expect_err("not a bool");
    assert_eq!(e.field.as_deref(), Some("keep_going"), "{e}");
    assert_eq!(parse("fix_rounds: 0\n").expect("zero rounds").fix_rounds, 0);
}

#[test]
fn toml_sources_read_through_the_same_rules() {
    // What a `.gantry/gates.toml` `[[gate]]` list looks like once read as JSON.
    let list = json!([
        { "name": "lint", "run": "make lint", "timeout": 30 },
        { "name": "cov", "run": "make cov", "metric": { "file": "coverage.xml", "format": "cobertura", "min": 80 } }
    ]);
    let gates = gate::parse_gates(&list).expect("valid");
    assert_eq!(gates[0].timeout_ms, 30_000);
    assert_eq!(
        gates[1].metric.as_ref().map(|m| &m.format),
        Some(&MetricFormat::Cobertura)
    );
    let e = gate::parse_gates(&json!([{ "name": "x", "run": 5 }])).expect_err("run not a string");
    assert_eq!((e.index, e.key.as_str()), (Some(0), "run"));
    assert!(
        e.to_string().contains("expected a string, found a number"),
        "{e}"
    );
}

#[test]
fn merging_sources_refuses_a_name_set_twice() {
    let g = |name: &str| Gate {
        name: name.into(),
        run: "true".into(),
        timeout_ms: 1000,
        metric: None,
    };
    let merged = gate::merge(&[("the job", &[g("a")]), (".gantry/gates.toml", &[g("b")])])
        .expect("distinct names");
    assert_eq!(
        merged.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let e = gate::merge(&[("the job", &[g("a")]), (".gantry/gates.toml", &[g("a")])])
        .expect_err("twice");
    assert!(
        e.contains("both by the job and by .gantry/gates.toml"),
        "{e}"
    );
}

#[test]
fn lcov_coverage_is_hit_lines_over_found_lines_across_records() {
    let text = "TN:\nSF:src/a.rs\nDA:1,1\nLF:10\nLH:9\nend_of_record\nSF:src/b.rs\nLF:30\nLH:15\nend_of_record\n";
    let pct = gate::lcov_percent(text).expect("figure");
    assert!((pct - 60.0).abs() < 1e-9, "{pct}");
    assert_eq!(gate::lcov_percent("TN:\n"), Err(MetricError::LcovEmpty));
    assert_eq!(
        gate::lcov_percent("LF:2\nLH:3\n"),
        Err(MetricError::LcovEmpty)
    );
    assert!(matches!(
        gate::lcov_percent("LF:ten\n"),
        Err(MetricError::LcovCount { line: 1, .. })
    ));
}

#[test]
fn cobertura_coverage_is_the_root_line_rate() {
    let xml = r#"<?xml version="1.0" ?>
<coverage branch-rate="0.5" line-rate="0.8125" version="7.4">
  <packages><package line-rate="0.1"/></packages>
</coverage>"#;
    let pct = gate::cobertura_percent(xml).expect("figure");
    assert!((pct - 81.25).abs() < 1e-9, "{pct}");
    let single = "<coverage lines-valid='4' line-rate='1'>";
    assert_eq!(gate::cobertura_percent(single), Ok(100.0));
    assert_eq!(
        gate::cobertura_percent("<report/>"),
        Err(MetricError::CoberturaMissing)
    );
    assert_eq!(
        gate::cobertura_percent("<coverage line-rate=\"1.5\">"),
        Err(MetricError::CoberturaRate("1.5".into()))
    );
}

#[test]
fn a_regex_figure_is_the_last_match_and_must_be_a_number() {
    let out = "coverage: 40.0%\n...\ncoverage: 87.5%\n";
    assert_eq!(gate::regex_figure(r"coverage: ([0-9.]+%)", out), Ok(87.5));
    assert_eq!(
        gate::regex_figure(r"total: (\d+)", out),
        Err(MetricError::NoMatch(r"total: (\d+)".into()))
    );
    assert_eq!(
        gate::regex_figure(r"coverage: (\S+)", "coverage: n/a"),
        Err(MetricError::NotANumber("n/a".into()))
    );
    let m = Metric {
        file: None,
        format: MetricFormat::Regex {
            pattern: r"score (\d+)".into(),
        },
        min: 7.0,
    };
    assert!(m.passes(m.figure("score 7").expect("figure")));
    assert!(!m.passes(m.figure("score 6").expect("figure")));
}

#[test]
fn a_repository_gates_file_reads_gate_tables_by_the_same_rules() {
    let text = r#"
# Gates every change to this repository must pass.
[[gate]]
name = "fmt"
run = "cargo fmt --check"
timeout = "2m"

[[gate]]
name = "coverage"
run = "make cov"
[gate.metric]
file = "lcov.info"
format = "lcov"
min = 85
"#;
    let gates = gate::parse_gates_file(".gantry/gates.toml", text).expect("valid");
    assert_eq!(gates.len(), 2);
    assert_eq!(gates[0].timeout_ms, 120_000);
    assert_eq!(gates[1].metric.as_ref().map(|m| m.min), Some(85.0));
    assert_eq!(
        gate::parse_gates_file("f", "").expect("empty file"),
        Vec::<Gate>::new()
    );

    let bad = |text: &str, needle: &str| {
        let e = gate::parse_gates_file(".gantry/gates.toml at 1a2b3c", text).expect_err(text);
        let shown = e.to_string();
        assert!(
            shown.starts_with(".gantry/gates.toml at 1a2b3c: "),
            "{shown}"
        );
        assert!(shown.contains(needle), "{shown} lacks {needle:?}");
    };
    bad("[[gate]]\nname = \"a\"\n", "gate 1 `run`: missing `run`");
    bad("[[gates]]\nname = \"a\"\n", "unknown key `gates`");
    bad(
        "[[gate]]\nname = \"a\"\nrun = \"x\"\nmetric = { format = \"lcov\", file = \"l\", min = \"high\" }\n",
        "`metric.min`",
    );
    bad("[[gate]\nname = ", "line 1");
    bad(&"#".repeat(gate::MAX_GATES_FILE + 1), "at most");
}

#[test]
fn a_profile_of_gantry_toml_reads_the_same_way() {
    let cfg: toml::Table = toml::from_str(
        "[gates.profiles.strict]\ngate = [{ name = \"test\", run = \"make test\" }]\n\
         [gates.profiles.typo]\ngates = []\n",
    )
    .expect("toml");
    let profiles = cfg["gates"]["profiles"].as_table().expect("profiles");
    let strict = gate::parse_profile("strict", &profiles["strict"]).expect("strict");
    assert_eq!(strict[0].name, "test");
    let e = gate::parse_profile("typo", &profiles["typo"]).expect_err("typo");
    assert!(e.contains("gates.profiles.typo.gates: unknown key"), "{e}");
}
