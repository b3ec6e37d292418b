//! Scale-out state store: Redis, shared by every routewise instance pointing at it.
//!
//! Keys (prefix `P`, default `routewise`):
//! * `P:dec:{id}`: JSON [`DecisionRecord`], `SET .. EX ttl` (expired = gone = 404);
//! * `P:fb:{id}`: JSON [`FeedbackEntry`], the idempotency key, `SET .. NX EX ttl`;
//! * `P:arm:{model}`: hash with fields `a0..a{d*d-1}`, `b0..b{d-1}`, `n`: the arm's
//!   sufficient statistics, written as `%.17g` text so f64 round-trips exactly;
//! * `P:arms`: set of model names with statistics; `P:feedback_log`: a stream of entries
//!   (capped near 1e6);
//! * `P:keys`: hash of virtual keys, id -> JSON record ([`crate::store::keys`]).
//!
//! Atomicity: one Lua script (`EVALSHA`, run atomically by Redis) checks that the decision
//! exists, claims the idempotency key with `SET NX`, discounts and increments the arm's
//! statistics (the same arithmetic as `ArmStats::update`, in the same order) and appends
//! the log entry. Two instances giving feedback concurrently therefore serialise in Redis
//! and no increment is lost; a duplicate from either instance is refused.
//!
//! Availability: every command has a response timeout; a failed command marks the store
//! unavailable (`available() == false`) until one succeeds. The online router keeps
//! serving from its last statistics meanwhile; feedback answers 503 (not acknowledged).
//! Durability of acknowledged feedback is Redis's own (run it with `appendonly yes` and
//! `appendfsync always` for the same guarantee as the local store).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::Mutex;

use crate::bandit::ArmStats;
use crate::feedback::{DecisionRecord, FeedbackEntry, FeedbackError, ValidFeedback};
use crate::store::state_store::{FeedbackParams, StateStore, StoreError};

const APPLY_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return {'duplicate'} end
local gamma = tonumber(ARGV[3])
local l0 = tonumber(ARGV[4])
local d = tonumber(ARGV[5])
local y = tonumber(ARGV[6])
local x = {}
for i = 1, d do x[i] = tonumber(ARGV[7 + i]) end
local fields = {}
for i = 0, d * d - 1 do fields[#fields + 1] = 'a' .. i end
for i = 0, d - 1 do fields[#fields + 1] = 'b' .. i end
fields[#fields + 1] = 'n'
local vals = redis.call('HMGET', KEYS[3], unpack(fields))
local fresh = not vals[#fields]
local out = {}
local ret = {'ok'}
for r = 0, d - 1 do
  for c = 0, d - 1 do
    local k = r * d + c
    local v
    if fresh then
      if r == c then v = l0 else v = 0 end
    else
      v = tonumber(vals[k + 1])
    end
    if gamma < 1 then
      v = v * gamma
      if r == c then v = v + (1 - gamma) * l0 end
    end
    v = v + x[r + 1] * x[c + 1]
    local s = string.format('%.17g', v)
    out[#out + 1] = 'a' .. k
    out[#out + 1] = s
    ret[#ret + 1] = s
  end
end
for i = 0, d - 1 do
  local v = 0
  if not fresh then v = tonumber(vals[d * d + i + 1]) end
  if gamma < 1 then v = v * gamma end
  v = v + y * x[i + 1]
  local s = string.format('%.17g', v)
  out[#out + 1] = 'b' .. i
  out[#out + 1] = s
  ret[#ret + 1] = s
end
local n = 1
if not fresh then n = tonumber(vals[#fields]) + 1 end
out[#out + 1] = 'n'
out[#out + 1] = tostring(n)
ret[#ret + 1] = tostring(n)
redis.call('HSET', KEYS[3], unpack(out))
redis.call('SADD', KEYS[4], ARGV[7])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', '1000000', '*', 'entry', ARGV[1])
return ret
"#;

/// How long to wait after a failed connection attempt before trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(1_000);

/// The Redis-backed store (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    conn: Arc<Mutex<ConnState>>,
    available: Arc<AtomicBool>,
    script: Arc<Script>,
}

struct ConnState {
    manager: Option<ConnectionManager>,
    last_attempt: Option<Instant>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("available", &self.available())
            .finish()
    }
}

fn fe<E: std::fmt::Display>(e: E) -> FeedbackError {
    FeedbackError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Parses the URL; the first connection is made lazily (so an instance starts even
    /// while Redis is down).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Config(format!("redis_url: {e}")))?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_string(),
            timeout,
            conn: Arc::new(Mutex::new(ConnState {
                manager: None,
                last_attempt: None,
            })),
            available: Arc::new(AtomicBool::new(false)),
            script: Arc::new(Script::new(APPLY_LUA)),
        })
    }

    /// Whether the last command reached Redis.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn mark<T, E>(&self, r: Result<T, E>) -> Result<T, E> {
        self.available.store(r.is_ok(), Ordering::Relaxed);
        r
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut st = self.conn.lock().await;
        if let Some(m) = &st.manager {
            return Ok(m.clone());
        }
        if let Some(t) = st.last_attempt {
            if t.elapsed() < RECONNECT_BACKOFF {
                self.available.store(false, Ordering::Relaxed);
                return Err(StoreError::Unavailable(
                    "redis unreachable (retrying)".into(),
                ));
            }
        }
        st.last_attempt = Some(Instant::now());
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let r = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await;
        match r {
            Ok(Ok(m)) => {
                st.manager = Some(m.clone());
                Ok(m)
            }
            Ok(Err(e)) => {
                self.available.store(false, Ordering::Relaxed);
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.available.store(false, Ordering::Relaxed);
                Err(StoreError::Unavailable("redis connect timed out".into()))
            }
        }
    }

    fn keys_hash(&self) -> String {
        format!("{}:keys", self.prefix)
    }

    fn unavailable<T>(&self, r: redis::RedisResult<T>) -> Result<T, StoreError> {
        self.mark(r)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// `P:rest`.
    pub(crate) fn prefixed(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    /// Runs a prepared script (`EVALSHA`, loading it on a miss).
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut c = self.connection().await?;
        let r = inv.invoke_async(&mut c).await;
        self.unavailable(r)
    }

    /// `GET spend` and `ZRANGEBYSCORE resv (now +inf` in one pipeline.
    pub(crate) async fn spend_and_open(
        &self,
        spend: &str,
        resv: &str,
        now_ms: u64,
    ) -> Result<(Option<String>, Vec<String>), StoreError> {
        let mut c = self.connection().await?;
        let r = redis::pipe()
            .get(spend)
            .zrangebyscore(resv, format!("({now_ms}"), "+inf")
            .query_async(&mut c)
            .await;
        self.unavailable(r)
    }

    /// `HSET P:keys id json`.
    pub(crate) async fn hset_key(&self, id: &str, json: String) -> Result<(), StoreError> {
        let mut c = self.connection().await?;
        let r: redis::RedisResult<()> = c.hset(self.keys_hash(), id, json).await;
        self.unavailable(r)
    }

    /// `HGET P:keys id`.
    pub(crate) async fn hget_key(&self, id: &str) -> Result<Option<String>, StoreError> {
        let mut c = self.connection().await?;
        let r = c.hget(self.keys_hash(), id).await;
        self.unavailable(r)
    }

    /// `HVALS P:keys`.
    pub(crate) async fn hvals_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.connection().await?;
        let r = c.hvals(self.keys_hash()).await;
        self.unavailable(r)
    }

    /// `PING`: refreshes and returns availability (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let ok = match self.connection().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        };
        self.available.store(ok, Ordering::Relaxed);
        ok
    }

    /// Keeps a decision for `ttl_s` seconds.
    pub async fn record_decision(
        &self,
        rec: &DecisionRecord,
        ttl_s: u64,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut c = self.connection().await?;
        let r: Result<(), _> = c.set_ex(self.key("dec", &rec.id), json, ttl_s.max(1)).await;
        self.mark(r)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Reads a decision (`None`: unknown or expired).
    pub async fn decision(&self, id: &str) -> Result<Option<DecisionRecord>, StoreError> {
        let mut c = self.connection().await?;
        let r: Result<Option<String>, _> = c.get(self.key("dec", id)).await;
        match self
            .mark(r)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| StoreError::Backend(e.to_string())),
        }
    }

    /// Atomically refuses unknown/duplicate feedback, claims the idempotency key, updates
    /// the arm's statistics and appends the log (one Lua script). Returns the arm's new
    /// statistics.
    pub async fn apply_feedback(
        &self,
        dec: &DecisionRecord,
        entry: &FeedbackEntry,
        ttl_s: u64,
        gamma: f64,
        lambda0: f64,
    ) -> Result<ArmStats, FeedbackError> {
        let d = dec.x.len();
        let json = serde_json::to_string(entry).map_err(|e| FeedbackError::Store(e.to_string()))?;
        let mut inv = self.script.prepare_invoke();
        inv.key(self.key("dec", &dec.id))
            .key(self.key("fb", &dec.id))
            .key(self.key("arm", &dec.model))
            .key(format!("{}:arms", self.prefix))
            .key(format!("{}:feedback_log", self.prefix))
            .arg(json)
            .arg(ttl_s.max(1))
            .arg(format!("{gamma:e}"))
            .arg(format!("{lambda0:e}"))
            .arg(d)
            .arg(format!("{:e}", entry.residual))
            .arg(&dec.model);
        for v in &dec.x {
            inv.arg(format!("{v:e}"));
        }
        let mut c = self.connection().await.map_err(fe)?;
        let r: Result<Vec<String>, _> = inv.invoke_async(&mut c).await;
        let out = self.mark(r).map_err(fe)?;
        match out.first().map(String::as_str) {
            Some("ok") => parse_stats(&out[1..], d).map_err(FeedbackError::Store),
            Some("unknown") => Err(FeedbackError::UnknownDecision(dec.id.clone())),
            Some("duplicate") => Err(FeedbackError::Duplicate(dec.id.clone())),
            _ => Err(FeedbackError::Store(format!(
                "unexpected script reply {out:?}"
            ))),
        }
    }

    /// Every arm's statistics (each hash is read atomically).
    pub async fn load_arms(&self) -> Result<Vec<(String, ArmStats)>, StoreError> {
        let mut c = self.connection().await?;
        let r: Result<Vec<String>, _> = c.smembers(format!("{}:arms", self.prefix)).await;
        let mut names = self
            .mark(r)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let r: Result<std::collections::HashMap<String, String>, _> =
                c.hgetall(self.key("arm", &name)).await;
            let h = self
                .mark(r)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            out.push((name, stats_from_hash(&h).map_err(StoreError::Backend)?));
        }
        Ok(out)
    }

    /// Number of entries in the shared feedback log.
    async fn log_len(&self) -> Result<u64, StoreError> {
        let mut c = self.connection().await?;
        let r: Result<u64, _> = redis::cmd("XLEN")
            .arg(format!("{}:feedback_log", self.prefix))
            .query_async(&mut c)
            .await;
        self.mark(r)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn available(&self) -> bool {
        RedisStore::available(self)
    }

    async fn ping(&self) -> bool {
        RedisStore::ping(self).await
    }

    async fn record_decision(&self, rec: &DecisionRecord, ttl_s: u64) -> Result<(), StoreError> {
        RedisStore::record_decision(self, rec, ttl_s).await
    }

    async fn apply_feedback(
        &self,
        fb: &ValidFeedback,
        p: &FeedbackParams,
    ) -> Result<(FeedbackEntry, ArmStats), FeedbackError> {
        let dec = self
            .decision(&fb.decision_id)
            .await
            .map_err(|e| FeedbackError::Unavailable(e.to_string()))?
            .ok_or_else(|| FeedbackError::UnknownDecision(fb.decision_id.clone()))?;
        let entry = FeedbackEntry::new(fb, &dec, p.fallback_lambda, p.now_ms);
        let stats =
            RedisStore::apply_feedback(self, &dec, &entry, p.ttl_s, p.gamma, p.lambda0).await?;
        Ok((entry, stats))
    }

    async fn load_arms(&self) -> Result<Vec<(String, ArmStats)>, StoreError> {
        RedisStore::load_arms(self).await
    }

    async fn purge_expired(&self, _now_ms: u64, _ttl_s: u64) -> Result<usize, StoreError> {
        // Redis expires decisions itself (SET EX).
        Ok(0)
    }

    async fn feedback_log_len(&self) -> Result<u64, StoreError> {
        self.log_len().await
    }

    async fn feedback_entries(&self, since_ms: u64) -> Result<Vec<FeedbackEntry>, StoreError> {
        // Stream ids start with the Unix ms at which Redis appended the entry. Read in
        // pages (each from just after the last id read: the exclusive `(id` start needs
        // Redis 6.2), so that a long log never holds the shared Redis on one huge reply.
        const PAGE: usize = 1000;
        let mut c = self.connection().await?;
        let key = format!("{}:feedback_log", self.prefix);
        let mut start = since_ms.to_string();
        let mut out = Vec::new();
        loop {
            let r: Result<Vec<(String, Vec<(String, String)>)>, _> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut c)
                .await;
            let rows = self
                .mark(r)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let n = rows.len();
            let last = rows.last().map(|(id, _)| id.clone());
            for (_, fields) in rows {
                if let Some((_, json)) = fields.into_iter().find(|(k, _)| k == "entry") {
                    out.push(
                        serde_json::from_str(&json)
                            .map_err(|e| StoreError::Backend(e.to_string()))?,
                    );
                }
            }
            match last {
                Some(id) if n == PAGE => start = format!("({id}"),
                _ => return Ok(out),
            }
        }
    }
}

fn parse_f64(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .map_err(|e| format!("bad number `{s}`: {e}"))
}

fn parse_stats(v: &[String], d: usize) -> Result<ArmStats, String> {
    if v.len() != d * d + d + 1 {
        return Err(format!(
            "script returned {} values, want {}",
            v.len(),
            d * d + d + 1
        ));
    }
    let a = v[..d * d]
        .iter()
        .map(|s| parse_f64(s))
        .collect::<Result<_, _>>()?;
    let b = v[d * d..d * d + d]
        .iter()
        .map(|s| parse_f64(s))
        .collect::<Result<_, _>>()?;
    let n = v[d * d + d]
        .parse::<u64>()
        .map_err(|e| format!("bad count: {e}"))?;
    Ok(ArmStats { a, b, n })
}

fn stats_from_hash(h: &std::collections::HashMap<String, String>) -> Result<ArmStats, String> {
    let d = (0..)
        .take_while(|i| h.contains_key(&format!("b{i}")))
        .count();
    let get = |k: String| {
        h.get(&k)
            .ok_or_else(|| format!("missing field {k}"))
            .and_then(|s| parse_f64(s))
    };
    let a = (0..d * d)
        .map(|i| get(format!("a{i}")))
        .collect::<Result<_, _>>()?;
    let b = (0..d)
        .map(|i| get(format!("b{i}")))
        .collect::<Result<_, _>>()?;
    let n = h
        .get("n")
        .ok_or("missing field n")?
        .parse::<u64>()
        .map_err(|e| format!("bad count: {e}"))?;
    Ok(ArmStats { a, b, n })
}
