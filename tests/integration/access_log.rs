//! The access log as the tools read it: the `haproxy` format through Debian's `halog`
//! (statuses, servers, URLs, termination codes of known requests), a log file moved
//! away by logrotate and reopened on SIGUSR1, and `json` lines that are JSON alone.

use crate::harness::{Stack, wait_until};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `halog ARGS < file`: its report, without the summary it prints on stderr.
fn halog(args: &[&str], file: &std::path::Path) -> String {
    let out = Command::new("halog")
        .args(args)
        .stdin(std::fs::File::open(file).expect("log"))
        .stderr(Stdio::null())
        .output()
        .expect("halog (apt-get install haproxy)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halog_reads_the_haproxy_format() {
    let s = Stack::with_config(&[(
        "access_log: text",
        "access_log: haproxy\naccess_log_to: ../access.log",
    )])
    .await;
    let log = s.dir.path().join("access.log");
    let c = s.client();
    // Known requests: the client's own count of statuses, servers and paths.
    let asks = [
        ("data.localhost", "/"),
        ("data.localhost", "/"),
        ("data.localhost", "/"),
        ("data.localhost", "/api/records"),
        ("store.localhost", "/records/1/files/a.bin"),
        ("store.localhost", "/"),
        ("store.localhost", "/admin"),
    ];
    let (mut statuses, mut servers, mut paths) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (host, path) in asks {
        let got = c.get(host, path).await;
        *statuses.entry(got.status).or_insert(0) += 1;
        *paths.entry(path.to_string()).or_insert(0) += 1;
        if got.status == 200 {
            *servers.entry(got.served_by()).or_insert(0) += 1;
        }
    }
    wait_until("the log lines", Duration::from_secs(5), async || {
        lines(&log) >= asks.len()
    })
    .await;

    // -st: requests per status, as the client saw them.
    let st: BTreeMap<u16, u32> = halog(&["-st"], &log)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.parse().expect("status"), b.parse().expect("count")))
        .collect();
    assert_eq!(st, statuses);
    // -srv: requests per server that answered 2xx, named `service/server`.
    let srv = halog(&["-srv"], &log);
    for (server, n) in &servers {
        let row = srv
            .lines()
            .find(|l| {
                l.split(' ')
                    .next()
                    .is_some_and(|f| f.ends_with(&format!("/{server}")))
            })
            .unwrap_or_else(|| panic!("no {server} in {srv}"));
        let f: Vec<&str> = row.split(' ').collect();
        assert_eq!(f[2], n.to_string(), "2xx of {server}: {row}");
    }
    // Refusals name no server.
    assert!(srv.contains("/<NOSRV> "), "{srv}");
    // -u: requests per URL.
    let u = halog(&["-u"], &log);
    for (path, n) in &paths {
        let row = u
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("no {path} in {u}"));
        assert!(row.starts_with(&format!("{n} ")), "{row}");
    }
    // -tc: termination codes; the refused requests are the proxy's (P), at request (R).
    let refused: u32 = statuses
        .iter()
        .filter(|(s, _)| **s >= 400)
        .map(|(_, n)| n)
        .sum();
    let tc = halog(&["-tc"], &log);
    assert!(tc.contains(&format!("PR {refused}")), "{tc}");
    assert!(tc.contains("-- "), "{tc}");

    // logrotate: the file is moved away, SIGUSR1, and new lines go to a new file.
    let rotated = s.dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let kill = Command::new("kill")
        .args(["-USR1", &s.pid().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    wait_until("the reopen", Duration::from_secs(5), async || {
        s.log().contains("access log reopened")
    })
    .await;
    c.get("data.localhost", "/").await;
    wait_until(
        "a line in the new file",
        Duration::from_secs(5),
        async || lines(&log) == 1,
    )
    .await;
    assert_eq!(lines(&rotated), asks.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_json_alone() {
    let s = Stack::with_config(&[("access_log: text", "access_log: json")]).await;
    let c = s.client();
    for path in ["/", "/api/records", "/nope/../x"] {
        c.get("data.localhost", path).await;
    }
    let access = |log: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter(|l| l.contains("\"request_id\""))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    };
    wait_until("three lines", Duration::from_secs(5), async || {
        access(&s.log()).len() == 3
    })
    .await;
    let v = access(&s.log());
    assert_eq!(v[0]["status"], 200);
    assert_eq!(v[0]["termination_state"], "----");
    assert_eq!(v[1]["service"], "api");
}

/// `access_log_to: syslog:PATH`: one RFC 3164 datagram per request (local0.info, tagged
/// `gatehouse[pid]`), as a syslog daemon on `/dev/log` receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_gets_one_datagram_per_request() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let s = Stack::with_config(&[(
        "access_log: text",
        &format!(
            "access_log: haproxy\naccess_log_to: syslog:{}",
            path.display()
        ),
    )])
    .await;
    let got = s.client().get("data.localhost", "/").await;
    assert_eq!(got.status, 200);
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).expect("a datagram");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("<134>"), "{msg}");
    assert!(
        msg.contains(&format!(" gatehouse[{}]: 127.0.0.1:", s.pid())),
        "{msg}"
    );
    assert!(
        msg.ends_with("\"GET / HTTP/1.1\"") && msg.contains(" 200 "),
        "{msg}"
    );
}
