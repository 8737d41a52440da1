//! Validation of `sandbox:` in a job file: a kind's name, or a map with the kind, the
//! network and its allowed hosts and the limits (for bwrap and Docker), and for Docker
//! the image. The types live in [`crate::sandbox`].

use super::SpecError;
use super::validate::Validator;
use super::yaml::{Node, Value, quote};
use crate::sandbox::{
    HostPort, MAX_ALLOW, MIN_MEMORY_BYTES, Network, SandboxKind, SandboxSpec, parse_size,
};

/// The keys a `sandbox:` map may have.
const KEYS: [&str; 7] = [
    "kind", "image", "network", "allow", "memory", "cpus", "pids",
];

/// The keys that apply to bwrap as well as to docker: the network and the limits.
const WALL_KEYS: [&str; 5] = ["network", "allow", "memory", "cpus", "pids"];

/// The highest `cpus:` accepted.
const MAX_CPUS: f64 = 1024.0;

/// The highest `pids:` accepted (the kernel's own `pid_max` limit).
const MAX_PIDS: i128 = 1 << 22;

impl Validator<'_> {
    /// `sandbox: docker` or `sandbox: { kind: docker, image: ..., network: none,
    /// memory: 2g, cpus: 1.5, pids: 512 }`.
    pub(super) fn sandbox(&self, node: &Node) -> Result<SandboxSpec, SpecError> {
        let entries = match &node.value {
            Value::Str(_) => return self.sandbox_kind(node).map(SandboxSpec::of),
            Value::Map(entries) => entries,
            _ => {
                return Err(self.type_err(
                    node,
                    "sandbox",
                    "a sandbox kind (none, bwrap, docker) or a map like `{ kind: docker, image: gantry-agent:latest }`",
                ));
            }
        };
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut kind = None;
        for (k, v) in entries {
            let name = self.key_text(k, Some("sandbox"))?;
            let line = self.line(k);
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                return Err(self.err(
                    line,
                    "sandbox",
                    format!("duplicate key `{name}` (first set on line {first})"),
                ));
            }
            if !KEYS.contains(&name.as_str()) {
                return Err(self.err(
                    line,
                    "sandbox",
                    format!(
                        "unknown key {} of sandbox (known keys: {})",
                        quote(&name),
                        KEYS.join(", ")
                    ),
                ));
            }
            seen.push((name.clone(), line));
            if name == "kind" {
                kind = Some(self.sandbox_kind(v)?);
            }
        }
        let Some(kind) = kind else {
            return Err(self.err(
                self.line(node),
                "sandbox",
                "the sandbox map needs a `kind:` (none, bwrap or docker)",
            ));
        };
        let mut spec = SandboxSpec::of(kind);
        for (k, v) in entries {
            let name = self.key_text(k, Some("sandbox"))?;
            if name == "kind" {
                continue;
            }
            let wall_key = WALL_KEYS.contains(&name.as_str());
            // With no wall there is nothing to hold a network rule or a limit.
            if kind == SandboxKind::None && wall_key {
                return Err(self.err(
                    self.line(k),
                    "sandbox",
                    format!("sandbox.{name} applies to the bwrap and docker kinds, not to none"),
                ));
            }
            if kind != SandboxKind::Docker && !wall_key {
                return Err(self.err(
                    self.line(k),
                    "sandbox",
                    format!("sandbox.{name} applies to the docker kind only, not to {kind}"),
                ));
            }
            let line = self.line(v);
            let bad = |what: &str| {
                self.err(
                    line,
                    "sandbox",
                    format!("sandbox.{name} must be {what}, found {}", self.describe(v)),
                )
            };
            match name.as_str() {
                "image" => match &v.value {
                    Value::Str(s) if valid_image(s) => spec.image = Some(s.clone()),
                    _ => return Err(bad("an image reference like `gantry-agent:latest`")),
                },
                "network" => {
                    spec.network = Some(match &v.value {
                        Value::Str(s) => s
                            .parse::<Network>()
                            .map_err(|_| bad("one of none, model, full"))?,
                        _ => return Err(bad("one of none, model, full")),
                    })
                }
                "allow" => spec.allow = self.sandbox_allow(v)?,
                "memory" => {
                    let bytes = match &v.value {
                        Value::Str(s) => parse_size(s).map_err(|e| {
                            self.err(line, "sandbox", format!("sandbox.memory: {e}"))
                        })?,
                        Value::Int(i) if *i > 0 => u64::try_from(*i).unwrap_or(u64::MAX),
                        _ => return Err(bad("a size like `2g` or `512m`")),
                    };
                    if bytes < MIN_MEMORY_BYTES {
                        return Err(bad("at least 6m (Docker's smallest limit)"));
                    }
                    spec.memory_bytes = Some(bytes);
                }
                "cpus" => {
                    let cpus = match v.value {
                        Value::Int(i) => i as f64,
                        Value::Float(x) => x,
                        _ => return Err(bad("a number of CPUs like `1.5`")),
                    };
                    if !(cpus > 0.0 && cpus <= MAX_CPUS) || (cpus * 1e9).round() < 1e6 {
                        return Err(bad("a number of CPUs above 0.001 and at most 1024"));
                    }
                    spec.nano_cpus = Some((cpus * 1e9).round() as u64);
                }
                "pids" => match v.value {
                    Value::Int(i) if (2..=MAX_PIDS).contains(&i) => {
                        spec.pids = Some(u64::try_from(i).unwrap_or(u64::MAX))
                    }
                    _ => return Err(bad(&format!("a whole number in 2..={MAX_PIDS}"))),
                },
                other => unreachable!("every sandbox key has an arm; `{other}` does not"),
            }
        }
        if !spec.allow.is_empty() && spec.network != Some(Network::Model) {
            let line = entries
                .iter()
                .find(|(k, _)| self.key_text(k, None).is_ok_and(|n| n == "allow"))
                .map_or(self.line(node), |(k, _)| self.line(k));
            return Err(self.err(
                line,
                "sandbox",
                "sandbox.allow needs `network: model` (hosts are reached through the egress proxy)",
            ));
        }
        Ok(spec)
    }

    /// `allow: [host, host:port, ...]`: at most [`MAX_ALLOW`] entries, each naming
    /// itself when it is not a host[:port].
    fn sandbox_allow(&self, node: &Node) -> Result<Vec<HostPort>, SpecError> {
        let Value::Seq(items) = &node.value else {
            return Err(self.type_err(
                node,
                "sandbox",
                "a list of hosts like `[example.com, example.com:8443]` for sandbox.allow",
            ));
        };
        if items.len() > MAX_ALLOW {
            return Err(self.err(
                self.line(node),
                "sandbox",
                format!(
                    "sandbox.allow has {} entries; at most {MAX_ALLOW}",
                    items.len()
                ),
            ));
        }
        let mut allow: Vec<HostPort> = Vec::new();
        for item in items {
            let entry = match &item.value {
                Value::Str(s) => HostPort::parse(s),
                _ => Err(format!("{} is not a host[:port]", self.describe(item))),
            }
            .map_err(|e| self.err(self.line(item), "sandbox", format!("sandbox.allow: {e}")))?;
            if !allow.contains(&entry) {
                allow.push(entry);
            }
        }
        Ok(allow)
    }

    /// A sandbox kind's name.
    fn sandbox_kind(&self, node: &Node) -> Result<SandboxKind, SpecError> {
        let known = || {
            crate::sandbox::SandboxKind::ALL
                .map(SandboxKind::name)
                .join(", ")
        };
        match &node.value {
            Value::Str(s) => SandboxKind::parse(s).ok_or_else(|| {
                self.err(
                    self.line(node),
                    "sandbox",
                    format!(
                        "unknown sandbox kind {} (known kinds: {})",
                        quote(s),
                        known()
                    ),
                )
            }),
            _ => Err(self.type_err(node, "sandbox", &format!("a sandbox kind ({})", known()))),
        }
    }
}

/// Whether `s` looks like an image reference: no whitespace, no leading `-` (it must not
/// pass for an option anywhere), at most 255 characters.
fn valid_image(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
}
