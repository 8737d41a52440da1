//! Remote factories (issue 4): a factory token acts only for the factory it registered
//! first, heartbeats carry the machine's figures, and `GET /v1/factories` shows each
//! factory's running jobs and health. Real factories (the `Factory` loop over
//! `HttpCoordinator`) send their heartbeats, say why they do not claim, carry on across
//! a server restart and register again with a server that forgot them.

use crate::support::{
    HANG_GUARD, TestServer, alive, claim, config, job_file, register, repo, started_pid,
    wait_group_gone,
};
use async_trait::async_trait;
use gantry_core::event::NewEvent;
use gantry_core::{FactoryId, JobState, RunId};
use gantry_factory::{
    CoordError, Coordinator, Factory, FactoryConfig, FactoryError, HttpCoordinator,
};
use gantry_protocol::{
    Claim, ErrorBody, FactoryStatus, FinishReport, Health, Heartbeat, HeartbeatAck,
    RegisterFactory, Renewed, Scope,
};
use gantry_server::ServeConfig;
use gantry_store::Store;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A server without the embedded factory, so only the test's factories claim.
fn remote_only(data: &std::path::Path) -> ServeConfig {
    ServeConfig {
        embedded_factory: false,
        ..config(data)
    }
}

async fn forbidden(resp: reqwest::Response) -> ErrorBody {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 403, "{text}");
    let body: ErrorBody = serde_json::from_str(&text).expect("error body");
    assert_eq!(body.error, "forbidden", "{body:?}");
    assert!(body.hint.is_some(), "a refusal says what to do: {body:?}");
    body
}

/// Expects a 409 `factory_name_taken` with a hint; the body.
async fn name_taken(resp: reqwest::Response) -> ErrorBody {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 409, "{text}");
    let body: ErrorBody = serde_json::from_str(&text).expect("error body");
    assert_eq!(
        body.error,
        gantry_protocol::ErrorKind::FactoryNameTaken,
        "{body:?}"
    );
    assert!(body.hint.is_some(), "a refusal says what to do: {body:?}");
    body
}

async fn factories(ts: &TestServer) -> Vec<FactoryStatus> {
    ts.get_json("/v1/factories").await
}

#[tokio::test]
async fn issue4_a_factory_token_registering_a_second_name_is_forbidden() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let tb = ts.token("token-b", Scope::Factory).await;

    let a = register(&ts, &ta, "host-a", 2).await;
    assert_eq!(
        register(&ts, &ta, "host-a", 2).await,
        a,
        "registering again (a restart) keeps the id"
    );

    let reg_b = json!({ "name": "host-b", "seats": 1 });
    let err = forbidden(ts.post(&ta, "/v1/factories", &reg_b).await).await;
    assert!(
        err.message.contains("\"host-a\"") && err.message.contains("\"host-b\""),
        "names both factories: {err:?}"
    );
    assert_eq!(
        (&err.details["factory"], &err.details["asked"]),
        (&json!("host-a"), &json!("host-b"))
    );

    // Another token cannot take host-a over while token-a is live.
    let reg_a = json!({ "name": "host-a", "seats": 1 });
    let err = name_taken(ts.post(&tb, "/v1/factories", &reg_a).await).await;
    assert!(
        err.message.contains("token-a") && err.message.contains("token-b"),
        "{err:?}"
    );
    // The embedded factory's name is the server's.
    let reg_embedded = json!({ "name": gantry_server::EMBEDDED_FACTORY_NAME, "seats": 1 });
    forbidden(ts.post(&tb, "/v1/factories", &reg_embedded).await).await;

    let list = factories(&ts).await;
    assert_eq!(
        list.iter()
            .map(|f| (f.name.as_str(), f.seats))
            .collect::<Vec<_>>(),
        vec![("host-a", 2)],
        "no refused registration changed or added a factory"
    );

    // token-b registers a name of its own; admin tokens register any factory.
    let b = register(&ts, &tb, "host-b", 2).await;
    assert_ne!(a, b);
    assert_eq!(register(&ts, &ts.admin, "host-a", 2).await, a);
    register(&ts, &ts.admin, "host-c", 2).await;
    ts.shutdown().await;
}

/// Issue 15: a factory token registering the name of a factory an admin registered
/// took over its id, then finished the run that factory had claimed. The name belongs
/// to the admin's token now: the registration is refused (409, naming the name and
/// its token), the factory token stays unbound and cannot touch the run.
#[tokio::test]
async fn issue15_a_factory_token_cannot_take_over_a_factory_an_admin_registered() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let thief = ts.token("thief", Scope::Factory).await;
    let x = register(&ts, &ts.admin, "host-x", 1).await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let c = claim(&ts, &ts.admin, x).await;
    assert_eq!(c.job.id, id);

    let err = name_taken(
        ts.post(
            &thief,
            "/v1/factories",
            &json!({ "name": "host-x", "seats": 1 }),
        )
        .await,
    )
    .await;
    assert!(
        err.message.contains("\"host-x\"")
            && err.message.contains("\"admin\"")
            && err.message.contains("\"thief\""),
        "names the factory and both tokens: {err:?}"
    );
    assert_eq!(
        (&err.details["factory"], &err.details["holder"]),
        (&json!("host-x"), &json!("admin"))
    );
    let finish = json!({ "epoch": c.run.epoch, "outcome": "failed", "exit_code": 1 });
    forbidden(
        ts.post(&thief, &format!("/v1/runs/{}/finish", c.run.id), &finish)
            .await,
    )
    .await;
    let job = ts.job(id).await;
    assert_eq!((job.state, job.runs[0].outcome), (JobState::Running, None));
    assert_eq!(
        factories(&ts)
            .await
            .iter()
            .map(|f| (f.id, f.name.as_str(), f.seats))
            .collect::<Vec<_>>(),
        vec![(x, "host-x", 1)],
        "the refused registration changed nothing"
    );

    // The admin's own factory goes on; the factory token registers a name of its own.
    let done = json!({ "epoch": c.run.epoch, "outcome": "succeeded", "exit_code": 0 });
    let resp = ts
        .post(&ts.admin, &format!("/v1/runs/{}/finish", c.run.id), &done)
        .await;
    assert_eq!(resp.status(), 200);
    assert_ne!(register(&ts, &thief, "host-t", 1).await, x);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_factory_token_cannot_claim_or_heartbeat_for_another_factory() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let tb = ts.token("token-b", Scope::Factory).await;
    let unbound = ts.token("token-new", Scope::Factory).await;
    let a = register(&ts, &ta, "host-a", 2).await;
    let b = register(&ts, &tb, "host-b", 2).await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];

    let wait0 = json!({ "wait_s": 0 });
    let err = forbidden(
        ts.post(&ta, &format!("/v1/factories/{b}/claim"), &wait0)
            .await,
    )
    .await;
    assert!(
        err.message.contains("host-a") && err.message.contains("host-b"),
        "{err:?}"
    );
    forbidden(
        ts.post(&unbound, &format!("/v1/factories/{b}/claim"), &wait0)
            .await,
    )
    .await;
    let hb = json!({ "load_1m": 0.5, "free_memory_mb": 100, "free_disk_mb": 200 });
    forbidden(
        ts.post(&ta, &format!("/v1/factories/{b}/heartbeat"), &hb)
            .await,
    )
    .await;
    let job = ts.job(id).await;
    assert_eq!(
        job.state,
        JobState::Queued,
        "the refused claim took nothing"
    );
    let listed = factories(&ts).await;
    assert!(
        listed.iter().all(|f| f.stats.load_1m.is_none()),
        "the refused heartbeat recorded nothing: {listed:?}"
    );

    // Each token works for its own factory.
    let resp = ts
        .post(&ta, &format!("/v1/factories/{a}/heartbeat"), &hb)
        .await;
    assert_eq!(resp.status(), 200);
    let c = claim(&ts, &tb, b).await;
    assert_eq!(c.job.id, id);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_run_refuses_writes_from_another_factorys_token() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(remote_only(data.path())).await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let tb = ts.token("token-b", Scope::Factory).await;
    let a = register(&ts, &ta, "host-a", 2).await;
    register(&ts, &tb, "host-b", 2).await;
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let c = claim(&ts, &ta, a).await;
    let (run, epoch) = (c.run.id, c.run.epoch);

    let err = forbidden(
        ts.post(
            &tb,
            &format!("/v1/runs/{run}/renew"),
            &json!({ "epoch": epoch }),
        )
        .await,
    )
    .await;
    assert!(
        err.message.contains("host-a") && err.message.contains("host-b"),
        "{err:?}"
    );
    let upload = json!({ "epoch": epoch, "events": [
        { "kind": "run.output", "data": { "stream": "stdout", "text": "forged\n" } }
    ]});
    forbidden(
        ts.post(&tb, &format!("/v1/runs/{run}/events"), &upload)
            .await,
    )
    .await;
    let finish = json!({ "epoch": epoch, "outcome": "succeeded", "exit_code": 0 });
    forbidden(
        ts.post(&tb, &format!("/v1/runs/{run}/finish"), &finish)
            .await,
    )
    .await;

    // Nothing was applied: the job runs on under A's lease, with no forged output.
    let job = ts.job(id).await;
    assert_eq!((job.state, job.epoch), (JobState::Running, epoch));
    assert_eq!(job.runs.len(), 1);
    assert_eq!(job.runs[0].factory_id, Some(a));
    assert_eq!(job.runs[0].outcome, None);
    let events = ts.events(Some(id)).await;
    assert!(
        !events.iter().any(|e| e.data["text"] == "forged\n"),
        "{events:#?}"
    );

    // A's own token (and an admin's) still write to it.
    let resp = ts
        .post(
            &ta,
            &format!("/v1/runs/{run}/renew"),
            &json!({ "epoch": epoch }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let renewed: Renewed = resp.json().await.expect("renewed");
    assert_eq!(renewed.stop, None);
    let resp = ts
        .post(
            &ts.admin,
            &format!("/v1/runs/{run}/renew"),
            &json!({ "epoch": epoch }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let resp = ts
        .post(&ta, &format!("/v1/runs/{run}/finish"), &finish)
        .await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(ts.job(id).await.state, JobState::Succeeded);
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_factories_list_figures_running_jobs_and_health() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    // A factory is down after half the lease TTL without a word: 1.5 s here.
    let mut ts = TestServer::start(ServeConfig {
        lease_ttl: Duration::from_secs(3),
        ..remote_only(data.path())
    })
    .await;
    let ta = ts.token("token-a", Scope::Factory).await;
    let a = register(&ts, &ta, "host-a", 2).await;
    let hb = json!({ "load_1m": 1.5, "free_memory_mb": 2048, "free_disk_mb": 10240 });
    let resp = ts
        .post(&ta, &format!("/v1/factories/{a}/heartbeat"), &hb)
        .await;
    assert_eq!(resp.status(), 200);
    let ack: HeartbeatAck = resp.json().await.expect("ack");
    assert_eq!(
        ack,
        HeartbeatAck {
            interval_ms: 500,
            down_after_ms: 1500
        }
    );

    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let c = claim(&ts, &ta, a).await;
    assert_eq!(c.job.id, id);
    let raw: Vec<Value> = ts.get_json("/v1/factories").await;
    assert_eq!(raw.len(), 1);
    let f = &raw[0];
    assert_eq!(
        (
            &f["name"],
            &f["seats"],
            &f["running"],
            &f["load_1m"],
            &f["free_memory_mb"],
            &f["free_disk_mb"],
            &f["health"]
        ),
        (
            &json!("host-a"),
            &json!(2),
            &json!(1),
            &json!(1.5),
            &json!(2048),
            &json!(10240),
            &json!("up")
        ),
        "{f:#}"
    );
    assert!(f["last_seen"].is_string(), "{f:#}");

    // Silent past the threshold: down (the figures stay what they were).
    let deadline = Instant::now() + Duration::from_secs(20);
    let down = loop {
        let list = factories(&ts).await;
        if list[0].health == Health::Down {
            break list[0].clone();
        }
        assert!(Instant::now() < deadline, "never marked down: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(down.last_seen_ago_ms > 1500, "{down:?}");
    assert_eq!(down.stats.free_disk_mb, Some(10240));

    // A heartbeat brings it back up.
    let resp = ts
        .post(&ta, &format!("/v1/factories/{a}/heartbeat"), &json!({}))
        .await;
    assert_eq!(resp.status(), 200);
    let up = factories(&ts).await.remove(0);
    assert_eq!(up.health, Health::Up, "{up:?}");
    assert_eq!(up.stats.load_1m, None, "the new heartbeat measured nothing");

    // A heartbeat of an unknown factory is 404 (it registers again); a bad figure 400.
    let resp = ts
        .post(&ts.admin, "/v1/factories/99/heartbeat", &json!({}))
        .await;
    assert_eq!(resp.status(), 404);
    let resp = ts
        .post(
            &ta,
            &format!("/v1/factories/{a}/heartbeat"),
            &json!({ "load_1m": -1.0 }),
        )
        .await;
    assert_eq!(resp.status(), 400);
    ts.shutdown().await;
}

/// How a call of the factory protocol ended, as [`Recording`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ok,
    Unavailable,
    Refused(String),
    Stale,
}

impl Answer {
    fn of<T>(r: &Result<T, CoordError>) -> Answer {
        match r {
            Ok(_) => Answer::Ok,
            Err(CoordError::Unavailable(_)) => Answer::Unavailable,
            Err(CoordError::Refused { kind, .. }) => Answer::Refused(kind.to_string()),
            Err(CoordError::StaleLease { .. }) => Answer::Stale,
        }
    }
}

/// The calls a factory made, with their answers, in order per kind.
#[derive(Debug, Default, Clone)]
struct Calls {
    registered: Vec<Answer>,
    heartbeats: Vec<(FactoryId, Answer)>,
    claims: Vec<(FactoryId, Answer)>,
    renewals: Vec<Answer>,
}

/// The real [`HttpCoordinator`], with a record of what each call answered, so a test
/// knows the factory really met a server that was down or had forgotten it.
struct Recording {
    http: HttpCoordinator,
    calls: Mutex<Calls>,
}

impl Recording {
    fn calls(&self) -> Calls {
        self.calls.lock().expect("calls lock").clone()
    }

    fn note(&self, f: impl FnOnce(&mut Calls)) {
        f(&mut self.calls.lock().expect("calls lock"));
    }
}

#[async_trait]
impl Coordinator for Recording {
    async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, CoordError> {
        let r = self.http.register(reg).await;
        self.note(|c| c.registered.push(Answer::of(&r)));
        r
    }

    async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, CoordError> {
        let r = self.http.heartbeat(factory, hb).await;
        self.note(|c| c.heartbeats.push((factory, Answer::of(&r))));
        r
    }

    async fn claim(&self, factory: FactoryId, wait: Duration) -> Result<Option<Claim>, CoordError> {
        let r = self.http.claim(factory, wait).await;
        self.note(|c| c.claims.push((factory, Answer::of(&r))));
        r
    }

    async fn renew(&self, run: RunId, epoch: i64) -> Result<Renewed, CoordError> {
        let r = self.http.renew(run, epoch).await;
        self.note(|c| c.renewals.push(Answer::of(&r)));
        r
    }

    async fn events(
        &self,
        run: RunId,
        epoch: i64,
        events: Vec<NewEvent>,
    ) -> Result<(), CoordError> {
        self.http.events(run, epoch, events).await
    }

    async fn finish(&self, run: RunId, report: FinishReport) -> Result<(), CoordError> {
        self.http.finish(run, report).await
    }
}

/// A remote factory running in this process: the real factory loop over HTTP.
struct RemoteFactory {
    coord: Arc<Recording>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), FactoryError>>,
}

impl RemoteFactory {
    /// Starts factory `name` (one seat, no admission thresholds unless `tune` sets
    /// them) for the server at `base` with `token`, its data under `data`.
    fn start(
        base: &str,
        token: &str,
        name: &str,
        data: &Path,
        tune: impl FnOnce(&mut FactoryConfig),
    ) -> RemoteFactory {
        let mut cfg = FactoryConfig {
            name: name.to_string(),
            seats: 1,
            data_dir: data.to_path_buf(),
            kill_grace: Duration::from_millis(300),
            renew_interval: Duration::from_millis(200),
            claim_wait: Duration::from_secs(1),
            min_free_memory_mb: 0,
            min_free_disk_mb: 0,
            // Runs stay sandboxed but may read the test's go-files beside the data dir.
            sandbox_read_write: data.parent().map(Path::to_path_buf).into_iter().collect(),
            ..FactoryConfig::default()
        };
        tune(&mut cfg);
        let coord = Arc::new(Recording {
            http: HttpCoordinator::new(base, token).expect("coordinator"),
            calls: Mutex::default(),
        });
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(Factory::new(cfg, coord.clone()).run(rx));
        RemoteFactory {
            coord,
            shutdown,
            task,
        }
    }

    /// Waits until the recorded calls satisfy `f` (hang guard [`HANG_GUARD`]).
    async fn wait_calls(&self, what: &str, mut f: impl FnMut(&Calls) -> bool) -> Calls {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            let calls = self.coord.calls();
            if f(&calls) {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "the factory never {what}: {calls:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the factory; it must end without error.
    async fn stop(self) -> Calls {
        self.shutdown.send(true).expect("factory listens");
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .expect("factory stops")
            .expect("factory task did not panic")
            .expect("factory loop ended without error");
        self.coord.calls()
    }
}

/// Polls `GET /v1/factories` until a factory named `name` satisfies `f`.
async fn wait_listed(
    ts: &TestServer,
    name: &str,
    mut f: impl FnMut(&FactoryStatus) -> bool,
) -> FactoryStatus {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let list = factories(ts).await;
        if let Some(found) = list.iter().find(|s| s.name == name && f(s)) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "factory {name} never listed as expected: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `MemTotal` of this machine, MiB.
fn mem_total_mb() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("MemTotal in /proc/meminfo")
        / 1024
}

#[tokio::test]
async fn issue4_a_remote_factorys_heartbeats_reach_the_server_with_real_figures() {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let mut ts = TestServer::start(ServeConfig {
        lease_ttl: Duration::from_secs(3),
        ..remote_only(&data.path().join("server"))
    })
    .await;
    let token = ts.token("worker", Scope::Factory).await;
    let factory = RemoteFactory::start(&ts.base, &token, "worker", &data.path().join("f"), |_| {});

    let listed = wait_listed(&ts, "worker", |f| f.stats.load_1m.is_some()).await;
    let load = listed.stats.load_1m.expect("load");
    assert!(
        load.is_finite() && (0.0..10_000.0).contains(&load),
        "{listed:?}"
    );
    let mem = listed.stats.free_memory_mb.expect("free memory measured");
    assert!(mem > 0 && mem <= mem_total_mb(), "{listed:?}");
    let disk = listed.stats.free_disk_mb.expect("free disk measured");
    assert!(disk > 0, "{listed:?}");
    assert_eq!(listed.stats.admission, None, "it claims: {listed:?}");
    assert_eq!(listed.health, Health::Up);
    let raw: Vec<Value> = ts.get_json("/v1/factories").await;
    assert!(
        raw[0]
            .as_object()
            .is_some_and(|o| o.get("admission") == Some(&Value::Null)),
        "the JSON carries `admission`, null while the factory claims: {raw:#?}"
    );

    // Heartbeats never hold claims up: the factory runs a job meanwhile.
    let id = ts
        .submit(&[("j.md", job_file("j", &repo, &["true"], ""))])
        .await[0];
    let job = ts.wait_state(id, JobState::Succeeded).await;
    assert_eq!(job.runs[0].factory_id, Some(listed.id));
    let calls = factory.stop().await;
    assert!(
        calls
            .heartbeats
            .iter()
            .all(|(f, a)| *f == listed.id && *a == Answer::Ok),
        "{calls:#?}"
    );
    ts.shutdown().await;
}

/// A command job that waits until `flag` exists, then adds a line to README.md.
fn gated_job(repo: &Path, flag: &Path) -> String {
    let script = format!(
        "echo waiting; while [ ! -e '{}' ]; do sleep 0.05; done; echo go >> README.md",
        flag.display()
    );
    job_file("gated", repo, &["sh", "-c", &script], "")
}

/// The server goes away while a remote factory runs a job, and comes back on the same
/// port over the same store: the run keeps running through it, its renewals and the
/// heartbeats fail meanwhile and resume, the run finishes once, and claims resume.
async fn a_factory_carries_on_across_a_server_restart(db: Option<String>) {
    let (_tmp, repo) = repo();
    let data = tempfile::tempdir().expect("tempdir");
    let flag = data.path().join("go");
    let serve = ServeConfig {
        // Long enough that the lease outlives the restart; heartbeats every 1.67 s.
        lease_ttl: Duration::from_secs(10),
        db,
        ..remote_only(&data.path().join("server"))
    };
    let mut ts = TestServer::start(serve.clone()).await;
    let addr = ts.server.as_ref().expect("running").addr();
    let token = ts.token("worker", Scope::Factory).await;
    let factory = RemoteFactory::start(&ts.base, &token, "worker", &data.path().join("f"), |_| {});
    let id = ts.submit(&[("gated.md", gated_job(&repo, &flag))]).await[0];
    let pid = started_pid(&ts, id).await;
    let before = ts.job(id).await;
    assert_eq!(before.state, JobState::Running);
    let fid = before.runs[0].factory_id.expect("claimed by the factory");

    ts.shutdown().await;
    let down = factory.coord.calls();
    factory
        .wait_calls("met the server down", |c| {
            c.heartbeats[down.heartbeats.len()..]
                .iter()
                .any(|(_, a)| *a == Answer::Unavailable)
                && c.renewals[down.renewals.len()..].contains(&Answer::Unavailable)
        })
        .await;
    assert!(alive(pid), "the run keeps running while the server is away");

    let mut ts = TestServer::start(ServeConfig {
        listen: addr,
        ..serve
    })
    .await;
    let back = factory.coord.calls();
    std::fs::write(&flag, "").expect("write flag");
    let done = ts.wait_state(id, JobState::Succeeded).await;
    assert_eq!(
        done.runs.len(),
        1,
        "one attempt, never run again: {done:#?}"
    );
    assert_eq!(done.runs[0].factory_id, Some(fid));
    assert_eq!(done.attempt, 1, "{done:#?}");
    wait_group_gone(pid).await;

    // Heartbeats resume: after the run ended (no more renewals) the factory is still
    // heard from, and only a heartbeat can say so.
    let ended = done.runs[0].finished_at.expect("finished");
    let listed = wait_listed(&ts, "worker", |f| f.last_seen > ended).await;
    assert_eq!((listed.id, listed.health), (fid, Health::Up));
    factory
        .wait_calls("heartbeat the restarted server", |c| {
            c.heartbeats[back.heartbeats.len()..]
                .iter()
                .any(|(f, a)| *f == fid && *a == Answer::Ok)
        })
        .await;

    // Claims resume.
    let next = ts
        .submit(&[("after.md", job_file("after", &repo, &["true"], ""))])
        .await[0];
    let after = ts.wait_state(next, JobState::Succeeded).await;
    assert_eq!(after.runs[0].factory_id, Some(fid));

    let calls = factory.stop().await;
    assert_eq!(
        calls.registered,
        vec![Answer::Ok],
        "the server kept its store: no registering again"
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn issue4_a_factory_carries_on_across_a_server_restart_sqlite() {
    a_factory_carries_on_across_a_server_restart(None).await;
}

#[tokio::test]
async fn issue4_a_factory_carries_on_across_a_server_restart_postgres() {
    let db = gantry_store::testing::PgDb::create().await;
    a_factory_carries_on_across_a_server_restart(Some(db.url.clone())).await;
}

/// A factory that does not claim (its disk threshold cannot be met) says why in its
/// heartbeats. Its server restarts on a fresh store that knows its token but not the
/// factory: the heartbeat (the only call such a factory makes) meets the 404, the
/// factory registers again, and the new server lists it with the reason. The factory
/// runs with a factory token: an unknown factory is a 404 for it too, not a 403.
#[tokio::test]
async fn issue4_a_factory_forgotten_by_its_server_registers_again_from_its_heartbeat() {
    let data = tempfile::tempdir().expect("tempdir");
    let first = remote_only(&data.path().join("server-1"));
    let mut ts = TestServer::start(ServeConfig {
        lease_ttl: Duration::from_secs(3),
        ..first
    })
    .await;
    let addr = ts.server.as_ref().expect("running").addr();
    let token = ts.token("worker", Scope::Factory).await;
    let factory = RemoteFactory::start(&ts.base, &token, "worker", &data.path().join("f"), |cfg| {
        cfg.min_free_disk_mb = u64::MAX;
    });
    let closed = |f: &FactoryStatus| {
        f.stats
            .admission
            .as_deref()
            .is_some_and(|r| r.starts_with("not claiming:") && r.contains("free on the disk"))
    };
    let listed = wait_listed(&ts, "worker", closed).await;
    assert!(listed.stats.free_disk_mb.is_some(), "{listed:?}");
    let raw: Vec<Value> = ts.get_json("/v1/factories").await;
    assert!(
        raw[0]["admission"]
            .as_str()
            .is_some_and(|r| r.contains("free on the disk")),
        "{raw:#?}"
    );
    ts.shutdown().await;

    // A fresh store that knows the factory's token (as a rebuilt database would), and
    // nothing else.
    let second = data.path().join("server-2");
    std::fs::create_dir_all(&second).expect("mkdir");
    {
        let store =
            gantry_store::SqliteStore::open(&second.join(gantry_server::DB_FILE)).expect("store");
        store
            .create_token("worker", Scope::Factory, &gantry_server::hash_token(&token))
            .await
            .expect("token");
    }
    let mut ts = TestServer::start(ServeConfig {
        lease_ttl: Duration::from_secs(3),
        listen: addr,
        ..remote_only(&second)
    })
    .await;
    let calls = factory
        .wait_calls("registered again", |c| c.registered.len() == 2)
        .await;
    assert!(
        calls
            .heartbeats
            .iter()
            .any(|(f, a)| *f == listed.id && *a == Answer::Refused("not_found".to_string())),
        "a heartbeat met the forgetful server: {calls:#?}"
    );
    assert!(
        calls.claims.is_empty(),
        "a factory that does not claim never claimed: {calls:#?}"
    );
    let again = wait_listed(&ts, "worker", closed).await;
    assert_eq!(again.health, Health::Up);
    let calls = factory.stop().await;
    assert_eq!(calls.registered, vec![Answer::Ok, Answer::Ok], "{calls:#?}");
    assert!(
        calls
            .heartbeats
            .iter()
            .any(|(f, a)| *f == again.id && *a == Answer::Ok),
        "heartbeats carry on under the new id: {calls:#?}"
    );
    ts.shutdown().await;
}
