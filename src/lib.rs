//! Gatehouse: an edge load balancer and TLS-terminating reverse proxy.
//!
//! # Layout
//!
//! Layers, bottom to top; a module imports only from its own layer's modules listed before
//! it and from the layers below (no import cycle between the top-level modules).
//!
//! **Pure** (no sockets, no tokio):
//! - `diag`: `file:line:column` diagnostics. `units`: sizes and durations in config text.
//! - `rules/`: the rules ops edit, compiled into an immutable `RuleSet` (matchers,
//!   balancing schedules, the host index, and the edge policy: deny rules, list files,
//!   header tests, rate-limit specs, header rules, redirects).
//! - `config/`: process settings read at start, validated.
//! - `fallback`: built-in and configured error pages. `cli`: the command line.
//! - `proxy_protocol`, `rewind`, `body`, `wire`: PROXY header codec, a stream that
//!   replays bytes already read, the request body types, HTTP/1.1 wire facts.
//!
//! **Runtime state** (shared, swapped, counted):
//! - `stats/`: counters and histograms (a leaf: imports nothing of the crate).
//! - `share`: slots held per client address (a fixed-size sketch), for `pool`.
//! - `limit`: rate limiters (GCRA in a fixed table), by limit, for `proxy::admit`.
//! - `limit_store`: the same limits shared by instances through Redis (`limits_store:`),
//!   falling back to `limit` while the store does not answer.
//! - `pool`: traffic-class slots and queues. `health`: server health, admin states,
//!   active checks. `resolve`: servers' DNS names, re-resolved, last good kept.
//!   `generation`: a live rule set plus the state indexed by it.
//! - `deadline`: coarse response deadlines. `memory`: returning freed memory.
//! - `accesslog`: one line per request (text, HAProxy httplog, JSON) to stderr, a file
//!   or syslog. `audit`: every change as one JSON line, with who; the last ten kept.
//!
//! **Request path**:
//! - `upstream/`: keep-alive connections to the servers (hyper's client, and the direct
//!   path for bodyless requests).
//! - `proxy/`: one request in four phases, `decide` (pure: the `Decision` that
//!   `gatehouse explain` prints), `admit` (slot and server), `exchange` (send, retry,
//!   stream, tunnel) and `finish` (count and log once), with `reply` for our own answers.
//!
//! **Edge** (connections from clients):
//! - `accept`: binding, connection slots, per-client caps, the drain, PROXY headers.
//! - `park`: idle HTTP/1.1 connections without buffers. `tls/`: certificates by SNI and
//!   the TLS stream. `h1`: the own HTTP/1.1 path for bodyless GET/HEAD. `h2stream`:
//!   hyper's HTTP/2 stream tasks, each cut when its client window stays shut.
//! - `tcp/`: TCP fronts and TLS passthrough. `listener`: the HTTP(S) accept loops and
//!   serving HTTP/1.1 and HTTP/2.
//!
//! **Admin and ops** (on top):
//! - `reload`: compile-then-swap, the only writer of the live generation.
//! - `admin/`: the stats listener and its renderings (one file per format).
//! - `handover`: listening sockets passed to `run --upgrade`.
//! - `check`, `ops/` (`reload`, `switch`, `explain`).
//! - `runtime_api/`: HAProxy's runtime API on a Unix socket, and the server-state file.
//! - `fleet`: operator states (MAINT, DRAIN, weights) shared with other instances through
//!   the `limits_store`.
//! - `server`: wires everything for `gatehouse run`; `demo/` (feature `demo`) runs it
//!   with stand-in servers.
pub mod accept;
pub mod accesslog;
pub mod admin;
pub mod audit;
pub mod body;
pub mod check;
pub mod cli;
pub mod config;
pub mod deadline;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diag;
pub mod fallback;
pub mod fleet;
pub mod generation;
pub mod h1;
pub mod h2stream;
pub mod handover;
pub mod health;
pub mod limit;
pub mod limit_store;
pub mod listener;
pub mod memory;
pub mod ops;
pub mod park;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod resolve;
pub mod rewind;
pub mod rules;
pub mod runtime_api;
pub mod server;
pub mod share;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod units;
pub mod upstream;
pub mod wire;
