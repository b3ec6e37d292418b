//! Stage 2c, the response cache (`cache:`): answers a request seen before without calling
//! any model.
//!
//! After the rules and the PII guard ([`super::rules`]), a request is keyed
//! ([`routewise_signals::cache::RequestKeys`]): the scope (the `scope_header`'s value when
//! configured, the requested model, the routes that matched), every parameter but
//! `stream`, `stream_options` and `user`, the earlier messages, and the last user message
//! (whitespace-normalised). The exact key looks it up first; with `semantic`, the last user
//! message's static embedding then finds the closest guarded entry of the same context at
//! or above the threshold ([`routewise_signals::cache::CacheIndex`]).
//!
//! * A hit is answered at once: the stored body (a stream is replayed from it as one
//!   chunk sequence when the client asked for one), with `x-routewise-cache: hit-exact` or
//!   `hit-semantic`, the model that made the answer in `x-routewise-model`, and a decision
//!   log line with reason `cache` and cost 0.
//! * A miss goes on; a successful non-streamed answer is stored, keyed by the request as
//!   redacted and before restoring, so that with `pii: {action: redact}` a stored answer
//!   holds placeholders, not another request's personal data. A request whose personal data
//!   stays in the clear (`tag`, `restrict`) or whose last message has non-text parts
//!   (images) is looked up by its exact key only: the semantic guards do not see a changed
//!   address or image.
//!   Streamed answers are not stored.
//! * `"routewise": {"cache": false}` skips the cache both ways; `cache-control: no-cache`
//!   skips the lookup, `no-store` the storing. Without the configured `scope_header`, a
//!   request is not cached.
//!
//! The index lives in this instance's memory behind one mutex (held for the lookup or the
//! insertion only: a few microseconds; `cargo bench -p routewise-signals`).

use std::sync::Mutex;

use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use routewise_signals::cache::{CacheIndex, CacheSettings, Guard, HitKind, RequestKeys, Semantic};
use routewise_signals::Embedder;
use serde_json::Value;

use crate::config::CacheConfig;
use crate::models::ModelId;
use crate::pipeline::rules::SignalTrace;
use crate::request::ChatRequest;
use crate::state::Gateway;
use crate::upstream::Answer;

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Cached {
    pub model: ModelId,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// The cache of one gateway.
#[derive(Debug)]
pub struct ResponseCache {
    index: Mutex<CacheIndex<Cached>>,
    /// The embedder of semantic lookups (the built-in static model).
    embedder: Option<Embedder>,
    config: CacheConfig,
}

/// Seed of the LSH hyperplanes (the same on every instance and restart).
const LSH_SEED: u64 = 0x7277_6361_6368_6531;

impl ResponseCache {
    pub fn new(config: &CacheConfig) -> Result<ResponseCache, String> {
        let embedder = match config.threshold {
            Some(_) => Some(Embedder::builtin().map_err(|e| e.to_string())?),
            None => None,
        };
        let settings = CacheSettings {
            exact: config.exact,
            threshold: config.threshold,
            guards: config.guards,
            ttl_ms: config.ttl_ms,
            max_entries: config.max_entries,
        };
        let dim = embedder.as_ref().map_or(0, Embedder::dim);
        Ok(ResponseCache {
            index: Mutex::new(CacheIndex::new(settings, dim, LSH_SEED)),
            embedder,
            config: config.clone(),
        })
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.index.lock().map_or(0, |i| i.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a request is looked up (and later stored) by.
#[derive(Debug, Clone)]
pub struct Probe {
    keys: RequestKeys,
    /// The last user message's text, for a semantic lookup (`None`: exact only).
    text: Option<String>,
    /// Its embedding and guards, computed when the exact key misses (or shared by the
    /// rules).
    embedding: Option<Vec<f32>>,
    guard: Option<Guard>,
    lookup: bool,
    store: bool,
    /// `x-routewise-cache`: `miss` until a hit says otherwise.
    pub status: &'static str,
}

impl Probe {
    /// Computes the semantic half (once).
    fn embed(&mut self, cache: &ResponseCache) {
        if self.guard.is_some() {
            return;
        }
        if let (Some(e), Some(text)) = (&cache.embedder, &self.text) {
            if self.embedding.is_none() {
                self.embedding = Some(e.embed(text));
            }
            self.guard = Some(Guard::of(text));
        }
    }

    fn semantic(&self) -> Option<Semantic<'_>> {
        Some(Semantic {
            embedding: self.embedding.as_deref()?,
            guard: self.guard.as_ref()?,
        })
    }
}

/// The request's cache keys, or `None` when the cache is off or the request opts out.
pub fn probe(
    gw: &Gateway,
    req: &ChatRequest,
    headers: &HeaderMap,
    signals: Option<&SignalTrace>,
) -> Option<Probe> {
    let cache = gw.cache.as_ref()?;
    if !req.cache {
        return None;
    }
    let control = headers
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let lookup = !control.contains("no-cache");
    let store = !control.contains("no-store");
    let tenant = match &cache.config.scope_header {
        Some(h) => headers.get(h)?.to_str().ok()?,
        None => "",
    };
    let route = signals.and_then(|s| s.route_names(gw)).unwrap_or_default();
    let rest = req.rest();
    let messages = match rest.get("messages") {
        Some(Value::Array(m)) => m.as_slice(),
        _ => &[],
    };
    let last = messages
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let last_text = last
        .and_then(|i| messages[i].get("content"))
        .map_or_else(String::new, text_of);
    let earlier: Vec<(String, String)> = messages
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != last)
        .map(|(i, m)| (i.to_string(), m.to_string()))
        .collect();
    let earlier: Vec<(&str, &str)> = earlier
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let params: serde_json::Map<String, Value> = rest
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "messages" | "stream" | "stream_options" | "user"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let scope = format!(
        "{tenant}\u{1f}{}\u{1f}{route}\u{1f}{}",
        req.model,
        last.unwrap_or(usize::MAX)
    );
    let keys = RequestKeys::new(
        &scope,
        &Value::Object(params).to_string(),
        &earlier,
        &last_text,
    );
    // The embedding and the guards read the message's text (the rules' embedding of it
    // when they made one); both are computed only when the exact key misses. No semantic
    // lookup for a message with parts that are not text (an image: the same words about
    // another image are another question), nor for personal data left in the clear (the
    // guards do not see a changed address).
    let non_text = last
        .and_then(|i| messages[i].get("content"))
        .and_then(Value::as_array)
        .is_some_and(|parts| {
            parts
                .iter()
                .any(|p| !p.is_string() && p.get("type").and_then(Value::as_str) != Some("text"))
        });
    let pii_in_clear = signals.is_some_and(|s| {
        !s.pii.is_empty() && s.pii_action != Some(routewise_signals::PiiAction::Redact)
    });
    let text = (cache.embedder.is_some() && last.is_some() && !non_text && !pii_in_clear)
        .then(|| super::rules::last_user_text(rest.get("messages")).into_owned());
    Some(Probe {
        keys,
        embedding: signals.and_then(|s| s.last_user_embedding.clone()),
        text,
        guard: None,
        lookup,
        store,
        status: "miss",
    })
}

/// A message content's text: the string, or the text parts joined by newlines (other
/// parts as their JSON).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Looks the probe up; counts the result.
pub fn lookup(gw: &Gateway, probe: &mut Probe) -> Option<Cached> {
    let cache = gw.cache.as_ref()?;
    if !probe.lookup {
        gw.metrics.cache_lookup("bypass");
        return None;
    }
    let now = gw.now_ms();
    let exact = cache
        .index
        .lock()
        .ok()
        .and_then(|mut i| i.get(probe.keys, None, now));
    let hit = match exact {
        Some(h) => Some(h),
        None if probe.text.is_some() => {
            probe.embed(cache);
            let semantic = probe.semantic();
            cache
                .index
                .lock()
                .ok()
                .and_then(|mut i| i.get(probe.keys, semantic.as_ref(), now))
        }
        None => None,
    };
    match hit {
        Some((kind, v)) => {
            probe.status = match kind {
                HitKind::Exact => "hit-exact",
                HitKind::Semantic(_) => "hit-semantic",
            };
            gw.metrics.cache_lookup(probe.status);
            Some(v)
        }
        None => {
            gw.metrics.cache_lookup("miss");
            None
        }
    }
}

/// The stored answer in the shape the request asks for: the body, or a stream replayed
/// from it (`None` when the body cannot be replayed as one).
pub fn replay(hit: &Cached, req: &ChatRequest) -> Option<Answer> {
    super::cascade::buffered_answer(hit.body.clone(), hit.content_type.clone(), req)
}

/// Stores a successful answer for the probe's request.
pub fn store(gw: &Gateway, probe: &mut Probe, answer: Cached) {
    let Some(cache) = gw.cache.as_ref() else {
        return;
    };
    if !probe.store {
        return;
    }
    probe.embed(cache);
    let now = gw.now_ms();
    if let Ok(mut i) = cache.index.lock() {
        i.insert(probe.keys, probe.semantic().as_ref(), answer, now);
    }
}
