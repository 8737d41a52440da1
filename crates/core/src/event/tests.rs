//! Each payload against the exact JSON its kind carries on the wire today, both ways.

use super::*;
use serde_json::json;

/// `payload` serializes to exactly `wire` under its kind, and `wire` reads back as
/// `payload`, from a new event and from a stored one.
fn check<P: Payload + PartialEq + std::fmt::Debug>(
    payload: P,
    kind: &str,
    wire: serde_json::Value,
) {
    assert_eq!(P::KIND, kind);
    let new = NewEvent::of(&payload);
    assert_eq!(new.kind, kind);
    assert_eq!(new.data, wire, "the field names of {kind}");
    assert_eq!(new.payload::<P>().expect("reads back"), payload);
    let stored = Event {
        id: 1,
        job_id: Some(JobId(1)),
        run_id: Some(RunId(2)),
        seq: 1,
        kind: kind.to_string(),
        at: 0,
        data: wire,
    };
    assert!(stored.is::<P>());
    assert_eq!(stored.payload::<P>().expect("reads"), payload);
}

#[test]
fn job_payloads_match_the_wire() {
    check(
        JobSubmitted {
            title: "fix it".into(),
            state: JobState::Queued,
        },
        "job.submitted",
        json!({"title": "fix it", "state": "queued"}),
    );
    check(
        JobStateChanged {
            from: JobState::Running,
            to: JobState::Queued,
            reason: None,
        },
        "job.state",
        json!({"from": "running", "to": "queued", "reason": null}),
    );
    check(
        JobStateChanged {
            from: JobState::Blocked,
            to: JobState::Canceled,
            reason: Some("dependency 1 failed".into()),
        },
        "job.state",
        json!({"from": "blocked", "to": "canceled", "reason": "dependency 1 failed"}),
    );
    check(JobCancelRequested {}, "job.cancel_requested", json!({}));
    check(JobKillRequested {}, "job.kill_requested", json!({}));
    check(QueuePaused {}, "queue.paused", json!({}));
    check(QueueResumed {}, "queue.resumed", json!({}));
}

#[test]
fn run_payloads_match_the_wire() {
    check(
        RunClaimed {
            run: RunId(7),
            attempt: 2,
            epoch: 3,
            factory: FactoryId(1),
            lease_expires_at: 1_700_000_000_000,
        },
        "run.claimed",
        json!({"run": 7, "attempt": 2, "epoch": 3, "factory": 1,
               "lease_expires_at": 1_700_000_000_000_i64}),
    );
    check(
        RunStarted {
            pid: 4242,
            pgid: 4242,
            branch: "gantry/1/a1".into(),
            workspace: PathBuf::from("/data/work/1-a1"),
            base_commit: "abc".into(),
            secrets: Vec::new(),
            container: None,
        },
        "run.started",
        json!({"pid": 4242, "pgid": 4242, "branch": "gantry/1/a1",
               "workspace": "/data/work/1-a1", "base_commit": "abc"}),
    );
    check(
        RunStarted {
            pid: 4242,
            pgid: 4242,
            branch: "gantry/1/a1".into(),
            workspace: PathBuf::from("/data/work/1-a1"),
            base_commit: "abc".into(),
            secrets: vec!["ANTHROPIC_API_KEY".into(), "GITHUB_TOKEN".into()],
            container: Some("0123abcd".into()),
        },
        "run.started",
        json!({"pid": 4242, "pgid": 4242, "branch": "gantry/1/a1",
               "workspace": "/data/work/1-a1", "base_commit": "abc",
               "secrets": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"], "container": "0123abcd"}),
    );
    check(
        RunOutput {
            stream: OutputStream::Stderr,
            text: "oops\n".into(),
            offset: Some(12),
        },
        "run.output",
        json!({"stream": "stderr", "text": "oops\n", "offset": 12}),
    );
    check(
        RunCheckpoint {
            branch: "gantry/1/wip".into(),
            base: "abc".into(),
            commit: "def".into(),
        },
        "run.checkpoint",
        json!({"wip_branch": "gantry/1/wip", "wip_base": "abc", "wip_commit": "def"}),
    );
    check(
        RunBudgetExceeded {
            limit: "usd".into(),
            limit_value: 1.5,
            actual: 1.75,
            message: "over".into(),
        },
        "run.budget_exceeded",
        json!({"limit": "usd", "limit_value": 1.5, "actual": 1.75, "message": "over"}),
    );
    check(
        SandboxEgressDenied {
            host: "evil.example".into(),
            port: 443,
            reason: "not allowed".into(),
        },
        "sandbox.egress_denied",
        json!({"host": "evil.example", "port": 443, "reason": "not allowed"}),
    );
}

#[test]
fn run_finished_matches_the_wire_with_and_without_insights() {
    let finished = RunFinished {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        error: None,
        branch: Some("gantry/1/a1".into()),
        base_commit: Some("abc".into()),
        commit: Some("def".into()),
        files_changed: Some(1),
        lines_added: Some(2),
        lines_deleted: Some(0),
        insights: None,
    };
    check(
        finished.clone(),
        "run.finished",
        json!({"outcome": "succeeded", "exit_code": 0, "error": null,
               "branch": "gantry/1/a1", "base_commit": "abc", "commit": "def",
               "files_changed": 1, "lines_added": 2, "lines_deleted": 0}),
    );
    let insights = crate::engine::Insights {
        turns: 3,
        ..Default::default()
    };
    let with = RunFinished {
        insights: Some(insights.clone()),
        ..finished
    };
    check(
        with,
        "run.finished",
        json!({"outcome": "succeeded", "exit_code": 0, "error": null,
               "branch": "gantry/1/a1", "base_commit": "abc", "commit": "def",
               "files_changed": 1, "lines_added": 2, "lines_deleted": 0,
               "insights": serde_json::to_value(&insights).expect("serializes")}),
    );
}

#[test]
fn delivery_and_lease_payloads_match_the_wire() {
    check(
        DeliveryPushed {
            repo: "/src".into(),
            branch: "gantry/1".into(),
            commit: "def".into(),
            result_ref: None,
        },
        "delivery.pushed",
        json!({"repo": "/src", "branch": "gantry/1", "commit": "def"}),
    );
    check(
        DeliveryFailed {
            repo: "/src".into(),
            branch: "gantry/1".into(),
            commit: "def".into(),
            result_ref: Some("refs/gantry/results/2".into()),
            error: "denied".into(),
        },
        "delivery.failed",
        json!({"repo": "/src", "branch": "gantry/1", "commit": "def",
               "result_ref": "refs/gantry/results/2", "error": "denied"}),
    );
    check(
        LeaseExpired {
            run: RunId(2),
            epoch: 4,
        },
        "lease.expired",
        json!({"run": 2, "epoch": 4}),
    );
    check(
        StaleWriteRejected {
            run: RunId(2),
            epoch: 4,
            current_epoch: 5,
            op: "finish".into(),
        },
        "lease.stale_write_rejected",
        json!({"run": 2, "epoch": 4, "current_epoch": 5, "op": "finish"}),
    );
    check(
        crate::engine::Insights::default(),
        "agent.insights",
        serde_json::to_value(crate::engine::Insights::default()).expect("serializes"),
    );
}

#[test]
fn older_and_foreign_data_is_read_or_refused_by_name() {
    // Factories before output offsets wrote none.
    let old = NewEvent {
        kind: RUN_OUTPUT.into(),
        data: json!({"stream": "stdout", "text": "hi"}),
    };
    let out = old.payload::<RunOutput>().expect("reads");
    assert_eq!(
        (out.stream, out.text.as_str(), out.offset),
        (OutputStream::Stdout, "hi", None)
    );
    assert!(matches!(
        old.payload::<RunStarted>(),
        Err(PayloadError::WrongKind {
            expected: "run.started",
            ..
        })
    ));
    let bad = NewEvent {
        kind: RUN_STARTED.into(),
        data: json!({"pid": "x"}),
    };
    let err = bad.payload::<RunStarted>().expect_err("refused");
    assert!(err.to_string().contains("run.started"), "{err}");
}

#[test]
fn check_payloads_match_the_wire() {
    check(
        RunChecking { round: 0 },
        "run.checking",
        json!({"round": 0}),
    );
    check(
        RunFixRound {
            round: 1,
            reasons: vec!["gates_failed: test".into()],
        },
        "run.fix_round",
        json!({"round": 1, "reasons": ["gates_failed: test"]}),
    );
    check(
        GateStarted {
            name: "fmt".into(),
            round: 2,
        },
        "gate.started",
        json!({"name": "fmt", "round": 2}),
    );
    let passed = crate::gate::GateResult {
        name: "cov".into(),
        passed: true,
        exit_code: Some(0),
        figure: Some(91.5),
        duration_ms: 1200,
        tree: "4b825dc6".into(),
        reason: None,
        output: "/w/gates/cov.log".into(),
        output_tail: String::new(),
    };
    check(
        GatePassed {
            result: passed.clone(),
            round: 0,
        },
        "gate.passed",
        json!({"name": "cov", "passed": true, "exit_code": 0, "figure": 91.5,
               "duration_ms": 1200, "tree": "4b825dc6", "output": "/w/gates/cov.log",
               "round": 0}),
    );
    let failed = crate::gate::GateResult {
        name: "test".into(),
        passed: false,
        exit_code: None,
        figure: None,
        duration_ms: 600_000,
        tree: "4b825dc6".into(),
        reason: Some("timed out after 10m".into()),
        output: "/w/gates/test.log".into(),
        output_tail: String::new(),
    };
    check(
        GateFailed {
            result: failed,
            round: 1,
        },
        "gate.failed",
        json!({"name": "test", "passed": false, "exit_code": null, "duration_ms": 600_000,
               "tree": "4b825dc6", "reason": "timed out after 10m",
               "output": "/w/gates/test.log", "round": 1}),
    );
    check(
        SecretFound {
            file: "src/config.rs".into(),
            line: 12,
            rule: "aws-access-key".into(),
            fingerprint: "sha256:1f2e".into(),
        },
        "secret.found",
        json!({"file": "src/config.rs", "line": 12, "rule": "aws-access-key",
               "fingerprint": "sha256:1f2e"}),
    );
    check(
        CheckConflict {
            base: "main".into(),
            paths: vec!["src/lib.rs".into()],
        },
        "check.conflict",
        json!({"base": "main", "paths": ["src/lib.rs"]}),
    );
    check(
        CheckRebased {
            base: "main".into(),
            tip: "aaa".into(),
            commit: "bbb".into(),
        },
        "check.rebased",
        json!({"base": "main", "tip": "aaa", "commit": "bbb"}),
    );
}

#[test]
fn check_known_holds_the_check_kinds_to_their_payloads() {
    assert!(check_known("run.checking", &json!({"round": 1})).is_ok());
    assert!(check_known("run.checking", &json!({})).is_err());
    assert!(check_known("run.fix_round", &json!({"round": 1})).is_err());
    assert!(check_known("gate.started", &json!({"name": "fmt"})).is_err());
    assert!(check_known("gate.passed", &json!({"name": "fmt", "round": 0})).is_err());
    assert!(
        check_known(
            "secret.found",
            &json!({"file": "a", "line": 1, "rule": "r"})
        )
        .is_err()
    );
    assert!(check_known("check.conflict", &json!({"base": "main"})).is_err());
    assert!(check_known("check.rebased", &json!({"base": "main", "tip": "a"})).is_err());
}
