//! The compiled matchers: host patterns, path patterns and client-address allow-lists.
//!
//! All of them are built once per rules generation, so the hot path compares bytes
//! and searches sorted arrays; nothing here parses or allocates per request.

use ipnet::IpNet;
use regex::Regex;
use std::net::IpAddr;

/// How a site claims host names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// `data.example.org`
    Exact(String),
    /// `*.example.org`: any name ending in `.example.org` (one label or more in front).
    Suffix(String),
    /// `store.*`: any name whose first label is `store`.
    FirstLabel(String),
}

impl HostPattern {
    /// Reads a host pattern as written in the rules, lower-cased.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let valid = |name: &str| {
            !name.is_empty()
                && name.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if let Some(rest) = s.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Suffix(rest.to_string()));
            }
        } else if let Some(first) = s.strip_suffix(".*") {
            if valid(first) && !first.contains('.') {
                return Ok(HostPattern::FirstLabel(first.to_string()));
            }
        } else if valid(&s) {
            return Ok(HostPattern::Exact(s));
        }
        Err(format!("`{s}` is not a host pattern"))
    }

    /// Whether `host` (lower-case, no port) is claimed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(sfx) => {
                host.len() > sfx.len() + 1
                    && host.ends_with(sfx.as_str())
                    && host.as_bytes()[host.len() - sfx.len() - 1] == b'.'
            }
            HostPattern::FirstLabel(l) => {
                host.len() > l.len() + 1
                    && host.starts_with(l.as_str())
                    && host.as_bytes()[l.len()] == b'.'
            }
        }
    }
}

/// Written back as in the rules (`data.example.org`, `*.example.org`, `store.*`).
impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(x) => f.write_str(x),
            HostPattern::Suffix(x) => write!(f, "*.{x}"),
            HostPattern::FirstLabel(x) => write!(f, "{x}.*"),
        }
    }
}

/// How a route matches the normalized request path.
#[derive(Clone, Debug)]
pub enum PathPattern {
    /// Every path.
    Any,
    /// Exactly this path.
    Exact(String),
    /// This path or anything below it on a segment boundary (stored without trailing `/`,
    /// except the root `/` which is `Any`).
    Prefix(String),
    /// The whole path matches (the expression is anchored when compiled).
    Regex(Regex),
}

impl PathPattern {
    /// Builds a prefix pattern on segment boundaries; `/` and `` mean every path.
    pub fn prefix(p: &str) -> Self {
        let trimmed = p.trim_end_matches('/');
        if trimmed.is_empty() {
            PathPattern::Any
        } else {
            PathPattern::Prefix(trimmed.to_string())
        }
    }

    /// Whether the normalized `path` is taken by this pattern.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathPattern::Regex(r) => r.is_match(path),
        }
    }

    /// Whether every path this pattern takes is already taken by `earlier`, so a route
    /// using it after `earlier` could never be reached. Conservative: regexes never shadow.
    pub fn is_shadowed_by(&self, earlier: &PathPattern) -> bool {
        match (earlier, self) {
            (PathPattern::Any, _) => true,
            (PathPattern::Exact(a), PathPattern::Exact(b)) => a == b,
            (PathPattern::Prefix(a), PathPattern::Exact(b) | PathPattern::Prefix(b)) => {
                PathPattern::Prefix(a.clone()).matches(b)
            }
            _ => false,
        }
    }

    /// A short human description for `explain` and errors.
    pub fn describe(&self) -> String {
        match self {
            PathPattern::Any => "any path".into(),
            PathPattern::Exact(p) => format!("exact {p}"),
            PathPattern::Prefix(p) => format!("prefix {p}/"),
            PathPattern::Regex(r) => format!("regex {}", r.as_str()),
        }
    }
}

/// A set of networks, aggregated and sorted so a lookup is two binary searches.
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
    /// The network names it was built from, for `explain` and logs.
    pub names: Vec<String>,
}

impl AllowList {
    /// Builds the list from networks (overlaps and neighbours merged).
    pub fn new(names: Vec<String>, nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in IpNet::aggregate(&nets.to_vec()) {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        AllowList { v4, v6, names }
    }

    /// Whether `ip` falls in one of the networks (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
            let i = ranges.partition_point(|&(start, _)| start <= x);
            i > 0 && ranges[i - 1].1 >= x
        }
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let s = HostPattern::parse("store.*").unwrap();
        assert!(s.matches("store.localhost"));
        assert!(s.matches("store.example.org"));
        assert!(!s.matches("store-dev.localhost"));
        assert!(!s.matches("store"));
        let w = HostPattern::parse("*.example.org").unwrap();
        assert!(w.matches("a.example.org"));
        assert!(w.matches("a.b.example.org"));
        assert!(!w.matches("example.org"));
        assert!(!w.matches("aexample.org"));
        assert!(HostPattern::parse("a..b").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("st*re.org").is_err());
    }

    #[test]
    fn prefix_on_segment_boundary() {
        let p = PathPattern::prefix("/api/");
        assert!(p.matches("/api"));
        assert!(p.matches("/api/records"));
        assert!(!p.matches("/apix"));
        assert!(PathPattern::prefix("/").matches("/anything"));
        assert!(PathPattern::prefix("/api/x").is_shadowed_by(&PathPattern::prefix("/api")));
        assert!(!PathPattern::prefix("/api").is_shadowed_by(&PathPattern::prefix("/api/x")));
    }

    #[test]
    fn allow_list() {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let a = AllowList::new(vec![], &nets);
        assert!(a.contains("10.1.2.3".parse().unwrap()));
        assert!(a.contains("192.168.1.255".parse().unwrap()));
        assert!(!a.contains("192.168.2.1".parse().unwrap()));
        assert!(!a.contains("11.0.0.0".parse().unwrap()));
        assert!(a.contains("2001:db8::1".parse().unwrap()));
        assert!(a.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!a.contains("2001:db9::1".parse().unwrap()));
    }
}
