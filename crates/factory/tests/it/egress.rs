//! Network control of sandboxed runs (issue 12), the same tests for bwrap and docker,
//! each through the real factory: with `network: none` (the default) a run cannot
//! reach a server on the host's loopback; with `network: model` it reaches an allowed
//! host through the factory's egress proxy and nothing else, and every refusal is a
//! `sandbox.egress_denied` event naming the host.
//!
//! The allowed host is a listener of the test on 127.0.0.1, named in the job's
//! `allow:`, so everything works offline. A job may name a private address only on a
//! factory that says so (`private_for_jobs`); these tests check both sides.
//! The docker tests need the engine and the test image `./scripts/test` builds.

use crate::support::*;
use gantry_core::event::SandboxEgressDenied;
use gantry_core::sandbox::{HostPort, Network, SandboxKind, SandboxSpec};
use gantry_core::{JobSpec, Outcome, RunId};
use gantry_factory::{DockerConfig, FactoryConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A TCP server on the host's 127.0.0.1 that answers every connection with a short
/// HTTP response ending in `tag` and counts the connections.
async fn listener(tag: &'static str) -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let body = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{tag}",
                tag.len()
            );
            let _ = s.write_all(body.as_bytes()).await;
        }
    });
    (port, hits)
}

/// One factory of one sandbox kind over its own coordinator, repo and data dir.
struct Place {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    data: PathBuf,
    cfg: FactoryConfig,
    coord: Arc<TestCoord>,
    kind: SandboxKind,
    factory: Option<Running>,
}

impl Place {
    async fn new(kind: SandboxKind, private_for_jobs: bool) -> Place {
        Place::with(kind, |c| c.egress.private_for_jobs = private_for_jobs).await
    }

    async fn with(kind: SandboxKind, change: impl FnOnce(&mut FactoryConfig)) -> Place {
        gantry_factory::private_files();
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        make_repo(&repo);
        let data = tmp.path().join("data");
        let mut cfg = test_config(&data, 2);
        change(&mut cfg);
        if kind == SandboxKind::Docker {
            let image = std::env::var("GANTRY_TEST_DOCKER_IMAGE")
                .unwrap_or_else(|_| "gantry-test-agent:latest".to_string());
            gantry_factory::docker::Engine::connect(Path::new(
                gantry_factory::docker::DEFAULT_SOCKET,
            ))
            .await
            .unwrap_or_else(|e| {
                panic!("the docker egress tests need a Docker engine ({e}); run ./scripts/test")
            });
            cfg = FactoryConfig {
                docker: Some(DockerConfig {
                    image,
                    ..DockerConfig::default()
                }),
                ..cfg
            };
        }
        let coord = Arc::new(TestCoord::default());
        let factory = Some(spawn_factory(coord.clone(), cfg.clone()));
        Place {
            _tmp: tmp,
            repo,
            data,
            cfg,
            coord,
            kind,
            factory,
        }
    }

    /// A job running `script` with `sh -c` in this place's sandbox kind.
    fn job(&self, script: &str, sandbox: impl FnOnce(&mut SandboxSpec)) -> JobSpec {
        let mut s = spec(&self.repo, &["sh", "-c", script]);
        let mut sb = SandboxSpec::of(self.kind);
        sandbox(&mut sb);
        s.sandbox = Some(sb);
        s.capabilities.push(self.kind.capability());
        s
    }

    /// Runs `job` as run `run` and returns its stdout, once it succeeded.
    async fn run(&self, job: i64, run: i64, spec: JobSpec) -> String {
        self.coord.push(claim(job, run, 1, spec));
        let report = self.coord.finish_of(RunId(run)).await;
        let out = self.coord.output(RunId(run), "stdout");
        let err = self.coord.output(RunId(run), "stderr");
        assert_eq!(
            report.outcome,
            Some(Outcome::Succeeded),
            "{report:?} {out} {err}"
        );
        out
    }

    /// The `sandbox.egress_denied` events of `run`.
    fn denials(&self, run: i64) -> Vec<SandboxEgressDenied> {
        self.coord
            .events(RunId(run))
            .iter()
            .filter_map(|e| e.payload::<SandboxEgressDenied>().ok())
            .collect()
    }

    /// Stops the factory (leaving its runs running when its configuration says so)
    /// and starts another on the same data dir, which adopts them.
    async fn restart(&mut self) {
        self.stop_factory().await;
        self.factory = Some(spawn_factory(self.coord.clone(), self.cfg.clone()));
    }

    async fn stop(mut self) {
        self.stop_factory().await;
    }

    async fn stop_factory(&mut self) {
        let (shutdown, task) = self.factory.take().expect("running");
        shutdown.send(true).expect("factory listens");
        tokio::time::timeout(GUARD, task)
            .await
            .expect("factory stops")
            .expect("no panic")
            .expect("factory loop ended without error");
    }
}

/// A script line that connects straight to `host:port` and prints what comes back.
fn direct(host: &str, port: u16) -> String {
    format!("busybox nc -w 3 {host} {port} </dev/null; echo; ")
}

/// A script line that sends `request` to the proxy the run's `HTTPS_PROXY` names.
fn via_proxy(request: &str) -> String {
    format!("p=${{HTTPS_PROXY##*:}}; printf '{request}' | busybox nc -w 5 127.0.0.1 $p; echo; ")
}

async fn none_cannot_reach_the_host_loopback_and_full_can(kind: SandboxKind) {
    let place = Place::new(kind, false).await;
    let (port, hits) = listener("reached-the-host").await;
    let script = format!("{}echo tried", direct("127.0.0.1", port));
    // The default is none: the job names no network.
    let out = place.run(1, 10, place.job(&script, |_| {})).await;
    assert!(out.contains("tried"), "{out}");
    assert!(
        !out.contains("reached-the-host"),
        "network none reached the host: {out}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    if kind == SandboxKind::Bwrap {
        // The same script with the factory's network does reach it: the test can fail.
        let job = place.job(&script, |s| s.network = Some(Network::Full));
        let out = place.run(2, 20, job).await;
        assert!(out.contains("reached-the-host"), "network full: {out}");
    }
    place.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_network_none_cannot_reach_the_host_loopback() {
    none_cannot_reach_the_host_loopback_and_full_can(SandboxKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_network_none_cannot_reach_the_host_loopback() {
    none_cannot_reach_the_host_loopback_and_full_can(SandboxKind::Docker).await;
}

async fn model_reaches_allowed_hosts_only(kind: SandboxKind) {
    let place = Place::new(kind, true).await;
    let (port, hits) = listener("reached-allowed").await;
    let (other, other_hits) = listener("reached-other").await;
    let script = format!(
        "echo proxy=$HTTPS_PROXY; {}{}{}{}{}echo done",
        via_proxy(&format!(
            "CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"
        )),
        via_proxy(&format!(
            "GET http://127.0.0.1:{port}/plain HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
        )),
        via_proxy(&format!("CONNECT 127.0.0.1:{other} HTTP/1.1\\r\\n\\r\\n")),
        via_proxy("CONNECT denied.example:443 HTTP/1.1\\r\\n\\r\\n"),
        direct("127.0.0.1", port),
    );
    let job = place.job(&script, |s| {
        s.network = Some(Network::Model);
        s.allow = vec![HostPort::parse(&format!("127.0.0.1:{port}")).expect("host:port")];
    });
    let out = place.run(1, 10, job).await;
    assert!(out.contains("done"), "{out}");
    assert!(out.contains("proxy=http://127.0.0.1:"), "{out}");
    assert!(out.contains("200 Connection established"), "{out}");
    assert_eq!(
        out.matches("reached-allowed").count(),
        2,
        "CONNECT and plain HTTP reached the allowed host, directly it did not: {out}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(!out.contains("reached-other"), "{out}");
    assert_eq!(other_hits.load(Ordering::SeqCst), 0);
    assert_eq!(out.matches("403 Forbidden").count(), 2, "{out}");
    // A refused client has its answer only once the event is out: the run saw both
    // refusals, so both events are there.
    let denials = place.denials(10);
    assert_eq!(denials.len(), 2, "{denials:?}");
    assert!(
        denials
            .iter()
            .any(|d| d.host == "127.0.0.1" && d.port == other && d.reason == "not allowed"),
        "{denials:?}"
    );
    assert!(
        denials
            .iter()
            .any(|d| d.host == "denied.example" && d.port == 443),
        "{denials:?}"
    );
    place.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_network_model_reaches_allowed_hosts_only() {
    model_reaches_allowed_hosts_only(SandboxKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_network_model_reaches_allowed_hosts_only() {
    model_reaches_allowed_hosts_only(SandboxKind::Docker).await;
}

async fn a_job_cannot_allow_the_factorys_loopback(kind: SandboxKind) {
    let place = Place::new(kind, false).await;
    let (port, hits) = listener("reached-private").await;
    let script = format!(
        "{}echo done",
        via_proxy(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n"))
    );
    let job = place.job(&script, |s| {
        s.network = Some(Network::Model);
        s.allow = vec![HostPort::parse(&format!("127.0.0.1:{port}")).expect("host:port")];
    });
    let out = place.run(1, 10, job).await;
    assert!(out.contains("403 Forbidden"), "{out}");
    assert!(!out.contains("reached-private"), "{out}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let denials = place.denials(10);
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0].host, "127.0.0.1");
    assert_eq!(denials[0].port, port);
    assert_eq!(denials[0].reason, "resolves to a private address");
    place.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_a_job_cannot_allow_the_factorys_loopback() {
    a_job_cannot_allow_the_factorys_loopback(SandboxKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_a_job_cannot_allow_the_factorys_loopback() {
    a_job_cannot_allow_the_factorys_loopback(SandboxKind::Docker).await;
}

async fn an_adopted_model_run_reaches_the_new_factorys_proxy(kind: SandboxKind) {
    let mut place = Place::with(kind, |c| {
        c.egress.private_for_jobs = true;
        c.leave_runs_on_shutdown = true;
    })
    .await;
    let (port, hits) = listener("reached-allowed").await;
    let connect = via_proxy(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n"));
    // The flag is in the worktree, which both kinds of sandbox show the run.
    let script = format!(
        "{connect}echo first-done; while [ ! -e go-on ]; do sleep 0.05; done; {connect}echo second-done"
    );
    let job = place.job(&script, |s| {
        s.network = Some(Network::Model);
        s.allow = vec![HostPort::parse(&format!("127.0.0.1:{port}")).expect("host:port")];
    });
    place.coord.push(claim(1, 10, 1, job));
    wait_for(|| {
        place
            .coord
            .output(RunId(10), "stdout")
            .contains("first-done")
            .then_some(())
    })
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The first factory leaves the run running; its proxy and socket are gone.
    place.restart().await;
    // The run goes on only once the new factory listens on its socket again: a
    // connection made before it adopts the run would find nobody.
    let socket = std::path::absolute(gantry_factory::artifacts_dir(
        &place.data,
        gantry_core::JobId(1),
        RunId(10),
    ))
    .expect("absolute")
    .join("egress/sock");
    wait_for(|| {
        std::os::unix::net::UnixStream::connect(&socket)
            .ok()
            .map(drop)
    })
    .await;
    let worktree = std::path::absolute(gantry_factory::worktree_dir(
        &place.data,
        gantry_core::JobId(1),
        1,
    ))
    .expect("absolute");
    std::fs::write(worktree.join("go-on"), "").expect("flag");
    let report = place.coord.finish_of(RunId(10)).await;
    let out = place.coord.output(RunId(10), "stdout");
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?} {out}");
    assert!(out.contains("second-done"), "{out}");
    assert_eq!(
        out.matches("reached-allowed").count(),
        2,
        "the adopted run reached the host through the new factory's proxy: {out}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    place.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwrap_an_adopted_model_run_reaches_the_new_factorys_proxy() {
    an_adopted_model_run_reaches_the_new_factorys_proxy(SandboxKind::Bwrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_an_adopted_model_run_reaches_the_new_factorys_proxy() {
    an_adopted_model_run_reaches_the_new_factorys_proxy(SandboxKind::Docker).await;
}
