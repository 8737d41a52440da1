//! Extra rules and allowlists, read from TOML: gantry.toml's `[secrets]` table and a
//! repository's `.gantry/secrets.toml` (the same keys at the top level).
//!
//! ```toml
//! disable = ["jwt"]                 # built-in rules to turn off
//!
//! [[rule]]
//! id = "acme-token"
//! regex = 'acme_[a-z0-9]{32}'      # a group named `secret` marks the value
//! keywords = ["acme_"]              # literals every match contains (prefilter)
//! entropy = 3.0                     # minimum Shannon entropy of the value
//!
//! [allowlist]
//! paths = ["tests/fixtures/**", "*.lock"]
//! fingerprints = ["3f2a9c0d1e4b5a67"]
//! regexes = ['^sk_test_']           # values matching one are not secrets
//! ```

use regex::Regex;
use serde::Deserialize;

/// A configuration problem, naming the file, the key and (where there is one) the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is not TOML or a key has the wrong type or is unknown.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file the text came from.
        file: String,
        /// The key path, such as `secrets.rule[1].entropy` (empty for a syntax error).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-typed but unusable: a regex that does not compile, a duplicate
    /// or unknown rule id.
    #[error("{file}: {key} = {value:?}: {message}")]
    BadValue {
        /// The file the text came from.
        file: String,
        /// The key path.
        key: String,
        /// The offending value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

/// One rule added by configuration.
#[derive(Debug, Clone)]
pub struct ExtraRule {
    /// Identifier shown in findings and in `[REDACTED:<id>]`.
    pub id: String,
    /// The compiled pattern.
    pub regex: Regex,
    /// Literals every match contains; empty means the regex scans all text.
    pub keywords: Vec<String>,
    /// Minimum Shannon entropy of the value.
    pub entropy: Option<f64>,
}

/// What is never reported.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    /// Path globs (`*` within a segment, `**` across segments, `?` one character).
    pub paths: Vec<String>,
    /// Fingerprints of findings judged harmless.
    pub fingerprints: Vec<String>,
    /// Values matching any of these are not secrets.
    pub regexes: Vec<Regex>,
}

/// The scanner's configuration: built-ins (minus disabled ones), extra rules, allowlist.
#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    /// Built-in rule ids turned off.
    pub disabled: Vec<String>,
    /// Rules added to the built-ins.
    pub rules: Vec<ExtraRule>,
    /// What is never reported.
    pub allowlist: Allowlist,
}

/// Patterns compare by their source text: two configurations read from the same TOML
/// are equal, which is what a caller comparing settings (or caching a scanner built
/// from them) needs.
impl PartialEq for ExtraRule {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.regex.as_str() == other.regex.as_str()
            && self.keywords == other.keywords
            && self.entropy == other.entropy
    }
}

/// Patterns compare by their source text (see [`ExtraRule`]'s `PartialEq`).
impl PartialEq for Allowlist {
    fn eq(&self, other: &Self) -> bool {
        self.paths == other.paths
            && self.fingerprints == other.fingerprints
            && self.regexes.len() == other.regexes.len()
            && self
                .regexes
                .iter()
                .zip(&other.regexes)
                .all(|(a, b)| a.as_str() == b.as_str())
    }
}

impl PartialEq for SecretsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.disabled == other.disabled
            && self.rules == other.rules
            && self.allowlist == other.allowlist
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileForm {
    #[serde(default)]
    disable: Vec<String>,
    #[serde(default)]
    rule: Vec<RuleForm>,
    #[serde(default)]
    allowlist: AllowForm,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleForm {
    id: String,
    regex: String,
    #[serde(default)]
    keywords: Vec<String>,
    entropy: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AllowForm {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    fingerprints: Vec<String>,
    #[serde(default)]
    regexes: Vec<String>,
}

/// gantry.toml: only its `[secrets]` table is read; the server owns the other keys.
#[derive(Deserialize)]
struct GantryForm {
    #[serde(default)]
    secrets: FileForm,
}

fn parse<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        file: file.to_string(),
        key,
        message,
    };
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| invalid(String::new(), e.to_string().trim().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        invalid(key, e.into_inner().message().trim().to_string())
    })
}

impl SecretsConfig {
    /// Parses a `.gantry/secrets.toml`: `disable`, `[[rule]]` and `[allowlist]` at the
    /// top level. `file` only names the source in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<SecretsConfig, ConfigError> {
        let form: FileForm = parse(file, text)?;
        form.validate(file, "")
    }

    /// Parses the `[secrets]` table of a gantry.toml (the same keys under `secrets.`),
    /// ignoring every other table.
    pub fn from_gantry_toml(file: &str, text: &str) -> Result<SecretsConfig, ConfigError> {
        let form: GantryForm = parse(file, text)?;
        form.secrets.validate(file, "secrets.")
    }

    /// Adds `other` to this configuration (the server's, then the repository's).
    pub fn merge(&mut self, other: SecretsConfig) {
        self.disabled.extend(other.disabled);
        self.rules.extend(other.rules);
        self.allowlist.paths.extend(other.allowlist.paths);
        self.allowlist
            .fingerprints
            .extend(other.allowlist.fingerprints);
        self.allowlist.regexes.extend(other.allowlist.regexes);
    }
}

impl FileForm {
    fn validate(self, file: &str, prefix: &str) -> Result<SecretsConfig, ConfigError> {
        let bad = |key: String, value: &str, message: String| ConfigError::BadValue {
            file: file.to_string(),
            key,
            value: value.to_string(),
            message,
        };
        let builtin: Vec<&str> = crate::rules::builtins().iter().map(|r| r.id).collect();
        for (i, id) in self.disable.iter().enumerate() {
            if !builtin.contains(&id.as_str()) {
                let message = "not a built-in rule id".to_string();
                return Err(bad(format!("{prefix}disable[{i}]"), id, message));
            }
        }
        let mut rules: Vec<ExtraRule> = Vec::new();
        for (i, r) in self.rule.into_iter().enumerate() {
            let key = |field: &str| format!("{prefix}rule[{i}].{field}");
            if r.id.trim().is_empty() || builtin.contains(&r.id.as_str()) {
                let message = "rule ids must be non-empty and not a built-in rule's".into();
                return Err(bad(key("id"), &r.id, message));
            }
            if rules.iter().any(|x| x.id == r.id) {
                return Err(bad(key("id"), &r.id, "duplicate rule id".into()));
            }
            let regex =
                Regex::new(&r.regex).map_err(|e| bad(key("regex"), &r.regex, e.to_string()))?;
            if let Some((j, k)) = r.keywords.iter().enumerate().find(|(_, k)| k.is_empty()) {
                return Err(bad(
                    key(&format!("keywords[{j}]")),
                    k,
                    "empty keyword".into(),
                ));
            }
            if let Some(e) = r.entropy.filter(|e| !(0.0..=8.0).contains(e)) {
                let message = "entropy is in bits per byte, between 0 and 8".into();
                return Err(bad(key("entropy"), &e.to_string(), message));
            }
            rules.push(ExtraRule {
                id: r.id,
                regex,
                keywords: r.keywords,
                entropy: r.entropy,
            });
        }
        let mut regexes = Vec::new();
        for (i, text) in self.allowlist.regexes.iter().enumerate() {
            let key = format!("{prefix}allowlist.regexes[{i}]");
            regexes.push(Regex::new(text).map_err(|e| bad(key, text, e.to_string()))?);
        }
        Ok(SecretsConfig {
            disabled: self.disable,
            rules,
            allowlist: Allowlist {
                paths: self.allowlist.paths,
                fingerprints: self.allowlist.fingerprints,
                regexes,
            },
        })
    }
}

/// Whether `path` matches the glob `pattern`: `**` spans directories, `*` and `?` stay
/// within one path segment. A pattern without `/` matches the file name at any depth.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    if !pattern.contains('/') {
        let name = path.rsplit('/').next().unwrap_or(path);
        return glob_bytes(pattern.as_bytes(), name.as_bytes());
    }
    glob_bytes(pattern.trim_start_matches('/').as_bytes(), path.as_bytes())
}

fn glob_bytes(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            // `**/` also matches no directory at all.
            let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
            (0..=s.len()).any(|i| glob_bytes(rest, &s[i..]))
        }
        Some(b'*') => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob_bytes(&p[1..], &s[i..])),
        Some(b'?') => s.first().is_some_and(|&c| c != b'/') && glob_bytes(&p[1..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob_bytes(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.lock", "Cargo.lock"));
        assert!(glob_match("*.lock", "a/b/yarn.lock"));
        assert!(glob_match("tests/fixtures/**", "tests/fixtures/a/b.txt"));
        assert!(glob_match("**/fixtures/*.pem", "x/y/fixtures/k.pem"));
        assert!(glob_match("**/fixtures/*.pem", "fixtures/k.pem"));
        assert!(!glob_match("src/*.rs", "src/a/b.rs"));
        assert!(glob_match("src/?.rs", "src/a.rs"));
        assert!(!glob_match("tests/**", "src/tests.rs"));
    }
}
