//! `gantry.toml`: the server's configuration file (engines, prices, the embedded
//! factory's admission thresholds, checkpoint interval and secrets file, size caps and
//! HTTP limits, the secret scan's rules and allowlist).
//!
//! Every key is optional and an unknown key is an error naming it and its line, so a
//! typo never silently leaves a default in place.

use gantry_engine::PriceTable;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the config file looked for in the data dir when `--config` is not given.
pub const CONFIG_FILE: &str = "gantry.toml";

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key or value is wrong.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and key.
        message: String,
    },
    /// A key or value of `[secrets]` is wrong (the error names the file and the key).
    #[error("config file {0}")]
    Secrets(#[source] gantry_secrets::ConfigError),
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[factory]`: the embedded factory.
    #[serde(default)]
    pub factory: FactorySection,
    /// `[engines.claude-code]`, `[engines.codex]`.
    #[serde(default)]
    pub engines: EnginesSection,
    /// `[prices."model"]`: USD per million tokens, merged over the built-in table.
    #[serde(default)]
    pub prices: PriceTable,
    /// `[limits]`: size caps of submitted jobs and limits of the HTTP server.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[gates.profiles.<name>]`: gate lists a job names with `gates: <name>`.
    #[serde(default)]
    pub gates: crate::profiles::ProfilesSection,
    /// `[review.profiles.<name>]`: reviews a job names with `review: <name>`.
    #[serde(default)]
    pub review: crate::profiles::ProfilesSection,
    /// The profiles of `gates` and `review`, checked (filled by [`ConfigFile::parse`]).
    #[serde(skip)]
    pub profiles: crate::profiles::Profiles,
    /// `[secrets]` as written; [`ConfigFile::parse`] checks it into `secrets`.
    #[serde(default, rename = "secrets")]
    pub secrets_table: toml::Table,
    /// `[secrets]`: extra rules and an allowlist of the checking stage's secret scan,
    /// whose rules also redact what runs print (filled by [`ConfigFile::parse`]).
    #[serde(skip)]
    pub secrets: gantry_secrets::SecretsConfig,
    /// `[factory] network`, `egress_allow` and `egress_private_for_jobs`, checked
    /// (filled by [`ConfigFile::parse`]; the forwarder is the binary's to set).
    #[serde(skip)]
    pub egress: gantry_factory::egress::EgressConfig,
}

/// `[limits]`: each key given replaces the server's value (see [`crate::Limits`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Longest job title, in bytes.
    pub max_title_bytes: Option<usize>,
    /// Longest job body (the markdown instructions), in bytes.
    pub max_body_bytes: Option<usize>,
    /// Longest label (key and value), in bytes.
    pub max_label_bytes: Option<usize>,
    /// Most labels on one job.
    pub max_labels: Option<usize>,
    /// Most environment variables on one job.
    pub max_env_vars: Option<usize>,
    /// Largest environment of one job (names and values), in bytes.
    pub max_env_bytes: Option<usize>,
    /// Largest job file, in bytes.
    pub max_job_file_bytes: Option<usize>,
    /// Time a client has to send a request's header, e.g. `"30s"`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub header_read_timeout: Option<Duration>,
    /// Time after which a connection on which nothing moves is closed, e.g. `"5m"`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Most connections open at once.
    pub max_connections: Option<usize>,
    /// Most event streams one token may have open at once.
    pub max_streams_per_token: Option<usize>,
}

impl LimitsSection {
    /// Replaces each value of `limits` this section gives.
    pub fn apply_to(&self, limits: &mut crate::Limits) {
        fn set<T: Clone>(to: &mut T, from: &Option<T>) {
            if let Some(v) = from {
                *to = v.clone();
            }
        }
        set(&mut limits.max_title_bytes, &self.max_title_bytes);
        set(&mut limits.max_body_bytes, &self.max_body_bytes);
        set(&mut limits.max_label_bytes, &self.max_label_bytes);
        set(&mut limits.max_labels, &self.max_labels);
        set(&mut limits.max_env_vars, &self.max_env_vars);
        set(&mut limits.max_env_bytes, &self.max_env_bytes);
        set(&mut limits.max_job_file_bytes, &self.max_job_file_bytes);
        set(&mut limits.header_read_timeout, &self.header_read_timeout);
        set(&mut limits.idle_timeout, &self.idle_timeout);
        set(&mut limits.max_connections, &self.max_connections);
        set(
            &mut limits.max_streams_per_token,
            &self.max_streams_per_token,
        );
    }
}

/// `[factory]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactorySection {
    /// How often a running agent's work in progress is checkpointed, e.g. `"5m"`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub checkpoint_interval: Option<Duration>,
    /// Do not claim while available memory is under this many MiB (0: off).
    pub min_free_memory_mb: Option<u64>,
    /// Do not claim while the data dir's disk has less than this many MiB free (0: off).
    pub min_free_disk_mb: Option<u64>,
    /// Where the values of the secrets jobs name come from: a TOML file of
    /// `NAME = "value"` lines, private to the factory's user (a relative path is taken
    /// from the config file's directory). Without it, the factory's environment.
    pub secrets_file: Option<PathBuf>,
    /// The sandbox of jobs that name none: `bwrap` (the default) or `docker`.
    pub sandbox: Option<String>,
    /// Offer the docker sandbox to the jobs that ask for it (implied by `sandbox =
    /// "docker"`).
    pub docker: Option<bool>,
    /// The image of docker jobs that name none (default `gantry-agent:latest`).
    pub docker_image: Option<String>,
    /// The Docker engine's socket (default `/var/run/docker.sock`).
    pub docker_socket: Option<PathBuf>,
    /// The network of sandboxed jobs that name none: `none` (the default), `model` or
    /// `full`.
    pub network: Option<String>,
    /// Hosts (`host[:port]`, port 443 when left out) every `network: model` run may
    /// reach through the egress proxy, besides its engine's API.
    pub egress_allow: Option<Vec<String>>,
    /// Whether hosts a job allows may resolve to loopback, private or link-local
    /// addresses (default false: a job must not reach the factory's own services).
    pub egress_private_for_jobs: Option<bool>,
    /// How long a restarted factory keeps the leases of its container runs while the
    /// engine does not answer, e.g. `"10m"` (the default).
    #[serde(default, deserialize_with = "opt_duration")]
    pub docker_engine_wait: Option<Duration>,
}

/// `[engines]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnginesSection {
    /// `[engines.claude-code]`.
    #[serde(default, rename = "claude-code")]
    pub claude_code: Option<AgentCli>,
    /// `[engines.codex]`.
    #[serde(default)]
    pub codex: Option<AgentCli>,
}

/// How to start one agent CLI.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCli {
    /// The binary: a path, or a name looked up on PATH.
    pub binary: Option<String>,
    /// Extra flags given on every run (replacing the default: none).
    pub args: Option<Vec<String>>,
    /// Environment variables passed through to the agent (API keys, base URLs),
    /// replacing the default list.
    pub env: Option<Vec<String>>,
}

impl AgentCli {
    /// Applies this section over the factory's settings of the same CLI.
    pub fn apply_to(&self, cli: &mut gantry_factory::agent::AgentCli) {
        if let Some(b) = &self.binary {
            cli.binary = b.clone();
        }
        if let Some(a) = &self.args {
            cli.args = a.clone();
        }
        if let Some(e) = &self.env {
            cli.env = e.clone();
        }
    }
}

impl ConfigFile {
    /// The embedded factory's engine settings: the defaults with this file over them.
    pub fn engine_settings(&self) -> gantry_factory::agent::EngineSettings {
        let mut s = gantry_factory::agent::EngineSettings::default();
        if let Some(c) = &self.engines.claude_code {
            c.apply_to(&mut s.claude);
        }
        if let Some(c) = &self.engines.codex {
            c.apply_to(&mut s.codex);
        }
        s.prices.merge(&self.prices);
        if let Some(i) = self.factory.checkpoint_interval {
            s.checkpoint_interval = i;
        }
        s
    }
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(text.trim())
        .map(Some)
        .map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e}; write e.g. \"90s\", \"5m\""
            ))
        })
}

impl ConfigFile {
    /// Parses the text of a config file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        let mut cfg: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string().trim().to_string(),
        })?;
        for (name, cli) in [
            ("claude-code", &cfg.engines.claude_code),
            ("codex", &cfg.engines.codex),
        ] {
            let Some(cli) = cli else { continue };
            if cli.binary.as_deref().is_some_and(|b| b.trim().is_empty()) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "engines.{name}.binary is empty; give a path or a name on PATH"
                    ),
                });
            }
            if let Some(bad) = cli.env.iter().flatten().find(|v| !valid_env_name(v)) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "engines.{name}.env: {bad:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                    ),
                });
            }
        }
        cfg.profiles = crate::profiles::Profiles::from_sections(&cfg.gates, &cfg.review).map_err(
            |message| ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
        )?;
        // The same keys as a repository's `.gantry/secrets.toml`, read by the crate
        // that reads that file, so the two cannot drift apart.
        cfg.secrets =
            gantry_secrets::SecretsConfig::from_gantry_toml(&path.display().to_string(), text)
                .map_err(ConfigError::Secrets)?;
        if let Some(file) = &mut cfg.factory.secrets_file {
            if file.as_os_str().is_empty() {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: "factory.secrets_file is empty; give the path of a secrets file"
                        .to_string(),
                });
            }
            if file.is_relative() {
                let dir = path.parent().unwrap_or(Path::new(""));
                *file = dir.join(&*file);
            }
        }
        if let Some(kind) = &cfg.factory.sandbox
            && !matches!(kind.as_str(), "bwrap" | "docker")
        {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "factory.sandbox = {kind:?}: the default sandbox is \"bwrap\" or \"docker\" (running jobs without one is the --allow-unsandboxed-jobs flag)"
                ),
            });
        }
        cfg.egress = egress_config(&cfg.factory).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        if cfg.factory.checkpoint_interval.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                message: "factory.checkpoint_interval must be longer than zero".to_string(),
            });
        }
        Ok(cfg)
    }

    /// Reads `path`; with `required` false a missing file is the default config.
    pub fn load(path: &Path, required: bool) -> Result<ConfigFile, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => ConfigFile::parse(path, &text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(ConfigFile::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// The factory's network settings from `[factory]`, each bad value named.
fn egress_config(f: &FactorySection) -> Result<gantry_factory::egress::EgressConfig, String> {
    use gantry_core::sandbox::{HostPort, MAX_ALLOW, Network};
    let network = match &f.network {
        Some(n) => n
            .parse::<Network>()
            .map_err(|e| format!("factory.network: {e}"))?,
        None => Network::None,
    };
    let entries = f.egress_allow.as_deref().unwrap_or_default();
    if entries.len() > MAX_ALLOW {
        return Err(format!(
            "factory.egress_allow has {} entries; at most {MAX_ALLOW}",
            entries.len()
        ));
    }
    let allow = entries
        .iter()
        .map(|e| HostPort::parse(e).map_err(|why| format!("factory.egress_allow: {why}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(gantry_factory::egress::EgressConfig {
        network,
        allow,
        private_for_jobs: f.egress_private_for_jobs.unwrap_or(false),
        forwarder: None,
    })
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
