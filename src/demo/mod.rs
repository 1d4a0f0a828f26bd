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
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The shipped config, rules, page and examples, compiled in so the demo needs nothing on disk.
const FILES: [(&str, &str); 10] = [
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
    (
        "rules/pages/too-many-requests.html",
        include_str!("../../rules/pages/too-many-requests.html"),
    ),
    (
        "lists/deny-agents.txt",
        include_str!("../../lists/deny-agents.txt"),
    ),
    (
        "config/examples/two-tier/outer.yaml",
        include_str!("../../config/examples/two-tier/outer.yaml"),
    ),
    (
        "config/examples/two-tier/outer-rules.yaml",
        include_str!("../../config/examples/two-tier/outer-rules.yaml"),
    ),
    (
        "config/examples/two-tier/outer-l4.yaml",
        include_str!("../../config/examples/two-tier/outer-l4.yaml"),
    ),
    (
        "config/examples/two-tier/outer-l4-rules.yaml",
        include_str!("../../config/examples/two-tier/outer-l4-rules.yaml"),
    ),
    (
        "config/examples/two-tier/inner.yaml",
        include_str!("../../config/examples/two-tier/inner.yaml"),
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

/// The running stand-in stack: one server per name, each stoppable and restartable.
#[derive(Default)]
pub struct Stack {
    /// Address, stop handle (None when stopped) and counters by server name.
    servers: Mutex<HashMap<String, StandInEntry>>,
    /// Concurrency per service (the name's first word: `ui`, `api`).
    services: Mutex<HashMap<String, Arc<standin::Concurrency>>>,
    /// Servers that speak the line protocol instead of HTTP.
    lines: Mutex<std::collections::HashSet<String>>,
}

type StandInEntry = (SocketAddr, Option<CancellationToken>, Arc<standin::StandIn>);

impl Stack {
    /// Starts (or restarts) the stand-in `name` on `addr`.
    pub async fn start(&self, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
        let stopped = self.get(name);
        // A stopped stand-in holds its port until here; its task may still be letting go
        // of the old listener, so the bind is retried for a moment.
        let mut tries = 0;
        let listener = loop {
            if let Some(s) = &stopped {
                s.release_port();
            }
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("stand-in {name} cannot listen on {addr}"));
                }
            }
        };
        let stop = CancellationToken::new();
        let service = self.service(name.split('-').next().unwrap_or(name));
        let speaks = if self
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
        {
            standin::Speaks::Lines
        } else {
            standin::Speaks::Http
        };
        let s = standin::serve(name.into(), listener, stop.clone(), service, speaks).await;
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, Some(old), _)) = map.insert(name.to_string(), (addr, Some(stop), s)) {
            old.cancel();
        }
        Ok(())
    }

    /// Stops the stand-in `name` (its port refuses connections, open ones are cut).
    pub fn stop(&self, name: &str) -> bool {
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some((_, stop, _)) => {
                if let Some(s) = stop.take() {
                    s.cancel();
                }
                true
            }
            None => false,
        }
    }

    /// Restarts a stopped stand-in on its address; false for an unknown name.
    pub async fn restart(&self, name: &str) -> anyhow::Result<bool> {
        let addr = match self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            Some((addr, None, _)) => *addr,
            Some(_) => return Ok(true),
            None => return Ok(false),
        };
        self.start(name, addr).await?;
        Ok(true)
    }

    /// The concurrency counter shared by a service's stand-ins.
    pub fn service(&self, service: &str) -> Arc<standin::Concurrency> {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(service.to_string()).or_default().clone()
    }

    /// The counters of one stand-in.
    pub fn get(&self, name: &str) -> Option<Arc<standin::StandIn>> {
        let map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name).map(|(_, _, s)| s.clone())
    }

    /// Every stand-in's name and counters.
    pub fn all(&self) -> Vec<(String, Arc<standin::StandIn>)> {
        let map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(n, (_, _, s))| (n.clone(), s.clone()))
            .collect()
    }

    /// One line per stand-in: name, address, running, requests served, most in flight.
    pub fn describe(&self) -> String {
        let map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let (addr, stop, s) = &map[n];
                format!(
                    "{n} {addr} {} served={} max_in_flight={}\n",
                    if stop.is_some() { "running" } else { "stopped" },
                    s.served.load(std::sync::atomic::Ordering::Relaxed),
                    s.max_in_flight.load(std::sync::atomic::Ordering::Relaxed)
                )
            })
            .collect()
    }
}

/// Starts a stand-in for every server (both colours) the rules at `rules_path` name. A TCP
/// service's servers speak HTTP when it is checked over HTTP (an OpenSearch-like node),
/// else the line protocol (a RabbitMQ-like node).
pub async fn start_stack(rules_path: &Path) -> anyhow::Result<Arc<Stack>> {
    let set = rules::load(rules_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let stack = Arc::new(Stack::default());
    for (svc, _, server) in set.all_servers() {
        if svc.mode == rules::Mode::Tcp && svc.health.path.is_none() {
            stack
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(server.name.to_string());
        }
        stack.start(&server.name, server.addr).await?;
    }
    Ok(stack)
}

/// The demo control listener (127.0.0.1:8405): `GET /servers`,
/// `POST /servers/<name>/stop`, `POST /servers/<name>/start`, so a newcomer can watch
/// health checks mark a server DOWN, backups take over and the backup page appear.
pub async fn serve_control(stack: Arc<Stack>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let stack = stack.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let stack = stack.clone();
                    async move {
                        let (status, body) =
                            control(&stack, req.method().as_str(), req.uri().path()).await;
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn control(stack: &Stack, method: &str, path: &str) -> (http::StatusCode, String) {
    use http::StatusCode;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["servers"]) => (StatusCode::OK, stack.describe()),
        ("POST", ["servers", name, "stop"]) if stack.stop(name) => {
            (StatusCode::OK, format!("{name} stopped\n"))
        }
        ("POST", ["servers", name, "start"]) => match stack.restart(name).await {
            Ok(true) => (StatusCode::OK, format!("{name} started\n")),
            Ok(false) => (StatusCode::NOT_FOUND, "no such server\n".into()),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "GET /servers, POST /servers/<name>/stop or /start\n".into(),
        ),
    }
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
    let slow = format!("https://data.localhost:{https}/?delay=2s");
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
  curl -s -w ' <- %header{{x-served-by}}\\n' http://127.0.0.1:8920/_cluster/health   # TCP front: the search cluster (search-1/2)\n\
  echo hello | curl -s --max-time 1 telnet://127.0.0.1:8672  # TCP front: the message-queue cluster (mq-1/2)\n\
  curl -s http://127.0.0.1:8404/healthz                     # stats listener\n\
  curl -s http://127.0.0.1:8404/stats                       # the stats page (open it in a browser)\n\
  curl -s -X POST http://127.0.0.1:8405/servers/ui-blue-1/stop   # demo: stop a stand-in (start: .../start)\n\
  {d} -o /dev/null -w '%{{http_code}} after %{{time_total}}s\\n' {slow}   # demo: a slow answer (?delay=2s)\n\
  echo 'show stat' | socat - UNIX-CONNECT:{sock}   # HAProxy's runtime API (hatop -s works too)\n\
\n\
The rules are {rules}: an edit there reloads by itself (so does kill -HUP {pid}).\n",
        d = c("data.localhost"),
        dd = c("data-dev.localhost"),
        s = c("store.localhost"),
        sock = dir.join("config/gatehouse-api.sock").display(),
        rules = dir.join("rules").display(),
        pid = std::process::id(),
    )
}

/// Runs the whole demo until a signal: files, stand-ins, proxy.
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    let config_path = prepare(dir)?;
    let config = Config::load(&config_path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let stack = start_stack(&config.rules).await?;
    let control = tokio::net::TcpListener::bind("127.0.0.1:8405")
        .await
        .context("demo control port 8405")?;
    tokio::spawn(serve_control(stack, control));
    let running = crate::server::start(config, false).await?;
    println!(
        "gatehouse demo: files in {}, pid {}",
        dir.display(),
        std::process::id()
    );
    println!("{}", running.ready_line());
    let https = running.https.first().map_or(8443, |a| a.port());
    let http = running.http.first().map_or(8080, |a| a.port());
    println!("{}", tour(dir, https, http));
    running.run_until_signal().await
}
