//! What changed between two versions of the rules files, key path by key path, for the
//! audit log: taken from the files as written (not the compiled set), so every edit shows,
//! from a route's contents to one network's address range.

use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// Most changes one reload reports (an edit that rewrites everything is summed up).
pub const MAX_CHANGES: usize = 200;

/// One change: the key path (`repository.yaml.services.ui.live`), what was there and what
/// is now (absent when the key was added or removed). For lists of plain values (networks,
/// hosts), the values removed and added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Where: file name, then keys and list positions.
    pub path: String,
    /// Before; absent when added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// After; absent when removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

/// The rules files at `path` as one tree: `{file name: contents}`. A file that cannot be
/// read or parsed counts as empty (a reload would have refused it).
pub fn tree(path: &Path) -> Value {
    let files = super::compile::rule_files(path).unwrap_or_default();
    let mut out = Map::new();
    for f in files {
        let name = f
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let value = serde_saphyr::from_str::<Value>(&text).unwrap_or(Value::Null);
        out.insert(name, value);
    }
    Value::Object(out)
}

/// Every change from `a` to `b`, at most [`MAX_CHANGES`] (then one `…` entry).
pub fn diff(a: &Value, b: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    walk(&mut String::new(), Some(a), Some(b), &mut out);
    if out.len() > MAX_CHANGES {
        out.truncate(MAX_CHANGES);
        out.push(Change {
            path: "…".into(),
            from: None,
            to: Some(Value::String("more changes not listed".into())),
        });
    }
    out
}

fn walk(path: &mut String, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    if out.len() > MAX_CHANGES || a == b {
        return;
    }
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let len = path.len();
                push_key(path, k);
                walk(path, x.get(k), y.get(k), out);
                path.truncate(len);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) if plain(x) && plain(y) => {
            let removed: Vec<Value> = x.iter().filter(|v| !y.contains(v)).cloned().collect();
            let added: Vec<Value> = y.iter().filter(|v| !x.contains(v)).cloned().collect();
            let some = |v: Vec<Value>| (!v.is_empty()).then_some(Value::Array(v));
            out.push(Change {
                path: path.clone(),
                from: some(removed),
                to: some(added),
            });
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(path, x.get(i), y.get(i), out);
                path.truncate(len);
            }
        }
        _ => out.push(Change {
            path: path.clone(),
            from: a.cloned(),
            to: b.cloned(),
        }),
    }
}

/// Whether a list holds only plain values (compared as a set: order is not a change).
fn plain(v: &[Value]) -> bool {
    v.iter().all(|x| !x.is_object() && !x.is_array())
}

fn push_key(path: &mut String, k: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(k);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_lists_and_sets() {
        let a = json!({"r.yaml": {"services": {"ui": {"live": "blue"}},
            "networks": {"campus": ["10.0.0.0/8", "192.0.2.0/24"]},
            "routes": [{"path": "/a"}, {"path": "/b"}]}});
        let b = json!({"r.yaml": {"services": {"ui": {"live": "green"}, "api": {}},
            "networks": {"campus": ["192.0.2.0/24", "198.51.100.0/24"]},
            "routes": [{"path": "/a"}]}});
        let d = diff(&a, &b);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "r.yaml.networks.campus",
                "r.yaml.routes[1]",
                "r.yaml.services.ui.live",
                "r.yaml.services.api",
            ]
        );
        assert_eq!(d[0].from, Some(json!(["10.0.0.0/8"])));
        assert_eq!(d[0].to, Some(json!(["198.51.100.0/24"])));
        assert_eq!(d[1].to, None);
        assert_eq!(d[2].from, Some(json!("blue")));
        assert!(diff(&a, &a).is_empty());
    }
}
