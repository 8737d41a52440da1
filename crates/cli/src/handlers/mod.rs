//! The commands that talk to a running server, one module per kind: jobs (submit and
//! read), following a job, control, tokens. Each calls the API through [`Client`] and
//! hands what it got to [`crate::render`] and [`crate::output`].

mod control;
mod follow;
mod jobs;
mod tokens;

pub use control::{cancel, kill, pause, resume, retry, status};
pub use follow::{diff, events, logs};
pub use jobs::{ls, show, submit};
pub use tokens::{token_create, token_ls, token_revoke};

use crate::command::{Global, TokenSource};
use crate::error::{CliError, from_client};
use gantry_client::{Client, ClientError, ClientOptions};

/// How long the CLI waits for a connection to the server.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the token as `global` says and makes a client of the server.
pub fn client_for(global: &Global) -> Result<Client, CliError> {
    let token = match &global.token {
        TokenSource::Given(t) => t.clone(),
        TokenSource::File(path) => match std::fs::read_to_string(path) {
            Ok(t) => t.trim().to_string(),
            Err(source) => {
                return Err(from_client(
                    ClientError::TokenFile {
                        path: path.clone(),
                        source,
                    },
                    &global.url,
                ));
            }
        },
    };
    let opts = ClientOptions::new(CONNECT_TIMEOUT).ca_file(global.ca_file.as_deref());
    Client::with_options(&global.url, Some(&token), &opts).map_err(|e| from_client(e, &global.url))
}

/// Maps client errors with the URL of this client's server.
fn api<T>(client: &Client, r: Result<T, ClientError>) -> Result<T, CliError> {
    r.map_err(|e| from_client(e, client.base()))
}
