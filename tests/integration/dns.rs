//! Servers named by DNS (issue 18, item 6), against Debian's dnsmasq on loopback whose
//! answer the test changes while the proxy runs.

use crate::harness::{Kill, Options, Stack, wait_until};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// dnsmasq answering from `hosts` only (no upstream, no /etc/hosts), TTL 1 s, on
/// 127.0.0.1:`port`; SIGHUP makes it read `hosts` again.
fn dnsmasq(hosts: &Path, port: u16, dir: &Path) -> Kill {
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local-ttl=1",
            "--cache-size=0",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .arg(format!("--user={}", user.trim()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (Debian package dnsmasq-base)");
    Kill(child)
}

fn hup(k: &Kill) {
    let _ = Command::new("kill")
        .args(["-HUP", &k.0.id().to_string()])
        .status();
}

/// A port free on 127.0.0.2, .3 and .4 at once (DNS gives addresses; the port is the rules').
fn port_on_all() -> u16 {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if ["127.0.0.3", "127.0.0.4"]
            .iter()
            .all(|ip| TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-4");
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Who answered a handful of API requests.
async fn served_by(s: &Stack) -> BTreeSet<String> {
    let c = s.client();
    let mut by = BTreeSet::new();
    for _ in 0..8 {
        let got = c.get("data.localhost", "/api/records").await;
        assert_eq!(got.status, 200);
        by.insert(got.served_by());
    }
    by
}

/// The api service's blue servers from the stats JSON: name → address.
async fn dns_servers(s: &Stack) -> Vec<(String, String)> {
    let svc = s.service_json("api").await;
    svc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["colour"] == "blue")
        .map(|v| {
            let addr = v["addr"].as_str().unwrap_or("");
            let ip = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
            (v["name"].as_str().unwrap_or("").to_string(), ip.to_string())
        })
        .collect()
}

/// Issue 18, item 6: `addr: api.test:PORT` becomes one server per address DNS gives
/// (`api-dns#1`, …), each with its own health and counters. The test's dnsmasq first
/// answers one address, then two, then only the second (the first's slot is freed, the
/// second keeps `#2`), then a new one (it takes the free `#1`); when dnsmasq stops, the
/// last good addresses keep serving and the stats page says the name is failing.
/// `check` accepts the names without resolving them.
#[tokio::test(flavor = "multi_thread")]
async fn servers_named_by_dns_follow_the_answer_and_survive_its_failure() {
    let port = port_on_all();
    let dns_port = udp_port();
    let s = Stack::start_with(Options {
        rules_edits: vec![
            (
                "- { name: api-blue-1,  addr: 127.0.0.1:5201 }".into(),
                format!("- {{ name: api-dns, addr: api.test:{port} }}"),
            ),
            ("- { name: api-blue-2,  addr: 127.0.0.1:5202 }".into(), String::new()),
        ],
        config_edits: vec![(
            "request_id: true".into(),
            format!(
                "request_id: true\ndns: {{ nameservers: [\"127.0.0.1:{dns_port}\"], interval: 2s, timeout: 500ms }}"
            ),
        )],
        ..Options::default()
    })
    .await;
    let hosts = s.dir.path().join("dns-hosts");
    let set_hosts = |ips: &[&str]| {
        let text: String = ips.iter().map(|ip| format!("{ip} api.test\n")).collect();
        std::fs::write(&hosts, text).unwrap();
    };
    for (name, ip) in [
        ("dns-a", "127.0.0.2"),
        ("dns-b", "127.0.0.3"),
        ("dns-c", "127.0.0.4"),
    ] {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        s.standins.start(name, addr).await.unwrap();
    }
    // `check` takes the name as written (nothing is resolved).
    let cfg = s.config_path();
    let (code, out, err) = s.cli(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("servers by DNS name, resolved at run time: api.test"),
        "{out}"
    );

    set_hosts(&["127.0.0.2"]);
    let dns = dnsmasq(&hosts, dns_port, s.dir.path());
    // The proxy started before dnsmasq: its first lookups failed, and it asks again
    // (after its resolver's own timeout and the retry delay: slow in a loaded debug build).
    wait_until(
        "api-dns#1 at 127.0.0.2",
        Duration::from_secs(30),
        async || dns_servers(&s).await == [("api-dns#1".into(), "127.0.0.2".into())],
    )
    .await;
    wait_until("dns-a serving", Duration::from_secs(5), async || {
        served_by(&s).await == BTreeSet::from(["dns-a".into()])
    })
    .await;

    set_hosts(&["127.0.0.2", "127.0.0.3"]);
    hup(&dns);
    wait_until("two servers by DNS", Duration::from_secs(10), async || {
        dns_servers(&s).await
            == [
                ("api-dns#1".into(), "127.0.0.2".into()),
                ("api-dns#2".into(), "127.0.0.3".into()),
            ]
    })
    .await;
    wait_until(
        "dns-a and dns-b serving",
        Duration::from_secs(5),
        async || served_by(&s).await == BTreeSet::from(["dns-a".into(), "dns-b".into()]),
    )
    .await;

    // .2 goes: #2 keeps .3 (its slot, health and counters); #1 is gone.
    let b_before = s
        .standins
        .get("dns-b")
        .unwrap()
        .served
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(b_before > 0);
    set_hosts(&["127.0.0.3"]);
    hup(&dns);
    wait_until("only api-dns#2", Duration::from_secs(10), async || {
        dns_servers(&s).await == [("api-dns#2".into(), "127.0.0.3".into())]
    })
    .await;
    assert_eq!(served_by(&s).await, BTreeSet::from(["dns-b".into()]));
    let svc = s.service_json("api").await;
    let two = svc["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api-dns#2")
        .unwrap()
        .clone();
    assert!(
        two["counters"]["requests"].as_u64().unwrap() >= b_before,
        "{two}"
    );

    // A new address takes the freed slot #1.
    set_hosts(&["127.0.0.3", "127.0.0.4"]);
    hup(&dns);
    wait_until(
        "api-dns#1 at 127.0.0.4",
        Duration::from_secs(10),
        async || {
            dns_servers(&s).await
                == [
                    ("api-dns#1".into(), "127.0.0.4".into()),
                    ("api-dns#2".into(), "127.0.0.3".into()),
                ]
        },
    )
    .await;

    // DNS goes away: the last good addresses stay, and the page says so.
    drop(dns);
    wait_until(
        "the name shown failing",
        Duration::from_secs(10),
        async || {
            let j = s.stats_json().await;
            j["dns"][0]["name"] == "api.test" && !j["dns"][0]["error"].is_null()
        },
    )
    .await;
    let (_, page) = s.stats_get("/stats").await;
    assert!(page.contains("failing, last good addresses kept"), "{page}");
    let (_, metrics) = s.stats_get("/metrics").await;
    assert!(
        metrics.contains("gatehouse_dns_failing{name=\"api.test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_dns_addresses{name=\"api.test\"} 2"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(dns_servers(&s).await.len(), 2);
    assert_eq!(
        served_by(&s).await,
        BTreeSet::from(["dns-b".into(), "dns-c".into()])
    );
    assert!(
        s.log()
            .contains("DNS lookup failed; the last good addresses stay")
    );
}
