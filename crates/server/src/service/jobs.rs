//! Submitting and showing jobs: parsing, the submit-time source check, the diff.

use super::Service;
use crate::error::ApiError;
use axum::http::StatusCode;
use gantry_core::repo::resolve_repo;
use gantry_core::spec::parse_job_file;
use gantry_core::{Job, JobId, JobState, ParsedJob};
use gantry_git::{self as workspace, SourceCheck, SourceField};
use gantry_protocol::ErrorKind;
use gantry_protocol::{Scope, SubmitFile, SubmitRequest, SubmitResponse, TokenInfo};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

impl Service {
    /// Parses, checks and stores a batch of job files for the token `submitter`, all or
    /// nothing. Idempotency keys are the submitter's own (see
    /// [`gantry_store::Store::submit_as`]).
    pub async fn submit(
        &self,
        req: SubmitRequest,
        submitter: &TokenInfo,
    ) -> Result<SubmitResponse, ApiError> {
        if req.jobs.is_empty() {
            return Err(ApiError::bad_request(
                "field `jobs` is empty: nothing to submit",
            ));
        }
        if let Some(reason) = &self.unsandboxed
            && submitter.scope != Scope::Admin
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::SandboxUnavailable,
                format!(
                    "this server cannot sandbox jobs, so it runs only jobs of admin tokens: {reason}"
                ),
            )
            .with_hint(
                "install bubblewrap on the server's machine and restart it, or (if every submitter may read the server's data dir and admin token) start it with --allow-unsandboxed-jobs",
            ));
        }
        let mut parsed = Vec::with_capacity(req.jobs.len());
        let mut checked = SourceChecks::new();
        for (index, file) in req.jobs.iter().enumerate() {
            let mut job = prepare(file, &mut checked).await?;
            self.profiles
                .resolve(&mut job)
                .map_err(|e| ApiError::invalid_job(&e))?;
            self.cfg.limits.check_job(index, &file.text, &job)?;
            parsed.push(job);
        }
        let jobs = self.store.submit_as(parsed, Some(submitter.id)).await?;
        Ok(SubmitResponse { jobs })
    }

    /// One job with its runs.
    pub async fn job_with_runs(&self, id: JobId) -> Result<Job, ApiError> {
        let mut job = self.store.job(id).await?;
        job.runs = self.store.runs(id).await?;
        job.insights = gantry_core::job::total_insights(&job.runs);
        Ok(job)
    }

    /// The diff of the job's latest run that left one: the diff its factory reported
    /// (kept by the store, so every replica serves it), else, for runs from before
    /// factories reported diffs, the `diff.patch` an embedded factory wrote in this
    /// server's artifacts.
    pub async fn diff(&self, id: JobId) -> Result<String, ApiError> {
        let job = self.job_with_runs(id).await?;
        for run in job.runs.iter().rev() {
            if let Some(text) = self.store.run_diff(run.id).await? {
                return Ok(text);
            }
            let path =
                gantry_factory::artifacts_dir(&self.cfg.data_dir, id, run.id).join("diff.patch");
            match tokio::fs::read_to_string(&path).await {
                Ok(text) => return Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        Err(ApiError::not_found(format!("job {id} has no diff"))
            .with_hint(match job.state {
                JobState::Blocked | JobState::Queued => {
                    "the job has not run yet; a diff is saved when a run ends".to_string()
                }
                JobState::Running | JobState::Checking => {
                    format!(
                        "the job is {}; a diff is saved when the run ends",
                        job.state
                    )
                }
                _ => "no run of this job saved a diff (it may have failed before its \
                      workspace was ready)"
                    .to_string(),
            })
            .with_details(json!({ "job": id, "state": job.state })))
    }
}

/// How long one git call of a submit-time source check may take before the source is
/// left unchecked (the factory that claims the job finds out then).
const SOURCE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a source was refused at submit, kept per batch (see [`prepare`]).
#[derive(Debug, Clone)]
enum Refusal {
    /// The job file's field is at fault: the message names it and its value.
    Field(SourceField, String),
    /// The server could not check (git did not run).
    Server(String),
}

/// The outcome of each (repo, base) checked in a batch.
type SourceChecks = HashMap<(String, Option<String>), Result<(), Refusal>>;

/// Parses a job file and checks its source where the server can (see
/// [`gantry_git::check_source`]): a refused `repo` or `base` is a 400
/// `invalid_job` naming the file, the field (as written: `cwd` is an alias of `repo`),
/// its line and its value. Each (repo, base) is checked once per batch.
async fn prepare(file: &SubmitFile, checked: &mut SourceChecks) -> Result<ParsedJob, ApiError> {
    let mut parsed =
        parse_job_file(&file.file, &file.text).map_err(|e| ApiError::invalid_job(&e))?;
    let dir = file.dir.as_deref().map(Path::new);
    parsed.spec.repo = resolve_repo(&parsed.spec.repo, dir);
    let key = (parsed.spec.repo.clone(), parsed.spec.base.clone());
    let outcome = match checked.get(&key) {
        Some(outcome) => outcome.clone(),
        None => {
            let outcome = check_source(&parsed.spec).await;
            checked.insert(key, outcome.clone());
            outcome
        }
    };
    match outcome {
        Ok(()) => Ok(parsed),
        Err(Refusal::Server(message)) => Err(ApiError::internal(message)),
        Err(Refusal::Field(field, message)) => {
            let (name, value) = match field {
                SourceField::Repo
                    if !parsed.field_lines.contains_key("repo")
                        && parsed.field_lines.contains_key("cwd") =>
                {
                    ("cwd", Some(parsed.spec.repo.as_str()))
                }
                SourceField::Repo => ("repo", Some(parsed.spec.repo.as_str())),
                SourceField::Base => ("base", parsed.spec.base.as_deref()),
            };
            let spec = parsed.error(name, message);
            Err(ApiError::invalid_job(&spec).with_details(json!({
                "file": spec.file,
                "line": spec.line,
                "field": name,
                "value": value,
            })))
        }
    }
}

/// The submit-time check of a job's source.
async fn check_source(spec: &gantry_core::JobSpec) -> Result<(), Refusal> {
    match workspace::check_source(&spec.repo, spec.base.as_deref(), SOURCE_CHECK_TIMEOUT).await {
        Ok(SourceCheck::Checked) => Ok(()),
        Ok(SourceCheck::NotChecked(why)) => {
            tracing::debug!(repo = %spec.repo, base = ?spec.base, %why, "source not checked at submit");
            Ok(())
        }
        Err(e) => Err(match e.field() {
            Some(field) => Refusal::Field(field, e.to_string()),
            None => Refusal::Server(e.to_string()),
        }),
    }
}
