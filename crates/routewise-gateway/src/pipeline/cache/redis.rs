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
//! Redis is an optimisation here, never a dependency of a request ([`crate::redis_link`]):
//! a whole lookup (connect included) has [`OP_TIMEOUT`], one task connects while the
//! others miss at once, and after a failed or slow lookup the backend is skipped for
//! [`crate::redis_link::BACKOFF`] (the request is a miss, counted as `result="error"`).
//! Insertions run in the background with their own budget ([`INSERT_TIMEOUT`]) and do not
//! start the back-off.

use std::time::Duration;

use crate::redis_link::RedisLink;
pub use crate::redis_link::{LinkError as RedisCacheError, OP_TIMEOUT};
use routewise_signals::cache::{
    judge, ranked_candidates, CacheSettings, Guard, HitKind, Lsh, RequestKeys, Semantic, TABLES,
};
use serde::{Deserialize, Serialize};

/// Time a background insertion may take.
pub const INSERT_TIMEOUT: Duration = crate::redis_link::WRITE_TIMEOUT;
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

/// The Redis backend of one gateway.
pub struct RedisCache {
    link: RedisLink,
    prefix: String,
    settings: CacheSettings,
    lsh: Lsh,
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
        Ok(RedisCache {
            link: RedisLink::new(url)?,
            prefix: prefix.to_string(),
            settings,
            lsh,
        })
    }

    fn entry_key(&self, exact: u128) -> String {
        format!("{}:e:{exact:032x}", self.prefix)
    }

    fn bucket_key(&self, context: u64, table: usize, sig: u8) -> String {
        format!("{}:b:{context:016x}:{table}:{sig:02x}", self.prefix)
    }

    /// Looks a request up within [`OP_TIMEOUT`] in all: the exact key, then (with
    /// `semantic`) the closest guarded candidate of its buckets. A failure or a timeout
    /// starts the back-off.
    pub async fn get(
        &self,
        keys: RequestKeys,
        semantic: Option<&Semantic<'_>>,
    ) -> Result<Option<(HitKind, Stored)>, RedisCacheError> {
        self.link
            .within(OP_TIMEOUT, self.get_inner(keys, semantic))
            .await
    }

    async fn get_inner(
        &self,
        keys: RequestKeys,
        semantic: Option<&Semantic<'_>>,
    ) -> Result<Option<(HitKind, Stored)>, RedisCacheError> {
        let mut c = self.link.connection().await?;
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
        let ids = ranked_candidates(&views);
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
        let mut c = self.link.connection().await?;
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
