//! The shipped systemd unit (`deploy/gatehouse.service`) with the shipped config, run as
//! systemd runs it: its own `ExecStartPre`/`ExecStart`/`ExecReload` lines, the
//! directories it declares passed as `$RUNTIME_DIRECTORY`, `$STATE_DIRECTORY` and
//! `$LOGS_DIRECTORY`, and a
//! `$NOTIFY_SOCKET` this test reads (READY, RELOADING, MAINPID, STOPPING). Only the
//! binary's path, `/etc/gatehouse` and the config's fixed ports are replaced.
//!
//! `systemd-analyze verify` checks the unit itself.

use crate::harness::{free_port, root};
use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The unit's `[Service]` settings, each key with every value it is given.
fn unit() -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root().join("deploy/gatehouse.service")).unwrap();
    let mut keys: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((k, v)) = line.split_once('=') {
            keys.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    keys
}

/// One `Exec*` line as systemd would run it here: the test's binary and folders.
fn command(line: &str, etc: &Path, main_pid: u32) -> Command {
    let line = line
        .replace("/usr/local/bin/gatehouse", BIN)
        .replace("/etc/gatehouse", &etc.display().to_string())
        .replace("$MAINPID", &main_pid.to_string());
    let mut words = line.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args(words);
    cmd
}

/// What the unit's process sees: the directories it declares and the notify socket.
struct Unit {
    etc: PathBuf,
    run: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    notify: UnixDatagram,
    notify_path: PathBuf,
    keys: HashMap<String, Vec<String>>,
    _dir: tempfile::TempDir,
}

impl Unit {
    fn new() -> Unit {
        let keys = unit();
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc/gatehouse");
        std::fs::create_dir_all(&etc).unwrap();
        gatehouse::demo::prepare(&etc).unwrap();
        // The shipped config's fixed ports, moved so this test runs beside the others.
        let cfg = etc.join("config/gatehouse.yaml");
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        for port in ["8443", "8080", "8404", "8920", "8672"] {
            let to = free_port().to_string();
            text = text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{to}"));
        }
        std::fs::write(&cfg, text).unwrap();
        let name = |k: &str| keys[k][0].clone();
        let run = dir.path().join("run").join(name("RuntimeDirectory"));
        let state = dir.path().join("var/lib").join(name("StateDirectory"));
        let logs = dir.path().join("var/log").join(name("LogsDirectory"));
        for d in [&run, &state, &logs] {
            std::fs::create_dir_all(d).unwrap();
        }
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Unit {
            etc,
            run,
            state,
            logs,
            notify,
            notify_path,
            keys,
            _dir: dir,
        }
    }

    fn exec(&self, key: &str, main_pid: u32) -> Vec<Command> {
        self.keys[key]
            .iter()
            .map(|line| {
                let mut c = command(line, &self.etc, main_pid);
                c.env("RUNTIME_DIRECTORY", &self.run)
                    .env("STATE_DIRECTORY", &self.state)
                    .env("LOGS_DIRECTORY", &self.logs)
                    .env("NOTIFY_SOCKET", &self.notify_path)
                    .current_dir("/");
                c
            })
            .collect()
    }

    /// Notify messages until one has `want`, within 20 s; returns that one.
    fn wait_for(&self, want: &str) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l.starts_with(want)) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {want} from the service; got {seen:?}");
    }

    fn files(&self, dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn socat(&self, line: &str) -> String {
        let sock = self.run.join("gatehouse-api.sock");
        crate::harness::socat(&sock, &format!("{line}\n"))
    }
}

fn status(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).status().unwrap().success()
}

fn exited(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `systemd-analyze verify` finds nothing to say about the unit (its binary path pointed
/// at this build, which is all it checks beyond the unit's own text).
#[test]
fn systemd_analyze_verify_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("deploy/gatehouse.service")).unwrap();
    let unit = dir.path().join("gatehouse.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/gatehouse", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    let about_it: Vec<&str> = err.lines().filter(|l| l.contains("gatehouse")).collect();
    assert!(out.status.success(), "{err}");
    assert!(about_it.is_empty(), "{err}");
}

/// Start, reload, binary upgrade (SIGUSR2) and stop, by the unit's own lines: nothing is
/// written beside the read-only config, the operator's MAINT survives the upgrade, and the
/// unit's main PID follows the successor.
#[test]
fn the_shipped_unit_starts_reloads_upgrades_and_stops() {
    let u = Unit::new();
    let before = u.files(&u.etc.join("config"));
    for mut c in u.exec("ExecStartPre", 0) {
        assert!(status(&mut c), "ExecStartPre");
    }
    let mut start = u.exec("ExecStart", 0).remove(0);
    let log = std::fs::File::create(u.run.parent().unwrap().join("stderr.log")).unwrap();
    let mut main = start.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let _main = PidKill(main.id());
    u.wait_for("READY=1");
    assert_eq!(
        u.files(&u.run),
        ["gatehouse-api.sock", "gatehouse.sock"],
        "sockets in $RUNTIME_DIRECTORY"
    );
    assert_eq!(u.socat("disable server ui/ui-blue-1"), "\n");
    // The state file is written by its own task once woken: wait for it (bounded).
    let start = Instant::now();
    while !u.files(&u.state).contains(&"servers.state".to_string()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "servers.state in $STATE_DIRECTORY"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let audit = std::fs::read_to_string(u.logs.join("audit.log")).unwrap_or_default();
    assert!(
        audit.contains("\"action\":\"server_state\""),
        "audit in $LOGS_DIRECTORY: {audit}"
    );
    // ExecReload: check, then SIGHUP to $MAINPID.
    for mut c in u.exec("ExecReload", main.id()) {
        assert!(status(&mut c), "ExecReload");
    }
    u.wait_for("RELOADING=1");
    u.wait_for("READY=1");
    // The binary upgrade: SIGUSR2 starts the successor inside the unit.
    assert!(status(
        Command::new("kill").args(["-USR2", &main.id().to_string()])
    ));
    let msg = u.wait_for("MAINPID=");
    let new_pid: u32 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_ne!(new_pid, main.id());
    let _successor = PidKill(new_pid);
    let old = exited(&mut main, Duration::from_secs(30)).expect("the old process drains");
    assert!(old.success(), "{old}");
    assert!(
        u.socat("show servers state ui").contains(" ui-blue-1 "),
        "the successor answers"
    );
    let state = u.socat("show servers state ui");
    let row = state.lines().find(|l| l.contains(" ui-blue-1 ")).unwrap();
    assert_eq!(row.split(' ').nth(6), Some("1"), "still MAINT: {state}");
    // ExecReload reaches the successor by the new $MAINPID.
    for mut c in u.exec("ExecReload", new_pid) {
        assert!(status(&mut c), "ExecReload after the upgrade");
    }
    u.wait_for("RELOADING=1");
    u.wait_for("READY=1");
    assert!(status(
        Command::new("kill").args(["-TERM", &new_pid.to_string()])
    ));
    u.wait_for("STOPPING=1");
    assert_eq!(
        u.files(&u.etc.join("config")),
        before,
        "nothing written to /etc"
    );
}

/// Stops a process this test started (the successor is not its child) by PID if the test
/// fails before it stops, and the gatehouse processes it started (a successor the test
/// has not learnt of yet); only while each PID is still a gatehouse.
struct PidKill(u32);

impl Drop for PidKill {
    fn drop(&mut self) {
        for pid in children(self.0).into_iter().chain([self.0]) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("gatehouse") {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// The PIDs whose parent is `parent` (from /proc/PID/stat's fourth field).
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The command name is in parentheses and may hold spaces: count after it.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

/// The unit's user comes from `deploy/gatehouse.sysusers` (systemd-sysusers makes it, here
/// in a scratch root), and the install steps of docs/deployment.md give that user what it
/// needs and no more: the unit's own `ExecStartPre` (`gatehouse check`, which loads every
/// key) passes as an unprivileged uid whose group owns the keys (0640), and fails with the
/// key's path when only root can read them.
#[test]
fn the_sysusers_file_makes_the_user_that_reads_the_keys() {
    let keys = unit();
    let user = &keys["User"][0];
    assert_eq!(&keys["Group"][0], user);
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(scratch.path().join("etc")).unwrap();
    let made = Command::new("systemd-sysusers")
        .arg(format!("--root={}", scratch.path().display()))
        .arg(root().join("deploy/gatehouse.sysusers"))
        .output()
        .expect("systemd-sysusers (apt-get install systemd)");
    assert!(made.status.success(), "{made:?}");
    let passwd = std::fs::read_to_string(scratch.path().join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("no {user} in {passwd}"));
    assert!(entry.ends_with(":/usr/sbin/nologin"), "{entry}");
    // The steps, with an unused id standing for the user (this machine has no such user).
    let u = Unit::new();
    let id = "64999";
    let top = u.etc.parent().unwrap().parent().unwrap();
    for dir in [top, u.etc.parent().unwrap(), &u.etc] {
        assert!(status(Command::new("chmod").arg("755").arg(dir)));
    }
    let certs = u.etc.join("certs");
    let key_files: Vec<PathBuf> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    assert!(status(Command::new("chgrp").args(["-R", id]).arg(&certs)));
    let as_user = |mode: &str| {
        assert!(status(Command::new("chmod").arg(mode).args(&key_files)));
        let line = u.keys["ExecStartPre"][0].clone();
        let mut c = Command::new("setpriv");
        c.args(["--reuid", id, "--regid", id, "--clear-groups"]);
        let check = command(&line, &u.etc, 0);
        c.arg(check.get_program()).args(check.get_args());
        c.output().expect("setpriv (util-linux)")
    };
    let ok = as_user("640");
    assert!(ok.status.success(), "{ok:?}");
    let refused = as_user("600");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(".key: I/O error: Permission denied"), "{err}");
}
