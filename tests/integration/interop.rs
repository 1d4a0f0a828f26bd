//! Interop with the servers repositories run (issue 18, item 10): a small WSGI app
//! (`tests/interop/app.py`) under Debian's uWSGI (`http11-socket`, python3 plugin) and
//! under gunicorn (PyPI, in a virtual environment), and a WebSocket through Debian's
//! nginx as the web tier; curl as the client.

use crate::harness::{Kill, Options, Stack, free_port, root, wait_until, ws_echo_replies};
use crate::servers::{nginx, wait_listening};
use std::process::{Command, Stdio};
use std::time::Duration;

const API_BLUE: &str = "    blue:\n      - { name: api-blue-1,  addr: 127.0.0.1:5201 }\n      - { name: api-blue-2,  addr: 127.0.0.1:5202 }";

/// uWSGI serving the app: `--http-socket` (the deployment's mode: one request per
/// connection, closed after the answer) or `--http11-socket` (keep-alive; idle
/// connections closed after a second, `socket-timeout`).
fn uwsgi(port: u16, dir: &std::path::Path, mode: &str) -> Kill {
    let child = Command::new("uwsgi")
        .args(["--plugin", "python3", "--master", "--processes", "2"])
        .args([mode, &format!("127.0.0.1:{port}")])
        .args(["--socket-timeout", "1", "--die-on-term"])
        .arg("--wsgi-file")
        .arg(root().join("tests/interop/app.py"))
        .env("APP_SERVER", "uwsgi")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("uwsgi.log")).unwrap())
        .spawn()
        .expect("uwsgi (Debian packages uwsgi-core, uwsgi-plugin-python3)");
    let k = Kill(child);
    wait_listening(port, "uwsgi");
    k
}

/// A program of the tests' virtual environment (the one `.ci/run` makes), else from PATH.
pub fn venv_bin(name: &str) -> String {
    let venv = std::env::var("HOME").unwrap_or_default() + "/.venvs/gatehouse/bin/" + name;
    if std::path::Path::new(&venv).exists() {
        venv
    } else {
        name.into()
    }
}

/// gunicorn from the virtual environment `.ci/run` makes (or `GUNICORN`, or PATH),
/// closing idle keep-alive connections after a second.
fn gunicorn(port: u16, dir: &std::path::Path) -> Kill {
    let bin = std::env::var("GUNICORN").unwrap_or_else(|_| venv_bin("gunicorn"));
    let child = Command::new(bin)
        .args([
            "-b",
            &format!("127.0.0.1:{port}"),
            "-w",
            "2",
            "--keep-alive",
            "1",
        ])
        .arg("--chdir")
        .arg(root().join("tests/interop"))
        .arg("app:application")
        .env("APP_SERVER", "gunicorn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gunicorn.log")).unwrap())
        .spawn()
        .expect("gunicorn (pip install gunicorn in a virtual environment)");
    let k = Kill(child);
    wait_listening(port, "gunicorn");
    k
}

/// curl over HTTPS to the stack: (status, body, curl's verbose lines).
fn curl(s: &Stack, path: &str, args: &[&str]) -> (u16, String, String) {
    let port = s.https.port();
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-v",
            "--http1.1",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
        ])
        .args(["--resolve", &format!("data.localhost:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://data.localhost:{port}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A PUT of the file `at` (`@path`) with the extra headers `headers`.
fn put(s: &Stack, path: &str, headers: &[&str], at: &str) -> (u16, String, String) {
    let mut args = vec!["-X", "PUT"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.extend(["--data-binary", at]);
    curl(s, path, &args)
}

const UPLOAD: &str = "/api/records/r1/draft/files/data.bin/content";

/// The checks both application servers get. `buffered`: the service reads chunked
/// bodies whole (`buffer_chunked`), so the app sees a length instead of chunks.
async fn app_server_checks(s: &Stack, name: &str, buffered: bool) {
    let dir = s.dir.path();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let file = dir.join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let sha = {
        let out = Command::new("sha256sum").arg(&file).output().unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    let at = format!("@{}", file.display());
    wait_until("the app server UP", Duration::from_secs(10), async || {
        curl(s, "/api/records", &[]).0 == 200
    })
    .await;

    // Keep-alive: the server closes idle connections after 1 s; a request after that
    // must not fail on a dead pooled connection.
    for _ in 0..3 {
        let (status, body, _) = curl(s, "/api/records", &[]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("server={name}")), "{body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // An upload with Content-Length streams through whole.
    let (status, body, _) = put(s, UPLOAD, &["Expect:"], &at);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("len=3000000 sha={sha} cl=3000000 te= ")),
        "{body}"
    );

    // A chunked upload: forwarded chunked (gunicorn reads it), or read whole and sent
    // with a length where the service says its servers cannot read chunks (uWSGI).
    let (status, body, _) = put(s, UPLOAD, &["Expect:", "Transfer-Encoding: chunked"], &at);
    assert_eq!(status, 200, "{body}");
    let framing = if buffered {
        "cl=3000000 te= "
    } else {
        "cl= te=chunked "
    };
    assert!(
        body.contains(&format!("len=3000000 sha={sha} {framing}")),
        "{body}"
    );

    // Expect: 100-continue is answered, then the body flows.
    let (status, body, verbose) = put(s, UPLOAD, &["Expect: 100-continue"], &at);
    assert_eq!(status, 200, "{body}");
    assert!(verbose.contains("HTTP/1.1 100 Continue"), "{verbose}");
    assert!(body.contains(&format!("len=3000000 sha={sha}")), "{body}");

    // Range: a byte range of a download comes back as 206 with exactly those bytes.
    let part = dir.join("part.bin");
    let to = part.to_str().unwrap();
    let (status, _, verbose) = curl(s, "/api/files/one", &["-r", "1000-1099", "-o", to]);
    assert_eq!(status, 206, "{verbose}");
    assert!(
        verbose
            .to_ascii_lowercase()
            .contains("content-range: bytes 1000-1099/1000000"),
        "{verbose}"
    );
    let want: Vec<u8> = (1000..1100u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(std::fs::read(&part).unwrap(), want);

    // Nothing the client did was blamed on the server.
    s.assert_no_server_blamed("api").await;

    // A server answering before it read the upload: its answer reaches the client.
    // The servers then close with the upload unread, and the kernel's reset can
    // overtake their answer: hyper's client fails the exchange on the failed body write,
    // and the proxy says 502 (counted against the server). What must never happen is
    // no answer at all (curl's broken pipe, status 0), which the lingering read prevents.
    let early = format!("{UPLOAD}?early=1");
    let (status, body, _) = put(s, &early, &["Expect:"], &at);
    if status == 502 {
        return;
    }
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too big"), "{body}");
}

fn stack_for(port: u16, extra: &str) -> Options {
    Options {
        rules_edits: vec![(
            API_BLUE.into(),
            format!("{extra}    blue:\n      - {{ name: app, addr: \"127.0.0.1:{port}\" }}"),
        )],
        ..Options::default()
    }
}

/// uWSGI's `http-socket` reads a chunked body as empty (the app saw `len=0` when this
/// was first tried), so its service says `buffer_chunked`: chunked uploads arrive
/// whole with a length; one larger than the buffer is refused with 413.
#[tokio::test(flavor = "multi_thread")]
async fn a_wsgi_app_under_uwsgi() {
    let port = free_port();
    let s = Stack::start_with(stack_for(port, "    buffer_chunked: 8MiB\n")).await;
    let _app = uwsgi(port, s.dir.path(), "--http11-socket");
    app_server_checks(&s, "uwsgi", true).await;
    let big = s.dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 9 << 20]).unwrap();
    let (status, body, _) = put(
        &s,
        UPLOAD,
        &["Expect:", "Transfer-Encoding: chunked"],
        &format!("@{}", big.display()),
    );
    assert_eq!(status, 413, "{body}");
}

/// The mode the deployment we replace runs: every connection closed after its answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_wsgi_app_under_uwsgi_http_socket() {
    let port = free_port();
    let s = Stack::start_with(stack_for(port, "    buffer_chunked: 8MiB\n")).await;
    let _app = uwsgi(port, s.dir.path(), "--http-socket");
    app_server_checks(&s, "uwsgi", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wsgi_app_under_gunicorn() {
    let port = free_port();
    let s = Stack::start_with(stack_for(port, "")).await;
    let _app = gunicorn(port, s.dir.path());
    app_server_checks(&s, "gunicorn", false).await;
}

/// A WebSocket through nginx as the web tier (the `proxy_set_header Upgrade` setup the
/// Invenio images use) to the demo's echo.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_through_nginx() {
    let (nginx_port, echo_port) = (free_port(), free_port());
    let s = Stack::start_with(Options {
        rules_edits: vec![(
            "      - { name: ui-blue-1,  addr: 127.0.0.1:5101 }\n      - { name: ui-blue-2,  addr: 127.0.0.1:5102 }".into(),
            format!("      - {{ name: ui-nginx, addr: \"127.0.0.1:{nginx_port}\" }}"),
        )],
        ..Options::default()
    })
    .await;
    let echo = format!("127.0.0.1:{echo_port}").parse().unwrap();
    s.standins.start("behind-nginx", echo).await.unwrap();
    let dir = s.dir.path().join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let _nginx = nginx(
        &dir,
        &format!(
            "server {{\n listen 127.0.0.1:{nginx_port};\n location / {{\n  proxy_pass http://127.0.0.1:{echo_port};\n  \
             proxy_http_version 1.1;\n  proxy_set_header Upgrade $http_upgrade;\n  proxy_set_header Connection \"upgrade\";\n  \
             proxy_set_header Host $host;\n }}\n}}"
        ),
        nginx_port,
    );
    wait_until("ui-nginx serving", Duration::from_secs(10), async || {
        s.client().get("data.localhost", "/").await.served_by() == "behind-nginx"
    })
    .await;
    for (i, text) in ws_echo_replies(&s).await.iter().enumerate() {
        assert_eq!(text.as_str(), format!("behind-nginx: hello {i}"));
    }
}
