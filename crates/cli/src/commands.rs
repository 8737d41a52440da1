//! The commands that talk to a running server: submit, read, control and tokens. Each
//! one calls the API through [`Client`] and hands what it got to [`crate::output`].

use crate::client::{Client, ClientError, EventStream};
use crate::command::{Format, Global, KillTarget, TokenSource};
use crate::error::{CliError, from_client};
use crate::output::{self, Table};
use gantry_core::api::{Status, SubmitFile, SubmitRequest, TokenInfo};
use gantry_core::event::{self, Event};
use gantry_core::time::now_millis;
use gantry_core::{Job, JobId, JobState, Run};
use std::path::PathBuf;
use std::time::Duration;

/// Reads the token as `global` says and makes a client of the server.
pub fn client_for(global: &Global) -> Result<Client, CliError> {
    let token = match &global.token {
        TokenSource::Given(t) => t.clone(),
        TokenSource::File(path) => match std::fs::read_to_string(path) {
            Ok(t) => t.trim().to_string(),
            Err(source) => {
                return Err(from_client(
                    ClientError::TokenFile {
                        path: path.clone(),
                        source,
                    },
                    &global.url,
                ));
            }
        },
    };
    Client::new(&global.url, Some(token)).map_err(|e| from_client(e, &global.url))
}

/// Maps client errors with the URL of this client's server.
fn api<T>(client: &Client, r: Result<T, ClientError>) -> Result<T, CliError> {
    r.map_err(|e| from_client(e, client.base()))
}

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

/// A job's state with a pending stop noted.
fn state_label(j: &Job) -> String {
    match j.stop_requested {
        Some(k) if j.state == JobState::Running => format!("running ({} requested)", k.as_str()),
        _ => j.state.to_string(),
    }
}

fn short_commit(c: &Option<String>) -> String {
    c.as_deref()
        .map(|c| c.chars().take(8).collect())
        .unwrap_or_else(|| "-".into())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The `+added/-deleted` cell of a run.
pub fn plus_minus(r: &Run) -> String {
    match (r.lines_added, r.lines_deleted) {
        (None, None) => "-".into(),
        (a, d) => format!("+{}/-{}", a.unwrap_or(0), d.unwrap_or(0)),
    }
}

/// The table of a job's runs.
pub fn runs_table(runs: &[Run], now: i64) -> Table {
    let mut t = Table::new(&[
        "RUN>", "ATTEMPT>", "EPOCH>", "OUTCOME", "EXIT>", "BRANCH", "COMMIT", "FILES>", "+/-",
        "STARTED", "TOOK",
    ]);
    for r in runs {
        t.row(vec![
            r.id.to_string(),
            r.attempt.to_string(),
            r.epoch.to_string(),
            r.outcome
                .map(|o| o.to_string())
                .unwrap_or_else(|| "running".into()),
            opt(r.exit_code),
            r.branch.clone().unwrap_or_else(|| "-".into()),
            short_commit(&r.commit),
            opt(r.files_changed),
            plus_minus(r),
            output::short_time(Some(r.started_at), now),
            r.finished_at
                .map(|f| output::short_duration(f - r.started_at))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
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
    }
    Ok(())
}

/// The engine of a job, with its model and mode when set.
fn engine_label(j: &Job) -> String {
    let spec = &j.spec;
    let mut out = spec.engine.name().to_string();
    if let Some(m) = &spec.model {
        out.push_str(&format!(", model {m}"));
    }
    if spec.yolo {
        out.push_str(", yolo");
    } else if let Some(p) = &spec.permission_mode {
        out.push_str(&format!(", {p}"));
    }
    if let Some(t) = spec.max_turns {
        out.push_str(&format!(", max {t} turns"));
    }
    if let Some(f) = spec.output {
        out.push_str(&format!(", output {}", f.as_str()));
    }
    out
}

/// A budget as `$5, 2000000 tokens, 60 turns`.
fn budget_label(b: &gantry_core::engine::Budget) -> String {
    let mut parts = Vec::new();
    if let Some(u) = b.usd {
        parts.push(format!("${u}"));
    }
    if let Some(t) = b.tokens {
        parts.push(format!("{t} tokens"));
    }
    if let Some(t) = b.turns {
        parts.push(format!("{t} turns"));
    }
    parts.join(", ")
}

/// The cost of a run or job: `$0.1355`, with `~` when estimated from the price table.
fn cost_label(i: &gantry_core::engine::Insights) -> String {
    match i.cost_usd {
        Some(c) if i.cost_estimated => format!("~${c:.4}"),
        Some(c) => format!("${c:.4}"),
        None => "-".into(),
    }
}

/// One line of insights: tokens, cost, turns, tool calls.
pub fn insights_label(i: &gantry_core::engine::Insights) -> String {
    let mut out = format!(
        "{} tokens in ({} cached), {} out, cost {}, {} turns, {} tool calls",
        i.tokens_in,
        i.tokens_cached,
        i.tokens_out,
        cost_label(i),
        i.turns,
        i.tool_calls
    );
    if i.tool_errors > 0 {
        out.push_str(&format!(" ({} failed)", i.tool_errors));
    }
    if let Some(m) = &i.model {
        out.push_str(&format!(", model {m}"));
    }
    out
}

/// The table of what each run's agent reported.
pub fn insights_table(runs: &[Run]) -> Table {
    let mut t = Table::new(&[
        "RUN>",
        "MODEL",
        "IN>",
        "CACHED>",
        "OUT>",
        "COST>",
        "TURNS>",
        "TOOLS>",
        "TOOL ERR>",
        "RESULT",
    ]);
    for r in runs {
        let Some(i) = &r.insights else { continue };
        t.row(vec![
            r.id.to_string(),
            i.model.clone().unwrap_or_else(|| "-".into()),
            i.tokens_in.to_string(),
            i.tokens_cached.to_string(),
            i.tokens_out.to_string(),
            cost_label(i),
            i.turns.to_string(),
            i.tool_calls.to_string(),
            i.tool_errors.to_string(),
            match (i.success, &i.error_kind) {
                (Some(true), _) => "success".into(),
                (Some(false), Some(k)) => k.clone(),
                (Some(false), None) => "failed".into(),
                (None, _) => "-".into(),
            },
        ]);
    }
    t
}

/// Quotes an argv the way a shell would read it back.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One event as a line: id, time, kind, and a summary of its data (kind and summary
/// come from workers and submitters, so they are kept to one escaped line).
pub fn event_line(e: &Event) -> String {
    format!(
        "{:>6}  {}  {:<20}  {}",
        e.id,
        output::clock_ms(e.at),
        output::field(&e.kind),
        output::field(&event_summary(e))
    )
}

fn s(v: &serde_json::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A short human summary of an event's data.
pub fn event_summary(e: &Event) -> String {
    let d = &e.data;
    match e.kind.as_str() {
        event::JOB_SUBMITTED => s(d, "title").unwrap_or_default(),
        event::JOB_STATE => {
            let mut out = format!(
                "{} -> {}",
                s(d, "from").unwrap_or_else(|| "?".into()),
                s(d, "to").unwrap_or_else(|| "?".into())
            );
            if let Some(r) = s(d, "reason") {
                out.push_str(&format!(" ({r})"));
            }
            out
        }
        event::RUN_CLAIMED => format!(
            "run {} attempt {} epoch {}",
            s(d, "run").unwrap_or_else(|| opt(e.run_id)),
            s(d, "attempt").unwrap_or_else(|| "?".into()),
            s(d, "epoch").unwrap_or_else(|| "?".into()),
        ),
        event::RUN_STARTED => format!(
            "pid {} on {}",
            s(d, "pid").unwrap_or_else(|| "?".into()),
            s(d, "branch").unwrap_or_else(|| "?".into())
        ),
        event::RUN_OUTPUT => {
            let text = s(d, "text").unwrap_or_default();
            let first = text.trim_end_matches('\n');
            let mut shown: String = first.chars().take(160).collect();
            if shown.len() < first.len() {
                shown.push('…');
            }
            format!(
                "[{}] {}",
                s(d, "stream").unwrap_or_else(|| "out".into()),
                shown.replace('\n', "⏎")
            )
        }
        event::RUN_FINISHED => {
            let mut out = s(d, "outcome").unwrap_or_else(|| "?".into());
            if let Some(c) = s(d, "exit_code") {
                out.push_str(&format!(" exit {c}"));
            }
            if let Some(f) = s(d, "files_changed") {
                out.push_str(&format!(
                    ", {f} files +{}/-{}",
                    s(d, "lines_added").unwrap_or_else(|| "0".into()),
                    s(d, "lines_deleted").unwrap_or_else(|| "0".into())
                ));
            }
            if let Some(err) = s(d, "error") {
                out.push_str(&format!(": {err}"));
            }
            out
        }
        event::AGENT_INSIGHTS => serde_json::from_value::<gantry_core::engine::Insights>(d.clone())
            .map(|i| insights_label(&i))
            .unwrap_or_else(|_| d.to_string()),
        event::RUN_CHECKPOINT => format!(
            "{} at {}",
            s(d, "wip_branch").unwrap_or_else(|| "?".into()),
            s(d, "wip_commit")
                .map(|c| c.chars().take(8).collect::<String>())
                .unwrap_or_else(|| "?".into())
        ),
        kind if kind.starts_with("agent.") => agent_summary(d),
        _ => {
            if d.as_object().is_some_and(|o| o.is_empty()) || d.is_null() {
                String::new()
            } else {
                d.to_string()
            }
        }
    }
}

/// A normalized agent event in one line.
fn agent_summary(d: &serde_json::Value) -> String {
    use gantry_core::engine::AgentEvent;
    let Ok(ev) = serde_json::from_value::<AgentEvent>(d.clone()) else {
        return d.to_string();
    };
    let one_line = |t: &str| {
        let t = t.trim();
        let mut shown: String = t.chars().take(160).collect();
        if shown.len() < t.len() {
            shown.push('…');
        }
        shown.replace('\n', "⏎")
    };
    match ev {
        AgentEvent::SessionStarted { session_id, model } => format!(
            "session {session_id}{}",
            model.map(|m| format!(", model {m}")).unwrap_or_default()
        ),
        AgentEvent::TurnStarted { turn } => format!("turn {turn}"),
        AgentEvent::Message { text } => one_line(&text),
        AgentEvent::ToolCall { name, input, .. } => match input {
            Some(i) => format!("{name}: {}", one_line(&i)),
            None => name,
        },
        AgentEvent::ToolResult {
            is_error, output, ..
        } => format!(
            "{}{}",
            if is_error { "error" } else { "ok" },
            output
                .map(|o| format!(": {}", one_line(&o)))
                .unwrap_or_default()
        ),
        AgentEvent::Usage {
            tokens_in,
            tokens_out,
            tokens_cached,
            cost_usd,
            ..
        } => format!(
            "+{tokens_in} in ({tokens_cached} cached), +{tokens_out} out{}",
            cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default()
        ),
        AgentEvent::Notice { message } => one_line(&message),
        AgentEvent::Result {
            success,
            error_kind,
            num_turns,
            cost_usd,
            ..
        } => format!(
            "{}{}{}",
            if success {
                "success".to_string()
            } else {
                error_kind.unwrap_or_else(|| "failed".into())
            },
            num_turns
                .map(|n| format!(", {n} turns"))
                .unwrap_or_default(),
            cost_usd.map(|c| format!(", ${c:.4}")).unwrap_or_default()
        ),
        AgentEvent::Raw { source_type, .. } => format!("({source_type})"),
    }
}

/// Whether an event may mean the job just ended, so it is worth checking the job.
fn may_end_job(e: &Event) -> bool {
    match e.kind.as_str() {
        event::JOB_STATE => s(&e.data, "to")
            .and_then(|t| t.parse::<JobState>().ok())
            .is_some_and(JobState::is_terminal),
        event::RUN_FINISHED => true,
        _ => false,
    }
}

/// How long a follow waits without events before it checks the job's state itself.
const IDLE_CHECK: Duration = Duration::from_secs(3);

/// Calls `each` with every event of job `id`, then (when `follow`) with new events as
/// they come, until the job is in a final state.
pub async fn for_each_event(
    client: &Client,
    id: JobId,
    follow: bool,
    mut each: impl FnMut(&Event),
) -> Result<(), CliError> {
    // Fetching the job first turns a wrong id into "not found" rather than an empty log.
    let job = api(client, client.job(id).await)?;
    let history = api(client, client.all_events(Some(id), 0).await)?;
    let mut last = 0;
    for e in &history {
        each(e);
        last = e.id;
    }
    if !follow || job.state.is_terminal() && api(client, client.job(id).await)?.state.is_terminal()
    {
        return Ok(());
    }
    let mut stream: EventStream = client.event_stream(Some(id), last);
    loop {
        let check = match tokio::time::timeout(IDLE_CHECK, stream.next()).await {
            Ok(Ok(e)) => {
                each(&e);
                may_end_job(&e)
            }
            Ok(Err(err)) => return Err(from_client(err, client.base())),
            Err(_idle) => true,
        };
        if !check {
            continue;
        }
        let ended = match client.job(id).await {
            Ok(job) => job.state.is_terminal(),
            // The server is away (restarting, say): the stream reconnects on its own
            // and gives up with a clear error if it stays away, so just keep waiting.
            Err(ClientError::Unreachable { .. } | ClientError::BadResponse { .. }) => false,
            Err(e) => return Err(from_client(e, client.base())),
        };
        if ended {
            // Whatever was recorded up to the end (e.g. a delivery event right after
            // the finish) is still shown.
            for e in api(client, client.all_events(Some(id), stream.last_id()).await)? {
                each(&e);
            }
            return Ok(());
        }
    }
}

/// `gantry events ID [--follow]`.
pub async fn events(
    client: &Client,
    id: JobId,
    follow: bool,
    format: Format,
) -> Result<(), CliError> {
    match (format, follow) {
        (Format::Json, false) => {
            let mut all = Vec::new();
            for_each_event(client, id, false, |e| all.push(e.clone())).await?;
            output::json(&all);
        }
        (Format::Json, true) => for_each_event(client, id, true, output::json_line).await?,
        (Format::Human, _) => {
            for_each_event(client, id, follow, |e| output::line(event_line(e))).await?;
        }
    }
    Ok(())
}

/// `gantry logs ID [--follow]`.
pub async fn logs(
    client: &Client,
    id: JobId,
    follow: bool,
    format: Format,
) -> Result<(), CliError> {
    let is_output = |e: &Event| e.kind == event::RUN_OUTPUT;
    match (format, follow) {
        (Format::Json, false) => {
            let mut all = Vec::new();
            for_each_event(client, id, false, |e| {
                if is_output(e) {
                    all.push(e.clone());
                }
            })
            .await?;
            output::json(&all);
        }
        (Format::Json, true) => {
            for_each_event(client, id, true, |e| {
                if is_output(e) {
                    output::json_line(e);
                }
            })
            .await?;
        }
        (Format::Human, _) => {
            for_each_event(client, id, follow, |e| {
                if is_output(e)
                    && let Some(t) = e.data.get("text").and_then(|t| t.as_str())
                {
                    output::raw(t.as_bytes());
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// `gantry diff ID`.
pub async fn diff(client: &Client, id: JobId, format: Format) -> Result<(), CliError> {
    let d = api(client, client.diff(id).await)?;
    if format == Format::Json {
        output::json(&serde_json::json!({ "job": id, "diff": String::from_utf8_lossy(&d) }));
    } else if d.is_empty() {
        output::note(format!("job {id}: no changes"));
    } else {
        output::raw(&d);
    }
    Ok(())
}

fn print_job_after(j: &Job, what: &str, format: Format) {
    if format == Format::Json {
        output::json(j);
        return;
    }
    let detail = match (j.state, j.stop_requested) {
        (JobState::Running, Some(k)) => format!(
            "running; {} requested, the factory is stopping the run",
            k.as_str()
        ),
        (JobState::Queued | JobState::Blocked, _) if what == "retry" => format!(
            "{}; attempt {} of {} comes next",
            j.state,
            j.attempt + 1,
            j.max_attempts
        ),
        (s, _) => s.to_string(),
    };
    output::line(format!("job {}: {detail}", j.id));
}

/// `gantry cancel ID`.
pub async fn cancel(client: &Client, id: JobId, format: Format) -> Result<(), CliError> {
    let j = api(client, client.cancel(id).await)?;
    print_job_after(&j, "cancel", format);
    Ok(())
}

/// `gantry kill ID` and `gantry kill --all`.
pub async fn kill(client: &Client, target: KillTarget, format: Format) -> Result<(), CliError> {
    match target {
        KillTarget::Job(id) => {
            let j = api(client, client.kill(id).await)?;
            print_job_after(&j, "kill", format);
        }
        KillTarget::All => {
            let k = api(client, client.kill_all().await)?;
            if format == Format::Json {
                output::json(&k);
                return Ok(());
            }
            if k.jobs.is_empty() {
                output::line("no running jobs to kill");
            } else {
                let ids: Vec<String> = k.jobs.iter().map(|j| j.to_string()).collect();
                output::line(format!(
                    "killing {} running job(s): {}",
                    ids.len(),
                    ids.join(", ")
                ));
            }
            output::note("claiming is paused: `gantry resume` lets jobs start again");
        }
    }
    Ok(())
}

/// `gantry retry ID`.
pub async fn retry(client: &Client, id: JobId, format: Format) -> Result<(), CliError> {
    let j = api(client, client.retry(id).await)?;
    print_job_after(&j, "retry", format);
    Ok(())
}

fn print_status(st: &Status, format: Format) {
    if format == Format::Json {
        output::json(st);
        return;
    }
    output::line(if st.paused {
        "claiming: paused (`gantry resume` resumes it)"
    } else {
        "claiming: active"
    });
    let mut t = Table::new(&["STATE", "JOBS>"]);
    for state in JobState::ALL {
        t.row(vec![
            state.to_string(),
            st.jobs
                .get(state.as_str())
                .copied()
                .unwrap_or(0)
                .to_string(),
        ]);
    }
    t.print();
}

/// `gantry pause`.
pub async fn pause(client: &Client, format: Format) -> Result<(), CliError> {
    let st = api(client, client.pause().await)?;
    print_status(&st, format);
    Ok(())
}

/// `gantry resume`.
pub async fn resume(client: &Client, format: Format) -> Result<(), CliError> {
    let st = api(client, client.resume().await)?;
    print_status(&st, format);
    Ok(())
}

/// `gantry status`.
pub async fn status(client: &Client, format: Format) -> Result<(), CliError> {
    let st = api(client, client.status().await)?;
    print_status(&st, format);
    Ok(())
}

/// `gantry token create`.
pub async fn token_create(
    client: &Client,
    name: &str,
    scope: gantry_core::api::Scope,
    format: Format,
) -> Result<(), CliError> {
    let created = api(client, client.create_token(name, scope).await)?;
    if format == Format::Json {
        output::json(&created);
        return Ok(());
    }
    output::line(&created.token);
    output::note(format!(
        "created token `{}` with scope {}: the secret above is shown only this once",
        created.info.name, created.info.scope
    ));
    Ok(())
}

/// `gantry token ls`.
pub async fn token_ls(client: &Client, format: Format) -> Result<(), CliError> {
    let tokens: Vec<TokenInfo> = api(client, client.tokens().await)?;
    if format == Format::Json {
        output::json(&tokens);
        return Ok(());
    }
    let now = now_millis();
    let mut t = Table::new(&["ID>", "NAME", "SCOPE", "CREATED", "REVOKED"]);
    for tok in &tokens {
        t.row(vec![
            tok.id.to_string(),
            tok.name.clone(),
            tok.scope.to_string(),
            output::short_time(Some(tok.created_at), now),
            output::short_time(tok.revoked_at, now),
        ]);
    }
    t.print();
    Ok(())
}

/// `gantry token revoke NAME`.
pub async fn token_revoke(client: &Client, name: &str, format: Format) -> Result<(), CliError> {
    let info = api(client, client.revoke_token(name).await)?;
    match (format, info) {
        (Format::Json, Some(info)) => output::json(&info),
        (Format::Json, None) => output::json(&serde_json::json!({ "name": name, "revoked": true })),
        (Format::Human, _) => output::line(format!("revoked token `{name}`")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_quoted_for_a_shell() {
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            "echo 'hi' > x".into(),
            "".into(),
        ];
        assert_eq!(shell_words(&argv), r#"sh -c 'echo '\''hi'\'' > x' ''"#);
    }

    #[test]
    fn event_summaries() {
        let ev = |kind: &str, data: serde_json::Value| Event {
            id: 1,
            job_id: Some(JobId(1)),
            run_id: None,
            seq: 1,
            kind: kind.into(),
            at: 0,
            data,
        };
        assert_eq!(
            event_summary(&ev(
                event::JOB_STATE,
                serde_json::json!({"from": "blocked", "to": "canceled", "reason": "dependency 1 failed"})
            )),
            "blocked -> canceled (dependency 1 failed)"
        );
        assert_eq!(
            event_summary(&ev(
                event::RUN_FINISHED,
                serde_json::json!({"outcome": "failed", "exit_code": 3, "files_changed": 1, "lines_added": 2, "lines_deleted": 0})
            )),
            "failed exit 3, 1 files +2/-0"
        );
        assert_eq!(
            event_summary(&ev(
                event::RUN_OUTPUT,
                serde_json::json!({"stream": "stderr", "text": "a\nb\n"})
            )),
            "[stderr] a⏎b"
        );
        assert!(may_end_job(&ev(
            event::JOB_STATE,
            serde_json::json!({"from": "running", "to": "failed"})
        )));
        assert!(!may_end_job(&ev(
            event::JOB_STATE,
            serde_json::json!({"from": "running", "to": "queued"})
        )));
    }
}
