//! `gantry factory`: a remote factory in the foreground until SIGINT or SIGTERM.
//!
//! It is the same factory loop the server embeds, talking to the control plane over
//! HTTP instead of in process, so both are one code path.

use crate::command::{FactoryOptions, Global, TokenSource};
use crate::error::{CliError, Kind};
use crate::output;
use gantry_factory::{Factory, FactoryConfig, FactoryError, HttpCoordinator, Sandbox};
use gantry_protocol::{CoordError, ErrorKind};
use gantry_server::config::{CONFIG_FILE, ConfigFile};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The sandbox of a remote factory ([`gantry_server::SandboxSettings::choose`]). A
/// remote factory cannot tell an admin's job from a submitter's, so when it cannot
/// sandbox (and the operator did not opt out) it does not start at all.
async fn factory_sandbox(settings: &gantry_server::SandboxSettings) -> Result<Sandbox, CliError> {
    settings.choose().await.map_err(|e| {
        CliError::local("this factory cannot sandbox jobs")
            .cause(e.to_string())
            .hint("install bubblewrap (Debian: apt-get install bubblewrap), or start with --allow-unsandboxed-jobs if every job may see this machine as the factory does")
    })
}

/// `gantry factory`.
pub async fn run(global: &Global, opts: FactoryOptions) -> Result<(), CliError> {
    let token = match &global.token {
        TokenSource::Given(t) => t.clone(),
        TokenSource::File(path) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                CliError::new(
                    Kind::Usage,
                    format!("no token: cannot read {}", path.display()),
                )
                .cause(e.to_string())
                .hint("give the factory a token of scope factory: --token or GANTRY_TOKEN (`gantry token create --name NAME --scope factory` on the server makes one)")
            })?,
    };
    let coord = HttpCoordinator::with_ca_file(&global.url, &token, global.ca_file.as_deref())
        .map_err(|e| match e {
            CoordError::Refused {
                kind: ErrorKind::InvalidCaFile,
                message,
            } => CliError::new(Kind::Usage, message).hint(
                "--ca-file (GANTRY_CA_FILE) takes a PEM file of CA certificates (-----BEGIN CERTIFICATE----- blocks)",
            ),
            e => CliError::new(Kind::Usage, format!("cannot use server URL {}", global.url))
                .cause(e.to_string()),
        })?;
    // A remote factory reads only `[secrets]`, `[factory] secrets_file` and the sandbox
    // keys of `[factory]` of the file: the rest is the server's.
    let file = match &opts.config {
        Some(path) => ConfigFile::load(path, true),
        None => ConfigFile::load(&global.data_dir.join(CONFIG_FILE), false),
    }
    .map_err(|e| CliError::new(Kind::Usage, e.to_string()))?;
    let mut hidden_paths: Vec<PathBuf> = opts.config.iter().cloned().collect();
    if let TokenSource::File(path) = &global.token {
        hidden_paths.push(path.clone());
    }
    let cfg = FactoryConfig {
        name: opts.name.clone(),
        seats: opts.seats,
        capabilities: opts.capabilities.clone(),
        data_dir: global.data_dir.clone(),
        kill_grace: opts.kill_grace,
        leave_runs_on_shutdown: opts.leave_runs,
        min_free_memory_mb: opts.min_free_memory_mb,
        min_free_disk_mb: opts.min_free_disk_mb,
        // The server cannot read this factory's cache: it delivers what the factory
        // publishes in the source repository.
        publish_results: true,
        sandbox: factory_sandbox(&opts.sandbox).await?,
        hidden_paths,
        sandbox_read_only: opts.sandbox.read_only.clone(),
        sandbox_read_write: opts.sandbox.read_write.clone(),
        // The docker sandbox is the factory's own: its flags, then `[factory]`.
        docker: opts.sandbox.docker_config(&file.factory),
        // `network: model` runs start their command through this binary.
        egress: gantry_factory::egress::EgressConfig {
            forwarder: gantry_factory::egress::Forwarder::current_exe().ok(),
            ..file.egress
        },
        secrets: file.secrets,
        secrets_file: file.factory.secrets_file,
        ..FactoryConfig::default()
    };
    // The factory checks it too; checked here, the error is not taken for the server's.
    if let Some(path) = &cfg.secrets_file {
        gantry_factory::check_secrets_file(path).map_err(|e| {
            CliError::new(Kind::Usage, "this factory cannot use its secrets file")
                .cause(e.to_string())
        })?;
    }
    gantry_factory::private_dir(&cfg.data_dir).map_err(|e| {
        CliError::local(format!("cannot create data dir {}", cfg.data_dir.display()))
            .cause(e.to_string())
    })?;
    output::line(format!(
        "gantry factory {:?}: {} seat(s){} for {}, data in {}",
        opts.name,
        opts.seats,
        if opts.capabilities.is_empty() {
            String::new()
        } else {
            format!(", capabilities {}", opts.capabilities.join(", "))
        },
        global.url,
        cfg.data_dir.display()
    ));
    output::note("press Ctrl-C (or send SIGTERM) to stop");
    let (stop, stopped) = watch::channel(false);
    let factory = Factory::new(cfg, Arc::new(coord));
    let mut task = tokio::spawn(factory.run(stopped));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::local("cannot listen for SIGTERM").cause(e.to_string()))?;
    let finished = tokio::select! {
        res = &mut task => Some(res),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    let res = match finished {
        Some(res) => res,
        None => {
            output::note("gantry factory: stopping");
            // An error means every receiver is gone: the loop has stopped already.
            let _ = stop.send(true);
            task.await
        }
    };
    match res {
        Ok(Ok(())) => {
            output::note("gantry factory: stopped");
            Ok(())
        }
        Ok(Err(
            e @ FactoryError::Register {
                source:
                    CoordError::Refused {
                        kind: ErrorKind::UntrustedCertificate,
                        ..
                    },
                ..
            },
        )) => Err(
            CliError::new(Kind::Unreachable, format!("the factory stopped: {e}")).hint(
                "if a private CA signed the server's certificate, pass its certificate with --ca-file (GANTRY_CA_FILE); check too that the URL's host name is one the certificate names",
            ),
        ),
        Ok(Err(e)) => Err(
            CliError::new(Kind::Server, format!("the factory stopped: {e}"))
                .hint("check the server URL and that the token has scope factory (or admin)"),
        ),
        Err(e) => Err(CliError::new(Kind::Local, "the factory loop panicked").cause(e.to_string())),
    }
}
