//! Every rule of the shipped repository example, HTTP/1.1 and HTTP/2, SNI and redirects.

use crate::harness::{Req, Stack};
use bytes::Bytes;
use http_body_util::Full;
use std::net::IpAddr;

const OUTSIDE: &str = "127.0.0.2";

fn outside() -> Req {
    Req {
        from: Some(OUTSIDE.parse::<IpAddr>().unwrap()),
        ..Req::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_rules() {
    let s = Stack::start().await;
    let c = s.client();

    let r = c.get("data.localhost", "/").await;
    assert_eq!(r.status, 200);
    assert!(r.served_by().starts_with("ui-blue-"), "{}", r.served_by());
    assert_eq!(r.headers["strict-transport-security"], "max-age=31536000");

    let r = c.get_with("data.localhost", "/", &outside()).await;
    assert_eq!(
        r.status, 403,
        "campus-only site must refuse outside clients"
    );
    assert_eq!(r.served_by(), "");
    let page = String::from_utf8_lossy(&r.body).into_owned();
    assert!(page.contains("from your network"), "{page}");

    let r = c.get("data.localhost", "/api/records?q=1").await;
    assert_eq!(r.status, 200);
    assert!(r.served_by().starts_with("api-blue-"), "{}", r.served_by());
    assert_eq!(r.json()["query"], "q=1");

    let r = c.get("data.localhost", "/static/app.css").await;
    assert!(r.served_by().starts_with("ui-blue-"));
    assert_eq!(r.headers["content-type"], "text/css");

    let r = c.get("data-dev.localhost", "/").await;
    assert!(
        r.served_by().starts_with("ui-green-"),
        "-dev hosts use the other colour: {}",
        r.served_by()
    );
    let r = c.get("data-dev.localhost", "/api/x").await;
    assert!(r.served_by().starts_with("api-green-"), "{}", r.served_by());

    let r = c
        .get_with("store.localhost", "/records/abc/files/1M.bin", &outside())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(
        r.body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
    let r = c
        .get_with(
            "store-dev.localhost",
            "/records/abc/files/1K.bin",
            &outside(),
        )
        .await;
    assert!(r.served_by().starts_with("api-green-"));

    for path in [
        "/api/records",
        "/",
        "/records/abc",
        "/records/a/files/b/c",
        "/records/a/files/",
    ] {
        let r = c.get_with("store.localhost", path, &outside()).await;
        assert_eq!(
            r.status, 403,
            "store.* must only serve file downloads: {path}"
        );
        // A path the site does not serve is not blamed on the client's network.
        let page = String::from_utf8_lossy(&r.body).into_owned();
        assert!(page.contains("not served here"), "{page}");
    }

    let r = c.get("nowhere.data.localhost", "/").await;
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("404"));
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_over_the_live_colour() {
    let s = Stack::start().await;
    let c = s.client();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(c.get("data.localhost", "/").await.served_by());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["ui-blue-1", "ui-blue-2"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_and_http1() {
    let s = Stack::start().await;
    let c = s.client();
    let h2 = Req {
        h2: true,
        ..Req::default()
    };
    let r = c.get_with("data.localhost", "/api/v", &h2).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert!(r.served_by().starts_with("api-blue-"));
    assert_eq!(
        r.json()["host"],
        "data.localhost",
        "the server sees the host from :authority"
    );
    let r = c
        .get_with(
            "store.localhost",
            "/api/records",
            &Req {
                h2: true,
                ..outside()
            },
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c.get("data.localhost", "/").await;
    assert_eq!(r.version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread")]
async fn host_must_match_sni() {
    let s = Stack::start().await;
    let c = s.client();
    let r = c
        .get_with(
            "data.localhost",
            "/",
            &Req {
                sni: Some("store.localhost".into()),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(r.status, 421);
    let r = c
        .get_with(
            "data.localhost",
            "/",
            &Req {
                sni: Some("store.localhost".into()),
                h2: true,
                ..Req::default()
            },
        )
        .await;
    assert_eq!(r.status, 421);
    let r = c
        .get_with(
            "DATA.localhost",
            "/",
            &Req {
                sni: Some("data.localhost".into()),
                ..Req::default()
            },
        )
        .await;
    assert_eq!(r.status, 200, "host comparison ignores case");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_chosen_by_sni() {
    let s = Stack::start().await;
    let c = s.client();
    let names = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| -> Vec<String> {
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    for (sni, want) in [
        (Some("data.localhost"), "data.localhost"),
        (Some("store-dev.localhost"), "store.localhost"),
        (Some("mirror.data.localhost"), "*.data.localhost"),
        (None, "localhost"),
    ] {
        let tls = c.connect(sni, &[b"h2", b"http/1.1"], None).await.unwrap();
        let n = names(&tls);
        assert!(n.iter().any(|x| x.contains(want)), "{sni:?} got {n:?}");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_redirects_to_https() {
    let s = Stack::start().await;
    let (status, head) = plain_get(s.http, "data.localhost", "/x?y=1").await;
    assert_eq!(status, 308);
    assert!(
        head.contains("location: https://data.localhost:8443/x?y=1"),
        "{head}"
    );
    let (status, head) = plain_get(
        s.http,
        "data.localhost",
        "/.well-known/acme-challenge/token",
    )
    .await;
    assert_eq!(status, 200, "ACME challenges are not redirected: {head}");
    assert!(head.contains("x-served-by: ui-blue-"));
    assert!(
        !head.contains("strict-transport-security"),
        "no HSTS over plain HTTP"
    );
}

async fn plain_get(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let head = format!("{:?}", resp.headers())
        .to_lowercase()
        .replace("\": \"", ": ");
    (resp.status().as_u16(), head)
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_forwarding_headers_are_ignored_and_rewritten() {
    let s = Stack::start().await;
    let c = s.client();
    let req = http::Request::get("/")
        .header("host", "data.localhost")
        .header("x-forwarded-for", "127.0.0.1")
        .header("forwarded", "for=127.0.0.1")
        .header("x-real-ip", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(&outside(), req).await;
    assert_eq!(
        r.status, 403,
        "a forged X-Forwarded-For must not open the campus site"
    );

    let req = http::Request::get("/api/who")
        .header("host", "data.localhost")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "http")
        .header("x-real-ip", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(&Req::default(), req).await;
    let j = r.json();
    assert_eq!(j["x_forwarded_for"], "127.0.0.1");
    assert_eq!(j["x_forwarded_proto"], "https");
    assert_eq!(j["x_forwarded_host"], "data.localhost");
    assert_eq!(j["x_real_ip"], "");
    assert_eq!(
        j["forwarded"],
        "for=127.0.0.1;proto=https;host=\"data.localhost\""
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_servers() {
    // Without the backup server, so that the last primary's death is a 502.
    let no_backup = (
        "      - { name: ui-blue-3,  addr: 127.0.0.1:5103, backup: true }   # only when 1 and 2 are down\n".to_string(),
        String::new(),
    );
    let s = Stack::start_with(crate::harness::Options {
        dead: vec!["ui-blue-1".into()],
        rules_edits: vec![no_backup],
        ..Default::default()
    })
    .await;
    let c = s.client();
    for _ in 0..4 {
        let r = c.get("data.localhost", "/").await;
        assert_eq!(
            r.status, 200,
            "a refused connect is retried on the other server"
        );
        assert_eq!(r.served_by(), "ui-blue-2");
    }
    s.stop_server("ui-blue-2").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = c.get("data.localhost", "/").await;
    assert_eq!(
        r.status, 502,
        "a server that refuses the connection is a bad gateway"
    );
    assert!(String::from_utf8_lossy(&r.body).contains("502"));
    // Once health marks it DOWN, no server is left: the backup page with 503.
    let mut last = 0;
    for _ in 0..60 {
        last = c.get("data.localhost", "/").await.status;
        if last == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last, 503);
}
