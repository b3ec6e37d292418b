//! Stage 3d: conversation affinity (`affinity:` in the config). A multi-turn conversation
//! stays on the model that answered its last turn unless the router's new choice gains
//! more than `switch_margin` plus what the switch loses of the provider's prompt cache
//! ([`routewise_router::affinity`], the rule and its source).
//!
//! * **Conversation key:** the `x-routewise-session` header, else the request's `user`
//!   field with a hash of its first messages (the system prompt and the first user
//!   message, which every turn of a conversation repeats). A request with neither has no
//!   conversation. Keys are hashed (SHA-256, first 8 bytes); the text is not kept.
//! * **Where it applies:** requests the router ranked by a lambda policy (`model: auto`,
//!   no forced model, no exploration, no cascade). The previous model must still be a
//!   candidate. Every answered turn with a conversation is remembered, wherever it
//!   applied.
//! * **What it does:** "stayed" moves the previous model to the front of the candidates
//!   (the rest keep the fallback order); "switched" leaves the router's order. The
//!   decision log's `affinity` field and the `x-routewise-affinity` header say which,
//!   with the gain and the cost; `routewise_affinity_total{verdict}` counts them.
//! * **Memory:** the model that answered each conversation's last turn, in this
//!   instance's memory, for `ttl_s` after that turn, at most `max_conversations` (expired
//!   ones are dropped first when full, then the one expiring soonest).
//! * **Shared (`backend: redis`):** with several instances behind a balancer without
//!   session stickiness, the model's name is also kept in Redis under
//!   `{prefix}:{conversation key}` with the TTL, as `{answered at, unix ms}:{name}`
//!   (written in the background after each answered turn), so any instance continues any
//!   conversation: a turn reads Redis and its own memory and follows the newer answer (a
//!   write that failed, an evicted key, or a write still in flight does not hide what this
//!   instance knows). Redis stays an optimisation ([`crate::redis_link`]): a read has
//!   [`crate::redis_link::OP_TIMEOUT`], and while Redis fails or is backing off the
//!   instance's own memory answers (still bounded by `max_conversations`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use axum::http::HeaderMap;
use routewise_router::affinity::{decide, Turn, Verdict};
use routewise_router::Policy;
use sha2::{Digest, Sha256};

use crate::config::{AffinityConfig, CacheBackend};
use crate::models::ModelId;
use crate::pipeline::route::{Reason, Routed};
use crate::redis_link::{LinkError, RedisLink, OP_TIMEOUT, WRITE_TIMEOUT};
use crate::request::ChatRequest;
use crate::state::Gateway;

/// The header naming a conversation.
pub const SESSION_HEADER: &str = "x-routewise-session";
/// The response header with the verdict (`stayed` or `switched`).
pub const AFFINITY_HEADER: &str = "x-routewise-affinity";

/// The conversations' models (see the module docs).
#[derive(Debug)]
pub struct Conversations {
    config: AffinityConfig,
    inner: Mutex<Inner>,
    /// The shared store (`backend: redis`) and its key prefix.
    redis: Option<(RedisLink, String)>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Key -> (model, expires at unix ms).
    map: HashMap<u64, (ModelId, u64)>,
    /// (expires, key) in the order they were written: with one TTL, soonest to expire
    /// first. An entry rewritten since leaves a stale item, skipped when met.
    order: VecDeque<(u64, u64)>,
}

/// Whether the queue item `(expires, key)` is still the key's entry.
fn live(map: &HashMap<u64, (ModelId, u64)>, expires: u64, key: u64) -> bool {
    map.get(&key).is_some_and(|v| v.1 == expires)
}

impl Inner {
    fn live(&self, expires: u64, key: u64) -> bool {
        live(&self.map, expires, key)
    }

    /// Drops the expired entries at the front (amortised O(1) per write).
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(e, k)) = self.order.front() {
            if e > now_ms && self.live(e, k) {
                break;
            }
            self.order.pop_front();
            if self.live(e, k) {
                self.map.remove(&k);
            }
        }
    }

    /// Drops the entry that expires soonest.
    fn evict_one(&mut self) {
        while let Some((e, k)) = self.order.pop_front() {
            if self.live(e, k) {
                self.map.remove(&k);
                return;
            }
        }
    }
}

/// What the stage found for a request, kept until its answer.
#[derive(Debug, Clone, Copy)]
pub struct Trace {
    pub key: u64,
    /// `None`: a new conversation, or its model is the router's choice anyway.
    pub verdict: Option<Verdict>,
}

impl Conversations {
    /// The store for `config` (a Redis URL is parsed here; the connection is made on
    /// first use).
    pub fn new(config: AffinityConfig) -> Result<Conversations, String> {
        let redis = match &config.backend {
            CacheBackend::Memory => None,
            CacheBackend::Redis { url, prefix } => Some((RedisLink::new(url)?, prefix.clone())),
        };
        Ok(Conversations {
            config,
            inner: Mutex::new(Inner::default()),
            redis,
        })
    }

    /// The conversation's model at `now_ms` (unix): the newer of Redis's (shared) and
    /// this instance's memory.
    pub async fn previous(&self, gw: &Gateway, key: u64, now_ms: u64) -> Option<ModelId> {
        let local = self.entry(key, now_ms);
        let Some((link, prefix)) = &self.redis else {
            return local.map(|(m, _)| m);
        };
        let read = async {
            let mut c = link.connection().await?;
            let value: Option<String> = redis::cmd("GET")
                .arg(format!("{prefix}:{key:016x}"))
                .query_async(&mut c)
                .await?;
            Ok::<_, LinkError>(value)
        };
        let shared = match link.within(OP_TIMEOUT, read).await {
            Ok(v) => v.and_then(|v| {
                let (at, name) = v.split_once(':')?;
                Some((gw.upstreams.by_name(name)?, at.parse::<u64>().ok()?))
            }),
            Err(e) => {
                tracing::debug!(error = %e, "affinity: redis read failed, using this instance's memory");
                None
            }
        };
        match (shared, local) {
            (Some((m, at)), Some((_, local_at))) if at >= local_at => Some(m),
            (_, Some((m, _))) | (Some((m, _)), None) => Some(m),
            (None, None) => None,
        }
    }

    /// Writes the conversation's model, answered at `at_ms` (unix), to Redis (`backend:
    /// redis`), in the background.
    fn share(self: &std::sync::Arc<Self>, key: u64, name: &str, at_ms: u64) {
        if self.redis.is_none() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, value) = (std::sync::Arc::clone(self), format!("{at_ms}:{name}"));
        rt.spawn(async move {
            let Some((link, prefix)) = &this.redis else {
                return;
            };
            let write = async {
                let mut c = link.connection().await?;
                redis::cmd("SET")
                    .arg(format!("{prefix}:{key:016x}"))
                    .arg(value)
                    .arg("PX")
                    .arg(this.config.ttl_ms)
                    .query_async::<()>(&mut c)
                    .await?;
                Ok::<_, LinkError>(())
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "affinity: redis write failed"),
                Err(_) => tracing::debug!("affinity: redis write timed out"),
            }
        });
    }

    pub fn config(&self) -> &AffinityConfig {
        &self.config
    }

    #[cfg(test)]
    fn get(&self, key: u64, now_ms: u64) -> Option<ModelId> {
        self.entry(key, now_ms).map(|(m, _)| m)
    }

    /// The conversation's model in this instance's memory and when it answered.
    fn entry(&self, key: u64, now_ms: u64) -> Option<(ModelId, u64)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .map
            .get(&key)
            .filter(|(_, expires)| *expires > now_ms)
            .map(|&(m, expires)| (m, expires.saturating_sub(self.config.ttl_ms)))
    }

    /// Keeps `model` as the conversation's model from `now_ms` on: O(1) amortised, the
    /// soonest to expire making room when full.
    pub fn remember(&self, key: u64, model: ModelId, now_ms: u64) {
        let expires = now_ms.saturating_add(self.config.ttl_ms);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.expire(now_ms);
        if inner.map.len() >= self.config.max_conversations && !inner.map.contains_key(&key) {
            inner.evict_one();
        }
        inner.map.insert(key, (model, expires));
        inner.order.push_back((expires, key));
        // Rewrites leave stale items: compact once they outnumber the live ones.
        if inner.order.len() > 2 * inner.map.len() + 1024 {
            let Inner { map, order } = &mut *inner;
            order.retain(|&(e, k)| live(map, e, k));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

/// The request's conversation key, if it has one, scoped to the caller's API key (one
/// caller's session ids never name another's conversation).
pub fn conversation_key(
    caller: Option<&str>,
    req: &ChatRequest,
    headers: &HeaderMap,
) -> Option<u64> {
    let mut h = Sha256::new();
    h.update(caller.unwrap_or("").as_bytes());
    h.update(b"\0");
    if let Some(s) = headers.get(SESSION_HEADER).map(|v| v.as_bytes()) {
        if s.is_empty() {
            return None;
        }
        h.update(b"session\0");
        h.update(s);
    } else {
        let user = req.rest().get("user")?.as_str()?;
        let messages = req.rest().get("messages")?.as_array()?;
        h.update(b"user\0");
        h.update(user.as_bytes());
        // The system prompt (if any) and the first user message: what every turn repeats.
        let first_user = messages
            .iter()
            .position(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))?;
        for m in &messages[..=first_user] {
            h.update(b"\0");
            // Written into the hash as serialised (no copy of the text).
            serde_json::to_writer(&mut h, m).ok()?;
        }
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Some(u64::from_le_bytes(first))
}

/// Keeps the model that answered as the conversation's model (and shares it).
pub fn answered(ctx: &crate::pipeline::context::RequestContext, model: ModelId) {
    if let (Some(t), Some(c)) = (ctx.affinity, ctx.state.affinity.as_ref()) {
        let now = crate::stats::unix_ms();
        c.remember(t.key, model, now);
        c.share(t.key, &ctx.state.upstreams.get(model).name, now);
    }
}

/// Stage 3d: applies the conversation's affinity to `routed` (see the module docs).
pub async fn apply(
    gw: &Gateway,
    caller: Option<&str>,
    req: &ChatRequest,
    headers: &HeaderMap,
    routed: &mut Routed,
    cascading: bool,
) -> Option<Trace> {
    let conversations = gw.affinity.as_ref()?;
    let key = conversation_key(caller, req, headers)?;
    let trace = |verdict| Some(Trace { key, verdict });
    // Only a lambda ranking is weighed (a budget policy's order is not a utility), and
    // not under a cascade (its tier decides the answer). Such turns are still
    // remembered: their answering model holds the provider's cache.
    let lambda = match routed.policy {
        Policy::Lambda(l) => l,
        _ => return trace(None),
    };
    if routed.reason != Reason::Routed || !routed.by_policy || cascading {
        return trace(None);
    }
    let first = *routed.candidates.first()?;
    let Some(previous) = conversations
        .previous(gw, key, crate::stats::unix_ms())
        .await
    else {
        return trace(None);
    };
    if previous == first {
        return trace(None);
    }
    let Some(d) = routed.decision.as_ref() else {
        return trace(None);
    };
    let utility = |m: ModelId| -> f64 {
        let (Some(s), Some(c)) = (d.scores.get(m.index()), d.costs.get(m.index())) else {
            return f64::NEG_INFINITY;
        };
        s - lambda * c - routed.penalty_of(m)
    };
    let candidate = routed.candidates.iter().position(|&m| m == previous);
    let price = gw.upstreams.get(previous).price;
    let verdict = decide(
        &Turn {
            choice_utility: utility(first),
            previous_utility: if candidate.is_some() {
                utility(previous)
            } else {
                f64::NEG_INFINITY
            },
            lambda,
            prompt_tokens: req.prompt_tokens,
            input_price: price.input_per_mtok / 1e6,
            cached_input_price: price.cached_input() / 1e6,
        },
        conversations.config().switch_margin,
    );
    if let (true, Some(i)) = (verdict.stayed(), candidate) {
        let m = routed.candidates.remove(i);
        routed.candidates.insert(0, m);
        // The order is affinity's now, not the policy's.
        routed.by_policy = false;
    }
    gw.metrics.affinity(verdict.name());
    trace(Some(verdict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(body: &str) -> ChatRequest {
        crate::request::parse(
            &bytes::Bytes::copy_from_slice(body.as_bytes()),
            &HeaderMap::new(),
            true,
        )
        .unwrap()
    }

    #[test]
    fn turns_of_one_conversation_share_a_key_and_others_do_not() {
        let turn1 = request(
            r#"{"model":"auto","user":"u1","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
        );
        let turn2 = request(
            r#"{"model":"auto","user":"u1","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}"#,
        );
        let other_user = request(
            r#"{"model":"auto","user":"u2","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
        );
        let none = HeaderMap::new();
        let k1 = conversation_key(None, &turn1, &none).unwrap();
        assert_eq!(conversation_key(None, &turn2, &none), Some(k1));
        assert_ne!(conversation_key(None, &other_user, &none), Some(k1));
        // No user and no header: no conversation.
        let anonymous = request(r#"{"model":"auto","messages":[{"role":"user","content":"hi"}]}"#);
        assert_eq!(conversation_key(None, &anonymous, &none), None);
        // The header wins.
        let mut h = HeaderMap::new();
        h.insert(SESSION_HEADER, HeaderValue::from_static("s-1"));
        let a = conversation_key(None, &anonymous, &h).unwrap();
        assert_eq!(conversation_key(None, &turn1, &h), Some(a));
        // Another API key's session of the same name is another conversation.
        assert_ne!(conversation_key(Some("key-2"), &turn1, &h), Some(a));
    }

    #[test]
    fn conversations_expire_and_stay_within_their_bound() {
        let c = Conversations::new(AffinityConfig {
            ttl_ms: 1000,
            switch_margin: 0.02,
            max_conversations: 2,
            backend: CacheBackend::Memory,
        })
        .unwrap();
        c.remember(1, ModelId::from_index(0), 0);
        c.remember(2, ModelId::from_index(1), 10);
        assert_eq!(c.get(1, 500), Some(ModelId::from_index(0)));
        assert_eq!(c.get(1, 1000), None, "expired");
        // Full: the soonest to expire goes.
        c.remember(3, ModelId::from_index(2), 20);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1, 30), None);
        assert_eq!(c.get(3, 30), Some(ModelId::from_index(2)));
    }
}
