//! One runtime API command, parsed from its words (pure): HAProxy's syntax and its
//! error texts, so the tools written for HAProxy's socket read our answers.

use crate::admin::csv::Filter as StatFilter;
use crate::health::AdminState;
use crate::rules::Colour;

/// `backend/server` as the commands name a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The service (HAProxy backend).
    pub backend: &'a str,
    /// The server's name.
    pub server: &'a str,
}

/// A weight as `set weight` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// An absolute weight, 0–256.
    Absolute(u32),
    /// A share of the rules' weight.
    Percent(u32),
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `help`
    Help,
    /// `prompt`: toggles interactive mode.
    Prompt,
    /// `quit`
    Quit,
    /// `set timeout cli N` (seconds of idleness allowed in interactive mode).
    SetTimeout(u64),
    /// `show info`
    ShowInfo,
    /// `show stat [iid type sid]`
    ShowStat(StatFilter),
    /// `show servers state [backend]`
    ShowServersState(Option<&'a str>),
    /// `enable server`, `disable server`, `set server … state`.
    SetState(Target<'a>, AdminState),
    /// `set weight` / `set server … weight`.
    SetWeight(Target<'a>, Weight),
    /// `get weight`
    GetWeight(Target<'a>),
    /// `show colour` (Gatehouse's own): each service's live colour.
    ShowColour,
    /// `set colour SERVICE blue|green [force]` (Gatehouse's own).
    SetColour {
        /// The service.
        service: &'a str,
        /// The colour to make live.
        colour: Colour,
        /// Switch even with no healthy server in the new colour.
        force: bool,
    },
    /// `reload` (Gatehouse's own).
    Reload,
    /// `explain [METHOD] URL [from IP]` (Gatehouse's own).
    Explain {
        /// Request method.
        method: &'a str,
        /// The URL.
        url: &'a str,
        /// Client address.
        from: Option<&'a str>,
    },
}

/// The commands and what they do, as `help` prints them.
pub const HELP: &[(&str, &str)] = &[
    ("help", "list the commands"),
    ("prompt", "toggle interactive mode with prompt"),
    ("quit", "disconnect"),
    (
        "set timeout cli <delay>",
        "change this session's idle timeout (seconds)",
    ),
    ("show info", "report information about the running process"),
    (
        "show stat [<iid> <type> <sid>]",
        "report counters for each proxy and server (CSV)",
    ),
    (
        "show servers state [<backend>]",
        "dump server states (HAProxy's state file format)",
    ),
    (
        "disable server <bk>/<srv>",
        "set a server in maintenance mode",
    ),
    (
        "enable server <bk>/<srv>",
        "put a server back in rotation (clears MAINT and DRAIN)",
    ),
    (
        "set server <bk>/<srv> state <st>",
        "set a server's state: ready, drain or maint",
    ),
    (
        "set server <bk>/<srv> weight <w>",
        "change a server's weight (0-256 or N%)",
    ),
    (
        "set weight <bk>/<srv> <w>",
        "change a server's weight (0-256 or N%)",
    ),
    (
        "get weight <bk>/<srv>",
        "report a server's current and initial weight",
    ),
    (
        "show colour",
        "each service's live colour and servers UP per colour",
    ),
    (
        "set colour <svc> blue|green [force]",
        "switch a service's live colour in the rules file",
    ),
    (
        "reload",
        "reload the rules (refused with file:line:column if they do not compile)",
    ),
    (
        "explain [<method>] <url> [from <ip>]",
        "how a request would be handled and why",
    ),
];

/// The help text (HAProxy's layout: command, then `: what`).
pub fn help(first_line: &str) -> String {
    let mut out = format!("{first_line}\n");
    for (cmd, what) in HELP {
        out.push_str(&format!("  {cmd:<40}: {what}\n"));
    }
    out
}

/// Splits a line into commands (`;`-separated, as HAProxy's CLI), skipping empty ones.
pub fn split(line: &str) -> impl Iterator<Item = &str> {
    line.split(';').map(str::trim).filter(|c| !c.is_empty())
}

/// Parses one command; the error is the text to answer.
pub fn parse(cmd: &str) -> Result<Command<'_>, String> {
    let w: Vec<&str> = cmd.split_whitespace().collect();
    match w.as_slice() {
        ["help", ..] => Ok(Command::Help),
        ["prompt", ..] => Ok(Command::Prompt),
        ["quit", ..] => Ok(Command::Quit),
        ["set", "timeout", "cli", t] => t
            .parse()
            .map(Command::SetTimeout)
            .map_err(|_| "Expects an integer value.".into()),
        ["show", "info", ..] => Ok(Command::ShowInfo),
        ["show", "stat", rest @ ..] => stat_filter(rest).map(Command::ShowStat),
        ["show", "servers", "state", rest @ ..] => {
            Ok(Command::ShowServersState(rest.first().copied()))
        }
        ["disable", "server", t, ..] => Ok(Command::SetState(target(t)?, AdminState::Maint)),
        ["enable", "server", t, ..] => Ok(Command::SetState(target(t)?, AdminState::Ready)),
        ["get", "weight", t, ..] => Ok(Command::GetWeight(target(t)?)),
        ["set", "weight", t, w, ..] => Ok(Command::SetWeight(target(t)?, weight(w)?)),
        ["set", "weight", t] => {
            target(t)?;
            Err("Require <weight> or <weight%>.".into())
        }
        ["set", "server", t, rest @ ..] => set_server(target(t)?, rest),
        ["show", "colour" | "color", ..] => Ok(Command::ShowColour),
        ["set", "colour" | "color", svc, c, rest @ ..] => Ok(Command::SetColour {
            service: svc,
            colour: colour(c)?,
            force: rest.first() == Some(&"force"),
        }),
        ["reload", ..] => Ok(Command::Reload),
        ["explain", rest @ ..] => explain(rest),
        _ => Err(help(
            "Unknown command. Please enter one of the following commands only :",
        )),
    }
}

fn target(t: &str) -> Result<Target<'_>, String> {
    match t.split_once('/') {
        Some((b, s)) if !b.is_empty() && !s.is_empty() => Ok(Target {
            backend: b,
            server: s,
        }),
        _ => Err("Require 'backend/server'.".into()),
    }
}

fn weight(w: &str) -> Result<Weight, String> {
    let (digits, pct) = match w.strip_suffix('%') {
        Some(d) => (d, true),
        None => (w, false),
    };
    let n: u32 = digits
        .parse()
        .map_err(|_| "Empty weight string empty or preceded by garbage".to_string())?;
    match pct {
        true => Ok(Weight::Percent(n)),
        false if n <= crate::health::MAX_WEIGHT => Ok(Weight::Absolute(n)),
        false => Err("Absolute weight can only be between 0 and 256 inclusive.".into()),
    }
}

fn set_server<'a>(t: Target<'a>, rest: &[&'a str]) -> Result<Command<'a>, String> {
    match rest {
        ["state", "ready"] => Ok(Command::SetState(t, AdminState::Ready)),
        ["state", "drain"] => Ok(Command::SetState(t, AdminState::Drain)),
        ["state", "maint"] => Ok(Command::SetState(t, AdminState::Maint)),
        ["state", ..] => {
            Err("'set server <srv> state' expects 'ready', 'drain' and 'maint'.".into())
        }
        ["weight", w] => Ok(Command::SetWeight(t, weight(w)?)),
        ["weight"] => Err("Require <weight> or <weight%>.".into()),
        _ => Err("usage: set server <backend>/<server> state | weight".into()),
    }
}

fn colour(c: &str) -> Result<Colour, String> {
    match c {
        "blue" => Ok(Colour::Blue),
        "green" => Ok(Colour::Green),
        _ => Err(format!("colour must be blue or green, not '{c}'.")),
    }
}

fn stat_filter(rest: &[&str]) -> Result<StatFilter, String> {
    let all = StatFilter {
        iid: -1,
        types: -1,
        sid: -1,
    };
    match rest {
        [] => Ok(all),
        [iid, types, sid, ..] => {
            let n = |s: &str| {
                s.parse::<i64>()
                    .map_err(|_| "Expects integers.".to_string())
            };
            Ok(StatFilter {
                iid: n(iid)?,
                types: n(types)?,
                sid: n(sid)?,
            })
        }
        // `show stat typed`, `json`, …: the plain CSV.
        _ => Ok(all),
    }
}

fn explain<'a>(rest: &[&'a str]) -> Result<Command<'a>, String> {
    let (method, rest) = match rest {
        [m, r @ ..] if !m.contains("://") => (*m, r),
        r => ("GET", r),
    };
    match rest {
        [url] => Ok(Command::Explain {
            method,
            url,
            from: None,
        }),
        [url, "from", ip] => Ok(Command::Explain {
            method,
            url,
            from: Some(ip),
        }),
        _ => Err("usage: explain [<method>] <url> [from <ip>]".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands_tools_send() {
        let t = Target {
            backend: "api",
            server: "api-blue-1",
        };
        assert_eq!(
            parse("disable server api/api-blue-1"),
            Ok(Command::SetState(t, AdminState::Maint))
        );
        assert_eq!(
            parse("set server api/api-blue-1 state drain"),
            Ok(Command::SetState(t, AdminState::Drain))
        );
        assert_eq!(
            parse("set weight api/api-blue-1 50%"),
            Ok(Command::SetWeight(t, Weight::Percent(50)))
        );
        assert_eq!(
            parse("set server api/api-blue-1 weight 7"),
            Ok(Command::SetWeight(t, Weight::Absolute(7)))
        );
        assert!(parse("set weight api/api-blue-1 300").is_err());
        assert_eq!(
            parse("get weight api").unwrap_err(),
            "Require 'backend/server'."
        );
        assert!(parse("bogus").unwrap_err().starts_with("Unknown command"));
        let cmds: Vec<&str> = split("get weight a/b; enable server a/b;;").collect();
        assert_eq!(cmds, ["get weight a/b", "enable server a/b"]);
        assert_eq!(
            parse("show stat 2 4 -1"),
            Ok(Command::ShowStat(StatFilter {
                iid: 2,
                types: 4,
                sid: -1
            }))
        );
        assert_eq!(
            parse("explain https://data.localhost/api/ from 10.0.0.1"),
            Ok(Command::Explain {
                method: "GET",
                url: "https://data.localhost/api/",
                from: Some("10.0.0.1")
            })
        );
    }
}
