//! Rules reloads: a good edit switches colour; a bad edit changes nothing.

use crate::harness::{Stack, wait_until};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn sighup_switches_colour_and_refuses_bad_edits() {
    let s = Stack::start().await;
    let c = s.client();
    assert!(
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-blue-")
    );
    let rules = std::fs::read_to_string(s.rules_path()).unwrap();

    // A bad edit: the old rules keep serving, and the error names file:line:column.
    std::fs::write(
        s.rules_path(),
        rules.replacen("    live: blue", "    live: gren", 1),
    )
    .unwrap();
    s.hup();
    wait_until(
        "the refused reload in the log",
        Duration::from_secs(10),
        async || s.log().contains("reload refused"),
    )
    .await;
    let line = rules.lines().position(|l| l == "    live: blue").unwrap() + 1;
    let want = format!("repository.yaml:{line}:11: unknown variant `gren`");
    assert!(s.log().contains(&want), "{}", s.log());
    assert!(
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-blue-")
    );
    let (_, page) = s.stats_get("/stats").await;
    assert!(
        page.contains("unknown variant"),
        "the panel shows the refused reload"
    );

    // The one-word switch.
    std::fs::write(
        s.rules_path(),
        rules.replacen("    live: blue", "    live: green", 1),
    )
    .unwrap();
    s.hup();
    wait_until("ui-green", Duration::from_secs(10), async || {
        c.get("data.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-green-")
    })
    .await;
    assert!(
        c.get("data-dev.localhost", "/")
            .await
            .served_by()
            .starts_with("ui-blue-"),
        "-dev follows: the other colour"
    );
    assert!(
        c.get("data.localhost", "/api/x")
            .await
            .served_by()
            .starts_with("api-blue-"),
        "api did not switch"
    );
}
