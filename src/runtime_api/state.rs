//! Server states as HAProxy's `show servers state` prints them, which is also the
//! format of its `server-state-file`: the same text serves both, and is read back at
//! start (operator states, runtime weights, last health survive a restart or upgrade).

use crate::generation::Generation;
use crate::health::AdminState;
use std::collections::HashMap;
use std::path::Path;

/// The format version line HAProxy writes first.
const VERSION: &str = "1";
/// The column names, as HAProxy 2.6 writes them.
const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";

/// HAProxy's admin-state bits: forced maintenance, forced drain.
const FMAINT: u8 = 0x01;
const FDRAIN: u8 = 0x08;

/// The state text for every server (or one backend's); `None` when `backend` is unknown.
pub fn servers_state(g: &Generation, first_iid: usize, backend: Option<&str>) -> Option<String> {
    if let Some(b) = backend
        && !g.rules.services.iter().any(|s| &*s.name == b)
    {
        return None;
    }
    let mut out = format!("{VERSION}\n{HEADER}\n");
    for (i, svc) in g.rules.services.iter().enumerate() {
        if backend.is_some_and(|b| b != &*svc.name) {
            continue;
        }
        for s in svc.blue.servers.iter().chain(&svc.green.servers) {
            let h = &g.health[s.id];
            let op = if h.is_up() { 2 } else { 0 };
            let admin = match h.admin() {
                AdminState::Maint => FMAINT,
                AdminState::Drain => FDRAIN,
                AdminState::Ready => 0,
            };
            let check = match (
                h.checked.load(std::sync::atomic::Ordering::Relaxed),
                h.is_up(),
            ) {
                (false, _) => 1,
                (true, true) => 6,
                (true, false) => 8,
            };
            let fqdn = s.host.as_deref().unwrap_or("-");
            out.push_str(&format!(
                "{} {} {} {} {} {op} {admin} {} {} {} {check} 0 0 0 0 0 0 {fqdn} {} - {} 0 - - 0\n",
                first_iid + i + 1,
                svc.name,
                s.id + 1,
                s.name,
                s.addr.ip(),
                s.weight,
                s.initial_weight,
                h.since_change_secs(),
                s.addr.port(),
                u8::from(svc.tls.is_some()),
            ));
        }
    }
    Some(out)
}

/// What a state file says of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// UP when it was written.
    pub up: bool,
    /// The operator's state.
    pub admin: AdminState,
    /// The weight in force.
    pub weight: u32,
    /// The rules' weight then (a runtime weight is restored only while it is unchanged).
    pub initial: u32,
}

/// Reads a state file: `(backend, server) → Saved`. Lines it cannot read are skipped
/// (a state file is a hint: the rules stay the authority).
pub fn read(path: &Path) -> HashMap<(String, String), Saved> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse(&text)
}

fn parse(text: &str) -> HashMap<(String, String), Saved> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let n = |i: usize| f[i].parse::<u32>().ok();
        let (Some(op), Some(admin), Some(weight), Some(initial)) = (n(5), n(6), n(7), n(8)) else {
            continue;
        };
        let admin = match admin as u8 {
            a if a & FMAINT != 0 => AdminState::Maint,
            a if a & FDRAIN != 0 => AdminState::Drain,
            _ => AdminState::Ready,
        };
        let saved = Saved {
            up: op != 0,
            admin,
            weight,
            initial,
        };
        out.insert((f[1].to_string(), f[3].to_string()), saved);
    }
    out
}

/// Writes `text` to `path` atomically (a temp file beside it, then rename), so a reader
/// (the next process) never sees half a file.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Applies a state file to the serving generation at start: operator states, last
/// health, and runtime weights whose rules weight is unchanged. Returns how many servers
/// it restored; rebuilds the generation when a weight came back.
pub fn restore(shared: &crate::proxy::Shared, path: &Path) -> usize {
    let saved = read(path);
    if saved.is_empty() {
        return 0;
    }
    let g = shared.state.load_full();
    let (mut n, mut weights) = (0, false);
    for (svc, _, s) in g.rules.all_servers() {
        let Some(st) = saved.get(&(svc.name.to_string(), s.name.to_string())) else {
            continue;
        };
        let h = &g.health[s.id];
        h.set_admin(st.admin);
        h.restore_health(st.up);
        if st.initial == s.initial_weight && st.weight != st.initial {
            h.set_weight(Some(st.weight));
            weights = true;
        }
        n += 1;
    }
    if weights {
        let next = Generation::new(g.rules.clone(), Some(&g), &shared.stats, &shared.health);
        shared.state.store(std::sync::Arc::new(next));
    }
    tracing::info!(servers = n, file = %path.display(), "server states restored");
    n
}

/// Writes the state file whenever ops change a state or weight (at once) and when
/// health changes (checked every second), and once more at `stop`.
pub async fn keep(
    shared: std::sync::Arc<crate::proxy::Shared>,
    reloader: std::sync::Arc<crate::reload::Reloader>,
    path: std::path::PathBuf,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut last = String::new();
    loop {
        let stopping = tokio::select! {
            _ = reloader.changes.notified() => false,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
            _ = stop.cancelled() => true,
        };
        let g = shared.state.load_full();
        // The same backend ids as `show servers state` and the CSV's `iid`.
        let first = crate::admin::with_view(&shared, &reloader, |v| crate::admin::csv::iids(v).1);
        let text = servers_state(&g, first, None).unwrap_or_default();
        let key = without_times(&text);
        if key != last || stopping {
            match write(&path, &text) {
                Ok(()) => last = key,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot write the state file")
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// The text without the seconds-since-change column, which moves every second.
fn without_times(text: &str) -> String {
    text.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(' ').collect();
            if f.len() > 9 && !l.starts_with('#') {
                f.remove(9);
            }
            f.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_haproxy_writes() {
        let text = "1\n# be_id be_name srv_id srv_name ...\n3 be 1 a 127.0.0.1 2 8 5 10 0 1 0 0 0 0 0 0 - 18081 - 0 0 - - 0\n3 be 2 b 127.0.0.1 0 1 1 1 2 8 2 0 6 0 0 0 - 18082 - 0 0 - - 0\nshort line\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        let a = m[&("be".to_string(), "a".to_string())];
        assert_eq!(
            a,
            Saved {
                up: true,
                admin: AdminState::Drain,
                weight: 5,
                initial: 10
            }
        );
        let b = m[&("be".to_string(), "b".to_string())];
        assert!(!b.up && b.admin == AdminState::Maint);
    }
}
