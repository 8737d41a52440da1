//! What the checking stage's uploaded events mean for the store: `run.checking` and
//! `run.fix_round` move the job between `running` and `checking` through the one
//! lifecycle, `gate.*` keep the latest result of each gate on the run, and reviews,
//! secret findings and fix rounds are kept on the run's [`RunChecks`].

use super::*;
use gantry_core::checks::RunChecks;
use gantry_core::gate::GateResult;
use serde::{Deserialize, Serialize};

/// A JSON document kept on a run's row, each in a column of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunDoc {
    /// The gate records (`runs.gates`, see [`GateRecord`]).
    Gates,
    /// The reviews, secret findings and fix rounds (`runs.checks`, a [`RunChecks`]).
    Checks,
    /// The names of the secrets the run's agent received (`runs.secrets`, a JSON list).
    Secrets,
}

impl RunDoc {
    /// The column holding the document: a fixed name, never a value from outside.
    pub(crate) fn column(self) -> &'static str {
        match self {
            RunDoc::Gates => "gates",
            RunDoc::Checks => "checks",
            RunDoc::Secrets => "secrets",
        }
    }
}

/// A run's checks as stored (`None`: none yet).
pub(crate) fn run_checks(text: Option<&str>) -> Result<RunChecks, StoreError> {
    match text {
        None => Ok(RunChecks::default()),
        Some(text) => crate::codec::parse_json("run checks", text),
    }
}

/// One gate of a run as stored (in `runs.gates`, a JSON list in the order the gates
/// first started): its name and its latest result, `None` while its first run goes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GateRecord {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) result: Option<GateResult>,
}

/// The results a run's stored gate records hold, in the order the gates first started
/// (gates still running their first time are left out).
pub(crate) fn gate_results(text: Option<&str>) -> Result<Vec<GateResult>, StoreError> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let records: Vec<GateRecord> = crate::codec::parse_json("run gates", text)?;
    Ok(records.into_iter().filter_map(|r| r.result).collect())
}

/// Records that gate `name` started (`result` `None`) or ended: a gate keeps its place
/// from its first start, and an end replaces the result an earlier round left.
pub(crate) fn record_gate(records: &mut Vec<GateRecord>, name: &str, result: Option<GateResult>) {
    match records.iter_mut().find(|r| r.name == name) {
        Some(r) => {
            if result.is_some() {
                r.result = result;
            }
        }
        None => records.push(GateRecord {
            name: name.to_string(),
            result,
        }),
    }
}

/// Applies one event of the checking stage uploaded by the live run of `live`, whose
/// job is in `state` (updated when the event moves it). Returns whether `kind` is one
/// of the stage's kinds the store acts on.
pub(crate) async fn apply_check_event<T: WriteTx>(
    tx: &T,
    live: &Live,
    state: &mut JobState,
    kind: &str,
    data: &str,
) -> Result<bool, T::Error> {
    let invalid = |e: serde_json::Error| {
        StoreError::Invalid(gantry_core::SpecError {
            file: format!("event {kind} of run {}", live.run),
            line: None,
            field: Some("data".into()),
            message: format!("does not fit the {kind} payload: {e}"),
        })
    };
    let known = save_checks(tx, live, kind, data).await?;
    let (to, input, reason) = match kind {
        ev::RUN_CHECKING => {
            let p: ev::RunChecking = serde_json::from_str(data).map_err(invalid)?;
            let reason = format!("checking the result (round {})", p.round);
            (JobState::Checking, Input::CheckBegan, reason)
        }
        ev::RUN_FIX_ROUND => {
            let p: ev::RunFixRound = serde_json::from_str(data).map_err(invalid)?;
            let reason = format!("fix round {}: {}", p.round, p.reasons.join("; "));
            (JobState::Running, Input::FixRoundBegan, reason)
        }
        ev::GATE_STARTED => {
            let p: ev::GateStarted = serde_json::from_str(data).map_err(invalid)?;
            save_gate(tx, live, &p.name, None).await?;
            return Ok(true);
        }
        ev::GATE_PASSED | ev::GATE_FAILED => {
            // Both kinds carry the same fields.
            let p: ev::GatePassed = serde_json::from_str(data).map_err(invalid)?;
            let name = p.result.name.clone();
            save_gate(tx, live, &name, Some(p.result)).await?;
            return Ok(true);
        }
        _ => return Ok(known),
    };
    // An upload sent again after its answer was lost repeats the change: already made,
    // it is only recorded.
    if *state != to {
        let req = StepRequest::new(live.job, *state, input).reason(reason);
        *state = step(tx, req).await?.to;
    }
    Ok(true)
}

/// Records gate `name`'s start (`result` `None`) or end on the run of `live`.
async fn save_gate<T: WriteTx>(
    tx: &T,
    live: &Live,
    name: &str,
    result: Option<GateResult>,
) -> Result<(), T::Error> {
    let mut records: Vec<GateRecord> = match tx.load_doc(live.run, RunDoc::Gates).await? {
        Some(text) => crate::codec::parse_json("run gates", &text)?,
        None => Vec::new(),
    };
    record_gate(&mut records, name, result);
    let text = serde_json::to_string(&records)
        .map_err(|e| corrupt(format!("cannot encode gate results: {e}")))?;
    tx.save_doc(live.run, RunDoc::Gates, &text).await
}

/// Folds an event of a kind [`RunChecks`] keeps into the run's record. Returns whether
/// `kind` is one of them.
async fn save_checks<T: WriteTx>(
    tx: &T,
    live: &Live,
    kind: &str,
    data: &str,
) -> Result<bool, T::Error> {
    if !matches!(
        kind,
        ev::REVIEW_PASSED | ev::REVIEW_FAILED | ev::SECRET_FOUND | ev::RUN_FIX_ROUND
    ) {
        return Ok(false);
    }
    let value: serde_json::Value = crate::codec::parse_json(kind, data)?;
    let mut checks = run_checks(tx.load_doc(live.run, RunDoc::Checks).await?.as_deref())?;
    let before = checks.clone();
    checks.apply(kind, &value).map_err(|e| {
        StoreError::Invalid(gantry_core::SpecError {
            file: format!("event {kind} of run {}", live.run),
            line: None,
            field: Some("data".into()),
            message: e.to_string(),
        })
    })?;
    if checks != before {
        let text = serde_json::to_string(&checks)
            .map_err(|e| corrupt(format!("cannot encode run checks: {e}")))?;
        tx.save_doc(live.run, RunDoc::Checks, &text).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, passed: bool) -> GateResult {
        GateResult {
            name: name.into(),
            passed,
            exit_code: Some(if passed { 0 } else { 1 }),
            figure: None,
            duration_ms: 5,
            tree: "t".into(),
            reason: None,
            output: format!("/o/{name}"),
            output_tail: String::new(),
        }
    }

    #[test]
    fn gates_keep_their_first_place_and_latest_result() {
        let mut records = Vec::new();
        record_gate(&mut records, "fmt", None);
        record_gate(&mut records, "fmt", Some(result("fmt", true)));
        record_gate(&mut records, "test", None);
        record_gate(&mut records, "test", Some(result("test", false)));
        // The next round: test first, then fmt; a start keeps the last result.
        record_gate(&mut records, "test", None);
        record_gate(&mut records, "test", Some(result("test", true)));
        record_gate(&mut records, "lint", None);
        let text = serde_json::to_string(&records).expect("encodes");
        let got = gate_results(Some(&text)).expect("reads");
        assert_eq!(got, [result("fmt", true), result("test", true)]);
        assert_eq!(gate_results(None).expect("none"), []);
    }
}
