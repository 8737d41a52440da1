//! Payloads of the checking stage (issue 11): the state changes a factory asks for
//! through its event uploads, the gates' results, and what the checks found.

use super::Payload;
use crate::gate::GateResult;
use crate::review::ReviewResult;
use serde::{Deserialize, Serialize};

/// The factory began checking the agent's result: the store moves the job from
/// `running` to `checking`. Data: `{round}`.
pub const RUN_CHECKING: &str = "run.checking";
/// A check failed and the factory resumed the agent: the store moves the job from
/// `checking` back to `running`. Data: `{round, reasons}`.
pub const RUN_FIX_ROUND: &str = "run.fix_round";
/// A gate began. Data: `{name, round}`.
pub const GATE_STARTED: &str = "gate.started";
/// A gate passed. Data: the [`GateResult`] fields and `round`.
pub const GATE_PASSED: &str = "gate.passed";
/// A gate failed. Data: the [`GateResult`] fields and `round`.
pub const GATE_FAILED: &str = "gate.failed";
/// The secret scan found a credential. Data: `{file, line, rule, fingerprint}`, never
/// the value.
pub const SECRET_FOUND: &str = "secret.found";
/// The reviewer began on the result. Data: `{round, engine, model}`.
pub const REVIEW_STARTED: &str = "review.started";
/// The review passed. Data: the [`ReviewResult`] fields.
pub const REVIEW_PASSED: &str = "review.passed";
/// The review failed: a score under the threshold, or no readable verdict. Data: the
/// [`ReviewResult`] fields.
pub const REVIEW_FAILED: &str = "review.failed";
/// The result does not merge onto its base's tip. Data: `{base, paths}`.
pub const CHECK_CONFLICT: &str = "check.conflict";
/// The result was rebased onto its base's tip. Data: `{base, tip, commit}`.
pub const CHECK_REBASED: &str = "check.rebased";

payload! {
    /// Data of [`RUN_CHECKING`].
    RunChecking = RUN_CHECKING {
        /// 0 for the first check after the agent's first exit; n after fix round n.
        pub round: u32,
    }
}

payload! {
    /// Data of [`RUN_FIX_ROUND`].
    RunFixRound = RUN_FIX_ROUND {
        /// The fix round, from 1.
        pub round: u32,
        /// Why: one line per failed check (see `core::fix`).
        pub reasons: Vec<String>,
    }
}

payload! {
    /// Data of [`GATE_STARTED`].
    GateStarted = GATE_STARTED {
        /// The gate's name.
        pub name: String,
        /// The check round it runs in.
        pub round: u32,
    }
}

payload! {
    /// Data of [`GATE_PASSED`]: the gate's result and its round.
    GatePassed = GATE_PASSED {
        /// What happened to the gate.
        #[serde(flatten)]
        pub result: GateResult,
        /// The check round it ran in.
        pub round: u32,
    }
}

payload! {
    /// Data of [`GATE_FAILED`]: the gate's result and its round.
    GateFailed = GATE_FAILED {
        /// What happened to the gate.
        #[serde(flatten)]
        pub result: GateResult,
        /// The check round it ran in.
        pub round: u32,
    }
}

payload! {
    /// Data of [`SECRET_FOUND`]: where, by which rule, and a fingerprint of the value.
    SecretFound = SECRET_FOUND {
        /// The file, relative to the worktree.
        pub file: String,
        /// The line, from 1.
        pub line: u32,
        /// The rule that matched.
        pub rule: String,
        /// A fingerprint of the value (never the value itself).
        pub fingerprint: String,
    }
}

payload! {
    /// Data of [`CHECK_CONFLICT`].
    CheckConflict = CHECK_CONFLICT {
        /// The base branch the result must merge onto.
        pub base: String,
        /// The conflicting paths.
        pub paths: Vec<String>,
    }
}

payload! {
    /// Data of [`CHECK_REBASED`].
    CheckRebased = CHECK_REBASED {
        /// The base branch.
        pub base: String,
        /// The base's tip the result was rebased onto.
        pub tip: String,
        /// The rebased commit.
        pub commit: String,
    }
}

payload! {
    /// Data of [`REVIEW_STARTED`].
    ReviewStarted = REVIEW_STARTED {
        /// The check round it reviews.
        pub round: u32,
        /// The reviewer's engine.
        pub engine: crate::spec::EngineKind,
        /// The model asked of it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub model: Option<String>,
    }
}

payload! {
    /// Data of [`REVIEW_PASSED`].
    ReviewPassed = REVIEW_PASSED {
        /// What the review gave.
        #[serde(flatten)]
        pub result: ReviewResult,
    }
}

payload! {
    /// Data of [`REVIEW_FAILED`].
    ReviewFailed = REVIEW_FAILED {
        /// What the review gave.
        #[serde(flatten)]
        pub result: ReviewResult,
    }
}
