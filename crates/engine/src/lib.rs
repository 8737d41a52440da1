//! Gantry's agent engines: normalized agent events, parsers for the machine output of
//! agent CLIs (Claude Code stream-json, Codex `exec --json`, Gantry's own JSON lines),
//! running insights (tokens, cost, turns, tool calls), budgets, the command lines of
//! the CLI adapters, and the `script` engine that compiles a list of steps to `sh`.
//!
//! Invariant: this crate does no I/O. Parsers take lines, adapters return argv, the
//! script engine returns a script text; running processes is the factory's job. The
//! plain data job specs and run records carry (insights, budgets, formats, script
//! steps) is `gantry_core::engine`, re-exported here.
//!
//! # Token normalization
//! Every engine reports tokens in the same three figures:
//! - `tokens_in`: ALL input tokens, cached ones included. Claude:
//!   `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`. Codex:
//!   `input_tokens`, which already includes `cached_input_tokens`.
//! - `tokens_cached`: the cache-read part of `tokens_in` (Claude
//!   `cache_read_input_tokens`, Codex `cached_input_tokens`).
//! - `tokens_out`: output tokens.
//!
//! A budget's "tokens" figure is `tokens_in + tokens_out`.

pub mod adapter;
pub mod event;
pub mod format;
pub mod insights;
pub mod line;
pub mod price;
pub mod script;

mod claude;
mod codex;

pub use adapter::{AgentRequest, Invocation, Stdin, claude_invocation, codex_invocation};
pub use event::AgentEvent;
pub use format::{Format, StreamParser, parser, said};
pub use gantry_core::engine::{Breach, Budget, Insights, Step, StepError, parse_steps};
pub use insights::Fold;
pub use line::LineBuffer;
pub use price::{Price, PriceTable};
pub use script::script;
