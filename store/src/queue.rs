//! Redis access: step job queues (apalis-redis 1.0 layout), queue depth, the entity lease, and a
//! run's settle turn.
//!
//! Keys of queue `q` = `{namespace}:{queue}` (written by apalis-redis's scripts and by our push,
//! [`QueueClient::push`], which writes a task as apalis-redis 1.0's `batch_push.lua` does):
//! | key | type | holds |
//! |---|---|---|
//! | `q:scheduled` | ZSET (score = run-at, epoch s) | every pushed task until a worker fetches it |
//! | `q:active` | LIST | due ids moved here by a fetch |
//! | `q:inflight:<worker>` | SET | ids a worker is running or has prefetched |
//! | `q:data` | HASH | id → payload; also the dedup key of a fixed task id |
//! | `q:meta:<id>` | HASH | status, attempts, times |
//! | `q:done`, `q:dead` | SET | finished / dead ids (vacuumed by the producer) |
//! | `q:workers` | ZSET | worker name → last heartbeat (epoch s) |
//! | `core:apalis:queues:list` | ZSET, global | `q:workers` of every queue a worker ever registered on, any namespace ([`APALIS_QUEUES_LIST`]; ours are removed with the namespace and when their queue is gone) |
//!
//! (A paused queue is a row of `queue_pauses` in PostgreSQL, checked under the dispatch lock.)
//!
//! Keys we own:
//! | key | type | holds | written by |
//! |---|---|---|---|
//! | `{namespace}:lease:{entity_key}` | STRING, PX ttl | task id of the job holding the entity | worker |
//! | `{namespace}:settle:{run_id}` | STRING, PX ttl | `0` while a caller settles the run, `1` once a finish committed meanwhile (`worker/src/settles.rs`) | worker |
//! | `{namespace}:webhook-seen:{signature}` | STRING, EX ttl | a webhook signature accepted within its window | producer |
//!
//! Channels we own: `{namespace}:wake:{queue}` (pub/sub), published by every [`QueueClient::push`]
//! after the jobs are in; a worker subscribed to it fetches at once instead of at its next poll.

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};

use crate::job::JobPayload;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("payload encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// Depth of one queue by state, read from the keys directly (apalis-redis's stats calls are
/// broken on 1.0). This is the `syncfleet queues --json` contract.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueDepth {
    pub queue: String,
    /// Due now: scheduled with run-at ≤ now, plus the active list.
    pub ready: i64,
    /// Scheduled for later.
    pub scheduled: i64,
    /// Fetched by a worker and not yet acknowledged.
    pub inflight: i64,
    pub dead: i64,
    pub done: i64,
    pub workers: i64,
    /// Ready steps waiting for an entity lease held by a running step (from PostgreSQL).
    #[serde(default)]
    pub blocked: i64,
    /// Due now and not lease-blocked: `ready` minus the due jobs whose step is `blocked`; what
    /// adding workers can run (never negative).
    #[serde(default)]
    pub runnable: i64,
    /// Nothing new is dispatched to a paused queue (from PostgreSQL).
    #[serde(default)]
    pub paused: bool,
}

/// The client `[redis]` describes: `url` (`rediss://` for TLS, verified against the system's roots,
/// or against `ca_file`'s CA when set). The error names `redis.ca_file` when that file cannot be read.
pub fn redis_client(redis: &syncfleet_shared::config::RedisConfig) -> Result<redis::Client, QueueError> {
    let Some(path) = &redis.ca_file else {
        return Ok(redis::Client::open(redis.url.expose())?);
    };
    let root_cert = std::fs::read(path).map_err(|e| {
        redis::RedisError::from(std::io::Error::new(
            e.kind(),
            format!("redis.ca_file: cannot read {}: {}", path.display(), e.kind()),
        ))
    })?;
    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
    Ok(redis::Client::build_with_tls(redis.url.expose(), certs)?)
}

/// Subscribes (a connection of its own, made as [`QueueClient::connect_to`] makes its own) to the
/// wake-up channels of the namespace's queues; yields the channel of each wake-up. The stream ends
/// when the connection drops.
pub async fn subscribe_wake(
    redis: &syncfleet_shared::config::RedisConfig,
) -> Result<impl futures::Stream<Item = String> + Send + Unpin + use<>, QueueError> {
    let client = redis_client(redis)?;
    let mut pubsub = client.get_async_pubsub().await?;
    // Glob characters in the namespace match only themselves.
    pubsub.psubscribe(format!("{}*", redis_glob_escape(&QueueClient::wake_prefix(&redis.namespace)))).await?;
    Ok(futures::StreamExt::map(pubsub.into_on_message(), |m| m.get_channel_name().to_owned()))
}

/// Where a task id stands in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Redis does not hold it (lost message, flushed Redis).
    Missing,
    /// Waiting or running.
    Pending,
    /// Finished in Redis: a push under this id would be ignored.
    Spent,
}

const DEPTH_LUA: &str = r#"
local q = ARGV[1]
local now = tonumber(ARGV[2])
local due = redis.call('ZCOUNT', q .. ':scheduled', '-inf', now)
local later = redis.call('ZCOUNT', q .. ':scheduled', '(' .. now, '+inf')
local active = redis.call('LLEN', q .. ':active')
local inflight = 0
local workers = redis.call('ZRANGE', q .. ':workers', 0, -1)
for _, w in ipairs(workers) do
  inflight = inflight + redis.call('SCARD', q .. ':inflight:' .. w)
end
return {due + active, later, inflight, redis.call('SCARD', q .. ':dead'), redis.call('SCARD', q .. ':done'), #workers}
"#;

/// The Lua expression of the tasks waiting in queue `q` (scheduled or active, not yet fetched): what
/// the dispatch cap bounds, read by [`QueueClient::waiting`] and by the push.
macro_rules! waiting_lua {
    () => {
        "(redis.call('ZCARD', q .. ':scheduled') + redis.call('LLEN', q .. ':active'))"
    };
}

const PENDING_LUA: &str = concat!("local q = ARGV[1]\nreturn ", waiting_lua!(), "\n");

// A push within the queue's room: the tasks waiting (`waiting_lua!`) are read, and as many
// of the leading tasks as leave at most ARGV[2] waiting are written as apalis-redis 1.0's
// `batch_push.lua` writes a task due now without an idempotency key (the payload under its id if
// the id is new, its metadata, its id in the scheduled set at ARGV[3], epoch seconds). A task id
// Redis already holds is taken and left as it is. Returns how many tasks were taken.
const PUSH_LUA: &str = concat!(
    "local q = ARGV[1]\nlocal room = tonumber(ARGV[2]) - ",
    waiting_lua!(),
    r#"
local taken = 0
for i = 4, #ARGV, 2 do
  if taken >= room then break end
  local id = ARGV[i]
  if redis.call('HSETNX', q .. ':data', id, ARGV[i + 1]) == 1 then
    redis.call('HSET', q .. ':meta:' .. id, 'attempts', 0, 'max_attempts', 25, 'status', 'Pending',
      'idempotency_key', '')
    redis.call('ZADD', q .. ':scheduled', ARGV[3], id)
  end
  taken = taken + 1
end
return taken
"#
);

const JOB_STATES_LUA: &str = r#"
local q = ARGV[1]
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', q .. ':data', id) == 0 then
    out[#out + 1] = 0
  else
    local status = redis.call('HGET', q .. ':meta:' .. id, 'status')
    if status == 'Done' or status == 'Killed' or redis.call('SISMEMBER', q .. ':done', id) == 1
       or redis.call('SISMEMBER', q .. ':dead', id) == 1 then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  end
end
return out
"#;

const VACUUM_LUA: &str = r#"
local q = ARGV[1]
local ids = redis.call('SPOP', q .. ':done', tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('HDEL', q .. ':data', id)
  redis.call('DEL', q .. ':meta:' .. id)
end
return #ids
"#;

const LEASE_RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

const LEASE_RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

// A run's settle turn (`{namespace}:settle:{run}`): `0` while a caller settles the run, `1` once a
// finish that calls for a settle committed during that settle. A success marks the turn with its
// step row's id instead, in the set `{namespace}:settle:{run}:successes` (ARGV[2]; empty for any
// other finish): its holder then settles again only if one of those steps has no other row still
// open. A finish that finds the key marks it; one that finds none takes the turn.
const SETTLE_FOLLOW_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[2] == '' then
    redis.call('SET', KEYS[1], '1', 'KEEPTTL')
  else
    redis.call('SADD', KEYS[2], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[1])
  end
  return 0
end
redis.call('SET', KEYS[1], '0', 'PX', ARGV[1])
return 1
"#;

// After a settle: the marks since, cleared here: `{'*'}` when a finish calls for a settle, else the
// ids of the successes; none (`{}`) gives the turn up.
const SETTLE_AGAIN_LUA: &str = r#"
local any = redis.call('GET', KEYS[1]) == '1'
local successes = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
if any or #successes > 0 then
  redis.call('SET', KEYS[1], '0', 'PX', ARGV[1])
  if any then
    return {'*'}
  end
  return successes
end
redis.call('DEL', KEYS[1])
return {}
"#;

// Each script's SHA-1 is computed once, not at every call.
static DEPTH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DEPTH_LUA));
static PENDING_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PENDING_LUA));
static PUSH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUSH_LUA));
static JOB_STATES_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(JOB_STATES_LUA));
static VACUUM_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(VACUUM_LUA));
static LEASE_RENEW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE_RENEW_LUA));
static LEASE_RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE_RELEASE_LUA));
static SETTLE_FOLLOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_FOLLOW_LUA));
static SETTLE_AGAIN_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_AGAIN_LUA));

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// apalis-redis's global set of queues (outside every namespace): each consumer's registration
/// adds its `{namespace}:{queue}:workers` key.
pub const APALIS_QUEUES_LIST: &str = "core:apalis:queues:list";

/// `text` with the glob characters of a `MATCH` pattern escaped.
fn redis_glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What committed during a settle, for the holder of the run's settle turn
/// ([`QueueClient::settle_again`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleMarks {
    /// Nothing: the turn is given up.
    None,
    /// A finish other than a success: settle again.
    Any,
    /// Only successes, of these step rows: settle again unless each one's step has another row
    /// still open (`step_settle_after_successes`, `0031`).
    Successes(Vec<i64>),
}

/// One Redis connection (multiplexed, reconnecting) and our key naming.
#[derive(Clone)]
pub struct QueueClient {
    conn: ConnectionManager,
    namespace: String,
}

impl QueueClient {
    pub async fn connect(url: &str, namespace: &str) -> Result<QueueClient, QueueError> {
        let conn = apalis_redis::connect(url).await?;
        Ok(QueueClient { conn, namespace: namespace.to_owned() })
    }

    /// Connects as `[redis]` says: `url` (`rediss://` for TLS, verified against the system's roots,
    /// or against `ca_file`'s CA when set), `namespace`.
    pub async fn connect_to(redis: &syncfleet_shared::config::RedisConfig) -> Result<QueueClient, QueueError> {
        let conn = redis_client(redis)?.get_connection_manager().await?;
        Ok(QueueClient { conn, namespace: redis.namespace.clone() })
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Full Redis queue name of a step queue.
    pub fn queue_name(&self, queue: &str) -> String {
        format!("{}:{queue}", self.namespace)
    }

    /// apalis-redis config of a queue (the name is always set explicitly).
    pub fn apalis_config(&self, queue: &str) -> apalis_redis::Config {
        apalis_redis::Config::default().queue(self.queue_name(queue))
    }

    /// Pushes the leading `jobs` that fit in the queue's room, under their fixed task ids: at most
    /// `cap` tasks wait once they are in. The room is read and filled in one script call (one
    /// round trip with the wake-up), so a dispatcher holding the queue's dispatch lock needs no
    /// separate depth read. A task id Redis already holds (pending, running, done or dead) is
    /// taken and left as it is. Returns how many of `jobs` were taken; the rest are not in Redis.
    pub async fn push(&self, queue: &str, cap: usize, jobs: &[(String, JobPayload)]) -> Result<usize, QueueError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        // Idle workers of the queue fetch at once (their poll remains the fallback): each push is
        // followed by the queue's wake-up in the same round trip.
        let mut wake = redis::cmd("PUBLISH");
        wake.arg(format!("{}{queue}", Self::wake_prefix(&self.namespace))).arg(1);
        let mut conn = WakeBehind { conn: &mut conn, wake };
        let (name, now) = (self.queue_name(queue), now_secs());
        let mut taken = 0;
        for chunk in jobs.chunks(500) {
            let mut script = PUSH_SCRIPT.prepare_invoke();
            script.arg(&name).arg(cap).arg(now);
            for (id, payload) in chunk {
                script.arg(id).arg(serde_json::to_vec(payload)?);
            }
            let n: usize = script.invoke_async(&mut conn).await?;
            taken += n;
            if n < chunk.len() {
                break;
            }
        }
        Ok(taken)
    }

    /// The prefix of the wake-up channels of `namespace`'s queues (`{namespace}:wake:`).
    pub fn wake_prefix(namespace: &str) -> String {
        format!("{namespace}:wake:")
    }

    pub async fn depth(&self, queue: &str) -> Result<QueueDepth, QueueError> {
        let mut conn = self.conn.clone();
        let v: Vec<i64> = DEPTH_SCRIPT.arg(self.queue_name(queue)).arg(now_secs()).invoke_async(&mut conn).await?;
        Ok(QueueDepth {
            queue: queue.to_owned(),
            ready: v[0],
            scheduled: v[1],
            inflight: v[2],
            dead: v[3],
            done: v[4],
            workers: v[5],
            ..QueueDepth::default()
        })
    }

    /// Workers registered on `queue` with their last heartbeat (epoch seconds).
    pub async fn workers(&self, queue: &str) -> Result<Vec<(String, f64)>, QueueError> {
        let mut conn = self.conn.clone();
        let key = format!("{}:workers", self.queue_name(queue));
        Ok(redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut conn).await?)
    }

    /// Tasks waiting in Redis (due or later): what the dispatch cap bounds.
    pub async fn waiting(&self, queue: &str) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let n: i64 = PENDING_SCRIPT.arg(self.queue_name(queue)).invoke_async(&mut conn).await?;
        Ok(n.max(0) as usize)
    }

    pub async fn job_states(&self, queue: &str, ids: &[String]) -> Result<Vec<JobState>, QueueError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        let lua = &*JOB_STATES_SCRIPT;
        let mut script = lua.prepare_invoke();
        script.arg(self.queue_name(queue));
        for id in ids {
            script.arg(id);
        }
        let v: Vec<i64> = script.invoke_async(&mut conn).await?;
        Ok(v.into_iter()
            .map(|s| match s {
                0 => JobState::Missing,
                2 => JobState::Spent,
                _ => JobState::Pending,
            })
            .collect())
    }

    /// Forgets up to `max` finished tasks (their data, meta and done entry).
    pub async fn vacuum(&self, queue: &str, max: usize) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let n: i64 = VACUUM_SCRIPT.arg(self.queue_name(queue)).arg(max).invoke_async(&mut conn).await?;
        Ok(n as usize)
    }

    fn lease_key(&self, entity: &str) -> String {
        format!("{}:lease:{entity}", self.namespace)
    }

    /// `SET key value NX PX ttl`: whether the key was set (nobody held it).
    async fn set_if_absent(&self, key: String, value: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Takes the entity lease for `holder` if nobody holds it.
    pub async fn lease_acquire(&self, entity: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        self.set_if_absent(self.lease_key(entity), holder, ttl).await
    }

    /// Extends the lease while `holder` still holds it.
    pub async fn lease_renew(&self, entity: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let n: i64 = LEASE_RENEW_SCRIPT
            .key(self.lease_key(entity))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    pub async fn lease_release(&self, entity: &str, holder: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let n: i64 = LEASE_RELEASE_SCRIPT.key(self.lease_key(entity)).arg(holder).invoke_async(&mut conn).await?;
        Ok(n == 1)
    }

    fn settle_key(&self, run: &str) -> String {
        format!("{}:settle:{run}", self.namespace)
    }

    /// Takes the run's settle turn if no caller in the fleet holds it; marks nothing otherwise.
    /// The turn lapses after `ttl` if its holder dies.
    pub async fn settle_take(&self, run: &str, ttl: Duration) -> Result<bool, QueueError> {
        self.set_if_absent(self.settle_key(run), "0", ttl).await
    }

    /// For a finish that committed: takes the run's settle turn if nobody holds it (`true`);
    /// otherwise marks the turn, whose holder settles once more: at once for any finish but a
    /// success, or, for the success of step row `succeeded`, unless its step still has another row
    /// open then ([`SettleMarks`]).
    pub async fn settle_follow(&self, run: &str, succeeded: Option<i64>, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let key = self.settle_key(run);
        let n: i64 = SETTLE_FOLLOW_SCRIPT
            .key(&key)
            .key(format!("{key}:successes"))
            .arg(ttl.as_millis() as u64)
            .arg(succeeded.map(|id| id.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// For the holder of the run's settle turn, after a settle: the marks of the finishes that
    /// committed meanwhile (cleared), so it settles again; [`SettleMarks::None`] gives the turn up.
    pub async fn settle_again(&self, run: &str, ttl: Duration) -> Result<SettleMarks, QueueError> {
        let mut conn = self.conn.clone();
        let key = self.settle_key(run);
        let marks: Vec<String> = SETTLE_AGAIN_SCRIPT
            .key(&key)
            .key(format!("{key}:successes"))
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(match marks.first().map(String::as_str) {
            None => SettleMarks::None,
            Some("*") => SettleMarks::Any,
            Some(_) => SettleMarks::Successes(marks.iter().filter_map(|id| id.parse().ok()).collect()),
        })
    }

    /// Remembers an accepted webhook signature (lower-case hex) for `ttl`: `true` the first time,
    /// `false` when it was seen within `ttl` (a replay). `SET NX EX`, so producers agree.
    pub async fn webhook_signature_first_use(&self, signature: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("{}:webhook-seen:{signature}", self.namespace))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Deletes every key of this namespace (queues and leases); for tests and benchmarks.
    pub async fn purge_namespace(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let (mut cursor, mut deleted) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.namespace))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                deleted += redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut conn).await?;
            }
            cursor = next;
            if cursor == 0 {
                self.forget_registrations(|_| true).await?;
                return Ok(deleted);
            }
        }
    }

    /// Removes from [`APALIS_QUEUES_LIST`] this namespace's queues that no longer exist: no
    /// registered worker and no task (a queue dropped from the config, a namespace deleted by
    /// other means). A worker calls it as it starts; apalis-redis adds its own queues back as their
    /// consumers register. Returns how many were removed.
    pub async fn forget_stale_registrations(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let mut stale = Vec::new();
        for member in self.registrations().await? {
            let queue = member.strip_suffix(":workers").unwrap_or(&member);
            let exists: u64 = redis::cmd("EXISTS")
                .arg(&member)
                .arg(format!("{queue}:data"))
                .arg(format!("{queue}:scheduled"))
                .arg(format!("{queue}:active"))
                .query_async(&mut conn)
                .await?;
            if exists == 0 {
                stale.push(member);
            }
        }
        self.forget_registrations(|m| stale.iter().any(|s| s == m)).await
    }

    /// This namespace's members of [`APALIS_QUEUES_LIST`] (`{namespace}:{queue}:workers`).
    pub async fn registrations(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let (mut cursor, mut members) = (0u64, Vec::new());
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(APALIS_QUEUES_LIST)
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", redis_glob_escape(&self.namespace)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            // ZSCAN answers member, score, member, score, …
            members.extend(page.into_iter().step_by(2));
            cursor = next;
            if cursor == 0 {
                members.sort();
                members.dedup();
                return Ok(members);
            }
        }
    }

    async fn forget_registrations(&self, which: impl Fn(&str) -> bool) -> Result<u64, QueueError> {
        let members: Vec<String> = self.registrations().await?.into_iter().filter(|m| which(m)).collect();
        if members.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZREM").arg(APALIS_QUEUES_LIST).arg(&members).query_async(&mut conn).await?)
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}

/// A connection that sends `wake` right behind each command, pipelined: a push and the wake-up of
/// the queue's idle workers reach Redis in one round trip, the wake-up second (after the push is
/// visible). A script loaded again after `NOSCRIPT` wakes the workers once more, which costs an
/// empty fetch.
struct WakeBehind<'c> {
    conn: &'c mut ConnectionManager,
    wake: redis::Cmd,
}

impl redis::aio::ConnectionLike for WakeBehind<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone()).add_command(self.wake.clone());
            let mut answers = self.conn.req_packed_commands(&pipe, 0, 2).await?;
            match answers.swap_remove(0) {
                redis::Value::ServerError(error) => Err(error.into()),
                answer => Ok(answer),
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
