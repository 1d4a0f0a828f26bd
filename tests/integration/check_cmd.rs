//! `gatehouse check`: exit codes and file:line:column errors.

use crate::harness::root;
use std::process::Command;

fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    gatehouse::demo::prepare(dir.path()).unwrap();
    dir
}

fn check(dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-c", "config/gatehouse.yaml"])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn edit(dir: &std::path::Path, from: &str, to: &str) {
    let p = dir.join("rules/repository.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn shipped_files_are_valid() {
    let dir = workdir();
    let (code, out, err) = check(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid (4 sites"), "{out}");
    // The shipped files in the repository are the ones the demo writes.
    let shipped = std::fs::read_to_string(root().join("rules/repository.yaml")).unwrap();
    assert_eq!(
        shipped,
        std::fs::read_to_string(dir.path().join("rules/repository.yaml")).unwrap()
    );
}

#[test]
fn typo_key_is_reported_with_line_and_column() {
    let dir = workdir();
    edit(dir.path(), "    live: blue", "    lvie: blue");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1);
    let text = std::fs::read_to_string(dir.path().join("rules/repository.yaml")).unwrap();
    let line = text.lines().position(|l| l.contains("lvie")).unwrap() + 1;
    let want = format!("rules/repository.yaml:{line}:5: unknown field `lvie`");
    assert!(err.contains(&want), "{err}");
}

#[test]
fn every_semantic_error_at_once() {
    let dir = workdir();
    edit(
        dir.path(),
        "campus: [127.0.0.1/32]",
        "campus: [127.0.0.1/33]",
    );
    edit(dir.path(), "allow_from: [campus]", "allow_from: [campuss]");
    edit(
        dir.path(),
        "service: api, max_body: 50GiB",
        "service: apii, max_body: 50GiB",
    );
    edit(
        dir.path(),
        "regex: '/records/[^/]+/files/[^/]+' }, methods: [GET, HEAD], pool: files, service: api",
        "regex: '/records/[^/+/files' }, methods: [GET, HEAD], pool: files, service: api",
    );
    edit(dir.path(), "methods: [GET, HEAD]", "methods: [GET, HED]");
    edit(
        dir.path(),
        "backup_page: pages/maintenance.html",
        "backup_page: pages/nope.html",
    );
    edit(
        dir.path(),
        "per_client: 4, per_client_in: { campus: 20 }",
        "per_client: 0, per_client_in: { campos: 20 }",
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1);
    let text = std::fs::read_to_string(dir.path().join("rules/repository.yaml")).unwrap();
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for want in [
        format!(
            "rules/repository.yaml:{}:12: network `campus`: `127.0.0.1/33` is not a CIDR",
            line("127.0.0.1/33")
        ),
        format!(
            "rules/repository.yaml:{}:18: unknown network `campuss`",
            line("campuss")
        ),
        "unknown service `apii` (expected one of: api, ui)".to_string(),
        format!("rules/repository.yaml:{}:", line("[^/+/files"))
            + "45: route `store-files`: bad regex",
        format!(
            "rules/repository.yaml:{}:18: cannot read page",
            line("nope.html")
        ),
        format!(
            "rules/repository.yaml:{}:88: pool `files`: per_client must be at least 1",
            line("per_client: 0")
        ),
        format!(
            "rules/repository.yaml:{}:116: unknown network `campos`",
            line("per_client: 0")
        ),
        format!(
            "rules/repository.yaml:{}:{}: route `store-files`: unknown method `HED`",
            line("HED"),
            text.lines()
                .find(|l| l.contains("HED"))
                .unwrap()
                .find("HED")
                .unwrap()
                + 1
        ),
        "8 error(s)".to_string(),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn shadowed_and_duplicate_rules_are_errors() {
    let dir = workdir();
    edit(
        dir.path(),
        "      - { name: data-static, path: { prefix: /static/ }, pool: static, service: ui }",
        "      - { name: data-all, path: { prefix: / }, pool: app, service: ui }\n      - { name: data-static, path: { prefix: /static/ }, pool: static, service: ui }",
    );
    edit(dir.path(), "hosts: [store-dev.*]", "hosts: [store.*]");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("route `data-static` can never match: route `data-all`"),
        "{err}"
    );
    assert!(err.contains("host `store.*` is already claimed"), "{err}");
}

#[test]
fn yaml_syntax_and_missing_certificate() {
    let dir = workdir();
    edit(dir.path(), "hosts: [data.*]", "hosts: [data.*");
    std::fs::remove_file(dir.path().join("certs/store.pem")).unwrap();
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("rules/repository.yaml:"), "{err}");
    assert!(
        err.contains("config/gatehouse.yaml:26:7: certificate"),
        "{err}"
    );
}

#[test]
fn tcp_and_http_services_are_not_mixed_up() {
    let dir = workdir();
    // `search` loses `mode: tcp`: the config's TCP listener now names an HTTP service.
    edit(
        dir.path(),
        "    mode: tcp\n    balance: leastconn",
        "    balance: leastconn",
    );
    // A route forwarding to the TCP service `mq`.
    edit(
        dir.path(),
        "pool: app,    service: api, max_body: 1MiB, limit: api }",
        "pool: app,    service: mq, max_body: 1MiB }",
    );
    // Passthrough to an HTTP service.
    let p = dir.path().join("rules/repository.yaml");
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str("\npassthrough:\n  - { name: pass, hosts: [pass.localhost], service: ui }\n");
    std::fs::write(&p, text).unwrap();
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("route `data-api`: service `mq` is a TCP service"),
        "{err}"
    );
    assert!(
        err.contains("passthrough `pass`: service `ui` is an HTTP service"),
        "{err}"
    );
    // Rules errors come first; fix them and the config cross-check speaks.
    let fixed = std::fs::read_to_string(&p)
        .unwrap()
        .replace("service: mq, max_body", "service: api, max_body")
        .replace(
            "[pass.localhost], service: ui",
            "[pass.localhost], service: mq",
        );
    std::fs::write(&p, fixed).unwrap();
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("config/gatehouse.yaml:15:16: tcp listener `search`: service `search` is an HTTP service"),
        "{err}"
    );
}

#[test]
fn two_tier_examples_are_valid() {
    let dir = workdir();
    for file in ["outer", "outer-l4", "inner"] {
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args([
                "check",
                "-c",
                &format!("config/examples/two-tier/{file}.yaml"),
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {text}");
        assert!(text.contains("valid"), "{file}: {text}");
    }
}

/// Item 11 (hostile): a name with a comma or a quote would break the HAProxy CSV row and
/// the Prometheus label it is written into; the rules refuse it, file:line:column.
#[test]
fn names_that_would_break_csv_or_labels_are_refused() {
    let dir = workdir();
    edit(dir.path(), "name: api-blue-1,", "name: 'api,blue\"1',");
    edit(dir.path(), "name: store-deny,", "name: 'store deny',");
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("service `api`: server name `api,blue\"1` has a character names cannot have"),
        "{err}"
    );
    assert!(
        err.contains("route name `store deny` has a character names cannot have"),
        "{err}"
    );
}

/// Issue 18: every policy key's mistakes are reported with file:line:column, all at once:
/// lists, deny rules, limits, header rules, header conditions and redirects.
#[test]
fn policy_errors_point_at_their_keys() {
    let dir = workdir();
    edit(
        dir.path(),
        "agents: deny-agents, status: 429",
        "agents: deny-agentz, status: 500",
    );
    edit(
        dir.path(),
        "rate: 20/s, burst: 40",
        "rate: 20/fortnight, burst: 40",
    );
    edit(
        dir.path(),
        "max_body: 1MiB, limit: api }",
        "max_body: 1MiB, limit: apj }",
    );
    edit(
        dir.path(),
        "remove: [X-Session-ID, X-User-ID]",
        "remove: [X-Session-ID, Content-Length]",
    );
    edit(
        dir.path(),
        "      - { name: store-deny,  deny: 403 }",
        "      - { name: store-old, path: { prefix: /old/ }, redirect: { to: 'https://{hots}{path}' } }\n      \
         - { name: store-hdr, match_headers: { accept: { present: true, equals: x } }, deny: 406 }\n      \
         - { name: store-deny,  deny: 403 }",
    );
    // A server named by something that is neither an address nor a DNS name.
    edit(dir.path(), "addr: 127.0.0.1:5202", "addr: api_blue:5202");
    edit(
        dir.path(),
        "  api:\n    live: blue\n",
        "  api:\n    live: blue\n    tls: { sni: api.internal }\n",
    );
    let (code, _, err) = check(dir.path());
    assert_eq!(code, 1, "{err}");
    let text = std::fs::read_to_string(dir.path().join("rules/repository.yaml")).unwrap();
    let at = |needle: &str| {
        let (n, l) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        format!(
            "rules/repository.yaml:{}:{}:",
            n + 1,
            l.find(needle).unwrap() + 1
        )
    };
    for want in [
        format!("{} unknown agents list `deny-agentz`", at("deny-agentz")),
        format!(
            "{} deny rule `deny-agents`: 500 is not a client error status",
            at("500")
        ),
        format!(
            "{} limit `api`: `20/fortnight` is not a rate",
            at("20/fortnight")
        ),
        format!("{} unknown limit `apj`", at("apj")),
        format!(
            "{} `site data`: `content-length` is the proxy's to write",
            at("Content-Length")
        ),
        format!(
            "{} route `store-old`: unknown placeholder",
            at("'https://{hots}")
        ),
        format!(
            "{} `route store-hdr`: header `accept` needs exactly one test",
            at("{ present: true")
        ),
        format!(
            "{} server `api-blue-2`: `api_blue:5202` is not an address or host:port",
            at("api_blue:5202")
        ),
        format!(
            "{} service `api`: TLS to servers needs `ca` or `verify: none`",
            at("{ sni: api.internal }")
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // A list file that is not there.
    edit(dir.path(), "../lists/deny-agents.txt", "../lists/nope.txt");
    let (_, _, err) = check(dir.path());
    assert!(err.contains("cannot read list"), "{err}");
    assert!(!err.contains("has no condition"), "a cascade: {err}");
    assert!(!err.contains("unknown limit `api`"), "a cascade: {err}");
}

/// Issue 18, item 9: the InvenioRDM example (rules, lists and config) is `check`-clean.
#[test]
fn invenio_rdm_example_is_valid() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("rules/examples/lists")).unwrap();
    for f in [
        "rules/examples/invenio-rdm.yaml",
        "rules/examples/lists/denylist-ips.txt",
        "rules/examples/lists/denylist-ua.txt",
        "rules/examples/lists/crawlers.txt",
        "config/examples/invenio-rdm.yaml",
    ] {
        std::fs::copy(root().join(f), d.join(f)).unwrap();
    }
    // The site's certificate (the example names it; `check` wants its hosts covered).
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-nodes", "-days", "90", "-subj", "/CN=repository.example.org"])
        .args(["-addext", "subjectAltName=DNS:repository.example.org,DNS:www.repository.example.org,DNS:zenodo-old.example.org"])
        .args(["-keyout", "certs/repository.key", "-out", "certs/repository.pem"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(made.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-c", "config/examples/invenio-rdm.yaml"])
        .current_dir(d)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("valid (2 sites"), "{text}");
    assert!(
        text.contains(
            "resolved at run time: frontend web-api-blue web-api-green web-ui-blue web-ui-green"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: service `static`: `verify: none`"),
        "{text}"
    );
}

/// Issue 18, items 6, 7 and 10: the keys for servers by DNS, TLS to servers and
/// `buffer_chunked` point at themselves when wrong (config and rules).
#[test]
fn backend_errors_point_at_their_keys() {
    let dir = workdir();
    let d = dir.path();
    let cfg = d.join("config/gatehouse.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen(
        "request_id: true",
        "request_id: true\ndns: { nameservers: [ns.example], interval: 0s }",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    edit(
        d,
        "  api:\n    live: blue\n",
        "  api:\n    live: blue\n    buffer_chunked: lots\n    tls: { ca: ../certs/nope.pem }\n",
    );
    let (code, _, err) = check(d);
    assert_eq!(code, 1, "{err}");
    let rules = std::fs::read_to_string(d.join("rules/repository.yaml")).unwrap();
    // `line|at`: the line holding `line`, and the column of `at` in it.
    let line_of = |text: &str, needle: &str| {
        let (line, at) = needle.split_once('|').unwrap_or((needle, needle));
        let (n, l) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(line))
            .unwrap();
        format!("{}:{}", n + 1, l.find(at).unwrap() + 1)
    };
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    for want in [
        format!(
            "config/gatehouse.yaml:{}: `ns.example` is not a name server address",
            line_of(&cfg_text, "ns.example")
        ),
        format!(
            "config/gatehouse.yaml:{}: dns.interval: not a positive duration",
            line_of(&cfg_text, "0s }")
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // The config is refused first; fixed, the rules' own errors show.
    let fixed = cfg_text.replace("dns: { nameservers: [ns.example], interval: 0s }", "");
    std::fs::write(&cfg, fixed).unwrap();
    let (code, _, err) = check(d);
    assert_eq!(code, 1, "{err}");
    for want in [
        format!(
            "rules/repository.yaml:{}: buffer_chunked:",
            line_of(&rules, "buffer_chunked: lots|lots")
        ),
        format!(
            "rules/repository.yaml:{}: service `api`: cannot read CA file",
            line_of(&rules, "../certs/nope.pem")
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
}
