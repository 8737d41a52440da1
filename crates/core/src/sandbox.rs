//! What a job asks of the wall around its run: the sandbox kind and, for containers,
//! the image, the network and the limits.
//!
//! A job file writes `sandbox: docker` or a map
//! `sandbox: { kind: docker, image: gantry-agent:latest, network: none, memory: 2g,
//! cpus: 1.5, pids: 512 }`. A job naming a kind requires the factory capability
//! [`SandboxKind::capability`] (added to its capabilities when the file is parsed), so
//! the claim's one matching rule sends it only to a factory that can run it.

use serde::{Deserialize, Serialize};

/// The kinds of wall a factory can put around a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxKind {
    /// No wall: the run sees what the factory's user sees.
    None,
    /// bubblewrap namespaces around the process.
    Bwrap,
    /// One Docker container per process of the run.
    Docker,
}

impl SandboxKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [SandboxKind; 3] = [SandboxKind::None, SandboxKind::Bwrap, SandboxKind::Docker];

    /// The name used in job files, configuration and capabilities.
    pub fn name(self) -> &'static str {
        match self {
            SandboxKind::None => "none",
            SandboxKind::Bwrap => "bwrap",
            SandboxKind::Docker => "docker",
        }
    }

    /// Parses a kind's name.
    pub fn parse(name: &str) -> Option<SandboxKind> {
        SandboxKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The capability a factory advertises when it can run this kind, and a job
    /// asking for it requires: `sandbox:<name>`.
    pub fn capability(self) -> String {
        format!("sandbox:{}", self.name())
    }
}

impl std::fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a container run may reach on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all (a loopback interface only): the default.
    #[default]
    None,
    /// Only the engine's model API, through the factory's egress proxy (not built yet:
    /// job files asking for it are refused).
    Model,
    /// The engine's default bridge: anything the factory's machine can reach.
    Full,
}

impl Network {
    /// The name used in job files.
    pub fn name(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::Model => "model",
            Network::Full => "full",
        }
    }
}

/// The `sandbox:` of a job: the kind, and for Docker the image, network and limits
/// (each `None` when the factory's default applies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The kind of wall.
    pub kind: SandboxKind,
    /// The container image (Docker only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What the run may reach (Docker only; none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Memory limit in bytes (bwrap and Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU limit in billionths of a CPU, as Docker's `NanoCpus` (bwrap and Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    /// Limit on the number of processes and threads (bwrap and Docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl SandboxSpec {
    /// A spec of `kind` with every setting at the factory's default.
    pub fn of(kind: SandboxKind) -> SandboxSpec {
        SandboxSpec {
            kind,
            image: None,
            network: None,
            memory_bytes: None,
            nano_cpus: None,
            pids: None,
        }
    }
}

/// The smallest memory limit accepted: Docker refuses less than 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Reads a size such as `2g`, `512m`, `64k`, `1.5g` or a number of bytes (binary
/// units; a trailing `b` or `ib` is allowed, case does not matter).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("ib")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(&t);
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("unknown unit {unit:?} (use k, m, g or t)")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size like `2g`, `512m` or a number of bytes"))?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is not a size above zero"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_binary_units() {
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("64kib"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("2x").expect_err("no such unit").contains("unit"));
        assert!(parse_size("g").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn kinds_and_capabilities_are_named() {
        for k in SandboxKind::ALL {
            assert_eq!(SandboxKind::parse(k.name()), Some(k));
        }
        assert_eq!(SandboxKind::Docker.capability(), "sandbox:docker");
        assert_eq!(SandboxKind::parse("podman"), None);
    }
}
