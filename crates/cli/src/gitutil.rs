//! The few git commands the demo and the dispatch benchmark need, through the git CLI.

use crate::error::CliError;
use std::path::Path;

/// Runs `git -C dir args...` with a fixed identity (so commits work on a machine with
/// no git config) and returns its stdout; a failure names the command and its stderr.
pub async fn git(dir: &Path, args: &[&str]) -> Result<String, CliError> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Gantry Demo",
            "-c",
            "user.email=demo@gantry.invalid",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .map_err(|e| {
            CliError::local(format!("cannot run git {}", args.join(" ")))
                .cause(e.to_string())
                .hint("install git and make sure it is on PATH")
        })?;
    if !out.status.success() {
        return Err(CliError::local(format!(
            "git -C {} {} failed ({})",
            dir.display(),
            args.join(" "),
            out.status
        ))
        .cause(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes a git repo at `dir` with `files` (path, content) in one commit on `main`.
pub async fn init_repo(dir: &Path, files: &[(&str, &str)]) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        CliError::local(format!("cannot create {}", dir.display())).cause(e.to_string())
    })?;
    git(dir, &["init", "-q", "-b", "main"]).await?;
    for (path, content) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                CliError::local(format!("cannot create {}", parent.display())).cause(e.to_string())
            })?;
        }
        std::fs::write(&p, content).map_err(|e| {
            CliError::local(format!("cannot write {}", p.display())).cause(e.to_string())
        })?;
    }
    git(dir, &["add", "-A"]).await?;
    git(dir, &["commit", "-q", "-m", "Initial commit"]).await?;
    Ok(())
}
