//! The audit log (`audit_log:`, set in the shipped config): every change as one JSON line
//! with who made it — a runtime socket command (peer uid), a rules edit (each changed key,
//! from and to), a refused edit, `gatehouse switch` (the CLI's user, then the reload it
//! asks for) — and the last ten on the stats page.

use crate::harness::{Stack, wait_until};
use serde_json::Value;
use std::time::Duration;

fn lines(s: &Stack) -> Vec<Value> {
    let text = std::fs::read_to_string(s.dir.path().join("config/audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l}: {e}"))
        })
        .collect()
}

fn socat(s: &Stack, line: &str) -> String {
    let sock = s.dir.path().join("config/gatehouse-api.sock");
    crate::harness::socat(&sock, &format!("{line}\n"))
}

async fn wait_for_entries(s: &Stack, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    wait_until("audit lines", Duration::from_secs(10), async || {
        got = lines(s);
        got.len() >= n
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_one_json_line_with_who() {
    // The shipped config has `audit_log: audit.log` (beside it, outside systemd).
    let s = Stack::start().await;
    // 1. The runtime socket: who is the peer's uid.
    assert_eq!(socat(&s, "disable server ui/ui-blue-1"), "\n");
    let e = &wait_for_entries(&s, 1).await[0];
    assert_eq!(e["action"], "server_state");
    assert!(e["who"].as_str().unwrap().starts_with("socket uid="), "{e}");
    assert_eq!(e["server"], "ui-blue-1");
    assert_eq!(e["to"], "MAINT");
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    // 2. A rules edit: a network range and the API's pool queue; each key listed.
    let rules = s.rules_path();
    let text = std::fs::read_to_string(&rules).unwrap();
    let edited = text.replacen(
        "campus: [127.0.0.1/32]",
        "campus: [127.0.0.1/32, 192.0.2.0/24]",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(&rules, &edited).unwrap();
    let e = wait_for_entries(&s, 2).await[1].clone();
    assert_eq!(e["action"], "reload");
    assert_eq!(e["who"], "file change");
    let changes = e["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{e}");
    assert_eq!(changes[0]["path"], "repository.yaml.networks.campus");
    assert_eq!(changes[0]["to"], serde_json::json!(["192.0.2.0/24"]));
    assert!(changes[0].get("from").is_none(), "{e}");
    // 3. A broken edit is refused, and the refusal says where.
    std::fs::write(
        &rules,
        edited.replacen("    live: blue", "    lvie: blue", 1),
    )
    .unwrap();
    let e = wait_for_entries(&s, 3).await[2].clone();
    assert_eq!(e["action"], "reload_refused");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `lvie`"),
        "{e}"
    );
    // 3b. Without `stats.auth`, an Authorization header is not checked, so the audit must
    //     not name its user: a client could blame someone else.
    let n = lines(&s).len();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Authorization: Basic bWFsbG9yeTp4"]) // mallory:x
        .arg(format!("http://{}/reload", s.stats))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "422");
    let all = wait_for_entries(&s, n + 1).await;
    let by_http = all[n..]
        .iter()
        .find(|e| e["who"].as_str().unwrap().starts_with("http "))
        .unwrap_or_else(|| panic!("the HTTP reload's line: {all:?}"));
    assert_eq!(by_http["who"], "http 127.0.0.1", "{by_http}");
    std::fs::write(&rules, &edited).unwrap();
    // 4. `gatehouse switch` from the command line: the CLI's user, then the reload with
    //    the one word changed (asked for by the CLI on the runtime socket, or seen first
    //    by the file watcher: whichever comes first applies it, the other finds no change).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let n = lines(&s).len();
    let config = s.config_path();
    let (code, out, err) = s.cli(&["switch", "-c", config.to_str().unwrap(), "api", "green"]);
    assert_eq!(code, 0, "{out}{err}");
    let all = wait_for_entries(&s, n + 2).await;
    let switch = all
        .iter()
        .find(|e| e["action"] == "colour")
        .expect("switch line");
    assert!(
        switch["who"].as_str().unwrap().starts_with("cli uid="),
        "{switch}"
    );
    assert_eq!(switch["service"], "api");
    let reload = all[n..]
        .iter()
        .find(|e| e["action"] == "reload")
        .unwrap_or_else(|| panic!("the switch's reload: {all:?}"));
    let who = reload["who"].as_str().unwrap();
    assert!(
        who.starts_with("socket uid=") || who == "file change",
        "{reload}"
    );
    let changes = reload["changes"].as_array().unwrap();
    assert_eq!(
        changes[0]["path"], "repository.yaml.services.api.live",
        "{reload}"
    );
    assert_eq!(changes[0]["from"], "blue");
    assert_eq!(changes[0]["to"], "green");
    // 5. The page shows the last ones, newest first.
    let (_, page) = s.stats_get("/stats").await;
    let table = page
        .split("id=\"audit\"")
        .nth(1)
        .expect("Recent changes table");
    let first = table.find("data-action=\"").unwrap();
    assert!(
        table.contains("services.api.live: &quot;blue&quot; → &quot;green&quot;"),
        "{table}"
    );
    assert!(table.contains("data-action=\"server_state\""), "{table}");
    assert!(first < table.find("data-action=\"server_state\"").unwrap());
}
