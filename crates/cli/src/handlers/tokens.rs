//! `gantry token create`, `token ls` and `token revoke`.

use super::api;
use crate::command::Format;
use crate::error::CliError;
use crate::output::{self, Table};
use gantry_client::Client;
use gantry_core::time::now_millis;
use gantry_protocol::TokenInfo;

/// `gantry token create`.
pub async fn token_create(
    client: &Client,
    name: &str,
    scope: gantry_protocol::Scope,
    format: Format,
) -> Result<(), CliError> {
    let created = api(client, client.create_token(name, scope).await)?;
    if format == Format::Json {
        output::json(&created);
        return Ok(());
    }
    output::line(&created.token);
    output::note(format!(
        "created token `{}` with scope {}: the secret above is shown only this once",
        created.info.name, created.info.scope
    ));
    Ok(())
}

/// `gantry token ls`.
pub async fn token_ls(client: &Client, format: Format) -> Result<(), CliError> {
    let tokens: Vec<TokenInfo> = api(client, client.tokens().await)?;
    if format == Format::Json {
        output::json(&tokens);
        return Ok(());
    }
    let now = now_millis();
    let mut t = Table::new(&["ID>", "NAME", "SCOPE", "CREATED", "REVOKED"]);
    for tok in &tokens {
        t.row(vec![
            tok.id.to_string(),
            tok.name.clone(),
            tok.scope.to_string(),
            output::short_time(Some(tok.created_at), now),
            output::short_time(tok.revoked_at, now),
        ]);
    }
    t.print();
    Ok(())
}

/// `gantry token revoke NAME`.
pub async fn token_revoke(client: &Client, name: &str, format: Format) -> Result<(), CliError> {
    let info = api(client, client.revoke_token(name).await)?;
    match (format, info) {
        (Format::Json, Some(info)) => output::json(&info),
        (Format::Json, None) => output::json(&serde_json::json!({ "name": name, "revoked": true })),
        (Format::Human, _) => output::line(format!("revoked token `{name}`")),
    }
    Ok(())
}
