//! What a job asks of the wall around its run: the sandbox kind, the network (and the
//! hosts it may reach through the factory's egress proxy) and, for containers, the
//! image and the limits.
//!
//! A job file writes `sandbox: docker` or a map
//! `sandbox: { kind: docker, image: gantry-agent:latest, network: model,
//! allow: [example.com:443], memory: 2g, cpus: 1.5, pids: 512 }`. A job naming a kind requires the factory capability
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

/// What a sandboxed run (bwrap or docker) may reach on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// No network at all (a network namespace with a loopback interface only): the
    /// default.
    #[default]
    None,
    /// Only the engine's model API hosts and the allowed hosts, through the factory's
    /// egress proxy (an HTTP proxy on the run's loopback).
    Model,
    /// The factory's own network (bwrap) or the engine's default bridge (docker):
    /// anything the factory's machine can reach.
    Full,
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        [Network::None, Network::Model, Network::Full]
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| format!("{s:?} is not a network (one of none, model, full)"))
    }
}

/// The most entries of a job's `allow:` list.
pub const MAX_ALLOW: usize = 64;

/// The longest host name accepted in an allowlist (DNS's own limit).
const MAX_HOST_BYTES: usize = 253;

/// One entry of an egress allowlist: a host name or IP address, and a port. An entry
/// written without a port allows port 443 only (HTTPS); plain HTTP needs `host:80`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    /// The host, lower case; an IPv6 address without its brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// The port of an entry written without one.
    pub const DEFAULT_PORT: u16 = 443;

    /// Reads `host`, `host:port`, `1.2.3.4:port` or `[::1]:port`. A host is a DNS name
    /// (letters, digits, `-`, `_`, dots) or an IP address; the port is 1 to 65535.
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let bad = |why: &str| format!("{text:?} is not a host[:port] ({why})");
        let t = text.trim();
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between the brackets"));
            }
            match after {
                "" => (h, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return Err(bad("junk after `]`")),
                },
            }
        } else if t.matches(':').count() > 1 {
            return Err(bad("write an IPv6 address as `[addr]:port`"));
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        let port = match port {
            None => HostPort::DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(0) => return Err(bad("port 0 is not a port")),
                Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(bad(&format!("port {p:?} is not a number in 1..=65535"))),
            },
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let ip = host.parse::<std::net::IpAddr>().is_ok();
        let name_ok = host.len() <= MAX_HOST_BYTES
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ip && !name_ok {
            return Err(bad("a host is a DNS name or an IP address"));
        }
        Ok(HostPort { host, port })
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;

    fn try_from(s: String) -> Result<HostPort, String> {
        HostPort::parse(&s)
    }
}

impl From<HostPort> for String {
    fn from(h: HostPort) -> String {
        h.to_string()
    }
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

/// The `sandbox:` of a job: the kind, the network and its allowed hosts, and for Docker
/// the image and limits (each `None` when the factory's default applies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The kind of wall.
    pub kind: SandboxKind,
    /// The container image (Docker only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What the run may reach (bwrap and docker; the factory's default, else none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Hosts the run may reach through the egress proxy besides its engine's API
    /// (`network: model` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<HostPort>,
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
            allow: Vec::new(),
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
    fn host_ports_read_and_refuse_naming_the_value() {
        let hp = |s: &str| HostPort::parse(s).map(|h| h.to_string());
        assert_eq!(hp("Example.COM"), Ok("example.com:443".to_string()));
        assert_eq!(hp("example.com:80"), Ok("example.com:80".to_string()));
        assert_eq!(hp("127.0.0.1:8080"), Ok("127.0.0.1:8080".to_string()));
        assert_eq!(hp("[::1]:8443"), Ok("[::1]:8443".to_string()));
        for bad in [
            "example.com:0",
            "example.com:65536",
            "example.com:+80",
            "",
            "http://example.com",
            "exa mple.com",
            "::1",
            "[::1",
            "-x.com",
            "a..b",
        ] {
            let e = HostPort::parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            HostPort::parse("x.com:0")
                .expect_err("0")
                .contains("port 0")
        );
        let long = format!("{}.com", "a".repeat(300));
        assert!(HostPort::parse(&long).is_err());
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
