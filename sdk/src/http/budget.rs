//! The fleet-wide request budget per upstream, kept in Redis so every worker process draws from one
//! allowance.
//!
//! Keys (written by every worker through the scripts below):
//! | key | type | holds |
//! |---|---|---|
//! | `{namespace}:rate:{upstream}` | STRING (µs since the epoch), PX ttl | GCRA theoretical arrival time |
//! | `{namespace}:cooldown:{upstream}` | STRING `"1"`, PX ttl | present while the upstream asked everyone to wait |
//!
//! The limiter is GCRA in the reservation form: each call advances the theoretical arrival time (TAT) by
//! one emission interval `1 / rate` and answers how long the caller must sleep before its slot. The
//! clock is Redis `TIME`, so every process agrees on it. A slot is at `max(now, TAT − (burst − 1) ·
//! interval)`, which keeps the requests of all processes together within `burst + rate · t` over any
//! span `t`: at most `burst` at once, then one per interval. Callers sleep once instead of polling.
//!
//! The cool-down is set when an upstream answers 429 with `Retry-After`; setting it only ever extends
//! it. While it lasts the limiter reserves nothing: the caller sleeps the remaining time and asks again.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, aio::ConnectionManager};

/// `KEYS[1]` rate key, `KEYS[2]` cool-down key; `ARGV[1]` emission interval (µs), `ARGV[2]` burst.
/// Returns `{wait_us, cooling}`: `cooling = 1` means nothing was reserved.
const RESERVE_LUA: &str = r#"
local cooling = redis.call('PTTL', KEYS[2])
if cooling > 0 then
  return {cooling * 1000, 1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
local send_at = math.max(tat - tolerance, now)
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return {send_at - now, 0}
"#;

/// `KEYS[1]` cool-down key; `ARGV[1]` milliseconds. Extends the expiry, never shortens it.
const COOL_DOWN_LUA: &str = r#"
local want = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
  return 1
end
return 0
"#;

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE_LUA));
static COOL_DOWN: LazyLock<Script> = LazyLock::new(|| Script::new(COOL_DOWN_LUA));

/// The longest emission interval the limiter accepts (a rate below one request an hour is clamped).
const MAX_INTERVAL_US: u64 = 3_600_000_000;

/// The longest cool-down one call sets (an upstream asking for more is capped).
const MAX_COOL_DOWN: Duration = Duration::from_secs(24 * 3600);

/// What [`RateBudget::reserve`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// A slot is reserved: send after this wait (zero = now).
    Slot(Duration),
    /// The upstream is cooling down and nothing was reserved: wait this long, then reserve again.
    CoolingDown(Duration),
}

impl Reservation {
    /// How long to sleep, whatever the kind.
    pub fn wait(&self) -> Duration {
        match *self {
            Reservation::Slot(d) | Reservation::CoolingDown(d) => d,
        }
    }
}

/// Fleet-wide request budget per upstream, in Redis: a GCRA limiter at `{namespace}:rate:{upstream}`
/// plus a shared cool-down at `{namespace}:cooldown:{upstream}` (see the module comment).
#[derive(Clone)]
pub struct RateBudget {
    conn: ConnectionManager,
    namespace: String,
}

impl RateBudget {
    pub fn new(conn: ConnectionManager, namespace: impl Into<String>) -> Self {
        RateBudget { conn, namespace: namespace.into() }
    }

    pub fn rate_key(&self, upstream: &str) -> String {
        format!("{}:rate:{upstream}", self.namespace)
    }

    pub fn cool_down_key(&self, upstream: &str) -> String {
        format!("{}:cooldown:{upstream}", self.namespace)
    }

    /// Reserves one request slot of `upstream` at `rate_per_sec` (> 0) with `burst` (at least 1).
    /// While the upstream cools down nothing is reserved and the remaining cool-down comes back.
    pub async fn reserve(
        &self,
        upstream: &str,
        rate_per_sec: f64,
        burst: u32,
    ) -> Result<Reservation, redis::RedisError> {
        let interval_us = (1e6 / rate_per_sec).ceil().clamp(1.0, MAX_INTERVAL_US as f64) as u64;
        let mut conn = self.conn.clone();
        let (wait_us, cooling): (i64, i64) = RESERVE
            .key(self.rate_key(upstream))
            .key(self.cool_down_key(upstream))
            .arg(interval_us)
            .arg(burst.max(1))
            .invoke_async(&mut conn)
            .await?;
        let wait = Duration::from_micros(wait_us.max(0) as u64);
        Ok(if cooling == 1 { Reservation::CoolingDown(wait) } else { Reservation::Slot(wait) })
    }

    /// Every worker calling `upstream` waits at least `for_` from now (an existing longer cool-down stays).
    pub async fn cool_down(&self, upstream: &str, for_: Duration) -> Result<(), redis::RedisError> {
        let ms = for_.min(MAX_COOL_DOWN).as_micros().div_ceil(1000) as u64;
        if ms == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = COOL_DOWN.key(self.cool_down_key(upstream)).arg(ms).invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Remaining cool-down of `upstream`, if any.
    pub async fn cooling(&self, upstream: &str) -> Result<Option<Duration>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let ms: i64 = redis::cmd("PTTL").arg(self.cool_down_key(upstream)).query_async(&mut conn).await?;
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }
}
