//! Command line: `run`, `check`, `reload`, `switch`, `explain`, `demo` (clap derive).

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Gatehouse: an edge load balancer and TLS-terminating reverse proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run {
        /// The config file.
        #[arg(short, long, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of the running process (at `upgrade_socket`)
        /// and tell it to drain: a zero-downtime binary upgrade.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate config, rules, certificates and pages; print every error; exit 1 on any.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
    },
    /// Ask the running proxy to reload its rules (through the stats listener).
    Reload {
        /// The config file.
        #[arg(short, long, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
    },
    /// Switch a service's live colour in the rules file (validated; refused when the new
    /// colour has no healthy server unless --force), or roll the last switch back.
    Switch {
        /// The config file.
        #[arg(short, long, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
        /// The service to switch.
        #[arg(required_unless_present = "rollback")]
        service: Option<String>,
        /// `blue` or `green`.
        #[arg(required_unless_present = "rollback")]
        colour: Option<String>,
        /// Switch even when the new colour has no healthy server.
        #[arg(long)]
        force: bool,
        /// Restore the rules as they were before the last switch.
        #[arg(long, conflicts_with_all = ["service", "colour", "force"])]
        rollback: bool,
    },
    /// Show how a request would be handled and why: the proxy's own decision, and the
    /// admission it would meet now (server states from the running proxy).
    Explain {
        /// The config file.
        #[arg(short, long, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
        /// The client address.
        #[arg(long, default_value = "127.0.0.1")]
        from: std::net::IpAddr,
        /// The request arrives through this proxy (its X-Forwarded-For counts only if trusted).
        #[arg(long)]
        via_proxy: Option<std::net::IpAddr>,
        /// Request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// A request header, `Name: value` (repeatable; `Host` replaces the URL's).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The TLS server name, when it is not the URL's host.
        #[arg(long)]
        sni: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The URL, e.g. `https://data.example.org/api/records` or `http://…` (plain HTTP).
        url: String,
    },
    /// Run the proxy with an embedded stand-in repository stack (blue and green).
    #[cfg(feature = "demo")]
    Demo {
        /// Where to write config, rules and certificates (default: a new temporary folder).
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
}
