//! Factories: registration (bound to tokens), heartbeats and health.

use super::{Service, millis};
use crate::error::ApiError;
use axum::http::StatusCode;
use gantry_core::FactoryId;
use gantry_protocol::ErrorKind;
use gantry_protocol::{
    FactoryStatus, Health, Heartbeat, HeartbeatAck, RegisterFactory, Scope, TokenInfo,
};
use gantry_store::Binding;
use serde_json::json;
use std::time::Duration;

/// How long a factory may go unheard (no heartbeat, renewal or registration) before it
/// is listed as down: half the lease TTL (30 s with the default 60 s lease). Half, so a
/// silent factory shows down well before its leases expire, which happens on its own
/// (the reaper) whatever its health says.
pub fn factory_down_after(lease_ttl: Duration) -> Duration {
    lease_ttl / 2
}

/// How often a factory should send a heartbeat: a third of [`factory_down_after`]
/// (10 s with the default lease), so two lost heartbeats in a row never mark it down.
pub fn heartbeat_interval(lease_ttl: Duration) -> Duration {
    factory_down_after(lease_ttl) / 3
}

impl Service {
    /// Registers a factory after checking its name, seats and capabilities.
    pub async fn register(&self, reg: &RegisterFactory) -> Result<FactoryId, ApiError> {
        check_registration(reg)?;
        Ok(self.store.register_factory(reg).await?)
    }

    /// Registers a factory for the token that asks (an admin or a factory token; the
    /// route checks the scope). A factory name belongs to the token that registered it
    /// first: another token registering it is refused (409 `factory_name_taken`,
    /// naming the name and its token) until that token is revoked, so a factory token
    /// cannot take over a factory, and finish its runs, by registering its name. A
    /// factory token acts for the first factory it registers and for no other (403
    /// `forbidden`). The embedded factory's name is the server's own.
    pub async fn register_for_token(
        &self,
        token: &TokenInfo,
        reg: &RegisterFactory,
    ) -> Result<FactoryId, ApiError> {
        check_registration(reg)?;
        if token.scope == Scope::Factory && crate::is_embedded_name(&reg.name) {
            return Err(ApiError::forbidden(format!(
                "factory name {:?} is the server's embedded factory: token {:?} cannot \
                 register as it",
                reg.name, token.name
            ))
            .with_hint("give the remote factory another name (--name)")
            .with_details(json!({ "token": token.name, "asked": reg.name })));
        }
        match self.store.register_factory_for_token(reg, token.id).await? {
            Binding::Bound(id) => Ok(id),
            Binding::TokenTaken {
                token: name,
                factory,
            } => Err(ApiError::forbidden(format!(
                "token {name:?} acts for factory {factory:?}; it cannot register as factory \
                 {:?}",
                reg.name
            ))
            .with_hint(format!(
                "a factory token acts only for the factory it registered first; give {:?} \
                 a token of its own (gantry token create --name {} --scope factory)",
                reg.name, reg.name
            ))
            .with_details(json!({ "token": name, "factory": factory, "asked": reg.name }))),
            Binding::FactoryTaken {
                factory,
                token: holder,
            } => {
                tracing::warn!(
                    token = %token.name, %factory, %holder,
                    "registration refused: the factory name belongs to another token"
                );
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorKind::FactoryNameTaken,
                    format!(
                        "factory name {factory:?} belongs to token {holder:?}, which \
                         registered it; token {:?} cannot register as it",
                        token.name
                    ),
                )
                .with_hint(format!(
                    "give this factory another name (--name); if {factory:?} got a new \
                     token, revoke the old one first (gantry token revoke {holder})"
                ))
                .with_details(json!({ "token": token.name, "factory": factory, "holder": holder })))
            }
            Binding::NameReserved { factory } => {
                tracing::warn!(
                    token = %token.name, %factory,
                    "registration refused: the factory name belongs to no token"
                );
                Err(ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorKind::FactoryNameTaken,
                    format!(
                        "factory name {factory:?} was registered by the server itself or \
                         before factory names were bound to tokens; token {:?} cannot \
                         register as it",
                        token.name
                    ),
                )
                .with_hint("give this factory another name (--name)")
                .with_details(json!({ "token": token.name, "factory": factory, "holder": null })))
            }
        }
    }

    /// Records a factory's heartbeat and says when to send the next one. 404 when the
    /// factory is unknown (the store was replaced): the factory registers again.
    pub async fn heartbeat(
        &self,
        factory: FactoryId,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, ApiError> {
        if let Some(load) = hb.load_1m
            && !(load.is_finite() && load >= 0.0)
        {
            return Err(ApiError::bad_request(format!(
                "field `load_1m` is {load}: a load average is a finite number, 0 or more"
            ))
            .with_details(json!({ "field": "load_1m" })));
        }
        self.store.heartbeat(factory, hb).await?;
        Ok(HeartbeatAck {
            interval_ms: millis(heartbeat_interval(self.cfg.lease_ttl)),
            down_after_ms: millis(factory_down_after(self.cfg.lease_ttl)),
        })
    }

    /// Every registered factory with its running jobs, last heartbeat and health: down
    /// when unheard for longer than [`factory_down_after`], judged by the store's clock.
    pub async fn factories(&self) -> Result<Vec<FactoryStatus>, ApiError> {
        let down_after = millis(factory_down_after(self.cfg.lease_ttl));
        let list = self.store.factories().await?;
        Ok(list
            .into_iter()
            .map(|f| FactoryStatus {
                id: f.id,
                name: f.name,
                seats: f.seats,
                capabilities: f.capabilities,
                running: f.running,
                last_seen: f.last_seen,
                last_seen_ago_ms: f.last_seen_ago_ms,
                stats: f.stats,
                health: if f.last_seen_ago_ms > down_after {
                    Health::Down
                } else {
                    Health::Up
                },
            })
            .collect())
    }
}

/// Checks a factory registration's name, seats and capabilities.
fn check_registration(reg: &RegisterFactory) -> Result<(), ApiError> {
    if reg.name.trim().is_empty() {
        return Err(ApiError::bad_request(
            "field `name` is empty: a factory needs a name",
        ));
    }
    if reg.seats == 0 {
        return Err(ApiError::bad_request(
            "field `seats` is 0: a factory needs at least one seat",
        ));
    }
    for cap in &reg.capabilities {
        gantry_core::caps::validate(cap).map_err(|e| {
            ApiError::bad_request(format!("field `capabilities`: {e}"))
                .with_details(json!({ "field": "capabilities", "value": cap }))
        })?;
    }
    Ok(())
}
