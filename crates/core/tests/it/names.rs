//! String forms: states, outcomes, scopes, stop kinds and ids parse back from what they
//! print, refuse anything else with a message naming the value, and serialize to the
//! same names. Also `Scope::allows` and timestamps.

use gantry_core::api::Scope;
use gantry_core::time::{parse_rfc3339, rfc3339};
use gantry_core::{FactoryId, JobId, JobState, Outcome, RunId, StopKind};

#[test]
fn job_state_names() {
    let names: Vec<&str> = JobState::ALL.map(JobState::as_str).to_vec();
    assert_eq!(
        names,
        [
            "blocked",
            "queued",
            "running",
            "checking",
            "succeeded",
            "failed",
            "canceled",
            "killed"
        ]
    );
    for s in JobState::ALL {
        assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
        assert_eq!(s.to_string(), s.as_str());
        assert_eq!(
            serde_json::to_value(s).expect("serializes"),
            serde_json::json!(s.as_str())
        );
    }
}

#[test]
fn job_state_parse_errors() {
    for bad in ["Running", "done", "", " queued", "cancelled"] {
        assert_eq!(
            bad.parse::<JobState>(),
            Err(format!(
                "unknown job state {bad:?} (expected one of: blocked, queued, running, checking, succeeded, failed, canceled, killed)"
            ))
        );
    }
}

#[test]
fn outcome_names() {
    let names: Vec<&str> = Outcome::ALL.map(Outcome::as_str).to_vec();
    assert_eq!(
        names,
        [
            "succeeded",
            "failed",
            "timed_out",
            "lost",
            "killed",
            "canceled",
            "budget_exceeded",
            "gates_failed"
        ]
    );
    for o in Outcome::ALL {
        assert_eq!(o.as_str().parse::<Outcome>(), Ok(o));
        assert_eq!(o.to_string(), o.as_str());
        assert_eq!(
            serde_json::to_value(o).expect("serializes"),
            serde_json::json!(o.as_str())
        );
    }
}

#[test]
fn outcome_parse_errors() {
    for bad in ["timeout", "TimedOut", "", "ok"] {
        assert_eq!(
            bad.parse::<Outcome>(),
            Err(format!(
                "unknown outcome {bad:?} (expected one of: succeeded, failed, timed_out, lost, killed, canceled, budget_exceeded, gates_failed)"
            ))
        );
    }
}

#[test]
fn scope_names() {
    let names: Vec<&str> = Scope::ALL.map(Scope::as_str).to_vec();
    assert_eq!(
        names,
        ["admin", "operator", "submitter", "reader", "factory"]
    );
    for s in Scope::ALL {
        assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
        assert_eq!(s.to_string(), s.as_str());
        assert_eq!(
            serde_json::to_value(s).expect("serializes"),
            serde_json::json!(s.as_str())
        );
    }
}

#[test]
fn scope_parse_errors() {
    for bad in ["root", "Admin", "", "readers"] {
        assert_eq!(
            bad.parse::<Scope>(),
            Err(format!(
                "unknown scope {bad:?} (expected one of: admin, operator, submitter, reader, factory)"
            ))
        );
    }
}

#[test]
fn scope_allows_table() {
    use Scope::{Admin as A, Factory as F, Operator as O, Reader as R, Submitter as S};
    // Rows: the token's scope; columns: what the action needs, in the order
    // admin, operator, submitter, reader, factory.
    let table: [(Scope, [bool; 5]); 5] = [
        (A, [true, true, true, true, true]),
        (O, [false, true, true, true, false]),
        (S, [false, false, true, true, false]),
        (R, [false, false, false, true, false]),
        (F, [false, false, false, true, true]),
    ];
    let columns = [A, O, S, R, F];
    assert_eq!(columns, Scope::ALL);
    for (have, row) in table {
        for (needed, want) in columns.into_iter().zip(row) {
            assert_eq!(have.allows(needed), want, "{have} allows {needed}");
        }
    }
}

#[test]
fn stop_kind_names() {
    for (kind, name, outcome) in [
        (StopKind::Cancel, "cancel", Outcome::Canceled),
        (StopKind::Kill, "kill", Outcome::Killed),
    ] {
        assert_eq!(kind.as_str(), name);
        assert_eq!(StopKind::parse(name), Some(kind));
        assert_eq!(kind.outcome(), outcome);
        assert_eq!(
            serde_json::to_value(kind).expect("serializes"),
            serde_json::json!(name)
        );
    }
    assert_eq!(StopKind::parse("Kill"), None);
    assert_eq!(StopKind::parse(""), None);
}

#[test]
fn ids_parse() {
    assert_eq!("12".parse::<JobId>(), Ok(JobId(12)));
    assert_eq!(" 7 ".parse::<JobId>(), Ok(JobId(7)));
    assert_eq!("1".parse::<RunId>(), Ok(RunId(1)));
    assert_eq!(
        "9223372036854775807".parse::<FactoryId>(),
        Ok(FactoryId(i64::MAX))
    );
    assert_eq!(JobId(42).to_string(), "42");
    // Ids travel as bare numbers.
    assert_eq!(serde_json::to_string(&JobId(42)).expect("serializes"), "42");
    assert_eq!(
        serde_json::from_str::<RunId>("5").expect("parses"),
        RunId(5)
    );
}

#[test]
fn id_parse_errors() {
    for bad in [
        "0",
        "-1",
        "abc",
        "",
        "1.5",
        "12a",
        "99999999999999999999",
        "#3",
    ] {
        assert_eq!(
            bad.parse::<JobId>(),
            Err(format!(
                "invalid job id {bad:?}: expected a positive integer"
            ))
        );
        assert_eq!(
            bad.parse::<RunId>(),
            Err(format!(
                "invalid run id {bad:?}: expected a positive integer"
            ))
        );
        assert_eq!(
            bad.parse::<FactoryId>(),
            Err(format!(
                "invalid factory id {bad:?}: expected a positive integer"
            ))
        );
    }
}

#[test]
fn timestamps_round_trip() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    for ms in [0, 1, 999, 1_700_000_000_123, 4_102_444_800_000] {
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Ok(ms));
    }
    let e = parse_rfc3339("yesterday").expect_err("not a timestamp");
    assert!(e.contains("\"yesterday\""), "{e}");
}
