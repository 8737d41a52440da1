//! Network control of sandboxed runs: `network: none` (a network namespace with only
//! loopback), `full` (the factory's network), and `model`: only the engine's API hosts
//! and the allowed hosts, through an egress proxy the factory runs.
//!
//! A `model` run has no network of its own either. The factory listens for it on a
//! Unix socket in the run's artifacts directory ([`proxy::RunProxy`]), and that
//! directory is bound into the sandbox at [`SANDBOX_EGRESS_DIR`]. Inside, the run's
//! command is started by the forwarder ([`forward::main`], the `gantry` binary's
//! hidden `sandbox-forward` subcommand, bound read-only at [`SANDBOX_FORWARDER`]): it
//! listens on `127.0.0.1:`[`PROXY_PORT`] in the sandbox's own network namespace and
//! carries each TCP connection to the socket. The run's environment names that
//! address as its HTTP and HTTPS proxy ([`proxy_env`]). The socket is the run's
//! identity: a run reaches only its own, so the proxy knows whose allowlist applies
//! without trusting anything the run says.

pub mod forward;
pub mod proxy;

use gantry_core::sandbox::{HostPort, Network};
use gantry_core::{EngineKind, JobSpec};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the forwarder program is bound inside a sandbox.
pub const SANDBOX_FORWARDER: &str = "/run/gantry/forward";
/// Where the run's proxy socket directory is bound inside a sandbox.
pub const SANDBOX_EGRESS_DIR: &str = "/run/gantry/egress";
/// Where the host's dynamic loader and the forwarder's libraries are bound inside a
/// container (whose image may have another C library, or none).
pub const SANDBOX_LIB_DIR: &str = "/run/gantry/lib";
/// The proxy socket's name in its directory.
pub const SOCKET_NAME: &str = "sock";
/// The port the forwarder listens on, on the sandbox's own loopback.
pub const PROXY_PORT: u16 = 47701;

/// How to start the forwarder: a program and the arguments before its own
/// (`gantry` and `sandbox-forward`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarder {
    /// The program, on the factory's machine.
    pub program: PathBuf,
    /// Its first arguments (the subcommand).
    pub args: Vec<OsString>,
}

impl Forwarder {
    /// The running `gantry` binary's `sandbox-forward` subcommand.
    pub fn current_exe() -> std::io::Result<Forwarder> {
        Ok(Forwarder {
            program: std::env::current_exe()?,
            args: vec!["sandbox-forward".into()],
        })
    }
}

/// The factory's network settings (gantry.toml `[factory] network`, `egress_allow`,
/// `egress_private_for_jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EgressConfig {
    /// The network of runs whose job names none.
    pub network: Network,
    /// Hosts every `model` run may reach (a model gateway, a package mirror). These
    /// may be private addresses: the operator chose them.
    pub allow: Vec<HostPort>,
    /// Whether hosts a job allows may resolve to loopback, private or link-local
    /// addresses. Off by default: a job must not reach the factory's own services.
    pub private_for_jobs: bool,
    /// How to start the forwarder inside a sandbox; without one, `model` runs fail
    /// to start, saying so.
    pub forwarder: Option<Forwarder>,
}

/// What a sandbox needs for a `model` run: the proxy's socket directory and the
/// forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressMount {
    /// The directory holding the run's proxy socket, on the factory's machine.
    pub socket_dir: PathBuf,
    /// The forwarder to start the run's command through.
    pub forwarder: Forwarder,
}

impl EgressMount {
    /// The argv that starts the run's command through the forwarder, given the
    /// forwarder's path as the sandbox sees it; the command's own argv follows.
    pub fn launcher(&self, forwarder: &str) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![forwarder.into()];
        argv.extend(self.forwarder.args.iter().cloned());
        argv.extend([
            "--socket".into(),
            format!("{SANDBOX_EGRESS_DIR}/{SOCKET_NAME}").into(),
            "--port".into(),
            PROXY_PORT.to_string().into(),
            "--".into(),
        ]);
        argv
    }
}

/// The bwrap arguments of a run's network: those before `--` (namespaces and
/// binds), and those after it, before the command (the forwarder).
pub fn bwrap_args(
    network: Network,
    egress: Option<&EgressMount>,
) -> (Vec<OsString>, Vec<OsString>) {
    let mut before: Vec<OsString> = Vec::new();
    let mut after = Vec::new();
    match (network, egress) {
        // `--unshare-all` gave the run a network namespace of its own (loopback
        // only); `full` takes the factory's back.
        (Network::Full, _) => before.push("--share-net".into()),
        (Network::None, _) | (Network::Model, None) => {}
        (Network::Model, Some(m)) => {
            before.extend([
                "--ro-bind".into(),
                m.forwarder.program.clone().into_os_string(),
                SANDBOX_FORWARDER.into(),
                "--ro-bind".into(),
                m.socket_dir.clone().into_os_string(),
                SANDBOX_EGRESS_DIR.into(),
            ]);
            after = m.launcher(SANDBOX_FORWARDER);
        }
    }
    (before, after)
}

/// The environment a `model` run gets: every spelling of the proxy variables naming
/// the forwarder, and `NO_PROXY` naming only loopback (which, in the run's own
/// network namespace, is the run itself: nothing there bypasses the proxy).
pub fn proxy_env(env: &mut Vec<(OsString, OsString)>) {
    let url = format!("http://127.0.0.1:{PROXY_PORT}");
    let vars = [
        ("HTTPS_PROXY", url.as_str()),
        ("HTTP_PROXY", &url),
        ("https_proxy", &url),
        ("http_proxy", &url),
        ("ALL_PROXY", &url),
        ("all_proxy", &url),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
        ("no_proxy", "localhost,127.0.0.1,::1"),
    ];
    for (k, v) in vars {
        env.retain(|(name, _)| name != k);
        env.push((k.into(), v.into()));
    }
}

/// The network a run of `spec` gets: its `sandbox.network`, else the factory's.
pub fn network_of(cfg: &EgressConfig, spec: &JobSpec) -> Network {
    spec.sandbox
        .as_ref()
        .and_then(|s| s.network)
        .unwrap_or(cfg.network)
}

/// The API host of an engine's model, when it has one.
pub fn engine_host(engine: EngineKind) -> Option<&'static str> {
    match engine {
        EngineKind::ClaudeCode => Some("api.anthropic.com"),
        EngineKind::Codex => Some("api.openai.com"),
        EngineKind::Command | EngineKind::Script => None,
    }
}

/// One allowlist entry, and whether it may resolve to a private address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The host and port.
    pub to: HostPort,
    /// Chosen by the operator (engine hosts, base URLs, gantry.toml), so it may be a
    /// private address; a job's own entries may only when the factory says so.
    pub trusted: bool,
}

/// The allowlist of a `model` run of `spec`: its engine's API host (and its
/// reviewer's), the base URLs the factory passes those engines
/// (`ANTHROPIC_BASE_URL`, `OPENAI_BASE_URL` from its environment), the factory's
/// `egress_allow`, and the job's own `allow`.
pub fn allowlist(
    cfg: &EgressConfig,
    engines: &crate::agent::EngineSettings,
    spec: &JobSpec,
) -> Vec<Allowed> {
    let mut out: Vec<Allowed> = Vec::new();
    let mut add = |to: HostPort, trusted: bool| {
        if let Some(a) = out.iter_mut().find(|a| a.to == to) {
            a.trusted |= trusted;
        } else {
            out.push(Allowed { to, trusted });
        }
    };
    let mut kinds = vec![spec.engine];
    if let gantry_core::review::ReviewChoice::Inline(r) = &spec.review {
        kinds.push(r.engine);
    }
    for kind in kinds {
        if let Some(host) = engine_host(kind) {
            add(
                HostPort {
                    host: host.to_string(),
                    port: 443,
                },
                true,
            );
        }
        let cli = match kind {
            EngineKind::ClaudeCode => &engines.claude,
            EngineKind::Codex => &engines.codex,
            _ => continue,
        };
        let urls = cli.env.iter().filter(|n| n.ends_with("_BASE_URL"));
        for url in urls.filter_map(std::env::var_os) {
            match url_host_port(&url.to_string_lossy()) {
                Some(hp) => add(hp, true),
                None => {
                    tracing::warn!(url = %url.to_string_lossy(), "a base URL the egress proxy cannot read; not allowed")
                }
            }
        }
    }
    for hp in &cfg.allow {
        add(hp.clone(), true);
    }
    for hp in spec.sandbox.iter().flat_map(|s| &s.allow) {
        add(hp.clone(), cfg.private_for_jobs);
    }
    out
}

/// The host and port of an `http://` or `https://` URL (default ports 80 and 443).
pub fn url_host_port(url: &str) -> Option<HostPort> {
    let (rest, port) = if let Some(r) = strip_prefix_ci(url, "https://") {
        (r, 443)
    } else {
        (strip_prefix_ci(url, "http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        HostPort::parse(authority).ok()
    } else {
        HostPort::parse(&format!("{authority}:{port}")).ok()
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Files of the host bound into a container: `(host file, name in the sandbox)`.
type LibBinds = Vec<(PathBuf, String)>;

/// The host's dynamic loader and the libraries `program` needs, as `ldd` lists them:
/// `(host file, name in `[`SANDBOX_LIB_DIR`]`)`, the loader first (named `ld.so`).
/// Empty for a static program, or when `ldd` cannot say (the container then starts the
/// program directly).
pub fn loader_libs(program: &Path) -> LibBinds {
    static CACHE: std::sync::Mutex<Vec<(PathBuf, LibBinds)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, libs)) = cache.iter().find(|(p, _)| p == program) {
        return libs.clone();
    }
    let out = std::process::Command::new("ldd")
        .arg(program)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    let libs = parse_ldd(&text);
    cache.push((program.to_path_buf(), libs.clone()));
    libs
}

/// Reads `ldd`'s output (see [`loader_libs`]).
fn parse_ldd(text: &str) -> LibBinds {
    let mut loader = None;
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some((name, rest)) = line.split_once(" => ") {
            let path = rest.split(" (").next().unwrap_or("").trim();
            if path.starts_with('/') {
                libs.push((PathBuf::from(path), name.trim().to_string()));
            }
        } else if line.starts_with('/') {
            let path = line.split(" (").next().unwrap_or("").trim();
            loader = Some((PathBuf::from(path), "ld.so".to_string()));
        }
    }
    match loader {
        Some(l) => std::iter::once(l).chain(libs).collect(),
        None => Vec::new(),
    }
}

/// The Docker binds and the argv prefix that start a container's command through the
/// forwarder: the forwarder and the socket directory, and (for a dynamic forwarder)
/// the host's loader and libraries, through which it is started.
pub fn docker_launch(m: &EgressMount) -> (Vec<String>, Vec<OsString>) {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let mut binds = vec![
        format!("{}:{SANDBOX_FORWARDER}:ro", text(&m.forwarder.program)),
        format!("{}:{SANDBOX_EGRESS_DIR}:ro", text(&m.socket_dir)),
    ];
    let libs = loader_libs(&m.forwarder.program);
    let mut argv = Vec::new();
    if !libs.is_empty() {
        for (host, name) in &libs {
            binds.push(format!("{}:{SANDBOX_LIB_DIR}/{name}:ro", text(host)));
        }
        argv.extend([
            OsString::from(format!("{SANDBOX_LIB_DIR}/ld.so")),
            "--library-path".into(),
            SANDBOX_LIB_DIR.into(),
        ]);
    }
    argv.extend(m.launcher(SANDBOX_FORWARDER));
    (binds, argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_read_loader_first() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = parse_ldd(text);
        assert_eq!(
            libs[0],
            (
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
                "ld.so".to_string()
            )
        );
        assert_eq!(libs[2].1, "libc.so.6");
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn base_urls_name_their_host_and_port() {
        let hp = |u: &str| url_host_port(u).map(|h| h.to_string());
        assert_eq!(
            hp("https://api.example.com/v1"),
            Some("api.example.com:443".into())
        );
        assert_eq!(hp("http://127.0.0.1:8080"), Some("127.0.0.1:8080".into()));
        assert_eq!(hp("HTTP://[::1]/x"), Some("[::1]:80".into()));
        assert_eq!(hp("http://user@host/"), None);
        assert_eq!(hp("ftp://host/"), None);
    }
}
