//! TLS to servers (issue 18, item 7): a real nginx speaking only TLS behind the proxy.

use crate::harness::{Options, Stack, free_port, wait_until};
use crate::servers::nginx;
use std::time::Duration;

const API_BLUE: &str = "    blue:\n      - { name: api-blue-1,  addr: 127.0.0.1:5201 }\n      - { name: api-blue-2,  addr: 127.0.0.1:5202 }";

/// nginx with the stack's `default` certificate (localhost, *.localhost, 127.0.0.1, from
/// the stack's CA), answering with what it saw: the SNI name and the connection's request
/// count (above 1: the proxy reused the connection).
fn tls_nginx(s: &Stack, port: u16) -> crate::harness::Kill {
    let certs = s.dir.path().join("certs");
    let body = format!(
        "server {{\n listen 127.0.0.1:{port} ssl;\n ssl_certificate {c}/default.pem;\n \
         ssl_certificate_key {c}/default.key;\n keepalive_requests 10000;\n \
         location /ping {{ return 200 \"pong\\n\"; }}\n \
         location / {{ add_header X-Served-By nginx-tls; return 200 \"sni=[$ssl_server_name] n=$connection_requests\\n\"; }}\n}}",
        c = certs.display()
    );
    let dir = s.dir.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    nginx(&dir, &body, port)
}

async fn api(s: &Stack) -> (u16, String) {
    let got = s.client().get("data.localhost", "/api/records").await;
    (got.status, String::from_utf8_lossy(&got.body).into_owned())
}

fn set_tls(s: &Stack, tls: &str) {
    let path = s.rules_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.find("    tls: ").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    std::fs::write(
        &path,
        format!("{}    tls: {tls}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    s.hup();
}

/// A service with `tls: { ca, sni }` reaches an nginx that speaks only TLS: the health
/// check and the requests go over TLS with that SNI, and connections are reused. With a
/// CA that did not sign the server's certificate, nothing is sent (503, the server goes
/// DOWN); `verify: none` then connects anyway, and `check` warns about it with its place.
/// Without `sni`, the certificate is verified against the server's address.
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_servers_verifies_sends_sni_and_reuses_connections() {
    let port = free_port();
    let s = Stack::start_with(Options {
        rules_edits: vec![(
            API_BLUE.into(),
            format!(
                "    tls: {{ ca: ../certs/ca.pem, sni: localhost }}\n    blue:\n      - {{ name: api-tls, addr: \"127.0.0.1:{port}\" }}"
            ),
        )],
        ..Options::default()
    })
    .await;
    let _nginx = tls_nginx(&s, port);
    wait_until("api-tls UP", Duration::from_secs(10), async || {
        api(&s).await.0 == 200
    })
    .await;
    let mut most = 0;
    for _ in 0..10 {
        let (status, body) = api(&s).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("sni=[localhost] n="), "{body}");
        let n: u32 = body.trim().rsplit('=').next().unwrap().parse().unwrap();
        most = most.max(n);
    }
    assert!(
        most >= 2,
        "no connection was reused (most requests on one: {most})"
    );
    let cfg = s.config_path();
    let (code, out, _) = s.cli(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!out.contains("warning"), "{out}");

    // A CA that did not sign nginx's certificate: refused, and the check fails too.
    let other = s.dir.path().join("other-ca");
    gatehouse::demo::certs::ensure(&other).unwrap();
    set_tls(&s, "{ ca: ../other-ca/ca.pem, sni: localhost }");
    wait_until("api-tls DOWN", Duration::from_secs(10), async || {
        s.server_status("api-tls").await == "DOWN"
    })
    .await;
    assert_eq!(api(&s).await.0, 503);

    // verify: none connects to the same server, and `check` says where that was written.
    set_tls(&s, "{ verify: none, sni: localhost }");
    wait_until("api-tls back", Duration::from_secs(10), async || {
        api(&s).await.0 == 200
    })
    .await;
    let (code, out, _) = s.cli(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(s.rules_path()).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("verify: none"))
        .unwrap()
        + 1;
    assert!(
        out.contains(&format!(
            "rules/repository.yaml:{line}:10: warning: service `api`: `verify: none`"
        )),
        "{out}"
    );
    assert!(s.log().contains("`verify: none`"), "not logged");

    // No `sni`: no name is sent, and the certificate's 127.0.0.1 is what is verified.
    set_tls(&s, "{ ca: ../certs/ca.pem }");
    wait_until("no SNI", Duration::from_secs(10), async || {
        api(&s).await.1.starts_with("sni=[] n=")
    })
    .await;
}
