//! Edge policy beyond host and path: request conditions, deny rules, rate-limit specs,
//! header rules and redirects, compiled once per generation.
//!
//! Pure. Matching reads a request's headers and client address and nothing else; the
//! limiter's state (which changes with time) lives in `crate::limit`, outside the rules.

use super::matcher::AllowList;
use aho_corasick::AhoCorasick;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// User-agent patterns from a list file: a request matches when its `User-Agent`
/// contains any of them, ignoring ASCII case (HAProxy's `hdr_sub(user-agent) -i -f`).
/// One Aho-Corasick automaton: the cost follows the header's length, not the list's.
#[derive(Clone, Debug)]
pub struct AgentList {
    /// The list's name in the rules.
    pub name: String,
    /// Patterns read.
    pub len: usize,
    automaton: AhoCorasick,
}

impl AgentList {
    /// Builds the automaton; `None` if the patterns are too many or too long for it.
    pub fn new(name: String, patterns: &[String]) -> Option<AgentList> {
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(patterns)
            .ok()?;
        Some(AgentList {
            name,
            len: patterns.len(),
            automaton,
        })
    }

    /// Whether `agent` contains one of the patterns.
    pub fn matches(&self, agent: &[u8]) -> bool {
        self.len > 0 && self.automaton.is_match(agent)
    }
}

/// What one header must look like.
#[derive(Clone, Debug)]
pub enum HeaderTest {
    /// Sent (any value).
    Present,
    /// Not sent.
    Absent,
    /// Some value equals this, ignoring ASCII case.
    Equals(String),
    /// Some value contains this, ignoring ASCII case.
    Contains(String),
    /// Some value matches this expression (unanchored; `(?i)` for case).
    Regex(Regex),
    /// Some value contains a pattern of this list, ignoring ASCII case.
    InList(Arc<AgentList>),
}

/// A condition on one request header (names are case-insensitive, as HTTP's are).
#[derive(Clone, Debug)]
pub struct HeaderCond {
    /// The header.
    pub name: HeaderName,
    /// The test.
    pub test: HeaderTest,
}

impl HeaderCond {
    /// Whether `headers` pass the test (every value of a repeated header is tried).
    pub fn holds(&self, headers: &HeaderMap) -> bool {
        let mut values = headers
            .get_all(&self.name)
            .iter()
            .map(HeaderValue::as_bytes);
        match &self.test {
            HeaderTest::Present => values.next().is_some(),
            HeaderTest::Absent => values.next().is_none(),
            HeaderTest::Equals(s) => values.any(|v| v.eq_ignore_ascii_case(s.as_bytes())),
            HeaderTest::Contains(s) => values.any(|v| contains_ignore_case(v, s.as_bytes())),
            HeaderTest::Regex(r) => {
                values.any(|v| std::str::from_utf8(v).is_ok_and(|v| r.is_match(v)))
            }
            HeaderTest::InList(l) => values.any(|v| l.matches(v)),
        }
    }

    /// How `explain` and the docs write it: `user-agent contains "bot"`.
    pub fn describe(&self) -> String {
        let n = &self.name;
        match &self.test {
            HeaderTest::Present => format!("{n} present"),
            HeaderTest::Absent => format!("{n} absent"),
            HeaderTest::Equals(s) => format!("{n} equals {s:?}"),
            HeaderTest::Contains(s) => format!("{n} contains {s:?}"),
            HeaderTest::Regex(r) => format!("{n} matches /{}/", r.as_str()),
            HeaderTest::InList(l) => format!("{n} contains an entry of list `{}`", l.name),
        }
    }
}

/// Whether `hay` contains `needle`, ignoring ASCII case (`needle` is short: a rule's text).
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Everything a deny rule (or a conditional route) requires; all must hold.
#[derive(Clone, Debug, Default)]
pub struct Conditions {
    /// The client is in one of these networks.
    pub from: Option<Arc<AllowList>>,
    /// Header tests.
    pub headers: Vec<HeaderCond>,
}

impl Conditions {
    /// Whether a request from `client` with `headers` meets every condition.
    #[inline]
    pub fn hold(&self, client: IpAddr, headers: &HeaderMap) -> bool {
        self.from.as_ref().is_none_or(|a| a.contains(client))
            && self.headers.iter().all(|h| h.holds(headers))
    }

    /// Whether there is nothing to check.
    pub fn is_empty(&self) -> bool {
        self.from.is_none() && self.headers.is_empty()
    }

    /// One line for `explain`: `from [bad-ips] and user-agent contains "bot"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.from {
            parts.push(format!("from [{}]", a.names.join(", ")));
        }
        parts.extend(self.headers.iter().map(HeaderCond::describe));
        parts.join(" and ")
    }
}

/// A request refused before routing when its conditions hold (HAProxy's
/// `http-request deny deny_status N if …`).
#[derive(Clone, Debug)]
pub struct DenyRule {
    /// Name for logs, stats and `explain`.
    pub name: Arc<str>,
    /// Index among the rule set's deny rules (its counter).
    pub index: usize,
    /// What the request must match to be refused.
    pub when: Conditions,
    /// The answer's status.
    pub status: StatusCode,
    /// The page sent with it (else the error page for the status).
    pub page: Option<Bytes>,
}

/// What a rate limit counts requests by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address, IPv4 by its first `v4` bits and IPv6 by its first `v6`.
    Client {
        /// IPv4 prefix length (32: the address).
        v4: u8,
        /// IPv6 prefix length (64 by default: one subscriber's network).
        v6: u8,
    },
    /// A request header's value (requests without it count by client address).
    Header(HeaderName),
}

/// A named rate limit: `rate` requests per `per`, with `burst` allowed at once (GCRA, as
/// nginx's `limit_req` and `governor` count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    /// Name for stats, logs and `explain`.
    pub name: Arc<str>,
    /// Index among the rule set's limits (its limiter and counter).
    pub index: usize,
    /// Requests per period.
    pub rate: u32,
    /// The period.
    pub per: Duration,
    /// Requests that may arrive at once after a quiet spell.
    pub burst: u32,
    /// What is counted.
    pub key: LimitKey,
    /// Distinct keys tracked at once (memory: 16 bytes each).
    pub tracked: u32,
    /// How it is written in the rules (`20/s`), for headers and `explain`.
    pub text: String,
}

impl LimitSpec {
    /// Time between two requests at the steady rate.
    pub fn interval(&self) -> Duration {
        self.per / self.rate.max(1)
    }
}

/// Header edits on one direction of a message.
#[derive(Clone, Debug, Default)]
pub struct HeaderEdits {
    /// Replaced (every earlier value removed).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies the edits: removals first, then sets, then additions.
    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Header rules of a site or route, for requests to servers and responses to clients.
#[derive(Clone, Debug, Default)]
pub struct HeaderRules {
    /// On the request, before it is forwarded.
    pub request: HeaderEdits,
    /// On the response, before it is sent.
    pub response: HeaderEdits,
}

/// A redirect answered by a route: `to` with `{host}`, `{path}`, `{query}` filled in.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// 301, 302, 307 or 308.
    pub status: StatusCode,
    /// The target template as written.
    pub to: String,
}

impl Redirect {
    /// The `Location` for a request: `{query}` is `?` and the query when there is one.
    /// One pass over the template, so a placeholder inside a client's path is never
    /// expanded again.
    pub fn location(&self, host: &str, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.to.len() + path.len() + 16);
        let mut rest = self.to.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let (text, len) = if rest.starts_with("{host}") {
                (host, 6)
            } else if rest.starts_with("{path}") {
                (path, 6)
            } else if rest.starts_with("{query}") {
                if let Some(q) = query {
                    out.push('?');
                    (q, 7)
                } else {
                    ("", 7)
                }
            } else {
                ("{", 1)
            };
            out.push_str(text);
            rest = &rest[len..];
        }
        out.push_str(rest);
        out
    }

    /// The placeholders a template may use.
    pub const PLACEHOLDERS: [&'static str; 3] = ["{host}", "{path}", "{query}"];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(name: &str, test: HeaderTest) -> HeaderCond {
        HeaderCond {
            name: HeaderName::from_bytes(name.as_bytes()).unwrap(),
            test,
        }
    }

    #[test]
    fn header_tests() {
        let mut h = HeaderMap::new();
        h.insert(
            "user-agent",
            HeaderValue::from_static("Mozilla/5.0 (compatible; BadBot/1.0)"),
        );
        h.append("accept", HeaderValue::from_static("text/html"));
        h.append("accept", HeaderValue::from_static("application/json"));
        assert!(cond("User-Agent", HeaderTest::Contains("badbot".into())).holds(&h));
        assert!(!cond("user-agent", HeaderTest::Contains("goodbot".into())).holds(&h));
        assert!(cond("accept", HeaderTest::Equals("APPLICATION/JSON".into())).holds(&h));
        assert!(cond("x-api-key", HeaderTest::Absent).holds(&h));
        assert!(!cond("x-api-key", HeaderTest::Present).holds(&h));
        let re = Regex::new(r"BadBot/\d").unwrap();
        assert!(cond("user-agent", HeaderTest::Regex(re)).holds(&h));
        let list = AgentList::new("l".into(), &["curl/".into(), "BADBOT".into()]).unwrap();
        assert!(cond("user-agent", HeaderTest::InList(Arc::new(list))).holds(&h));
        let empty = AgentList::new("e".into(), &[]).unwrap();
        assert!(!empty.matches(b"anything"));
    }

    #[test]
    fn redirect_placeholders() {
        let r = Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            to: "https://example.org{path}{query}".into(),
        };
        assert_eq!(
            r.location("www.example.org", "/a", Some("b=1")),
            "https://example.org/a?b=1"
        );
        assert_eq!(
            r.location("www.example.org", "/a", None),
            "https://example.org/a"
        );
        assert_eq!(
            r.location("h", "/{query}", Some("x")),
            "https://example.org/{query}?x"
        );
    }
}
