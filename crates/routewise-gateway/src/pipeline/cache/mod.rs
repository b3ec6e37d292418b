//! Stage 2c, the response cache (`cache:`): answers a request seen before without calling
//! any model.
//!
//! After the rules and the PII guard ([`super::rules`]), a request is keyed
//! ([`routewise_signals::cache::RequestKeys`]): the scope (the `scope_header`'s value when
//! configured, the requested model, the routes that matched, the request's own policy
//! choices: `routewise` lambda or budget, cascade, latency and energy weights, SLO), every parameter but
//! `stream`, `stream_options` and `user`, the earlier messages, and the last user message
//! (whitespace-normalised). The exact key looks it up first; with `semantic`, the last user
//! message's static embedding then finds the closest guarded entry of the same context at
//! or above the threshold ([`routewise_signals::cache::CacheIndex`]).
//!
//! * A hit is answered at once: the stored body (a stream is replayed from it as one
//!   chunk sequence when the client asked for one), with `x-routewise-cache: hit-exact` or
//!   `hit-semantic`, the model that made the answer in `x-routewise-model`, and a decision
//!   log line with reason `cache` and cost 0.
//! * A miss goes on; a successful answer is stored (a streamed one once complete, put back
//!   together as one `chat.completion` body by [`assemble_stream`]), keyed by the request as
//!   redacted and before restoring, so that with `pii: {action: redact}` a stored answer
//!   holds placeholders, not another request's personal data. A request whose personal data
//!   stays in the clear (`tag`, `restrict`) or whose last message has non-text parts
//!   (images) is looked up by its exact key only: the semantic guards do not see a changed
//!   address or image.
//! * `"routewise": {"cache": false}` skips the cache both ways; `cache-control: no-cache`
//!   skips the lookup, `no-store` the storing. Without the configured `scope_header`, a
//!   request is not cached.
//!
//! The index lives in this instance's memory behind one mutex (held for the lookup or the
//! insertion only: a few microseconds; `cargo bench -p routewise-gateway --bench stage2`),
//! or in Redis, shared by every instance ([`redis`]: `backend: redis`).

use std::sync::Mutex;

use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use routewise_signals::cache::{
    CacheIndex, CacheSettings, Guard, HitKind, Lsh, RequestKeys, Semantic,
};
use routewise_signals::Embedder;
use serde_json::Value;

use crate::config::{CacheBackend, CacheConfig};
use crate::models::ModelId;
use crate::pipeline::rules::SignalTrace;
use crate::request::{CascadeChoice, ChatRequest};
use crate::state::{AppState, Gateway};
use crate::upstream::Answer;

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Cached {
    pub model: ModelId,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

pub mod redis;

/// Where the entries live.
#[derive(Debug)]
enum Backend {
    /// This instance's memory, behind one mutex (boxed: the index is larger than the
    /// Redis variant's pointer).
    Memory(Box<Mutex<CacheIndex<Cached>>>),
    /// Redis, shared by every instance.
    Redis(Box<redis::RedisCache>),
}

/// The cache of one gateway.
#[derive(Debug)]
pub struct ResponseCache {
    backend: Backend,
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
        let backend = match &config.backend {
            CacheBackend::Memory => Backend::Memory(Box::new(Mutex::new(CacheIndex::new(
                settings, dim, LSH_SEED,
            )))),
            CacheBackend::Redis { url, prefix } => Backend::Redis(Box::new(
                redis::RedisCache::new(url, prefix, settings, Lsh::new(dim, LSH_SEED))?,
            )),
        };
        Ok(ResponseCache {
            backend,
            embedder,
            config: config.clone(),
        })
    }

    /// Entries held in memory (`None` for the Redis backend).
    pub fn memory_entries(&self) -> Option<usize> {
        match &self.backend {
            Backend::Memory(i) => i.lock().ok().map(|i| i.len()),
            Backend::Redis(_) => None,
        }
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
    /// Whether an answer to this request may be stored.
    pub fn stores(&self) -> bool {
        self.store
    }

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
    // Borrowed, in key order (the parsed map is sorted): serialised without copying the
    // values (tool definitions can be large).
    let params: std::collections::BTreeMap<&str, &Value> = rest
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "messages" | "stream" | "stream_options" | "user"
            )
        })
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let mut scope = format!(
        "{tenant}\u{1f}{}\u{1f}{route}\u{1f}{}",
        req.model,
        last.unwrap_or(usize::MAX)
    );
    // The request's own policy choices pick the model that answers (and the checks its
    // answer passed): under another lambda, budget, cascade or latency objective the same
    // messages are another question to the cache.
    if req.preference.is_some()
        || req.cascade != CascadeChoice::Config
        || req.mu.is_some()
        || req.nu.is_some()
        || req.slo_ms.is_some()
    {
        use std::fmt::Write as _;
        let _ = write!(
            scope,
            "\u{1f}{:?}|{:?}|{:?}|{:?}|{:?}",
            req.preference, req.cascade, req.mu, req.nu, req.slo_ms
        );
    }
    let keys = RequestKeys::new(
        &scope,
        &serde_json::to_string(&params).unwrap_or_default(),
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

/// Looks the probe up and, when a hit can be answered in the shape the request asks for
/// by a model the caller may use (`allow`: the API key's models, catalog order), returns
/// it; counts the result once (`hit-exact`, `hit-semantic`, `miss`, `error`, `bypass`).
pub async fn answer(
    gw: &Gateway,
    probe: &mut Probe,
    req: &ChatRequest,
    allow: Option<&[bool]>,
) -> Option<(ModelId, Answer)> {
    if !probe.lookup {
        gw.metrics.cache_lookup("bypass");
        return None;
    }
    let (result, hit) = match lookup(gw, probe).await {
        // An answer from a model the caller's key may not use is not served to it.
        Ok(Some((_, c)))
            if allow.is_some_and(|a| !a.get(c.model.index()).copied().unwrap_or(false)) =>
        {
            ("miss", None)
        }
        Ok(Some((kind, c))) => match replay(&c, req) {
            Some(a) => (kind, Some((c.model, a))),
            // A stored body that cannot be replayed as the stream asked for is a miss.
            None => ("miss", None),
        },
        Ok(None) => ("miss", None),
        Err(()) => ("error", None),
    };
    if hit.is_some() {
        probe.status = result;
    }
    gw.metrics.cache_lookup(result);
    hit
}

/// Looks the probe up: the kind of hit and the stored answer, `Ok(None)` for a miss,
/// `Err` when the backend did not answer.
async fn lookup(gw: &Gateway, probe: &mut Probe) -> Result<Option<(&'static str, Cached)>, ()> {
    let Some(cache) = gw.cache.as_ref() else {
        return Ok(None);
    };
    let hit = match &cache.backend {
        Backend::Memory(index) => {
            let now = gw.now_ms();
            let exact = index
                .lock()
                .ok()
                .and_then(|mut i| i.get(probe.keys, None, now));
            match exact {
                Some(h) => Some(h),
                None if probe.text.is_some() => {
                    probe.embed(cache);
                    let semantic = probe.semantic();
                    index
                        .lock()
                        .ok()
                        .and_then(|mut i| i.get(probe.keys, semantic.as_ref(), now))
                }
                None => None,
            }
        }
        Backend::Redis(r) => {
            // One round trip for the exact key and, with `semantic`, two for the buckets
            // and their entries: the embedding is computed up front.
            probe.embed(cache);
            match r.get(probe.keys, probe.semantic().as_ref()).await {
                Ok(Some((kind, stored))) => from_stored(gw, stored).map(|c| (kind, c)),
                Ok(None) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "response cache unavailable; treated as a miss");
                    return Err(());
                }
            }
        }
    };
    Ok(hit.map(|(kind, v)| {
        let status = match kind {
            HitKind::Exact => "hit-exact",
            HitKind::Semantic(_) => "hit-semantic",
        };
        (status, v)
    }))
}

/// The stored answer in the shape the request asks for: the body, or a stream replayed
/// from it (`None` when the body cannot be replayed as one).
pub fn replay(hit: &Cached, req: &ChatRequest) -> Option<Answer> {
    super::cascade::buffered_answer(hit.body.clone(), hit.content_type.clone(), req)
}

/// The largest answer stored (a body, or a stream's bytes).
pub const MAX_STORED_BYTES: usize = 1 << 20;

/// A streamed answer (the server-sent events of `chat.completion.chunk`s, `[DONE]` last)
/// put back together as one `chat.completion` body: the content concatenated from the
/// deltas, the finish reason and the usage. `None` (not stored) for a stream that did not
/// finish, carried an error, has more than one choice, carried no usage (the client did
/// not ask for it: a body without usage would answer later requests that expect it), or
/// carried anything but text (tool calls, a refusal, logprobs, a legacy function call:
/// what a replay could not give back in full).
pub fn assemble_stream(sse: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(sse).ok()?;
    let (mut id, mut model, mut created) = (Value::Null, Value::Null, Value::Null);
    let mut content = String::new();
    let mut finish: Option<String> = None;
    let mut usage = Value::Null;
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).ok()?;
        if chunk.get("error").is_some() {
            return None;
        }
        for (slot, key) in [
            (&mut id, "id"),
            (&mut model, "model"),
            (&mut created, "created"),
        ] {
            if slot.is_null() {
                *slot = chunk.get(key).cloned().unwrap_or(Value::Null);
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = u.clone();
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0
                || choice.get("logprobs").is_some_and(|l| !l.is_null())
            {
                return None;
            }
            let delta = &choice["delta"];
            let plain = delta.as_object().is_none_or(|d| {
                d.iter()
                    .all(|(k, v)| matches!(k.as_str(), "role" | "content") || v.is_null())
            });
            if !plain {
                return None;
            }
            if let Some(t) = delta.get("content").and_then(Value::as_str) {
                content.push_str(t);
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                finish = Some(f.to_string());
            }
        }
    }
    let finish = finish.filter(|_| done && !usage.is_null())?;
    let message = serde_json::json!({"role": "assistant", "content": content});
    let mut body = serde_json::json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    });
    if !usage.is_null() {
        body["usage"] = usage;
    }
    serde_json::to_vec(&body).ok()
}

/// A Redis entry as an answer of this gateway (`None` for a model it does not serve).
fn from_stored(gw: &Gateway, s: redis::Stored) -> Option<Cached> {
    Some(Cached {
        model: gw.upstreams.by_name(&s.model)?,
        content_type: s.content_type.and_then(|c| HeaderValue::from_str(&c).ok()),
        body: Bytes::from(s.body),
    })
}

/// Stores a successful answer for the probe's request (in the background for Redis);
/// bodies over [`MAX_STORED_BYTES`] are not stored.
pub fn store(state: &AppState, probe: &mut Probe, answer: Cached) {
    let Some(cache) = state.cache.as_ref() else {
        return;
    };
    if !probe.store || answer.body.len() > MAX_STORED_BYTES {
        return;
    }
    probe.embed(cache);
    match &cache.backend {
        Backend::Memory(index) => {
            let now = state.now_ms();
            if let Ok(mut i) = index.lock() {
                i.insert(probe.keys, probe.semantic().as_ref(), answer, now);
            }
        }
        Backend::Redis(_) => {
            let stored = redis::Stored {
                model: state.upstreams.get(answer.model).name.clone(),
                content_type: answer
                    .content_type
                    .and_then(|c| c.to_str().ok().map(str::to_string)),
                body: answer.body.to_vec(),
                embedding: probe.embedding.clone().unwrap_or_default(),
                guard: probe.guard.clone(),
            };
            let keys = probe.keys;
            let state = state.clone();
            tokio::spawn(async move {
                if let Some(Backend::Redis(r)) = state.cache.as_ref().map(|c| &c.backend) {
                    if let Err(e) = r.insert(keys, &stored).await {
                        tracing::debug!(error = %e, "response cache: an answer was not stored");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(chunks: &[Value]) -> Vec<u8> {
        let mut out = String::new();
        for c in chunks {
            out.push_str(&format!("data: {c}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        out.into_bytes()
    }

    #[test]
    fn a_stream_is_put_back_together() {
        let s = sse(&[
            serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]}),
            serde_json::json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}),
            serde_json::json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        ]);
        let body: Value = serde_json::from_slice(&assemble_stream(&s).unwrap()).unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["total_tokens"], 5);
        assert_eq!(
            (body["id"].as_str(), body["model"].as_str()),
            (Some("c1"), Some("m"))
        );
        // A stored stream replays as a stream again.
        let bytes = serde_json::to_vec(&body).unwrap();
        let again = crate::pipeline::cascade::replay_as_stream(&bytes, false).unwrap();
        assert!(String::from_utf8_lossy(&again).contains("Hello"));
    }

    #[test]
    fn streams_a_replay_could_not_give_back_in_full_are_not_stored() {
        let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        let tools = sse(&[
            serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1",
                "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}]}),
            usage.clone(),
        ]);
        assert!(assemble_stream(&tools).is_none(), "tool calls");
        let refusal = sse(&[
            serde_json::json!({"choices": [{"index": 0, "delta": {"refusal": "no"}, "finish_reason": "stop"}]}),
            usage.clone(),
        ]);
        assert!(assemble_stream(&refusal).is_none(), "a refusal");
        let logprobs = sse(&[
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": []}, "finish_reason": "stop"}]}),
            usage,
        ]);
        assert!(assemble_stream(&logprobs).is_none(), "logprobs");
        let no_usage = sse(&[
            serde_json::json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}),
        ]);
        assert!(assemble_stream(&no_usage).is_none(), "no usage");
    }

    #[test]
    fn unfinished_failed_or_multi_choice_streams_are_not_stored() {
        let part = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":\"stop\"}]}\n\n";
        assert!(assemble_stream(part.as_bytes()).is_none(), "no [DONE]");
        let err = format!("{part}data: {{\"error\":{{\"message\":\"boom\"}}}}\n\ndata: [DONE]\n\n");
        assert!(assemble_stream(err.as_bytes()).is_none());
        let two = sse(&[
            serde_json::json!({"choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": "stop"}]}),
        ]);
        assert!(assemble_stream(&two).is_none());
    }
}
