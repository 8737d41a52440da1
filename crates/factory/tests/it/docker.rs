//! The docker sandbox (issue 12): a job that asks for it runs in a container of the
//! local Docker engine, sees its worktree and nothing else of the machine, runs as a
//! non-root user without network unless asked, under its memory and pids limits, and
//! leaves no container and no process behind, whichever way it ends. A restarted
//! factory adopts a running container and sweeps its leftovers.
//!
//! These tests need a Docker engine and the test image `./scripts/test` builds
//! (`gantry-test-agent:latest`, busybox); they fail, never skip, without them.

use crate::support::stop_factory as stop;
use crate::support::*;
use gantry_core::sandbox::{Network, SandboxKind, SandboxSpec};
use gantry_core::{JobId, JobSpec, Outcome, RunId, StopKind};
use gantry_factory::docker::{ContainerRun, DEFAULT_SOCKET, Engine};
use gantry_factory::{DockerConfig, Factory, FactoryConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The image every test shares, built once by `./scripts/test` with `docker import`.
pub fn image() -> String {
    std::env::var("GANTRY_TEST_DOCKER_IMAGE")
        .unwrap_or_else(|_| "gantry-test-agent:latest".to_string())
}

/// The engine, or a loud failure saying how to get one.
pub async fn engine() -> Engine {
    let engine = match Engine::connect(Path::new(DEFAULT_SOCKET)).await {
        Ok(e) => e,
        Err(e) => panic!(
            "the docker sandbox tests need a Docker engine ({e}); run ./scripts/test, which starts dockerd and builds the test image"
        ),
    };
    if let Err(e) = engine.check_image(&image()).await {
        panic!("{e}; run ./scripts/test, which builds it with docker import");
    }
    engine
}

/// The test configuration with the docker sandbox on (not the default).
pub fn docker_config(data: &Path) -> FactoryConfig {
    FactoryConfig {
        docker: Some(DockerConfig {
            image: image(),
            ..DockerConfig::default()
        }),
        ..test_config(data, 2)
    }
}

/// A job running `script` with `sh -c` in a container set up by `sandbox`.
pub(crate) fn job(repo: &Path, script: &str, sandbox: impl FnOnce(&mut SandboxSpec)) -> JobSpec {
    sandboxed_job(SandboxKind::Docker, repo, script, sandbox)
}

/// A factory with the docker sandbox over its own coordinator, source repo and data
/// dir, all in one temp dir. Tests that look for a run's processes by the ids in their
/// environment give their jobs ids no other test of this binary uses.
pub(crate) struct World {
    pub tmp: tempfile::TempDir,
    pub repo: PathBuf,
    pub data: PathBuf,
    pub coord: Arc<TestCoord>,
    pub engine: Engine,
}

impl World {
    pub async fn new() -> World {
        // As `gantry serve` and `gantry factory` do: the factory's files are private
        // to its user, and the container's user must still read its prompt and script.
        gantry_factory::private_files();
        let engine = engine().await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        make_repo(&repo);
        let data = tmp.path().join("data");
        World {
            tmp,
            repo,
            data,
            coord: Arc::new(TestCoord::default()),
            engine,
        }
    }

    fn factory(&self) -> Running {
        spawn_factory(self.coord.clone(), docker_config(&self.data))
    }

    /// The containers this world's factories started, still on the engine.
    pub async fn containers(&self) -> Vec<String> {
        let data = std::path::absolute(&self.data).expect("absolute");
        self.engine
            .containers_of(&data)
            .await
            .expect("list containers")
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The worktree of attempt 1 of `job`.
    pub fn worktree(&self, job: i64) -> PathBuf {
        std::path::absolute(gantry_factory::worktree_dir(&self.data, JobId(job), 1))
            .expect("absolute")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_a_container_as_a_non_root_user_and_its_result_is_delivered() {
    let w = World::new().await;
    let f = w.factory();
    let script = "echo changed >> hello.txt; echo new > made.txt; id -u; echo home=$HOME; \
                  touch /tmp/private $HOME/private && echo wrote-tmp-and-home; \
                  test -r \"$GANTRY_PROMPT_FILE\" && echo prompt-readable; \
                  echo x > \"$GANTRY_PROMPT_FILE\" || echo prompt-read-only";
    let report = {
        w.coord.push(claim(1, 10, 1, job(&w.repo, script, |_| {})));
        w.coord.finish_of(RunId(10)).await
    };
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = w.coord.output(RunId(10), "stdout");
    assert!(out.contains("10000\n"), "runs as the sandbox user: {out}");
    assert!(out.contains("home=/home/gantry"), "{out}");
    assert!(out.contains("wrote-tmp-and-home"), "{out}");
    assert!(out.contains("prompt-readable"), "{out}");
    assert!(out.contains("prompt-read-only"), "{out}");
    assert_eq!(report.files_changed, Some(2), "{report:?}");
    assert!(
        report.commit.is_some(),
        "the change was committed: {report:?}"
    );
    let started = w.coord.started(RunId(10)).await;
    assert!(
        started.data["container"]
            .as_str()
            .is_some_and(|c| c.len() >= 12),
        "run.started names the container: {started:?}"
    );
    let regs = w.coord.registrations();
    assert!(
        regs[0].capabilities.contains(&"sandbox:docker".to_string()),
        "{regs:?}"
    );
    assert!(w.containers().await.is_empty(), "the container was removed");
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_or_write_outside_its_worktree() {
    let w = World::new().await;
    let outside = w.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "planted-outside-secret").expect("write");
    std::fs::create_dir_all(&w.data).expect("data dir");
    std::fs::write(w.data.join("admin.token"), "gtk_planted_admin_token").expect("write");
    let f = w.factory();
    let (o, d) = (outside.display(), w.data.display());
    let script = format!(
        "cat '{o}/secret.txt'; cat '{d}/admin.token'; cat \"$GANTRY_WORKSPACE/../../admin.token\"; \
         ls '{d}'; echo escaped > '{o}/written.txt'; echo escaped > /etc/written; \
         echo escaped > /written; echo done"
    );
    w.coord.push(claim(1, 10, 1, job(&w.repo, &script, |_| {})));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = w.coord.output(RunId(10), "stdout");
    let err = w.coord.output(RunId(10), "stderr");
    assert!(out.contains("done"), "the job ran to its end: {out} {err}");
    assert!(!out.contains("planted"), "read outside the worktree: {out}");
    assert!(!out.contains("gtk_"), "read the admin token: {out}");
    assert!(!out.contains("admin.token"), "listed the data dir: {out}");
    assert!(
        !outside.join("written.txt").exists(),
        "wrote outside the worktree"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    stop(f).await;
}

/// A TCP server on every interface of the host; counts the connections it accepts.
async fn listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("0.0.0.0:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nreached")
                .await;
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_none_cannot_reach_the_host_and_full_can() {
    let w = World::new().await;
    let (port, hits) = listener().await;
    let f = w.factory();
    // The host as a container on the default bridge sees it, and its loopback.
    // busybox's static `wget` cannot resolve even an address; `nc` connects directly.
    let script = format!(
        "for h in 172.17.0.1 127.0.0.1; do nc -w 3 $h {port} </dev/null && echo; done; echo tried"
    );
    w.coord.push(claim(1, 10, 1, job(&w.repo, &script, |_| {})));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = w.coord.output(RunId(10), "stdout");
    assert!(out.contains("tried"), "{out}");
    assert!(
        !out.contains("reached"),
        "network none reached the host: {out}"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The same script with the full network does reach it: the test can fail.
    w.coord.push(claim(
        2,
        20,
        1,
        job(&w.repo, &script, |s| s.network = Some(Network::Full)),
    ));
    let report = w.coord.finish_of(RunId(20)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = w.coord.output(RunId(20), "stdout");
    assert!(
        out.contains("reached"),
        "network full reached the host: {out}"
    );
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_reported_oom_and_a_fork_bomb_is_held_by_the_pids_limit() {
    let w = World::new().await;
    let f = w.factory();
    // Doubling a shell string grows the shell's memory without bound.
    let hog = "x=0123456789abcdef; while true; do x=\"$x$x\"; done";
    w.coord.push(claim(
        1,
        10,
        1,
        job(&w.repo, hog, |s| s.memory_bytes = Some(32 << 20)),
    ));
    // Without the limit every fork succeeds and the job prints `all-forked`; with it,
    // the shell cannot fork past the limit and gives up (busybox `sh` exits 2).
    let bomb = "i=0; while [ $i -lt 2000 ]; do sleep 600 & i=$((i+1)); done; echo all-forked";
    w.coord.push(claim(
        7202,
        72020,
        1,
        job(&w.repo, bomb, |s| s.pids = Some(32)),
    ));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(error.starts_with("oom"), "the run says oom: {error}");

    let report = w.coord.finish_of(RunId(72020)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    let out = w.coord.output(RunId(72020), "stdout");
    assert!(
        !out.contains("all-forked"),
        "the bomb forked past the limit: {out}"
    );
    let err = w.coord.output(RunId(72020), "stderr");
    assert!(err.contains("fork"), "forks were refused: {err}");
    assert!(
        gantry_factory::process::processes_of_run(JobId(7202), RunId(72020)).is_empty(),
        "none of the bomb's processes outlived the run"
    );
    assert!(w.containers().await.is_empty());
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_the_container_at_once_and_a_background_process_dies_with_the_run() {
    let w = World::new().await;
    let f = w.factory();
    w.coord
        .push(claim(7301, 73010, 1, job(&w.repo, "sleep 600", |_| {})));
    w.coord.started(RunId(73010)).await;
    wait_for(|| {
        (!gantry_factory::process::processes_of_run(JobId(7301), RunId(73010)).is_empty())
            .then_some(())
    })
    .await;
    let asked = Instant::now();
    w.coord
        .set_renew(RunId(73010), RenewMode::Stop(StopKind::Kill));
    let report = w.coord.finish_of(RunId(73010)).await;
    let took = asked.elapsed();
    assert_eq!(report.outcome, Some(Outcome::Killed), "{report:?}");
    assert!(took < Duration::from_secs(3), "kill took {took:?}");
    assert!(w.containers().await.is_empty(), "no container is left");
    assert!(gantry_factory::process::processes_of_run(JobId(7301), RunId(73010)).is_empty());

    // A process the agent leaves in the background ends with the run.
    let script = "sleep 600 & while [ ! -e go ]; do sleep 0.05; done; echo left";
    w.coord
        .push(claim(7302, 73020, 1, job(&w.repo, script, |_| {})));
    wait_for(|| {
        (gantry_factory::process::processes_of_run(JobId(7302), RunId(73020)).len() >= 2)
            .then_some(())
    })
    .await;
    std::fs::write(w.worktree(7302).join("go"), "").expect("go");
    let report = w.coord.finish_of(RunId(73020)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    assert!(
        gantry_factory::process::processes_of_run(JobId(7302), RunId(73020)).is_empty(),
        "the background sleep outlived the run"
    );
    assert!(w.containers().await.is_empty());
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_run_at_once_naming_the_image() {
    let w = World::new().await;
    let f = w.factory();
    let image = "gantry-no-such-image:never";
    w.coord.push(claim(
        1,
        10,
        1,
        job(&w.repo, "true", |s| s.image = Some(image.to_string())),
    ));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Failed), "{report:?}");
    let error = report.error.unwrap_or_default();
    assert!(error.contains(image), "{error}");
    assert!(
        error.contains("not on this factory's Docker engine"),
        "{error}"
    );
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_factory_adopts_a_running_container_and_sweeps_leftovers() {
    let w = World::new().await;
    // A leftover: a container labelled with this data dir that no run record names.
    let stray = w.tmp.path().join("stray");
    std::fs::create_dir_all(stray.join("wt")).expect("mkdir");
    std::fs::create_dir_all(stray.join("arts")).expect("mkdir");
    let data = std::path::absolute(&w.data).expect("absolute");
    let leftover = w
        .engine
        .start(&ContainerRun {
            ids: (JobId(99), RunId(990)),
            data_dir: data.clone(),
            image: image(),
            argv: vec!["sleep".into(), "600".into()],
            env: Vec::new(),
            worktree: stray.join("wt"),
            worktree_read_only: false,
            artifacts: stray.join("arts"),
            stdin: None,
            stdout: stray.join("arts/out"),
            stderr: stray.join("arts/err"),
            network: Network::None,
            egress: None,
            memory_bytes: None,
            nano_cpus: None,
            pids: None,
        })
        .await
        .expect("leftover started");
    assert_eq!(w.containers().await, vec![leftover.clone()]);

    let cfg = FactoryConfig {
        leave_runs_on_shutdown: true,
        ..docker_config(&w.data)
    };
    let first = spawn_factory(w.coord.clone(), cfg.clone());
    let script =
        "echo before; while [ ! -e go ]; do sleep 0.05; done; echo after > after.txt; echo after";
    w.coord.push(claim(1, 10, 1, job(&w.repo, script, |_| {})));
    let started = w.coord.started(RunId(10)).await;
    let container = started.data["container"]
        .as_str()
        .expect("container")
        .to_string();
    assert!(
        !w.containers().await.contains(&leftover),
        "the first factory swept the leftover at start"
    );
    stop(first).await;
    assert_eq!(
        w.containers().await,
        vec![container.clone()],
        "the run's container outlives its factory"
    );

    let mut second = Factory::new(cfg, w.coord.clone());
    let adopted = second.adopt().await.expect("adopt");
    assert_eq!(adopted.adopted, vec![(JobId(1), RunId(10))], "{adopted:?}");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(second.run(rx));
    std::fs::write(w.worktree(1).join("go"), "").expect("go");
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = w.coord.output(RunId(10), "stdout");
    assert!(out.contains("before") && out.contains("after"), "{out}");
    assert_eq!(
        report.files_changed,
        Some(2),
        "after.txt and go: {report:?}"
    );
    assert!(w.containers().await.is_empty(), "no container is left");
    stop((tx, task)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_of_a_docker_run_run_in_containers_too() {
    let w = World::new().await;
    let f = w.factory();
    let mut s = job(&w.repo, "echo agent > agent.txt", |_| {});
    // The gate proves where it runs: as the sandbox user, with no network, and the
    // agent's file readable in the worktree.
    s.gates = gantry_core::gate::GateChoice::Inline(vec![gate(
        "walled",
        "id -u; test -e agent.txt && cat /proc/net/route | wc -l && ls /sys/class/net",
    )]);
    w.coord.push(claim(1, 10, 1, s));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let passed = w
        .coord
        .events(RunId(10))
        .into_iter()
        .find(|e| e.kind == "gate.passed")
        .expect("the gate passed");
    let path = passed.data["output"].as_str().expect("output path");
    let out = std::fs::read_to_string(path).expect("gate output");
    assert!(
        out.starts_with("10000\n"),
        "the gate runs as the sandbox user: {out}"
    );
    assert!(
        out.contains("lo") && !out.contains("eth0"),
        "no network: {out}"
    );
    assert!(w.containers().await.is_empty(), "no container is left");
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_timeout_end_the_container_after_the_grace() {
    let w = World::new().await;
    let f = w.factory();
    // The container's first process ignores SIGTERM (it is pid 1 without a handler,
    // and the script traps it too): only the removal after the grace ends it.
    let script = "trap '' TERM; sleep 600 & wait; wait";
    w.coord
        .push(claim(7401, 74010, 1, job(&w.repo, script, |_| {})));
    w.coord.started(RunId(74010)).await;
    wait_for(|| {
        (gantry_factory::process::processes_of_run(JobId(7401), RunId(74010)).len() >= 2)
            .then_some(())
    })
    .await;
    w.coord
        .set_renew(RunId(74010), RenewMode::Stop(StopKind::Cancel));
    let report = w.coord.finish_of(RunId(74010)).await;
    assert_eq!(report.outcome, Some(Outcome::Canceled), "{report:?}");
    assert!(gantry_factory::process::processes_of_run(JobId(7401), RunId(74010)).is_empty());

    let mut s = job(&w.repo, script, |_| {});
    s.timeout_ms = Some(500);
    w.coord.push(claim(7402, 74020, 1, s));
    let report = w.coord.finish_of(RunId(74020)).await;
    assert_eq!(report.outcome, Some(Outcome::TimedOut), "{report:?}");
    assert!(gantry_factory::process::processes_of_run(JobId(7402), RunId(74020)).is_empty());
    assert!(w.containers().await.is_empty(), "no container is left");
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_whose_default_is_docker_runs_jobs_without_a_sandbox_field_in_containers() {
    let w = World::new().await;
    let mut cfg = docker_config(&w.data);
    if let Some(d) = cfg.docker.as_mut() {
        d.default = true;
    }
    let f = spawn_factory(w.coord.clone(), cfg);
    w.coord.push(claim(
        1,
        10,
        1,
        spec(&w.repo, &["sh", "-c", "id -u; ls /sys/class/net"]),
    ));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let out = w.coord.output(RunId(10), "stdout");
    assert!(out.starts_with("10000\n"), "ran in a container: {out}");
    assert!(!out.contains("eth0"), "without network: {out}");
    let started = w.coord.started(RunId(10)).await;
    assert!(started.data["container"].is_string(), "{started:?}");
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_whose_default_is_docker_does_not_start_without_an_engine() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = docker_config(&tmp.path().join("data"));
    cfg.docker = Some(DockerConfig {
        socket: tmp.path().join("no-such-docker.sock"),
        image: image(),
        default: true,
        ..DockerConfig::default()
    });
    let coord = Arc::new(TestCoord::default());
    let (_tx, task) = spawn_factory(coord.clone(), cfg.clone());
    let err = tokio::time::timeout(GUARD, task)
        .await
        .expect("it ends")
        .expect("no panic")
        .expect_err("no engine, no factory");
    let text = err.to_string();
    assert!(text.contains("no-such-docker.sock"), "{text}");
    assert!(text.contains("default sandbox is docker"), "{text}");
    assert!(coord.registrations().is_empty(), "it never registered");
    // Only offering docker, it starts without it and does not advertise it.
    if let Some(d) = cfg.docker.as_mut() {
        d.default = false;
    }
    let f = spawn_factory(coord.clone(), cfg);
    let regs = wait_for(|| {
        let r = coord.registrations();
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert!(
        !regs[0].capabilities.iter().any(|c| c == "sandbox:docker"),
        "{regs:?}"
    );
    stop(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reviewer_of_a_docker_run_runs_in_a_container_on_a_read_only_copy() {
    use gantry_core::review::{ReviewChoice, ReviewSpec};
    use gantry_core::spec::Step;
    let w = World::new().await;
    let f = w.factory();
    let mut s = job(&w.repo, "echo done > work.txt", |_| {});
    s.review = ReviewChoice::Inline(ReviewSpec {
        engine: gantry_core::EngineKind::Script,
        model: None,
        threshold: 0.5,
        instructions: None,
        steps: vec![
            Step::Run {
                command: "echo uid=$(id -u); ls /sys/class/net; echo x >> work.txt || echo read-only-copy"
                    .into(),
            },
            Step::Say {
                text: r#"{"score": 0.9, "verdict": "approve", "findings": []}"#.into(),
            },
        ],
    });
    w.coord.push(claim(1, 10, 1, s));
    let report = w.coord.finish_of(RunId(10)).await;
    assert_eq!(report.outcome, Some(Outcome::Succeeded), "{report:?}");
    let kinds: Vec<String> = w
        .coord
        .events(RunId(10))
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "review.passed"), "{kinds:?}");
    let review = gantry_factory::artifacts_dir(&w.data, JobId(1), RunId(10)).join("review-r0");
    // The script engine's commands print to its standard error.
    let transcript = ["transcript.jsonl", "stderr.log"]
        .map(|f| std::fs::read_to_string(review.join(f)).expect("the review's output"))
        .concat();
    assert!(
        transcript.contains("uid=10000"),
        "in a container: {transcript}"
    );
    assert!(
        !transcript.contains("eth0"),
        "without network: {transcript}"
    );
    assert!(transcript.contains("read-only-copy"), "{transcript}");
    assert!(w.containers().await.is_empty(), "no container is left");
    stop(f).await;
}
