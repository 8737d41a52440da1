//! Identifiers of jobs, runs and factories.
//!
//! Ids are positive integers assigned by the store. They are short enough to type on
//! the command line (`gantry show 12`) and sort in submission order.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map($name)
                    .ok_or_else(|| format!("invalid {} id {:?}: expected a positive integer", $what, s))
            }
        }
    };
}

int_id!(
    /// The id of a job, unique within one store.
    JobId,
    "job"
);
int_id!(
    /// The id of a run (one attempt of a job), unique within one store.
    RunId,
    "run"
);
int_id!(
    /// The id of a registered factory.
    FactoryId,
    "factory"
);
