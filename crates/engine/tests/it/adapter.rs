//! Command lines of the Claude Code and Codex adapters.

use std::path::PathBuf;

use gantry_engine::{AgentRequest, Stdin, claude_invocation, codex_invocation};

fn request(binary: &str) -> AgentRequest {
    AgentRequest {
        binary: binary.to_string(),
        prompt_file: PathBuf::from("/tmp/run/prompt.md"),
        ..AgentRequest::default()
    }
}

#[test]
fn claude_defaults_to_accept_edits_with_the_prompt_on_stdin() {
    let inv = claude_invocation(&request("claude"));
    assert_eq!(
        inv.argv,
        [
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "acceptEdits"
        ]
    );
    assert_eq!(inv.stdin, Stdin::PromptFile);
}

#[test]
fn issue3_claude_with_every_option() {
    let req = AgentRequest {
        model: Some("claude-sonnet-4-5".to_string()),
        max_turns: Some(12),
        permission_mode: Some("plan".to_string()),
        allowed_tools: vec!["Read".to_string(), "Bash(git diff:*)".to_string()],
        resume: Some("1d1e46f9-35c7".to_string()),
        budget_usd: Some(2.5),
        extra_args: vec!["--add-dir".to_string(), "../lib".to_string()],
        ..request("/opt/claude")
    };
    let inv = claude_invocation(&req);
    assert_eq!(
        inv.argv,
        [
            "/opt/claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "claude-sonnet-4-5",
            "--max-turns",
            "12",
            "--resume=1d1e46f9-35c7",
            "--allowedTools",
            "Read,Bash(git diff:*)",
            "--permission-mode",
            "plan",
            "--max-budget-usd",
            "2.5",
            "--add-dir",
            "../lib"
        ]
    );
    assert_eq!(inv.stdin, Stdin::PromptFile);
}

#[test]
fn claude_yolo_skips_permissions() {
    let req = AgentRequest {
        yolo: true,
        permission_mode: Some("plan".to_string()),
        ..request("claude")
    };
    let argv = claude_invocation(&req).argv;
    assert!(argv.contains(&"--dangerously-skip-permissions".to_string()));
    assert!(!argv.contains(&"--permission-mode".to_string()));
}

#[test]
fn codex_defaults_to_the_workspace_write_sandbox_and_reads_stdin() {
    let inv = codex_invocation(&request("codex"));
    assert_eq!(
        inv.argv,
        [
            "codex",
            "exec",
            "--json",
            "--sandbox",
            "workspace-write",
            "--skip-git-repo-check",
            "-"
        ]
    );
    assert_eq!(inv.stdin, Stdin::PromptFile);
}

#[test]
fn issue3_codex_resume_yolo_model_and_extra_args() {
    let req = AgentRequest {
        model: Some("gpt-5-codex".to_string()),
        yolo: true,
        resume: Some("019c8143-abe2".to_string()),
        max_turns: Some(3),
        budget_usd: Some(1.0),
        allowed_tools: vec!["ignored".to_string()],
        extra_args: vec![
            "-c".to_string(),
            "model_reasoning_effort=\"low\"".to_string(),
        ],
        ..request("codex")
    };
    let inv = codex_invocation(&req);
    assert_eq!(
        inv.argv,
        [
            "codex",
            "exec",
            "--json",
            "--model",
            "gpt-5-codex",
            "--dangerously-bypass-approvals-and-sandbox",
            "--skip-git-repo-check",
            "-c",
            "model_reasoning_effort=\"low\"",
            "resume",
            "019c8143-abe2",
            "-"
        ]
    );
}

#[test]
fn codex_permission_mode_names_the_sandbox() {
    let req = AgentRequest {
        permission_mode: Some("read-only".to_string()),
        ..request("codex")
    };
    let argv = codex_invocation(&req).argv;
    let at = argv
        .iter()
        .position(|a| a == "--sandbox")
        .expect("sandbox flag");
    assert_eq!(argv[at + 1], "read-only");
}
