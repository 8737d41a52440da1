//! The checking stage (issue 11) on every backend: a job moves between `running` and
//! `checking` through its run's fenced event uploads, keeps its run, lease and lock
//! while checking, and the run keeps the latest result of each gate.

use crate::TestStore;
use crate::helpers::*;
use gantry_core::api::{Claim, FinishReport};
use gantry_core::event::{self as ev, NewEvent};
use gantry_core::gate::GateResult;
use gantry_core::{JobState, Outcome, StopKind};
use gantry_store::{Store, StoreError};
use std::time::Duration;

/// Uploads `events` as the claimed run.
async fn upload(s: &dyn Store, c: &Claim, events: Vec<NewEvent>) {
    s.append_events(c.run.id, c.run.epoch, events)
        .await
        .expect("upload");
}

/// The run of `c` begins checking round `round`.
async fn begin_checking(s: &dyn Store, c: &Claim, round: u32) {
    upload(s, c, vec![NewEvent::of(&ev::RunChecking { round })]).await;
}

/// The run of `c` begins fix round `round` for `reason`.
async fn begin_fix_round(s: &dyn Store, c: &Claim, round: u32, reason: &str) {
    let fix = ev::RunFixRound {
        round,
        reasons: vec![reason.to_string()],
    };
    upload(s, c, vec![NewEvent::of(&fix)]).await;
}

/// A gate's result on tree `tree`.
fn gate(name: &str, passed: bool, tree: &str) -> GateResult {
    GateResult {
        name: name.to_string(),
        passed,
        exit_code: Some(if passed { 0 } else { 1 }),
        figure: None,
        duration_ms: 12,
        tree: tree.to_string(),
        reason: (!passed).then(|| "exit 1".to_string()),
        output: format!("/w/gates/{name}.log"),
        output_tail: if passed {
            String::new()
        } else {
            format!("{name}: no\n")
        },
    }
}

/// The events of one gate's run in round `round`: started, then passed or failed.
fn gate_run(result: GateResult, round: u32) -> Vec<NewEvent> {
    let started = NewEvent::of(&ev::GateStarted {
        name: result.name.clone(),
        round,
    });
    let ended = if result.passed {
        NewEvent::of(&ev::GatePassed { result, round })
    } else {
        NewEvent::of(&ev::GateFailed { result, round })
    };
    vec![started, ended]
}

/// A checking job's state, as stored.
async fn state_of(s: &dyn Store, c: &Claim) -> JobState {
    s.job(c.job.id).await.expect("job").state
}

pub(super) async fn checking_and_fix_rounds_then_success(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    begin_checking(s, &c, 0).await;
    assert_eq!(state_of(s, &c).await, JobState::Checking);
    // A checking job's lease is renewed like a running one's.
    s.renew(c.run.id, c.run.epoch, LONG).await.expect("renew");
    upload(s, &c, gate_run(gate("fmt", true, "t1"), 0)).await;
    upload(s, &c, gate_run(gate("test", false, "t1"), 0)).await;
    begin_fix_round(s, &c, 1, "gates_failed: test").await;
    assert_eq!(state_of(s, &c).await, JobState::Running);
    // An upload sent again (its answer lost) changes nothing more.
    begin_fix_round(s, &c, 1, "gates_failed: test").await;
    begin_checking(s, &c, 1).await;
    begin_checking(s, &c, 1).await;
    assert_eq!(state_of(s, &c).await, JobState::Checking);
    upload(s, &c, gate_run(gate("test", true, "t2"), 1)).await;
    upload(s, &c, gate_run(gate("fmt", true, "t2"), 1)).await;
    // Secret findings, reviews and fix rounds are kept on the run, each once however
    // often its upload is sent.
    let secret = NewEvent::of(&ev::SecretFound {
        file: "config.env".into(),
        line: 2,
        rule: "aws-access-key".into(),
        fingerprint: "fp1".into(),
    });
    upload(s, &c, vec![secret.clone()]).await;
    upload(s, &c, vec![secret]).await;
    let reviewed = |passed: bool, score: f64| gantry_core::review::ReviewResult {
        round: u32::from(passed),
        engine: gantry_core::EngineKind::Script,
        model: None,
        passed,
        threshold: 0.8,
        verdict: Some(gantry_core::review::Verdict {
            score,
            verdict: "v".into(),
            findings: Vec::new(),
            findings_dropped: 0,
        }),
        reason: None,
        tree: "t2".into(),
        duration_ms: 7,
        insights: None,
    };
    let failed = NewEvent::of(&ev::ReviewFailed {
        result: reviewed(false, 0.3),
    });
    upload(s, &c, vec![failed.clone(), failed]).await;
    let passed = NewEvent::of(&ev::ReviewPassed {
        result: reviewed(true, 0.9),
    });
    upload(s, &c, vec![passed]).await;
    let done = finish(s, &c, Outcome::Succeeded).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        transitions(s, id).await,
        vec![
            ("queued".into(), "running".into(), None),
            (
                "running".into(),
                "checking".into(),
                Some("checking the result (round 0)".into())
            ),
            (
                "checking".into(),
                "running".into(),
                Some("fix round 1: gates_failed: test".into())
            ),
            (
                "running".into(),
                "checking".into(),
                Some("checking the result (round 1)".into())
            ),
            ("checking".into(), "succeeded".into(), None),
        ]
    );
    // The latest result of each gate, in the order the gates first started.
    let run = s.run(c.run.id).await.expect("run");
    assert_eq!(
        run.gates,
        [gate("fmt", true, "t2"), gate("test", true, "t2")]
    );
    assert_eq!(run.checks.secrets.len(), 1, "{:?}", run.checks);
    assert_eq!(run.checks.secrets[0].fingerprint, "fp1");
    assert_eq!(run.checks.fix_rounds.len(), 1, "{:?}", run.checks);
    assert_eq!(run.checks.fix_rounds[0].reasons, ["gates_failed: test"]);
    let scores: Vec<Option<f64>> = run.checks.reviews.iter().map(|r| r.score()).collect();
    assert_eq!(scores, [Some(0.3), Some(0.9)]);
    let mut shown = s.job(id).await.expect("job");
    shown.runs = s.runs(id).await.expect("runs");
    assert_eq!(shown.runs[0].gates, run.gates);
    assert_eq!(shown.runs[0].checks, run.checks);
    let json = serde_json::to_value(&shown).expect("json");
    assert_eq!(json["runs"][0]["gates"][1]["name"], "test");
    assert_eq!(json["runs"][0]["gates"][1]["tree"], "t2");
    assert_eq!(
        json["runs"][0]["checks"]["reviews"][1]["verdict"]["score"],
        0.9
    );
    // Each state change follows the event that made it.
    let kinds = kinds_of(s, id).await;
    let checking = kinds
        .iter()
        .position(|k| k == "run.checking")
        .expect("checking");
    assert_eq!(kinds[checking + 1], "job.state");
}

pub(super) async fn a_stale_runs_checking_is_refused_and_recorded(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let old = s
        .claim(f, Duration::from_millis(400))
        .await
        .expect("claim")
        .expect("claimable");
    t.pass(Duration::from_millis(450)).await;
    assert_eq!(s.reap().await.expect("reap"), vec![old.run.id]);
    s.cancel(id).await.expect("cancel");
    s.retry(id).await.expect("retry");
    let new = claim(s, f).await;
    let err = s
        .append_events(
            old.run.id,
            old.run.epoch,
            vec![NewEvent::of(&ev::RunChecking { round: 0 })],
        )
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::StaleLease { .. }), "{err:?}");
    assert_eq!(state_of(s, &new).await, JobState::Running);
    let events = events_of(s, id).await;
    assert!(!events.iter().any(|e| e.kind == "run.checking"));
    let rejected = events
        .iter()
        .find(|e| e.kind == "lease.stale_write_rejected")
        .expect("recorded");
    assert_eq!(rejected.data["op"], "events");
    // The new run's own check goes on.
    begin_checking(s, &new, 0).await;
    assert_eq!(state_of(s, &new).await, JobState::Checking);
}

pub(super) async fn kill_and_cancel_of_a_checking_job(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b")]).await;
    let f = factory(s, "f", &[]).await;
    let a = claim(s, f).await;
    let b = claim(s, f).await;
    begin_checking(s, &a, 0).await;
    begin_checking(s, &b, 0).await;
    let j = s.cancel(ids[0]).await.expect("cancel");
    assert_eq!(j.state, JobState::Checking, "the factory stops it");
    let j = s.kill(ids[1]).await.expect("kill");
    assert_eq!(j.state, JobState::Checking);
    let r = s.renew(a.run.id, a.run.epoch, LONG).await.expect("renew");
    assert_eq!(r.stop, Some(StopKind::Cancel));
    // A stop request survives a fix round.
    begin_fix_round(s, &b, 1, "gates_failed: fmt").await;
    let r = s.renew(b.run.id, b.run.epoch, LONG).await.expect("renew");
    assert_eq!(r.stop, Some(StopKind::Kill));
    assert_eq!(
        finish(s, &a, Outcome::Canceled).await.state,
        JobState::Canceled
    );
    assert_eq!(finish(s, &b, Outcome::Killed).await.state, JobState::Killed);
}

pub(super) async fn a_checking_job_whose_lease_expires_is_lost_and_retried(t: TestStore) {
    let s = &*t.store;
    let id = submit1(s, job("a").attempts(2).backoff_ms(1)).await;
    let f = factory(s, "f", &[]).await;
    let c = s
        .claim(f, Duration::from_millis(400))
        .await
        .expect("claim")
        .expect("claimable");
    begin_checking(s, &c, 0).await;
    assert!(s.reap().await.expect("reap").is_empty(), "not expired yet");
    t.pass(Duration::from_millis(450)).await;
    assert_eq!(s.reap().await.expect("reap"), vec![c.run.id]);
    assert_eq!(
        s.run(c.run.id).await.expect("run").outcome,
        Some(Outcome::Lost)
    );
    let j = s.job(id).await.expect("job");
    assert_eq!(j.state, JobState::Queued, "lost is retried by default");
    let last = transitions(s, id).await.pop().expect("a transition");
    assert_eq!((last.0.as_str(), last.1.as_str()), ("checking", "queued"));
}

pub(super) async fn a_checking_job_holds_its_lock(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a").lock("repo"), job("b").lock("repo")]).await;
    let f = factory(s, "f", &[]).await;
    let a = claim(s, f).await;
    assert_eq!(a.job.id, ids[0]);
    begin_checking(s, &a, 0).await;
    assert!(s.claim(f, LONG).await.expect("claim").is_none(), "b waits");
    begin_fix_round(s, &a, 1, "review_rejected").await;
    begin_checking(s, &a, 1).await;
    assert!(
        s.claim(f, LONG).await.expect("claim").is_none(),
        "b still waits"
    );
    finish(s, &a, Outcome::Succeeded).await;
    assert_eq!(claim(s, f).await.job.id, ids[1]);
}

/// A `gates_failed` finish of a checking job with attempts left.
fn gates_failed(c: &Claim) -> FinishReport {
    FinishReport {
        error: Some("gates_failed: test".into()),
        exit_code: Some(0),
        ..report(c, Outcome::GatesFailed)
    }
}

pub(super) async fn gates_failed_is_retried_only_when_retry_on_lists_it(t: TestStore) {
    let s = &*t.store;
    let default = job("a").attempts(3);
    let listed = job("b")
        .attempts(3)
        .backoff_ms(1)
        .retry_on(&[Outcome::Lost, Outcome::GatesFailed]);
    let ids = submit(s, vec![default, listed]).await;
    let f = factory(s, "f", &[]).await;
    for (id, want) in [(ids[0], JobState::Failed), (ids[1], JobState::Queued)] {
        let c = claim(s, f).await;
        assert_eq!(c.job.id, id);
        begin_checking(s, &c, 0).await;
        let j = s.finish(c.run.id, gates_failed(&c)).await.expect("finish");
        assert_eq!(j.state, want, "job {id}");
        let run = s.run(c.run.id).await.expect("run");
        assert_eq!(run.outcome, Some(Outcome::GatesFailed));
        assert_eq!(run.error.as_deref(), Some("gates_failed: test"));
    }
    assert_eq!(
        s.job(ids[0]).await.expect("job").reason.as_deref(),
        Some("attempt 1 gates_failed: test"),
        "the reason names the failed check"
    );
    let retried = s.job(ids[1]).await.expect("job").reason.unwrap_or_default();
    assert!(
        retried.starts_with("attempt 1 gates_failed: test; retrying in"),
        "{retried}"
    );
}

pub(super) async fn kill_all_and_status_cover_checking_jobs(t: TestStore) {
    let s = &*t.store;
    let ids = submit(s, vec![job("a"), job("b"), job("c")]).await;
    let f = factory(s, "f", &[]).await;
    let a = claim(s, f).await;
    let b = claim(s, f).await;
    begin_checking(s, &a, 0).await;
    let st = s.status().await.expect("status");
    assert_eq!(st.jobs["checking"], 1);
    assert_eq!(st.jobs["running"], 1);
    assert_eq!(st.jobs["queued"], 1);
    let info = s.factories().await.expect("factories");
    assert_eq!(info[0].running, 2, "a checking job holds its seat");
    let checking = s
        .jobs(&gantry_store::JobFilter {
            state: Some(JobState::Checking),
            ..Default::default()
        })
        .await
        .expect("jobs");
    assert_eq!(checking.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[0]]);
    let mut killed = s.kill_all().await.expect("kill all");
    killed.sort();
    assert_eq!(killed, [ids[0], ids[1]]);
    for c in [&a, &b] {
        let r = s.renew(c.run.id, c.run.epoch, LONG).await.expect("renew");
        assert_eq!(r.stop, Some(StopKind::Kill));
    }
    // A factory gone away: its leases expire, the checking job's too.
    let mut expired = s.expire_leases_of(f).await.expect("expire");
    expired.sort();
    assert_eq!(expired, [a.run.id, b.run.id]);
}

pub(super) async fn a_check_event_that_does_not_fit_is_refused(t: TestStore) {
    let s = &*t.store;
    submit1(s, job("a")).await;
    let f = factory(s, "f", &[]).await;
    let c = claim(s, f).await;
    let bad = NewEvent {
        kind: "run.checking".into(),
        data: serde_json::json!({"round": "first"}),
    };
    let err = s
        .append_events(c.run.id, c.run.epoch, vec![bad])
        .await
        .expect_err("refused");
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(state_of(s, &c).await, JobState::Running);
    // Findings are recorded as events only.
    let findings = vec![
        NewEvent::of(&ev::SecretFound {
            file: "a.env".into(),
            line: 3,
            rule: "aws-access-key".into(),
            fingerprint: "fp".into(),
        }),
        NewEvent::of(&ev::CheckConflict {
            base: "main".into(),
            paths: vec!["src/lib.rs".into()],
        }),
        NewEvent::of(&ev::CheckRebased {
            base: "main".into(),
            tip: "aaa".into(),
            commit: "bbb".into(),
        }),
    ];
    upload(s, &c, findings).await;
    assert_eq!(state_of(s, &c).await, JobState::Running);
}

cases! {
    checking_and_fix_rounds_then_success,
    a_stale_runs_checking_is_refused_and_recorded,
    kill_and_cancel_of_a_checking_job,
    a_checking_job_whose_lease_expires_is_lost_and_retried,
    a_checking_job_holds_its_lock,
    gates_failed_is_retried_only_when_retry_on_lists_it,
    kill_all_and_status_cover_checking_jobs,
    a_check_event_that_does_not_fit_is_refused,
}
