//! Integration tests: the real binary over real TLS sockets on loopback.
#![allow(clippy::unwrap_used, missing_docs)]

mod bluegreen;
mod check_cmd;
mod demo_curl;
mod dns;
mod edge;
mod explain;
mod framing;
mod h1_paths;
mod harness;
mod hostile;
mod interop;
mod layers;
mod monitoring;
mod policy;
mod reload;
mod resilience;
mod resumption;
mod routing;
mod servers;
mod stats;
mod tcp;
mod tls_stream;
mod transfer;
mod two_tier;
mod upstream_tls;
