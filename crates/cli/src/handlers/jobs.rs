//! `gantry submit`, `gantry ls` and `gantry show`.

use super::api;
use crate::command::Format;
use crate::error::CliError;
use crate::output::{self, Table};
use crate::render::*;
use gantry_client::Client;
use gantry_core::time::now_millis;
use gantry_core::{JobId, JobState};
use gantry_protocol::{SubmitFile, SubmitRequest};
use std::path::PathBuf;

/// `gantry submit FILE...`.
pub async fn submit(client: &Client, files: &[PathBuf], format: Format) -> Result<(), CliError> {
    let mut jobs = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::local(format!("cannot read job file {}", path.display())).cause(e.to_string())
        })?;
        let dir = std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_string_lossy().into_owned()));
        jobs.push(SubmitFile {
            file: path.display().to_string(),
            text,
            dir,
        });
    }
    let resp = api(client, client.submit(&SubmitRequest { jobs }).await)?;
    if format == Format::Json {
        output::json(&resp);
        return Ok(());
    }
    for (s, path) in resp.jobs.iter().zip(files) {
        output::line(s.id.to_string());
        if s.existing {
            output::note(format!(
                "note: {}: its idempotency key matched job {}, submitted earlier; nothing new was stored",
                path.display(),
                s.id
            ));
        }
    }
    Ok(())
}

/// `gantry ls`.
pub async fn ls(
    client: &Client,
    state: Option<JobState>,
    limit: Option<u32>,
    format: Format,
) -> Result<(), CliError> {
    let jobs = api(client, client.jobs(state, limit).await)?;
    if format == Format::Json {
        output::json(&jobs);
        return Ok(());
    }
    if jobs.is_empty() {
        output::note(match state {
            Some(s) => format!("no {s} jobs"),
            None => "no jobs yet: `gantry submit FILE` adds one".to_string(),
        });
        return Ok(());
    }
    let now = now_millis();
    let mut t = Table::new(&[
        "ID>", "STATE", "PRI>", "ATTEMPT", "LOCK", "CREATED", "TITLE",
    ]);
    for j in &jobs {
        t.row(vec![
            j.id.to_string(),
            state_label(j),
            j.priority.to_string(),
            format!("{}/{}", j.attempt, j.max_attempts),
            j.lock.clone().unwrap_or_else(|| "-".into()),
            output::short_time(Some(j.created_at), now),
            j.title.clone(),
        ]);
    }
    t.print();
    Ok(())
}

/// `gantry show ID`.
pub async fn show(client: &Client, id: JobId, format: Format) -> Result<(), CliError> {
    if format == Format::Json {
        let mut v = api(client, client.job_value(id).await)?;
        // The API leaves `runs` out when there are none; show it as an empty list so
        // scripts can rely on the field.
        if let Some(obj) = v.as_object_mut() {
            obj.entry("runs").or_insert_with(|| serde_json::json!([]));
        }
        output::json(&v);
        return Ok(());
    }
    let j = api(client, client.job(id).await)?;
    let now = now_millis();
    let mut kv: Vec<(&str, String)> = vec![
        ("state", state_label(&j)),
        ("priority", j.priority.to_string()),
        ("attempt", format!("{} of {}", j.attempt, j.max_attempts)),
        ("epoch", j.epoch.to_string()),
    ];
    if let Some(l) = &j.lock {
        kv.push(("lock", l.clone()));
    }
    if !j.deps.is_empty() {
        let deps: Vec<String> = j.deps.iter().map(|d| d.to_string()).collect();
        kv.push((
            "deps",
            format!(
                "{} (run when {})",
                deps.join(", "),
                match j.deps_mode {
                    gantry_core::DepsMode::Succeeded => "all succeeded",
                    gantry_core::DepsMode::Finished => "all finished",
                }
            ),
        ));
    }
    if let Some(k) = &j.idempotency_key {
        kv.push(("key", k.clone()));
    }
    let base = j.spec.base.clone().unwrap_or_else(|| "HEAD".into());
    kv.push(("repo", format!("{} @ {base}", j.spec.repo)));
    kv.push(("engine", engine_label(&j)));
    if !j.spec.command.is_empty() {
        kv.push(("command", shell_words(&j.spec.command)));
    }
    if let Some(b) = &j.spec.budget {
        kv.push(("budget", budget_label(b)));
    }
    // What each run's agent received, by name (the values never leave the factory).
    let handed: Vec<&gantry_core::Run> = j.runs.iter().filter(|r| !r.secrets.is_empty()).collect();
    for r in &handed {
        let names = r.secrets.join(", ");
        kv.push((
            "secrets",
            if handed.len() > 1 {
                format!("{names} (run {})", r.id)
            } else {
                names
            },
        ));
    }
    if let Some(i) = &j.insights {
        kv.push(("insights", insights_label(i)));
    }
    if let Some(sid) = &j.session_id {
        kv.push(("session", sid.clone()));
    }
    if let Some(cp) = &j.checkpoint {
        kv.push((
            "checkpoint",
            format!(
                "{} at {}",
                cp.branch,
                cp.commit.chars().take(8).collect::<String>()
            ),
        ));
    }
    if let Some(r) = &j.reason {
        kv.push(("reason", r.clone()));
    }
    kv.push(("created", output::short_time(Some(j.created_at), now)));
    if j.started_at.is_some() {
        kv.push(("started", output::short_time(j.started_at, now)));
    }
    if let Some(f) = j.finished_at {
        let took = j
            .started_at
            .map(|s| format!(" (took {})", output::short_duration(f - s)))
            .unwrap_or_default();
        kv.push((
            "finished",
            format!("{}{took}", output::short_time(Some(f), now)),
        ));
    }
    if let Some(nb) = j.not_before
        && j.state == JobState::Queued
        && nb > now
    {
        kv.push(("not before", output::short_time(Some(nb), now)));
    }
    // Each value is one line: a line break in a title or a reason would forge a field.
    output::line(format!("Job {}: {}", j.id, output::field(&j.title)));
    let w = kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &kv {
        output::line(format!("  {k:<w$}  {}", output::field(v)));
    }
    output::line("");
    if j.runs.is_empty() {
        output::line("No runs yet.");
    } else {
        runs_table(&j.runs, now).print();
        if j.runs.iter().any(|r| r.insights.is_some()) {
            output::line("");
            insights_table(&j.runs).print();
        }
        if j.runs.iter().any(|r| !r.gates.is_empty()) {
            output::line("");
            gates_table(&j.runs).print();
        }
        crate::checks::print(&j.runs);
    }
    Ok(())
}
