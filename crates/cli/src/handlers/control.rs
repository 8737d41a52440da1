//! `gantry cancel`, `kill`, `retry`, `pause`, `resume` and `status`.

use super::api;
use crate::command::{Format, KillTarget};
use crate::error::CliError;
use crate::output::{self, Table};
use gantry_client::Client;
use gantry_core::{Job, JobId, JobState};
use gantry_protocol::Status;

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
