//! Issue 4's chaos suite: the guarantees of many machines under faults, with the real
//! binary on loopback. Each scenario starts its own servers, remote factories (and,
//! where it needs one, its own PostgreSQL cluster or database), injects the fault with
//! real signals or a real database restart, and checks the outcome from the API and the
//! event log: no job lost, none run twice to success, no stale worker ever writes.
//!
//! Every process a scenario starts is stopped when the scenario ends, passed or failed:
//! servers and factories by their guards, the processes of runs (which live in sessions
//! of their own and outlive a SIGKILLed factory) by a [`RunSweeper`] that kills what
//! carries the scenario's mark. States are waited for by polling with a deadline that
//! names what it waited for; nothing sleeps a fixed time.

mod factory_faults;
mod postgres_restart;
mod replicas;
mod server_kill;

use crate::harness::{Api, RunSweeper, Server, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deadline of a state that needs a lease to expire, a reaper tick and a claim.
const LONG: Duration = Duration::from_secs(90);

/// The text of a command job running `sh -c script` in `repo`, with extra front matter.
fn command_job(title: &str, repo: &Path, script: &str, extra: &str) -> String {
    format!(
        "---\ntitle: {title}\nrepo: {}\nengine: command\ncommand: [sh, -c, '{}']\n{extra}---\nChaos job {title}.\n",
        repo.display(),
        script.replace('\'', "''"),
    )
}

/// A script for a job that appends its run id to `<dir>/runs-<name>` (every execution,
/// whatever the server knows of it), records its pid (see [`host_pid`]) in `<dir>/pid-<name>-<attempt>`,
/// prints `before-<name>`, writes `<name>.txt` (its change to deliver) and waits until
/// `<gate>` exists, then prints `after-<name>` and ends with status 0.
fn gated_script(dir: &Path, name: &str, gate: &Path) -> String {
    format!(
        "echo $GANTRY_RUN_ID >> {dir}/runs-{name}; \
         echo $$ $GANTRY_WORKSPACE > {dir}/pid-{name}-$GANTRY_ATTEMPT.tmp && mv {dir}/pid-{name}-$GANTRY_ATTEMPT.tmp {dir}/pid-{name}-$GANTRY_ATTEMPT; \
         echo before-{name}; echo \"{name} attempt $GANTRY_ATTEMPT\" > {name}.txt; \
         while [ ! -e {gate} ]; do sleep 0.05; done; echo after-{name}",
        dir = dir.display(),
        gate = gate.display(),
    )
}

/// The run ids of every execution of gated job `name`, in order.
fn executions(dir: &Path, name: &str) -> Vec<i64> {
    std::fs::read_to_string(dir.join(format!("runs-{name}")))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse::<i64>().expect("a run id"))
        .collect()
}

/// Checks that gated job `name` (id `id`) was executed exactly once per run the
/// server knows of, by those runs: no process ran on a claim the store does not have.
#[track_caller]
fn assert_executions_match_runs(api: &Api, dir: &Path, name: &str, id: i64) {
    let j = job(api, id);
    let runs: Vec<i64> = j["runs"]
        .as_array()
        .expect("the job's runs")
        .iter()
        .map(|r| r["id"].as_i64().expect("a run id"))
        .collect();
    assert_eq!(
        executions(dir, name),
        runs,
        "job {name} ({id}): the executions of its command (by GANTRY_RUN_ID) are its runs"
    );
}

/// Waits for the pid file a gated job writes for `attempt`; returns the pid.
#[track_caller]
fn wait_pid(dir: &Path, name: &str, attempt: u32) -> i32 {
    let path = dir.join(format!("pid-{name}-{attempt}"));
    wait_for(
        &format!(
            "attempt {attempt} of job {name} to start (its pid file {})",
            path.display()
        ),
        LONG,
        || host_pid(&path),
    )
}

/// The pid, as this test sees it, of the run process that wrote `$$ $GANTRY_WORKSPACE`
/// to `path`. A run lives in a PID namespace of its own, where `$$` is a small number:
/// the process is the one whose last `NSpid` is that number and whose environment
/// names the run's worktree (unique across attempts and across tests' data dirs).
fn host_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    let (inner, workspace) = text.trim().split_once(' ')?;
    let want_env = format!("GANTRY_WORKSPACE={workspace}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let last = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last());
            last == Some(inner)
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want_env.as_bytes()))
        })
}

/// Creates `path` (a gate that gated jobs wait for).
#[track_caller]
fn open_gate(path: &Path) {
    std::fs::write(path, "open\n").expect("create the gate file");
}

/// Submits job texts as one batch through the API; returns their ids.
#[track_caller]
fn submit_texts(api: &Api, jobs: &[(String, String)]) -> Vec<i64> {
    let body = serde_json::json!({
        "jobs": jobs.iter().map(|(file, text)| serde_json::json!({"file": file, "text": text})).collect::<Vec<_>>()
    });
    let (status, text) = api
        .post("/v1/jobs", &body)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "POST /v1/jobs: HTTP {status}: {text}");
    let resp: Value = serde_json::from_str(&text).expect("submit answer is JSON");
    resp["jobs"]
        .as_array()
        .expect("submit answer lists the jobs")
        .iter()
        .map(|j| j["id"].as_i64().expect("a job id"))
        .collect()
}

/// The events of job `id`, oldest first.
#[track_caller]
fn job_events(api: &Api, id: i64) -> Vec<Value> {
    api.all_events(Some(&id.to_string()))
}

/// `GET /v1/jobs/<id>`: the job with its runs.
#[track_caller]
fn job(api: &Api, id: i64) -> Value {
    api.get_json(&format!("/v1/jobs/{id}"))
}

/// Waits until a `run.claimed` event of `attempt` of job `id` is recorded; returns it.
#[track_caller]
fn wait_claimed(api: &Api, id: i64, attempt: u64) -> Value {
    wait_for(
        &format!("job {id}'s attempt {attempt} to be claimed (a run.claimed event)"),
        LONG,
        || {
            job_events(api, id)
                .into_iter()
                .find(|e| e["kind"] == "run.claimed" && e["data"]["attempt"] == attempt)
        },
    )
}

/// Waits until job `id` is in `state`; returns it. Fails at once when it reaches
/// another terminal state.
#[track_caller]
fn wait_state(api: &Api, id: i64, state: &str, server: &Server) -> Value {
    let terminal = ["succeeded", "failed", "canceled", "killed"];
    wait_for(&format!("job {id} to be {state}"), LONG, || {
        let j = job(api, id);
        let now = j["state"].as_str().unwrap_or_default().to_string();
        if now == state {
            return Some(j);
        }
        assert!(
            !terminal.contains(&now.as_str()),
            "job {id} ended {now} instead of {state}:\n{j:#}\n--- server log ---\n{}",
            server.log_text()
        );
        None
    })
}

/// Whether process `pid` is a live process of the run marked by `sweeper`'s mark (so
/// a reused pid never passes for the run's process).
fn run_process_alive(sweeper: &RunSweeper, pid: i32) -> bool {
    sweeper.marked().contains(&pid)
}

/// One attempt as the event log tells it: claimed at event `claimed`, ended at event
/// `ended` (`run.finished` or `lease.expired`) if it did.
#[derive(Debug, Clone)]
struct Attempt {
    job: i64,
    run: i64,
    claimed: i64,
    ended: Option<i64>,
    /// The outcome of its `run.finished`, or `lost` for a `lease.expired`.
    outcome: Option<String>,
}

/// The attempts in `events` (any order of jobs; ids are the global order), checking on
/// the way that no job ever has two attempts open at once, that each attempt ends at
/// most once and that epochs only grow per job.
#[track_caller]
fn attempts(events: &[Value]) -> Vec<Attempt> {
    let mut sorted: Vec<&Value> = events.iter().collect();
    sorted.sort_by_key(|e| (e["job_id"].as_i64(), e["seq"].as_i64()));
    let mut out: Vec<Attempt> = Vec::new();
    let mut open: BTreeMap<i64, usize> = BTreeMap::new();
    let mut by_run: BTreeMap<i64, usize> = BTreeMap::new();
    let mut last_epoch: BTreeMap<i64, i64> = BTreeMap::new();
    for e in sorted {
        let kind = e["kind"].as_str().unwrap_or_default();
        let Some(job) = e["job_id"].as_i64() else {
            continue;
        };
        let id = e["id"].as_i64().expect("an event id");
        match kind {
            "run.claimed" => {
                let run = e["data"]["run"]
                    .as_i64()
                    .expect("run.claimed names its run");
                let epoch = e["data"]["epoch"]
                    .as_i64()
                    .expect("run.claimed names its epoch");
                if let Some(&i) = open.get(&job) {
                    panic!(
                        "job {job}: attempt of run {run} claimed (event {id}) while run {} was still open: two running attempts at once",
                        out[i].run
                    );
                }
                if let Some(&prev) = last_epoch.get(&job) {
                    assert!(
                        epoch > prev,
                        "job {job}: epoch {epoch} after {prev}: reused"
                    );
                }
                last_epoch.insert(job, epoch);
                open.insert(job, out.len());
                by_run.insert(run, out.len());
                out.push(Attempt {
                    job,
                    run,
                    claimed: id,
                    ended: None,
                    outcome: None,
                });
            }
            "run.finished" | "lease.expired" => {
                let run = if kind == "lease.expired" {
                    e["data"]["run"].as_i64()
                } else {
                    e["run_id"].as_i64()
                }
                .unwrap_or_else(|| panic!("{kind} event {id} names no run: {e}"));
                let i = *by_run.get(&run).unwrap_or_else(|| {
                    panic!("{kind} event {id} of run {run} that was never claimed")
                });
                let a = &mut out[i];
                assert!(
                    a.ended.is_none(),
                    "run {run} of job {job} ended twice (events {:?} and {id})",
                    a.ended
                );
                a.ended = Some(id);
                a.outcome = Some(if kind == "lease.expired" {
                    "lost".to_string()
                } else {
                    e["data"]["outcome"].as_str().unwrap_or("none").to_string()
                });
                if open.get(&job) == Some(&i) {
                    open.remove(&job);
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks that every job in `ids` has exactly one succeeded attempt in the event log,
/// is `succeeded`, and reached `succeeded` exactly once; returns each job's attempts.
#[track_caller]
fn assert_each_succeeded_once(api: &Api, ids: &[i64]) -> BTreeMap<i64, Vec<Attempt>> {
    let mut out = BTreeMap::new();
    for &id in ids {
        let events = job_events(api, id);
        let tried = attempts(&events);
        let wins = tried
            .iter()
            .filter(|a| a.outcome.as_deref() == Some("succeeded"))
            .count();
        assert_eq!(wins, 1, "job {id}: {wins} succeeded attempts: {tried:?}");
        let reached = events
            .iter()
            .filter(|e| e["kind"] == "job.state" && e["data"]["to"] == "succeeded")
            .count();
        assert_eq!(reached, 1, "job {id} reached succeeded {reached} times");
        let j = job(api, id);
        assert_eq!(j["state"], "succeeded", "{j:#}");
        let runs = j["runs"].as_array().expect("the job's runs");
        assert_eq!(
            runs.len(),
            tried.len(),
            "job {id}: the runs and the attempts of the event log agree: {j:#}"
        );
        assert_eq!(
            runs.iter().filter(|r| r["outcome"] == "succeeded").count(),
            1,
            "job {id}: one succeeded run: {j:#}"
        );
        out.insert(id, tried);
    }
    out
}

/// The text of every `run.output` event on stdout of `events`, in order.
fn stdout_text(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["kind"] == "run.output" && e["data"]["stream"] == "stdout")
        .filter_map(|e| e["data"]["text"].as_str())
        .collect()
}

/// A temp dir of a scenario: the source repo at `repo/`, run files (pids, gates) at
/// `runs/`, data dirs under it.
struct Scene {
    env: crate::harness::Env,
}

impl Scene {
    fn new() -> Scene {
        let env = crate::harness::Env::new();
        std::fs::create_dir_all(env.tmp.path().join("runs")).expect("create runs dir");
        Scene { env }
    }
    fn repo(&self) -> PathBuf {
        self.env.repo()
    }
    fn runs(&self) -> PathBuf {
        self.env.tmp.path().join("runs")
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.env.tmp.path().join(name)
    }
}
