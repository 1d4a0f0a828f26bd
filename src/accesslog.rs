//! The access log: one line per request, written when its response body ends.
//!
//! Formats: `text` (Gatehouse's fields), `haproxy` (HAProxy's `httplog` line, so `halog`
//! and every parser written for HAProxy reads it) and `json` (one object per line,
//! nothing else on it). Written straight to the destination, not through `tracing`:
//! stderr (the journal adds the syslog prefix), a file (appended with `O_APPEND`, each
//! line one `write`, reopened on SIGUSR1 for logrotate, prefixed as a syslog daemon
//! writes so `halog < file` reads it), or a syslog socket (one datagram per line).

use crate::config::{AccessLog, LogTarget};
use arc_swap::ArcSwap;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything one log line says about a request.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Client address used for decisions.
    pub client: std::net::IpAddr,
    /// The client connection's source port.
    pub client_port: u16,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Request method.
    pub method: &'a str,
    /// Host (lower-case, no port).
    pub host: &'a str,
    /// Path as received.
    pub path: &'a str,
    /// HTTP version as text.
    pub version: &'a str,
    /// Final status.
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Names from the rules (`-` when not reached).
    pub site: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Pool name.
    pub pool: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Colour served.
    pub colour: &'a str,
    /// Server name.
    pub server: &'a str,
    /// TLS handshake time of the connection, ms.
    pub tls_ms: u64,
    /// Time waiting for a pool slot, ms.
    pub wait_ms: u64,
    /// Time to the server's response headers, ms.
    pub first_byte_ms: u64,
    /// Total time to the last byte, ms.
    pub total_ms: u64,
    /// How the request ended (`-` for normal).
    pub termination: &'a str,
    /// `X-Request-ID` (ours, or a trusted proxy's).
    pub request_id: &'a str,
    /// Client connections open in the process (HAProxy's `%ac`).
    pub connections: u64,
}

/// Where lines go, opened once at start.
enum Sink {
    Stderr,
    File {
        path: std::path::PathBuf,
        file: ArcSwap<std::fs::File>,
    },
    Syslog(std::os::unix::net::UnixDatagram),
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// Opens the destination (at start; later calls change nothing).
pub fn open(target: &LogTarget) -> std::io::Result<()> {
    let sink = match target {
        LogTarget::Stderr => Sink::Stderr,
        LogTarget::File(path) => Sink::File {
            file: ArcSwap::from_pointee(open_append(path)?),
            path: path.clone(),
        },
        LogTarget::Syslog(path) => {
            let sock = std::os::unix::net::UnixDatagram::unbound()?;
            sock.connect(path)?;
            Sink::Syslog(sock)
        }
    };
    let _ = SINK.set(sink);
    Ok(())
}

/// Reopens a log file (after logrotate moved it; SIGUSR1). Lines being written keep
/// the old file until they are done.
pub fn reopen() {
    if let Some(Sink::File { path, file }) = SINK.get() {
        match open_append(path) {
            Ok(f) => {
                file.store(std::sync::Arc::new(f));
                tracing::info!(file = %path.display(), "access log reopened");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot reopen the access log; writing to the old file")
            }
        }
    }
}

/// Writes one entry in the configured format: one line, built in one buffer, one write.
pub fn write(format: AccessLog, e: &Entry<'_>) {
    if format == AccessLog::Off {
        return;
    }
    let now = epoch_millis(SystemTime::now());
    let sink = SINK.get().unwrap_or(&Sink::Stderr);
    let mut out = String::with_capacity(256);
    match sink {
        // local0.info, RFC 3164 as glibc's syslog() sends it to /dev/log.
        Sink::Syslog(_) => with_clock(now, |c| out.push_str(&c.syslog_tag)),
        // halog skips five fields: the syslog daemon's date, host and tag.
        Sink::File { .. } if format == AccessLog::Haproxy => {
            with_clock(now, |c| out.push_str(&c.file_prefix))
        }
        _ => {}
    }
    match format {
        AccessLog::Off => return,
        AccessLog::Text => text(&mut out, e, now),
        AccessLog::Haproxy => haproxy(&mut out, e, now),
        AccessLog::Json => json(&mut out, e, now),
    }
    match sink {
        Sink::Stderr => {
            out.push('\n');
            let _ = std::io::stderr().write_all(out.as_bytes());
        }
        Sink::File { file, .. } => {
            out.push('\n');
            let _ = (&*file.load_full()).write_all(out.as_bytes());
        }
        Sink::Syslog(sock) => {
            let _ = sock.send(out.as_bytes());
        }
    }
}

/// The texts that change once a second, made once a second per thread.
struct Clock {
    secs: u64,
    /// `06/Dec/2026:05:12:34` (HAProxy's date, without the milliseconds).
    date: String,
    /// `Dec  6 05:12:34 host gatehouse[pid]: `, as rsyslog writes a file line.
    file_prefix: String,
    /// `<134>Dec  6 05:12:34 gatehouse[pid]: ` for a syslog socket.
    syslog_tag: String,
}

impl Clock {
    fn at(secs: u64) -> Clock {
        static HOST: OnceLock<String> = OnceLock::new();
        let host = HOST.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        let (y, mon, day, hms) = civil(UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let pid = std::process::id();
        Clock {
            secs,
            date: format!("{day:02}/{mon}/{y}:{hms}"),
            file_prefix: format!("{mon} {day:>2} {hms} {host} gatehouse[{pid}]: "),
            syslog_tag: format!("<134>{mon} {day:>2} {hms} gatehouse[{pid}]: "),
        }
    }
}

/// Runs `f` with this thread's clock texts for `t`'s second. Two slots (even and odd
/// seconds), so a line that names both its start and its end second does not remake them.
fn with_clock<R>(ms: u64, f: impl FnOnce(&Clock) -> R) -> R {
    thread_local! {
        static CLOCKS: std::cell::RefCell<[Clock; 2]> =
            std::cell::RefCell::new([Clock::at(0), Clock::at(1)]);
    }
    let secs = ms / 1000;
    CLOCKS.with_borrow_mut(|clocks| {
        let c = &mut clocks[(secs & 1) as usize];
        if c.secs != secs {
            *c = Clock::at(secs);
        }
        f(c)
    })
}

/// `06/Dec/2026:05:12:34.655`
fn push_date(out: &mut String, at_ms: u64) {
    with_clock(at_ms, |c| out.push_str(&c.date));
    let ms = at_ms % 1000;
    out.push('.');
    for d in [ms / 100, ms / 10 % 10, ms % 10] {
        out.push(char::from(b'0' + d as u8));
    }
}

/// Appends a number without `core::fmt` (a third of the line's cost was formatting).
fn num(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends an address; IPv4 without `core::fmt` (its `Display` cost 1,600 instructions
/// a line, more than the rest of the line).
fn ip(out: &mut String, addr: std::net::IpAddr) {
    match addr {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            for (n, sep) in [(a, "."), (b, "."), (c, "."), (d, "")] {
                num(out, n);
                out.push_str(sep);
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends each piece in turn.
fn push_all(out: &mut String, pieces: &[&str]) {
    for p in pieces {
        out.push_str(p);
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// UTC calendar date of `t`: (year, month name, day, `HH:MM:SS`).
fn civil(t: SystemTime) -> (i64, &'static str, u32, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let hms = format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    (year, MONTHS[(month - 1) as usize], day, hms)
}

/// `2026-12-06T05:12:34Z`, for JSON records beside the access log (the audit log).
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mon, day, hms) = civil(t);
    let m = MONTHS.iter().position(|x| *x == mon).map_or(1, |i| i + 1);
    format!("{y:04}-{m:02}-{day:02}T{hms}Z")
}

/// Milliseconds since the epoch: the log's one clock reading, in the unit it prints.
fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn text(out: &mut String, e: &Entry<'_>, now: u64) {
    push_date(out, now);
    out.push(' ');
    ip(out, e.client);
    push_all(out, &[" ", e.site, "/", e.route, " ", e.pool, " "]);
    push_all(out, &[e.service, "/", e.colour, "/", e.server, " "]);
    for (n, sep) in [(e.tls_ms, "/"), (e.wait_ms, "/"), (e.first_byte_ms, "/")] {
        num(out, n);
        out.push_str(sep);
    }
    for (n, sep) in [
        (e.total_ms, " "),
        (u64::from(e.status), " "),
        (e.bytes_in, " "),
    ] {
        num(out, n);
        out.push_str(sep);
    }
    num(out, e.bytes_out);
    push_all(
        out,
        &[
            " ",
            e.termination,
            " \"",
            e.method,
            " ",
            e.host,
            e.path,
            " ",
        ],
    );
    push_all(out, &[e.version, "\" ", e.request_id]);
}

/// HAProxy's `httplog`: `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc
/// %ac/%fc/%bc/%sc/%rc %sq/%bq {%hr} %{+Q}r`, the request ID as the captured header.
fn haproxy(out: &mut String, e: &Entry<'_>, now: u64) {
    // %tr is when the request was received.
    let at = now.saturating_sub(e.total_ms);
    let reached = e.server != "-";
    let frontend_tls = if e.tls { "~" } else { "" };
    let backend = if e.service == "-" { e.site } else { e.service };
    ip(out, e.client);
    out.push(':');
    num(out, e.client_port);
    out.push_str(" [");
    push_date(out, at);
    let server = if reached { e.server } else { "<NOSRV>" };
    push_all(
        out,
        &["] ", e.site, frontend_tls, " ", backend, "/", server, " 0/"],
    );
    // %Tw/%Tc/%Tr: -1 when no server was reached, as HAProxy writes them.
    if reached {
        num(out, e.wait_ms);
        out.push_str("/0/");
        num(out, e.first_byte_ms);
        out.push('/');
    } else {
        out.push_str("-1/-1/-1/");
    }
    num(out, e.total_ms);
    out.push(' ');
    num(out, e.status);
    out.push(' ');
    num(out, e.bytes_out);
    let state = termination_state(e.termination, e.status, reached);
    push_all(out, &[" - - ", state, " "]);
    num(out, e.connections);
    out.push_str("/0/0/0/0 0/0 ");
    if e.request_id != "-" {
        push_all(out, &["{", e.request_id, "} "]);
    }
    push_all(out, &["\"", e.method, " ", e.path, " ", e.version, "\""]);
}

/// HAProxy's four-character termination state for Gatehouse's termination codes: who
/// ended the session (C client, S server, P proxy, L local answer, c/s timeouts) and in
/// which phase (R request, Q queue, C connect, H headers, D data).
pub fn termination_state(code: &str, status: u16, reached: bool) -> &'static str {
    match code {
        "-" if reached => "----",
        // Answered here without a server (a redirect, the stats of a route).
        "-" => "LR--",
        "client_aborted" | "client_body_error" => "CD--",
        "client_timeout" => "cD--",
        "server_timeout" if status == 504 => "sH--",
        "server_timeout" => "sD--",
        "server_aborted" => "SD--",
        "upstream_error" | "bad_upgrade" => "SH--",
        "connect_error" | "no_server" => "SC--",
        "queue_timeout" => "sQ--",
        "queue_full" | "client_share" => "PQ--",
        _ => "PR--",
    }
}

/// One JSON object, serialized straight from the entry (no intermediate map).
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    client: &'a str,
    client_port: u16,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    version: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    site: &'a str,
    route: &'a str,
    pool: &'a str,
    service: &'a str,
    colour: &'a str,
    server: &'a str,
    tls_ms: u64,
    wait_ms: u64,
    first_byte_ms: u64,
    total_ms: u64,
    termination: &'a str,
    termination_state: &'a str,
    request_id: &'a str,
}

fn json(out: &mut String, e: &Entry<'_>, now: u64) {
    let mut time = String::with_capacity(24);
    push_date(&mut time, now);
    let mut client = String::with_capacity(16);
    ip(&mut client, e.client);
    let line = JsonLine {
        time: &time,
        client: &client,
        client_port: e.client_port,
        method: e.method,
        host: e.host,
        path: e.path,
        version: e.version,
        status: e.status,
        bytes_in: e.bytes_in,
        bytes_out: e.bytes_out,
        site: e.site,
        route: e.route,
        pool: e.pool,
        service: e.service,
        colour: e.colour,
        server: e.server,
        tls_ms: e.tls_ms,
        wait_ms: e.wait_ms,
        first_byte_ms: e.first_byte_ms,
        total_ms: e.total_ms,
        termination: e.termination,
        termination_state: termination_state(e.termination, e.status, e.server != "-"),
        request_id: e.request_id,
    };
    if let Ok(s) = serde_json::to_string(&line) {
        out.push_str(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_532_633);
        let (y, m, d, hms) = civil(t);
        assert_eq!((y, m, d), (2026, "Dec", 6));
        assert_eq!(hms.len(), 8);
        assert_eq!(civil(UNIX_EPOCH).0, 1970);
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        let (y, m, d, _) = civil(leap);
        assert_eq!((y, m, d), (2000, "Feb", 29));
    }

    fn entry() -> Entry<'static> {
        Entry {
            client: std::net::IpAddr::from([192, 0, 2, 7]),
            client_port: 51234,
            tls: true,
            method: "GET",
            host: "store.example.org",
            path: "/records/1/files/a.bin",
            version: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 1048576,
            site: "store",
            route: "files",
            pool: "files",
            service: "files",
            colour: "blue",
            server: "f1",
            tls_ms: 3,
            wait_ms: 0,
            first_byte_ms: 12,
            total_ms: 1045,
            termination: "-",
            request_id: "abc",
            connections: 9,
        }
    }

    /// The exact lines, so a faster formatter cannot change a byte that parsers read.
    #[test]
    fn text_and_haproxy_lines() {
        let t = 1_796_532_633_655;
        let mut out = String::new();
        text(&mut out, &entry(), t);
        assert_eq!(
            out,
            "06/Dec/2026:04:50:33.655 192.0.2.7 store/files files files/blue/f1 3/0/12/1045 200 0 \
             1048576 - \"GET store.example.org/records/1/files/a.bin HTTP/1.1\" abc"
        );
        out.clear();
        haproxy(&mut out, &entry(), t);
        assert_eq!(
            out,
            "192.0.2.7:51234 [06/Dec/2026:04:50:32.610] store~ files/f1 0/0/0/12/1045 200 1048576 \
             - - ---- 9/0/0/0/0 0/0 {abc} \"GET /records/1/files/a.bin HTTP/1.1\""
        );
        out.clear();
        let refused = Entry {
            server: "-",
            service: "-",
            status: 403,
            termination: "denied",
            ..entry()
        };
        haproxy(&mut out, &refused, t);
        assert!(
            out.contains(" store~ store/<NOSRV> 0/-1/-1/-1/1045 403 "),
            "{out}"
        );
        assert!(out.contains(" PR-- "), "{out}");
        out.clear();
        let v6 = Entry {
            client: "2001:db8::7".parse().expect("an address"),
            ..entry()
        };
        haproxy(&mut out, &v6, t);
        assert!(out.starts_with("2001:db8::7:51234 ["), "{out}");
    }
}
