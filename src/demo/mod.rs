//! `gatehouse demo`: the proxy with an embedded stand-in repository stack behind it.
//!
//! Writes the shipped config, rules, maintenance page and fresh certificates into a
//! work directory (files already there are kept, so ops can edit and restart), starts
//! one stand-in server for every server the rules name, then runs the proxy.

pub mod certs;
pub mod standin;

use crate::config::Config;
use crate::rules;
use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The shipped config, rules and page, compiled in so the demo needs nothing on disk.
const FILES: [(&str, &str); 3] = [
    (
        "config/gatehouse.yaml",
        include_str!("../../config/gatehouse.yaml"),
    ),
    (
        "rules/repository.yaml",
        include_str!("../../rules/repository.yaml"),
    ),
    (
        "rules/pages/maintenance.html",
        include_str!("../../rules/pages/maintenance.html"),
    ),
];

/// Writes the demo files into `dir` (keeping any that exist) and returns the config path.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if path.exists() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    certs::ensure(&dir.join("certs"))?;
    Ok(dir.join("config/gatehouse.yaml"))
}

/// The running stand-in stack: one server per name, each stoppable.
pub struct Stack {
    /// Stop handles by server name.
    pub stops: HashMap<String, CancellationToken>,
    /// Live counters by server name.
    pub servers: HashMap<String, Arc<standin::StandIn>>,
}

/// Starts a stand-in for every server (both colours) the rules at `rules_path` name.
pub async fn start_stack(rules_path: &Path) -> anyhow::Result<Stack> {
    let set = rules::load(rules_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let mut stack = Stack {
        stops: HashMap::new(),
        servers: HashMap::new(),
    };
    for (_, _, server) in set.all_servers() {
        let listener = tokio::net::TcpListener::bind(server.addr)
            .await
            .with_context(|| {
                format!("stand-in {} cannot listen on {}", server.name, server.addr)
            })?;
        let stop = CancellationToken::new();
        let s = standin::serve(server.name.clone(), listener, stop.clone()).await;
        stack.stops.insert(server.name.to_string(), stop);
        stack.servers.insert(server.name.to_string(), s);
    }
    Ok(stack)
}

/// The curl commands that show every demo rule, printed at start.
pub fn tour(dir: &Path, https: u16, http: u16) -> String {
    let ca = dir.join("certs/ca.pem");
    let c = |host: &str| {
        format!(
            "curl -s --cacert {} --resolve {host}:{https}:127.0.0.1",
            ca.display()
        )
    };
    format!(
        "\nTry these (the demo's campus network is 127.0.0.1/32; 127.0.0.2 is outside):\n\
  {d} -i https://data.localhost:{https}/                    # 200 from ui-blue-*\n\
  {d} --interface 127.0.0.2 -i https://data.localhost:{https}/   # 403: not campus\n\
  {d} -i https://data.localhost:{https}/api/records         # 200 from api-blue-*\n\
  {dd} -i https://data-dev.localhost:{https}/           # 200 from ui-green-* (the other colour)\n\
  {s} --interface 127.0.0.2 -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' https://store.localhost:{https}/records/abc/files/1M.bin\n\
  {s} -i https://store.localhost:{https}/api/records        # 403: store.* only serves files\n\
  {d} --http2 -I https://data.localhost:{https}/            # HTTP/2\n\
  curl -si http://data.localhost:{http}/x?y=1 --resolve data.localhost:{http}:127.0.0.1   # 308 to https\n\
  curl -s http://127.0.0.1:8404/healthz                     # stats listener\n",
        d = c("data.localhost"),
        dd = c("data-dev.localhost"),
        s = c("store.localhost"),
    )
}

/// Runs the whole demo until a signal: files, stand-ins, proxy.
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    let config_path = prepare(dir)?;
    let config = Config::load(&config_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let _stack = start_stack(&config.rules).await?;
    let running = crate::server::start(config).await?;
    println!("gatehouse demo: files in {}", dir.display());
    println!("{}", running.ready_line());
    let https = running.https.first().map_or(8443, |a| a.port());
    let http = running.http.first().map_or(8080, |a| a.port());
    println!("{}", tour(dir, https, http));
    running.run_until_signal().await
}
