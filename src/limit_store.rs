//! Rate limits shared by several instances through Redis (or Valkey): `limits_store:`.
//!
//! Each limited request is one `EVALSHA` of a GCRA script (the same algorithm as the
//! local table, [`crate::limit`]) on one multiplexed connection, so concurrent requests
//! share its round trips (pipelined). The store's clock decides (Redis `TIME`), so the
//! instances' clocks need not agree. When the store does not answer within
//! [`ANSWER_WITHIN`], the instance falls back to its local limits at once (fail open to
//! local), logs it once, shows it on the stats page, and a watcher tries again every
//! second; the first answer switches back.

use crate::limit::Verdict;
use crate::rules::policy::LimitSpec;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Longest wait for the store before a request is judged locally.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(50);

/// GCRA in the store. KEYS[1]: the key; ARGV: interval and tolerance (burst − 1 intervals)
/// in µs. Returns {1, µs ahead after} on pass, {0, µs until the next pass} on refusal.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then return {0, ahead - tolerance} end
local next = tat + interval
redis.call('SET', KEYS[1], next, 'PX', math.floor((next - now) / 1000) + 1000)
return {1, ahead + interval}
";

/// The shared store: its connection while it answers, and what the page shows.
pub struct Store {
    /// Where it is (`redis://host:port`), for the page and logs.
    pub url: String,
    client: redis::Client,
    conn: ArcSwapOption<redis::aio::MultiplexedConnection>,
    script: redis::Script,
    up: AtomicBool,
    /// Requests judged by the store.
    pub shared: AtomicU64,
    /// Requests judged locally because the store did not answer.
    pub local: AtomicU64,
    /// Times the store went away.
    pub outages: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store at `url` (not yet connected: [`Store::watch`] connects).
    pub fn new(url: &str) -> Result<Store, String> {
        let client = redis::Client::open(url).map_err(|e| format!("limits_store: {e}"))?;
        Ok(Store {
            url: url.to_string(),
            client,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(GCRA),
            up: AtomicBool::new(false),
            shared: AtomicU64::new(0),
            local: AtomicU64::new(0),
            outages: AtomicU64::new(0),
        })
    }

    /// A handle on the store's connection while it answers (cheap: it is multiplexed).
    pub fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        self.conn
            .load_full()
            .filter(|_| self.is_up())
            .map(|c| (*c).clone())
    }

    /// Whether limited requests are judged by the store now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Counts one request of `key` against `spec` in the store; `None` when the store
    /// did not answer in time (the caller judges locally).
    pub async fn check(&self, spec: &LimitSpec, key: u64) -> Option<Verdict> {
        let conn = self.conn.load_full().filter(|_| self.is_up());
        let Some(conn) = conn else {
            self.local.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let interval = spec.interval().as_micros().max(1) as u64;
        let tolerance = interval * u64::from(spec.burst.max(1) - 1);
        let mut conn = (*conn).clone();
        let mut call = self
            .script
            .key(format!("gatehouse:limit:{}:{key:016x}", spec.name));
        call.arg(interval).arg(tolerance);
        let answer = tokio::time::timeout(ANSWER_WITHIN, call.invoke_async::<(u8, u64)>(&mut conn));
        match answer.await {
            Ok(Ok((1, used))) => {
                self.shared.fetch_add(1, Ordering::Relaxed);
                let used = used.div_ceil(interval);
                let remaining = u64::from(spec.burst).saturating_sub(used) as u32;
                Some(Verdict::Pass { remaining })
            }
            Ok(Ok((_, wait))) => {
                self.shared.fetch_add(1, Ordering::Relaxed);
                let retry_after = Duration::from_micros(wait);
                Some(Verdict::Deny { retry_after })
            }
            Ok(Err(e)) => self.lost(&e.to_string()),
            Err(_) => self.lost("no answer within 50 ms"),
        }
    }

    /// The store failed a request: judge locally from now on until the watcher gets an
    /// answer again; said once per outage.
    fn lost(&self, why: &str) -> Option<Verdict> {
        self.local.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(store = %self.url, error = why, "limits store unavailable: rate limits are local to this instance until it answers");
        }
        None
    }

    /// Connects, and reconnects every second while the store is away; returns at `stop`.
    pub async fn watch(&self, stop: tokio_util::sync::CancellationToken) {
        let mut said_down = false;
        loop {
            if !self.is_up() {
                match self.connect().await {
                    Ok(()) => {
                        self.up.store(true, Ordering::Relaxed);
                        said_down = false;
                        tracing::warn!(store = %self.url, "limits store answers: rate limits are shared");
                    }
                    Err(e) if !said_down => {
                        said_down = true;
                        tracing::error!(store = %self.url, error = %e, "limits store unavailable: rate limits are local to this instance until it answers");
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// A fresh connection that answers PING (within a second).
    async fn connect(&self) -> Result<(), String> {
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        };
        let conn = tokio::time::timeout(Duration::from_secs(1), attempt)
            .await
            .map_err(|_| "no answer within 1 s".to_string())??;
        self.conn.store(Some(std::sync::Arc::new(conn)));
        Ok(())
    }
}
