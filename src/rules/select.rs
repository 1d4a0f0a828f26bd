//! Balancing: which usable server of a colour takes the next request.
//!
//! Pure: what "usable" and "load" mean comes in as closures from the runtime health
//! table. The weighted round-robin schedule and the consistent-hash ring are built once
//! per rules generation, so a pick is an atomic increment or a binary search.

use super::Server;
use super::file::Balance;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Points per unit of weight on the hash ring (more points, smoother spread).
const RING_POINTS: u32 = 64;

/// One colour's servers, split into primaries and backups, with their pick structures.
#[derive(Debug, Default)]
pub struct Group {
    /// Every server of the colour (primaries then backups), as listed.
    pub servers: Vec<Arc<Server>>,
    primaries: Tier,
    backups: Tier,
}

#[derive(Debug, Default)]
struct Tier {
    /// Indexes into `Group::servers`.
    members: Vec<usize>,
    /// Weighted round-robin order (smooth: weights interleave instead of bunching).
    schedule: Vec<usize>,
    /// Consistent-hash ring: (point, index into `Group::servers`), sorted by point.
    ring: Vec<(u64, usize)>,
    cursor: AtomicUsize,
}

/// A stable 64-bit hash (fixed keys), so rings agree across processes and restarts.
pub fn stable_hash(data: impl Hash) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x6761_7465, 0x686f_7573);
    data.hash(&mut h);
    h.finish()
}

impl Group {
    /// Builds the pick structures for one colour's servers.
    pub fn new(servers: Vec<Arc<Server>>) -> Group {
        let tier = |backup: bool| {
            let members: Vec<usize> = (0..servers.len())
                .filter(|&i| servers[i].backup == backup)
                .collect();
            let schedule = smooth_schedule(&servers, &members);
            let mut ring: Vec<(u64, usize)> = members
                .iter()
                .flat_map(|&i| {
                    let name = servers[i].name.clone();
                    (0..RING_POINTS * servers[i].weight).map(move |p| (stable_hash((&*name, p)), i))
                })
                .collect();
            ring.sort_unstable();
            Tier {
                members,
                schedule,
                ring,
                cursor: AtomicUsize::new(0),
            }
        };
        let primaries = tier(false);
        let backups = tier(true);
        Group {
            servers,
            primaries,
            backups,
        }
    }

    /// Picks a server: a usable primary if any, else a usable backup; `None` when neither.
    /// `key` is the hash input for the hash balancers; `avoid` is a server that just failed.
    pub fn pick(
        &self,
        balance: Balance,
        key: u64,
        avoid: Option<&Server>,
        usable: &dyn Fn(&Server) -> bool,
        load: &dyn Fn(&Server) -> u32,
    ) -> Option<&Arc<Server>> {
        let ok = |s: &Server| avoid.is_none_or(|a| a.id != s.id) && usable(s);
        self.pick_in(&self.primaries, balance, key, &ok, load)
            .or_else(|| self.pick_in(&self.backups, balance, key, &ok, load))
    }

    fn pick_in(
        &self,
        tier: &Tier,
        balance: Balance,
        key: u64,
        ok: &dyn Fn(&Server) -> bool,
        load: &dyn Fn(&Server) -> u32,
    ) -> Option<&Arc<Server>> {
        if tier.members.is_empty() {
            return None;
        }
        let s = &self.servers;
        match balance {
            Balance::Roundrobin => {
                let n = tier.schedule.len();
                if n == 0 {
                    return None;
                }
                let start = tier.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &s[tier.schedule[(start + i) % n]])
                    .find(|x| ok(x))
            }
            Balance::Leastconn => {
                // Fewest in flight relative to weight; ties rotate so equal servers share.
                let start = tier.cursor.fetch_add(1, Ordering::Relaxed);
                let m = tier.members.len();
                (0..m)
                    .map(|i| &s[tier.members[(start + i) % m]])
                    .filter(|x| x.weight > 0 && ok(x))
                    .min_by_key(|x| (u64::from(load(x)) << 16) / u64::from(x.weight))
            }
            Balance::HashSource | Balance::HashUri => {
                if tier.ring.is_empty() {
                    return None;
                }
                let at = tier.ring.partition_point(|&(p, _)| p < key);
                (0..tier.ring.len())
                    .map(|i| &s[tier.ring[(at + i) % tier.ring.len()].1])
                    .find(|x| ok(x))
            }
        }
    }
}

/// nginx's smooth weighted round robin, unrolled into a fixed schedule: weights 5,1,1
/// give a a b a c a a, not a a a a a b c.
fn smooth_schedule(servers: &[Arc<Server>], members: &[usize]) -> Vec<usize> {
    let total: i64 = members.iter().map(|&i| i64::from(servers[i].weight)).sum();
    if total == 0 {
        return Vec::new();
    }
    // Bound the schedule: reduce by the weights' gcd, cap the length.
    let g = members
        .iter()
        .fold(0u32, |g, &i| gcd(g, servers[i].weight))
        .max(1);
    let steps = (total / i64::from(g)).min(10_000);
    let mut current = vec![0i64; members.len()];
    let mut out = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        let mut best = 0;
        for (k, &i) in members.iter().enumerate() {
            current[k] += i64::from(servers[i].weight / g);
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total / i64::from(g);
        out.push(members[best]);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: usize, weight: u32, backup: bool) -> Arc<Server> {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 9000 + id).parse().unwrap();
        Arc::new(Server {
            id,
            name: format!("s{id}").into(),
            addr,
            authority: addr.to_string().parse().unwrap(),
            host: None,
            weight,
            initial_weight: weight,
            maxconn: None,
            backup,
        })
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let g = Group::new(vec![
            server(0, 5, false),
            server(1, 1, false),
            server(2, 1, false),
        ]);
        let names: Vec<usize> = (0..7)
            .map(|_| {
                g.pick(Balance::Roundrobin, 0, None, &|_| true, &|_| 0)
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(names.iter().filter(|&&i| i == 0).count(), 5);
        assert!(names.windows(4).all(|w| w.contains(&0)), "{names:?}");
    }

    #[test]
    fn backups_only_when_no_primary_is_usable() {
        let g = Group::new(vec![server(0, 1, false), server(1, 1, true)]);
        assert_eq!(
            g.pick(Balance::Roundrobin, 0, None, &|_| true, &|_| 0)
                .unwrap()
                .id,
            0
        );
        assert_eq!(
            g.pick(Balance::Roundrobin, 0, None, &|s| s.id != 0, &|_| 0)
                .unwrap()
                .id,
            1
        );
        assert!(
            g.pick(Balance::Roundrobin, 0, None, &|_| false, &|_| 0)
                .is_none()
        );
    }

    #[test]
    fn leastconn_prefers_the_idle_server() {
        let g = Group::new(vec![server(0, 1, false), server(1, 1, false)]);
        for _ in 0..4 {
            assert_eq!(
                g.pick(Balance::Leastconn, 0, None, &|_| true, &|s| if s.id == 0 {
                    5
                } else {
                    1
                })
                .unwrap()
                .id,
                1
            );
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_little() {
        let all: Vec<_> = (0..4).map(|i| server(i, 1, false)).collect();
        let g = Group::new(all);
        let keys: Vec<u64> = (0..1000u32).map(stable_hash).collect();
        let picks = |alive: &dyn Fn(&Server) -> bool| -> Vec<usize> {
            keys.iter()
                .map(|&k| g.pick(Balance::HashUri, k, None, alive, &|_| 0).unwrap().id)
                .collect()
        };
        let before = picks(&|_| true);
        assert_eq!(before, picks(&|_| true));
        let after = picks(&|s| s.id != 3);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_3 = before.iter().filter(|&&i| i == 3).count();
        assert_eq!(moved, on_3, "only the removed server's keys move");
        assert!((150..350).contains(&on_3), "spread: {on_3}");
    }
}
