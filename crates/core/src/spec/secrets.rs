//! `secrets:` of a job file: the names of the credentials the factory hands to the
//! agent, each an environment variable name. Only names are ever written in a job
//! file (and so stored and served); the values are the factory's own.

use super::SpecError;
use super::validate::Validator;
use super::yaml::{Node, Value, quote};
use std::collections::BTreeMap;

/// Most secrets one job may ask for. A job needs a few credentials; a long list is a
/// mistake or an attempt to sweep the factory's environment.
pub const MAX_SECRETS: usize = 32;

/// Longest secret name, in bytes.
pub const MAX_SECRET_NAME_BYTES: usize = 128;

/// Why `name` cannot be an environment variable the job sets: the shape of a POSIX
/// name, and not one of the `GANTRY_*` variables Gantry sets itself. Shared by `env`
/// and `secrets`, which both end up in the process's environment.
pub(super) fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        Err(format!(
            "invalid environment variable name {}: names match [A-Za-z_][A-Za-z0-9_]*",
            quote(name)
        ))
    } else if name.starts_with("GANTRY_") {
        Err(format!(
            "environment variable {} is reserved: Gantry sets the GANTRY_* variables itself",
            quote(name)
        ))
    } else {
        Ok(())
    }
}

impl Validator<'_> {
    /// `secrets`: a list of distinct environment variable names, each with its line.
    pub(super) fn secrets(&self, node: &Node) -> Result<Vec<(String, usize)>, SpecError> {
        let items = self.list(
            node,
            "secrets",
            "a list of secret names, e.g. `[ANTHROPIC_API_KEY]`",
        )?;
        if items.len() > MAX_SECRETS {
            return Err(self.err(
                self.line(node),
                "secrets",
                format!(
                    "{} secrets are listed; a job may ask for at most {MAX_SECRETS}",
                    items.len()
                ),
            ));
        }
        let mut out: Vec<(String, usize)> = Vec::with_capacity(items.len());
        for item in items {
            let line = self.line(item);
            let Value::Str(name) = &item.value else {
                return Err(self.type_err(
                    item,
                    "secrets",
                    "a secret name (an environment variable name)",
                ));
            };
            if name.len() > MAX_SECRET_NAME_BYTES {
                return Err(self.err(
                    line,
                    "secrets",
                    format!(
                        "secret name {}… is {} bytes long; at most {MAX_SECRET_NAME_BYTES}",
                        quote(&name.chars().take(32).collect::<String>()),
                        name.len()
                    ),
                ));
            }
            check_env_name(name).map_err(|m| self.err(line, "secrets", m))?;
            if let Some((_, first)) = out.iter().find(|(n, _)| n == name) {
                return Err(self.err(
                    line,
                    "secrets",
                    format!(
                        "duplicate secret {} (first listed on line {first})",
                        quote(name)
                    ),
                ));
            }
            out.push((name.clone(), line));
        }
        Ok(out)
    }

    /// The names of `secrets`, refusing one that `env` sets too: a variable would then
    /// have two values, one of them written in the job file for all to read.
    pub(super) fn secrets_apart_from(
        &self,
        secrets: Vec<(String, usize)>,
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, SpecError> {
        if let Some((name, line)) = secrets.iter().find(|(n, _)| env.contains_key(n)) {
            return Err(self.err(
                *line,
                "secrets",
                format!(
                    "{} is both a secret and set in `env`; a secret's value comes from the factory, keep one",
                    quote(name)
                ),
            ));
        }
        Ok(secrets.into_iter().map(|(name, _)| name).collect())
    }
}
