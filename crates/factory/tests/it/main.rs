//! Integration tests of the factory: real git repos in temp dirs, real processes and
//! signals, driven through an in-memory `Coordinator`.

mod adopt;
mod agent;
mod checking;
mod docker;
mod docker_away;
mod egress;
mod engines;
mod escape;
mod gates;
mod heartbeat;
mod http;
mod hygiene;
mod orphans;
mod real_clis;
mod result_refs;
mod review;
mod runs;
mod sandbox;
mod secrets;
mod stand_ins;
mod stops;
mod support;
mod workspace;
