//! TLS to a service's servers: the client config built from the rules, and the name sent.
//!
//! Built when the rules compile (a reload reads the CA file again). Either the servers'
//! certificates are verified against the service's CA file, or, with `verify: none`, not
//! at all (a next tier with self-signed certificates, HAProxy's `ssl verify none`), which
//! `check` warns about. Only HTTP/1.1 is offered (ALPN), as on plain connections.

use super::Server;
use pki_types::pem::PemObject;
use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// A service's TLS to its servers.
#[derive(Debug)]
pub struct UpstreamTls {
    /// The client config (roots or no verification, ALPN http/1.1, session resumption).
    pub config: Arc<rustls::ClientConfig>,
    /// The name sent as SNI and verified; `None`: the server's DNS name, else its address.
    pub sni: Option<String>,
    /// Whether certificates are verified.
    pub verify: bool,
    /// A digest of the settings (the CA file's content included), never 0: pooled
    /// connections made under other settings are not reused.
    pub fingerprint: u64,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// Verifying against the certificates in the PEM file `ca`.
    pub fn with_ca(ca: &Path, sni: Option<String>) -> Result<UpstreamTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("CA file {} holds no certificate", ca.display()));
        }
        let config = builder()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let pem = std::fs::read(ca).unwrap_or_default();
        Ok(Self::new(config, sni, true, &pem))
    }

    /// Not verifying the servers' certificates at all (the connection is still encrypted).
    pub fn unverified(sni: Option<String>) -> Result<UpstreamTls, String> {
        let verifier = Arc::new(NoVerify(provider()));
        let config = builder()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self::new(config, sni, false, b""))
    }

    fn new(
        mut config: rustls::ClientConfig,
        sni: Option<String>,
        verify: bool,
        ca_pem: &[u8],
    ) -> UpstreamTls {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let fingerprint = super::select::stable_hash((&sni, verify, ca_pem)).max(1);
        UpstreamTls {
            config: Arc::new(config),
            sni,
            verify,
            fingerprint,
        }
    }

    /// The name to send to `server`: the configured one, else its DNS name, else its
    /// address (verified against the certificate's IP addresses).
    pub fn server_name(&self, server: &Server) -> ServerName<'static> {
        let named = self.sni.as_deref().or(server.host.as_deref());
        named
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(server.addr.ip().into()))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
}

/// Accepts any certificate; signatures are still checked, so the handshake is real.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
