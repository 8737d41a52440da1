//! One gate run for real (issue 11): in the run's sandbox and worktree, judged by its
//! exit and its metric, killed with its whole process group on a timeout or a stop.

use crate::support::gate;
use gantry_core::gate::{Gate, Metric, MetricFormat};
use gantry_core::{JobId, RunId};
use gantry_factory::gate::{GateCommand, output_tail, run_gate};
use gantry_factory::sandbox::RunLimits;
use gantry_factory::sandbox::limits::{Limiter, Limits};
use gantry_factory::{Confinement, Sandbox};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A worktree, an artifacts dir and a data dir (which the sandbox hides) in one temp dir.
struct Place {
    _tmp: tempfile::TempDir,
    worktree: PathBuf,
    out: PathBuf,
    data: PathBuf,
    /// The run the gate's processes are named for, unique per test so that one test's
    /// gate is never taken for another's leftover.
    run: i64,
}

impl Place {
    fn new() -> Place {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let worktree = data.join("work/7-a1");
        let out = data.join("artifacts/7");
        for d in [&worktree, &out] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        static NEXT_RUN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(70);
        Place {
            _tmp: tmp,
            worktree,
            out,
            data,
            run: NEXT_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The run's environment: it names the run, as every process of a run's does.
    fn env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("GANTRY_JOB_ID".into(), "7".into()),
            ("GANTRY_RUN_ID".into(), self.run.to_string().into()),
        ]
    }

    fn cmd<'a>(&'a self, gate: &'a Gate) -> GateCommand<'a> {
        GateCommand {
            gate,
            worktree: &self.worktree,
            out_dir: &self.out,
            env: self.env(),
            confinement: Some(Confinement {
                sandbox: Sandbox::default(),
                data_dir: self.data.clone(),
                hidden: Vec::new(),
                readable: Vec::new(),
                read_only: Vec::new(),
                read_write: Vec::new(),
                worktree_read_only: false,
                network: Default::default(),
                egress: None,
                limits: None,
            }),
            container: None,
            tree: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".to_string(),
            redactor: None,
        }
    }
}

impl Place {
    /// The run's processes left on the machine (gates carry the run's environment).
    fn leftovers(&self) -> Vec<i32> {
        gantry_factory::process::processes_of_run(JobId(7), RunId(self.run))
    }
}

#[tokio::test]
async fn a_gate_passes_on_exit_zero_and_keeps_its_output() {
    let p = Place::new();
    let g = gate("fmt", "echo formatted; echo warned >&2");
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(r.passed, "{r:?}");
    assert_eq!((r.exit_code, r.reason.as_deref()), (Some(0), None));
    assert_eq!(r.tree, "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    let out = std::fs::read_to_string(&r.output).expect("output file");
    assert_eq!(out, "formatted\nwarned\n", "stderr joins stdout in order");
    assert!(Path::new(&r.output).starts_with(&p.out));
}

#[tokio::test]
async fn a_failing_gate_says_its_exit_and_its_output_tail_is_quotable() {
    let p = Place::new();
    let g = gate(
        "test",
        "seq 1 5000; echo 'test it::works FAILED' >&2; exit 3",
    );
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(!r.passed, "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.reason.as_deref(), Some("exited 3"));
    let tail = output_tail(Path::new(&r.output));
    assert!(tail.ends_with("test it::works FAILED\n"), "{tail}");
    assert!(
        tail.len() <= gantry_factory::gate::OUTPUT_TAIL,
        "{}",
        tail.len()
    );
    assert!(
        tail.starts_with(char::is_numeric),
        "cut at a line start: {tail:.40}"
    );
}

#[tokio::test]
async fn a_gate_past_its_timeout_is_killed_with_everything_it_started() {
    let p = Place::new();
    let mut g = gate(
        "slow",
        "sleep 1000 & setsid sleep 1000 & echo started; sleep 1000",
    );
    g.timeout_ms = 300;
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(!r.passed);
    assert_eq!(r.exit_code, None);
    assert_eq!(r.reason.as_deref(), Some("timed out after 300ms"), "{r:?}");
    assert!(
        std::fs::read_to_string(&r.output)
            .expect("out")
            .contains("started")
    );
    assert_eq!(
        p.leftovers(),
        Vec::<i32>::new(),
        "the gate's processes are gone"
    );
}

#[tokio::test]
async fn a_stopped_run_stops_its_gate() {
    let p = Place::new();
    let g = gate("hang", "echo started; exec sleep 1000");
    let output = p.out.join("gate-hang.out");
    let watch = output.clone();
    let stop = async move {
        gantry_testkit::wait_for_async("the gate to start", Duration::from_secs(30), || {
            std::fs::read_to_string(&watch)
                .ok()
                .filter(|s| s.contains("started"))
        })
        .await;
    };
    let r = run_gate(p.cmd(&g), stop).await;
    assert_eq!(r.reason.as_deref(), Some("stopped with its run"), "{r:?}");
    assert!(!r.passed);
    assert_eq!(p.leftovers(), Vec::<i32>::new());
}

#[tokio::test]
async fn a_coverage_gate_is_judged_by_its_figure() {
    let p = Place::new();
    let lcov = Metric {
        file: Some("cov/lcov.info".into()),
        format: MetricFormat::Lcov,
        min: 85.0,
    };
    let mut g = gate(
        "coverage",
        "mkdir -p cov; printf 'LF:10\\nLH:9\\n' > cov/lcov.info",
    );
    g.metric = Some(lcov.clone());
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(r.passed, "{r:?}");
    assert_eq!(r.figure, Some(90.0));

    g.run = "mkdir -p cov; printf 'LF:10\\nLH:8\\n' > cov/lcov.info".into();
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(!r.passed);
    assert_eq!(r.figure, Some(80.0));
    assert_eq!(
        r.reason.as_deref(),
        Some("80.00 is under the minimum 85"),
        "{r:?}"
    );

    // A figure from the gate's own output.
    let mut g = gate("score", "echo 'coverage: 40%'; echo 'coverage: 91.5%'");
    g.metric = Some(Metric {
        file: None,
        format: MetricFormat::Regex {
            pattern: r"coverage: ([0-9.]+)%".into(),
        },
        min: 90.0,
    });
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(r.passed, "{r:?}");
    assert_eq!(r.figure, Some(91.5));
}

#[tokio::test]
async fn a_metric_file_that_links_out_of_the_worktree_is_not_read() {
    let p = Place::new();
    // A file of the factory's that a job must not learn anything from.
    let secret = p.data.join("admin.token");
    std::fs::write(&secret, "LF:10\nLH:10\n").expect("plant");
    std::os::unix::fs::symlink(&secret, p.worktree.join("lcov.info")).expect("link");
    let mut g = gate("coverage", "true");
    g.metric = Some(Metric {
        file: Some("lcov.info".into()),
        format: MetricFormat::Lcov,
        min: 0.0,
    });
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    assert!(!r.passed, "{r:?}");
    assert_eq!(r.figure, None);
    assert_eq!(
        r.reason.as_deref(),
        Some("metric: lcov.info leads outside the worktree")
    );
}

#[tokio::test]
async fn a_gate_runs_in_the_sandbox_and_cannot_see_the_data_dir() {
    let p = Place::new();
    std::fs::write(p.data.join("admin.token"), "gtk_secret").expect("plant");
    let script = format!(
        "cat '{}/admin.token'; echo wrote > mine.txt; pwd",
        p.data.display()
    );
    let g = gate("peek", &script);
    let r = run_gate(p.cmd(&g), std::future::pending()).await;
    let out = std::fs::read_to_string(&r.output).expect("out");
    assert!(!out.contains("gtk_secret"), "{out}");
    assert!(out.contains("No such file or directory"), "hidden: {out}");
    assert_eq!(
        std::fs::read_to_string(p.worktree.join("mine.txt")).expect("the worktree is writable"),
        "wrote\n"
    );
    assert!(
        out.ends_with(&format!("{}\n", p.worktree.display())),
        "{out}"
    );
}

/// A gate under `limits`, enforced by `limiter`.
async fn limited_gate(
    script: &str,
    limits: Limits,
    limiter: Limiter,
) -> (Place, gantry_core::gate::GateResult) {
    let p = Place::new();
    let g = gate("hog", script);
    let mut cmd = p.cmd(&g);
    if let Some(c) = cmd.confinement.as_mut() {
        c.limits = Some(RunLimits { limits, limiter });
    }
    let r = run_gate(cmd, std::future::pending()).await;
    (p, r)
}

#[tokio::test]
async fn a_gate_runs_under_the_runs_limits_and_says_which_one_stopped_it() {
    // This machine's mechanism (a cgroup where the factory can make one).
    let memory = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let (p, r) = limited_gate(HOG, memory, Limiter::detect()).await;
    assert!(!r.passed, "{r:?}");
    if matches!(Limiter::detect(), Limiter::Cgroup(_)) {
        let reason = r.reason.unwrap_or_default();
        assert!(reason.starts_with("oom: the gate"), "{reason}");
    }
    assert!(p.leftovers().is_empty());
}

#[tokio::test]
async fn rlimits_bound_a_gates_memory_per_process_and_its_cpu_time() {
    let prlimit = Limiter::Rlimit {
        prlimit: "/usr/bin/prlimit".into(),
    };
    // The allocation fails (no kill: the shell gives up), so no limit is named.
    let memory = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let (_p, r) = limited_gate(&format!("{HOG}; echo survived"), memory, prlimit.clone()).await;
    assert!(!r.passed, "{r:?}");
    let out = std::fs::read_to_string(&r.output).expect("output");
    assert!(!out.contains("survived"), "{out}");
    // A busy loop past its CPU seconds gets SIGXCPU, which names the limit.
    let cpu = Limits {
        nano_cpus: Some(100_000_000),
        cpu_seconds: Some(1),
        ..Limits::default()
    };
    let (_p, r) = limited_gate("while :; do :; done", cpu, prlimit).await;
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("cpu: the gate"), "{r:?}");
}

/// Doubling a shell string grows the shell's memory without bound.
const HOG: &str = "x=0123456789abcdef; while true; do x=\"$x$x\"; done";
