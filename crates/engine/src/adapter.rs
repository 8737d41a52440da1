//! Command lines of the agent CLIs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a job asks of an agent CLI, engine-neutral.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// The CLI to run (a name on PATH or a path).
    pub binary: String,
    /// The file holding the prompt; it becomes the agent's stdin.
    pub prompt_file: PathBuf,
    /// The model, or the CLI's default.
    pub model: Option<String>,
    /// Most turns (Claude only: Codex has no such flag).
    pub max_turns: Option<u32>,
    /// Claude's permission mode, or Codex's sandbox mode; defaults to the safest
    /// non-interactive mode that still lets the agent edit its worktree.
    pub permission_mode: Option<String>,
    /// Tools the agent may use without asking (Claude only).
    pub allowed_tools: Vec<String>,
    /// Bypass every permission check and sandbox.
    pub yolo: bool,
    /// The session (Claude) or thread (Codex) id to resume.
    pub resume: Option<String>,
    /// The job's USD budget, passed as the CLI's own cap where it has one.
    pub budget_usd: Option<f64>,
    /// More arguments, placed before the prompt argument.
    pub extra_args: Vec<String>,
}

/// What the agent's stdin is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stdin {
    /// `/dev/null`.
    Null,
    /// The request's prompt file.
    PromptFile,
}

/// A ready command line: the factory spawns `argv` with `stdin` connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// What stdin reads.
    pub stdin: Stdin,
}

/// Claude Code's permission mode when the job names none and is not yolo: edits in the
/// worktree are accepted without asking, anything else the CLI would ask about is
/// refused (nobody is there to answer in `-p` mode).
pub const CLAUDE_DEFAULT_PERMISSION_MODE: &str = "acceptEdits";

/// Codex's sandbox mode when the job names none and is not yolo: the agent may write in
/// its working directory (the worktree) and nowhere else.
pub const CODEX_DEFAULT_SANDBOX: &str = "workspace-write";

/// The Claude Code command line for `req`:
///
/// `claude -p --output-format stream-json --verbose [--model M] [--max-turns N]
/// [--resume=ID] [--allowedTools A,B] (--permission-mode MODE | --dangerously-skip-permissions)
/// [--max-budget-usd X] [extra_args...]`, with the prompt on stdin.
///
/// The prompt goes through stdin because `-p` reads it from there when no prompt
/// argument is given, and a single argv string is limited to 128 KiB on Linux.
/// `--resume=ID` uses the `=` form so the id can never be taken for another argument.
/// `--allowedTools` takes one comma-joined value (as the official SDKs pass it) and is
/// always followed by another flag, so the CLI's variadic parsing cannot swallow what
/// follows. `stream-json` needs `--verbose`.
pub fn claude_invocation(req: &AgentRequest) -> Invocation {
    let mut argv = vec![
        req.binary.clone(),
        "-p".to_string(),
        "--output-format".to_string(),
        "stream-json".to_string(),
        "--verbose".to_string(),
    ];
    if let Some(model) = &req.model {
        argv.push("--model".to_string());
        argv.push(model.clone());
    }
    if let Some(turns) = req.max_turns {
        argv.push("--max-turns".to_string());
        argv.push(turns.to_string());
    }
    if let Some(session) = &req.resume {
        argv.push(format!("--resume={session}"));
    }
    if !req.allowed_tools.is_empty() {
        argv.push("--allowedTools".to_string());
        argv.push(req.allowed_tools.join(","));
    }
    if req.yolo {
        argv.push("--dangerously-skip-permissions".to_string());
    } else {
        argv.push("--permission-mode".to_string());
        argv.push(
            req.permission_mode
                .clone()
                .unwrap_or_else(|| CLAUDE_DEFAULT_PERMISSION_MODE.to_string()),
        );
    }
    if let Some(usd) = req.budget_usd {
        argv.push("--max-budget-usd".to_string());
        argv.push(usd.to_string());
    }
    argv.extend(req.extra_args.iter().cloned());
    Invocation {
        argv,
        stdin: Stdin::PromptFile,
    }
}

/// The Codex command line for `req`:
///
/// `codex exec --json [--model M] (--sandbox MODE | --dangerously-bypass-approvals-and-sandbox)
/// --skip-git-repo-check [extra_args...] [resume ID] -`, with the prompt on stdin.
///
/// `-` makes Codex read the prompt from stdin, which must reach end of file (the prompt
/// file does): Codex reads stdin for as long as it is open. Resuming is the `resume`
/// subcommand of `exec` (`codex exec [OPTIONS] resume [SESSION_ID] [PROMPT]`); its own
/// options are few (`--last`, `--all`, `-i`) and `--sandbox` is not accepted after it,
/// so every option, extra_args included, goes before `resume`, where `exec` parses them
/// and they apply to the resumed session too. `permission_mode` names the sandbox mode
/// here (`read-only`, `workspace-write`, `danger-full-access`). Codex has no turn limit,
/// no tool allow-list and no cost cap: `max_turns`, `allowed_tools` and `budget_usd`
/// are enforced by Gantry from the stream instead.
pub fn codex_invocation(req: &AgentRequest) -> Invocation {
    let mut argv = vec![req.binary.clone(), "exec".to_string(), "--json".to_string()];
    if let Some(model) = &req.model {
        argv.push("--model".to_string());
        argv.push(model.clone());
    }
    if req.yolo {
        argv.push("--dangerously-bypass-approvals-and-sandbox".to_string());
    } else {
        argv.push("--sandbox".to_string());
        argv.push(
            req.permission_mode
                .clone()
                .unwrap_or_else(|| CODEX_DEFAULT_SANDBOX.to_string()),
        );
    }
    argv.push("--skip-git-repo-check".to_string());
    argv.extend(req.extra_args.iter().cloned());
    if let Some(thread) = &req.resume {
        argv.push("resume".to_string());
        argv.push(thread.clone());
    }
    argv.push("-".to_string());
    Invocation {
        argv,
        stdin: Stdin::PromptFile,
    }
}
