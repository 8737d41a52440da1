//! Test harness: a real server on a free port over a temp data dir, real git repos, an
//! HTTP client, and helpers to wait for states and read event streams.

use gantry_core::event::Event;
use gantry_core::{FactoryId, Job, JobId, JobState};
use gantry_protocol::{Claim, CreatedToken, Registered, Scope, SubmitResponse, result_ref};
use gantry_server::{RunningServer, ServeConfig};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

/// Hang guard for anything a test waits for: generous, never a performance bound.
pub const HANG_GUARD: Duration = Duration::from_secs(90);

/// A running server with its data dir and a client.
pub struct TestServer {
    /// The server (taken by `shutdown`).
    pub server: Option<RunningServer>,
    /// Base URL, e.g. `http://127.0.0.1:43123`.
    pub base: String,
    /// The admin token.
    pub admin: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

/// A config over `data_dir` listening on a free loopback port.
pub fn config(data_dir: &Path) -> ServeConfig {
    ServeConfig {
        data_dir: data_dir.to_path_buf(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        kill_grace: Duration::from_millis(500),
        reaper_interval: Duration::from_millis(200),
        ..ServeConfig::default()
    }
}

/// Lets runs read and write the test's directory (the data dir's parent), where tests
/// keep their go-files: runs stay sandboxed, and the data dir stays hidden from them.
pub fn with_test_dir_writable(mut cfg: ServeConfig) -> ServeConfig {
    if let Some(dir) = cfg.data_dir.parent().filter(|d| !d.as_os_str().is_empty()) {
        cfg.sandbox.read_write.push(dir.to_path_buf());
    }
    cfg
}

impl TestServer {
    /// Starts a server with `cfg`.
    pub async fn start(cfg: ServeConfig) -> TestServer {
        let cfg = with_test_dir_writable(cfg);
        let server = gantry_server::start(cfg.clone())
            .await
            .expect("server starts");
        let base = format!("http://{}", server.addr());
        let admin = server.admin_token().to_string();
        TestServer {
            server: Some(server),
            base,
            admin,
            http: reqwest::Client::builder()
                .timeout(HANG_GUARD)
                .build()
                .expect("client"),
        }
    }

    /// Shuts the server down gracefully.
    pub async fn shutdown(&mut self) {
        let server = self.server.take().expect("server running");
        tokio::time::timeout(HANG_GUARD, server.shutdown())
            .await
            .expect("shutdown does not hang")
            .expect("shutdown succeeds");
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET `path` with `token`.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET sent")
    }

    /// POST JSON `body` to `path` with `token`.
    pub async fn post(&self, token: &str, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST sent")
    }

    /// GET `path` as admin, expecting 200 and JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let resp = self.get(&self.admin, path).await;
        assert_eq!(
            resp.status(),
            200,
            "GET {path}: {}",
            resp.text().await.unwrap_or_default()
        );
        resp.json().await.expect("JSON body")
    }

    /// POST as admin, expecting 200 and JSON.
    pub async fn post_json<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> T {
        let resp = self.post(&self.admin, path, body).await;
        assert_eq!(
            resp.status(),
            200,
            "POST {path}: {}",
            resp.text().await.unwrap_or_default()
        );
        resp.json().await.expect("JSON body")
    }

    /// Creates a token of `scope` and returns its secret.
    pub async fn token(&self, name: &str, scope: Scope) -> String {
        let created: CreatedToken = self
            .post_json("/v1/tokens", &json!({ "name": name, "scope": scope }))
            .await;
        assert_eq!(created.info.scope, scope);
        created.token
    }

    /// Submits job files `(name, text)` as admin; returns their ids.
    pub async fn submit(&self, files: &[(&str, String)]) -> Vec<JobId> {
        let jobs: Vec<Value> = files
            .iter()
            .map(|(file, text)| json!({ "file": file, "text": text }))
            .collect();
        let resp: SubmitResponse = self.post_json("/v1/jobs", &json!({ "jobs": jobs })).await;
        resp.jobs.into_iter().map(|s| s.id).collect()
    }

    /// The job with its runs.
    pub async fn job(&self, id: JobId) -> Job {
        self.get_json(&format!("/v1/jobs/{id}")).await
    }

    /// How many claims found nothing, summed over factories, from `GET /metrics`.
    pub async fn empty_claims(&self) -> u64 {
        let resp = self.get(&self.admin, "/metrics").await;
        assert_eq!(resp.status(), 200, "GET /metrics");
        let text = resp.text().await.expect("metrics text");
        let (name, label) = gantry_testkit::EMPTY_CLAIMS;
        gantry_testkit::metric_sum(&text, name, label) as u64
    }

    /// Waits until a factory has asked the store for a job, and found none, after this
    /// call began. One claim may already be under way when it begins, and a factory has
    /// one claim under way at a time, so two more empty claims per factory (`factories`)
    /// prove that one of them started after everything committed before the call.
    pub async fn wait_claims_found_nothing(&self, factories: u64) {
        let before = self.empty_claims().await;
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let now = self.empty_claims().await;
            if now > before + factories {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no factory asked for a job: empty claims stayed at {now} (from {before})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the job is in `state` (failing fast if it ends in another terminal
    /// state).
    pub async fn wait_state(&self, id: JobId, state: JobState) -> Job {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            let job = self.job(id).await;
            if job.state == state {
                return job;
            }
            if job.state.is_terminal() && !state.is_terminal() {
                panic!(
                    "job {id} ended {} while waiting for {state}: {job:#?}",
                    job.state
                );
            }
            if job.state.is_terminal() && job.state != state {
                let events = self.events(Some(id)).await;
                panic!(
                    "job {id} ended {} instead of {state}: {job:#?}\n{events:#?}",
                    job.state
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never became {state}: {job:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every event (of `job`, or all), through the JSON pages.
    pub async fn events(&self, job: Option<JobId>) -> Vec<Event> {
        let mut all: Vec<Event> = Vec::new();
        loop {
            let after = all.last().map_or(0, |e| e.id);
            let path = match job {
                Some(j) => format!("/v1/events?job={j}&after={after}"),
                None => format!("/v1/events?after={after}"),
            };
            let page: Vec<Event> = self.get_json(&path).await;
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }

    /// Waits for the first event of `kind` of `job`.
    pub async fn wait_event(&self, job: JobId, kind: &str) -> Event {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(ev) = self
                .events(Some(job))
                .await
                .into_iter()
                .find(|e| e.kind == kind)
            {
                return ev;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} event for job {job}: {:#?}",
                self.events(Some(job)).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // RunningServer's own Drop signals shutdown, so a failed test leaves no runs.
        self.server.take();
    }
}

pub use gantry_testkit::git;

/// Whether `git rev-parse --verify` finds `rev` in `dir`.
pub fn has_ref(dir: &Path, rev: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "--quiet", rev])
        .output()
        .expect("git runs")
        .status
        .success()
}

/// What a remote factory does on its own machine: a clone of `source` in `dir` with one
/// commit that writes `text` to `file`, pushed to the result ref of `run` in the source.
/// Returns the commit.
pub fn publish(
    source: &Path,
    dir: &Path,
    run: gantry_core::RunId,
    file: &str,
    text: &str,
) -> String {
    if !dir.exists() {
        git(
            source,
            &["clone", "--quiet", ".", dir.to_str().expect("UTF-8 path")],
        );
    }
    std::fs::write(dir.join(file), text).expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", "attempt"]);
    let commit = git(dir, &["rev-parse", "HEAD"]);
    git(
        dir,
        &[
            "push",
            "--quiet",
            "origin",
            &format!("HEAD:{}", result_ref(run)),
        ],
    );
    commit
}

/// A temp dir holding a git repo `repo/` on branch `main` with one commit (README.md,
/// two lines).
pub fn repo() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("repo");
    std::fs::create_dir(&path).expect("mkdir repo");
    git(&path, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(path.join("README.md"), "hello\nworld\n").expect("write README");
    git(&path, &["add", "README.md"]);
    git(&path, &["commit", "--quiet", "-m", "initial"]);
    (tmp, path)
}

/// A command job file for `repo` running `argv`, with extra front matter lines.
pub fn job_file(title: &str, repo: &Path, argv: &[&str], extra: &str) -> String {
    let argv = serde_json::to_string(argv).expect("argv as JSON");
    format!(
        "---\ntitle: {title}\nrepo: {}\nengine: command\ncommand: {argv}\n{extra}---\nDo the thing.\n",
        repo.display()
    )
}

/// Process ids whose process group is `pgid` (zombies excluded: they hold no
/// resources and only wait for their parent to reap them).
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] = state, fields[2] = pgrp.
        if fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<i32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// The pid from a job's `run.started` event.
pub async fn started_pid(ts: &TestServer, job: JobId) -> i32 {
    let ev = ts.wait_event(job, gantry_core::event::RUN_STARTED).await;
    ev.data["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("run.started has a pid: {ev:?}")) as i32
}

/// Waits until no live process is left in group `pgid`.
pub async fn wait_group_gone(pgid: i32) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !group_members(pgid).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes of group {pgid} still alive: {:?}",
            group_members(pgid)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SSE client reading `event:`/`id:`/`data:` blocks off a streaming response.
pub struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

/// One SSE message.
#[derive(Debug, Clone)]
pub struct SseMessage {
    /// `id:` field.
    pub id: i64,
    /// `event:` field.
    pub kind: String,
    /// `data:` decoded.
    pub event: Event,
}

impl SseReader {
    /// Opens `GET path` as an event stream, with `Last-Event-ID` when given.
    pub async fn open(ts: &TestServer, path: &str, last_event_id: Option<i64>) -> SseReader {
        // No overall timeout: the stream stays open; reads are guarded one by one.
        let client = reqwest::Client::new();
        let mut req = client
            .get(ts.url(path))
            .bearer_auth(&ts.admin)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("stream opened");
        assert_eq!(resp.status(), 200);
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            ctype.starts_with("text/event-stream"),
            "content type {ctype}"
        );
        SseReader {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next message (comments skipped).
    pub async fn next(&mut self) -> SseMessage {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(bytes).expect("UTF-8 stream");
                let (mut id, mut kind, mut data) = (None, None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                let Some(id) = id else {
                    continue; // A keep-alive comment.
                };
                let event: Event = serde_json::from_str(&data).expect("data is an Event");
                return SseMessage {
                    id,
                    kind: kind.expect("event: field"),
                    event,
                };
            }
            let chunk = tokio::time::timeout(HANG_GUARD, self.resp.chunk())
                .await
                .expect("stream yields within the hang guard")
                .expect("stream read")
                .expect("stream still open");
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// Registers factory `name` with `seats` seats through `ts` with `token`; its id.
pub async fn register(ts: &TestServer, token: &str, name: &str, seats: u32) -> FactoryId {
    let resp = ts
        .post(
            token,
            "/v1/factories",
            &json!({ "name": name, "seats": seats }),
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    resp.json::<Registered>().await.expect("registered").id
}

/// Claims one job for `factory` through `ts`, long-polling until one is claimable.
pub async fn claim(ts: &TestServer, token: &str, factory: FactoryId) -> Claim {
    let resp = ts
        .post(
            token,
            &format!("/v1/factories/{factory}/claim"),
            &json!({ "wait_s": 60 }),
        )
        .await;
    assert_eq!(resp.status(), 200, "a job is claimable within the wait");
    resp.json().await.expect("claim")
}
