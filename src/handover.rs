//! Zero-downtime upgrade: a new process takes over the old one's listening sockets.
//!
//! Binding a second process beside the old with SO_REUSEPORT is not enough: when the old
//! one closes its sockets, connections waiting in their accept queues are reset. So the
//! old process offers its listening sockets on a Unix socket (`upgrade_socket` in the
//! config); `gatehouse run --upgrade` receives them (SCM_RIGHTS), serves them, and then
//! tells the old process to drain. The sockets never close, nothing is rebound, no
//! connection is refused. (HAProxy's `-x` / `expose-fd listeners` does the same.)

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Most sockets one handover carries (addresses × workers).
const MAX_FDS: usize = 64;

/// Listening sockets by `"<kind> <configured address>"` (e.g. `https 0.0.0.0:443`).
pub type Sockets = HashMap<String, Vec<std::net::TcpListener>>;

/// The offered sockets; [`Offer::withdraw`] closes this process's duplicates so that, once
/// draining, the listening sockets close (new connections are refused) unless a successor
/// holds them.
#[derive(Clone, Default)]
pub struct Offer(Arc<Mutex<Vec<(String, std::net::TcpListener)>>>);

impl Offer {
    /// Keeps duplicates of the listening sockets (for a successor, and to hold them open
    /// while draining).
    pub fn new(sockets: Vec<(String, std::net::TcpListener)>) -> Offer {
        Offer(Arc::new(Mutex::new(sockets)))
    }

    /// Makes every listening socket drop new connection attempts without an answer: a
    /// socket filter that drops a TCP segment with SYN and without ACK, so a SYN is
    /// neither queued nor refused and the client's kernel sends it again a second later
    /// (`drain_delay_mode: hold`, while keepalived moves the address to the other
    /// instance). Handshakes already under way complete and are served.
    pub fn hold(&self) {
        use socket2::SockFilter;
        // Classic BPF over the TCP header (a TCP socket's filter starts there).
        let syn_only = [
            SockFilter::new(0x30, 0, 0, 13),       // ldb [13]: the flags
            SockFilter::new(0x54, 0, 0, 0x12),     // and #(SYN|ACK)
            SockFilter::new(0x15, 0, 1, 0x02),     // jeq #SYN: drop, else keep
            SockFilter::new(0x06, 0, 0, 0),        // ret #0: drop
            SockFilter::new(0x06, 0, 0, u32::MAX), // ret #-1: keep it all
        ];
        let sockets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // The stats listener keeps answering: health checks read the 503 there.
        for (name, s) in sockets
            .iter()
            .filter(|(name, _)| !name.starts_with("stats "))
        {
            if let Err(e) = socket2::SockRef::from(s).attach_filter(&syn_only) {
                tracing::error!(listener = %name, error = %e, "cannot hold new connections");
            }
        }
    }

    /// Closes the duplicates kept for a successor.
    pub fn withdraw(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The old side: answers `listeners` (sends every socket) and `drain` (calls `on_drain`)
/// on the Unix socket at `path` until the process ends. Runs on its own thread.
pub fn offer(
    path: &Path,
    sockets: Vec<(String, std::net::TcpListener)>,
    on_drain: impl Fn() + Send + 'static,
) -> std::io::Result<Offer> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let offer = Offer::new(sockets);
    let sockets = offer.clone();
    std::thread::Builder::new()
        .name("gatehouse-handover".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => continue,
                });
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    match line.trim() {
                        "listeners" => {
                            let held = sockets.0.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = send(&conn, &held) {
                                tracing::warn!(error = %e, "handover: cannot send the listeners");
                            }
                        }
                        "drain" => {
                            tracing::warn!(
                                "handover: a new process took over the listeners; draining"
                            );
                            hand_main_pid(&conn);
                            on_drain();
                            let _ = (&conn).write_all(b"ok\n");
                        }
                        _ => {}
                    }
                    line.clear();
                }
            }
        })?;
    Ok(offer)
}

/// Under systemd, makes the successor that took over the unit's main process (`MAINPID=`),
/// so the unit follows it and does not take this one's exit for the service stopping.
/// Without systemd (`$NOTIFY_SOCKET` unset) it does nothing.
fn hand_main_pid(conn: &UnixStream) {
    if let Ok(cred) = rustix::net::sockopt::socket_peercred(conn) {
        let pid = cred.pid.as_raw_nonzero().get().unsigned_abs();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)]);
    }
}

/// Starts this program again with `--upgrade` (on SIGUSR2): the successor takes the
/// listening sockets over and this process drains. Started by the running process, the
/// successor is inside the same systemd unit, so a binary upgrade is `systemctl kill -s
/// USR2` with no process outside the unit. The path is the one this process was started
/// by, so a binary replaced there is the one that starts. Returns the successor's PID.
pub fn spawn_successor() -> std::io::Result<u32> {
    let mut args = std::env::args_os();
    let exe = args
        .next()
        .ok_or_else(|| std::io::Error::other("no program name in argv"))?;
    let mut rest: Vec<std::ffi::OsString> = args.collect();
    if !rest.iter().any(|a| a == "--upgrade") {
        let at = rest.iter().position(|a| a == "run").map_or(0, |i| i + 1);
        rest.insert(at, "--upgrade".into());
    }
    let mut child = std::process::Command::new(exe)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    // Reaped here: a successor that fails (bad config, bad binary) is reported, and this
    // process goes on serving.
    std::thread::spawn(move || {
        if let Ok(status) = child.wait()
            && !status.success()
        {
            tracing::error!(pid, %status, "upgrade: the successor exited; still serving");
        }
    });
    Ok(pid)
}

fn send(conn: &UnixStream, sockets: &[(String, std::net::TcpListener)]) -> std::io::Result<()> {
    let sockets = &sockets[..sockets.len().min(MAX_FDS)];
    let names: String = sockets.iter().map(|(k, _)| format!("{k}\n")).collect();
    let fds: Vec<_> = sockets.iter().map(|(_, l)| l.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let len = (names.len() as u32).to_le_bytes();
    rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&len), IoSlice::new(names.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// The new side: receives the old process's listening sockets. The returned stream is
/// kept to tell the old process to drain once the new one serves ([`drain_old`]).
pub fn take(path: &Path) -> std::io::Result<(Sockets, UnixStream)> {
    let mut conn = UnixStream::connect(path)?;
    conn.write_all(b"listeners\n")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let data = &buf[..got.bytes];
    let len = data
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let names = std::str::from_utf8(data.get(4..4 + len).unwrap_or_default()).unwrap_or_default();
    let mut out: Sockets = HashMap::new();
    for (name, fd) in names.lines().zip(fds) {
        out.entry(name.to_string())
            .or_default()
            .push(std::net::TcpListener::from(fd));
    }
    Ok((out, conn))
}

/// Tells the old process (over the handover connection) to stop accepting and drain.
pub fn drain_old(conn: &mut UnixStream) -> std::io::Result<()> {
    conn.write_all(b"drain\n")?;
    let mut ok = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut ok)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_crosses_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let mut offered = Vec::new();
        let mut ports = Vec::new();
        for kind in ["https", "https", "http", "stats"] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            ports.push(l.local_addr().unwrap());
            offered.push((format!("{kind} 127.0.0.1:0"), l));
        }
        let drained = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = drained.clone();
        offer(&path, offered, move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .unwrap();
        let (got, mut conn) = take(&path).unwrap();
        assert_eq!(got["https 127.0.0.1:0"].len(), 2);
        assert_eq!(got["http 127.0.0.1:0"].len(), 1);
        let mut all: Vec<_> = got
            .values()
            .flatten()
            .map(|l| l.local_addr().unwrap())
            .collect();
        all.sort();
        ports.sort();
        assert_eq!(all, ports, "the very same sockets");
        drain_old(&mut conn).unwrap();
        assert!(drained.load(std::sync::atomic::Ordering::SeqCst));
    }
}
