//! The runtime API: HAProxy's "stats socket" on a Unix socket, for the tools HAProxy
//! shops already run (`socat`, hatop, Ansible's haproxy module, prometheus-haproxy-exporter).
//!
//! Same protocol: a line of `;`-separated commands; each answer ends with an empty
//! line; without `prompt` the connection closes after the first line, with it the
//! session stays and each answer is followed by `> `. The socket file's mode and owner
//! are the access control (every command is admin level), and every change is audited
//! with the peer's uid and pid. Bounded: 32 sessions, 16 KiB per line, an idle timeout
//! (10 s, `set timeout cli` up to an hour).
//!
//! Layout: `command` parses (pure), `exec` runs a command, `info` is `show info`,
//! `state` the servers' state text (also the state file's format).

pub mod command;
pub mod exec;
pub mod info;
pub mod state;

pub use exec::Api;

use crate::config::RuntimeSocket;
use anyhow::{Context, bail};
use command::Command;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Sessions open at once; more are closed as they arrive.
const MAX_SESSIONS: usize = 32;
/// The longest command line (HAProxy's buffer size).
const MAX_LINE: u64 = 16 * 1024;
/// Idle time allowed before a line (HAProxy's default `stats timeout`).
const IDLE: Duration = Duration::from_secs(10);
/// The longest idle time `set timeout cli` may ask for.
const MAX_IDLE_SECS: u64 = 3600;

/// Refuses to start beside a live process of the same config: one that answers on the
/// runtime socket or the upgrade socket (both would serve the ports through
/// SO_REUSEPORT), unless this process is its `--upgrade` successor.
pub fn refuse_if_running(sockets: &[&Path], upgrade: bool) -> anyhow::Result<()> {
    for path in sockets.iter().filter(|_| !upgrade) {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another process answers on {}: is Gatehouse already running with this config? (use `run --upgrade` to replace it)",
                path.display()
            );
        }
    }
    Ok(())
}

/// Binds the socket with its mode and owner. Refuses while another process answers on
/// it, unless this process is its `--upgrade` successor. The socket is made under a
/// temporary name and renamed into place, so it is never reachable with a looser mode.
pub fn bind(
    cfg: &RuntimeSocket,
    upgrade: bool,
) -> anyhow::Result<std::os::unix::net::UnixListener> {
    let path = &cfg.path;
    refuse_if_running(&[path], upgrade)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .with_context(|| format!("cannot create the runtime socket {}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))?;
    let uid = cfg
        .user
        .as_deref()
        .map(|u| id_of(u, "/etc/passwd"))
        .transpose()?;
    let gid = cfg
        .group
        .as_deref()
        .map(|g| id_of(g, "/etc/group"))
        .transpose()?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(&tmp, uid, gid)
            .with_context(|| format!("cannot set the owner of {}", path.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot place the runtime socket at {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// A user or group id from a number or a name in `db` (`/etc/passwd`, `/etc/group`).
fn id_of(name: &str, db: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(db).with_context(|| format!("cannot read {db}"))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&name))
        .and_then(|f| f.get(2)?.parse().ok())
        .with_context(|| format!("no `{name}` in {db}"))
}

/// Serves the socket until `stop`; removes the socket file then, if it is still ours.
pub async fn serve(
    api: Arc<Api>,
    listener: UnixListener,
    path: std::path::PathBuf,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    let ours = inode(&path);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let api = api.clone();
        tokio::spawn(async move {
            session(&api, stream).await;
            drop(slot);
        });
    }
    // A successor (`--upgrade`) may have put its own socket there: leave that one.
    if ours.is_some() && inode(&path) == ours {
        let _ = std::fs::remove_file(&path);
    }
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Who is on the other end, for the audit: `uid=1000 pid=4242`.
fn peer(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(c) => match c.pid() {
            Some(pid) => format!("socket uid={} pid={pid}", c.uid()),
            None => format!("socket uid={}", c.uid()),
        },
        Err(_) => "socket".into(),
    }
}

/// One line, at most `MAX_LINE` bytes: `Ok(None)` at the end of input, `Err` when too long.
async fn read_line(
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<String>, ()> {
    let mut buf = Vec::new();
    let n = rd
        .take(MAX_LINE + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|_| ())?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 > MAX_LINE {
        return Err(());
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// One session: lines of commands until `quit`, the end of input, an idle timeout, or
/// (outside interactive mode) the first line's answers.
async fn session(api: &Api, stream: UnixStream) {
    let who = peer(&stream);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut interactive = false;
    let mut idle = IDLE;
    loop {
        let line = match tokio::time::timeout(idle, read_line(&mut rd)).await {
            Ok(Ok(Some(line))) => line,
            Ok(Err(())) => {
                let _ = wr.write_all(b"Command line too long.\n\n").await;
                return;
            }
            _ => return,
        };
        let mut out = String::new();
        for cmd in command::split(&line) {
            let parsed = command::parse(cmd);
            match &parsed {
                Ok(Command::Quit) => {
                    let _ = wr.write_all(out.as_bytes()).await;
                    return;
                }
                Ok(Command::Prompt) => interactive = !interactive,
                Ok(Command::SetTimeout(s)) => {
                    idle = Duration::from_secs((*s).clamp(1, MAX_IDLE_SECS))
                }
                _ => {}
            }
            let answer = match parsed {
                Ok(c) => api.run(c, &who).await,
                Err(e) => e,
            };
            out.push_str(&answer);
            if !answer.is_empty() && !answer.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
            if interactive {
                out.push_str("> ");
            }
        }
        if out.is_empty() && interactive {
            out.push_str("> ");
        }
        if wr.write_all(out.as_bytes()).await.is_err() || !interactive {
            return;
        }
    }
}
