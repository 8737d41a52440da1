//! Integration tests of the client against real servers on loopback.

mod tls;
