//! A factory that restarts while its Docker engine does not answer (issue 12): its
//! recorded container runs are never reported failed for it. Their leases are kept
//! until the engine answers, then the runs are adopted and end as their agents end;
//! an engine that stays away past the factory's `engine_wait` has the runs let go
//! (processes killed, nothing reported) for the server to hand out again.
//!
//! The factory's socket path is a symbolic link the test points at a dead socket (a
//! unix socket nobody listens on), then back at the real engine.

use crate::docker::{World, docker_config, image, job};
use crate::support::*;
use gantry_core::{JobId, Outcome, RunId, StopKind};
use gantry_factory::docker::{DEFAULT_SOCKET, Engine};
use gantry_factory::{DockerConfig, Factory, FactoryConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Points the link `link` at `target`, replacing what it pointed at.
fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("swap the link");
}

/// A unix socket file that nobody listens on: connecting to it is refused.
fn dead_socket(dir: &Path) -> PathBuf {
    let path = dir.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    path
}

/// The factory configuration of these tests: the docker sandbox on through `link`,
/// runs left running when a factory stops, so the next one has them to adopt.
fn config(w: &World, link: &Path, engine_wait: Duration) -> FactoryConfig {
    let mut cfg = FactoryConfig {
        leave_runs_on_shutdown: true,
        ..docker_config(&w.data)
    };
    cfg.docker = Some(DockerConfig {
        socket: link.to_path_buf(),
        image: image(),
        default: false,
        engine_wait,
    });
    cfg
}

/// Starts job `job` (run `run`) in a container under a first factory that stops and
/// leaves it running, its script waiting for a file `go` in the worktree; returns the
/// container's id.
async fn leave_a_running_container(
    w: &World,
    cfg: &FactoryConfig,
    job_id: i64,
    run: i64,
) -> String {
    let first = spawn_factory(w.coord.clone(), cfg.clone());
    let script =
        "echo before; while [ ! -e go ]; do sleep 0.05; done; echo after > after.txt; echo after";
    w.coord
        .push(claim(job_id, run, 1, job(&w.repo, script, |_| {})));
    let started = w.coord.started(RunId(run)).await;
    let container = started.data["container"]
        .as_str()
        .expect("container")
        .to_string();
    stop_factory(first).await;
    container
}

/// A world whose factory socket is the link `link` (pointing at the real engine), with
/// run `run` of job `job` left running in a container by a first factory; the
/// configuration (waiting an hour for an engine) and the container's id.
struct Left {
    w: World,
    link: PathBuf,
    cfg: FactoryConfig,
    container: String,
}

async fn left_running(job_id: i64, run: i64) -> Left {
    let w = World::new().await;
    let link = w.tmp.path().join("docker.sock");
    point(&link, Path::new(DEFAULT_SOCKET));
    let cfg = config(&w, &link, Duration::from_secs(3600));
    let container = leave_a_running_container(&w, &cfg, job_id, run).await;
    Left {
        w,
        link,
        cfg,
        container,
    }
}

/// Whether `id` runs, as the real engine tells.
async fn running(engine: &Engine, id: &str) -> bool {
    matches!(
        engine.state(id).await,
        Ok(gantry_factory::docker::ContainerState::Running { .. })
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_restarted_without_its_engine_keeps_the_lease_and_adopts_when_it_answers() {
    let run = RunId(12010);
    let Left {
        w,
        link,
        cfg,
        container,
    } = left_running(1201, run.0).await;

    point(&link, &dead_socket(w.tmp.path()));
    let mut second = Factory::new(cfg, w.coord.clone());
    let report = second.adopt().await.expect("adopt");
    assert_eq!(
        report.awaiting_engine,
        vec![(JobId(1201), run)],
        "{report:?}"
    );
    assert!(
        report.adopted.is_empty() && report.dropped.is_empty(),
        "{report:?}"
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(second.run(rx));
    // While the engine is away the lease is renewed (twice more than the adoption's
    // own renewal), nothing is reported and the container runs on.
    let renewed = w.coord.renew_count(run);
    wait_for(|| (w.coord.renew_count(run) >= renewed + 2).then_some(())).await;
    assert!(
        w.coord.finishes(run).is_empty(),
        "not finished while the engine is away"
    );
    assert!(
        running(&w.engine, &container).await,
        "the container runs on"
    );

    // The engine answers again: the run is adopted and ends as its agent ends.
    point(&link, Path::new(DEFAULT_SOCKET));
    std::fs::write(w.worktree(1201).join("go"), "").expect("go");
    let finish = w.coord.finish_of(run).await;
    assert_eq!(finish.outcome, Some(Outcome::Succeeded), "{finish:?}");
    let out = w.coord.output(run, "stdout");
    assert!(out.contains("before") && out.contains("after"), "{out}");
    assert_eq!(w.coord.finishes(run).len(), 1, "finished once");
    assert!(w.containers().await.is_empty(), "no container is left");
    stop_factory((tx, task)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_whose_engine_stays_away_lets_the_run_go_without_reporting_it() {
    let (job_id, run) = (JobId(1202), RunId(12020));
    let Left {
        w,
        link,
        cfg: _,
        container,
    } = left_running(job_id.0, run.0).await;
    assert!(
        !gantry_factory::process::processes_of_run(job_id, run).is_empty(),
        "the container's processes are visible from the host"
    );

    point(&link, &dead_socket(w.tmp.path()));
    let cfg_away = config(&w, &link, Duration::from_millis(1));
    let second = spawn_factory(w.coord.clone(), cfg_away.clone());
    // Let go: the run's record is removed and its processes are killed from the host,
    // so no agent works on for a lease the server will hand out again.
    let record = gantry_factory::record::RunRecord::path(&w.data, run);
    wait_for(|| (!record.exists()).then_some(())).await;
    assert!(
        gantry_factory::process::processes_of_run(job_id, run).is_empty(),
        "no process of the run is left"
    );
    assert!(
        w.coord.finishes(run).is_empty(),
        "never reported: {:?}",
        w.coord.finishes(run)
    );
    stop_factory(second).await;

    // With the engine back, a factory sweeps the stopped container nobody names.
    point(&link, Path::new(DEFAULT_SOCKET));
    let before = w.coord.registrations().len();
    let third = spawn_factory(
        w.coord.clone(),
        config(&w, &link, Duration::from_secs(3600)),
    );
    // A factory sweeps before it registers.
    wait_for(|| (w.coord.registrations().len() > before).then_some(())).await;
    assert!(
        !w.containers().await.contains(&container),
        "the leftover container was swept"
    );
    assert!(w.coord.finishes(run).is_empty(), "still never reported");
    stop_factory(third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_engine_is_away_ends_the_processes_at_once_and_the_run_as_killed() {
    let (job_id, run) = (JobId(1203), RunId(12030));
    let Left {
        w,
        link,
        cfg,
        container: _,
    } = left_running(job_id.0, run.0).await;

    point(&link, &dead_socket(w.tmp.path()));
    let mut second = Factory::new(cfg, w.coord.clone());
    let report = second.adopt().await.expect("adopt");
    assert_eq!(report.awaiting_engine, vec![(job_id, run)], "{report:?}");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(second.run(rx));
    w.coord.set_renew(run, RenewMode::Stop(StopKind::Kill));
    // The kill reaches the processes from the host while the engine is away.
    wait_for(|| {
        gantry_factory::process::processes_of_run(job_id, run)
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(
        w.coord.finishes(run).is_empty(),
        "reported once the engine answers"
    );
    point(&link, Path::new(DEFAULT_SOCKET));
    let finish = w.coord.finish_of(run).await;
    assert_eq!(finish.outcome, Some(Outcome::Killed), "{finish:?}");
    assert!(w.containers().await.is_empty(), "no container is left");
    stop_factory((tx, task)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_restarted_without_the_docker_sandbox_lets_its_container_runs_go() {
    let (job_id, run) = (JobId(1204), RunId(12040));
    let Left {
        w,
        link: _,
        cfg,
        container: _,
    } = left_running(job_id.0, run.0).await;

    let without = FactoryConfig {
        docker: None,
        ..cfg.clone()
    };
    let mut second = Factory::new(without, w.coord.clone());
    let report = second.adopt().await.expect("adopt");
    assert_eq!(report.dropped, vec![(job_id, run)], "{report:?}");
    assert!(
        gantry_factory::process::processes_of_run(job_id, run).is_empty(),
        "its processes were killed from the host"
    );
    assert!(w.coord.finishes(run).is_empty(), "never reported failed");
    // A factory with the engine sweeps the stopped container nobody names.
    let before = w.coord.registrations().len();
    let third = spawn_factory(w.coord.clone(), cfg);
    wait_for(|| (w.coord.registrations().len() > before).then_some(())).await;
    assert!(w.containers().await.is_empty(), "the container was swept");
    stop_factory(third).await;
}
