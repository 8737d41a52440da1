//! Submit planning, once for both backends: which entries of a batch are new, what
//! each new job's deps point at, the order to settle them in, and the values each new
//! job is stored with. A backend stores the plan with its own statements.

use crate::StoreError;
use crate::codec::{corrupt, deps_mode_str};
use crate::lifecycle::{WriteTx, settle_blocked, settle_dependents};
use crate::rules::{self, Target, topo_order};
use gantry_core::api::Submitted;
use gantry_core::event::{self as ev, Payload};
use gantry_core::{DepRef, JobId, JobSpec, JobState, ParsedJob};
use std::collections::{HashMap, HashSet};

/// What submit planning reads from a backend's write transaction.
pub(crate) trait SubmitTx: WriteTx {
    /// The job stored under the idempotency key `key` of `owner` (see
    /// [`rules::key_owner`]); keys stored before keys were scoped
    /// ([`rules::UNSCOPED_KEYS`]) are every owner's, the owner's own first.
    async fn lookup_key(&self, owner: i64, key: &str) -> Result<Option<JobId>, Self::Error>;

    /// The spec (JSON text) of a stored job.
    async fn stored_spec(&self, id: JobId) -> Result<String, Self::Error>;

    /// Whether a job exists.
    async fn job_exists(&self, id: JobId) -> Result<bool, Self::Error>;
}

/// How an entry of a submitted batch was resolved.
enum Slot {
    /// A job stored before, under the entry's idempotency key.
    Existing(JobId),
    /// The same job as the new job at this index (an earlier entry with the same key).
    SameAs(usize),
    /// The new job at this index.
    New(usize),
}

/// A batch, planned: ready for a backend to store.
pub(crate) struct SubmitPlan<'j> {
    /// The batch.
    jobs: &'j [ParsedJob],
    /// The owner of the batch's idempotency keys.
    pub(crate) owner: i64,
    slots: Vec<Slot>,
    /// The batch index of each new job, in batch order.
    pub(crate) news: Vec<usize>,
    /// Each new job's deps.
    pub(crate) edges: Vec<Vec<(Target, &'j DepRef)>>,
    /// The new jobs, deps first.
    order: Vec<usize>,
    /// The stored jobs some new job depends on, sorted, without repeats.
    pub(crate) stored: Vec<i64>,
}

/// Plans a batch submitted by `submitter`: resolves idempotency keys (a key reused with
/// a different spec refuses the batch) and deps (an unknown dep or a cycle refuses it).
pub(crate) async fn plan<'j, T: SubmitTx>(
    tx: &T,
    jobs: &'j [ParsedJob],
    submitter: Option<i64>,
) -> Result<SubmitPlan<'j>, T::Error> {
    let owner = rules::key_owner(submitter);
    // 1. Idempotency: which entries are new, and which name a job stored earlier (or an
    //    earlier entry of this batch with the same key). Two batches racing for one new
    //    key: the second violates the unique index and runs again, finding the first.
    let mut slots = Vec::with_capacity(jobs.len());
    let mut news: Vec<usize> = Vec::new();
    let mut batch_keys: HashMap<&str, usize> = HashMap::new();
    for (i, pj) in jobs.iter().enumerate() {
        if let Some(key) = pj.spec.idempotency_key.as_deref() {
            if let Some(&n) = batch_keys.get(key) {
                rules::check_batch_key_reuse(pj, key, &jobs[news[n]])?;
                slots.push(Slot::SameAs(n));
                continue;
            }
            if let Some(id) = tx.lookup_key(owner, key).await? {
                rules::check_key_reuse(pj, key, id, &tx.stored_spec(id).await?)?;
                slots.push(Slot::Existing(id));
                continue;
            }
            batch_keys.insert(key, news.len());
        }
        slots.push(Slot::New(news.len()));
        news.push(i);
    }

    // 2. Resolve every new job's deps.
    let mut edges: Vec<Vec<(Target, &DepRef)>> = Vec::with_capacity(news.len());
    let mut stored: Vec<i64> = Vec::new();
    for &i in &news {
        let pj = &jobs[i];
        let mut targets: Vec<(Target, &DepRef)> = Vec::new();
        for dep in &pj.spec.deps {
            let Some(target) = resolve(tx, owner, &batch_keys, dep).await? else {
                return Err(StoreError::from(pj.error(
                    "deps",
                    format!("unknown dependency {dep}: no job has this id or idempotency key"),
                ))
                .into());
            };
            if let Target::Stored(id) = target {
                stored.push(id.0);
            }
            targets.push((target, dep));
        }
        edges.push(targets);
    }
    stored.sort_unstable();
    stored.dedup();

    // 3. Cycles among the new jobs (stored jobs cannot depend on new ones), and an order
    //    in which every new job comes after its new deps.
    let order = topo_order(jobs, &news, &edges)?;
    Ok(SubmitPlan {
        jobs,
        owner,
        slots,
        news,
        edges,
        order,
        stored,
    })
}

/// What a dep of a new job points at: a new job of the batch (by its key), a stored
/// job, or nothing.
async fn resolve<T: SubmitTx>(
    tx: &T,
    owner: i64,
    batch_keys: &HashMap<&str, usize>,
    dep: &DepRef,
) -> Result<Option<Target>, T::Error> {
    Ok(match dep {
        DepRef::Id(id) => tx.job_exists(*id).await?.then_some(Target::Stored(*id)),
        DepRef::Key(key) => match batch_keys.get(key.as_str()) {
            Some(&n) => Some(Target::New(n)),
            None => match tx.lookup_key(owner, key).await? {
                Some(id) => Some(Target::Stored(id)),
                // A number written as a string ("12") matching no key is an id.
                None => match key.trim().parse::<JobId>() {
                    Ok(id) if tx.job_exists(id).await? => Some(Target::Stored(id)),
                    _ => None,
                },
            },
        },
    })
}

/// A new job's values, as both backends store them.
pub(crate) struct NewJob<'j> {
    pub(crate) spec: &'j JobSpec,
    /// `blocked` when it has deps (settled once stored), else `queued`.
    pub(crate) state: JobState,
    pub(crate) priority: i64,
    pub(crate) max_attempts: i64,
    pub(crate) deps_mode: &'static str,
    /// The owner of its idempotency key, when it has one.
    pub(crate) key_owner: Option<i64>,
    /// Its required capabilities (a JSON list).
    pub(crate) capabilities: String,
    /// The outcomes it is retried on, comma-joined.
    pub(crate) retry_on: String,
    pub(crate) backoff_ms: i64,
    /// Its spec (JSON text).
    pub(crate) spec_json: String,
    /// The data of its `job.submitted` event (JSON text).
    pub(crate) submitted: String,
}

impl<'j> SubmitPlan<'j> {
    /// The new jobs' values, in batch order.
    pub(crate) fn new_jobs(&self) -> Result<Vec<NewJob<'j>>, StoreError> {
        let jobs = self.jobs;
        self.news
            .iter()
            .map(|&i| {
                let spec = &jobs[i].spec;
                let state = if spec.deps.is_empty() {
                    JobState::Queued
                } else {
                    JobState::Blocked
                };
                let retry_on: Vec<&str> = spec.retry_on.iter().map(|o| o.as_str()).collect();
                Ok(NewJob {
                    spec,
                    state,
                    priority: i64::from(spec.priority),
                    max_attempts: i64::from(spec.max_attempts.max(1)),
                    deps_mode: deps_mode_str(spec.deps_mode),
                    key_owner: spec.idempotency_key.as_ref().map(|_| self.owner),
                    capabilities: serde_json::to_string(&spec.capabilities)
                        .map_err(|e| corrupt(format!("cannot encode capabilities: {e}")))?,
                    retry_on: retry_on.join(","),
                    backoff_ms: i64::try_from(spec.backoff_ms).unwrap_or(i64::MAX),
                    spec_json: serde_json::to_string(spec)
                        .map_err(|e| corrupt(format!("cannot encode job spec: {e}")))?,
                    submitted: ev::JobSubmitted {
                        title: spec.title.clone(),
                        state,
                    }
                    .text(),
                })
            })
            .collect()
    }

    /// Which new jobs other new jobs depend on.
    pub(crate) fn depended(&self) -> Vec<bool> {
        let mut depended = vec![false; self.news.len()];
        for targets in &self.edges {
            for (t, _) in targets {
                if let Target::New(m) = *t {
                    depended[m] = true;
                }
            }
        }
        depended
    }

    /// The deps of the new job `n`, without repeats, once the new jobs have their ids.
    pub(crate) fn dep_ids(&self, n: usize, ids: &[JobId]) -> Vec<i64> {
        let mut seen = HashSet::new();
        self.edges[n]
            .iter()
            .map(|(t, _)| match *t {
                Target::Stored(id) => id.0,
                Target::New(m) => ids[m].0,
            })
            .filter(|id| seen.insert(*id))
            .collect()
    }

    /// Settles the stored new jobs that have deps, deps first, and answers the batch.
    pub(crate) async fn settle<T: WriteTx>(
        self,
        tx: &T,
        ids: &[JobId],
    ) -> Result<Vec<Submitted>, T::Error> {
        for &n in &self.order {
            if self.edges[n].is_empty() {
                continue;
            }
            if let Some(to) = settle_blocked(tx, ids[n]).await?
                && to.is_terminal()
            {
                settle_dependents(tx, ids[n]).await?;
            }
        }
        Ok(self.answer(ids))
    }

    /// The answer to the batch, once the new jobs have their ids.
    pub(crate) fn answer(self, ids: &[JobId]) -> Vec<Submitted> {
        self.slots
            .into_iter()
            .map(|s| match s {
                Slot::Existing(id) => Submitted { id, existing: true },
                Slot::SameAs(n) => Submitted {
                    id: ids[n],
                    existing: true,
                },
                Slot::New(n) => Submitted {
                    id: ids[n],
                    existing: false,
                },
            })
            .collect()
    }
}
