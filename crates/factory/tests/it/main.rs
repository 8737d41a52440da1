//! Integration tests of the factory: real git repos in temp dirs, real processes and
//! signals, driven through an in-memory `Coordinator`.

mod http;
mod orphans;
mod runs;
mod stops;
mod support;
mod workspace;
