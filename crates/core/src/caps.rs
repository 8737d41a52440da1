//! Capability matching between jobs and factories.
//!
//! A capability is `name` or `name=value`. A job's `name` is satisfied by a factory's
//! `name` or `name=<anything>`; a job's `name=value` only by the factory's exact
//! `name=value`. A factory can claim a job when it satisfies every one of the job's
//! capabilities (the factory's set is a superset of the job's).

/// Whether `factory` has everything `job` requires.
pub fn satisfies(factory: &[String], job: &[String]) -> bool {
    job.iter().all(|need| {
        factory.iter().any(|have| {
            if need.contains('=') {
                have == need
            } else {
                have == need || have.split_once('=').is_some_and(|(name, _)| name == need)
            }
        })
    })
}

/// Checks the syntax of a capability: a non-empty name of `[A-Za-z0-9_.:-]`, optionally
/// followed by `=value` (any non-empty text without whitespace).
pub fn validate(cap: &str) -> Result<(), String> {
    let (name, value) = match cap.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (cap, None),
    };
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if !name_ok {
        return Err(format!(
            "invalid capability {cap:?}: the name must be non-empty letters, digits, `_`, `.`, `:` or `-`"
        ));
    }
    if let Some(v) = value
        && (v.is_empty() || v.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "invalid capability {cap:?}: the value after `=` must be non-empty and without spaces"
        ));
    }
    Ok(())
}
