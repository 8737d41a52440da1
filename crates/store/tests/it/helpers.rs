//! Builders for job specs and small protocol steps, so tests read as scenarios.

use gantry_core::api::{Claim, FinishReport, RegisterFactory};
use gantry_core::event::Event;
use gantry_core::{DepRef, DepsMode, FactoryId, Job, JobId, JobSpec, Outcome, ParsedJob};
use gantry_store::Store;
use std::collections::BTreeMap;
use std::time::Duration;

/// A lease long enough never to expire during a test.
pub const LONG: Duration = Duration::from_secs(600);

/// A job file as the parser would produce it, built field by field.
#[derive(Clone)]
pub struct J(pub ParsedJob);

/// A command job named after its file, with default settings.
pub fn job(file: &str) -> J {
    let mut field_lines = BTreeMap::new();
    field_lines.insert("title".to_string(), 2);
    field_lines.insert("deps".to_string(), 7);
    J(ParsedJob {
        file: file.to_string(),
        spec: JobSpec {
            body: format!("Instructions of {file}.\n"),
            ..JobSpec::command(&format!("job {file}"), "/tmp/repo", &["true"])
        },
        field_lines,
    })
}

impl J {
    pub fn priority(mut self, p: u8) -> J {
        self.0.spec.priority = p;
        self
    }
    pub fn key(mut self, k: &str) -> J {
        self.0.spec.idempotency_key = Some(k.to_string());
        self
    }
    pub fn dep_key(mut self, k: &str) -> J {
        self.0.spec.deps.push(DepRef::Key(k.to_string()));
        self
    }
    pub fn dep_id(mut self, id: JobId) -> J {
        self.0.spec.deps.push(DepRef::Id(id));
        self
    }
    pub fn finished_mode(mut self) -> J {
        self.0.spec.deps_mode = DepsMode::Finished;
        self
    }
    pub fn lock(mut self, l: &str) -> J {
        self.0.spec.lock = Some(l.to_string());
        self
    }
    pub fn caps(mut self, caps: &[&str]) -> J {
        self.0.spec.capabilities = caps.iter().map(|c| c.to_string()).collect();
        self
    }
    pub fn attempts(mut self, n: u32) -> J {
        self.0.spec.max_attempts = n;
        self
    }
    pub fn retry_on(mut self, on: &[Outcome]) -> J {
        self.0.spec.retry_on = on.to_vec();
        self
    }
    pub fn backoff_ms(mut self, ms: u64) -> J {
        self.0.spec.backoff_ms = ms;
        self
    }
}

/// Submits one job and returns its id.
pub async fn submit1(store: &dyn Store, j: J) -> JobId {
    let out = store.submit(vec![j.0]).await.expect("submit");
    assert_eq!(out.len(), 1);
    out[0].id
}

/// Submits a batch and returns the ids in order.
pub async fn submit(store: &dyn Store, jobs: Vec<J>) -> Vec<JobId> {
    store
        .submit(jobs.into_iter().map(|j| j.0).collect())
        .await
        .expect("submit")
        .into_iter()
        .map(|s| s.id)
        .collect()
}

/// Registers a factory with these capabilities.
pub async fn factory(store: &dyn Store, name: &str, caps: &[&str]) -> FactoryId {
    store
        .register_factory(&RegisterFactory {
            name: name.to_string(),
            seats: 4,
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
        })
        .await
        .expect("register factory")
}

/// Claims with a long lease; panics when nothing is claimable.
pub async fn claim(store: &dyn Store, f: FactoryId) -> Claim {
    store
        .claim(f, LONG)
        .await
        .expect("claim")
        .expect("a claimable job")
}

/// The ids of every job claimable right now by `f`, in claim order (claims them all).
pub async fn drain(store: &dyn Store, f: FactoryId) -> Vec<JobId> {
    let mut ids = Vec::new();
    while let Some(c) = store.claim(f, LONG).await.expect("claim") {
        ids.push(c.job.id);
    }
    ids
}

/// A finish report for `claim` with this outcome.
pub fn report(c: &Claim, outcome: Outcome) -> FinishReport {
    FinishReport {
        epoch: c.run.epoch,
        outcome: Some(outcome),
        exit_code: match outcome {
            Outcome::Succeeded => Some(0),
            Outcome::Failed => Some(1),
            _ => None,
        },
        ..FinishReport::default()
    }
}

/// Finishes the claimed run with this outcome.
pub async fn finish(store: &dyn Store, c: &Claim, outcome: Outcome) -> Job {
    store
        .finish(c.run.id, report(c, outcome))
        .await
        .expect("finish")
}

/// Every event of a job, oldest first.
pub async fn events_of(store: &dyn Store, job: JobId) -> Vec<Event> {
    store.events(0, Some(job), 10_000).await.expect("events")
}

/// The kinds of a job's events, in order.
pub async fn kinds_of(store: &dyn Store, job: JobId) -> Vec<String> {
    events_of(store, job)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// The `job.state` transitions of a job as (from, to, reason).
pub async fn transitions(store: &dyn Store, job: JobId) -> Vec<(String, String, Option<String>)> {
    events_of(store, job)
        .await
        .into_iter()
        .filter(|e| e.kind == "job.state")
        .map(|e| {
            (
                e.data["from"].as_str().unwrap_or_default().to_string(),
                e.data["to"].as_str().unwrap_or_default().to_string(),
                e.data["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}
