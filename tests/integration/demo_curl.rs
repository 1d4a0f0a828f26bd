//! `gatehouse demo` driven by the real curl binary, on the documented fixed ports.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

struct Demo(std::process::Child);
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn demo_serves_every_rule_to_curl() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["demo", "--workdir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo(child);
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("gatehouse ready"))
        .expect("ready line");
    assert!(ready.contains("https=127.0.0.1:8443"), "{ready}");
    let ca = dir.path().join("certs/ca.pem");
    let ca = ca.to_str().unwrap();
    let w = "%{http_code} %{size_download} %{http_version}";
    let hdr = |host: &str, path: &str, extra: &[&str]| {
        let resolve = format!("{host}:8443:127.0.0.1");
        let url = format!("https://{host}:8443{path}");
        let mut a = vec![
            "--cacert",
            ca,
            "--resolve",
            resolve.as_str(),
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            w,
        ];
        a.extend_from_slice(extra);
        a.push(url.as_str());
        curl(&a)
    };
    let r = hdr("data.localhost", "/", &[]);
    assert!(
        r.contains("x-served-by: ui-blue-") && !r.ends_with("200 0 2") && r.contains("200"),
        "{r}"
    );
    let r = hdr("data.localhost", "/", &["--interface", "127.0.0.2"]);
    assert!(r.starts_with("HTTP/2 403"), "{r}");
    let r = hdr(
        "store.localhost",
        "/records/abc/files/1M.bin",
        &["--interface", "127.0.0.2"],
    );
    assert!(r.ends_with("200 1048576 2"), "{r}");
    let r = hdr("store.localhost", "/api/records", &[]);
    assert!(r.starts_with("HTTP/2 403"), "{r}");
    let r = hdr("data-dev.localhost", "/", &[]);
    assert!(r.contains("x-served-by: ui-green-"), "{r}");
    let r = hdr("data.localhost", "/api/records", &[]);
    assert!(r.contains("x-served-by: api-blue-"), "{r}");
    let r = hdr("data.localhost", "/", &["--http1.1"]);
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with(" 1.1"), "{r}");
    let r = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--resolve",
        "data.localhost:8080:127.0.0.1",
        "http://data.localhost:8080/x?y=1",
    ]);
    assert!(r.starts_with("HTTP/1.1 308"), "{r}");
    assert!(
        r.to_lowercase()
            .contains("location: https://data.localhost:8443/x?y=1"),
        "{r}"
    );
    let r = curl(&["http://127.0.0.1:8404/healthz"]);
    assert_eq!(r, "ok\n");
    run_the_tour(&mut lines);
    drop(demo);
}

/// Runs every command the demo printed under "Try these" as a newcomer pastes it, and
/// checks what its comment promises: the status code it names and the servers
/// (`ui-blue-*`, `search-1/2`) it says answer.
fn run_the_tour(lines: &mut impl Iterator<Item = std::io::Result<String>>) {
    let tour: Vec<String> = lines
        .map_while(Result::ok)
        .skip_while(|l| !l.starts_with("Try these"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(tour.len() >= 10, "{tour:?}");
    for line in tour.iter().filter(|l| !l.contains("/stop")) {
        let (cmd, comment) = line.split_once("   #").unwrap_or((line, ""));
        let out = Command::new("timeout")
            .args(["20", "bash", "-c", cmd])
            .output()
            .expect("bash");
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(!out.trim().is_empty(), "no output from: {line}");
        let code = comment
            .split_whitespace()
            .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
            .find(|w| w.len() == 3 && w.parse::<u16>().is_ok());
        if let Some(code) = code {
            assert!(out.contains(code), "{line}\n{out}");
        }
        if let Some(server) = comment
            .split_whitespace()
            .find(|w| w.ends_with("-*") || w.contains("-1/2"))
        {
            let prefix = server
                .trim_start_matches('(')
                .split(['*', '1'])
                .next()
                .unwrap_or("");
            assert!(out.contains(prefix), "{line}: no {prefix}\n{out}");
        }
    }
}
