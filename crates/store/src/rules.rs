//! Rules both backends apply in the same way, kept once: the order in which a batch's
//! new jobs are stored, what a reused idempotency key means, who may register a
//! factory name, how an attempt's end decides retry and backoff, what a finish
//! report records, and how queued jobs are counted by capability set.

use crate::{Binding, StoreError};
use gantry_core::api::{FinishReport, Scope};
use gantry_core::retry;
use gantry_core::time::Millis;
use gantry_core::{DepRef, JobId, JobSpec, Outcome, ParsedJob, RunId, StopKind};
use std::collections::BTreeMap;

/// The owner of the idempotency keys of jobs stored before keys were scoped: every
/// submitter sees them (token ids start at 1 on both backends, so 0 is no token's).
pub(crate) const UNSCOPED_KEYS: i64 = 0;

/// The owner of the idempotency keys of jobs submitted without a token (the server
/// itself, benches, tests): kept apart from every token's and from the unscoped ones.
const NO_TOKEN: i64 = -1;

/// The submitter under which a batch's idempotency keys are stored and looked up: the
/// token's id, or [`NO_TOKEN`]. Lookups also see [`UNSCOPED_KEYS`].
pub(crate) fn key_owner(submitter: Option<i64>) -> i64 {
    submitter.unwrap_or(NO_TOKEN)
}

/// Whether a job file reusing an idempotency key asks for the same job: its spec
/// equals the stored one (`stored`, the spec's JSON text). Otherwise the reuse is a
/// conflict naming the key and the job stored under it.
pub(crate) fn check_key_reuse(
    pj: &ParsedJob,
    key: &str,
    job: JobId,
    stored: &str,
) -> Result<(), StoreError> {
    // Compared as specs, not as text, so a spec stored by an older release (without
    // fields added since, which deserialize to their defaults) still matches.
    let stored: JobSpec = serde_json::from_str(stored)
        .map_err(|e| StoreError::Corrupt(format!("job {job} has an unreadable spec: {e}")))?;
    if stored == pj.spec {
        Ok(())
    } else {
        Err(StoreError::IdempotencyConflict {
            file: pj.file.clone(),
            key: key.to_string(),
            job: Some(job),
            by: format!("job {job}"),
        })
    }
}

/// Whether a job file reusing an idempotency key of an earlier file of the same batch
/// (`first`) asks for the same job.
pub(crate) fn check_batch_key_reuse(
    pj: &ParsedJob,
    key: &str,
    first: &ParsedJob,
) -> Result<(), StoreError> {
    if first.spec == pj.spec {
        Ok(())
    } else {
        Err(StoreError::IdempotencyConflict {
            file: pj.file.clone(),
            key: key.to_string(),
            job: None,
            by: format!("{} of this batch", first.file),
        })
    }
}

/// The normalized form of a set of required capabilities: sorted (by bytes),
/// deduplicated, comma-joined; empty for none. It is the `capabilities` label of the
/// `gantry_queue_depth` gauge.
pub fn capability_set<S: AsRef<str>>(caps: &[S]) -> String {
    let mut caps: Vec<&str> = caps.iter().map(AsRef::as_ref).collect();
    caps.sort_unstable();
    caps.dedup();
    caps.join(",")
}

/// Queued jobs by normalized capability set, from a backend's counts grouped by the
/// stored (unnormalized) capability lists: lists that differ only in order or
/// repetition are one set, so their counts are added.
pub(crate) fn queue_depth_of<S: AsRef<str>>(
    groups: impl IntoIterator<Item = (Vec<S>, i64)>,
) -> BTreeMap<String, u64> {
    let mut by_caps = BTreeMap::new();
    for (caps, n) in groups {
        // A count is never negative; the conversion only guards the type.
        *by_caps.entry(capability_set(&caps)).or_insert(0) += u64::try_from(n).unwrap_or(0);
    }
    by_caps
}

/// The token registering a factory name, as the store read it.
pub(crate) struct Registrant {
    /// The token's id.
    pub id: i64,
    /// The token's name.
    pub name: String,
    /// The token's scope.
    pub scope: Scope,
    /// The name of the factory the token is bound to, if any (factory tokens only).
    pub bound_to: Option<String>,
}

/// The factory already registered under the name asked for, as the store read it.
pub(crate) struct NameHolder {
    /// The token the name belongs to (`factories.token_id`): its id, name and whether
    /// it is live. `None` when the server registered the name itself (its embedded
    /// factory) or the name was registered before names were bound to tokens.
    pub registrar: Option<(i64, String, bool)>,
    /// The name of a live factory token other than the registrant that is bound to
    /// the factory.
    pub bound_live: Option<String>,
}

/// What a registration comes to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    /// Register (insert the factory, or update the existing one).
    Go {
        /// The name becomes the registrant's (`factories.token_id`).
        own: bool,
        /// The factory token becomes bound to the factory (`tokens.factory_id`).
        bind: bool,
    },
    /// Refused, nothing changes: this binding is in the way.
    Refused(Binding),
}

/// Decides a registration of the factory name `name` by `who`, given the factory
/// already registered under it (`None` for a new name).
///
/// A name belongs to the token that registered it first, until that token is revoked.
/// Admin tokens may act for any factory anyway, so they may register any name, but
/// they take over only a name no live token holds; a factory token taking a name that
/// is not free would act for (and finish the runs of) a factory that is not its own.
pub(crate) fn registration(
    name: &str,
    who: &Registrant,
    existing: Option<&NameHolder>,
) -> Registration {
    let factory_token = who.scope == Scope::Factory;
    if factory_token
        && let Some(bound) = &who.bound_to
        && bound != name
    {
        return Registration::Refused(Binding::TokenTaken {
            token: who.name.clone(),
            factory: bound.clone(),
        });
    }
    let bind = factory_token && who.bound_to.is_none();
    let Some(holder) = existing else {
        return Registration::Go { own: true, bind };
    };
    let taken = |token: &str| {
        if factory_token {
            Registration::Refused(Binding::FactoryTaken {
                factory: name.to_string(),
                token: token.to_string(),
            })
        } else {
            Registration::Go {
                own: false,
                bind: false,
            }
        }
    };
    if let Some(token) = &holder.bound_live {
        return taken(token);
    }
    match &holder.registrar {
        Some((id, _, _)) if *id == who.id => Registration::Go { own: false, bind },
        Some((_, token, true)) => taken(token),
        // The token that held the name was revoked: the name is free again, so a
        // replaced factory token takes its factory over once the old one is revoked.
        Some((_, _, false)) => Registration::Go { own: true, bind },
        None if factory_token => Registration::Refused(Binding::NameReserved {
            factory: name.to_string(),
        }),
        None => Registration::Go {
            own: true,
            bind: false,
        },
    }
}

/// How an attempt ended, as the lifecycle will record it.
pub(crate) struct AttemptEnd {
    /// The outcome (a requested stop replaces `lost`).
    pub outcome: Outcome,
    /// Whether another attempt follows.
    pub retry: bool,
    /// When the next attempt may be claimed.
    pub not_before: Option<Millis>,
    /// The job's reason text.
    pub reason: Option<String>,
}

/// The job's reason `reason` for an attempt that ended with `outcome`, naming what the
/// factory reported when the outcome alone says too little: a `gates_failed` end's
/// report says which check failed in its error (`gates_failed: <gate>`,
/// `review_rejected`, `conflict`, `secret_found`), shown in place of the bare outcome;
/// a `failed` end's error follows it (`attempt 1 failed: API Error: ...`).
pub(crate) fn reason_with_error(
    reason: Option<String>,
    outcome: Outcome,
    error: Option<&str>,
) -> Option<String> {
    match (reason, error.map(str::trim).filter(|e| !e.is_empty())) {
        (Some(r), Some(e)) if outcome == Outcome::GatesFailed => {
            Some(r.replacen(outcome.as_str(), e, 1))
        }
        // A failed attempt's error (the agent's own words, a signal, a workspace that
        // could not be set up) belongs in the reason a person reads first.
        (Some(r), Some(e)) if outcome == Outcome::Failed => {
            let named = format!(
                "{}: {}",
                outcome.as_str(),
                gantry_core::text::clip_marked(e, MAX_REASON_ERROR)
            );
            Some(r.replacen(outcome.as_str(), &named, 1))
        }
        (reason, _) => reason,
    }
}

/// The most of a failed attempt's error a job's reason quotes.
const MAX_REASON_ERROR: usize = 300;

/// Decides retry, backoff and reason for an attempt that ended with `outcome`;
/// `attempts` is (this attempt, attempts allowed).
pub(crate) fn attempt_end(
    outcome: Outcome,
    stop: Option<StopKind>,
    attempts: (u32, u32),
    retry_on: &[Outcome],
    backoff_ms: u64,
    now: Millis,
) -> AttemptEnd {
    let (attempt, max_attempts) = attempts;
    // A stop that a person requested decides how the job ends when the run vanished
    // without saying (lost); a reported outcome is what really happened and stands.
    let outcome = match (outcome, stop) {
        (Outcome::Lost, Some(stop)) => stop.outcome(),
        (o, _) => o,
    };
    let retry = retry::should_retry(outcome, attempt, max_attempts, retry_on, stop.is_some());
    let (not_before, reason) = if retry {
        let delay = retry::backoff_ms_random(backoff_ms, attempt);
        (
            Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX))),
            Some(format!(
                "attempt {attempt} {outcome}; retrying in {delay} ms"
            )),
        )
    } else if outcome == Outcome::Succeeded {
        (None, None)
    } else {
        (None, Some(format!("attempt {attempt} {outcome}")))
    };
    AttemptEnd {
        outcome,
        retry,
        not_before,
        reason,
    }
}

/// Where a dependency of a new job points.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// A job stored before this batch.
    Stored(JobId),
    /// The new job at this index of the batch's new jobs.
    New(usize),
}

/// Depth-first order of the new jobs, deps first; a cycle is an error on the job that
/// closes it, naming the dep and the files around the cycle.
pub(crate) fn topo_order(
    jobs: &[ParsedJob],
    news: &[usize],
    edges: &[Vec<(Target, &DepRef)>],
) -> Result<Vec<usize>, StoreError> {
    const WHITE: u8 = 0;
    const GRAY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; news.len()];
    let mut order = Vec::with_capacity(news.len());
    for start in 0..news.len() {
        if color[start] != WHITE {
            continue;
        }
        color[start] = GRAY;
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(&(node, next)) = stack.last() {
            let Some(&(target, dep)) = edges[node].get(next) else {
                color[node] = BLACK;
                order.push(node);
                stack.pop();
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            let Target::New(m) = target else {
                continue;
            };
            match color[m] {
                WHITE => {
                    color[m] = GRAY;
                    stack.push((m, 0));
                }
                GRAY => {
                    let from = stack.iter().position(|&(n, _)| n == m).unwrap_or(0);
                    let path: Vec<&str> = stack[from..]
                        .iter()
                        .map(|&(n, _)| jobs[news[n]].file.as_str())
                        .chain(std::iter::once(jobs[news[m]].file.as_str()))
                        .collect();
                    let pj = &jobs[news[node]];
                    return Err(pj
                        .error(
                            "deps",
                            format!("dependency cycle through {dep}: {}", path.join(" -> ")),
                        )
                        .into());
                }
                _ => {}
            }
        }
    }
    Ok(order)
}

/// The outcome of a finish report of `run`; a report without one is invalid.
pub(crate) fn report_outcome(run: RunId, report: &FinishReport) -> Result<Outcome, StoreError> {
    report.outcome.ok_or_else(|| {
        StoreError::Invalid(gantry_core::SpecError {
            file: format!("finish of run {run}"),
            line: None,
            field: Some("outcome".into()),
            message: "the finish report has no outcome".into(),
        })
    })
}

/// The data of the `run.finished` event of a finish with `outcome` (JSON text).
pub(crate) fn finished_data(outcome: Outcome, report: &FinishReport) -> Result<String, StoreError> {
    let data = gantry_core::event::RunFinished {
        outcome,
        exit_code: report.exit_code,
        error: report.error.clone(),
        branch: report.branch.clone(),
        base_commit: report.base_commit.clone(),
        commit: report.commit.clone(),
        files_changed: report.files_changed,
        lines_added: report.lines_added,
        lines_deleted: report.lines_deleted,
        insights: report.insights.clone(),
    };
    Ok(gantry_core::event::Payload::text(&data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gates_failed_reason_names_the_failed_check() {
        let r = |reason: &str, outcome, error| {
            reason_with_error(Some(reason.to_string()), outcome, error)
        };
        let gf = Outcome::GatesFailed;
        assert_eq!(
            r("attempt 2 gates_failed", gf, Some("gates_failed: test")).as_deref(),
            Some("attempt 2 gates_failed: test")
        );
        assert_eq!(
            r(
                "attempt 1 gates_failed; retrying in 9 ms",
                gf,
                Some("conflict")
            )
            .as_deref(),
            Some("attempt 1 conflict; retrying in 9 ms")
        );
        assert_eq!(
            r("attempt 1 gates_failed", gf, None).as_deref(),
            Some("attempt 1 gates_failed")
        );
        // A failed attempt's error follows the outcome, before any retry note.
        assert_eq!(
            r(
                "attempt 1 failed; retrying in 9 ms",
                Outcome::Failed,
                Some("API Error: Connection error.")
            )
            .as_deref(),
            Some("attempt 1 failed: API Error: Connection error.; retrying in 9 ms")
        );
        let long = "é".repeat(400);
        let clipped = r("attempt 1 failed", Outcome::Failed, Some(&long)).unwrap_or_default();
        assert!(
            clipped.ends_with('…') && clipped.len() <= 18 + 300 + 3,
            "{clipped}"
        );
        // Other outcomes keep their reason, whatever the report's error.
        assert_eq!(
            r("attempt 1 lost", Outcome::Lost, Some("exit 1")).as_deref(),
            Some("attempt 1 lost")
        );
        assert_eq!(reason_with_error(None, gf, Some("x")), None);
    }

    #[test]
    fn capability_sets_are_sorted_and_deduplicated() {
        assert_eq!(capability_set::<&str>(&[]), "");
        assert_eq!(
            capability_set(&["gpu=a100", "docker", "docker"]),
            "docker,gpu=a100"
        );
    }

    #[test]
    fn queue_depth_adds_lists_of_the_same_set() {
        let depth = queue_depth_of([
            (vec!["gpu", "docker"], 2),
            (vec!["docker", "gpu", "gpu"], 3),
            (vec![], 4),
        ]);
        assert_eq!(
            depth.into_iter().collect::<Vec<_>>(),
            vec![("".to_string(), 4), ("docker,gpu".to_string(), 5)]
        );
    }

    fn who(id: i64, scope: Scope, bound_to: Option<&str>) -> Registrant {
        Registrant {
            id,
            name: format!("t{id}"),
            scope,
            bound_to: bound_to.map(str::to_string),
        }
    }

    fn held_by(registrar: Option<(i64, bool)>, bound_live: Option<&str>) -> NameHolder {
        NameHolder {
            registrar: registrar.map(|(id, live)| (id, format!("t{id}"), live)),
            bound_live: bound_live.map(str::to_string),
        }
    }

    fn taken(token: &str) -> Registration {
        Registration::Refused(Binding::FactoryTaken {
            factory: "x".into(),
            token: token.into(),
        })
    }

    const GO: Registration = Registration::Go {
        own: true,
        bind: true,
    };

    /// Every case of who registers a name, against who holds it.
    #[test]
    fn a_name_belongs_to_the_token_that_registered_it() {
        let factory = who(1, Scope::Factory, None);
        let admin = who(2, Scope::Admin, None);
        let admin_go = |own| Registration::Go { own, bind: false };
        let cases: Vec<(&Registrant, Option<NameHolder>, Registration)> = vec![
            // A new name is the registrant's; a factory token is bound to it.
            (&factory, None, GO),
            (&admin, None, admin_go(true)),
            // Its own name again.
            (
                &factory,
                Some(held_by(Some((1, true)), None)),
                Registration::Go {
                    own: false,
                    bind: true,
                },
            ),
            (
                &admin,
                Some(held_by(Some((2, true)), None)),
                admin_go(false),
            ),
            // Another live token's name: refused to a factory token (the takeover of
            // issue 15); an admin re-registers it without taking it.
            (&factory, Some(held_by(Some((2, true)), None)), taken("t2")),
            (&factory, Some(held_by(None, Some("t9"))), taken("t9")),
            (
                &admin,
                Some(held_by(Some((1, true)), None)),
                admin_go(false),
            ),
            // A revoked token's name is free.
            (&factory, Some(held_by(Some((2, false)), None)), GO),
            (
                &admin,
                Some(held_by(Some((1, false)), None)),
                admin_go(true),
            ),
            // A name of no token (the server's own, or from before names were bound).
            (
                &factory,
                Some(held_by(None, None)),
                Registration::Refused(Binding::NameReserved {
                    factory: "x".into(),
                }),
            ),
            (&admin, Some(held_by(None, None)), admin_go(true)),
        ];
        for (i, (w, holder, expected)) in cases.into_iter().enumerate() {
            assert_eq!(registration("x", w, holder.as_ref()), expected, "case {i}");
        }
        // A factory token bound to another factory registers no other name.
        assert_eq!(
            registration("x", &who(3, Scope::Factory, Some("y")), None),
            Registration::Refused(Binding::TokenTaken {
                token: "t3".into(),
                factory: "y".into(),
            })
        );
    }
}
