//! `gantry events`, `gantry logs` and `gantry diff`: following what a job does.

use super::api;
use crate::command::Format;
use crate::error::{CliError, from_client};
use crate::output::{self};
use crate::render::*;
use gantry_client::{Client, ClientError, EventStream};
use gantry_core::JobId;
use gantry_core::event::{Event, JobStateChanged, RunFinished, RunOutput};
use std::time::Duration;

/// Whether an event may mean the job just ended, so it is worth checking the job.
fn may_end_job(e: &Event) -> bool {
    e.is::<RunFinished>()
        || e.payload::<JobStateChanged>()
            .is_ok_and(|change| change.to.is_terminal())
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
            Err(
                ClientError::Unreachable { .. }
                | ClientError::Transport { .. }
                | ClientError::BadResponse { .. },
            ) => false,
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
    let is_output = |e: &Event| e.is::<RunOutput>();
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
                if let Ok(out) = e.payload::<RunOutput>() {
                    output::raw(out.text.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_core::JobId;

    #[test]
    fn only_a_state_change_to_a_final_state_may_end_a_job() {
        let ev = |data: serde_json::Value| Event {
            id: 1,
            job_id: Some(JobId(1)),
            run_id: None,
            seq: 1,
            kind: gantry_core::event::JOB_STATE.into(),
            at: 0,
            data,
        };
        assert!(may_end_job(&ev(
            serde_json::json!({"from": "running", "to": "failed"})
        )));
        assert!(!may_end_job(&ev(
            serde_json::json!({"from": "running", "to": "queued"})
        )));
    }
}
