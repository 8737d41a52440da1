//! Wire types of the HTTP API (`/v1`) that only the two ends speak: requests and
//! answers the store never sees. The records the store shares with the wire (claims,
//! leases, finish reports, tokens) are in `gantry_core::api` and re-exported by this
//! crate's root.

use gantry_core::api::{Heartbeat, Scope, Submitted, TokenInfo};
use gantry_core::event::NewEvent;
use gantry_core::time::Millis;
use gantry_core::{FactoryId, JobId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One job file to submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitFile {
    /// File name, used in error messages.
    pub file: String,
    /// The whole file: front matter and body.
    pub text: String,
    /// Directory that relative `repo` paths are resolved against.
    #[serde(default)]
    pub dir: Option<String>,
}

/// `POST /v1/jobs`: a batch of job files, stored all or nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The files, in order; later files may depend on earlier ones' idempotency keys
    /// and vice versa.
    pub jobs: Vec<SubmitFile>,
}

/// Response of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// One entry per submitted file, in order.
    pub jobs: Vec<Submitted>,
}

/// Response of `POST /v1/factories`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    /// The factory's id.
    pub id: FactoryId,
}

/// Response of a heartbeat: how often to send the next ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Send the next heartbeat within this many milliseconds.
    pub interval_ms: u64,
    /// A factory not heard from (heartbeat, renewal or registration) for this many
    /// milliseconds is listed as down.
    pub down_after_ms: u64,
}

/// Whether a factory is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Heard from within the server's `down_after`.
    Up,
    /// Silent for longer than that: its leases expire as usual.
    Down,
}

impl Health {
    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One factory as `GET /v1/factories` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactoryStatus {
    /// Id.
    pub id: FactoryId,
    /// Name.
    pub name: String,
    /// Maximum concurrent runs.
    pub seats: u32,
    /// Capabilities, `name` or `name=value`.
    pub capabilities: Vec<String>,
    /// Jobs running now under a lease of this factory.
    pub running: u32,
    /// Last registration, heartbeat or lease renewal, by the store's clock.
    #[serde(with = "gantry_core::time::rfc3339_millis")]
    pub last_seen: Millis,
    /// How long before the listing that was, by the store's clock (so a client's
    /// clock skew does not matter).
    pub last_seen_ago_ms: u64,
    /// Figures of the last heartbeat.
    #[serde(flatten)]
    pub stats: Heartbeat,
    /// Up, or down when silent for longer than the server's `down_after`.
    pub health: Health,
}

/// `POST /v1/factories/{id}/claim`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// How long to wait for a claimable job before answering 204.
    #[serde(default)]
    pub wait_s: u64,
}

/// `POST /v1/runs/{id}/renew`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The epoch of the lease being renewed.
    pub epoch: i64,
}

/// `POST /v1/runs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsUpload {
    /// The epoch of the run's lease.
    pub epoch: i64,
    /// Events, in order.
    pub events: Vec<NewEvent>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateToken {
    /// Unique name.
    pub name: String,
    /// Scope.
    pub scope: Scope,
}

/// Response of `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The stored token.
    pub info: TokenInfo,
    /// The bearer secret.
    pub token: String,
}

/// Answer of `POST /v1/kill-all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KilledAll {
    /// The jobs that were asked to stop.
    pub jobs: Vec<JobId>,
}

/// Answer of `GET /v1/health`: the server is up and answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Always `true`.
    pub ok: bool,
}
