//! `gantry.toml` (issue 3): the documented example parses to what it says, and every
//! bad key or value is an error naming it.

use gantry_server::config::{ConfigError, ConfigFile};
use std::path::Path;
use std::time::Duration;

/// The ```toml block of docs/engines.md: the example people copy must stay valid.
fn documented_example() -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/engines.md"
    ))
    .expect("docs/engines.md");
    let start = doc
        .find("```toml\n")
        .expect("a toml block in docs/engines.md")
        + "```toml\n".len();
    let end = doc[start..].find("```").expect("the end of the toml block") + start;
    doc[start..end].to_string()
}

fn invalid(text: &str) -> String {
    match ConfigFile::parse(Path::new("/etc/gantry.toml"), text) {
        Err(ConfigError::Invalid { path, message }) => {
            assert_eq!(path, Path::new("/etc/gantry.toml"));
            message
        }
        other => panic!("expected an invalid-config error for {text:?}, got {other:?}"),
    }
}

#[test]
fn issue3_the_documented_example_parses() {
    let cfg = ConfigFile::parse(Path::new("docs/engines.md"), &documented_example())
        .expect("the documented example is valid");
    assert_eq!(
        cfg.factory.checkpoint_interval,
        Some(Duration::from_secs(300))
    );
    assert_eq!(cfg.factory.min_free_memory_mb, Some(2048));
    assert_eq!(cfg.factory.min_free_disk_mb, Some(1024));
    assert_eq!(
        cfg.factory.secrets_file.as_deref(),
        Some(Path::new("/etc/gantry/agent-secrets.toml"))
    );
    let claude = cfg
        .engines
        .claude_code
        .clone()
        .expect("claude-code section");
    assert_eq!(claude.binary.as_deref(), Some("claude"));
    assert_eq!(
        claude.env,
        Some(vec![
            "ANTHROPIC_API_KEY".to_string(),
            "ANTHROPIC_BASE_URL".to_string()
        ])
    );
    let codex = cfg.engines.codex.clone().expect("codex section");
    assert_eq!(codex.env, Some(vec!["OPENAI_API_KEY".to_string()]));
    // The documented limits are the defaults.
    let mut limits = gantry_server::Limits {
        max_connections: 1,
        ..gantry_server::Limits::default()
    };
    cfg.limits.apply_to(&mut limits);
    assert_eq!(limits, gantry_server::Limits::default());
    let price = cfg.prices.price("gpt-5-codex").expect("price");
    assert_eq!(price.output_per_mtok, 10.0);
    let settings = cfg.engine_settings();
    assert_eq!(settings.claude.binary, "claude");
    assert_eq!(settings.codex.env, vec!["OPENAI_API_KEY"]);
    assert_eq!(settings.checkpoint_interval, Duration::from_secs(300));
    assert!(
        settings.prices.price("claude-sonnet-4").is_some(),
        "the built-in prices stay under the file's"
    );
}

#[test]
fn issue3_an_empty_or_missing_file_is_the_default() {
    assert_eq!(
        ConfigFile::parse(Path::new("x.toml"), "").expect("empty"),
        ConfigFile::default()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("gantry.toml");
    assert_eq!(
        ConfigFile::load(&missing, false).expect("optional"),
        ConfigFile::default()
    );
    match ConfigFile::load(&missing, true) {
        Err(ConfigError::Read { path, .. }) => assert_eq!(path, missing),
        other => panic!("a required missing file is an error, got {other:?}"),
    }
}

#[test]
fn issue3_bad_keys_and_values_are_named() {
    let m = invalid("[factory]\ncheckpoint_intervall = \"5m\"\n");
    assert!(
        m.contains("checkpoint_intervall") && m.contains("line 2"),
        "{m}"
    );
    let m = invalid("[factory]\ncheckpoint_interval = \"soon\"\n");
    assert!(m.contains("invalid duration \"soon\""), "{m}");
    let m = invalid("[factory]\ncheckpoint_interval = \"0s\"\n");
    assert!(m.contains("longer than zero"), "{m}");
    let m = invalid("[factory]\nmin_free_memory_mb = -5\n");
    assert!(m.contains("min_free_memory_mb"), "{m}");
    let m = invalid("[engines.aider]\nbinary = \"aider\"\n");
    assert!(m.contains("aider"), "{m}");
    let m = invalid("[engines.codex]\nenv = [\"OPENAI-KEY\"]\n");
    assert!(
        m.contains("engines.codex.env") && m.contains("OPENAI-KEY"),
        "{m}"
    );
    let m = invalid("[engines.claude-code]\nbinary = \" \"\n");
    assert!(m.contains("engines.claude-code.binary is empty"), "{m}");
    let m = invalid("[prices.\"gpt-5\"]\ninput_per_mtok = \"cheap\"\n");
    assert!(m.contains("input_per_mtok") || m.contains("cheap"), "{m}");
    let m = invalid("factory = 3\n");
    assert!(m.contains("factory"), "{m}");
}

#[test]
fn issue11_secrets_are_read_with_the_keys_of_a_repository_secrets_file() {
    let cfg = ConfigFile::parse(Path::new("docs/engines.md"), &documented_example())
        .expect("the documented example is valid");
    assert_eq!(cfg.secrets.rules.len(), 1);
    assert_eq!(cfg.secrets.rules[0].id, "acme-token");
    assert_eq!(cfg.secrets.allowlist.paths, ["tests/fixtures/**"]);
    assert_eq!(
        ConfigFile::parse(Path::new("gantry.toml"), "")
            .expect("empty")
            .secrets,
        gantry_factory::SecretsConfig::default()
    );

    for (text, key) in [
        ("[secrets]\nrulez = []\n", "secrets.rulez"),
        (
            "[[secrets.rule]]\nid = \"x\"\nregex = '('\n",
            "secrets.rule[0].regex",
        ),
        (
            "[secrets]\ndisable = [\"no-such-rule\"]\n",
            "secrets.disable[0]",
        ),
        ("[secrets.allowlist]\npath = []\n", "secrets.allowlist"),
    ] {
        let e = ConfigFile::parse(Path::new("/etc/gantry.toml"), text)
            .expect_err("a wrong [secrets] key or value");
        assert!(matches!(e, ConfigError::Secrets(_)), "{e:?}");
        let message = e.to_string();
        assert!(
            message.starts_with("config file /etc/gantry.toml: ") && message.contains(key),
            "{message}"
        );
    }
}

#[test]
fn issue12_a_relative_secrets_file_is_taken_from_the_config_files_directory() {
    let parse = |text: &str| {
        ConfigFile::parse(Path::new("/etc/gantry/gantry.toml"), text)
            .expect("valid")
            .factory
            .secrets_file
    };
    assert_eq!(
        parse("[factory]\nsecrets_file = \"agents.toml\"\n").as_deref(),
        Some(Path::new("/etc/gantry/agents.toml"))
    );
    assert_eq!(
        parse("[factory]\nsecrets_file = \"/srv/s.toml\"\n").as_deref(),
        Some(Path::new("/srv/s.toml"))
    );
    assert_eq!(parse(""), None);
    let message = invalid("[factory]\nsecrets_file = \"\"\n");
    assert!(
        message.contains("factory.secrets_file is empty"),
        "{message}"
    );
}

#[test]
fn issue12_the_factory_sandbox_keys_and_flags_make_the_docker_config() {
    let cfg = ConfigFile::parse(
        Path::new("g.toml"),
        "[factory]\nsandbox = \"docker\"\ndocker_image = \"my-agent:1\"\ndocker_engine_wait = \"2m\"\n",
    )
    .expect("valid");
    let flags = gantry_server::SandboxSettings::default();
    let docker = flags.docker_config(&cfg.factory).expect("docker is on");
    assert!(docker.default, "docker is the default sandbox");
    assert_eq!(docker.image, "my-agent:1");
    assert_eq!(docker.socket, Path::new("/var/run/docker.sock"));
    assert_eq!(docker.engine_wait, std::time::Duration::from_secs(120));
    // A flag wins over the file; `--docker` offers it without making it the default.
    let flags = gantry_server::SandboxSettings {
        docker: true,
        docker_image: Some("flag-agent:2".to_string()),
        ..gantry_server::SandboxSettings::default()
    };
    let docker = flags
        .docker_config(&ConfigFile::default().factory)
        .expect("docker is on");
    assert!(!docker.default);
    assert_eq!(docker.image, "flag-agent:2");
    assert_eq!(
        docker.engine_wait,
        gantry_factory::docker::DEFAULT_ENGINE_WAIT,
        "ten minutes unless set"
    );
    assert_eq!(
        gantry_server::SandboxSettings::default().docker_config(&ConfigFile::default().factory),
        None,
        "off unless asked for"
    );
    let message = invalid("[factory]\nsandbox = \"none\"\n");
    assert!(message.contains("factory.sandbox"), "{message}");
    assert!(message.contains("--allow-unsandboxed-jobs"), "{message}");
    let message = invalid("[factory]\ndocker_engine_wait = \"soon\"\n");
    assert!(message.contains("docker_engine_wait"), "{message}");
    let message = invalid("[factory]\ndocker_imgae = \"x\"\n");
    assert!(message.contains("docker_imgae"), "{message}");
}

#[test]
fn issue12_the_factory_network_keys_are_read_and_bad_values_named() {
    use gantry_core::sandbox::Network;
    let cfg = ConfigFile::parse(
        Path::new("g.toml"),
        "[factory]\nnetwork = \"model\"\negress_allow = [\"llm.internal:8080\", \"Mirror.example\"]\negress_private_for_jobs = true\n",
    )
    .expect("valid");
    assert_eq!(cfg.egress.network, Network::Model);
    let allow: Vec<String> = cfg.egress.allow.iter().map(|h| h.to_string()).collect();
    assert_eq!(allow, ["llm.internal:8080", "mirror.example:443"]);
    assert!(cfg.egress.private_for_jobs);
    assert_eq!(cfg.egress.forwarder, None, "the binary sets it");
    let default = ConfigFile::default();
    assert_eq!(default.egress.network, Network::None);
    assert!(!default.egress.private_for_jobs);

    let message = invalid("[factory]\nnetwork = \"lan\"\n");
    assert!(message.contains("factory.network"), "{message}");
    assert!(message.contains("\"lan\""), "{message}");
    let message = invalid("[factory]\negress_allow = [\"ok.example\", \"bad.example:0\"]\n");
    assert!(message.contains("factory.egress_allow"), "{message}");
    assert!(message.contains("\"bad.example:0\""), "{message}");
    let many: Vec<String> = (0..100).map(|i| format!("\"h{i}.example\"")).collect();
    let message = invalid(&format!(
        "[factory]\negress_allow = [{}]\n",
        many.join(", ")
    ));
    assert!(message.contains("100 entries; at most 64"), "{message}");
}

#[test]
fn issue12_the_sandbox_docs_example_parses() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/sandboxes.md"
    ))
    .expect("docs/sandboxes.md");
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = doc[start..].find("```").expect("its end") + start;
    let cfg = ConfigFile::parse(Path::new("docs/sandboxes.md"), &doc[start..end])
        .expect("the documented [factory] keys parse");
    assert_eq!(cfg.egress.allow[0].to_string(), "llm-gateway.internal:8080");
}
