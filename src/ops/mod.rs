//! Ops commands that talk to files and to the running process: `reload`, `switch`,
//! `explain` (in `explain.rs`).
//!
//! They reach the running proxy through its runtime socket when the config has one
//! (`reload`), else through its stats listener (the address in the config, with the
//! config's `stats.auth`, so they work on any bind address): `POST /reload` and
//! `GET /stats?format=json`. `switch` edits the rules file atomically
//! (write a temp file beside it, then rename), after the same validation a reload does.

pub mod explain;

pub use explain::explain;

use crate::config::Config;
use crate::diag::{Diagnostics, parse_yaml};
use crate::rules::file::RulesFile;
use crate::rules::{self, Colour};
use anyhow::{Context, anyhow, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One HTTP/1.1 request to the stats listener, with the config's credentials; returns
/// (status, body).
pub fn stats_request(config: &Config, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = config
        .stats
        .ok_or_else(|| anyhow!("the config has no stats listener to reach the process through"))?;
    // A wildcard bind is reached on loopback.
    let addr = match addr.ip().is_unspecified() {
        true => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()),
        false => addr,
    };
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the stats listener at {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = config.stats_auth.as_ref().map_or(String::new(), |(u, p)| {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Authorization: Basic {token}\r\n")
    });
    write!(
        tcp,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    tcp.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad answer from {addr}"))?;
    Ok((status, body.to_string()))
}

/// `gatehouse reload`: asks the running process to reload (on its runtime socket, else
/// its stats listener); prints its answer.
pub fn reload(config: &Config) -> anyhow::Result<bool> {
    if let Some(rs) = &config.runtime_socket {
        let answer = socket_command(&rs.path, "reload")?;
        print!("{}", answer.trim_end_matches('\n'));
        println!();
        return Ok(answer.starts_with("reloaded") || answer.starts_with("no change"));
    }
    let (status, body) = stats_request(config, "POST", "/reload")?;
    print!("{body}");
    Ok(status == 200)
}

/// One command on the runtime socket; returns its answer.
pub fn socket_command(path: &Path, command: &str) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot reach the runtime socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    writeln!(s, "{command}")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The rules files a config points at, with their text.
fn rule_texts(config: &Config) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let files = rules::compile::rule_files(&config.rules).map_err(|d| anyhow!("{d}"))?;
    files
        .into_iter()
        .map(|p| {
            Ok((
                p.clone(),
                std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            ))
        })
        .collect()
}

/// Writes `text` to `path` atomically: a temp file beside it, fsync, rename.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("rules.yaml");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn previous_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".previous");
    PathBuf::from(s)
}

/// `gatehouse switch SERVICE COLOUR [--force]`: sets the service's live colour in the rules
/// file, refusing when the new colour has no healthy server (unless forced), and keeps the
/// old file as `<file>.previous` for `--rollback`.
pub fn switch(config: &Config, service: &str, colour: Colour, force: bool) -> anyhow::Result<()> {
    let healthy = healthy_servers(config, service, colour);
    let lines = switch_file(config, service, colour, force, healthy)?;
    for line in &lines {
        println!("{line}");
    }
    let detail = serde_json::json!({ "service": service, "to": colour.as_str(), "file": lines });
    audit(config, "colour", detail);
    tell_running(config);
    confirm_live(config, service, colour)
}

/// After a switch: the running process reached through this config must serve the new
/// colour. If it does not, it reads other rules (e.g. a demo started elsewhere), and the
/// switch did not take effect there: say so and fail, rather than print success.
fn confirm_live(config: &Config, service: &str, colour: Colour) -> anyhow::Result<()> {
    let Ok(live) = running_colour(config, service) else {
        return Ok(()); // Not reachable: `tell_running` said so.
    };
    if live != colour.as_str() {
        bail!(
            "the running proxy still serves {service} on {live}: it does not read {} (started with another config?); the file was changed, the traffic was not",
            config.rules.display()
        );
    }
    Ok(())
}

/// The live colour of `service` in the running process (stats JSON).
fn running_colour(config: &Config, service: &str) -> anyhow::Result<String> {
    let (status, body) = stats_request(config, "GET", "/stats?format=json")?;
    anyhow::ensure!(status == 200, "stats answered {status}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let services = v["services"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let svc = services
        .iter()
        .find(|s| s["name"] == service)
        .ok_or_else(|| anyhow!("the running proxy has no service {service}"))?;
    Ok(svc["live"].as_str().unwrap_or("").to_string())
}

/// Appends the CLI's own change to the audit file (the running process then logs the
/// reload it causes, with what changed).
fn audit(config: &Config, action: &str, detail: serde_json::Value) {
    let Some(file) = &config.audit_log else {
        return;
    };
    if let Err(e) = crate::audit::append_to(file, &cli_who(), action, detail) {
        eprintln!(
            "warning: cannot write the audit log {}: {e}",
            file.display()
        );
    }
}

/// `cli uid=0 user=alice`: the uid running the command and the user who asked for it
/// (`$SUDO_USER` under sudo, else `$USER`).
fn cli_who() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(1).map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "?".into());
    format!("cli uid={uid} user={user}")
}

/// The switch's file edit and its checks, given how many servers of the new colour are
/// UP (`healthy`, or why that is unknown); returns what it did, line by line. The
/// running process is not told: the caller reloads it.
pub fn switch_file(
    config: &Config,
    service: &str,
    colour: Colour,
    force: bool,
    healthy: anyhow::Result<usize>,
) -> anyhow::Result<Vec<String>> {
    let mut said = Vec::new();
    let files = rule_texts(config)?;
    let mut found = None;
    for (i, (path, text)) in files.iter().enumerate() {
        let parsed: RulesFile = parse_yaml(path, text).map_err(|d| anyhow!("{d}"))?;
        if let Some(svc) = parsed.services.get(service) {
            let live = svc.value.live.as_ref().ok_or_else(|| {
                anyhow!(
                    "service `{service}` in {} has no `live:` line (it serves one colour only); add one to switch it",
                    path.display()
                )
            })?;
            found = Some((i, live.referenced, live.value));
        }
    }
    let (i, at, current) =
        found.ok_or_else(|| anyhow!("no service `{service}` in {}", config.rules.display()))?;
    if current == colour {
        said.push(format!("{service} is already live on {}", colour.as_str()));
        return Ok(said);
    }
    let (path, text) = &files[i];
    let edited = replace_word_at(
        text,
        at.line() as usize,
        at.column() as usize,
        colour.as_str(),
    )
    .ok_or_else(|| {
        anyhow!(
            "{}:{}:{}: cannot find the live colour to edit",
            path.display(),
            at.line(),
            at.column()
        )
    })?;
    let mut candidate = files.clone();
    candidate[i].1 = edited.clone();
    rules::compile(&candidate)
        .map_err(|d: Diagnostics| anyhow!("the switched rules would not compile:\n{d}"))?;
    match healthy {
        Ok(0) if !force => bail!(
            "refused: no server of {service} {} is UP; fix them first or pass --force",
            colour.as_str()
        ),
        Ok(n) => said.push(format!("{service} {}: {n} server(s) UP", colour.as_str())),
        Err(e) if !force => bail!(
            "refused: cannot confirm the health of {service} {} ({e:#}); pass --force to switch anyway",
            colour.as_str()
        ),
        Err(e) => said.push(format!(
            "warning: health unknown ({e:#}); switching because of --force"
        )),
    }
    std::fs::write(previous_path(path), text)
        .context("cannot keep the previous rules for --rollback")?;
    write_atomically(path, &edited)?;
    said.push(format!(
        "{}: {service} live {} -> {}",
        path.display(),
        current.as_str(),
        colour.as_str()
    ));
    Ok(said)
}

/// `gatehouse switch --rollback`: puts back the rules saved by the last switch.
pub fn rollback(config: &Config) -> anyhow::Result<()> {
    let files = rule_texts(config)?;
    let mut candidate = files.clone();
    let mut restored = Vec::new();
    for (path, text) in candidate.iter_mut() {
        if let Ok(prev) = std::fs::read_to_string(previous_path(path)) {
            *text = prev;
            restored.push(path.clone());
        }
    }
    if restored.is_empty() {
        bail!("nothing to roll back: no *.previous file beside the rules");
    }
    rules::compile(&candidate)
        .map_err(|d: Diagnostics| anyhow!("the previous rules no longer compile:\n{d}"))?;
    for (path, text) in &candidate {
        if restored.contains(path) {
            let current = files
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            write_atomically(path, text)?;
            std::fs::write(previous_path(path), current)?;
            println!("{}: restored the previous rules", path.display());
        }
    }
    let files: Vec<String> = restored.iter().map(|p| p.display().to_string()).collect();
    audit(config, "rollback", serde_json::json!({ "files": files }));
    tell_running(config);
    Ok(())
}

fn tell_running(config: &Config) {
    match reload(config) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("the running proxy refused the new rules (see above); it keeps the old ones")
        }
        Err(e) => eprintln!(
            "note: could not ask the running proxy to reload ({e:#}); it reloads on its own when it watches the file"
        ),
    }
}

/// Replaces the word starting at line/column (1-based) with `word`.
fn replace_word_at(text: &str, line: usize, column: usize, word: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 8);
    let mut done = false;
    for (n, l) in text.split_inclusive('\n').enumerate() {
        if n + 1 == line && !done {
            let start = l.char_indices().nth(column.checked_sub(1)?)?.0;
            let len = l[start..]
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(l.len() - start);
            out.push_str(&l[..start]);
            out.push_str(word);
            out.push_str(&l[start + len..]);
            done = true;
        } else {
            out.push_str(l);
        }
    }
    done.then_some(out)
}

/// Servers of one colour of a service that the running process reports UP.
fn healthy_servers(config: &Config, service: &str, colour: Colour) -> anyhow::Result<usize> {
    let (status, body) = stats_request(config, "GET", "/stats?format=json")?;
    if status != 200 {
        bail!("stats answered {status}");
    }
    let j: serde_json::Value = serde_json::from_str(&body)?;
    let svc = j["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == service))
        .ok_or_else(|| anyhow!("the running proxy has no service {service}"))?;
    Ok(svc["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["colour"] == colour.as_str() && s["status"] == "UP")
                .count()
        })
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_word() {
        let t = "a:\n  live: blue # keep\n";
        assert_eq!(
            replace_word_at(t, 2, 9, "green").unwrap(),
            "a:\n  live: green # keep\n"
        );
        assert!(replace_word_at(t, 9, 1, "x").is_none());
    }
}
