//! Test support: an in-memory `Coordinator`, a factory harness, git and /proc helpers.

use async_trait::async_trait;
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, JobId, JobSpec, RunId, StopKind};
use gantry_factory::{CoordError, Coordinator, Factory, FactoryConfig, FactoryError};
use gantry_protocol::{
    Claim, ClaimedJob, FinishReport, Heartbeat, HeartbeatAck, Lease, RegisterFactory, Renewed,
};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Hang guard for everything a test waits for. It only bounds a test that would
/// otherwise hang: under the whole suite's load on two cores, a 200 MB transcript line
/// alone took more than a minute to read.
pub const GUARD: Duration = Duration::from_secs(180);

/// How the test coordinator answers a run's renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewMode {
    /// Renew, no stop.
    Ok,
    /// Refuse as stale.
    Stale,
    /// Renew and ask for a stop.
    Stop(StopKind),
    /// Fail as if the server were unreachable.
    Unavailable,
}

/// Something the coordinator saw, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Event(RunId, NewEvent),
    Finish(RunId, Box<FinishReport>),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Claim>,
    log: Vec<Seen>,
    renew: HashMap<RunId, RenewMode>,
    renews: HashMap<RunId, usize>,
    registered: Vec<RegisterFactory>,
    claim_errors: VecDeque<CoordError>,
    /// Event uploads still to fail as if the server were unreachable.
    events_down: usize,
}

/// An in-memory coordinator: hands out queued claims, records events and finishes, and
/// answers renewals as a test tells it to.
#[derive(Default)]
pub struct TestCoord {
    state: Mutex<State>,
    changed: Notify,
}

impl TestCoord {
    /// Reads or changes the state without waking claimers.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("test coordinator lock"))
    }

    /// Changes the state and wakes waiting claimers.
    fn change<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = self.with(f);
        self.changed.notify_waiters();
        out
    }

    /// Queues a claim for the factory to pick up.
    pub fn push(&self, claim: Claim) {
        self.change(|s| s.queue.push_back(claim));
    }

    /// Sets how renewals of `run` are answered from now on.
    pub fn set_renew(&self, run: RunId, mode: RenewMode) {
        self.with(|s| s.renew.insert(run, mode));
    }

    /// Makes the next `n` event uploads fail as if the server were unreachable.
    pub fn fail_next_events(&self, n: usize) {
        self.with(|s| s.events_down = n);
    }

    /// Makes the next claim fail with `err`.
    pub fn fail_next_claim(&self, err: CoordError) {
        self.change(|s| s.claim_errors.push_back(err));
    }

    /// Claims queued and not taken yet.
    pub fn queued(&self) -> usize {
        self.with(|s| s.queue.len())
    }

    /// Everything seen so far.
    pub fn log(&self) -> Vec<Seen> {
        self.with(|s| s.log.clone())
    }

    /// Registrations so far.
    pub fn registrations(&self) -> Vec<RegisterFactory> {
        self.with(|s| s.registered.clone())
    }

    /// Number of successful renewals of `run`.
    pub fn renew_count(&self, run: RunId) -> usize {
        self.with(|s| s.renews.get(&run).copied().unwrap_or(0))
    }

    /// Events of `run`.
    pub fn events(&self, run: RunId) -> Vec<NewEvent> {
        self.log()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Event(r, e) if r == run => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Finish reports of `run`.
    pub fn finishes(&self, run: RunId) -> Vec<FinishReport> {
        self.log()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Finish(r, f) if r == run => Some(*f),
                _ => None,
            })
            .collect()
    }

    /// The text `run` wrote on `stream`, from its `run.output` events.
    pub fn output(&self, run: RunId, stream: &str) -> String {
        self.events(run)
            .iter()
            .filter(|e| e.kind == "run.output" && e.data["stream"] == stream)
            .map(|e| {
                e.data["text"]
                    .as_str()
                    .expect("text is a string")
                    .to_string()
            })
            .collect()
    }

    /// The `run.started` event of `run`, once it came.
    pub async fn started(&self, run: RunId) -> NewEvent {
        wait_for(|| {
            self.events(run)
                .into_iter()
                .find(|e| e.kind == "run.started")
        })
        .await
    }

    /// The finish report of `run`, once it came.
    pub async fn finish_of(&self, run: RunId) -> FinishReport {
        wait_for(|| self.finishes(run).into_iter().next()).await
    }
}

#[async_trait]
impl Coordinator for TestCoord {
    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        let n = self.with(|s| {
            s.registered.push(reg.clone());
            s.registered.len()
        });
        Ok(FactoryId(n as i64))
    }

    async fn heartbeat(
        &self,
        _factory: FactoryId,
        _hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        // Heartbeats are tested in `heartbeat.rs` with a coordinator that records them.
        Ok(HeartbeatAck {
            interval_ms: 1000,
            down_after_ms: 3000,
        })
    }

    async fn claim(
        &self,
        _factory: FactoryId,
        wait: Duration,
    ) -> Result<Option<Claim>, CoordError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.with(|s| match s.claim_errors.pop_front() {
                Some(e) => Err(e),
                None => Ok(s.queue.pop_front()),
            })?;
            if let Some(c) = next {
                return Ok(Some(c));
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, CoordError> {
        let mode = self.with(|s| s.renew.get(&run).copied().unwrap_or(RenewMode::Ok));
        match mode {
            RenewMode::Stale => Err(CoordError::StaleLease {
                run,
                epoch,
                message: "test says stale".to_string(),
            }),
            RenewMode::Unavailable => Err(CoordError::Unavailable("test says down".to_string())),
            RenewMode::Ok | RenewMode::Stop(_) => {
                self.with(|s| *s.renews.entry(run).or_default() += 1);
                Ok(Renewed {
                    lease_expires_at: 0,
                    stop: match mode {
                        RenewMode::Stop(k) => Some(k),
                        _ => None,
                    },
                })
            }
        }
    }

    async fn events(
        &self,
        run: RunId,
        epoch: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), CoordError> {
        let down = self.with(|s| {
            let down = s.events_down > 0;
            s.events_down = s.events_down.saturating_sub(1);
            down
        });
        if down {
            return Err(CoordError::Unavailable("test says down".to_string()));
        }
        let stale = self.with(|s| s.renew.get(&run) == Some(&RenewMode::Stale));
        if stale {
            return Err(CoordError::StaleLease {
                run,
                epoch,
                message: "test says stale".to_string(),
            });
        }
        self.with(|s| {
            s.log
                .extend(events.into_iter().map(|e| Seen::Event(run, e)));
        });
        Ok(())
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<(), CoordError> {
        let down = self.with(|s| {
            let down = s.events_down > 0;
            s.events_down = s.events_down.saturating_sub(1);
            down
        });
        if down {
            return Err(CoordError::Unavailable("test says down".to_string()));
        }
        let stale = self.with(|s| s.renew.get(&run) == Some(&RenewMode::Stale));
        if stale {
            return Err(CoordError::StaleLease {
                run,
                epoch: report.epoch,
                message: "test says stale".to_string(),
            });
        }
        self.with(|s| s.log.push(Seen::Finish(run, Box::new(report))));
        Ok(())
    }
}

/// A gate named `name` running `run`, with a minute's timeout.
pub fn gate(name: &str, run: &str) -> gantry_core::gate::Gate {
    gantry_core::gate::Gate {
        name: name.to_string(),
        run: run.to_string(),
        timeout_ms: 60_000,
        metric: None,
    }
}

/// Polls `f` until it returns something (hang guard [`GUARD`]).
pub async fn wait_for<T>(f: impl FnMut() -> Option<T>) -> T {
    gantry_testkit::wait_for_async("a condition of the test", GUARD, f).await
}

pub use gantry_testkit::git;

/// Makes a source repo at `dir` on branch `main` with `hello.txt` (3 lines) and
/// `README.md` (1 line) committed. Returns the commit.
pub fn make_repo(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("mkdir repo");
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("hello.txt"), "one\ntwo\nthree\n").expect("write");
    std::fs::write(dir.join("README.md"), "readme\n").expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A spec running `command` in `repo`.
pub fn spec(repo: &Path, command: &[&str]) -> JobSpec {
    JobSpec {
        body: "Do the thing.\n".to_string(),
        ..JobSpec::command("test job", &repo.to_string_lossy(), command)
    }
}

/// A job running `script` with `sh -c` in a sandbox of `kind` set up by `sandbox`
/// (its capability required, as a job file's `sandbox:` does).
pub fn sandboxed_job(
    kind: gantry_core::sandbox::SandboxKind,
    repo: &Path,
    script: &str,
    sandbox: impl FnOnce(&mut gantry_core::sandbox::SandboxSpec),
) -> JobSpec {
    let mut s = spec(repo, &["sh", "-c", script]);
    let mut sb = gantry_core::sandbox::SandboxSpec::of(kind);
    sandbox(&mut sb);
    s.sandbox = Some(sb);
    s.capabilities.push(kind.capability());
    s
}

/// A claim of attempt `attempt` of job `job` as run `run`.
pub fn claim(job: i64, run: i64, attempt: u32, spec: JobSpec) -> Claim {
    Claim {
        job: ClaimedJob {
            id: JobId(job),
            spec,
            resume_session: None,
            checkpoint: None,
        },
        run: Lease {
            id: RunId(run),
            attempt,
            epoch: run * 10,
            lease_expires_at: 0,
            lease_ttl_ms: 10_000,
        },
        deliver: false,
    }
}

/// The configuration tests use: short grace, renewal and claim waits.
pub fn test_config(data: &Path, seats: u32) -> FactoryConfig {
    FactoryConfig {
        name: "test-factory".to_string(),
        seats,
        capabilities: vec!["docker".to_string()],
        data_dir: data.to_path_buf(),
        kill_grace: Duration::from_millis(300),
        renew_interval: Duration::from_millis(50),
        claim_wait: Duration::from_millis(200),
        // Admission is tested on its own; here it must not depend on the machine.
        min_free_memory_mb: 0,
        min_free_disk_mb: 0,
        // Runs stay sandboxed (the data dir is hidden from them), but may read and
        // write the rest of the test's directory, where tests keep their go-files,
        // stand-in CLIs and what those record.
        sandbox_read_write: data.parent().map(Path::to_path_buf).into_iter().collect(),
        // Stand-in agent CLIs replay the recorded transcripts of the engine crate.
        sandbox_read_only: vec![
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .canonicalize()
                .expect("the crates directory"),
        ],
        // `network: model` runs start through the forwarder built with this crate.
        egress: gantry_factory::egress::EgressConfig {
            forwarder: Some(forwarder()),
            ..Default::default()
        },
        ..FactoryConfig::default()
    }
}

/// The egress forwarder program of this crate (`gantry sandbox-forward` in a real
/// factory).
pub fn forwarder() -> gantry_factory::egress::Forwarder {
    gantry_factory::egress::Forwarder {
        program: env!("CARGO_BIN_EXE_gantry-sandbox-forward").into(),
        args: Vec::new(),
    }
}

/// A running factory task and the sender that shuts it down.
pub type Running = (
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), FactoryError>>,
);

/// Starts a factory over `coord`.
pub fn spawn_factory(coord: Arc<TestCoord>, cfg: FactoryConfig) -> Running {
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(Factory::new(cfg, coord).run(rx));
    (shutdown, task)
}

/// Stops a factory started with [`spawn_factory`] and waits for it to end cleanly.
pub async fn stop_factory(factory: Running) {
    let (shutdown, task) = factory;
    shutdown.send(true).expect("factory listens");
    tokio::time::timeout(GUARD, task)
        .await
        .expect("factory stops")
        .expect("factory task did not panic")
        .expect("factory loop ended without error");
}

/// A running factory over a [`TestCoord`], with a source repo, all in one temp dir.
pub struct Harness {
    pub _tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub repo: PathBuf,
    pub base: String,
    pub coord: Arc<TestCoord>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), FactoryError>>,
}

impl Harness {
    /// Starts a factory with `seats` seats and a 300 ms kill grace.
    pub async fn start(seats: u32) -> Harness {
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        let base = make_repo(&repo);
        let data = tmp.path().join("data");
        let coord = Arc::new(TestCoord::default());
        let (shutdown, task) = spawn_factory(coord.clone(), test_config(&data, seats));
        Harness {
            _tmp: tmp,
            data,
            repo,
            base,
            coord,
            shutdown,
            task,
        }
    }

    /// The bare cache of the harness's source repo.
    pub fn cache(&self) -> PathBuf {
        gantry_factory::workspace::cache_dir(&self.data, &self.repo.to_string_lossy())
    }

    /// Queues `claim` and waits for its finish report.
    pub async fn run(&self, claim: Claim) -> FinishReport {
        let run = claim.run.id;
        self.coord.push(claim);
        self.coord.finish_of(run).await
    }

    /// Stops the factory and waits for it (and all its runs) to end.
    pub async fn stop(self) -> (Arc<TestCoord>, tempfile::TempDir) {
        self.shutdown.send(true).expect("factory listens");
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("factory stops")
            .expect("factory task did not panic")
            .expect("factory loop ended without error");
        (self.coord, self._tmp)
    }
}

/// Processes of group `pgid` listed in /proc, with their state letter (zombies included).
pub fn group_members(pgid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            out.push((pid, fields[0].to_string()));
        }
    }
    out
}

/// Members of group `pgid` that are not zombies.
pub fn live_members(pgid: i32) -> Vec<i32> {
    group_members(pgid)
        .into_iter()
        .filter(|(_, st)| st != "Z")
        .map(|(p, _)| p)
        .collect()
}

/// The pid the `run.started` event names.
pub fn started_pid(ev: &NewEvent) -> i32 {
    ev.data["pid"].as_i64().expect("pid in run.started") as i32
}

/// A run record of `claim` under `data`, with paths where the factory would put them.
pub fn run_record(
    data: &Path,
    claim: Claim,
    process: Option<gantry_factory::process::PidRecord>,
) -> gantry_factory::record::RunRecord {
    let arts = gantry_factory::artifacts_dir(data, claim.job.id, claim.run.id);
    let wt = gantry_factory::worktree_dir(data, claim.job.id, claim.run.attempt);
    let branch = gantry_factory::attempt_branch(claim.job.id, claim.run.attempt);
    let cache = gantry_factory::workspace::cache_dir(data, &claim.job.spec.repo);
    gantry_factory::record::RunRecord {
        version: gantry_factory::record::RECORD_VERSION,
        claim,
        process,
        container: None,
        started_at_ms: 0,
        stdout: arts.join("stdout.log"),
        stderr: arts.join("stderr.log"),
        exit_status: arts.join("exit_status"),
        artifacts: arts,
        worktree: std::path::absolute(wt).expect("absolute"),
        cache,
        branch,
        base_commit: String::new(),
        format: None,
        uploaded: Default::default(),
        forced: None,
        checkpoint: None,
        checkpoint_looks: 0,
        outputs_redacted: false,
    }
}
