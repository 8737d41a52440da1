//! Tests of the conversion from the clap structs to a [`Command`](super::Command).

use super::*;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Invocation, UsageError> {
    let mut argv = vec!["gantry"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("clap accepts the arguments");
    Invocation::try_from(cli)
}

#[test]
fn clap_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn bench_check_defaults_and_flags() {
    let inv = parse(&["bench", "check"]).expect("valid");
    assert_eq!(inv.command, Command::BenchCheck { runs: 20 });
    let inv = parse(&["bench", "check", "--runs", "5"]).expect("valid");
    assert_eq!(inv.command, Command::BenchCheck { runs: 5 });
    assert!(parse(&["bench", "check", "--runs", "0"]).is_err());
}

#[test]
fn bench_secrets_defaults_and_flags() {
    let inv = parse(&["bench", "secrets"]).expect("valid");
    assert_eq!(inv.command, Command::BenchSecrets { mb: 32 });
    let inv = parse(&["bench", "secrets", "--mb", "4"]).expect("valid");
    assert_eq!(inv.command, Command::BenchSecrets { mb: 4 });
    assert!(parse(&["bench", "secrets", "--mb", "0"]).is_err());
}

#[test]
fn bench_metrics_defaults_and_flags() {
    let inv = parse(&["bench", "metrics"]).expect("valid");
    assert_eq!(
        inv.command,
        Command::BenchMetrics {
            jobs: 100_000,
            scrapes: 100,
            db: None
        }
    );
    let inv = parse(&[
        "bench",
        "metrics",
        "--jobs",
        "10",
        "--scrapes",
        "3",
        "--db",
        "postgres://u@h:5432/d",
    ])
    .expect("valid");
    assert_eq!(
        inv.command,
        Command::BenchMetrics {
            jobs: 10,
            scrapes: 3,
            db: Some("postgres://u@h:5432/d".to_string())
        }
    );
}

#[test]
fn serve_defaults() {
    let inv = parse(&["serve"]).expect("valid");
    let Command::Serve(opts) = inv.command else {
        panic!("expected serve, got {:?}", inv.command)
    };
    assert_eq!(opts.listen, "127.0.0.1:7700".parse().expect("addr"));
    assert_eq!(opts.lease_ttl, Duration::from_secs(60));
    assert_eq!(opts.reaper_interval, Duration::from_secs(2));
    assert_eq!(opts.kill_grace, Duration::from_secs(3));
    assert_eq!(opts.seats, 4);
    assert!(opts.embedded_factory && opts.push);
    assert_eq!(opts.tls, None);
    assert!(opts.capabilities.is_empty());
    assert_eq!(opts.sandbox, gantry_server::SandboxSettings::default());
}

#[test]
fn serve_flags() {
    let inv = parse(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--lease-ttl",
        "500ms",
        "--reaper-interval",
        "1m",
        "--seats",
        "2",
        "--no-factory",
        "--kill-grace",
        "1s",
        "--no-push",
        "--cap",
        "docker",
        "--cap",
        "gpu=a100",
        "--allow-unsandboxed-jobs",
        "--sandbox-ro",
        "/opt/toolchain",
        "--sandbox-rw",
        "/var/cache/shared",
        "--sandbox",
        "docker",
        "--docker-image",
        "my-agent:1",
    ])
    .expect("valid");
    assert_eq!(
        inv.command,
        Command::Serve(Box::new(ServeConfig {
            data_dir: inv.global.data_dir.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            lease_ttl: Duration::from_millis(500),
            reaper_interval: Duration::from_secs(60),
            seats: 2,
            embedded_factory: false,
            kill_grace: Duration::from_secs(1),
            push: false,
            capabilities: vec!["docker".into(), "gpu=a100".into()],
            db: None,
            config_file: None,
            limits: gantry_server::Limits::default(),
            sandbox: gantry_server::SandboxSettings {
                allow_unsandboxed: true,
                bwrap: "bwrap".into(),
                read_only: vec!["/opt/toolchain".into()],
                read_write: vec!["/var/cache/shared".into()],
                docker_default: true,
                docker: false,
                docker_image: Some("my-agent:1".into()),
                docker_socket: None,
            },
            tls: None,
            forwarder: None,
        }))
    );
}

#[test]
fn serve_tls_takes_both_files_or_neither() {
    let inv = parse(&["serve", "--tls-cert", "/c.pem", "--tls-key", "/k.pem"]).expect("valid");
    let Command::Serve(opts) = inv.command else {
        panic!("expected serve, got {:?}", inv.command)
    };
    assert_eq!(
        opts.tls,
        Some(gantry_server::TlsFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
        })
    );
    for half in [["--tls-cert", "/c.pem"], ["--tls-key", "/k.pem"]] {
        let argv = ["gantry", "serve", half[0], half[1]];
        assert!(Cli::try_parse_from(argv).is_err(), "{half:?} alone");
    }
}

#[test]
fn bad_values_name_argument_and_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["serve", "--lease-ttl", "soon"],
            "--lease-ttl <DURATION>",
            "soon",
        ),
        (
            &["serve", "--lease-ttl", "0s"],
            "--lease-ttl <DURATION>",
            "0s",
        ),
        (
            &["serve", "--reaper-interval", "2x"],
            "--reaper-interval <DURATION>",
            "2x",
        ),
        (
            &["serve", "--kill-grace=-1s"],
            "--kill-grace <DURATION>",
            "-1s",
        ),
        (&["serve", "--seats", "0"], "--seats <N>", "0"),
        (&["serve", "--seats", "many"], "--seats <N>", "many"),
        (
            &["serve", "--listen", "localhost"],
            "--listen <ADDR>",
            "localhost",
        ),
        (
            &["serve", "--cap", "bad cap"],
            "--cap <NAME[=VALUE]>",
            "bad cap",
        ),
        (&["ls", "--state", "done"], "--state <STATE>", "done"),
        (&["ls", "--limit", "0"], "--limit <N>", "0"),
        (&["show", "abc"], "<ID>", "abc"),
        (&["show", "0"], "<ID>", "0"),
        (
            &["token", "create", "--name", "x", "--scope", "root"],
            "--scope <SCOPE>",
            "root",
        ),
        (
            &["token", "create", "--name", "a b", "--scope", "reader"],
            "--name <NAME>",
            "a b",
        ),
        (&["bench", "queue", "--jobs", "ten"], "--jobs <N>", "ten"),
        (&["bench", "dispatch", "--runs", "0"], "--runs <N>", "0"),
        (&["bench", "metrics", "--jobs", "0"], "--jobs <N>", "0"),
        (
            &["bench", "metrics", "--scrapes", "x"],
            "--scrapes <S>",
            "x",
        ),
        (&["--url", "ftp://x", "ls"], "--url <URL>", "ftp://x"),
        (&["--url", "http://", "ls"], "--url <URL>", "http://"),
    ];
    for (args, arg, value) in cases {
        let err = parse(args).expect_err(&format!("{args:?} must be refused"));
        assert_eq!(err.arg, *arg, "{args:?}");
        assert_eq!(err.value, *value, "{args:?}");
        let text = err.to_string();
        assert!(
            text.contains(arg) && text.contains(value),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn unknown_state_lists_the_states() {
    let err = parse(&["ls", "--state", "done"]).expect_err("refused");
    assert!(err.reason.contains("succeeded"), "{}", err.reason);
}

#[test]
fn ls_takes_the_checking_state() {
    let inv = parse(&["ls", "--state", "checking"]).expect("valid");
    assert!(
        matches!(
            inv.command,
            Command::Ls {
                state: Some(JobState::Checking),
                ..
            }
        ),
        "{:?}",
        inv.command
    );
}

#[test]
fn token_source() {
    let inv = parse(&["--data-dir", "/tmp/d", "ls"]).expect("valid");
    assert_eq!(
        inv.global.token,
        TokenSource::File(PathBuf::from("/tmp/d/admin.token"))
    );
    let inv = parse(&["--token", "s3cret", "ls"]).expect("valid");
    assert_eq!(inv.global.token, TokenSource::Given("s3cret".into()));
}

#[test]
fn url_is_normalized() {
    let inv = parse(&["--url", "http://127.0.0.1:9/", "status"]).expect("valid");
    assert_eq!(inv.global.url, "http://127.0.0.1:9");
    let inv = parse(&["--url", "https://gantry.internal:7700/", "status"]).expect("valid");
    assert_eq!(inv.global.url, "https://gantry.internal:7700");
    let err = parse(&["--url", "ftp://gantry.internal", "status"]).expect_err("not http");
    assert!(err.reason.contains("https://"), "{}", err.reason);
}

#[test]
fn ca_file_is_global() {
    let inv = parse(&["ls"]).expect("valid");
    assert_eq!(inv.global.ca_file, None);
    let inv = parse(&["--ca-file", "/etc/gantry/ca.pem", "ls"]).expect("valid");
    assert_eq!(
        inv.global.ca_file,
        Some(PathBuf::from("/etc/gantry/ca.pem"))
    );
    let inv = parse(&["factory", "--ca-file", "/ca.pem"]).expect("valid");
    assert_eq!(inv.global.ca_file, Some(PathBuf::from("/ca.pem")));
}

#[test]
fn kill_forms() {
    let inv = parse(&["kill", "--all"]).expect("valid");
    assert_eq!(
        inv.command,
        Command::Kill {
            target: KillTarget::All,
            format: Format::Human
        }
    );
    let inv = parse(&["kill", "7", "--json"]).expect("valid");
    assert_eq!(
        inv.command,
        Command::Kill {
            target: KillTarget::Job(JobId(7)),
            format: Format::Json
        }
    );
    let mut argv = vec!["gantry", "kill"];
    assert!(
        Cli::try_parse_from(argv.clone()).is_err(),
        "kill needs an id or --all"
    );
    argv.extend(["3", "--all"]);
    assert!(
        Cli::try_parse_from(argv).is_err(),
        "an id and --all conflict"
    );
}
