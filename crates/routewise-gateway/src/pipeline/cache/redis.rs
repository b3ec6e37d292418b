//! The response cache in Redis (`cache: {backend: redis, redis_url: ...}`): one cache shared
//! by every instance behind a load balancer.
//!
//! Layout (keys under `prefix`, default `routewise:cache`):
//! * `{prefix}:e:{exact key}` — the entry (the answering model's name, the content type,
//!   the body, the last user message's embedding and guards; bincode), with the TTL;
//! * `{prefix}:b:{context}:{table}:{signature}` — an LSH bucket: a list of exact keys,
//!   newest first, trimmed to [`BUCKET_LEN`], its TTL renewed on each insertion (the same
//!   hyperplanes on every instance: [`routewise_signals::cache::Lsh`] from a fixed seed).
//!
//! A lookup is one `GET` for the exact key; on a miss with `semantic` on, one pipeline of
//! `LRANGE`s over the 12 buckets and one `MGET` of at most
//! [`routewise_signals::cache::MAX_CANDIDATES`] entries, judged in-process like the memory
//! backend's. Insertions are one pipeline, sent in the background. The size bound is Redis's
//! own: set `maxmemory` with an LRU `maxmemory-policy` (entries and buckets all have TTLs).
//!
//! Redis is an optimisation here, never a dependency of a request: a whole lookup (connect
//! included) has [`OP_TIMEOUT`], one task connects while the others miss at once, and after
//! a failed or slow lookup the backend is skipped for [`BACKOFF`] (the request is a miss,
//! counted as `result="error"`). Insertions run in the background with their own budget
//! ([`INSERT_TIMEOUT`]) and do not start the back-off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use routewise_signals::cache::{
    judge, round_robin, CacheSettings, Guard, HitKind, Lsh, RequestKeys, Semantic, TABLES,
};
use serde::{Deserialize, Serialize};

/// Time a whole lookup may take before the request goes on without it.
pub const OP_TIMEOUT: Duration = Duration::from_millis(100);
/// Time a background insertion may take.
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the backend is skipped after a failure.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// Entries an LSH bucket keeps (the newest).
pub const BUCKET_LEN: isize = 32;

/// An entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub model: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub embedding: Vec<f32>,
    pub guard: Option<Guard>,
}

/// Why a Redis command did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisCacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis skipped after a recent failure")]
    BackingOff,
    #[error("another task is connecting to redis")]
    Connecting,
}

/// Clears a flag when dropped.
struct Flag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The Redis backend of one gateway.
pub struct RedisCache {
    client: redis::Client,
    prefix: String,
    settings: CacheSettings,
    lsh: Lsh,
    /// The connection once made (a clone per command: it multiplexes).
    conn: std::sync::RwLock<Option<ConnectionManager>>,
    /// Set while one task connects; the others miss meanwhile.
    connecting: std::sync::atomic::AtomicBool,
    /// Milliseconds since `started` before which Redis is not tried again.
    skip_until_ms: AtomicU64,
    started: std::time::Instant,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisCache {
    /// Parses the URL; the connection is made on first use.
    pub fn new(
        url: &str,
        prefix: &str,
        settings: CacheSettings,
        lsh: Lsh,
    ) -> Result<RedisCache, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisCache {
            client,
            prefix: prefix.to_string(),
            settings,
            lsh,
            conn: std::sync::RwLock::new(None),
            connecting: std::sync::atomic::AtomicBool::new(false),
            skip_until_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
        })
    }

    /// Whether Redis answers `PING` within `timeout` (blocking: for `check-config` and the
    /// start-up warning).
    pub fn ping_blocking(url: &str, timeout: Duration) -> Result<(), String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut c = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query::<String>(&mut c)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn entry_key(&self, exact: u128) -> String {
        format!("{}:e:{exact:032x}", self.prefix)
    }

    fn bucket_key(&self, context: u64, table: usize, sig: u8) -> String {
        format!("{}:b:{context:016x}:{table}:{sig:02x}", self.prefix)
    }

    /// The connection: made by one task at a time (the others get
    /// [`RedisCacheError::Connecting`] at once), never during the back-off.
    async fn connection(&self) -> Result<ConnectionManager, RedisCacheError> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(RedisCacheError::BackingOff);
        }
        if let Some(c) = self.conn.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        if self
            .connecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(RedisCacheError::Connecting);
        }
        // Cleared however this ends, a lookup cancelled mid-connect (its client went away,
        // its deadline passed) included.
        let _connecting = Flag(&self.connecting);
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(OP_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT)
            .set_number_of_retries(0);
        let made = match tokio::time::timeout(
            OP_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(RedisCacheError::Redis(e)),
            Err(_) => Err(RedisCacheError::Timeout(OP_TIMEOUT)),
        };
        if let Ok(c) = &made {
            if let Ok(mut slot) = self.conn.write() {
                *slot = Some(c.clone());
            }
        } else {
            self.back_off();
        }
        made
    }

    fn back_off(&self) {
        self.skip_until_ms.store(
            self.now_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000),
            Ordering::Relaxed,
        );
    }

    /// Looks a request up within [`OP_TIMEOUT`] in all: the exact key, then (with
    /// `semantic`) the closest guarded candidate of its buckets. A failure or a timeout
    /// starts the back-off.
    pub async fn get(
        &self,
        keys: RequestKeys,
        semantic: Option<&Semantic<'_>>,
    ) -> Result<Option<(HitKind, Stored)>, RedisCacheError> {
        let r = match tokio::time::timeout(OP_TIMEOUT, self.get_inner(keys, semantic)).await {
            Ok(r) => r,
            Err(_) => Err(RedisCacheError::Timeout(OP_TIMEOUT)),
        };
        if matches!(
            r,
            Err(RedisCacheError::Redis(_) | RedisCacheError::Timeout(_))
        ) {
            self.back_off();
        }
        r
    }

    async fn get_inner(
        &self,
        keys: RequestKeys,
        semantic: Option<&Semantic<'_>>,
    ) -> Result<Option<(HitKind, Stored)>, RedisCacheError> {
        let mut c = self.connection().await?;
        if self.settings.exact {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(self.entry_key(keys.exact))
                .query_async(&mut c)
                .await?;
            if let Some(s) = bytes.and_then(|b| bincode::deserialize::<Stored>(&b).ok()) {
                return Ok(Some((HitKind::Exact, s)));
            }
        }
        let Some(q) = semantic.filter(|_| self.settings.threshold.is_some()) else {
            return Ok(None);
        };
        let sigs = self.lsh.signatures(q.embedding);
        let mut pipe = redis::pipe();
        for (t, sig) in sigs.iter().enumerate() {
            pipe.cmd("LRANGE")
                .arg(self.bucket_key(keys.context, t, *sig))
                .arg(0)
                .arg(BUCKET_LEN - 1);
        }
        let buckets: Vec<Vec<String>> = pipe.query_async(&mut c).await?;
        let refs: Vec<Vec<&String>> = buckets.iter().map(|b| b.iter().collect()).collect();
        let views: Vec<&[&String]> = refs.iter().map(Vec::as_slice).collect();
        let ids = round_robin(&views);
        if ids.is_empty() {
            return Ok(None);
        }
        let entry_keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}:e:{id}", self.prefix))
            .collect();
        let entries: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&entry_keys)
            .query_async(&mut c)
            .await?;
        let mut best: Option<(f32, Stored)> = None;
        for bytes in entries.into_iter().flatten() {
            let Ok(s) = bincode::deserialize::<Stored>(&bytes) else {
                continue;
            };
            let Some(guard) = &s.guard else { continue };
            if let Some(sim) = judge(q, &s.embedding, guard, &self.settings) {
                if best.as_ref().is_none_or(|(b, _)| sim > *b) {
                    best = Some((sim, s));
                }
            }
        }
        Ok(best.map(|(sim, s)| (HitKind::Semantic(sim), s)))
    }

    /// Stores an entry and indexes it in its buckets, within [`INSERT_TIMEOUT`] (a failure
    /// does not start the back-off: lookups go on).
    pub async fn insert(&self, keys: RequestKeys, stored: &Stored) -> Result<(), RedisCacheError> {
        let mut c = self.connection().await?;
        let Ok(bytes) = bincode::serialize(stored) else {
            return Ok(());
        };
        let ttl = self.settings.ttl_ms;
        let id = format!("{:032x}", keys.exact);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.entry_key(keys.exact))
            .arg(bytes)
            .arg("PX")
            .arg(ttl)
            .ignore();
        if stored.guard.is_some() && stored.embedding.len() == self.lsh.dim() {
            let sigs: [u8; TABLES] = self.lsh.signatures(&stored.embedding);
            for (t, sig) in sigs.iter().enumerate() {
                let b = self.bucket_key(keys.context, t, *sig);
                pipe.cmd("LREM").arg(&b).arg(0).arg(&id).ignore();
                pipe.cmd("LPUSH").arg(&b).arg(&id).ignore();
                pipe.cmd("LTRIM")
                    .arg(&b)
                    .arg(0)
                    .arg(BUCKET_LEN - 1)
                    .ignore();
                pipe.cmd("PEXPIRE").arg(&b).arg(ttl).ignore();
            }
        }
        match tokio::time::timeout(INSERT_TIMEOUT, pipe.query_async::<()>(&mut c)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisCacheError::Timeout(INSERT_TIMEOUT)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn regression_a_connect_cancelled_midway_lets_the_next_lookup_connect() {
        // A "Redis" that accepts and never answers: connecting hangs until cancelled.
        let port = routewise_testkit::silent_listener().await.unwrap();
        let settings = CacheSettings {
            exact: true,
            threshold: None,
            guards: true,
            ttl_ms: 1000,
            max_entries: 10,
        };
        let cache = RedisCache::new(
            &format!("redis://127.0.0.1:{port}"),
            "t",
            settings,
            Lsh::new(4, 1),
        )
        .unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(10), cache.connection()).await;
        assert!(cancelled.is_err(), "the connect should still be pending");
        assert!(
            !cache.connecting.load(Ordering::Acquire),
            "a cancelled connect must not leave the flag set"
        );
    }
}
