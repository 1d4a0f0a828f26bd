//! The stats listener's endpoints reflect the traffic a test caused.

use crate::harness::Stack;

#[tokio::test(flavor = "multi_thread")]
async fn healthz_csv_json_metrics() {
    let s = Stack::start().await;
    let c = s.client();
    for _ in 0..3 {
        assert_eq!(c.get("data.localhost", "/api/x").await.status, 200);
    }
    assert_eq!(s.stats_get("/healthz").await, (200, "ok\n".to_string()));

    let (status, csv) = s.stats_get("/stats;csv").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,"));
    let header_cols = csv
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .strip_suffix(',')
        .unwrap()
        .split(',')
        .count();
    let stot = csv
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .position(|c| c == "stot")
        .unwrap();
    let row = |px: &str, sv: &str| -> Vec<String> {
        csv.lines()
            .find(|l| l.starts_with(&format!("{px},{sv},")))
            .unwrap_or_else(|| panic!("no row {px},{sv} in\n{csv}"))
            .strip_suffix(',')
            .unwrap()
            .split(',')
            .map(String::from)
            .collect()
    };
    assert_eq!(row("api", "BACKEND").len(), header_cols);
    assert_eq!(row("api", "BACKEND")[stot], "3");
    assert_eq!(row("data", "FRONTEND")[stot], "3");
    let per_server: u64 = ["api-blue-1", "api-blue-2"]
        .iter()
        .map(|n| row("api", n)[stot].parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_server, 3);
    assert_eq!(row("api", "api-green-1")[stot], "0");
    // Requests count as current sessions of their site and service while they run:
    // none now, at least one at once since start (HAProxy's scur, smax).
    let (scur, smax) = (stot - 3, stot - 2);
    for (px, sv) in [("data", "FRONTEND"), ("api", "BACKEND")] {
        assert_eq!(row(px, sv)[scur], "0", "{px} scur");
        assert_ne!(row(px, sv)[smax], "0", "{px} smax");
    }
    assert_eq!(
        s.stats_get("/stats?format=csv").await.1.lines().count(),
        csv.lines().count()
    );

    let (_, json) = s.stats_get("/stats?format=json").await;
    let j: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(j["generation"], 1);
    assert_eq!(j["pools"].as_array().unwrap().len(), 3);

    let (_, metrics) = s.stats_get("/metrics").await;
    assert!(
        metrics.contains("gatehouse_service_requests_total{service=\"api\",code=\"2xx\"} 3"),
        "{metrics}"
    );
}
