//! The network of a run: which one it gets, and for `model` its egress proxy, whose
//! refusals go out as `sandbox.egress_denied` events.

use super::{AbortOnDrop, Supervisor};
use crate::egress::proxy::{Limits, Policy, Reported, RunProxy};
use crate::egress::{EgressMount, allowlist, network_of};
use crate::workspace::absolute;
use gantry_core::event::{NewEvent, SandboxEgressDenied};
use gantry_core::sandbox::{Network, SandboxKind};
use std::ffi::OsString;
use std::time::Duration;

/// Tries of one upload of refusals while the server is unreachable.
const UPLOAD_TRIES: u32 = 5;

/// The egress proxy of a `model` run, and the task uploading its refusals; both end
/// when it is dropped.
pub(super) struct RunEgress {
    _proxy: RunProxy,
    _uploader: AbortOnDrop<()>,
    mount: EgressMount,
}

impl Supervisor {
    /// What this run may reach: none when it runs without a sandbox (there is no
    /// wall to put the network behind), else its job's `network`, else the
    /// factory's default.
    pub(super) fn network(&self) -> Network {
        match self.sandbox_kind() {
            SandboxKind::None => Network::Full,
            _ => network_of(&self.ctx.cfg.egress, &self.claim.job.spec),
        }
    }

    /// The socket and forwarder of this run's egress proxy, when it has one.
    pub(super) fn egress_mount(&self) -> Option<EgressMount> {
        match &self.egress {
            Ok(Some(e)) => Some(e.mount.clone()),
            _ => None,
        }
    }

    /// Adds the proxy variables to `env` for a `model` run.
    pub(super) fn add_proxy_env(&self, env: &mut Vec<(OsString, OsString)>) {
        if self.network() == Network::Model {
            crate::egress::proxy_env(env);
        }
    }

    /// Starts the egress proxy of a `model` run (none for other networks); an error
    /// says why the run cannot start.
    pub(super) fn start_egress(&self) -> Result<Option<RunEgress>, String> {
        if self.network() != Network::Model {
            return Ok(None);
        }
        let cfg = &self.ctx.cfg;
        let Some(forwarder) = cfg.egress.forwarder.clone() else {
            return Err(format!(
                "factory {:?} cannot run `network: model`: it has no forwarder to start the run's command through",
                cfg.name
            ));
        };
        let dir = absolute(&crate::artifacts_dir(
            &cfg.data_dir,
            self.job(),
            self.run_id(),
        ))
        .join("egress");
        let policy = Policy {
            allowed: allowlist(&cfg.egress, &cfg.engines, &self.claim.job.spec),
        };
        let hosts: Vec<String> = policy.allowed.iter().map(|a| a.to.to_string()).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(crate::egress::proxy::MAX_DENIED_EVENTS);
        let proxy =
            RunProxy::start(&dir, policy, Limits::default(), tx).map_err(|e| e.to_string())?;
        tracing::info!(allowed = ?hosts, "egress proxy listening");
        let uploader = tokio::spawn(upload(
            self.ctx.coord.clone(),
            self.run_id(),
            self.epoch(),
            rx,
        ));
        Ok(Some(RunEgress {
            _proxy: proxy,
            _uploader: AbortOnDrop(uploader),
            mount: EgressMount {
                socket_dir: dir,
                forwarder,
            },
        }))
    }
}

/// Uploads each refusal as a `sandbox.egress_denied` event of the run, retrying a
/// while when the server is unreachable; the refused client waits for it (see
/// [`Reported`]), so the event is recorded before the run can see its `403`.
async fn upload(
    coord: std::sync::Arc<dyn gantry_protocol::Coordinator>,
    run: gantry_core::RunId,
    epoch: i64,
    mut rx: tokio::sync::mpsc::Receiver<Reported>,
) {
    // Each refusal's `done` is dropped once its upload is over, which lets the
    // refused client have its answer.
    while let Some(Reported {
        denied: d,
        done: _done,
    }) = rx.recv().await
    {
        let event = NewEvent::of(&SandboxEgressDenied {
            host: d.host,
            port: d.port,
            reason: d.reason,
        });
        let mut backoff =
            gantry_core::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..UPLOAD_TRIES {
            match coord.events(run, epoch, vec![event.clone()]).await {
                Ok(()) => break,
                Err(gantry_protocol::CoordError::Unavailable(_)) => {
                    tokio::time::sleep(backoff.next_delay()).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the server refused an egress event");
                    return;
                }
            }
        }
    }
}
