//! The real agent CLIs (issue 12): Claude Code (`@anthropic-ai/claude-code`) and Codex
//! (`@openai/codex`), installed from the npm registry by `./scripts/test`, run as
//! Gantry agents in a bubblewrap sandbox and in a Docker container with `network:
//! model`, against a scripted model API the test runs on the host's loopback
//! ([`gantry_testkit::model_api`]) and the job allows: every request reaches it
//! through the factory's egress proxy, the sandbox having no other way out. The
//! scripted model answers the first turn of the agent's main loop with a tool call
//! that writes a file and the second with a final message; the test checks that the
//! run succeeded, that its branch holds the file, and that the tokens (and Claude
//! Code's cost) came from the real transcript.
//!
//! The CLIs are found through `GANTRY_TEST_AGENT_CLIS` (the `node_modules` directory
//! `./scripts/test` installs them into); the container tests use the image named by
//! `GANTRY_TEST_NODE_IMAGE` (node and the same CLIs, built by
//! `scripts/docker-test-node`). Both fail, never skip, when unset. Each run is bounded
//! by its job's timeout, because a CLI whose model API misbehaves retries for minutes.

use crate::support::*;
use gantry_core::engine::Budget;
use gantry_core::event::SandboxEgressDenied;
use gantry_core::review::{ReviewChoice, ReviewSpec};
use gantry_core::sandbox::{HostPort, Network, SandboxKind, SandboxSpec};
use gantry_core::{EngineKind, JobId, JobSpec, Outcome, RunId};
use gantry_factory::docker::{DEFAULT_SOCKET, Engine};
use gantry_factory::{DockerConfig, FactoryConfig};
use gantry_protocol::FinishReport;
use gantry_testkit::model_api::{Answer, Api, ScriptedModel, Turn, Usage};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the CLIs live inside the node test image.
const IMAGE_CLIS: &str = "/opt/agent-clis/node_modules";

/// Where the scripted model listens: the host's loopback, outside NO_PROXY.
const MODEL_HOST: &str = "127.0.0.2";

/// The bound of one run: well under the tests' hang guard, long enough for a CLI's
/// start on a loaded machine.
const RUN_TIMEOUT_MS: u64 = 45_000;

/// The `node_modules` directory holding both CLIs, or a loud failure.
fn clis_dir() -> PathBuf {
    let dir = std::env::var_os("GANTRY_TEST_AGENT_CLIS").unwrap_or_else(|| {
        panic!(
            "GANTRY_TEST_AGENT_CLIS is not set: the real-CLI tests need Claude Code and Codex \
             from npm; run ./scripts/test, which installs them (scripts/agent-clis) and sets it"
        )
    });
    let dir = PathBuf::from(dir);
    for bin in ["claude", "codex"] {
        let path = dir.join(".bin").join(bin);
        assert!(
            path.exists(),
            "{} is missing: GANTRY_TEST_AGENT_CLIS must name the node_modules directory \
             scripts/agent-clis installs",
            path.display()
        );
    }
    std::fs::canonicalize(&dir).expect("the CLIs' directory")
}

/// The docker image with node and the CLIs, or a loud failure.
fn node_image() -> String {
    std::env::var("GANTRY_TEST_NODE_IMAGE").unwrap_or_else(|_| {
        panic!(
            "GANTRY_TEST_NODE_IMAGE is not set: the real-CLI container tests need the image with \
             node and the CLIs; run ./scripts/test, which builds it (scripts/docker-test-node)"
        )
    })
}

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wall {
    Bwrap,
    Docker,
}

/// One real-CLI run: a source repo, a scripted model and a factory, in one temp dir.
struct RealRun {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    data: PathBuf,
    coord: Arc<TestCoord>,
    model: ScriptedModel,
    /// The model's base URL.
    url: String,
    wall: Wall,
}

impl RealRun {
    /// `script` makes the model's turns from the path of the run's worktree.
    async fn new(wall: Wall, api: Api, script: impl FnOnce(&Path) -> Vec<Turn>) -> RealRun {
        // As `gantry serve` and `gantry factory` do: the factory's files are private.
        gantry_factory::private_files();
        let tmp = tempfile::tempdir().expect("tempdir");
        let repo = tmp.path().join("src-repo");
        make_repo(&repo);
        let data = tmp.path().join("data");
        // The agent reaches the model only through the factory's egress proxy (`network:
        // model`), which connects on the host. The address is on the host's loopback
        // but not 127.0.0.1: inside the sandbox, NO_PROXY names 127.0.0.1 (the run's
        // own loopback there), and a client would go straight to it instead of through
        // the proxy.
        let host = MODEL_HOST;
        let worktree = std::path::absolute(gantry_factory::worktree_dir(&data, JobId(1), 1))
            .expect("absolute");
        let model = ScriptedModel::start(api, &format!("{host}:0"), script(&worktree))
            .await
            .expect("the scripted model listens");
        let url = model.base_url();
        RealRun {
            _tmp: tmp,
            repo,
            data,
            coord: Arc::new(TestCoord::default()),
            model,
            url,
            wall,
        }
    }

    /// The factory's configuration: the CLIs from npm (on the host, or in the image).
    fn config(&self) -> FactoryConfig {
        let mut cfg = test_config(&self.data, 1);
        // The job allows the scripted model, which is on the host's loopback: a job may
        // name a private address only on a factory that says so.
        cfg.egress.private_for_jobs = true;
        let bin = match self.wall {
            Wall::Bwrap => {
                let dir = clis_dir();
                // `.bin/claude` links into the package: the sandbox must see all of it.
                cfg.sandbox_read_only.push(dir.clone());
                dir.join(".bin")
            }
            Wall::Docker => {
                cfg.docker = Some(DockerConfig {
                    image: node_image(),
                    ..DockerConfig::default()
                });
                Path::new(IMAGE_CLIS).join(".bin")
            }
        };
        cfg.engines.claude.binary = bin.join("claude").to_string_lossy().into_owned();
        cfg.engines.codex.binary = bin.join("codex").to_string_lossy().into_owned();
        // Codex takes its model provider from config flags (see DESIGN: driving the
        // CLIs offline).
        cfg.engines.codex.args = vec![
            "-c".to_string(),
            "model_provider=scripted".to_string(),
            "-c".to_string(),
            format!(
                "model_providers.scripted={{name=\"scripted\",base_url=\"{}/v1\",wire_api=\"responses\",env_key=\"OPENAI_API_KEY\"}}",
                self.url
            ),
        ];
        cfg
    }

    /// A job of `engine` with `env`, in this run's wall, bounded by [`RUN_TIMEOUT_MS`].
    fn job(&self, engine: EngineKind, model: &str, env: &[(&str, &str)]) -> JobSpec {
        let mut s = spec(&self.repo, &[]);
        s.engine = engine;
        s.model = Some(model.to_string());
        s.body = "Write the note file the task asks for.\n".to_string();
        s.timeout_ms = Some(RUN_TIMEOUT_MS);
        s.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let kind = match self.wall {
            Wall::Bwrap => SandboxKind::Bwrap,
            Wall::Docker => SandboxKind::Docker,
        };
        let mut sb = SandboxSpec::of(kind);
        sb.network = Some(Network::Model);
        let model = format!("{MODEL_HOST}:{}", self.model.addr().port());
        sb.allow = vec![HostPort::parse(&model).expect("host:port")];
        s.sandbox = Some(sb);
        s.capabilities.push(kind.capability());
        s
    }

    /// A Claude Code job pointed at the scripted model, telemetry and nonessential
    /// traffic off.
    fn claude_job(&self) -> JobSpec {
        let env = [
            ("ANTHROPIC_BASE_URL", self.url.as_str()),
            ("ANTHROPIC_API_KEY", "scripted-model-key"),
            ("DISABLE_TELEMETRY", "1"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ];
        self.job(EngineKind::ClaudeCode, "sonnet", &env)
    }

    /// Runs `spec` as job 1 on a factory of [`RealRun::config`] and returns its report.
    async fn run(&self, spec: JobSpec) -> FinishReport {
        let f = spawn_factory(self.coord.clone(), self.config());
        self.coord.push(claim(1, 1, 1, spec));
        let report = self.coord.finish_of(RunId(1)).await;
        stop_factory(f).await;
        report
    }

    /// Checks that the run succeeded having used the whole script, or fails telling
    /// the run's story.
    fn assert_succeeded(&self, report: &FinishReport) {
        assert_eq!(
            report.outcome,
            Some(Outcome::Succeeded),
            "{report:?}\n{}",
            self.story()
        );
        assert_eq!(self.model.turns_left(), 0, "{}", self.story());
    }

    /// The worktree of the run, where the agent works (the same path in a container).
    fn worktree(&self) -> PathBuf {
        std::path::absolute(gantry_factory::worktree_dir(&self.data, JobId(1), 1))
            .expect("absolute")
    }

    /// The file `path` on the run's attempt branch, in the factory's cache.
    fn on_branch(&self, path: &str) -> String {
        let cache = gantry_factory::workspace::cache_dir(&self.data, &self.repo.to_string_lossy());
        let branch = gantry_factory::attempt_branch(JobId(1), 1);
        git(&cache, &["show", &format!("{branch}:{path}")])
    }

    /// What went wrong, for assertion messages: the model's requests, the agent's
    /// stderr and its transcript's tail.
    /// Checks that what the proxy refused Codex is only what Codex 0.171 asks for
    /// besides its model at start (GitHub and ChatGPT hosts, on 443: the run needs none
    /// of them), never the scripted model.
    fn assert_codex_denials(&self) {
        let known = [
            "github.com:443 (not allowed)",
            "api.github.com:443 (not allowed)",
            "chatgpt.com:443 (not allowed)",
            "ab.chatgpt.com:443 (not allowed)",
        ];
        let denied = self.denied();
        assert!(
            denied.iter().all(|d| known.contains(&d.as_str())),
            "{denied:?}"
        );
    }

    /// Checks that nothing of the run is left: no process of its sandbox, or no
    /// container of this factory.
    async fn assert_nothing_left(&self) {
        match self.wall {
            Wall::Bwrap => {
                let pgid = started_pid(&self.coord.started(RunId(1)).await);
                assert_eq!(live_members(pgid), Vec::<i32>::new(), "{}", self.story());
            }
            Wall::Docker => {
                let engine = Engine::connect(Path::new(DEFAULT_SOCKET))
                    .await
                    .expect("the Docker engine answers");
                let data = std::path::absolute(&self.data).expect("absolute");
                let left = engine.containers_of(&data).await.expect("list containers");
                assert!(left.is_empty(), "{left:?}");
            }
        }
    }

    /// The hosts the egress proxy refused the run, as `host:port (reason)`.
    fn denied(&self) -> Vec<String> {
        self.coord
            .events(RunId(1))
            .iter()
            .filter_map(|e| e.payload::<SandboxEgressDenied>().ok())
            .map(|d| format!("{}:{} ({})", d.host, d.port, d.reason))
            .collect()
    }

    fn story(&self) -> String {
        let arts = gantry_factory::artifacts_dir(&self.data, JobId(1), RunId(1));
        let read = |name: &str| std::fs::read_to_string(arts.join(name)).unwrap_or_default();
        let transcript = read("transcript.jsonl");
        let tail: Vec<&str> = transcript.lines().rev().take(6).collect();
        format!(
            "model requests:\n{}\negress denied: {:?}\nstderr:\n{}\ntranscript tail:\n{}",
            self.model.summary(),
            self.denied(),
            read("stderr.log"),
            tail.join("\n")
        )
    }
}

/// The usages the scripted turns report, different per turn so that a sum missing one
/// shows.
const FIRST: Usage = Usage {
    input: 1200,
    output: 40,
    cache_read: 300,
    cache_write: 50,
};
/// [`FIRST`] for the Responses API, which reports no cache writes.
const FIRST_CODEX: Usage = Usage {
    cache_write: 0,
    ..FIRST
};
const SECOND: Usage = Usage {
    input: 1500,
    output: 12,
    cache_read: 700,
    cache_write: 0,
};

fn insights(r: &FinishReport) -> &gantry_core::engine::Insights {
    r.insights
        .as_ref()
        .expect("the finish report carries insights")
}

/// The requests that were turns of the agent's main loop, in order.
fn main_loop(model: &ScriptedModel) -> Vec<serde_json::Value> {
    model
        .requests()
        .into_iter()
        .filter(|l| matches!(l.answer, Answer::Turn(_)))
        .map(|l| l.body)
        .collect()
}

async fn claude_code_edits_its_worktree(wall: Wall) {
    let note = "written by the real Claude Code";
    let r = RealRun::new(wall, Api::Anthropic, |wt| {
        vec![
            Turn::tool(
                "Write",
                json!({ "file_path": wt.join("CLAUDE_NOTE.md"), "content": format!("{note}\n") }),
                FIRST,
            ),
            Turn::text("I wrote CLAUDE_NOTE.md.", SECOND),
        ]
    })
    .await;
    let report = r.run(r.claude_job()).await;
    r.assert_succeeded(&report);
    assert_eq!(r.on_branch("CLAUDE_NOTE.md"), note);
    assert_eq!(report.files_changed, Some(1), "{report:?}");

    // The CLI ran in the worktree (its system prompt names its working directory), and
    // its Write succeeded: the second turn carries the tool's result, not an error.
    let main = main_loop(&r.model);
    let wt = r.worktree().to_string_lossy().into_owned();
    assert!(
        main[0]["system"].to_string().contains(&wt),
        "{wt} in the system prompt"
    );
    let results: Vec<&serde_json::Value> = main[1]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .flat_map(|m| m["content"].as_array().into_iter().flatten())
        .filter(|c| c["type"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0]["tool_use_id"], "toolu_scripted_0");
    assert_ne!(results[0]["is_error"], true, "{results:?}");

    // Tokens and cost come from the real transcript: Claude Code's result sums every
    // call it made, side requests included (`modelUsage`), and prices them itself.
    let i = insights(&report);
    let served = r.model.served();
    assert_eq!(i.tokens_out, served.output, "{i:?} vs {served:?}");
    assert_eq!(
        i.tokens_in,
        served.input + served.cache_read + served.cache_write,
        "{i:?} vs {served:?}"
    );
    assert_eq!(i.tokens_cached, served.cache_read, "{i:?} vs {served:?}");
    assert!(i.cost_usd.is_some_and(|c| c > 0.0), "{i:?}");
    assert!(!i.cost_estimated, "Claude Code reports its cost: {i:?}");
    assert_eq!((i.tool_calls, i.tool_errors), (1, 0), "{i:?}");
    // With telemetry and nonessential traffic off, Claude Code asks the proxy for
    // nothing but its model. (Its `HEAD /` of the base URL at start ignores the proxy
    // and finds nothing on the sandbox's own loopback; the run does not need it.)
    assert_eq!(r.denied(), Vec::<String>::new());
    assert_eq!(i.success, Some(true));
    assert!(i.session_id.is_some(), "{i:?}");
}

async fn codex_edits_its_worktree(wall: Wall) {
    let note = "written by the real Codex";
    let r = RealRun::new(wall, Api::Responses, |_| {
        vec![
            Turn::tool(
                "exec_command",
                json!({ "cmd": format!("printf '%s\\n' '{note}' > CODEX_NOTE.md") }),
                FIRST_CODEX,
            ),
            Turn::text("I wrote CODEX_NOTE.md.", SECOND),
        ]
    })
    .await;
    let env = [("OPENAI_API_KEY", "scripted-model-key")];
    // No permission_mode: inside Gantry's wall, Codex's own sandbox cannot start, and
    // the factory runs it with `danger-full-access` (agent::walled); with its default
    // `workspace-write` every command would fail.
    let job = r.job(EngineKind::Codex, "gpt-5-codex", &env);
    let report = r.run(job).await;
    r.assert_succeeded(&report);
    // The command ran: the second turn carries its output for the scripted call.
    let main = main_loop(&r.model);
    let outputs: Vec<&serde_json::Value> = main[1]["input"]
        .as_array()
        .expect("input")
        .iter()
        .filter(|item| item["type"] == "function_call_output")
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0]["call_id"], "call_scripted_0");
    let output = outputs[0]["output"].to_string();
    assert!(output.contains("exited with code 0"), "{output}");
    assert_eq!(r.on_branch("CODEX_NOTE.md"), note);
    assert_eq!(report.files_changed, Some(1), "{report:?}");

    // Tokens come from the real transcript (`turn.completed`); Codex reports no cost,
    // so it is estimated from the price table.
    let i = insights(&report);
    let served = r.model.served();
    assert_eq!(i.tokens_out, served.output, "{i:?} vs {served:?}");
    assert_eq!(
        i.tokens_in,
        served.input + served.cache_read,
        "{i:?} vs {served:?}"
    );
    assert_eq!(i.tokens_cached, served.cache_read, "{i:?} vs {served:?}");
    assert!(i.cost_usd.is_some_and(|c| c > 0.0), "{i:?}");
    assert!(i.cost_estimated, "{i:?}");
    assert_eq!(i.tool_calls, 1, "{i:?}");
    assert_eq!(i.success, Some(true));
    assert!(i.session_id.is_some(), "{i:?}");
    r.assert_codex_denials();
}

/// A token budget the real Claude Code passes with its first answer stops the run
/// there: the wall, and every process in it, ends before the work goes on.
async fn claude_code_is_stopped_by_its_token_budget(wall: Wall) {
    let r = RealRun::new(wall, Api::Anthropic, |wt| {
        vec![
            Turn::tool(
                "Write",
                json!({ "file_path": wt.join("OVER_BUDGET.md"), "content": "x\n" }),
                FIRST,
            ),
            Turn::text("Done.", SECOND),
        ]
    })
    .await;
    let mut job = r.claude_job();
    job.budget = Some(Budget {
        tokens: Some(1000),
        ..Budget::default()
    });
    let report = r.run(job).await;
    assert_eq!(
        report.outcome,
        Some(Outcome::BudgetExceeded),
        "{report:?}\n{}",
        r.story()
    );
    let breach = r
        .coord
        .events(RunId(1))
        .into_iter()
        .find(|e| e.kind == "run.budget_exceeded")
        .expect("run.budget_exceeded");
    assert_eq!(breach.data["limit"], "tokens");
    // The first answer alone passes the budget: its input tokens, from the real stream.
    // (Claude Code prints the assistant message with the usage of its `message_start`,
    // whose output count is the stream's first token; the full count comes with the
    // result, which a stopped run never prints.)
    let input = FIRST.input + FIRST.cache_read + FIRST.cache_write;
    assert!(
        breach.data["actual"]
            .as_f64()
            .is_some_and(|a| a > input as f64),
        "{breach:?}"
    );
    r.assert_nothing_left().await;
}

/// The real Codex as the AI reviewer: inside the wall it runs without its own sandbox
/// (which cannot start there), so the command it runs to read the result works.
async fn codex_reviews_a_result(wall: Wall) {
    let verdict = r#"The note is there. {"score": 0.9, "verdict": "approve", "findings": []}"#;
    let r = RealRun::new(wall, Api::Responses, |_| {
        vec![
            Turn::tool("exec_command", json!({ "cmd": "cat work.txt" }), SECOND),
            Turn::text(verdict, FIRST_CODEX),
        ]
    })
    .await;
    let env = [("OPENAI_API_KEY", "scripted-model-key")];
    let mut job = r.job(EngineKind::Command, "gpt-5-codex", &env);
    job.command = ["sh", "-c", "echo reviewed work > work.txt"]
        .map(String::from)
        .to_vec();
    job.review = ReviewChoice::Inline(ReviewSpec {
        engine: EngineKind::Codex,
        model: Some("gpt-5-codex".to_string()),
        threshold: 0.5,
        instructions: Some("Check that work.txt says what the job wrote.".to_string()),
        steps: Vec::new(),
    });
    let report = r.run(job).await;
    r.assert_succeeded(&report);
    let kinds: Vec<String> = r
        .coord
        .events(RunId(1))
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| k.starts_with("review."))
        .collect();
    assert_eq!(kinds, ["review.started", "review.passed"], "{}", r.story());
    let main = main_loop(&r.model);
    let output = main[1]["input"]
        .as_array()
        .expect("input")
        .iter()
        .find(|item| item["type"] == "function_call_output")
        .map(|item| item["output"].to_string())
        .expect("the command's output went back to the model");
    assert!(
        output.contains("exited with code 0") && output.contains("reviewed work"),
        "{output}"
    );
    r.assert_codex_denials();
}

/// One test per CLI and wall.
macro_rules! real_cli_test {
    ($($name:ident: $scenario:ident in $wall:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $scenario($wall).await;
        }
    )*};
}

real_cli_test! {
    real_claude_code_edits_its_worktree_in_bwrap: claude_code_edits_its_worktree in Wall::Bwrap;
    real_codex_edits_its_worktree_in_bwrap: codex_edits_its_worktree in Wall::Bwrap;
    real_claude_code_edits_its_worktree_in_a_container: claude_code_edits_its_worktree in Wall::Docker;
    real_codex_edits_its_worktree_in_a_container: codex_edits_its_worktree in Wall::Docker;
    real_claude_code_is_stopped_by_its_token_budget_in_bwrap:
        claude_code_is_stopped_by_its_token_budget in Wall::Bwrap;
    real_claude_code_is_stopped_by_its_token_budget_in_a_container:
        claude_code_is_stopped_by_its_token_budget in Wall::Docker;
    real_codex_reviews_a_result_in_bwrap: codex_reviews_a_result in Wall::Bwrap;
    real_codex_reviews_a_result_in_a_container: codex_reviews_a_result in Wall::Docker;
}
