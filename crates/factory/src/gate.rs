//! Running one gate: a job's check, started like the agent (detached, in the run's
//! sandbox, with the run's environment) in the run's worktree once the agent stopped.
//!
//! A gate is judged by its exit status and, when it declares a metric, by a figure read
//! from its output or from a file in the worktree. Its output goes to a file in the
//! run's artifacts directory, so a fix round can quote its tail and a person can read
//! all of it. A gate that outlives its timeout, or whose run is stopped, is killed with
//! its whole process group.

use crate::docker::{ContainerRun, ContainerState, Engine};
use crate::process::{self, DetachedCommand};
use crate::sandbox::Confinement;
use gantry_core::gate::{Gate, GateResult, Metric};
use gantry_secrets::Redactor;
use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest metric file read; a bigger one is refused rather than read whole.
pub const MAX_METRIC_FILE: u64 = 64 * 1024 * 1024;
/// How much of a gate's output a fix round or a failure reason quotes.
pub const OUTPUT_TAIL: usize = 4096;

/// One gate to run for a run.
#[derive(Debug, Clone)]
pub struct GateCommand<'a> {
    /// The gate.
    pub gate: &'a Gate,
    /// The run's worktree: the gate's working directory and only writable path.
    pub worktree: &'a Path,
    /// Where its output and exit status files go (the run's artifacts directory).
    pub out_dir: &'a Path,
    /// The run's whole environment (it names the run, so a restarted factory finds
    /// and kills a gate's processes like the agent's).
    pub env: Vec<(OsString, OsString)>,
    /// The run's sandbox; `None` only where the factory runs jobs unsandboxed.
    pub confinement: Option<Confinement>,
    /// For a run in the docker sandbox: the engine and the run's container settings
    /// (image, network, limits); the gate then runs in a container of its own
    /// instead of under `confinement`.
    pub container: Option<(Arc<Engine>, ContainerRun)>,
    /// The tree of the worktree the gate runs on, recorded with its result.
    pub tree: String,
    /// What the gate's output files are rewritten through once it is judged, so they
    /// (and the tail a fix round's prompt quotes) keep no secret.
    pub redactor: Option<Arc<Redactor>>,
}

/// Runs `cmd` to its end, its timeout, or `stop` (whichever comes first) and judges it.
/// The process group is gone when this returns, and its output files are redacted.
pub async fn run_gate(cmd: GateCommand<'_>, stop: impl Future<Output = ()>) -> GateResult {
    let stem = cmd.out_dir.join(format!("gate-{}", cmd.gate.name));
    let redactor = cmd.redactor.clone();
    let result = run_and_judge(cmd, stop, &stem).await;
    if let Some(r) = redactor {
        let files = vec![stem.with_extension("out"), stem.with_extension("err")];
        crate::redact::files(r, files).await;
    }
    result
}

/// [`run_gate`] before the redaction; `stem` names its files.
async fn run_and_judge(
    cmd: GateCommand<'_>,
    stop: impl Future<Output = ()>,
    stem: &Path,
) -> GateResult {
    let gate = cmd.gate;
    let output = stem.with_extension("out");
    let started = Instant::now();
    let mut result = GateResult {
        name: gate.name.clone(),
        passed: false,
        exit_code: None,
        figure: None,
        duration_ms: 0,
        tree: cmd.tree.clone(),
        reason: None,
        output: output.to_string_lossy().into_owned(),
        output_tail: String::new(),
    };
    // Standard error joins standard output in the shell, so the file reads in the
    // order things were printed.
    let argv: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        format!("exec 2>&1\n{}", gate.run).into(),
    ];
    if let Some((engine, mut run)) = cmd.container.clone() {
        // The template's environment is the run's, made for a container already.
        run.argv = argv;
        run.stdin = None;
        run.stdout = output.clone();
        run.stderr = stem.with_extension("err");
        let ended = in_container(&engine, &run, gate, stop, &mut result).await;
        result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if ended {
            judge(&mut result, gate, cmd.worktree).await;
        }
        if !result.passed {
            result.output_tail = output_tail(&output);
        }
        return result;
    }
    let detached = DetachedCommand {
        argv,
        cwd: cmd.worktree.to_path_buf(),
        env: cmd.env.clone(),
        stdin: None,
        stdout: output.clone(),
        stderr: stem.with_extension("err"),
        exit_status: stem.with_extension("exit"),
        confinement: cmd.confinement.clone(),
    };
    let mut child = match process::spawn_detached(&detached).await {
        Ok(c) => c,
        Err(e) => {
            result.reason = Some(format!("the gate could not start: {e}"));
            return result;
        }
    };
    let timeout = Duration::from_millis(gate.timeout_ms);
    let ended = tokio::select! {
        waited = tokio::time::timeout(timeout, child.child.wait()) => match waited {
            Ok(_) => None,
            Err(_) => Some(format!("timed out after {}", humantime::format_duration(timeout))),
        },
        () = stop => Some("stopped with its run".to_string()),
    };
    // Whatever it left running (or all of it, on a timeout or stop) goes with it.
    process::kill_group_and_wait(child.pid).await;
    let breach =
        crate::sandbox::limits::settle(cmd.confinement.as_ref(), &detached.exit_status).await;
    result.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Some(reason) = ended {
        result.reason = Some(reason);
        result.output_tail = output_tail(&output);
        return result;
    }
    result.exit_code = match process::read_exit_status(&detached.exit_status) {
        Some(Ok(exit)) => exit.code(),
        Some(Err(e)) => {
            result.reason = Some(format!("unreadable exit status: {e}"));
            return result;
        }
        None => None,
    };
    judge(&mut result, gate, cmd.worktree).await;
    if let Some(b) = breach.filter(|_| !result.passed) {
        result.reason = Some(b.reason("gate"));
    }
    if !result.passed {
        result.output_tail = output_tail(&output);
    }
    result
}

/// Runs the gate in its own container to its end, its timeout or `stop`; the
/// container is gone and the worktree the factory's again when this returns. Says
/// whether the gate ended by itself (its exit code then in `result`), else why not in
/// `result.reason`.
async fn in_container(
    engine: &Engine,
    run: &ContainerRun,
    gate: &Gate,
    stop: impl Future<Output = ()>,
    result: &mut GateResult,
) -> bool {
    let id = match engine.start(run).await {
        Ok(id) => id,
        Err(e) => {
            result.reason = Some(format!("the gate could not start: {e}"));
            let _ = crate::docker::reclaim(&[&run.worktree, &run.artifacts]).await;
            return false;
        }
    };
    let timeout = Duration::from_millis(gate.timeout_ms);
    let ended = tokio::select! {
        waited = tokio::time::timeout(timeout, engine.wait(&id)) => match waited {
            Ok(()) => None,
            Err(_) => Some(format!("timed out after {}", humantime::format_duration(timeout))),
        },
        () = stop => Some("stopped with its run".to_string()),
    };
    let state = engine.state(&id).await;
    engine.remove(&id).await;
    if let Err(e) = crate::docker::reclaim(&[&run.worktree, &run.artifacts]).await {
        tracing::warn!(error = %e, "cannot give the worktree back to the factory's user");
    }
    if let Some(reason) = ended {
        result.reason = Some(reason);
        return false;
    }
    match state {
        Ok(ContainerState::Exited { code, oom }) => {
            result.exit_code = process::Exit::from_shell(i32::try_from(code).unwrap_or(-1)).code();
            if oom {
                result.reason = Some("oom: the gate passed its memory limit".to_string());
                result.exit_code = None;
                return false;
            }
            true
        }
        Ok(other) => {
            result.reason = Some(format!("the gate's container ended in state {other:?}"));
            false
        }
        Err(e) => {
            result.reason = Some(format!("cannot read the gate's exit status: {e}"));
            false
        }
    }
}

/// Sets `passed` and `reason` from the exit code and the metric.
async fn judge(result: &mut GateResult, gate: &Gate, worktree: &Path) {
    if result.exit_code != Some(0) {
        result.reason = Some(match result.exit_code {
            Some(code) => format!("exited {code}"),
            None => "killed by a signal".to_string(),
        });
    }
    let Some(metric) = &gate.metric else {
        result.passed = result.exit_code == Some(0);
        return;
    };
    match read_figure(metric, worktree, Path::new(&result.output)).await {
        Ok(figure) => {
            result.figure = Some(figure);
            if result.exit_code == Some(0) && !metric.passes(figure) {
                result.reason = Some(format!("{figure:.2} is under the minimum {}", metric.min));
            }
            result.passed = result.exit_code == Some(0) && metric.passes(figure);
        }
        Err(e) => {
            result.reason.get_or_insert(format!("metric: {e}"));
        }
    }
}

/// Reads the metric's text (its file in the worktree, or the gate's output) and the
/// figure in it. The file must stay inside the worktree once links are followed: the
/// factory reads it with its own rights, so a link to a file of the factory's must not
/// be read.
async fn read_figure(metric: &Metric, worktree: &Path, output: &Path) -> Result<f64, String> {
    let path = match &metric.file {
        None => output.to_path_buf(),
        Some(rel) => {
            let root = tokio::fs::canonicalize(worktree)
                .await
                .map_err(|e| format!("cannot resolve the worktree {}: {e}", worktree.display()))?;
            let path = tokio::fs::canonicalize(worktree.join(rel))
                .await
                .map_err(|e| format!("cannot read {rel}: {e}"))?;
            if !path.starts_with(&root) {
                return Err(format!("{rel} leads outside the worktree"));
            }
            path
        }
    };
    let meta = tokio::fs::metadata(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_METRIC_FILE {
        return Err(format!(
            "{} is not a file of at most {MAX_METRIC_FILE} bytes",
            path.display()
        ));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    metric
        .figure(&String::from_utf8_lossy(&bytes))
        .map_err(|e| e.to_string())
}

/// The last [`OUTPUT_TAIL`] bytes of a gate's output, cut at a line start when one is
/// near, for a fix round's prompt or a failure reason.
pub fn output_tail(output: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(output) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(OUTPUT_TAIL as u64);
    let mut buf = Vec::with_capacity(OUTPUT_TAIL);
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    match (from > 0, text.find('\n')) {
        (true, Some(i)) if i + 1 < text.len() => text[i + 1..].to_string(),
        _ => text,
    }
}
