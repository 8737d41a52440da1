//! The few git commands the demo and the dispatch benchmark need, through Gantry's git
//! runner (`gantry_git::run`).

use crate::error::CliError;
use std::path::Path;

/// Runs `git -C dir args...` with a fixed identity (so commits work on a machine with
/// no git config) and returns its stdout; a failure names the command and its stderr.
pub async fn git(dir: &Path, args: &[&str]) -> Result<String, CliError> {
    let identity = [
        "-c",
        "user.name=Gantry Demo",
        "-c",
        "user.email=demo@gantry.invalid",
    ];
    let all: Vec<&str> = identity.iter().chain(args).copied().collect();
    gantry_git::run(dir, &all).await.map_err(|e| {
        CliError::local(format!(
            "git -C {} {} failed",
            dir.display(),
            args.join(" ")
        ))
        .cause(e.to_string())
        .hint("install git and make sure it is on PATH")
    })
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
