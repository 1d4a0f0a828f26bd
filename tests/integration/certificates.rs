//! Certificates as ops live with them: a renewal that only rewrites the certificate files
//! is served without a signal; expiry shows on the page, in Prometheus and in `check`;
//! `check` refuses a site host no certificate covers.

use crate::harness::{Stack, wait_until};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The notAfter of the certificate served for `sni`, as `openssl x509 -enddate` says it.
fn served_enddate(s: &Stack, sni: &str) -> String {
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &s.https.to_string(),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let pem = client.stdout.take().expect("stdout");
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate"])
        .stdin(pem)
        .output()
        .expect("openssl x509");
    let _ = client.wait();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_and_its_expiry_shown() {
    let s = Stack::start().await;
    let before = served_enddate(&s, "data.localhost");
    assert!(before.starts_with("notAfter="), "{before}");
    // A renewal (as certbot's deploy step does): new files renamed over the old ones.
    let certs = s.dir.path().join("certs");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "5", "-subj", "/CN=data.localhost"])
        .args([
            "-addext",
            "subjectAltName=DNS:data.localhost,DNS:data-dev.localhost",
        ])
        .arg("-keyout")
        .arg(certs.join("new.key"))
        .arg("-out")
        .arg(certs.join("new.pem"))
        .output()
        .expect("openssl req");
    assert!(made.status.success());
    let expected = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(certs.join("new.pem"))
        .output()
        .expect("openssl");
    let expected = String::from_utf8_lossy(&expected.stdout).trim().to_string();
    std::fs::rename(certs.join("new.key"), certs.join("data.key")).expect("key");
    std::fs::rename(certs.join("new.pem"), certs.join("data.pem")).expect("cert");
    wait_until(
        "the renewed certificate",
        Duration::from_secs(10),
        async || served_enddate(&s, "data.localhost") == expected,
    )
    .await;
    assert_ne!(before, expected);
    assert!(
        s.log().contains(r#""action":"certificates""#),
        "{}",
        s.log()
    );

    // Expiry: Prometheus (Unix seconds) and the page (days left, flagged under 14).
    let (_, metrics) = s.stats_get("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("gatehouse_certificate_not_after_seconds{") && l.contains("data.pem")
        })
        .unwrap_or_else(|| panic!("no expiry gauge: {metrics}"));
    let not_after: i64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let days = (not_after - now) as f64 / 86_400.0;
    assert!((4.9..5.1).contains(&days), "{line}");
    let (_, page) = s.stats_get("/stats").await;
    let row = page
        .split("<tr data-cert=")
        .find(|r| r.contains("data.pem"))
        .expect("certificate row");
    // Five days from the second it was made: 4 or 5 whole days left, by rounding.
    assert!(row.contains("class=\"down\""), "{row}");
    assert!(
        row.contains("<td>4</td>") || row.contains("<td>5</td>"),
        "{row}"
    );

    // `check` warns of it, and refuses a host no certificate covers.
    let config = s.config_path();
    let config = config.to_str().expect("path");
    let (code, out, err) = s.cli(&["check", "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("data.pem: warning: the certificate expires in 4 days")
            || out.contains("data.pem: warning: the certificate expires in 5 days"),
        "{out}"
    );
    let rules = std::fs::read_to_string(s.rules_path()).expect("rules");
    let rules = rules.replacen("hosts: [store.*]", "hosts: [store.*, files.example.org]", 1);
    std::fs::write(s.rules_path(), rules).expect("write");
    let (code, out, err) = s.cli(&["check", "-c", config]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("no certificate covers `files.example.org`"),
        "{err}"
    );
}
