//! The runtime API socket, driven by the tools HAProxy shops use on HAProxy's: `socat`,
//! hatop (in tmux, its screen read back), prometheus-haproxy-exporter (`unix:` scrape
//! URI) and Ansible's `community.general.haproxy` module; and the state file that
//! carries MAINT and weights across a restart.
//!
//! The tools run as blocking child processes, so every test here runs on two threads:
//! the stand-in servers (on the test's runtime) keep answering health checks meanwhile
//! (on one thread, a 700 ms Ansible run once took a server DOWN).

use crate::harness::{Kill, Stack, free_port, socat, spawn_proxy, wait_until};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The demo stack: the shipped config has a runtime socket and a state file beside it
/// (the socket renamed here, so the test's path is its own choice).
async fn stack() -> Stack {
    Stack::with_config(&[(
        "runtime_socket: { path: gatehouse-api.sock,",
        "runtime_socket: { path: admin.sock,",
    )])
    .await
}

fn socket(s: &Stack) -> PathBuf {
    s.dir.path().join("config/admin.sock")
}

/// Sends `n` GETs to the UI and returns how many each UI stand-in served.
async fn spread(s: &Stack, n: usize) -> (u64, u64) {
    let (a0, b0) = (s.served("ui-blue-1"), s.served("ui-blue-2"));
    let c = s.client();
    for _ in 0..n {
        let got = c.get("data.localhost", "/").await;
        assert_eq!(got.status, 200, "{:?}", got.body);
    }
    (s.served("ui-blue-1") - a0, s.served("ui-blue-2") - b0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socat_reads_and_changes_the_running_proxy() {
    let s = stack().await;
    let sock = socket(&s);
    let info = socat(&sock, "show info\n");
    assert!(
        info.starts_with("Name: Gatehouse\nVersion: 2.6.0-gatehouse-"),
        "{info}"
    );
    assert!(info.contains(&format!("\nPid: {}\n", s.pid())), "{info}");
    assert!(
        info.ends_with("\n\n"),
        "answers end with an empty line: {info:?}"
    );
    // `show stat` is the stats page's CSV, row for row.
    let csv = socat(&sock, "show stat\n");
    let (_, page) = s.stats_get("/stats;csv").await;
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(names(csv.trim_end()), names(page.trim_end()));
    // Filters as hatop sends them: servers (type 4) of one proxy.
    let api_iid = csv
        .lines()
        .find(|l| l.starts_with("api,BACKEND,"))
        .and_then(|l| l.split(',').nth(27))
        .expect("api iid")
        .to_string();
    let servers = socat(&sock, &format!("show stat {api_iid} 4 -1\n"));
    let rows: Vec<&str> = servers.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert!(
        rows.len() >= 4 && rows.iter().all(|r| r.starts_with("api,api-")),
        "{servers}"
    );

    // Maintenance: the answer is empty (as HAProxy's), the server takes nothing.
    assert_eq!(socat(&sock, "disable server ui/ui-blue-1\n"), "\n");
    assert_eq!(s.server_status("ui-blue-1").await, "MAINT");
    assert_eq!(spread(&s, 6).await, (0, 6));
    assert_eq!(socat(&sock, "enable server ui/ui-blue-1\n"), "\n");
    assert_eq!(s.server_status("ui-blue-1").await, "UP");
    assert_eq!(
        socat(
            &sock,
            "set server ui/ui-blue-1 state drain; get weight ui/ui-blue-1\n"
        ),
        "\n1 (initial 1)\n\n"
    );
    assert_eq!(s.server_status("ui-blue-1").await, "DRAIN");
    socat(&sock, "set server ui/ui-blue-1 state ready\n");

    // Weights: 3 to 1 after `set weight`, back with `set server … weight`.
    assert_eq!(socat(&sock, "set weight ui/ui-blue-1 3\n"), "\n");
    assert_eq!(
        socat(&sock, "get weight ui/ui-blue-1\n"),
        "3 (initial 1)\n\n"
    );
    assert_eq!(spread(&s, 40).await, (30, 10));
    socat(&sock, "set server ui/ui-blue-1 weight 100%\n");
    assert_eq!(spread(&s, 40).await, (20, 20));

    // Errors in HAProxy's words; nothing changes.
    assert_eq!(
        socat(&sock, "disable server api/nope\n"),
        "No such server.\n\n"
    );
    assert_eq!(
        socat(&sock, "get weight api\n"),
        "Require 'backend/server'.\n\n"
    );
    assert!(socat(&sock, "set weight ui/ui-blue-1 999\n").starts_with("Absolute weight"));
    assert!(socat(&sock, "bogus\n").starts_with("Unknown command"));
    // Interactive mode: a prompt after each answer, until quit.
    let session = socat(&sock, "prompt\nget weight ui/ui-blue-2\nquit\n");
    assert_eq!(session, "\n> 1 (initial 1)\n\n> ");
    // A line longer than 16 KiB is refused and the session closed.
    let long = format!("show info {}\n", "x".repeat(20_000));
    assert_eq!(socat(&sock, &long), "Command line too long.\n\n");

    // Each change is audited with who made it (in the journal too).
    let log = s.log();
    let audit = log
        .lines()
        .find(|l| l.contains("\"action\":\"server_state\"") && l.contains("\"to\":\"MAINT\""))
        .unwrap_or_else(|| panic!("no audit line: {log}"));
    assert!(
        audit.contains("uid=") && audit.contains("ui-blue-1"),
        "{audit}"
    );

    // The socket is the proxy user's alone (mode 600 from the config).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colour_reload_and_explain_on_the_socket() {
    let s = stack().await;
    let sock = socket(&s);
    let colours = socat(&sock, "show colour\n");
    assert!(colours.contains("\nui blue 3/3 3/3\n"), "{colours}");
    let out = socat(&sock, "set colour ui green\n");
    assert!(
        out.contains("ui live blue -> green") && out.contains("reloaded: generation"),
        "{out}"
    );
    assert!(socat(&sock, "show colour\n").contains("\nui green "));
    let rules = std::fs::read_to_string(s.rules_path()).expect("rules");
    assert!(rules.contains("live: green"), "the rules file says it");
    let c = s.client();
    let got = c.get("data.localhost", "/").await;
    assert!(
        got.served_by().starts_with("ui-green"),
        "{:?}",
        got.served_by()
    );
    let e = socat(
        &sock,
        "explain https://store.localhost/records/1/files/a.bin from 203.0.113.9\n",
    );
    assert!(e.contains("forward") && e.contains("files"), "{e}");
    assert!(socat(&sock, "reload\n").contains("generation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_of_the_same_config_is_refused() {
    let s = stack().await;
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "-c"])
        .arg(s.config_path())
        .output()
        .expect("gatehouse");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    // The first still answers on its socket.
    assert!(socat(&socket(&s), "show info\n").starts_with("Name: Gatehouse"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_and_weights_survive_a_restart() {
    let mut s = stack().await;
    let sock = socket(&s);
    socat(
        &sock,
        "disable server ui/ui-blue-1; set weight ui/ui-blue-2 7\n",
    );
    let state = s.dir.path().join("config/servers.state");
    wait_until("the state file", Duration::from_secs(5), async || {
        std::fs::read_to_string(&state)
            .is_ok_and(|t| t.contains(" ui-blue-2 ") && t.contains(" 7 1 "))
    })
    .await;
    // The file is what `show servers state` says (HAProxy's `server-state-file` is that
    // command's output), ids included; the seconds-since-change column aside.
    let head = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#') && l.contains(' '))
            .map(|l| l.split(' ').take(9).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let file = std::fs::read_to_string(&state).unwrap_or_default();
    assert_eq!(head(&file), head(&socat(&sock, "show servers state\n")));
    // Stop (SIGTERM, drained) and start again with the same config.
    let _ = Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status();
    let _ = s.child.wait();
    let (child, https, _, _) = spawn_proxy(&s.config_path(), &s.stderr_log);
    s.child = child;
    s.https = https;
    assert_eq!(s.server_status("ui-blue-1").await, "MAINT");
    assert_eq!(
        socat(&sock, "get weight ui/ui-blue-2\n"),
        "7 (initial 1)\n\n"
    );
    assert_eq!(spread(&s, 4).await, (0, 4));
}

/// hatop, the curses client, in a tmux pane: its screen lists the proxies and servers
/// with their states as the socket reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hatop_shows_the_proxy() {
    let s = stack().await;
    let sock = socket(&s);
    socat(&sock, "disable server ui/ui-blue-2\n");
    let session = format!("gh{}", std::process::id());
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "60"])
        .arg(format!("hatop -s {} -i 1", sock.display()))
        .status()
        .expect("tmux");
    assert!(started.success());
    let _kill = TmuxSession(session.clone());
    let mut screen = String::new();
    wait_until("hatop's screen", Duration::from_secs(10), async || {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .expect("tmux");
        screen = String::from_utf8_lossy(&out.stdout).into_owned();
        screen.contains("ui-blue-2") && screen.contains("MAINT")
    })
    .await;
    assert!(screen.contains("Gatehouse"), "{screen}");
    assert!(
        screen.contains("ui-blue-1") && screen.contains("UP"),
        "{screen}"
    );
}

struct TmuxSession(String);
impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// prometheus-haproxy-exporter scraping the socket (`unix:` URI), as HAProxy shops run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_haproxy_exporter_scrapes_the_socket() {
    let s = stack().await;
    let sock = socket(&s);
    socat(&sock, "disable server api/api-blue-2\n");
    let got = s.client().get("data.localhost", "/api/records").await;
    assert_eq!(got.status, 200);
    let port = free_port();
    let exporter = Command::new("prometheus-haproxy-exporter")
        .arg(format!("--haproxy.scrape-uri=unix:{}", sock.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-haproxy-exporter");
    let _exporter = Kill(exporter);
    let mut metrics = String::new();
    wait_until("the exporter", Duration::from_secs(10), async || {
        metrics = http_get(port, "/metrics").await.unwrap_or_default();
        metrics.contains("haproxy_up 1")
    })
    .await;
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .to_string()
    };
    assert!(line("haproxy_server_up{backend=\"api\",server=\"api-blue-1\"}").ends_with(" 1"));
    assert!(line("haproxy_server_up{backend=\"api\",server=\"api-blue-2\"}").ends_with(" 0"));
    assert!(line("haproxy_backend_up{backend=\"api\"}").ends_with(" 1"));
    let served =
        "haproxy_server_http_responses_total{backend=\"api\",code=\"2xx\",server=\"api-blue-1\"}";
    assert!(line(served).ends_with(" 1"), "{metrics}");
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Ansible's `community.general.haproxy` module (ansible from PyPI, in the tests' virtual
/// environment) draining a server for a deploy and putting it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_haproxy_module_disables_and_enables_a_server() {
    let s = stack().await;
    let sock = socket(&s);
    let ansible = crate::interop::venv_bin("ansible");
    let run = |args: &str| {
        let out = Command::new(&ansible)
            .args([
                "localhost",
                "-c",
                "local",
                "-m",
                "community.general.haproxy",
                "-a",
            ])
            .arg(format!(
                "{args} socket={} backend=api host=api-blue-1 wait_interval=1 wait_retries=10",
                sock.display()
            ))
            .env("ANSIBLE_LOCALHOST_WARNING", "false")
            .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
            .output()
            .expect("ansible (pip install ansible)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let stat = socat(&sock, "show stat\n");
            let row: Vec<&str> = stat.lines().filter(|l| l.contains("api-blue-1")).collect();
            let log = s.log();
            let about: Vec<&str> = log.lines().filter(|l| l.contains("api-blue-1")).collect();
            panic!("{text}\nrow: {row:?}\nproxy log:\n{}", about.join("\n"));
        }
        text
    };
    let out = run("state=disabled wait=yes");
    assert!(out.contains("CHANGED"), "{out}");
    assert_eq!(s.server_status("api-blue-1").await, "MAINT");
    let out = run("state=drain wait=yes");
    assert!(out.contains("CHANGED"), "{out}");
    assert_eq!(s.server_status("api-blue-1").await, "DRAIN");
    let out = run("state=enabled wait=yes weight=2");
    assert!(out.contains("CHANGED"), "{out}");
    assert_eq!(s.server_status("api-blue-1").await, "UP");
    assert_eq!(
        socat(&sock, "get weight api/api-blue-1\n"),
        "2 (initial 1)\n\n"
    );
}

/// `reload`, `switch` and `explain` with `stats.auth` set: they send the config's
/// credentials (before, every one of them got 401 and `reload` failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_commands_send_the_stats_credentials() {
    let s = Stack::with_config(&[(
        "stats:\n",
        "stats:\n  auth: { user: ops, password: s3cret }\n  admin: true\n",
    )])
    .await;
    assert_eq!(s.stats_get("/stats?format=json").await.0, 401);
    let config = s.config_path();
    let config = config.to_str().expect("path");
    let (code, out, err) = s.cli(&["reload", "-c", config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reloaded: generation 2"), "{out}");
    let (code, out, err) = s.cli(&["switch", "-c", config, "ui", "green"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("3 server(s) UP") && !err.contains("could not"),
        "{out}{err}"
    );
    let (code, out, _) = s.cli(&["explain", "-c", config, "--json", "https://data.localhost/"]);
    assert_eq!(code, 0);
    let e: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(e["states_known"], true, "{out}");
    assert_eq!(e["colour"], "green", "{out}");
}
