//! Integration tests of gantry-core: the job file parser, the lifecycle, retry rules,
//! capability matching, repo naming, and the string forms of ids, states and scopes.

mod caps;
mod fix;
mod gates;
mod names;
mod repo;
mod retry;
mod review;
mod spec;
mod spec_agent;
mod spec_errors;
mod spec_sandbox;
mod spec_secrets;
mod state;
