//! Redis access: step job queues (apalis-redis 1.0 layout), queue depth, and the entity lease.
//!
//! Keys of queue `q` = `{namespace}:{queue}` (written by apalis-redis's scripts; we read them):
//! | key | type | holds |
//! |---|---|---|
//! | `q:scheduled` | ZSET (score = run-at, epoch s) | every pushed task until a worker fetches it |
//! | `q:active` | LIST | due ids moved here by a fetch |
//! | `q:inflight:<worker>` | SET | ids a worker is running or has prefetched |
//! | `q:data` | HASH | id → payload; also the dedup key of a fixed task id |
//! | `q:meta:<id>` | HASH | status, attempts, times |
//! | `q:done`, `q:dead` | SET | finished / dead ids (vacuumed by the producer) |
//! | `q:workers` | ZSET | worker name → last heartbeat (epoch s) |
//!
//! (A paused queue is a row of `queue_pauses` in PostgreSQL, checked under the dispatch lock.)
//!
//! Keys we own:
//! | key | type | holds | written by |
//! |---|---|---|---|
//! | `{namespace}:lease:{entity_key}` | STRING, PX ttl | task id of the job holding the entity | worker |
//! | `{namespace}:webhook-seen:{signature}` | STRING, EX ttl | a webhook signature accepted within its window | producer |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_core::task::{builder::TaskBuilder, task_id::TaskId};
use redis::{Script, aio::ConnectionManager};
use serde::{Deserialize, Serialize};

use crate::job::JobPayload;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("queue push: {0}")]
    Push(#[from] apalis_redis::Error),
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
    /// Nothing new is dispatched to a paused queue (from PostgreSQL).
    #[serde(default)]
    pub paused: bool,
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

const PENDING_LUA: &str = r#"
local q = ARGV[1]
return redis.call('ZCARD', q .. ':scheduled') + redis.call('LLEN', q .. ':active')
"#;

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

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
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

    /// Pushes step jobs under their fixed task ids in one script call. A task id Redis already
    /// holds (pending, running, done or dead) is ignored.
    pub async fn push(&self, queue: &str, jobs: &[(String, JobPayload)]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let config = self.apalis_config(queue);
        let mut tasks = Vec::with_capacity(jobs.len());
        for (id, payload) in jobs {
            let bytes = serde_json::to_vec(payload)?;
            tasks.push(TaskBuilder::new(bytes).task_id(TaskId::from_string(id.clone())).build());
        }
        let mut conn = self.conn.clone();
        for chunk in tasks.chunks(500) {
            apalis_redis::queries::push_tasks(&mut conn, &config, chunk).await?;
        }
        Ok(())
    }

    pub async fn depth(&self, queue: &str) -> Result<QueueDepth, QueueError> {
        let mut conn = self.conn.clone();
        let v: Vec<i64> =
            Script::new(DEPTH_LUA).arg(self.queue_name(queue)).arg(now_secs()).invoke_async(&mut conn).await?;
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
        let n: i64 = Script::new(PENDING_LUA).arg(self.queue_name(queue)).invoke_async(&mut conn).await?;
        Ok(n.max(0) as usize)
    }

    pub async fn job_states(&self, queue: &str, ids: &[String]) -> Result<Vec<JobState>, QueueError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        let lua = Script::new(JOB_STATES_LUA);
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
        let n: i64 = Script::new(VACUUM_LUA).arg(self.queue_name(queue)).arg(max).invoke_async(&mut conn).await?;
        Ok(n as usize)
    }

    fn lease_key(&self, entity: &str) -> String {
        format!("{}:lease:{entity}", self.namespace)
    }

    /// Takes the entity lease for `holder` if nobody holds it.
    pub async fn lease_acquire(&self, entity: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.lease_key(entity))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Extends the lease while `holder` still holds it.
    pub async fn lease_renew(&self, entity: &str, holder: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let n: i64 = Script::new(LEASE_RENEW_LUA)
            .key(self.lease_key(entity))
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    pub async fn lease_release(&self, entity: &str, holder: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let n: i64 =
            Script::new(LEASE_RELEASE_LUA).key(self.lease_key(entity)).arg(holder).invoke_async(&mut conn).await?;
        Ok(n == 1)
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
                return Ok(deleted);
            }
        }
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }
}
