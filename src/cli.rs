//! Command line: `run`, `check`, `demo` (clap derive).

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
    },
    /// Validate config, rules, certificates and pages; print every error; exit 1 on any.
    Check {
        /// The config file.
        #[arg(short, long, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
    },
    /// Run the proxy with an embedded stand-in repository stack (blue and green).
    Demo {
        /// Where to write config, rules and certificates (default: a new temporary folder).
        #[arg(long)]
        workdir: Option<PathBuf>,
    },
}
