//! Compiling the policy keys: list files, deny rules, rate limits, header conditions,
//! header rules and redirects, each error with its file:line:column.

use super::{Compiler, at};
use crate::diag::Pos;
use crate::rules::file::{
    DenyFile, HeaderEditsFile, HeaderRulesFile, HeaderTestFile, LimitFile, RedirectFile, RulesFile,
};
use crate::rules::policy::{
    AgentList, Conditions, DenyRule, HeaderCond, HeaderEdits, HeaderRules, HeaderTest, LimitKey,
    LimitSpec, Redirect,
};
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Largest list file read (a 100,000-network list is about 2 MiB).
const MAX_LIST_BYTES: u64 = 64 << 20;
/// Most distinct keys a limit may track (16 bytes each: 256 MiB).
const MAX_TRACKED: u32 = 1 << 24;

impl Compiler {
    /// Reads the `lists:` files: network lists join the networks, agent lists are kept
    /// for `agents:` and `in_list:`.
    pub(super) fn lists(&mut self, file: &Path, f: &RulesFile) {
        for (name, list) in &f.lists {
            self.name(file, at(list), "list", name);
            let l = &list.value;
            let (path, networks) = match (&l.networks, &l.agents) {
                (Some(p), None) => (p, true),
                (None, Some(p)) => (p, false),
                _ => {
                    self.err_hint(
                        file,
                        at(list),
                        format!("list `{name}` needs exactly one of `networks` or `agents`"),
                        "networks: lists/deny-ips.txt  or  agents: lists/deny-agents.txt",
                    );
                    continue;
                }
            };
            let Some(entries) = self.list_entries(file, path) else {
                continue;
            };
            if self.networks.contains_key(name) || self.agents.contains_key(name) {
                self.err(
                    file,
                    at(list),
                    format!("list `{name}` is defined twice (or as a network)"),
                );
                continue;
            }
            if networks {
                let nets = self.list_networks(file, path, name, &entries);
                self.networks.insert(name.clone(), nets);
            } else {
                let texts: Vec<String> = entries.into_iter().map(|(_, t)| t).collect();
                match AgentList::new(name.clone(), &texts) {
                    Some(a) => {
                        self.agents.insert(name.clone(), Arc::new(a));
                    }
                    None => self.err(file, at(path), format!("list `{name}`: too large to match")),
                }
            }
        }
    }

    /// The entries of a list file, with their line numbers (blank lines and `#` comments
    /// skipped); the file is remembered so an edit of it alone reloads the rules.
    fn list_entries(&mut self, file: &Path, p: &Spanned<String>) -> Option<Vec<(u64, String)>> {
        let path = file.parent().unwrap_or(Path::new(".")).join(&p.value);
        let text = match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_LIST_BYTES => {
                self.err(
                    file,
                    at(p),
                    format!("list {} is larger than 64 MiB", path.display()),
                );
                return None;
            }
            Ok(_) => std::fs::read_to_string(&path),
            Err(e) => Err(e),
        };
        self.set.list_files.push(path.clone());
        match text {
            Ok(t) => Some(
                t.lines()
                    .enumerate()
                    .map(|(i, l)| (i as u64 + 1, l.split('#').next().unwrap_or("").trim()))
                    .filter(|(_, l)| !l.is_empty())
                    .map(|(i, l)| (i, l.to_string()))
                    .collect(),
            ),
            Err(e) => {
                self.err_hint(
                    file,
                    at(p),
                    format!("cannot read list {}: {e}", path.display()),
                    "a path relative to this rules file",
                );
                None
            }
        }
    }

    /// Parses a network list's lines; errors point into the list file itself.
    fn list_networks(
        &mut self,
        file: &Path,
        p: &Spanned<String>,
        name: &str,
        entries: &[(u64, String)],
    ) -> Vec<IpNet> {
        let path = file.parent().unwrap_or(Path::new(".")).join(&p.value);
        let mut nets = Vec::with_capacity(entries.len());
        for (line, text) in entries {
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            {
                Ok(n) => nets.push(n.trunc()),
                Err(_) => self.err_hint(
                    &path,
                    Pos {
                        line: *line,
                        column: 1,
                    },
                    format!("list `{name}`: `{text}` is not a CIDR"),
                    "one address or network a line, such as 192.0.2.0/24",
                ),
            }
        }
        nets
    }

    /// Compiles deny rules; their counters are numbered across the whole rule set.
    pub(super) fn deny_rules(&mut self, file: &Path, rules: &[Spanned<DenyFile>]) -> Vec<DenyRule> {
        rules
            .iter()
            .filter_map(|r| self.deny_rule(file, r))
            .collect()
    }

    fn deny_rule(&mut self, file: &Path, spanned: &Spanned<DenyFile>) -> Option<DenyRule> {
        let d = &spanned.value;
        let name = d.name.value.clone();
        self.name(file, at(&d.name), "deny rule", &name);
        if !self.deny_names.insert(name.clone()) {
            self.err(
                file,
                at(&d.name),
                format!("deny rule `{name}` is defined twice"),
            );
        }
        let mut when = Conditions {
            from: d.from.as_ref().map(|l| self.allow_list(file, l)),
            headers: self.header_conds(file, &name, &d.headers),
        };
        if let Some(a) = &d.agents
            && let Some(list) = self.agent_list(file, at(a), &a.value)
        {
            when.headers.push(HeaderCond {
                name: http::header::USER_AGENT,
                test: HeaderTest::InList(list),
            });
        }
        if d.from.is_none() && d.agents.is_none() && d.headers.is_empty() {
            self.err_hint(
                file,
                at(spanned),
                format!("deny rule `{name}` has no condition: it would refuse everything"),
                "`from:`, `agents:` or `headers:`",
            );
        }
        let status = match &d.status {
            None => StatusCode::FORBIDDEN,
            Some(s) => match StatusCode::from_u16(s.value) {
                Ok(code) if (400..500).contains(&s.value) => code,
                _ => {
                    self.err_hint(
                        file,
                        at(s),
                        format!(
                            "deny rule `{name}`: {} is not a client error status",
                            s.value
                        ),
                        "403, or 429 to tell crawlers to slow down",
                    );
                    StatusCode::FORBIDDEN
                }
            },
        };
        let page = d.page.as_ref().and_then(|p| self.page(file, p));
        let index = self.set.deny_count;
        self.set.deny_count += 1;
        Some(DenyRule {
            name: name.into(),
            index,
            when,
            status,
            page,
        })
    }

    fn agent_list(&mut self, file: &Path, pos: Pos, name: &str) -> Option<Arc<AgentList>> {
        if let Some(a) = self.agents.get(name) {
            return Some(a.clone());
        }
        let mut known: Vec<&str> = self.agents.keys().map(String::as_str).collect();
        known.sort_unstable();
        self.err_hint(
            file,
            pos,
            format!("unknown agents list `{name}`"),
            format!("one of the `agents:` lists: {}", known.join(", ")),
        );
        None
    }

    /// Header conditions by name; `what` names their owner in errors.
    pub(super) fn header_conds(
        &mut self,
        file: &Path,
        what: &str,
        tests: &BTreeMap<String, Spanned<HeaderTestFile>>,
    ) -> Vec<HeaderCond> {
        let mut out = Vec::new();
        for (name, t) in tests {
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                self.err(
                    file,
                    at(t),
                    format!("`{what}`: `{name}` is not a header name"),
                );
                continue;
            };
            if let Some(test) = self.header_test(file, what, name, t) {
                out.push(HeaderCond { name: header, test });
            }
        }
        out
    }

    fn header_test(
        &mut self,
        file: &Path,
        what: &str,
        name: &str,
        t: &Spanned<HeaderTestFile>,
    ) -> Option<HeaderTest> {
        let v = &t.value;
        let given = [
            v.present.is_some(),
            v.equals.is_some(),
            v.contains.is_some(),
            v.regex.is_some(),
            v.in_list.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.err_hint(
                file,
                at(t),
                format!("`{what}`: header `{name}` needs exactly one test"),
                "present: true|false, equals:, contains:, regex: or in_list:",
            );
            return None;
        }
        Some(match v {
            HeaderTestFile {
                present: Some(p), ..
            } => {
                if *p {
                    HeaderTest::Present
                } else {
                    HeaderTest::Absent
                }
            }
            HeaderTestFile {
                equals: Some(s), ..
            } => HeaderTest::Equals(s.clone()),
            HeaderTestFile {
                contains: Some(s), ..
            } => HeaderTest::Contains(s.clone()),
            HeaderTestFile { regex: Some(r), .. } => match regex::Regex::new(r) {
                Ok(re) => HeaderTest::Regex(re),
                Err(e) => {
                    self.err(
                        file,
                        at(t),
                        format!(
                            "`{what}`: header `{name}`: bad regex: {}",
                            super::regex_error(&e)
                        ),
                    );
                    return None;
                }
            },
            HeaderTestFile {
                in_list: Some(l), ..
            } => HeaderTest::InList(self.agent_list(file, at(t), l)?),
            _ => return None,
        })
    }

    /// Compiles the `limits:` section.
    pub(super) fn limits(&mut self, file: &Path, f: &RulesFile) {
        for (name, l) in &f.limits {
            self.name(file, at(l), "limit", name);
            let Some(spec) = self.limit(file, name, &l.value) else {
                // Known, so routes naming it are not reported again.
                self.limit_index.insert(name.clone(), usize::MAX);
                continue;
            };
            if self.limit_index.contains_key(name) {
                self.err(file, at(l), format!("limit `{name}` is defined twice"));
                continue;
            }
            self.limit_index.insert(name.clone(), spec.index);
            self.set.limits.push(spec);
        }
    }

    fn limit(&mut self, file: &Path, name: &str, l: &LimitFile) -> Option<LimitSpec> {
        let Some((rate, per)) = parse_rate(&l.rate.value) else {
            self.err_hint(
                file,
                at(&l.rate),
                format!("limit `{name}`: `{}` is not a rate", l.rate.value),
                "requests per period: 20/s, 60/min, 2000/h",
            );
            return None;
        };
        let burst = l.burst.as_ref().map_or(rate, |b| b.value);
        if burst == 0 {
            self.err(
                file,
                at(l.burst.as_ref()?),
                format!("limit `{name}`: burst must be at least 1"),
            );
            return None;
        }
        let key = match &l.by {
            None => LimitKey::Client { v4: 32, v6: 64 },
            Some(b) => match parse_key(&b.value) {
                Some(k) => k,
                None => {
                    self.err_hint(
                        file,
                        at(b),
                        format!("limit `{name}`: `{}` is not something to count by", b.value),
                        "client, client/24, client/24/48 or header:NAME",
                    );
                    return None;
                }
            },
        };
        let tracked = l.tracked.as_ref().map_or(65_536, |t| t.value);
        if !(64..=MAX_TRACKED).contains(&tracked) {
            self.err(
                file,
                at(l.tracked.as_ref()?),
                format!("limit `{name}`: tracked must be from 64 to {MAX_TRACKED}"),
            );
            return None;
        }
        Some(LimitSpec {
            name: name.into(),
            index: self.set.limits.len(),
            rate,
            per,
            burst,
            key,
            tracked,
            text: l.rate.value.trim().to_string(),
        })
    }

    /// The limit a site or route names.
    pub(super) fn limit_ref(&mut self, file: &Path, name: &Spanned<String>) -> Option<usize> {
        if let Some(i) = self.limit_index.get(&name.value) {
            return (*i != usize::MAX).then_some(*i);
        }
        let mut known: Vec<&str> = self.limit_index.keys().map(String::as_str).collect();
        known.sort_unstable();
        self.err_hint(
            file,
            at(name),
            format!("unknown limit `{}`", name.value),
            format!("one of the limits defined: {}", known.join(", ")),
        );
        None
    }

    /// Header rules of a site or route.
    pub(super) fn header_rules(
        &mut self,
        file: &Path,
        what: &str,
        h: &Spanned<HeaderRulesFile>,
    ) -> HeaderRules {
        HeaderRules {
            request: h
                .value
                .request
                .as_ref()
                .map_or_else(HeaderEdits::default, |e| self.header_edits(file, what, e)),
            response: h
                .value
                .response
                .as_ref()
                .map_or_else(HeaderEdits::default, |e| self.header_edits(file, what, e)),
        }
    }

    fn header_edits(
        &mut self,
        file: &Path,
        what: &str,
        e: &Spanned<HeaderEditsFile>,
    ) -> HeaderEdits {
        let mut out = HeaderEdits::default();
        let pairs = |c: &mut Compiler, m: &BTreeMap<String, Spanned<String>>| {
            let mut v = Vec::new();
            for (n, val) in m {
                match (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_str(&val.value),
                ) {
                    (Ok(n), Ok(val)) if !reserved(&n) => v.push((n, val)),
                    (Ok(n), Ok(_)) => c.err_hint(
                        file,
                        at(val),
                        format!("`{what}`: `{n}` is the proxy's to write"),
                        "framing, hop-by-hop and forwarding headers cannot be edited",
                    ),
                    _ => c.err(
                        file,
                        at(val),
                        format!("`{what}`: `{n}: {}` is not a valid header", val.value),
                    ),
                }
            }
            v
        };
        out.set = pairs(self, &e.value.set);
        out.add = pairs(self, &e.value.add);
        for n in &e.value.remove {
            match HeaderName::from_bytes(n.value.as_bytes()) {
                Ok(h) if !reserved(&h) => out.remove.push(h),
                Ok(h) => self.err(
                    file,
                    at(n),
                    format!("`{what}`: `{h}` is the proxy's to write"),
                ),
                Err(_) => self.err(
                    file,
                    at(n),
                    format!("`{what}`: `{}` is not a header name", n.value),
                ),
            }
        }
        out
    }

    /// A route's redirect.
    pub(super) fn redirect(
        &mut self,
        file: &Path,
        route: &str,
        r: &Spanned<RedirectFile>,
    ) -> Option<Redirect> {
        let to = &r.value.to;
        let mut rest = to.value.as_str();
        while let Some(i) = rest.find('{') {
            rest = &rest[i..];
            match Redirect::PLACEHOLDERS.iter().find(|p| rest.starts_with(*p)) {
                Some(p) => rest = &rest[p.len()..],
                None => {
                    self.err_hint(
                        file,
                        at(to),
                        format!("route `{route}`: unknown placeholder in `{}`", to.value),
                        "{host}, {path} and {query}",
                    );
                    return None;
                }
            }
        }
        if !(to.value.starts_with('/')
            || to.value.starts_with("https://")
            || to.value.starts_with("http://"))
        {
            self.err_hint(
                file,
                at(to),
                format!(
                    "route `{route}`: redirect target `{}` is neither a URL nor a path",
                    to.value
                ),
                "https://example.org{path}{query} or /new{path}",
            );
            return None;
        }
        let status = r.value.status.as_ref().map_or(301, |s| s.value);
        if ![301, 302, 303, 307, 308].contains(&status) {
            self.err_hint(
                file,
                at(r.value.status.as_ref()?),
                format!("route `{route}`: {status} is not a redirect status"),
                "301, 302, 303, 307 or 308",
            );
            return None;
        }
        Some(Redirect {
            status: StatusCode::from_u16(status).ok()?,
            to: to.value.clone(),
        })
    }
}

/// Headers the proxy owns: framing, hop-by-hop, routing and forwarding. Rules may not
/// set or remove them (a rule could otherwise unframe a message or forge an address).
fn reserved(n: &HeaderName) -> bool {
    use http::header as h;
    [
        h::HOST,
        h::CONTENT_LENGTH,
        h::TRANSFER_ENCODING,
        h::CONNECTION,
        h::UPGRADE,
        h::TE,
        h::TRAILER,
        h::FORWARDED,
    ]
    .contains(n)
        || [
            "keep-alive",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
        ]
        .contains(&n.as_str())
}

/// `20/s`, `60/min`, `2000/h`, `10/5s` → (count, period).
fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (n, per) = s.trim().split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let per = per.trim();
    let period = match per {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => crate::units::parse_duration(other).ok()?,
    };
    (!period.is_zero() && period <= Duration::from_secs(86_400)).then_some((n, period))
}

/// `client`, `client/24`, `client/24/48`, `header:NAME`.
fn parse_key(s: &str) -> Option<LimitKey> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("header:") {
        let name = HeaderName::from_bytes(h.trim().as_bytes()).ok()?;
        return Some(LimitKey::Header(name));
    }
    let mut parts = s.split('/');
    if parts.next()? != "client" {
        return None;
    }
    let v4: u8 = parts.next().map_or(Some(32), |p| p.parse().ok())?;
    let v6: u8 = parts.next().map_or(Some(64), |p| p.parse().ok())?;
    (parts.next().is_none() && (8..=32).contains(&v4) && (16..=128).contains(&v6))
        .then_some(LimitKey::Client { v4, v6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_keys() {
        assert_eq!(parse_rate("20/s"), Some((20, Duration::from_secs(1))));
        assert_eq!(parse_rate("60/min"), Some((60, Duration::from_secs(60))));
        assert_eq!(parse_rate("10/5s"), Some((10, Duration::from_secs(5))));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("20"), None);
        assert_eq!(
            parse_key("client"),
            Some(LimitKey::Client { v4: 32, v6: 64 })
        );
        assert_eq!(
            parse_key("client/24"),
            Some(LimitKey::Client { v4: 24, v6: 64 })
        );
        assert_eq!(
            parse_key("client/24/48"),
            Some(LimitKey::Client { v4: 24, v6: 48 })
        );
        assert_eq!(parse_key("client/40"), None);
        assert_eq!(
            parse_key("header:X-Api-Key"),
            Some(LimitKey::Header(HeaderName::from_static("x-api-key")))
        );
        assert_eq!(parse_key("cookie"), None);
    }
}
