//! Runs one runtime API command against the live process and writes its answer.
//!
//! Every change goes through the same paths as the stats page and the `gatehouse`
//! commands (admin states on the health table, weights by a rebuilt generation, colours
//! by the switch's own checks), is audited with who asked, and is saved to the state file.

use super::command::{Command, Target, Weight};
use super::state;
use crate::admin::csv;
use crate::generation::Generation;
use crate::health::{AdminState, ServerState};
use crate::proxy::Shared;
use crate::reload::Reloader;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// What the runtime API acts on.
pub struct Api {
    /// Request state (generation, counters, health).
    pub shared: Arc<Shared>,
    /// Reloads and runtime rebuilds.
    pub reloader: Arc<Reloader>,
    /// Set while the process drains.
    pub draining: Arc<AtomicBool>,
}

impl Api {
    /// Runs `cmd` for `who` (the socket peer, for the audit); returns the answer text
    /// (empty for a change that succeeded, as HAProxy answers).
    pub async fn run(&self, cmd: Command<'_>, who: &str) -> String {
        match cmd {
            Command::Help => {
                super::command::help("The following commands are valid at this level:")
            }
            Command::ShowInfo => super::info::show_info(self),
            Command::ShowStat(filter) => {
                crate::admin::with_view(&self.shared, &self.reloader, |v| csv::csv_where(v, filter))
            }
            Command::ShowServersState(backend) => self.servers_state(backend),
            Command::SetState(t, st) => self.set_state(t, st, who),
            Command::SetWeight(t, w) => self.set_weight(t, w, who).await,
            Command::GetWeight(t) => match self.find(t) {
                Ok((_, s)) => format!("{} (initial {})\n", s.weight(), s.initial_weight()),
                Err(e) => e,
            },
            Command::ShowColour => self.show_colour(),
            Command::SetColour {
                service,
                colour,
                force,
            } => self.set_colour(service, colour, force, who).await,
            Command::Reload => self.reload(who).await,
            Command::Explain { method, url, from } => self.explain(method, url, from).await,
            // Session commands are handled by the session itself.
            Command::Prompt | Command::Quit | Command::SetTimeout(_) => String::new(),
        }
    }

    fn servers_state(&self, backend: Option<&str>) -> String {
        let g = self.shared.state.load_full();
        let first = crate::admin::with_view(&self.shared, &self.reloader, |v| csv::iids(v).1);
        state::servers_state(&g, first, backend).unwrap_or_else(|| "Can't find backend.\n".into())
    }

    /// The server `backend/server` names in the serving generation.
    fn find(&self, t: Target<'_>) -> Result<(Arc<Generation>, Arc<ServerState>), String> {
        let g = self.shared.state.load_full();
        let Some(svc) = g.rules.services.iter().find(|s| &*s.name == t.backend) else {
            return Err("No such backend.\n".into());
        };
        let Some(id) = svc
            .blue
            .servers
            .iter()
            .chain(&svc.green.servers)
            .find(|s| &*s.name == t.server)
            .map(|s| s.id)
        else {
            return Err("No such server.\n".into());
        };
        let st = g.health[id].clone();
        Ok((g, st))
    }

    fn set_state(&self, t: Target<'_>, st: AdminState, who: &str) -> String {
        let s = match self.find(t) {
            Ok((_, s)) => s,
            Err(e) => return e,
        };
        let before = s.status();
        s.set_admin(st);
        let detail = serde_json::json!({
            "service": t.backend, "server": t.server, "from": before, "to": s.status(),
        });
        crate::audit::record(who, "server_state", detail);
        self.reloader.state_changed();
        String::new()
    }

    async fn set_weight(&self, t: Target<'_>, w: Weight, who: &str) -> String {
        let s = match self.find(t) {
            Ok((_, s)) => s,
            Err(e) => return e,
        };
        let before = s.weight();
        let new = match w {
            Weight::Absolute(n) => n,
            Weight::Percent(p) => (u64::from(s.initial_weight()) * u64::from(p) / 100)
                .min(u64::from(crate::health::MAX_WEIGHT)) as u32,
        };
        s.set_weight((new != s.initial_weight()).then_some(new));
        let generation = self.reloader.rebuild("runtime weight").await;
        let detail = serde_json::json!({
            "service": t.backend, "server": t.server, "from": before, "to": new,
            "generation": generation,
        });
        crate::audit::record(who, "server_weight", detail);
        self.reloader.state_changed();
        String::new()
    }

    fn show_colour(&self) -> String {
        let g = self.shared.state.load_full();
        let mut out = String::from("# service live blue_up green_up\n");
        for svc in g.rules.services.iter() {
            let up = |c| {
                let all = svc.servers(c);
                let n = all.iter().filter(|s| g.health[s.id].usable()).count();
                format!("{n}/{}", all.len())
            };
            out.push_str(&format!(
                "{} {} {} {}\n",
                svc.name,
                svc.live.as_str(),
                up(crate::rules::Colour::Blue),
                up(crate::rules::Colour::Green)
            ));
        }
        out
    }

    async fn set_colour(
        &self,
        service: &str,
        colour: crate::rules::Colour,
        force: bool,
        who: &str,
    ) -> String {
        let g = self.shared.state.load_full();
        let healthy = g
            .rules
            .services
            .iter()
            .find(|s| &*s.name == service)
            .map(|svc| {
                svc.servers(colour)
                    .iter()
                    .filter(|s| g.health[s.id].status() == "UP")
                    .count()
            });
        let config = self.reloader.config.clone();
        let svc = service.to_string();
        let edit = tokio::task::spawn_blocking(move || {
            crate::ops::switch_file(
                &config,
                &svc,
                colour,
                force,
                healthy.ok_or_else(|| anyhow::anyhow!("the running proxy has no service {svc}")),
            )
        })
        .await;
        let lines = match edit {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) => return format!("{e:#}\n"),
            Err(e) => return format!("switch failed: {e}\n"),
        };
        let detail =
            serde_json::json!({ "service": service, "to": colour.as_str(), "file": lines });
        crate::audit::record(who, "colour", detail);
        let mut out = lines.join("\n");
        out.push('\n');
        out.push_str(&self.reload(who).await);
        out
    }

    async fn reload(&self, who: &str) -> String {
        self.reloader
            .reload_and_say(who)
            .await
            .unwrap_or_else(|refused| refused)
    }

    async fn explain(&self, method: &str, url: &str, from: Option<&str>) -> String {
        let from = match from
            .map(str::parse)
            .unwrap_or(Ok(std::net::Ipv4Addr::LOCALHOST.into()))
        {
            Ok(ip) => ip,
            Err(_) => return "from: not an IP address\n".into(),
        };
        let ask = crate::ops::explain::Ask {
            url: url.to_string(),
            method: method.to_string(),
            headers: Vec::new(),
            from,
            via_proxy: None,
            sni: None,
        };
        let config = self.reloader.config.clone();
        let done = tokio::task::spawn_blocking(move || crate::ops::explain(&config, &ask)).await;
        match done {
            Ok(Ok(e)) => e.text(),
            Ok(Err(e)) => format!("{e:#}\n"),
            Err(e) => format!("explain failed: {e}\n"),
        }
    }
}

/// Whether the process is draining (for `show info`'s `Stopping`).
pub(super) fn stopping(api: &Api) -> bool {
    api.draining.load(Relaxed)
}
