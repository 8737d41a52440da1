//! Bearer tokens: secrets, hashing, the first-start admin token and the request
//! extractor that authenticates a caller.

use crate::error::{ApiError, ServerError};
use crate::service::Service;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gantry_core::{FactoryId, RunId};
use gantry_protocol::{Scope, TokenInfo};
use gantry_store::{Store, StoreError};
use rand::TryRng;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::marker::PhantomData;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// Prefix of every token secret, so a leaked one is recognizable (and greppable by
/// secret scanners).
pub const TOKEN_PREFIX: &str = "gtk_";

/// Name of the file in the data dir holding the admin token's secret.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Number of random bytes in a secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A new random token secret: `gtk_` then 256 bits from the OS random number generator,
/// hex encoded.
pub fn new_token_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the OS random number generator is available on every supported platform");
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The hash under which a token secret is stored: SHA-256, hex encoded.
///
/// A plain fast hash is enough here, unlike for passwords: secrets are 256 random bits
/// from the OS RNG, so there is no dictionary to try and brute force over 2^256 values
/// is out of reach however fast each guess is. A slow KDF (argon2, bcrypt) would only
/// add latency to every request. The hash keeps a stolen database from yielding usable
/// secrets.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes sure `<data_dir>/admin.token` holds the secret of a live admin token and
/// returns that secret.
///
/// - The file holds a live admin token: it is used as it is.
/// - Otherwise (first start, file deleted, or its token revoked) a new admin token is
///   stored and its secret written to the file. Whoever can write the data dir can
///   already rewrite the database, so minting a token here grants nothing new, and it
///   makes a lost admin token recoverable by deleting the file and restarting.
pub(crate) async fn ensure_admin_token(
    store: &dyn Store,
    data_dir: &Path,
) -> Result<String, ServerError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim().to_string();
            if let Some(info) = store.token_by_hash(&hash_token(&secret)).await?
                && info.scope == Scope::Admin
            {
                return Ok(secret);
            }
            tracing::warn!(
                path = %path.display(),
                "admin token file does not hold a live admin token; creating a new one"
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Io {
                action: "read admin token",
                path,
                source,
            });
        }
    }

    let secret = new_token_secret();
    let mut taken: Vec<String> = store.tokens().await?.into_iter().map(|t| t.name).collect();
    // Replicas starting together on a new database race for the same name: the loser
    // of a race takes the next free one instead of failing to start.
    let info = loop {
        let name = (1..)
            .map(|n| {
                if n == 1 {
                    "admin".to_string()
                } else {
                    format!("admin-{n}")
                }
            })
            .find(|name| !taken.contains(name))
            .expect("an unbounded sequence of names always has one that is not taken");
        match store
            .create_token(&name, Scope::Admin, &hash_token(&secret))
            .await
        {
            Ok(info) => break info,
            Err(StoreError::Exists { .. }) => taken.push(name),
            Err(e) => return Err(e.into()),
        }
    };
    write_secret_file(&path, &secret)?;
    tracing::info!(name = %info.name, path = %path.display(), "created the admin token");
    Ok(secret)
}

/// Writes `secret` to `path`, readable by the owner only from the first byte on: the
/// file is created with mode 0600 (never chmod-ed afterwards, which would leave a window
/// where it is readable by others) under a temporary name, then renamed into place.
fn write_secret_file(path: &Path, secret: &str) -> Result<(), ServerError> {
    let tmp = path.with_extension("token.tmp");
    let io = |action, source| ServerError::Io {
        action,
        path: tmp.clone(),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove stale temporary token file", e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create admin token file", e))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write admin token file", e))?;
    std::fs::rename(&tmp, path).map_err(|source| ServerError::Io {
        action: "rename admin token file into place",
        path: path.to_path_buf(),
        source,
    })
}

/// An authenticated caller: the live token its bearer secret matched.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token.
    pub token: TokenInfo,
}

impl Caller {
    /// Refuses the request (403) unless the caller's scope allows `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.token.scope.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token {:?} has scope {}, which does not allow this (needs {})",
                self.token.name, self.token.scope, needed
            ))
            .with_hint(scope_hint(needed)))
        }
    }

    /// Refuses (403) a factory token acting for a factory other than its own: the one
    /// it registered first (see [`gantry_store::Store::register_factory_for_token`]).
    /// Tokens of other scopes pass (admin may act for any factory; the route's scope
    /// check keeps the others out).
    pub async fn require_factory(
        &self,
        service: &Service,
        factory: FactoryId,
    ) -> Result<(), ApiError> {
        if self.token.scope != Scope::Factory || self.token.factory == Some(factory) {
            return Ok(());
        }
        let names: Vec<(FactoryId, String)> = service
            .store()
            .factories()
            .await?
            .into_iter()
            .map(|f| (f.id, f.name))
            .collect();
        if !names.iter().any(|(id, _)| *id == factory) {
            // A factory the store does not know (a server on a fresh or restored
            // database) must hear 404, so it registers again; registering still checks
            // the token's binding.
            return Err(ApiError::not_found(format!("factory {factory} not found"))
                .with_hint("register again (POST /v1/factories)")
                .with_details(json!({ "factory": factory })));
        }
        let asked = label(&names, factory);
        let err = match self.token.factory {
            Some(own) => ApiError::forbidden(format!(
                "token {:?} acts for factory {}; it cannot act for factory {asked}",
                self.token.name,
                label(&names, own)
            ))
            .with_hint(ONE_TOKEN_PER_FACTORY),
            None => ApiError::forbidden(format!(
                "token {:?} has registered no factory yet, so it cannot act for factory {asked}",
                self.token.name
            ))
            .with_hint(
                "register first (POST /v1/factories): a factory token acts for the factory \
                 it registers",
            ),
        };
        tracing::warn!(
            token = %self.token.name, own = ?self.token.factory, %factory,
            "factory token refused for another factory"
        );
        Err(err.with_details(json!({
            "token": self.token.name,
            "factory": self.token.factory,
            "asked": factory,
        })))
    }

    /// Refuses (403) a factory token writing to a run (renew, events, finish) that
    /// another factory claimed, before anything of the write is applied. 404 for an
    /// unknown run. Tokens of other scopes pass, as in [`Caller::require_factory`].
    pub async fn require_run(&self, service: &Service, run: RunId) -> Result<(), ApiError> {
        if self.token.scope != Scope::Factory {
            return Ok(());
        }
        let owner = service.store().run(run).await?.factory_id;
        if owner.is_some() && owner == self.token.factory {
            return Ok(());
        }
        let names = factory_names(service).await;
        let owner_label = owner.map_or_else(|| "none".to_string(), |f| label(&names, f));
        let own_label = self
            .token
            .factory
            .map_or_else(|| "none yet".to_string(), |f| label(&names, f));
        tracing::warn!(
            token = %self.token.name, %run, ?owner, own = ?self.token.factory,
            "factory token refused for another factory's run"
        );
        Err(ApiError::forbidden(format!(
            "run {run} belongs to factory {owner_label}, but token {:?} acts for factory \
             {own_label}; nothing was applied",
            self.token.name
        ))
        .with_hint(ONE_TOKEN_PER_FACTORY)
        .with_details(json!({
            "run": run,
            "run_factory": owner,
            "token": self.token.name,
            "factory": self.token.factory,
        })))
    }
}

/// What to use instead when a token's scope does not allow `needed`: a token of that
/// scope, or one that allows more (only admin allows more than operator or factory).
fn scope_hint(needed: Scope) -> String {
    let wider: Vec<&str> = Scope::ALL
        .into_iter()
        .filter(|s| *s != needed && s.allows(needed))
        .map(Scope::as_str)
        .collect();
    if wider.is_empty() {
        format!("use a token with scope {needed}")
    } else {
        format!(
            "use a token with scope {needed} (or {})",
            wider.join(" or ")
        )
    }
}

/// The hint of every refusal of a factory token acting for another factory.
const ONE_TOKEN_PER_FACTORY: &str = "a factory token acts only for the factory it registered \
     first; give each factory a token of its own (gantry token create --name <factory> \
     --scope factory)";

/// Factory names by id, for messages; empty when the store cannot say (the message
/// then shows ids only).
async fn factory_names(service: &Service) -> Vec<(FactoryId, String)> {
    match service.store().factories().await {
        Ok(list) => list.into_iter().map(|f| (f.id, f.name)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list factories for an error message");
            Vec::new()
        }
    }
}

/// `3 ("host-a")`, or `3` when the name is unknown.
fn label(names: &[(FactoryId, String)], id: FactoryId) -> String {
    match names.iter().find(|(f, _)| *f == id) {
        Some((_, name)) => format!("{id} ({name:?})"),
        None => id.to_string(),
    }
}

impl FromRequestParts<Arc<Service>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        // The hint names the file, never its path: an unauthenticated caller learns
        // nothing of the server's file system.
        let hint = format!(
            "send `Authorization: Bearer <token>`; the first admin token is in the file \
             {ADMIN_TOKEN_FILE} in the server's data dir"
        );
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized("missing Authorization header").with_hint(hint));
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization header is not of the form `Bearer <token>`")
                    .with_hint(hint.clone())
            })?;
        match service.store().token_by_hash(&hash_token(secret)).await {
            Ok(Some(token)) => Ok(Caller { token }),
            Ok(None) => Err(ApiError::unauthorized("unknown or revoked token").with_hint(hint)),
            Err(e @ StoreError::NotFound { .. }) => {
                Err(ApiError::unauthorized(format!("unknown token: {e}")).with_hint(hint))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A scope a route requires, as a type, so the check runs as an extractor: before the
/// request body is read, and so a forbidden request gets 403 whatever its body.
pub trait Required {
    /// The scope.
    const SCOPE: Scope;
}

macro_rules! required {
    ($(#[$doc:meta])* $name:ident, $scope:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;
        impl Required for $name {
            const SCOPE: Scope = $scope;
        }
    };
}

required!(
    /// Requires [`Scope::Reader`].
    Read,
    Scope::Reader
);
required!(
    /// Requires [`Scope::Submitter`].
    Submit,
    Scope::Submitter
);
required!(
    /// Requires [`Scope::Operator`].
    Operate,
    Scope::Operator
);
required!(
    /// Requires [`Scope::Factory`].
    RunFactory,
    Scope::Factory
);
required!(
    /// Requires [`Scope::Admin`].
    Administer,
    Scope::Admin
);

/// An authenticated caller whose scope allows `R::SCOPE`.
#[derive(Debug, Clone)]
pub struct Authed<R>(pub Caller, pub(crate) PhantomData<R>);

impl<R: Required + Send + Sync> FromRequestParts<Arc<Service>> for Authed<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, service).await?;
        caller.require(R::SCOPE)?;
        Ok(Authed(caller, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_prefixed_random_and_hashes_are_stable() {
        let a = new_token_secret();
        let b = new_token_secret();
        assert!(a.starts_with(TOKEN_PREFIX), "{a}");
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 2 * SECRET_BYTES);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        // The SHA-256 of "abc", from FIPS 180-2.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scope_hints_never_repeat_a_scope() {
        assert_eq!(scope_hint(Scope::Admin), "use a token with scope admin");
        assert_eq!(
            scope_hint(Scope::Operator),
            "use a token with scope operator (or admin)"
        );
        assert_eq!(
            scope_hint(Scope::Reader),
            "use a token with scope reader (or admin or operator or submitter or factory)"
        );
    }

    #[test]
    fn secret_file_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        write_secret_file(&path, "gtk_one").expect("write");
        write_secret_file(&path, "gtk_two").expect("overwrite");
        let meta = std::fs::metadata(&path).expect("metadata");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "gtk_two\n");
    }
}
