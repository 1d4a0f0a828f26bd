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
    let mut warnings = rules.warnings.clone();
    if let Some(Ok(store)) = &certs {
        let uncovered = uncovered_hosts(&rules, store);
        for (site, host) in &uncovered {
            all.push(crate::diag::Diagnostic::new(
                &config.path,
                Default::default(),
                format!("site `{site}`: no certificate covers `{host}` (clients would get the default certificate and a name error)"),
            ));
        }
        if !uncovered.is_empty() {
            return Err(all);
        }
        warnings.extend(expiring(store));
    }
    let names = certs.and_then(|c| c.ok()).map(|c| {
        c.names
            .iter()
            .map(|n| n.join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    });
    let warnings: String = warnings.iter().map(|w| format!("\n{w}")).collect();
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

/// How long before expiry `check` warns.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// Certificates expiring within [`EXPIRY_WARNING_DAYS`] (or expired), as warnings.
fn expiring(store: &CertStore) -> Vec<String> {
    store
        .info
        .iter()
        .filter(|c| c.seconds_left() < EXPIRY_WARNING_DAYS * 86_400)
        .map(|c| match c.seconds_left() {
            s if s <= 0 => format!("{}: warning: the certificate has expired", c.file.display()),
            s => format!(
                "{}: warning: the certificate expires in {} days",
                c.file.display(),
                s / 86_400
            ),
        })
        .collect()
}

/// Hosts of HTTPS sites that no certificate covers: exact names no certificate names;
/// `first.*` patterns when no certificate name starts with `first.` and none is a
/// wildcard; `*.suffix` patterns without a `*.suffix` certificate.
fn uncovered_hosts(rules: &crate::rules::RuleSet, store: &CertStore) -> Vec<(String, String)> {
    use crate::rules::matcher::HostPattern;
    let names: Vec<&String> = store.info.iter().flat_map(|c| &c.names).collect();
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut out = Vec::new();
    for site in &rules.sites {
        for h in &site.hosts {
            let covered = match h {
                HostPattern::Exact(host) => crate::tls::covers(&all, host),
                HostPattern::FirstLabel(first) => names
                    .iter()
                    .any(|n| n.starts_with("*.") || n.split('.').next() == Some(first.as_str())),
                HostPattern::Suffix(sfx) => names
                    .iter()
                    .any(|n| n.strip_prefix("*.") == Some(sfx.as_str())),
            };
            if !covered {
                out.push((site.name.to_string(), h.to_string()));
            }
        }
    }
    out
}
