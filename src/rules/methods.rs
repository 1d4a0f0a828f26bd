//! The methods a route takes: a set of the standard methods, so the check is one mask.

use http::Method;

/// The methods a rules file may name, in the order `Allow` lists them.
const NAMES: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// A set of standard methods. `GET` brings `HEAD` with it (a HEAD is a GET without the
/// body, as nginx's `limit_except GET` has it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Methods(u16);

impl Methods {
    /// The method a rules file names (any case); `None` for one it may not name.
    pub fn parse(name: &str) -> Option<Methods> {
        let i = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name))?;
        let bits = 1u16 << i;
        Some(Methods(if i == 0 { bits | 0b10 } else { bits }))
    }

    /// The names a rules file may use, for hints.
    pub fn known() -> String {
        NAMES.join(", ")
    }

    /// Whether `m` is in the set (an extension method never is).
    #[inline]
    pub fn contains(self, m: &Method) -> bool {
        self.0 & bit(m) != 0
    }

    /// Both sets.
    pub fn union(self, other: Methods) -> Methods {
        Methods(self.0 | other.0)
    }

    /// The set as an `Allow` value: `GET, HEAD`.
    pub fn allow(self) -> String {
        let names = NAMES.iter().enumerate();
        let v: Vec<&str> = names
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        v.join(", ")
    }
}

/// The bit of a standard method, 0 for an extension method.
#[inline]
fn bit(m: &Method) -> u16 {
    let i = match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => return 0,
    };
    1 << i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_check_and_list() {
        let get = Methods::parse("get").expect("GET");
        assert!(get.contains(&Method::GET) && get.contains(&Method::HEAD));
        assert!(!get.contains(&Method::PUT));
        assert_eq!(get.allow(), "GET, HEAD");
        let put = Methods::parse("PUT").expect("PUT");
        assert_eq!(put.union(get).allow(), "GET, HEAD, PUT");
        assert!(Methods::parse("GETT").is_none());
        let ext = Method::from_bytes(b"PROPFIND").expect("method");
        assert!(!get.union(put).contains(&ext));
    }
}
