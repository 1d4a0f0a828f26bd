//! `gatehouse check`: everything `run` would load, validated without binding a socket.

use crate::config::Config;
use crate::diag::Diagnostics;
use crate::tls::CertStore;
use std::path::Path;

/// Validates the config at `path` and all it points at; returns every problem found.
pub fn check(path: &Path) -> Result<String, Diagnostics> {
    let config = Config::load(path)?;
    let mut all = Diagnostics::default();
    // Servers named by DNS are checked as written; they are resolved by `run`.
    let rules = config.load_rules(&Default::default());
    if let Err(d) = &rules {
        all.0.extend(d.0.iter().cloned());
    }
    let certs = if config.https.is_empty() {
        None
    } else {
        Some(CertStore::load(&config.path, &config.certificates))
    };
    if let Some(Err(d)) = &certs {
        all.0.extend(d.0.iter().cloned());
    }
    let (Ok(rules), false) = (rules, !all.is_empty()) else {
        return Err(all);
    };
    let names = certs.and_then(|c| c.ok()).map(|c| {
        c.names
            .iter()
            .map(|n| n.join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    });
    let warnings: String = rules.warnings.iter().map(|w| format!("\n{w}")).collect();
    Ok(format!(
        "{}: valid ({} sites, {} routes, {} services, {} servers, {} pools{}{}){warnings}",
        path.display(),
        rules.sites.len(),
        rules.sites.iter().map(|s| s.routes.len()).sum::<usize>(),
        rules.services.len(),
        rules.all_servers().count(),
        rules.pools.len(),
        match rules.dns_names.len() {
            0 => String::new(),
            _ => format!(
                "; servers by DNS name, resolved at run time: {}",
                rules.dns_names.join(" ")
            ),
        },
        names
            .map(|n| format!("; certificates: {n}"))
            .unwrap_or_default()
    ))
}
