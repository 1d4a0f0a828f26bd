//! Weights set at run time (`set weight` on the runtime socket): a copy of a rule set
//! whose balancing schedules use them.
//!
//! The rule set stays immutable; a weight change builds the next one from the serving
//! one (no file is read, so a rules file mid-edit cannot block it) and swaps it in.

use super::{Group, RuleSet, Server, Service};
use std::sync::Arc;

impl RuleSet {
    /// This rule set with each server's weight replaced by `weight(server)`; services
    /// whose weights all stay are shared, not rebuilt.
    pub fn reweighted(&self, weight: &dyn Fn(&Server) -> u32) -> RuleSet {
        let mut next = self.clone();
        for svc in next.services.iter_mut() {
            let changed = |g: &Group| g.servers.iter().any(|s| weight(s) != s.weight);
            if changed(&svc.blue) || changed(&svc.green) {
                *svc = Arc::new(svc.with_weights(weight));
            }
        }
        next
    }
}

impl Service {
    fn with_weights(&self, weight: &dyn Fn(&Server) -> u32) -> Service {
        let group = |g: &Group| {
            Group::new(
                g.servers
                    .iter()
                    .map(|s| {
                        Arc::new(Server {
                            weight: weight(s),
                            ..(**s).clone()
                        })
                    })
                    .collect(),
            )
        };
        Service {
            name: self.name.clone(),
            live: self.live,
            blue: group(&self.blue),
            green: group(&self.green),
            backup_page: self.backup_page.clone(),
            backup_service: self.backup_service,
            health: self.health.clone(),
            balance: self.balance,
            send_proxy: self.send_proxy,
            tls: self.tls.clone(),
            buffer_chunked: self.buffer_chunked,
            mode: self.mode,
        }
    }
}
