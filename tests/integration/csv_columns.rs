//! The CSV (`/stats;csv`) column by column beside HAProxy 2.6's for the same small setup:
//! a site/frontend with a deny, a service/backend of one UP and one DOWN server, the same
//! requests (5 forwarded, 1 denied). Every column HAProxy fills that Gatehouse leaves
//! empty, or the other way round, is listed; the list must be exactly [`DIFFERENT`] (each
//! entry has its reason in docs/operations.md, "The CSV beside HAProxy's").

use crate::harness::{Kill, Stack, free_port, wait_until};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Columns only HAProxy fills, by row kind, besides its per-protocol ones (`h1_*`, `h2_*`,
/// `ssl_*`, `-`: Gatehouse keeps no per-proxy protocol counts and its header stops before
/// them). Why each: docs/operations.md, "The CSV beside HAProxy's".
const HAPROXY_ONLY: &[(&str, &[&str])] = &[
    (
        "FRONTEND",
        &[
            "slim",
            "ereq",
            "conn_rate",
            "conn_rate_max",
            "conn_tot",
            "eint",
        ],
    ),
    (
        "BACKEND",
        &[
            "slim",
            "lastsess",
            "qtime",
            "ctime",
            "connect",
            "reuse",
            "qtime_max",
            "ctime_max",
            "rtime_max",
            "ttime_max",
            "eint",
            "agg_server_status",
            "agg_server_check_status",
            "agg_check_status",
        ],
    ),
    ("server UP", SERVER_ONLY),
    ("server DOWN", &["last_chk"]),
    ("server DOWN", SERVER_ONLY),
];

const SERVER_ONLY: &[&str] = &[
    "lastsess",
    "qtime",
    "ctime",
    "check_health",
    "connect",
    "reuse",
    "srv_icur",
    "qtime_max",
    "ctime_max",
    "rtime_max",
    "ttime_max",
    "eint",
    "idle_conn_cur",
    "safe_conn_cur",
    "used_conn_cur",
    "need_conn_est",
];

/// Columns only Gatehouse fills: a server's address (HAProxy shows it with
/// `stats show-legends`).
const GATEHOUSE_ONLY: &[(&str, &str)] = &[("server UP", "addr"), ("server DOWN", "addr")];

fn protocol(col: &str) -> bool {
    col == "-" || ["h1_", "h2_", "ssl_"].iter().any(|p| col.starts_with(p))
}

/// (header, rows by name) of a CSV.
fn parse(csv: &str) -> (Vec<String>, HashMap<String, Vec<String>>) {
    let mut lines = csv.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .trim_end_matches(',')
        .split(',')
        .map(String::from)
        .collect();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let cells: Vec<String> = l.split(',').map(String::from).collect();
            (format!("{},{}", cells[0], cells[1]), cells)
        })
        .collect();
    (header, rows)
}

fn filled(header: &[String], row: &[String], col: &str) -> bool {
    header
        .iter()
        .position(|c| c == col)
        .and_then(|i| row.get(i))
        .is_some_and(|v| !v.is_empty())
}

async fn curl(url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// HAProxy 2.6 in front of the same API stand-in, plus a dead server.
fn haproxy(dir: &std::path::Path, web: u16, stats: u16, up: &str) -> Kill {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend web\n  bind 127.0.0.1:{web}\n  http-request deny if {{ path_beg /deny }}\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option httpchk GET /healthz\n  server a1 {up} check inter 500ms\n  server a2 127.0.0.1:{} check inter 500ms\n\
             listen stats\n  bind 127.0.0.1:{stats}\n  stats enable\n  stats uri /stats\n",
            free_port()
        ),
    )
    .unwrap();
    Kill(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is installed (.ci/run installs it)"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_fills_the_columns_haproxy_fills() {
    let s = Stack::start().await;
    let rules = std::fs::read_to_string(s.rules_path()).unwrap();
    let up = rules
        .lines()
        .find(|l| l.contains("api-blue-1"))
        .and_then(|l| l.split("addr: ").nth(1))
        .and_then(|a| a.split([' ', '}']).next())
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let (web, stats) = (free_port(), free_port());
    let _h = haproxy(dir.path(), web, stats, &up);
    s.stop_server("api-blue-2").await;
    let c = s.client();
    for i in 0..5 {
        assert_eq!(
            c.get("data.localhost", &format!("/api/c{i}")).await.status,
            200
        );
    }
    assert_eq!(c.get("store.localhost", "/deny").await.status, 403);
    let mut h_csv = String::new();
    wait_until(
        "HAProxy to mark a2 DOWN",
        Duration::from_secs(15),
        async || {
            h_csv = curl(&format!("http://127.0.0.1:{stats}/stats;csv")).await;
            h_csv
                .lines()
                .any(|l| l.starts_with("app,a2,") && l.contains(",DOWN,"))
        },
    )
    .await;
    for i in 0..5 {
        let got = curl(&format!("http://127.0.0.1:{web}/api/c{i}")).await;
        assert!(!got.is_empty(), "HAProxy forwarded");
    }
    let _ = curl(&format!("http://127.0.0.1:{web}/deny")).await;
    wait_until(
        "Gatehouse to mark api-blue-2 DOWN",
        Duration::from_secs(15),
        async || s.server_status("api-blue-2").await == "DOWN",
    )
    .await;
    h_csv = curl(&format!("http://127.0.0.1:{stats}/stats;csv")).await;
    let g_csv = s.stats_get("/stats;csv").await.1;
    let (hh, hr) = parse(&h_csv);
    let (gh, gr) = parse(&g_csv);
    let pairs = [
        ("FRONTEND", "web,FRONTEND", "data,FRONTEND"),
        ("BACKEND", "app,BACKEND", "api,BACKEND"),
        ("server UP", "app,a1", "api,api-blue-1"),
        ("server DOWN", "app,a2", "api,api-blue-2"),
    ];
    let (mut h_only, mut g_only) = (Vec::new(), Vec::new());
    for (kind, h, g) in pairs {
        let (h, g) = (&hr[h], &gr[g]);
        for col in hh.iter().filter(|c| !protocol(c)) {
            match (filled(&hh, h, col), filled(&gh, g, col)) {
                (true, false) => h_only.push(format!("{kind}: {col}")),
                (false, true) => g_only.push(format!("{kind}: {col}")),
                _ => {}
            }
        }
    }
    println!(
        "HAProxy only:\n{}\nGatehouse only:\n{}",
        h_only.join("\n"),
        g_only.join("\n")
    );
    let mut want_h: Vec<String> = HAPROXY_ONLY
        .iter()
        .flat_map(|(k, cols)| cols.iter().map(move |c| format!("{k}: {c}")))
        .collect();
    let want_g: Vec<String> = GATEHOUSE_ONLY
        .iter()
        .map(|(k, c)| format!("{k}: {c}"))
        .collect();
    let order = |v: &mut Vec<String>| v.sort();
    order(&mut h_only);
    order(&mut want_h);
    assert_eq!(h_only, want_h, "HAProxy:\n{h_csv}\nGatehouse:\n{g_csv}");
    assert_eq!(g_only, want_g, "HAProxy:\n{h_csv}\nGatehouse:\n{g_csv}");
}
