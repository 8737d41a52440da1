//! The crate's error type.

use std::path::{Path, PathBuf};

/// Why a workspace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A git command exited with an error.
    #[error("`git {args}` failed in {dir} (exit {code}): {stderr}", code = code.map_or("by signal".to_string(), |c| c.to_string()))]
    Git {
        /// The arguments, joined by spaces.
        args: String,
        /// Where it ran.
        dir: PathBuf,
        /// Its exit code (`None` when killed by a signal).
        code: Option<i32>,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// git could not be started at all.
    #[error("cannot run `git {args}` in {dir}: {source}")]
    Spawn {
        /// The arguments, joined by spaces.
        args: String,
        /// Where it should have run.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot create directory".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source repository cannot be used.
    #[error("cannot use repo {repo:?}: {message}")]
    Repo {
        /// The repo as given.
        repo: String,
        /// What is wrong with it.
        message: String,
    },
    /// The base names no commit of the repository.
    #[error("base {base:?} not found in repo {repo:?}: no branch, tag or commit of that name")]
    UnknownBase {
        /// The repo as given.
        repo: String,
        /// The base as given.
        base: String,
    },
    /// An argument is not acceptable.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The parameter at fault.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

pub(crate) type Result<T, E = WorkspaceError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> WorkspaceError {
    let path = path.to_path_buf();
    move |source| WorkspaceError::Io {
        action,
        path,
        source,
    }
}
