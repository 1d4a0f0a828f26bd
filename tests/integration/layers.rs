//! The layers of `src/lib.rs`'s `# Layout`, enforced: a top-level module may name only
//! modules of the layers below it, or of its own layer listed before it. A test of the
//! source text (no sockets): it fails on the first import that points up or sideways back.

use crate::harness::root;

/// Top-level modules, bottom to top, in the order of the `# Layout` map.
const ORDER: &[&str] = &[
    // pure
    "diag",
    "units",
    "rules",
    "config",
    "fallback",
    "cli",
    "proxy_protocol",
    "rewind",
    "body",
    "wire",
    // runtime state
    "stats",
    "share",
    "limit",
    "limit_store",
    "pool",
    "health",
    "resolve",
    "generation",
    "deadline",
    "memory",
    "accesslog",
    "audit",
    // request path
    "upstream",
    "proxy",
    // edge
    "accept",
    "park",
    "tls",
    "h1",
    "h2stream",
    "tcp",
    "listener",
    // admin and ops
    "reload",
    "admin",
    "handover",
    "check",
    "ops",
    "runtime_api",
    "fleet",
    "server",
    "demo",
];

fn sources(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            sources(&e.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn imports_point_down() {
    let src = root().join("src");
    let re = regex::Regex::new(r"crate::([a-z_0-9]+)").unwrap();
    let mut wrong = Vec::new();
    for (level, module) in ORDER.iter().enumerate() {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            sources(&dir, &mut files);
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
        assert!(files[0].exists(), "no module {module}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for c in re.captures_iter(line) {
                    let used = &c[1];
                    let Some(at) = ORDER.iter().position(|m| *m == used) else {
                        continue;
                    };
                    if at >= level && used != *module {
                        wrong.push(format!("{}:{}: {module} names {used}", f.display(), n + 1));
                    }
                }
            }
        }
    }
    let listed: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().replace(".rs", ""))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    for m in &listed {
        assert!(ORDER.contains(&m.as_str()), "{m} is in no layer");
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}
