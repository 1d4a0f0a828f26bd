//! Demo certificates: a throwaway CA and one certificate per host group, made at start.
//!
//! No private key is ever committed; `certs/ca.pem` lets curl verify the demo
//! (`--cacert`) instead of turning verification off.

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::Path;

/// The certificates the demo config names: file stem and the names each covers.
/// The first is the default (clients without SNI).
pub const DEMO_CERTS: [(&str, &[&str]); 3] = [
    ("default", &["localhost", "*.localhost", "127.0.0.1"]),
    (
        "data",
        &["data.localhost", "data-dev.localhost", "*.data.localhost"],
    ),
    ("store", &["store.localhost", "store-dev.localhost"]),
];

/// Writes `ca.pem` and `<stem>.pem` / `<stem>.key` for each demo certificate into `dir`,
/// unless they are all there already (so a workdir keeps its certificates across runs).
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    let all_there = dir.join("ca.pem").exists()
        && DEMO_CERTS.iter().all(|(stem, _)| {
            dir.join(format!("{stem}.pem")).exists() && dir.join(format!("{stem}.key")).exists()
        });
    if all_there {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse demo CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    for (stem, names) in DEMO_CERTS {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &ca)?;
        let chain = format!("{}{}", cert.pem(), ca.pem());
        std::fs::write(dir.join(format!("{stem}.pem")), chain)?;
        write_private(&dir.join(format!("{stem}.key")), &key.serialize_pem())?;
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}
