//! The deployment files (deploy/: Dockerfile, compose file, Kubernetes manifests, helper
//! scripts) and docs/deploy.md stay true to the code: every `gantry` command line they
//! hold names a real subcommand with real flags (as declared in crates/cli/src/cli.rs),
//! every `GANTRY_*` variable is one the CLI reads, every HTTP path they probe is a route
//! of the server, and every metric they query is one the server exports.
//!
//! The files are read as text, without a YAML parser: a command line is found where a
//! token `gantry` is followed by a subcommand, or where a `command:`/`args:`/`CMD` array
//! starts with one (the image's entry point is `gantry`). So keep each command line on
//! one line.

use gantry_tidy::workspace_root;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Flags clap adds to every command.
const BUILTIN_FLAGS: [&str; 4] = ["--help", "-h", "--version", "-V"];

/// `GANTRY_*` names the deployment files define themselves (compose interpolation),
/// not variables the binary reads.
const DEPLOY_ONLY_VARS: [&str; 1] = ["GANTRY_IMAGE"];

/// One option of a clap struct: its spellings and whether it takes a value.
#[derive(Debug, Clone)]
struct Opt {
    names: Vec<String>,
    takes_value: bool,
}

/// The command tree of the CLI.
#[derive(Debug, Default)]
struct CliModel {
    /// Options of the root struct that are `global = true`.
    globals: Vec<Opt>,
    /// Subcommand path (e.g. "token create") → its options.
    commands: BTreeMap<String, Vec<Opt>>,
}

impl CliModel {
    fn top_level(&self) -> BTreeSet<&str> {
        self.commands
            .keys()
            .map(|k| k.split(' ').next().unwrap_or(k))
            .collect()
    }

    /// Adds every leaf subcommand below `cmd`, named by its path (`token create`).
    fn add_subcommands(&mut self, cmd: &clap::Command, prefix: &str) {
        for sub in cmd.get_subcommands() {
            let path = format!("{prefix}{}", sub.get_name());
            if sub.has_subcommands() {
                self.add_subcommands(sub, &format!("{path} "));
            } else {
                let opts = sub
                    .get_arguments()
                    .filter(|a| !a.is_positional())
                    .map(opt_of)
                    .collect();
                self.commands.insert(path, opts);
            }
        }
    }
}

/// The spellings of option `arg` and whether it takes a value.
fn opt_of(arg: &clap::Arg) -> Opt {
    let mut names = Vec::new();
    if let Some(long) = arg.get_long() {
        names.push(format!("--{long}"));
    }
    for alias in arg.get_all_aliases().unwrap_or_default() {
        names.push(format!("--{alias}"));
    }
    if let Some(short) = arg.get_short() {
        names.push(format!("-{short}"));
    }
    Opt {
        names,
        takes_value: arg.get_action().takes_values(),
    }
}

/// The command tree of the CLI, from clap itself (`CommandFactory`), so the checks
/// below see exactly what the binary parses.
fn cli_model() -> CliModel {
    use clap::CommandFactory;
    let root = gantry_cli::cli::Cli::command();
    let mut model = CliModel {
        globals: root
            .get_arguments()
            .filter(|a| a.is_global_set())
            .map(opt_of)
            .collect(),
        commands: BTreeMap::new(),
    };
    model.add_subcommands(&root, "");
    model
}

/// Every file under deploy/, sorted.
fn deploy_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![workspace_root().join("deploy")];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).expect("deploy/ and its folders are readable");
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// The lines worth reading for commands: not comments; in markdown, only the lines of
/// fenced code blocks. Each with its 1-based line number.
fn command_lines(path: &Path, text: &str) -> Vec<(usize, String)> {
    let markdown = path.extension().is_some_and(|e| e == "md");
    let mut in_fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if markdown && t.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if (markdown && !in_fence) || t.starts_with('#') {
            continue;
        }
        out.push((i + 1, line.to_string()));
    }
    out
}

/// A line split into shell-ish words: quotes, brackets, commas and `$(`…`)` removed.
fn words(line: &str) -> Vec<String> {
    let cleaned: String = line
        .replace("$(", " ")
        .chars()
        .map(|c| match c {
            '[' | ']' | ',' | '"' | '\'' | '(' | ')' | '`' => ' ',
            c => c,
        })
        .collect();
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// A word that ends a command line in a shell.
fn ends_command(w: &str) -> bool {
    w.starts_with(['|', '&', ';', '>', '<', '\\']) || w.ends_with(';') || w.contains(">/")
}

/// One `gantry` command line found in a file.
#[derive(Debug)]
struct Invocation {
    at: String,
    args: Vec<String>,
}

fn is_gantry_word(w: &str) -> bool {
    w == "gantry" || w.ends_with("/gantry")
}

/// Every `gantry` command line in `path`: explicit (`gantry serve ...`) or implicit (a
/// `command:`/`args:` list or a Dockerfile `CMD` that starts with a subcommand).
fn invocations(path: &Path, top: &BTreeSet<&str>) -> Vec<Invocation> {
    let text = fs::read_to_string(path).expect("deploy file readable");
    let mut out = Vec::new();
    for (n, line) in command_lines(path, &text) {
        let ws = words(&line);
        let at = format!("{}:{n}", rel(path));
        let take = |from: usize| -> Vec<String> {
            ws[from..]
                .iter()
                .take_while(|w| !ends_command(w))
                .cloned()
                .collect()
        };
        let implicit = matches!(
            ws.first().map(String::as_str),
            Some("command:" | "args:" | "CMD")
        ) && ws.get(1).is_some_and(|w| top.contains(w.as_str()));
        if implicit {
            out.push(Invocation {
                at: at.clone(),
                args: take(1),
            });
            continue;
        }
        for i in 0..ws.len() {
            if !is_gantry_word(&ws[i]) {
                continue;
            }
            // `-n gantry`, `namespace: gantry`, `part-of: gantry`: a value, not a command.
            // (`tini -- gantry serve` is a command: `--` ends tini's options.)
            let prev = if i > 0 { ws[i - 1].as_str() } else { "" };
            if (prev.starts_with('-') && prev != "--") || prev.ends_with(':') {
                continue;
            }
            let Some(next) = ws.get(i + 1) else {
                continue;
            };
            // `docker exec gantry gantry ls`: the container's name, then the command.
            if is_gantry_word(next) {
                continue;
            }
            let wordlike = next.starts_with("--")
                || (next.starts_with(|c: char| c.is_ascii_lowercase())
                    && next.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
            if wordlike {
                out.push(Invocation {
                    at: at.clone(),
                    args: take(i + 1),
                });
            }
        }
    }
    out
}

/// Checks one command line against the model; returns the subcommand path it runs.
fn check_invocation(model: &CliModel, inv: &Invocation) -> Result<String, String> {
    let find = |opts: &[Opt], flag: &str| -> Option<Opt> {
        opts.iter()
            .find(|o| o.names.iter().any(|n| n == flag))
            .cloned()
    };
    let mut args = inv.args.iter().peekable();
    let mut path = String::new();
    // Global options may come before the subcommand.
    while let Some(a) = args.next() {
        if a.starts_with('-') {
            let flag = a.split('=').next().unwrap_or(a);
            let opt = find(&model.globals, flag)
                .ok_or_else(|| format!("{}: `gantry {a}` is not a global option", inv.at))?;
            if opt.takes_value && !a.contains('=') {
                args.next();
            }
            continue;
        }
        path = a.clone();
        break;
    }
    // Descend into nested subcommands (`token create`).
    while !model.commands.contains_key(&path) {
        let deeper = args
            .peek()
            .map(|next| format!("{path} {next}"))
            .filter(|p| {
                model
                    .commands
                    .keys()
                    .any(|k| k == p || k.starts_with(&format!("{p} ")))
            });
        match deeper {
            Some(p) => {
                args.next();
                path = p;
            }
            None => {
                return Err(format!(
                    "{}: `gantry {}` runs subcommand `{path}`, which crates/cli/src/cli.rs does not declare (it has: {})",
                    inv.at,
                    inv.args.join(" "),
                    model
                        .commands
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    let own = &model.commands[&path];
    let mut args: Vec<&String> = args.collect();
    args.reverse();
    while let Some(a) = args.pop() {
        if !a.starts_with('-') || a == "-" || a == "--" {
            continue;
        }
        let flag = a.split('=').next().unwrap_or(a);
        if BUILTIN_FLAGS.contains(&flag) {
            continue;
        }
        let opt = find(own, flag)
            .or_else(|| find(&model.globals, flag))
            .ok_or_else(|| {
                format!(
                    "{}: `gantry {path}` has no option `{flag}` in crates/cli/src/cli.rs (line: gantry {})",
                    inv.at,
                    inv.args.join(" ")
                )
            })?;
        if opt.takes_value && !a.contains('=') {
            args.pop();
        }
    }
    Ok(path)
}

#[test]
fn deploy_cli_model_reads_the_clap_command() {
    // The checks below are only as good as this model: make sure it holds what is
    // known to be there.
    let model = cli_model();
    let serve = model
        .commands
        .get("serve")
        .expect("`serve` is read from cli.rs");
    assert!(
        serve
            .iter()
            .any(|o| o.names.contains(&"--listen".to_string()) && o.takes_value),
        "serve's --listen is read as an option with a value: {serve:?}"
    );
    assert!(
        serve
            .iter()
            .any(|o| o.names.contains(&"--no-factory".to_string()) && !o.takes_value),
        "serve's --no-factory is read as a switch: {serve:?}"
    );
    assert!(
        model.commands.contains_key("token create"),
        "nested subcommands are read: {:?}",
        model.commands.keys()
    );
    for global in ["--url", "--token", "--data-dir"] {
        assert!(
            model
                .globals
                .iter()
                .any(|o| o.names.iter().any(|n| n == global)),
            "global option {global} is read: {:?}",
            model.globals
        );
    }
}

#[test]
fn deploy_gantry_command_lines_use_real_subcommands_and_flags() {
    let model = cli_model();
    let top = model.top_level();
    let mut files = deploy_files();
    files.push(workspace_root().join("docs/deploy.md"));
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut errors = Vec::new();
    for file in &files {
        for inv in invocations(file, &top) {
            match check_invocation(&model, &inv) {
                Ok(path) => {
                    seen.insert((rel(file), path));
                }
                Err(e) => errors.push(e),
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The command lines this test exists for must have been found, or a change of
    // layout would make it pass by reading nothing.
    for (file, cmd) in [
        ("deploy/Dockerfile", "serve"),
        ("deploy/compose.yaml", "serve"),
        ("deploy/compose.yaml", "factory"),
        ("deploy/k8s/server.yaml", "serve"),
        ("deploy/k8s/factory.yaml", "factory"),
        ("deploy/factory-tokens.sh", "token create"),
        ("deploy/k8s-factory-tokens.sh", "token create"),
        ("docs/deploy.md", "serve"),
        ("docs/deploy.md", "factory"),
        ("docs/deploy.md", "token create"),
    ] {
        assert!(
            seen.contains(&(file.to_string(), cmd.to_string())),
            "no `gantry {cmd}` command line found in {file}; found: {seen:?}"
        );
    }
}

#[test]
fn deploy_gantry_variables_are_read_by_the_cli() {
    let root = workspace_root();
    let mut known: BTreeSet<String> = DEPLOY_ONLY_VARS.iter().map(|s| s.to_string()).collect();
    for file in gantry_tidy::rust_files(&root.join("crates/cli/src")) {
        let text = fs::read_to_string(&file).expect("cli source readable");
        known.extend(gantry_vars(&text));
    }
    let mut files = deploy_files();
    files.push(root.join("docs/deploy.md"));
    let mut used = 0;
    for file in files {
        let text = fs::read_to_string(&file).expect("deploy file readable");
        for var in gantry_vars(&text) {
            used += 1;
            assert!(
                known.contains(&var),
                "{} uses {var}, which the CLI does not read (known: {known:?})",
                rel(&file)
            );
        }
    }
    assert!(used > 0, "the deploy files set no GANTRY_* variable at all");
}

/// Every `GANTRY_[A-Z_]+` name in `text`.
fn gantry_vars(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("GANTRY_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let name = name.trim_end_matches('_').to_string();
        if name.len() > "GANTRY_".len() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn deploy_probed_paths_are_server_routes() {
    let root = workspace_root();
    let http = fs::read_to_string(root.join("crates/server/src/http.rs"))
        .expect("crates/server/src/http.rs exists");
    let mut files = deploy_files();
    files.push(root.join("docs/deploy.md"));
    let mut paths = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("deploy file readable");
        for (i, line) in text.lines().enumerate() {
            let at = format!("{}:{}", rel(file), i + 1);
            // URLs of a Gantry server: the image listens on 7700, compose maps 7701/7702.
            for port in [":7700/", ":7701/", ":7702/"] {
                let mut rest = line;
                while let Some(p) = rest.find(port) {
                    let path: String = rest[p + port.len() - 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || "/_-{}".contains(*c))
                        .collect();
                    paths.push((at.clone(), path));
                    rest = &rest[p + port.len()..];
                }
            }
            let t = line.trim_start().trim_start_matches("- ");
            for key in ["path: ", "metrics_path: "] {
                if let Some(v) = t.strip_prefix(key) {
                    paths.push((at.clone(), v.trim().trim_matches('"').to_string()));
                }
            }
        }
    }
    assert!(
        paths.iter().any(|(_, p)| p == "/v1/health") && paths.iter().any(|(_, p)| p == "/metrics"),
        "the health probe and the metrics scrape were found: {paths:?}"
    );
    for (at, path) in paths {
        assert!(
            http.contains(&format!(".route(\"{path}\"")),
            "{at}: {path} is not a route in crates/server/src/http.rs"
        );
    }
}

#[test]
fn deploy_queried_metrics_are_exported() {
    let root = workspace_root();
    let metrics = fs::read_to_string(root.join("crates/server/src/metrics.rs"))
        .expect("crates/server/src/metrics.rs exists");
    let adapter = fs::read_to_string(root.join("deploy/k8s/prometheus-adapter.yaml"))
        .expect("deploy/k8s/prometheus-adapter.yaml exists");
    // Names the adapter defines (`as: "..."`) are external metrics, not exported ones.
    let aliases: BTreeSet<String> = adapter
        .lines()
        .filter_map(|l| l.trim().strip_prefix("as: "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect();
    assert!(
        !aliases.is_empty(),
        "the adapter rules define external metrics"
    );
    let exported = |name: &str| {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        metrics.contains(&format!("\"{base}")) || metrics.contains(&format!("\"{name}"))
    };
    let files = [
        root.join("deploy/k8s/prometheus-adapter.yaml"),
        root.join("deploy/k8s/hpa.yaml"),
        root.join("deploy/prometheus.yml"),
        root.join("docs/deploy.md"),
    ];
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).expect("file readable");
        for name in metric_names(&text) {
            checked += 1;
            assert!(
                exported(&name) || aliases.contains(&name),
                "{} names metric {name}, which crates/server/src/metrics.rs does not export and the adapter does not define",
                rel(file)
            );
        }
    }
    assert!(checked > 0, "no metric names found to check");
    let hpa = fs::read_to_string(root.join("deploy/k8s/hpa.yaml")).expect("hpa.yaml exists");
    let scaled_on: Vec<String> = hpa
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name: "))
        .filter(|v| v.starts_with("gantry_"))
        .map(str::to_string)
        .collect();
    assert!(
        !scaled_on.is_empty(),
        "deploy/k8s/hpa.yaml scales on a gantry metric"
    );
    for name in scaled_on {
        assert!(
            aliases.contains(&name),
            "deploy/k8s/hpa.yaml scales on {name}, which prometheus-adapter.yaml does not define"
        );
    }
}

/// Every `gantry_[a-z_]+` word in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("gantry_") {
        let before = text.len() - rest.len() + at;
        let prev = text[..before].chars().next_back();
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // `foo_gantry_x` or a path like `crates/gantry_x` is not a metric name.
        if prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '-') {
            continue;
        }
        let name = name.trim_end_matches('_').to_string();
        if name.len() > "gantry_".len() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn deploy_k8s_manifests_are_named_objects() {
    let dir = workspace_root().join("deploy/k8s");
    let mut count = 0;
    for file in deploy_files().into_iter().filter(|p| p.starts_with(&dir)) {
        assert!(
            file.extension().is_some_and(|e| e == "yaml"),
            "{}: manifests end in .yaml",
            rel(&file)
        );
        let text = fs::read_to_string(&file).expect("manifest readable");
        for (n, doc) in text.split("\n---\n").enumerate() {
            let top: Vec<&str> = doc
                .lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.trim().is_empty())
                .collect();
            if top.is_empty() {
                continue;
            }
            count += 1;
            let at = format!("{} document {}", rel(&file), n + 1);
            for key in ["apiVersion: ", "kind: "] {
                assert!(
                    top.iter()
                        .any(|l| l.starts_with(key) && l.len() > key.len()),
                    "{at}: no top-level `{key}`"
                );
            }
            let lines: Vec<&str> = doc.lines().collect();
            let meta = lines
                .iter()
                .position(|l| *l == "metadata:")
                .unwrap_or_else(|| panic!("{at}: no top-level `metadata:`"));
            let named = lines[meta + 1..]
                .iter()
                .take_while(|l| l.starts_with(' ') || l.trim().is_empty())
                .any(|l| l.starts_with("  name: ") && l.len() > "  name: ".len());
            assert!(named, "{at}: metadata has no `name:`");
        }
    }
    assert!(
        count >= 8,
        "expected the Kubernetes objects under deploy/k8s, found {count}"
    );
}

#[test]
fn deploy_guide_names_every_deploy_file() {
    let root = workspace_root();
    let guide = fs::read_to_string(root.join("docs/deploy.md")).expect("docs/deploy.md exists");
    for file in deploy_files() {
        let name = rel(&file);
        assert!(
            guide.contains(&name),
            "docs/deploy.md must mention {name} (say what it is for)"
        );
    }
}
