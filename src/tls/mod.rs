//! TLS termination: certificates chosen by SNI, TLS 1.2/1.3, ALPN h2 + http/1.1.
//!
//! The certificate store sits behind an `ArcSwap` so certificates can be replaced
//! while running without touching listeners or established sessions.

pub mod stream;

use crate::config::CertPaths;
use crate::diag::{Diagnostic, Diagnostics};
use arc_swap::ArcSwap;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The one crypto provider (aws-lc-rs); passed explicitly so two providers never clash.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates by the names they are valid for.
#[derive(Debug)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Names per certificate, in config order (for `check` and the stats page).
    pub names: Vec<Vec<String>>,
    /// Each certificate's file, names and expiry, in config order.
    pub info: Vec<CertInfo>,
}

/// One certificate as the stats page, Prometheus and `check` show it.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The certificate file.
    pub file: std::path::PathBuf,
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// When it expires (`notAfter`), Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Seconds left until it expires (negative once expired).
    pub fn seconds_left(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after - now
    }
}

/// Whether a certificate with `names` covers `host` (exactly, or `*.` one label up).
pub fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|n| match n.strip_prefix("*.") {
        Some(sfx) => host
            .split_once('.')
            .is_some_and(|(_, parent)| parent == sfx),
        None => n == host,
    })
}

impl CertStore {
    /// Loads every certificate; the first one is served to clients that send no SNI
    /// or a name no certificate covers.
    pub fn load(config_file: &Path, certs: &[CertPaths]) -> Result<CertStore, Diagnostics> {
        let provider = provider();
        let mut diags = Diagnostics::default();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        let mut all_names = Vec::new();
        let mut info = Vec::new();
        for c in certs {
            match load_one(&provider, c) {
                Ok((key, names, not_after)) => {
                    info.push(CertInfo {
                        file: c.cert.clone(),
                        names: names.clone(),
                        not_after,
                    });
                    let key = Arc::new(key);
                    for n in &names {
                        match n.strip_prefix("*.") {
                            Some(sfx) => wildcard
                                .entry(sfx.to_string())
                                .or_insert_with(|| key.clone()),
                            None => exact.entry(n.clone()).or_insert_with(|| key.clone()),
                        };
                    }
                    default.get_or_insert(key);
                    all_names.push(names);
                }
                Err(msg) => diags.push(Diagnostic::new(config_file, c.pos, msg)),
            }
        }
        match default {
            Some(default) if diags.is_empty() => Ok(CertStore {
                exact,
                wildcard,
                default,
                names: all_names,
                info,
            }),
            _ => {
                if diags.is_empty() {
                    diags.push(Diagnostic::new(
                        config_file,
                        Default::default(),
                        "no certificate configured",
                    ));
                }
                Err(diags)
            }
        }
    }

    /// The certificate for an SNI name: exact, then `*.` one label up, then the default.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = sni {
            if let Some(k) = self.exact.get(name) {
                return k.clone();
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(k) = self.wildcard.get(parent)
            {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

fn load_one(
    provider: &CryptoProvider,
    c: &CertPaths,
) -> Result<(CertifiedKey, Vec<String>, i64), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate {}: {e}", c.cert.display()))?;
    let leaf = chain.first().ok_or_else(|| {
        format!(
            "certificate {}: no certificate in the file",
            c.cert.display()
        )
    })?;
    let key = PrivateKeyDer::from_pem_file(&c.key)
        .map_err(|e| format!("key {}: {e}", c.key.display()))?;
    let (names, not_after) =
        names_of(leaf).map_err(|e| format!("certificate {}: {e}", c.cert.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "certificate {} and key {} do not go together: {e}",
            c.cert.display(),
            c.key.display()
        )
    })?;
    Ok((certified, names, not_after))
}

/// The DNS names a certificate is valid for (subjectAltName), lower-cased, and when it
/// expires (Unix seconds).
fn names_of(cert: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok((names, x509.validity().not_after.timestamp()))
}

/// SNI resolver over a swappable store.
#[derive(Debug)]
pub struct SniResolver(pub Arc<ArcSwap<CertStore>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        SEEN_SNI.set(name.map(|n| n.to_ascii_lowercase().into_boxed_str()));
        Some(self.0.load().pick(name))
    }
}

thread_local! {
    /// The name of the ClientHello the resolver last saw on this thread. rustls's
    /// unbuffered server connection does not tell its SNI, and the resolver sees every
    /// ClientHello (resumed ones too) inside the handshake step that reads it, so the
    /// handshake ([`stream::accept`]) takes it from here right after each step.
    static SEEN_SNI: Cell<Option<Box<str>>> = const { Cell::new(None) };
}

/// The name [`SniResolver`] last saw on this thread, taken (see `SEEN_SNI`).
pub(crate) fn take_seen_sni() -> Option<Box<str>> {
    SEEN_SNI.take()
}

/// The rustls server config: TLS 1.2 and 1.3 only, ALPN h2 then http/1.1, session
/// tickets on (resumption is what keeps reconnecting browsers cheap).
pub fn server_config(
    store: Arc<ArcSwap<CertStore>>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(store)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(20_000);
    // One TLS 1.3 ticket per handshake, resumed ones included, so a returning client
    // always holds a fresh one for its next connection (Go's server sends one; OpenSSL
    // one per resumption). A client that wants more for parallel connections asks for
    // them (RFC 9149 `ticket_request`) and gets up to four. Each ticket costs the client
    // a session to parse and keep, on every connection.
    cfg.send_tls13_tickets = 1;
    cfg.max_tls13_tickets = 4;
    Ok(Arc::new(cfg))
}
