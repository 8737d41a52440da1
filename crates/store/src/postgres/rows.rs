//! PostgreSQL's side of the row codecs (how [`Columns`] reads a `tokio_postgres` row),
//! and the capability set a factory's claims match against.

use crate::codec::{Column, Columns};
use tokio_postgres::Row;

impl Columns for Row {
    type Error = tokio_postgres::Error;

    fn col<T: Column>(&self, i: usize) -> Result<T, tokio_postgres::Error> {
        self.try_get(i)
    }

    /// PostgreSQL keeps a job's deps as a `bigint[]`.
    fn ids(&self, i: usize) -> Result<Vec<i64>, tokio_postgres::Error> {
        self.try_get(i)
    }

    /// PostgreSQL keeps a factory's capabilities as a `text[]`.
    fn strings(&self, i: usize) -> Result<Vec<String>, tokio_postgres::Error> {
        self.try_get(i)
    }
}

/// What a factory satisfies, as a set that a job's capabilities must be contained in:
/// its capabilities, plus the bare name of each `name=value` one. A job's `name` is in
/// it exactly when some capability is `name` or `name=<anything>`, and a job's
/// `name=value` exactly when the factory has that very capability, which is the rule of
/// [`gantry_core::caps::satisfies`] (checked against it by a test).
pub(super) fn cap_set(capabilities: &[String]) -> Vec<String> {
    let mut set: Vec<String> = capabilities.to_vec();
    for cap in capabilities {
        if let Some((name, _)) = cap.split_once('=') {
            set.push(name.to_string());
        }
    }
    set.sort();
    set.dedup();
    set
}

/// [`JOB_COLS`] for lists: the spec without its body (instructions may be large, and
/// a list is read often; the body comes with one job).
pub(super) const JOB_LIST_COLS: &str = "jobs.id, state, priority, attempt, max_attempts, \
     epoch, lock_key, deps_mode, idempotency_key, stop_requested, reason, not_before, \
     created_at, started_at, finished_at, title, deps, \
     jsonb_set(spec::jsonb, '{body}', '\"\"')::text, session_id, wip_branch, wip_base, \
     wip_commit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_set_containment_is_caps_satisfies() {
        let factories: Vec<Vec<String>> = [
            vec![],
            vec!["docker"],
            vec!["docker=24", "gpu=h100"],
            vec!["gpu=a100", "gpu"],
            vec!["a=1", "a=2", "b"],
        ]
        .iter()
        .map(|f| f.iter().map(|s| s.to_string()).collect())
        .collect();
        let jobs: Vec<Vec<String>> = [
            vec![],
            vec!["docker"],
            vec!["docker=24"],
            vec!["docker=25"],
            vec!["gpu"],
            vec!["gpu=a100"],
            vec!["gpu=h100", "docker"],
            vec!["a"],
            vec!["a=2", "b"],
            vec!["b=1"],
            vec!["c"],
        ]
        .iter()
        .map(|j| j.iter().map(|s| s.to_string()).collect())
        .collect();
        for f in &factories {
            let set = cap_set(f);
            for j in &jobs {
                let contained = j.iter().all(|need| set.contains(need));
                assert_eq!(
                    contained,
                    gantry_core::caps::satisfies(f, j),
                    "factory {f:?}, job {j:?}"
                );
            }
        }
    }
}
