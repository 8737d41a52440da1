//! `gantry serve`: the server with its embedded factory, in the foreground until
//! SIGINT or SIGTERM.

use crate::command::Global;
use crate::error::{CliError, Kind};
use crate::output;
use gantry_server::{ADMIN_TOKEN_FILE, RunningServer, ServeConfig, ServerError};

/// Maps a failure to start or stop the server, with a hint where one helps.
pub fn server_error(e: ServerError) -> CliError {
    let hint = match &e {
        ServerError::Bind { addr, .. } => Some(format!(
            "is another server already listening on {addr}? pass --listen with another address (port 0 picks a free one)"
        )),
        ServerError::Io { path, .. } => Some(format!(
            "check that {} can be created and written (--data-dir, GANTRY_DATA_DIR)",
            path.display()
        )),
        ServerError::Tls { .. } => Some(
            "--tls-cert takes the PEM certificate chain (the server's own first) and --tls-key its PEM private key".to_string(),
        ),
        _ => None,
    };
    let err = CliError::new(Kind::Local, format!("the server failed: {e}"));
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

/// Starts an embedded server, mapping its errors.
pub async fn start(mut cfg: ServeConfig) -> Result<RunningServer, CliError> {
    // `network: model` runs start their command through this binary's
    // `sandbox-forward` (see `gantry_factory::egress`).
    if cfg.forwarder.is_none() {
        cfg.forwarder = gantry_factory::egress::Forwarder::current_exe().ok();
    }
    gantry_server::start(cfg).await.map_err(server_error)
}

/// `gantry serve`.
pub async fn serve(global: &Global, cfg: ServeConfig) -> Result<(), CliError> {
    let server = start(cfg.clone()).await?;
    let data_dir =
        std::path::absolute(&global.data_dir).unwrap_or_else(|_| global.data_dir.clone());
    output::line(format!("gantry serve: listening on {}", server.url()));
    output::line(format!(
        "admin token: {} (the CLI reads it from there; or pass --token)",
        data_dir.join(ADMIN_TOKEN_FILE).display()
    ));
    output::line(if cfg.embedded_factory {
        format!(
            "embedded factory: {} seat(s){}",
            cfg.seats,
            if cfg.capabilities.is_empty() {
                String::new()
            } else {
                format!(", capabilities {}", cfg.capabilities.join(", "))
            }
        )
    } else {
        "embedded factory: off (--no-factory)".to_string()
    });
    output::note("press Ctrl-C (or send SIGTERM) to stop");
    server.wait().await.map_err(server_error)?;
    output::note("gantry serve: stopped");
    Ok(())
}
