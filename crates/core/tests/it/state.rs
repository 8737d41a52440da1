//! The lifecycle, exhaustively: every state × every input, against a table written out
//! by hand, so any change to the lifecycle breaks a test and has to be made on purpose.

use gantry_core::state::{Effect, Input, InvalidTransition, next};
use gantry_core::{JobState, Outcome};

/// What `next` must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Move to this state, nothing else to do.
    To(JobState),
    /// Stay/move to this state and ask the factory for this.
    Effect(JobState, Effect),
    /// Not allowed.
    Invalid,
}

use Expect::{Effect as Eff, Invalid, To};
use JobState::{Blocked, Canceled, Checking, Failed, Killed, Queued, Running, Succeeded};

const fn ended(outcome: Outcome, retry: bool) -> Input {
    Input::AttemptEnded { outcome, retry }
}

const DEPS_MET: Input = Input::DepsMet;
const DEP_FAILED: Input = Input::DepFailed;
const CLAIM: Input = Input::Claim;
const CHECK: Input = Input::CheckBegan;
const FIX: Input = Input::FixRoundBegan;
const CANCEL: Input = Input::Cancel;
const KILL: Input = Input::Kill;
const RETRY_DEPS_MET: Input = Input::Retry { deps_met: true };
const RETRY_DEPS_UNMET: Input = Input::Retry { deps_met: false };
const OK_R: Input = ended(Outcome::Succeeded, true);
const OK_N: Input = ended(Outcome::Succeeded, false);
const FAIL_R: Input = ended(Outcome::Failed, true);
const FAIL_N: Input = ended(Outcome::Failed, false);
const TIME_R: Input = ended(Outcome::TimedOut, true);
const TIME_N: Input = ended(Outcome::TimedOut, false);
const LOST_R: Input = ended(Outcome::Lost, true);
const LOST_N: Input = ended(Outcome::Lost, false);
const KILL_R: Input = ended(Outcome::Killed, true);
const KILL_N: Input = ended(Outcome::Killed, false);
const CANC_R: Input = ended(Outcome::Canceled, true);
const CANC_N: Input = ended(Outcome::Canceled, false);
const BUDG_R: Input = ended(Outcome::BudgetExceeded, true);
const BUDG_N: Input = ended(Outcome::BudgetExceeded, false);
const GATE_R: Input = ended(Outcome::GatesFailed, true);
const GATE_N: Input = ended(Outcome::GatesFailed, false);

/// The whole lifecycle. `_R` = the retry policy allows another attempt, `_N` = it does not.
const TABLE: &[(JobState, Input, Expect)] = &[
    // blocked: waits for deps; can be canceled or killed; nothing runs yet.
    (Blocked, DEPS_MET, To(Queued)),
    (Blocked, DEP_FAILED, To(Canceled)),
    (Blocked, CLAIM, Invalid),
    (Blocked, CHECK, Invalid),
    (Blocked, FIX, Invalid),
    (Blocked, OK_R, Invalid),
    (Blocked, OK_N, Invalid),
    (Blocked, FAIL_R, Invalid),
    (Blocked, FAIL_N, Invalid),
    (Blocked, TIME_R, Invalid),
    (Blocked, TIME_N, Invalid),
    (Blocked, BUDG_R, Invalid),
    (Blocked, BUDG_N, Invalid),
    (Blocked, GATE_R, Invalid),
    (Blocked, GATE_N, Invalid),
    (Blocked, LOST_R, Invalid),
    (Blocked, LOST_N, Invalid),
    (Blocked, KILL_R, Invalid),
    (Blocked, KILL_N, Invalid),
    (Blocked, CANC_R, Invalid),
    (Blocked, CANC_N, Invalid),
    (Blocked, CANCEL, To(Canceled)),
    (Blocked, KILL, To(Killed)),
    (Blocked, RETRY_DEPS_MET, Invalid),
    (Blocked, RETRY_DEPS_UNMET, Invalid),
    // queued: claimable; can be canceled or killed.
    (Queued, DEPS_MET, Invalid),
    (Queued, DEP_FAILED, Invalid),
    (Queued, CLAIM, To(Running)),
    (Queued, CHECK, Invalid),
    (Queued, FIX, Invalid),
    (Queued, OK_R, Invalid),
    (Queued, OK_N, Invalid),
    (Queued, FAIL_R, Invalid),
    (Queued, FAIL_N, Invalid),
    (Queued, TIME_R, Invalid),
    (Queued, TIME_N, Invalid),
    (Queued, BUDG_R, Invalid),
    (Queued, BUDG_N, Invalid),
    (Queued, GATE_R, Invalid),
    (Queued, GATE_N, Invalid),
    (Queued, LOST_R, Invalid),
    (Queued, LOST_N, Invalid),
    (Queued, KILL_R, Invalid),
    (Queued, KILL_N, Invalid),
    (Queued, CANC_R, Invalid),
    (Queued, CANC_N, Invalid),
    (Queued, CANCEL, To(Canceled)),
    (Queued, KILL, To(Killed)),
    (Queued, RETRY_DEPS_MET, Invalid),
    (Queued, RETRY_DEPS_UNMET, Invalid),
    // running: the attempt's outcome decides; cancel and kill only ask the factory.
    (Running, DEPS_MET, Invalid),
    (Running, DEP_FAILED, Invalid),
    (Running, CLAIM, Invalid),
    (Running, CHECK, To(Checking)),
    (Running, FIX, Invalid),
    (Running, OK_R, To(Succeeded)),
    (Running, OK_N, To(Succeeded)),
    (Running, FAIL_R, To(Queued)),
    (Running, FAIL_N, To(Failed)),
    (Running, TIME_R, To(Queued)),
    (Running, TIME_N, To(Failed)),
    // A budget stop is final even when the retry policy would allow another attempt.
    (Running, BUDG_R, To(Failed)),
    (Running, BUDG_N, To(Failed)),
    (Running, GATE_R, To(Queued)),
    (Running, GATE_N, To(Failed)),
    (Running, LOST_R, To(Queued)),
    (Running, LOST_N, To(Failed)),
    (Running, KILL_R, To(Killed)),
    (Running, KILL_N, To(Killed)),
    (Running, CANC_R, To(Canceled)),
    (Running, CANC_N, To(Canceled)),
    (Running, CANCEL, Eff(Running, Effect::RequestCancel)),
    (Running, KILL, Eff(Running, Effect::RequestKill)),
    (Running, RETRY_DEPS_MET, Invalid),
    (Running, RETRY_DEPS_UNMET, Invalid),
    // checking: like running (the attempt's outcome decides, cancel and kill only ask the
    // factory), except that it is entered by CHECK and left for running by a fix round.
    (Checking, DEPS_MET, Invalid),
    (Checking, DEP_FAILED, Invalid),
    (Checking, CLAIM, Invalid),
    (Checking, CHECK, Invalid),
    (Checking, FIX, To(Running)),
    (Checking, OK_R, To(Succeeded)),
    (Checking, OK_N, To(Succeeded)),
    (Checking, FAIL_R, To(Queued)),
    (Checking, FAIL_N, To(Failed)),
    (Checking, TIME_R, To(Queued)),
    (Checking, TIME_N, To(Failed)),
    (Checking, BUDG_R, To(Failed)),
    (Checking, BUDG_N, To(Failed)),
    (Checking, GATE_R, To(Queued)),
    (Checking, GATE_N, To(Failed)),
    (Checking, LOST_R, To(Queued)),
    (Checking, LOST_N, To(Failed)),
    (Checking, KILL_R, To(Killed)),
    (Checking, KILL_N, To(Killed)),
    (Checking, CANC_R, To(Canceled)),
    (Checking, CANC_N, To(Canceled)),
    (Checking, CANCEL, Eff(Checking, Effect::RequestCancel)),
    (Checking, KILL, Eff(Checking, Effect::RequestKill)),
    (Checking, RETRY_DEPS_MET, Invalid),
    (Checking, RETRY_DEPS_UNMET, Invalid),
    // succeeded: final, not even a manual retry.
    (Succeeded, DEPS_MET, Invalid),
    (Succeeded, DEP_FAILED, Invalid),
    (Succeeded, CLAIM, Invalid),
    (Succeeded, CHECK, Invalid),
    (Succeeded, FIX, Invalid),
    (Succeeded, OK_R, Invalid),
    (Succeeded, OK_N, Invalid),
    (Succeeded, FAIL_R, Invalid),
    (Succeeded, FAIL_N, Invalid),
    (Succeeded, TIME_R, Invalid),
    (Succeeded, TIME_N, Invalid),
    (Succeeded, BUDG_R, Invalid),
    (Succeeded, BUDG_N, Invalid),
    (Succeeded, GATE_R, Invalid),
    (Succeeded, GATE_N, Invalid),
    (Succeeded, LOST_R, Invalid),
    (Succeeded, LOST_N, Invalid),
    (Succeeded, KILL_R, Invalid),
    (Succeeded, KILL_N, Invalid),
    (Succeeded, CANC_R, Invalid),
    (Succeeded, CANC_N, Invalid),
    (Succeeded, CANCEL, Invalid),
    (Succeeded, KILL, Invalid),
    (Succeeded, RETRY_DEPS_MET, Invalid),
    (Succeeded, RETRY_DEPS_UNMET, Invalid),
    // failed: only a manual retry moves it, to queued or back to blocked.
    (Failed, DEPS_MET, Invalid),
    (Failed, DEP_FAILED, Invalid),
    (Failed, CLAIM, Invalid),
    (Failed, CHECK, Invalid),
    (Failed, FIX, Invalid),
    (Failed, OK_R, Invalid),
    (Failed, OK_N, Invalid),
    (Failed, FAIL_R, Invalid),
    (Failed, FAIL_N, Invalid),
    (Failed, TIME_R, Invalid),
    (Failed, TIME_N, Invalid),
    (Failed, BUDG_R, Invalid),
    (Failed, BUDG_N, Invalid),
    (Failed, GATE_R, Invalid),
    (Failed, GATE_N, Invalid),
    (Failed, LOST_R, Invalid),
    (Failed, LOST_N, Invalid),
    (Failed, KILL_R, Invalid),
    (Failed, KILL_N, Invalid),
    (Failed, CANC_R, Invalid),
    (Failed, CANC_N, Invalid),
    (Failed, CANCEL, Invalid),
    (Failed, KILL, Invalid),
    (Failed, RETRY_DEPS_MET, To(Queued)),
    (Failed, RETRY_DEPS_UNMET, To(Blocked)),
    // canceled: like failed.
    (Canceled, DEPS_MET, Invalid),
    (Canceled, DEP_FAILED, Invalid),
    (Canceled, CLAIM, Invalid),
    (Canceled, CHECK, Invalid),
    (Canceled, FIX, Invalid),
    (Canceled, OK_R, Invalid),
    (Canceled, OK_N, Invalid),
    (Canceled, FAIL_R, Invalid),
    (Canceled, FAIL_N, Invalid),
    (Canceled, TIME_R, Invalid),
    (Canceled, TIME_N, Invalid),
    (Canceled, BUDG_R, Invalid),
    (Canceled, BUDG_N, Invalid),
    (Canceled, GATE_R, Invalid),
    (Canceled, GATE_N, Invalid),
    (Canceled, LOST_R, Invalid),
    (Canceled, LOST_N, Invalid),
    (Canceled, KILL_R, Invalid),
    (Canceled, KILL_N, Invalid),
    (Canceled, CANC_R, Invalid),
    (Canceled, CANC_N, Invalid),
    (Canceled, CANCEL, Invalid),
    (Canceled, KILL, Invalid),
    (Canceled, RETRY_DEPS_MET, To(Queued)),
    (Canceled, RETRY_DEPS_UNMET, To(Blocked)),
    // killed: like failed.
    (Killed, DEPS_MET, Invalid),
    (Killed, DEP_FAILED, Invalid),
    (Killed, CLAIM, Invalid),
    (Killed, CHECK, Invalid),
    (Killed, FIX, Invalid),
    (Killed, OK_R, Invalid),
    (Killed, OK_N, Invalid),
    (Killed, FAIL_R, Invalid),
    (Killed, FAIL_N, Invalid),
    (Killed, TIME_R, Invalid),
    (Killed, TIME_N, Invalid),
    (Killed, BUDG_R, Invalid),
    (Killed, BUDG_N, Invalid),
    (Killed, GATE_R, Invalid),
    (Killed, GATE_N, Invalid),
    (Killed, LOST_R, Invalid),
    (Killed, LOST_N, Invalid),
    (Killed, KILL_R, Invalid),
    (Killed, KILL_N, Invalid),
    (Killed, CANC_R, Invalid),
    (Killed, CANC_N, Invalid),
    (Killed, CANCEL, Invalid),
    (Killed, KILL, Invalid),
    (Killed, RETRY_DEPS_MET, To(Queued)),
    (Killed, RETRY_DEPS_UNMET, To(Blocked)),
];

/// Every input `next` can take, generated from the enums (not from the table), so the
/// table is checked for completeness against the real input space.
fn all_inputs() -> Vec<Input> {
    let mut inputs = vec![
        Input::DepsMet,
        Input::DepFailed,
        Input::Claim,
        Input::CheckBegan,
        Input::FixRoundBegan,
    ];
    for outcome in Outcome::ALL {
        for retry in [true, false] {
            inputs.push(Input::AttemptEnded { outcome, retry });
        }
    }
    inputs.extend([
        Input::Cancel,
        Input::Kill,
        Input::Retry { deps_met: true },
        Input::Retry { deps_met: false },
    ]);
    inputs
}

#[test]
fn table_covers_every_state_and_input_exactly_once() {
    let inputs = all_inputs();
    assert_eq!(inputs.len(), 25);
    assert_eq!(TABLE.len(), JobState::ALL.len() * inputs.len());
    for state in JobState::ALL {
        for input in &inputs {
            let rows = TABLE
                .iter()
                .filter(|(s, i, _)| *s == state && i == input)
                .count();
            assert_eq!(rows, 1, "{state} × {input:?} has {rows} rows in the table");
        }
    }
}

#[test]
fn next_matches_the_table() {
    for &(state, input, expect) in TABLE {
        let got = next(state, input);
        let want = match expect {
            To(s) => Ok((s, Effect::None)),
            Eff(s, e) => Ok((s, e)),
            Invalid => Err(InvalidTransition { state, input }),
        };
        assert_eq!(got, want, "next({state}, {input:?})");
    }
}

#[test]
fn terminal_states_only_leave_by_manual_retry() {
    for state in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
        for input in all_inputs() {
            if next(state, input).is_ok() {
                assert!(
                    matches!(input, Input::Retry { .. }),
                    "{state} left by {input:?}"
                );
            }
        }
    }
}

#[test]
fn is_terminal() {
    let terminal: Vec<JobState> = JobState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(terminal, [Succeeded, Failed, Canceled, Killed]);
}

#[test]
fn invalid_transition_message_names_state_and_input() {
    let e = next(Succeeded, Input::Claim).expect_err("a succeeded job cannot be claimed");
    assert_eq!(e.to_string(), "job in state succeeded cannot take Claim");
    let e = next(Queued, FAIL_N).expect_err("a queued job has no attempt to end");
    assert_eq!(
        e.to_string(),
        "job in state queued cannot take AttemptEnded { outcome: Failed, retry: false }"
    );
}

#[test]
fn retryable_outcome_kinds() {
    let retryable: Vec<Outcome> = Outcome::ALL
        .into_iter()
        .filter(|o| o.is_retryable_kind())
        .collect();
    assert_eq!(
        retryable,
        [
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Lost,
            Outcome::GatesFailed
        ]
    );
}

#[test]
fn only_a_running_job_starts_checking_and_only_a_fix_round_sends_it_back() {
    // Every way into checking is running + CHECK; every way from checking to running is
    // a fix round: nothing else reaches or leaves checking for an active state.
    for state in JobState::ALL {
        for input in all_inputs() {
            let Ok((to, _)) = next(state, input) else {
                continue;
            };
            if to == Checking && state != Checking {
                assert_eq!((state, input), (Running, CHECK));
            }
            if state == Checking && to == Running {
                assert_eq!(input, FIX);
            }
            if state == Checking && to != Checking && to != Running {
                assert!(
                    matches!(input, Input::AttemptEnded { .. }),
                    "checking left for {to} by {input:?}"
                );
            }
        }
    }
}

#[test]
fn checking_ends_exactly_as_running_does() {
    for outcome in Outcome::ALL {
        for retry in [true, false] {
            let input = Input::AttemptEnded { outcome, retry };
            assert_eq!(next(Checking, input), next(Running, input), "{input:?}");
        }
    }
}

#[test]
fn active_states() {
    let active: Vec<JobState> = JobState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .collect();
    assert_eq!(active, [Running, Checking]);
}
