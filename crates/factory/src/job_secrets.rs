//! The values of the secrets a job names (`secrets: [NAME, ...]`): read by the factory
//! when it starts a run's agent, put into that process's environment and the run's
//! redactor, and nowhere else. The job, the database, the events and the logs only
//! ever hold the names.
//!
//! Values come from the factory's secrets file when one is configured (gantry.toml's
//! `[factory] secrets_file`), else from the factory's own environment; never from both,
//! so a factory with a file hands out nothing of its environment. The file is TOML, a
//! flat table of strings (`NAME = "value"`), private to its user (no group or other
//! permission bits), read again for every run so a rotated value is picked up.
//!
//! No error here ever shows a value, not even part of one: a TOML error is rendered
//! from its message and line only, never from the snippet of the line TOML would quote.

use gantry_secrets::MIN_LITERAL_LEN;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Largest secrets file read, in bytes: a file of credentials is small, and a bigger
/// one is surely not the right file.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why the secrets file cannot be used. Names the path (and the line), never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsFileError {
    /// The file cannot be opened or read.
    #[error("cannot read the secrets file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a regular file, or is too big to be one.
    #[error("the secrets file {path} {why}")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
    /// Its group or other users may read or write it.
    #[error(
        "the secrets file {path} has mode {mode:04o}, which lets other users at it: make it private to the factory's user (chmod 600 {path})"
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not a `NAME = "value"` entry.
    #[error("secrets file {path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the entry at fault.
        line: usize,
        /// What is wrong (never the value).
        message: String,
    },
}

/// Why a run cannot have the secrets its job names.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secrets file cannot be used.
    #[error(transparent)]
    File(#[from] SecretsFileError),
    /// The secrets file has no entry of that name.
    #[error("secret {name} is not in the secrets file {path}")]
    NotInFile {
        /// The secret.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// No secrets file is configured and the factory's environment lacks the name.
    #[error(
        "secret {name} is not set in the factory's environment (and no secrets file is configured)"
    )]
    NotInEnv {
        /// The secret.
        name: String,
    },
    /// The factory's environment has it, but not as UTF-8 text.
    #[error("secret {name} in the factory's environment is not UTF-8 text")]
    NotText {
        /// The secret.
        name: String,
    },
    /// The value is too short to be recognised in what the agent prints.
    #[error(
        "secret {name} is {len} bytes long: a secret must have at least {MIN_LITERAL_LEN} bytes, or it could not be redacted from what the agent prints"
    )]
    TooShort {
        /// The secret.
        name: String,
        /// Its length in bytes.
        len: usize,
    },
}

/// The secrets one run received: each name with its value, in the job's order. Its
/// `Debug` shows the names only.
#[derive(Clone, Default)]
pub(crate) struct Handed {
    entries: Vec<(String, String)>,
}

impl fmt::Debug for Handed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Handed {
    /// The names, in the job's order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// The values, for the run's redactor and its secret scan.
    pub(crate) fn values(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, v)| v.as_str())
    }

    /// Each name and value, for the agent's environment.
    pub(crate) fn env(&self) -> impl Iterator<Item = (OsString, OsString)> + '_ {
        self.entries
            .iter()
            .map(|(n, v)| (OsString::from(n), OsString::from(v)))
    }
}

/// The values of `names`: from `file` when one is configured, else from this
/// process's environment. Any name that cannot be had fails the whole set (the first
/// such name, in the job's order, is the error). No name, no reading at all.
pub(crate) fn resolve(file: Option<&Path>, names: &[String]) -> Result<Handed, SecretError> {
    if names.is_empty() {
        return Ok(Handed::default());
    }
    let from_file = file
        .map(|path| read_file(path).map(|v| (path, v)))
        .transpose()?;
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let value = match &from_file {
            Some((path, values)) => {
                values
                    .get(name)
                    .cloned()
                    .ok_or_else(|| SecretError::NotInFile {
                        name: name.clone(),
                        path: path.to_path_buf(),
                    })?
            }
            None => std::env::var_os(name)
                .ok_or_else(|| SecretError::NotInEnv { name: name.clone() })?
                .into_string()
                .map_err(|_| SecretError::NotText { name: name.clone() })?,
        };
        if value.len() < MIN_LITERAL_LEN {
            return Err(SecretError::TooShort {
                name: name.clone(),
                len: value.len(),
            });
        }
        entries.push((name.clone(), value));
    }
    Ok(Handed { entries })
}

/// The values of as many of `names` as can be had now, for a run adopted from an
/// earlier factory: its process already has them, and its redactor needs what it can
/// get; a name that cannot be had is logged, not fatal.
pub(crate) fn resolve_available(file: Option<&Path>, names: &[String]) -> Handed {
    let mut entries = Vec::new();
    for name in names {
        match resolve(file, std::slice::from_ref(name)) {
            Ok(h) => entries.extend(h.entries),
            Err(e) => {
                tracing::warn!(error = %e, "an adopted run's secret cannot be read again: it is not redacted from the run's output");
            }
        }
    }
    Handed { entries }
}

/// Checks that the secrets file at `path` can be used (a private regular file of
/// valid entries), as a factory does when it starts, so a broken file is found then
/// and not by the first job that needs it.
pub fn check_secrets_file(path: &Path) -> Result<(), SecretsFileError> {
    read_file(path).map(|_| ())
}

/// Reads the secrets file at `path`: refuses one that is not a private regular file,
/// then parses it.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>, SecretsFileError> {
    let read_err = |source| SecretsFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretsFileError::NotAFile {
            path: path.to_path_buf(),
            why: "is not a regular file".to_string(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsFileError::Mode {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(SecretsFileError::NotAFile {
            path: path.to_path_buf(),
            why: format!(
                "is {} bytes long; a secrets file has at most {MAX_FILE_BYTES}",
                meta.len()
            ),
        });
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    parse(path, &text)
}

/// Parses the text of a secrets file: a TOML table of `NAME = "value"` entries, each
/// name an environment variable name.
fn parse(path: &Path, text: &str) -> Result<BTreeMap<String, String>, SecretsFileError> {
    let syntax = |offset: usize, message: String| SecretsFileError::Syntax {
        path: path.to_path_buf(),
        line: line_of(text, offset),
        message,
    };
    let table: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            // The message only: the error's rendering quotes the line, value and all.
            let at = e.span().map_or(0, |s| s.start);
            syntax(at, format!("not valid TOML: {}", e.message().trim()))
        })?;
    let mut out = BTreeMap::new();
    for (name, value) in table {
        let at = value.span().start;
        if !valid_env_name(&name) {
            return Err(syntax(
                at,
                format!("{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        match value.into_inner() {
            toml::Value::String(s) if s.contains('\0') => {
                return Err(syntax(at, format!("the value of {name} has a NUL byte")));
            }
            toml::Value::String(s) => {
                out.insert(name, s);
            }
            other => {
                return Err(syntax(
                    at,
                    format!(
                        "the value of {name} is a {}; write it as a string: {name} = \"...\"",
                        other.type_str()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// The 1-based line of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "v4lue-0f-a-s3cr3t";

    fn write(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("secrets.toml");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_private_file_gives_its_values_and_nothing_of_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "# the fleet's keys\nDEMO_TOKEN = \"{VALUE}\"\nOTHER = '''\nmulti-line-{VALUE}'''\n"
        );
        let path = write(dir.path(), &text, 0o600);
        let h = resolve(Some(&path), &names(&["OTHER", "DEMO_TOKEN"])).expect("resolves");
        assert_eq!(h.names().collect::<Vec<_>>(), ["OTHER", "DEMO_TOKEN"]);
        assert_eq!(
            h.values().collect::<Vec<_>>(),
            [format!("multi-line-{VALUE}"), VALUE.to_string()]
        );
        assert_eq!(format!("{h:?}"), r#"["OTHER", "DEMO_TOKEN"]"#);
        // PATH is in every environment, but a factory with a file hands out only it.
        let e = resolve(Some(&path), &names(&["PATH"])).expect_err("not in the file");
        assert!(
            matches!(e, SecretError::NotInFile { .. }) && e.to_string().contains("secret PATH"),
            "{e}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(check_secrets_file(&path).is_ok());
    }

    #[test]
    fn without_a_file_values_come_from_the_environment() {
        // Cargo sets CARGO_PKG_NAME for the test binary: "gantry-factory", long enough.
        let h = resolve(None, &names(&["CARGO_PKG_NAME"])).expect("resolves");
        assert_eq!(h.values().collect::<Vec<_>>(), ["gantry-factory"]);
        let e = resolve(None, &names(&["GANTRY_SURELY_UNSET_XYZ"])).expect_err("unset");
        assert_eq!(
            e.to_string(),
            "secret GANTRY_SURELY_UNSET_XYZ is not set in the factory's environment (and no secrets file is configured)"
        );
        // CARGO_PKG_VERSION_MAJOR is "0": too short to redact.
        let e = resolve(None, &names(&["CARGO_PKG_VERSION_MAJOR"])).expect_err("short");
        assert!(e.to_string().contains("is 1 bytes long"), "{e}");
        assert!(
            resolve(None, &[])
                .expect("nothing")
                .values()
                .next()
                .is_none()
        );
    }

    #[test]
    fn a_file_others_may_read_is_refused_naming_path_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), &format!("A = \"{VALUE}\"\n"), 0o644);
        let e = check_secrets_file(&path).expect_err("0644");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("mode 0644"), "{text}");
        let e = resolve(Some(&path), &names(&["A"])).expect_err("0644");
        assert!(
            matches!(e, SecretError::File(SecretsFileError::Mode { .. })),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(check_secrets_file(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(check_secrets_file(&path).is_ok());
        let missing = dir.path().join("missing.toml");
        let e = check_secrets_file(&missing).expect_err("missing");
        assert!(e.to_string().contains("missing.toml"), "{e}");
        let e = check_secrets_file(dir.path()).expect_err("a directory");
        assert!(
            e.to_string().contains("cannot read") || e.to_string().contains("not a regular file"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_line_is_named_and_its_value_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, line, needle) in [
            (
                format!("A = \"{VALUE}\"\nB = {VALUE}\n"),
                2,
                "not valid TOML",
            ),
            (
                format!("A = \"{VALUE}\"\n\nB = 12345678\n"),
                3,
                "the value of B is a integer",
            ),
            (
                format!("A = \"{VALUE}\"\nbad-name = \"{VALUE}\"\n"),
                2,
                "\"bad-name\" is not an environment variable name",
            ),
            (
                format!("[table]\nA = \"{VALUE}\"\n"),
                1,
                "the value of table is a table",
            ),
            (format!("A = \"{VALUE}\nB = 1\n"), 1, "not valid TOML"),
        ] {
            let path = write(dir.path(), &text, 0o600);
            let e = check_secrets_file(&path).expect_err(&text);
            let shown = format!("{e} {e:?}");
            assert!(
                matches!(e, SecretsFileError::Syntax { line: l, .. } if l == line),
                "{text:?}: {shown}"
            );
            assert!(shown.contains(needle), "{text:?}: {shown}");
            assert!(!shown.contains("v4lue"), "a value is shown: {shown}");
        }
    }
}
