//! Servers named by DNS: the `host:port` form, and the addresses the compiler expands them to.
//!
//! Pure: the runtime resolver (`resolve.rs`) asks DNS and hands the answers here as
//! [`Resolved`]; a compile turns each answered address into a server of its own.
//! Addresses keep their slot (`web-ui#2` stays the same address while DNS keeps
//! answering it), so a re-resolution that adds or drops one address leaves every other
//! server's health, counters and admin state where they were.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The addresses of every name, slot by slot (`None`: a slot freed by an address DNS
/// no longer gives; the next new address takes it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    names: HashMap<String, Arc<[Option<IpAddr>]>>,
}

impl Resolved {
    /// The slots of `host` (empty when it was never answered).
    pub fn slots(&self, host: &str) -> &[Option<IpAddr>] {
        self.names.get(host).map_or(&[], |s| s)
    }

    /// Sets the slots of `host`.
    pub fn insert(&mut self, host: &str, slots: Arc<[Option<IpAddr>]>) {
        self.names.insert(host.to_ascii_lowercase(), slots);
    }
}

/// Places `answer` into `slots`: an address already in a slot keeps it, a gone one
/// frees its slot, a new one takes the first free slot (or a new one at the end).
pub fn assign(slots: &[Option<IpAddr>], answer: &[IpAddr]) -> Vec<Option<IpAddr>> {
    let mut out: Vec<Option<IpAddr>> = slots
        .iter()
        .map(|s| s.filter(|ip| answer.contains(ip)))
        .collect();
    for ip in answer {
        if out.contains(&Some(*ip)) {
            continue;
        }
        match out.iter_mut().find(|s| s.is_none()) {
            Some(free) => *free = Some(*ip),
            None => out.push(Some(*ip)),
        }
    }
    while out.last() == Some(&None) {
        out.pop();
    }
    out
}

/// `host:port` where `host` is a DNS name (not an address): the name, lowercased, and
/// the port.
pub fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    is_host_name(host).then(|| (host.to_ascii_lowercase(), port))
}

/// Whether `s` is a host name (RFC 1123 labels of letters, digits and `-`, at most 253
/// bytes) and not an IPv4 address written as one.
fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.parse::<IpAddr>().is_err()
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_keep_their_slots() {
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        let first = assign(&[], &[a, b]);
        assert_eq!(first, vec![Some(a), Some(b)]);
        // a goes away: b keeps slot 2, slot 1 is free.
        let second = assign(&first, &[b]);
        assert_eq!(second, vec![None, Some(b)]);
        // c arrives: it takes the freed slot 1.
        assert_eq!(assign(&second, &[c, b]), vec![Some(c), Some(b)]);
        // The last slot freed: trimmed.
        assert_eq!(assign(&first, &[a]), vec![Some(a)]);
    }

    #[test]
    fn host_names_and_not_addresses() {
        assert_eq!(host_port("web-ui:5000"), Some(("web-ui".into(), 5000)));
        assert_eq!(
            host_port("Web.Example.org:443"),
            Some(("web.example.org".into(), 443))
        );
        for bad in [
            "10.0.0.1:80",
            "web-ui",
            "web-ui:0",
            "web-ui:99999",
            "-web:80",
            "web_ui:80",
            "a..b:80",
            ":80",
            "[::1]:80",
            "10.0.0:80",
        ] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
    }
}
