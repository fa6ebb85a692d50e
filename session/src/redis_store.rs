//! [`RedisStore`]: session bindings in Redis, shared by several front ends.
//!
//! # Layout
//!
//! Every key starts with `{PREFIX}:` (the braces make the prefix a Redis
//! Cluster hash tag, so all of a deployment's keys live in one slot and the
//! Lua scripts may touch them together):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `s:ID` | hash, with a TTL | the binding: `w` (worker address), `o` (owner front end), `b`, `u` (bound at, last used: unix ms) |
//! | `lru` | sorted set, all scores 0 | `UUUUUUUUUUUUUUUU\|ID` (last used, 16 digits): least-recently-used order by lexical range |
//! | `lru:o:OWNER` | sorted set | the same, for the sessions `OWNER` owns |
//! | `workers` | hash | sessions per worker address |
//! | `owners` | hash | sessions per owner |
//! | `meta` | hash | `ID` → owner, address and last used: what the index holds for it |
//! | `exp` | sorted set | `ID` scored by when (Redis server time, ms) its binding key expires |
//!
//! Every operation is one Lua script, so each is atomic: bind-if-absent,
//! touch, compare-and-delete and the index updates cannot interleave with
//! another front end's. A binding key expires `binding_ttl` after its last
//! touch (a safety net for sessions every front end forgot); each script
//! first drops from the indexes the bindings whose key has expired (found
//! through `exp`, at most 1,000 per call), so counts and LRU pages never
//! include them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portpool_pool::WorkerAddress;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::store::StoreResult;
use crate::{Binding, LruPosition, SessionId, SessionStore, StoreError, UnixMillis};

/// Settings of a [`RedisStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStoreConfig {
    /// The key prefix of this deployment: front ends that share sessions
    /// use the same one; other deployments on the same Redis use another.
    /// 1-64 characters from `A-Z a-z 0-9 - _ . :`.
    pub prefix: String,
    /// How long a binding key lives after its last touch: a safety net
    /// that removes the bindings of sessions no front end expires (every
    /// front end gone). Set it above twice the session pools' `idle_ttl`
    /// plus the longest call; default 2 hours (the default `idle_ttl` is
    /// 30 minutes).
    pub binding_ttl: Duration,
    /// The longest one operation (one round trip) may take, connecting
    /// included, before it fails with a [`StoreError`]. Default 1 s.
    pub op_timeout: Duration,
}

impl RedisStoreConfig {
    /// Defaults with key prefix `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        RedisStoreConfig {
            prefix: prefix.into(),
            binding_ttl: Duration::from_secs(2 * 3600),
            op_timeout: Duration::from_secs(1),
        }
    }

    /// Sets the binding key TTL.
    pub fn binding_ttl(mut self, ttl: Duration) -> Self {
        self.binding_ttl = ttl;
        self
    }

    /// Sets the per-operation time-out.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    fn validate(&self) -> StoreResult<()> {
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 64
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(StoreError::new(
                "connect",
                format!("invalid key prefix {p:?}: 1-64 characters from A-Z a-z 0-9 - _ . :"),
            ));
        }
        if self.binding_ttl < Duration::from_secs(1) {
            return Err(StoreError::new("connect", "binding_ttl must be at least 1 s"));
        }
        if self.op_timeout.is_zero() {
            return Err(StoreError::new("connect", "op_timeout must be positive"));
        }
        Ok(())
    }
}

/// Session bindings in Redis, for several front ends (`SessionPool`s in
/// several processes) that share sessions: a session opened on one front
/// end can be called on another, and reaches the same worker (by its
/// [`WorkerAddress`]), as long as both are connected to it.
///
/// Bind-if-absent, touch and compare-and-delete are atomic (Lua scripts);
/// each binding key has a TTL refreshed by every touch; the
/// least-recently-used and per-worker indexes stay exact when keys expire
/// (see the module's layout table). Binding, touching, evicting and
/// counting cost O(log n) in Redis; only [`list`](SessionStore::list) is
/// O(n).
///
/// A Redis that is down or slow gives [`StoreError`]s within
/// [`op_timeout`](RedisStoreConfig::op_timeout), which calls report as
/// [`SessionError::Store`](crate::SessionError::Store); the connection is
/// re-established in the background, so calls recover when Redis is back
/// (with the bindings it kept: with persistence off, sessions start
/// fresh).
///
/// It is a shared store ([`SessionStore::is_shared`]): dropping a session
/// pool over it closes none of the sessions. Meant for one Redis server
/// (or a primary with replicas); under Redis Cluster the prefix is the hash
/// tag, so one deployment's keys live on one shard.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use portpool_pool::Pool;
/// use portpool_session::{RedisStore, RedisStoreConfig, SessionConfig, SessionPool};
///
/// # async fn run(pool: Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect(
///     "redis://redis.internal:6379/",
///     RedisStoreConfig::new("chat-prod").binding_ttl(Duration::from_secs(2 * 3600)),
/// )
/// .await?;
/// let config = SessionConfig::default().front_end("chat-api-7f9c");
/// let sessions = SessionPool::with_store(pool, config, Arc::new(store))?;
/// let n: u64 = sessions.open().call("count", &()).await?;
/// # let _ = n;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    config: RedisStoreConfig,
    /// `{PREFIX}`, as the scripts receive it.
    tag: String,
    scripts: Arc<Scripts>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Scripts {
    get: Script,
    bind: Script,
    touch: Script,
    start_use: Script,
    remove_if: Script,
    lru: Script,
    per_worker: Script,
    len: Script,
    len_owned: Script,
    list: Script,
}

/// Shared by every script: key names, the index and its lazy cleaning.
const PRELUDE: &str = r#"
local P = ARGV[1]
local function skey(id) return P .. ':s:' .. id end
local function member(u, id) return string.rep('0', 16 - #u) .. u .. '|' .. id end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function unindex(id, owner, addr, u)
  local m = member(u, id)
  redis.call('ZREM', P .. ':lru', m)
  redis.call('ZREM', P .. ':lru:o:' .. owner, m)
  if redis.call('HINCRBY', P .. ':workers', addr, -1) <= 0 then redis.call('HDEL', P .. ':workers', addr) end
  if redis.call('HINCRBY', P .. ':owners', owner, -1) <= 0 then redis.call('HDEL', P .. ':owners', owner) end
  redis.call('HDEL', P .. ':meta', id)
  redis.call('ZREM', P .. ':exp', id)
end
local function index(id, owner, addr, u, ttl)
  local m = member(u, id)
  redis.call('ZADD', P .. ':lru', 0, m)
  redis.call('ZADD', P .. ':lru:o:' .. owner, 0, m)
  redis.call('HINCRBY', P .. ':workers', addr, 1)
  redis.call('HINCRBY', P .. ':owners', owner, 1)
  redis.call('HSET', P .. ':meta', id, owner .. '\n' .. addr .. '\n' .. u)
  redis.call('ZADD', P .. ':exp', now_ms() + tonumber(ttl), id)
end
-- Drops what the indexes hold for id (its binding key is gone).
local function forget(id)
  local meta = redis.call('HGET', P .. ':meta', id)
  -- owner (no control characters), address (any text, newlines too), last used (digits)
  local o, a, u
  if meta then o, a, u = string.match(meta, '^([^\n]*)\n(.*)\n(%d+)$') end
  if u then
    unindex(id, o, a, u)
  else
    -- Not ours to read: forget it rather than fail every operation from now on.
    redis.call('HDEL', P .. ':meta', id)
    redis.call('ZREM', P .. ':exp', id)
  end
end
local function clean()
  local now = now_ms()
  local due = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    local left = redis.call('PTTL', skey(id))
    if left > 0 then
      redis.call('ZADD', P .. ':exp', now + left, id)
    elseif left == -1 then
      redis.call('ZADD', P .. ':exp', now + 60000, id)
    else
      forget(id)
    end
  end
end
"#;

/// ARGV: P, id → [w, o, b, u] or nil.
const GET: &str = r#"
local r = redis.call('HMGET', skey(ARGV[2]), 'w', 'o', 'b', 'u')
if not r[1] then return false end
return r
"#;

/// ARGV: P, id, w, o, b, u, ttl → the binding in force.
const BIND: &str = r#"
clean()
local id, w, o, b, u, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local k = skey(id)
local r = redis.call('HMGET', k, 'w', 'o', 'b', 'u')
if r[1] then return r end
-- Expired but not cleaned yet (clean() takes 1,000 at a time): its index entries go first.
forget(id)
redis.call('HSET', k, 'w', w, 'o', o, 'b', b, 'u', u)
redis.call('PEXPIRE', k, ttl)
index(id, o, w, u, ttl)
return {w, o, b, u}
"#;

/// ARGV: P, id, at, by ('' for a call's end), ttl → 1 if last_used moved.
/// A start (`by` given) always moves last_used: to `at`, or to the old
/// one plus 1 ms; and makes `by` the owner.
const TOUCH: &str = r#"
return touch()
"#;

/// The body of TOUCH, shared with START_USE (in the prelude).
const TOUCH_FN: &str = r#"
local function touch()
clean()
local id, at, by, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local k = skey(id)
local r = redis.call('HMGET', k, 'w', 'o', 'u')
if not r[1] then return 0 end
redis.call('PEXPIRE', k, ttl)
local old = tonumber(r[3])
local new = tonumber(at)
local owner = r[2]
if by ~= '' then
  owner = by
  if new <= old then new = old + 1 end
elseif new <= old then
  redis.call('ZADD', P .. ':exp', now_ms() + tonumber(ttl), id)
  return 0
end
new = string.format('%d', new)
unindex(id, r[2], r[1], r[3])
redis.call('HSET', k, 'u', new, 'o', owner)
index(id, owner, r[1], new, ttl)
return 1
end
"#;

/// ARGV: P, id, at, by, ttl → the binding after the touch, or nil.
const START_USE: &str = r#"
local moved = touch()
local r = redis.call('HMGET', skey(ARGV[2]), 'w', 'o', 'b', 'u')
if not r[1] then return false end
return r
"#;

/// ARGV: P, id, w ('' any), u ('' any) → the removed binding or nil.
const REMOVE_IF: &str = r#"
clean()
local id, w, u = ARGV[2], ARGV[3], ARGV[4]
local k = skey(id)
local r = redis.call('HMGET', k, 'w', 'o', 'b', 'u')
if not r[1] then return false end
if w ~= '' and r[1] ~= w then return false end
if u ~= '' and r[4] ~= u then return false end
redis.call('DEL', k)
unindex(id, r[2], r[1], r[4])
return r
"#;

/// ARGV: P, owner ('' all), after ('' none), limit → [id, w, o, b, u]*.
const LRU: &str = r#"
clean()
local owner, after, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = P .. ':lru'
if owner ~= '' then key = P .. ':lru:o:' .. owner end
local min = '-'
if after ~= '' then min = '(' .. after end
local out = {}
for _, m in ipairs(redis.call('ZRANGEBYLEX', key, min, '+', 'LIMIT', 0, limit)) do
  local id = string.sub(m, 18)
  local r = redis.call('HMGET', skey(id), 'w', 'o', 'b', 'u')
  if r[1] then
    table.insert(out, id)
    for i = 1, 4 do table.insert(out, r[i]) end
  end
end
return out
"#;

/// ARGV: P → [address, count]*.
const PER_WORKER: &str = r#"
clean()
return redis.call('HGETALL', P .. ':workers')
"#;

/// ARGV: P → count.
const LEN: &str = r#"
clean()
return redis.call('HLEN', P .. ':meta')
"#;

/// ARGV: P, owner → count.
const LEN_OWNED: &str = r#"
clean()
return tonumber(redis.call('HGET', P .. ':owners', ARGV[2]) or '0')
"#;

/// ARGV: P → [id, w, o, b, u]*.
const LIST: &str = r#"
clean()
local out = {}
for _, id in ipairs(redis.call('HKEYS', P .. ':meta')) do
  local r = redis.call('HMGET', skey(id), 'w', 'o', 'b', 'u')
  if r[1] then
    table.insert(out, id)
    for i = 1, 4 do table.insert(out, r[i]) end
  end
end
return out
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{TOUCH_FN}{body}"))
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://HOST:PORT/DB`, or
    /// `redis://:PASSWORD@HOST:PORT/`), within `config.op_timeout`.
    ///
    /// Fails with a [`StoreError`] (operation `connect`) on a bad URL or
    /// configuration, or when Redis cannot be reached now; once connected,
    /// a lost connection is re-established in the background.
    pub async fn connect(url: &str, config: RedisStoreConfig) -> StoreResult<Self> {
        config.validate()?;
        let client = redis::Client::open(url).map_err(|e| StoreError::new("connect", e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(config.op_timeout)
            .set_response_timeout(config.op_timeout)
            .set_number_of_retries(1)
            .set_max_delay(200);
        let conn = tokio::time::timeout(
            config.op_timeout,
            ConnectionManager::new_with_config(client, manager),
        )
        .await
        .map_err(|_| StoreError::timeout("connect", config.op_timeout))?
        .map_err(|e| StoreError::new("connect", e.to_string()))?;
        Ok(RedisStore {
            conn,
            tag: format!("{{{}}}", config.prefix),
            config,
            scripts: Arc::new(Scripts {
                get: script(GET),
                bind: script(BIND),
                touch: script(TOUCH),
                start_use: script(START_USE),
                remove_if: script(REMOVE_IF),
                lru: script(LRU),
                per_worker: script(PER_WORKER),
                len: script(LEN),
                len_owned: script(LEN_OWNED),
                list: script(LIST),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisStoreConfig {
        &self.config
    }

    fn ttl_ms(&self) -> String {
        self.config.binding_ttl.as_millis().to_string()
    }

    /// Runs `script` with ARGV = [tag, args...], bounded by the op time-out.
    async fn run(&self, op: &'static str, script: &Script, args: &[&str]) -> StoreResult<Value> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.tag);
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(
            self.config.op_timeout,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(StoreError::new(op, format!("redis: {e}"))),
            Err(_) => Err(StoreError::timeout(op, self.config.op_timeout)),
        }
    }
}

fn text(op: &'static str, value: &Value) -> StoreResult<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| StoreError::new(op, "redis answered a string that is not UTF-8")),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(StoreError::new(op, format!("unexpected redis answer {other:?}"))),
    }
}

fn int(op: &'static str, value: &Value) -> StoreResult<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).map_err(|_| StoreError::new(op, format!("negative count {n}"))),
        other => text(op, other)?
            .parse()
            .map_err(|_| StoreError::new(op, format!("unexpected redis answer {other:?}"))),
    }
}

fn items(op: &'static str, value: Value) -> StoreResult<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::new(op, format!("unexpected redis answer {other:?}"))),
    }
}

/// `[w, o, b, u]` → a binding.
fn binding(op: &'static str, fields: &[Value]) -> StoreResult<Binding> {
    let [w, o, b, u] = fields else {
        return Err(StoreError::new(
            op,
            format!("a binding of {} fields", fields.len()),
        ));
    };
    let millis = |v: &Value| -> StoreResult<UnixMillis> {
        let t = text(op, v)?;
        t.parse()
            .map(UnixMillis)
            .map_err(|_| StoreError::new(op, format!("bad time {t:?} in a binding")))
    };
    Ok(Binding {
        worker: WorkerAddress::from_stored(text(op, w)?),
        owner: text(op, o)?,
        bound_at: millis(b)?,
        last_used: millis(u)?,
    })
}

fn maybe_binding(op: &'static str, value: Value) -> StoreResult<Option<Binding>> {
    match value {
        Value::Nil => Ok(None),
        other => binding(op, &items(op, other)?).map(Some),
    }
}

/// `[id, w, o, b, u]*` → bindings.
fn bindings(op: &'static str, value: Value) -> StoreResult<Vec<(SessionId, Binding)>> {
    let items = items(op, value)?;
    if items.len() % 5 != 0 {
        return Err(StoreError::new(op, "a list of bindings of the wrong length"));
    }
    items
        .chunks(5)
        .map(|chunk| {
            let id = text(op, &chunk[0])?;
            let id = SessionId::parse(id.clone())
                .map_err(|e| StoreError::new(op, format!("bad session id in redis: {e}")))?;
            Ok((id, binding(op, &chunk[1..])?))
        })
        .collect()
}

/// The LRU index member of a position: last used (16 digits), `|`, id.
fn member((at, id): &LruPosition) -> String {
    format!("{:016}|{id}", at.0)
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn get(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        let value = self.run("get", &self.scripts.get, &[session.as_str()]).await?;
        maybe_binding("get", value)
    }

    async fn bind_if_absent(&self, session: &SessionId, binding: Binding) -> StoreResult<Binding> {
        const OP: &str = "bind_if_absent";
        let (b, u) = (binding.bound_at.0.to_string(), binding.last_used.0.to_string());
        let args = [
            session.as_str(),
            binding.worker.as_str(),
            binding.owner.as_str(),
            &b,
            &u,
            &self.ttl_ms(),
        ];
        let value = self.run(OP, &self.scripts.bind, &args).await?;
        maybe_binding(OP, value)?.ok_or_else(|| StoreError::new(OP, "no binding in force after the bind"))
    }

    async fn touch(&self, session: &SessionId, at: UnixMillis, start: Option<&str>) -> StoreResult<()> {
        let at = at.0.to_string();
        let by = start.unwrap_or("");
        self.run(
            "touch",
            &self.scripts.touch,
            &[session.as_str(), &at, by, &self.ttl_ms()],
        )
        .await?;
        Ok(())
    }

    async fn start_use(&self, session: &SessionId, at: UnixMillis, by: &str) -> StoreResult<Option<Binding>> {
        let at = at.0.to_string();
        let value = self
            .run(
                "start_use",
                &self.scripts.start_use,
                &[session.as_str(), &at, by, &self.ttl_ms()],
            )
            .await?;
        maybe_binding("start_use", value)
    }

    async fn remove_if(
        &self,
        session: &SessionId,
        worker: &WorkerAddress,
        last_used: Option<UnixMillis>,
    ) -> StoreResult<Option<Binding>> {
        let u = last_used.map(|u| u.0.to_string()).unwrap_or_default();
        let value = self
            .run(
                "remove_if",
                &self.scripts.remove_if,
                &[session.as_str(), worker.as_str(), &u],
            )
            .await?;
        maybe_binding("remove_if", value)
    }

    async fn remove(&self, session: &SessionId) -> StoreResult<Option<Binding>> {
        let value = self
            .run("remove", &self.scripts.remove_if, &[session.as_str(), "", ""])
            .await?;
        maybe_binding("remove", value)
    }

    async fn list(&self) -> StoreResult<Vec<(SessionId, Binding)>> {
        let value = self.run("list", &self.scripts.list, &[]).await?;
        bindings("list", value)
    }

    async fn len(&self) -> StoreResult<usize> {
        let value = self.run("len", &self.scripts.len, &[]).await?;
        Ok(int("len", &value)? as usize)
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn len_owned_by(&self, owner: &str) -> StoreResult<usize> {
        let value = self
            .run("len_owned_by", &self.scripts.len_owned, &[owner])
            .await?;
        Ok(int("len_owned_by", &value)? as usize)
    }

    async fn sessions_per_worker(&self) -> StoreResult<HashMap<WorkerAddress, usize>> {
        const OP: &str = "sessions_per_worker";
        let items = items(OP, self.run(OP, &self.scripts.per_worker, &[]).await?)?;
        let mut counts = HashMap::new();
        for pair in items.chunks(2) {
            if let [address, n] = pair {
                let n = int(OP, n)? as usize;
                if n > 0 {
                    counts.insert(WorkerAddress::from_stored(text(OP, address)?), n);
                }
            }
        }
        Ok(counts)
    }

    async fn least_recently_used(
        &self,
        owner: Option<&str>,
        after: Option<LruPosition>,
        limit: usize,
    ) -> StoreResult<Vec<(SessionId, Binding)>> {
        const OP: &str = "least_recently_used";
        let after = after.as_ref().map(member).unwrap_or_default();
        let limit = limit.to_string();
        let value = self
            .run(OP, &self.scripts.lru, &[owner.unwrap_or(""), &after, &limit])
            .await?;
        bindings(OP, value)
    }
}
