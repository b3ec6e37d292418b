//! Stage 0, before anything else reads the request: `auth: {mode: keys}`. The caller's
//! `Authorization: Bearer rw-...` key ([`routewise_online::keys`]) is looked up by its id
//! and checked (hash compared in constant time, then revocation and expiry); a refusal
//! is a 401 in OpenAI's shape (`invalid_api_key`), and a model the key may not use a 403
//! (`model_not_allowed`). A key's allowed models narrow the pool the router ranks, its
//! policy is the default for its requests, and its team and tags are what the `team:`
//! and `tag:` rule conditions read.
//!
//! Records are cached in memory ([`Keys`]). With the local store this instance is the
//! only writer (the `routewise keys` command goes through `/admin/keys` while a gateway
//! holds the file), so every key is loaded at start and a miss is an unknown key. With
//! Redis, a record is read on first use and trusted for `auth.cache_ttl_s` (an unknown id
//! too, so random keys do not each cost a round trip): a revocation through another
//! instance takes effect within that. A key not yet cached while Redis is unreachable is
//! refused with 503 (fail closed). A cached key is still accepted, and then its calls'
//! reservations ([`super::budget`]) need Redis too: a key with a budget or a rate limit
//! gets 503, a key with neither is served with its spend untracked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use routewise_online::budget::Period;
use routewise_online::keys::{self, KeyRecord, KeySpec, NewKey};
use routewise_online::service::now_ms;
use routewise_online::store::budget::{BudgetStore, LocalBudgets, FLUSH_EVERY_MS};
use routewise_online::store::keys::{self as store_keys, KeyOpError};
use routewise_online::store::open::Budgets;
use routewise_online::{KeyStore, StoreError};
use routewise_router::Policy;

use crate::config::AuthMode;
use crate::error::ApiError;
use crate::request::ChatRequest;
use crate::state::Gateway;

/// Most cached records (past it the cache is emptied and refilled on demand).
const MAX_CACHED: usize = 100_000;

/// The authenticated caller, as the later stages use it.
#[derive(Debug)]
pub struct Caller {
    pub id: String,
    pub name: String,
    /// Models the key may use, in catalog order (`None`: all).
    pub allow: Option<Vec<bool>>,
    pub policy: Option<Policy>,
    pub team: Option<String>,
    pub tags: Vec<(String, String)>,
    /// The spend cap per period ([`super::budget`]); `None`: no cap (spend is still
    /// tracked, per month).
    pub budget: Option<(f64, Period)>,
    /// Requests and tokens per minute.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The budget is paced ([`super::pace`]).
    pub pace: bool,
}

struct Entry {
    record: Option<KeyRecord>,
    /// The record resolved against configuration `generation` (a reload renumbers the
    /// models, so a caller made for another generation is made again).
    caller: Option<Arc<Caller>>,
    generation: u64,
    fetched: Instant,
}

/// The key store and this instance's cache of it, and the keys' budgets.
pub struct Keys {
    store: Arc<dyn KeyStore>,
    budgets: Arc<dyn BudgetStore>,
    /// The local ledger, to flush at shutdown.
    local: Option<Arc<LocalBudgets>>,
    /// Reservations open or settling (a shutdown waits for them).
    pending: Arc<AtomicUsize>,
    /// Writes local spend to disk every [`FLUSH_EVERY_MS`] (aborted on drop).
    flusher: Option<tokio::task::JoinHandle<()>>,
    /// How long a cached record is trusted (`None`: for ever; this instance is the
    /// store's only writer).
    ttl: Option<Duration>,
    cache: Mutex<HashMap<String, Arc<Entry>>>,
    /// The paced keys' controllers ([`super::pace`]).
    pub pacers: super::pace::Pacers,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("store", &self.store.kind())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Keys {
    /// Opens the keys of `gw`'s config; with the local store, loads them all and starts
    /// flushing the budgets' spend.
    pub async fn open(
        store: Arc<dyn KeyStore>,
        budgets: Budgets,
        gw: &Gateway,
    ) -> Result<Keys, StoreError> {
        let local = store.kind() == "local";
        let (flusher, ledger) = match &budgets {
            Budgets::Local(l) => (
                Some(tokio::spawn(flush_every(Arc::downgrade(l)))),
                Some(Arc::clone(l)),
            ),
            Budgets::Redis(_) => (None, None),
        };
        let keys = Keys {
            store,
            budgets: budgets.store(),
            local: ledger,
            pending: Arc::new(AtomicUsize::new(0)),
            flusher,
            ttl: (!local).then(|| Duration::from_millis(gw.config.auth.cache_ttl_ms)),
            cache: Mutex::new(HashMap::new()),
            pacers: super::pace::Pacers::default(),
        };
        if local {
            for r in keys.store.list_keys().await? {
                let id = r.id.clone();
                keys.remember(gw, &id, Some(r));
            }
        }
        Ok(keys)
    }

    fn remember(&self, gw: &Gateway, id: &str, record: Option<KeyRecord>) -> Arc<Entry> {
        let caller = record.as_ref().map(|r| Arc::new(caller(gw, r)));
        let entry = Arc::new(Entry {
            record,
            caller,
            generation: gw.generation,
            fetched: Instant::now(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED && self.ttl.is_some() {
            cache.clear();
        }
        cache.insert(id.to_string(), Arc::clone(&entry));
        entry
    }

    async fn entry(&self, gw: &Gateway, id: &str) -> Result<Arc<Entry>, StoreError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let cached = match cached {
            Some(e) if e.generation != gw.generation => {
                let fresh = Arc::new(Entry {
                    record: e.record.clone(),
                    caller: e.record.as_ref().map(|r| Arc::new(caller(gw, r))),
                    generation: gw.generation,
                    fetched: e.fetched,
                });
                // Stored only over the entry it was made from, and only for a newer
                // configuration: an update or revocation written meanwhile is kept.
                if gw.generation > e.generation {
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.get(id).is_some_and(|c| Arc::ptr_eq(c, &e)) {
                        cache.insert(id.to_string(), Arc::clone(&fresh));
                    }
                }
                Some(fresh)
            }
            other => other,
        };
        match (&cached, self.ttl) {
            (Some(e), None) => return Ok(Arc::clone(e)),
            (Some(e), Some(ttl)) if e.fetched.elapsed() < ttl => return Ok(Arc::clone(e)),
            (None, None) => {
                return Ok(Arc::new(Entry {
                    record: None,
                    caller: None,
                    generation: gw.generation,
                    fetched: Instant::now(),
                }))
            }
            _ => {}
        }
        match self.store.get_key(id).await {
            Ok(record) => Ok(self.remember(gw, id, record)),
            // The store is down: a record this instance has read stays in use, stale.
            Err(e) => cached.ok_or(e),
        }
    }

    /// Creates a key; returns it (the only time the secret exists) and its record.
    pub async fn create(&self, gw: &Gateway, spec: &KeySpec) -> Result<NewKey, KeyOpError> {
        let new = store_keys::create_key(&*self.store, spec, now_ms(), &model_names(gw)).await?;
        self.remember(gw, &new.record.id, Some(new.record.clone()));
        Ok(new)
    }

    /// Applies `spec` to key `id`.
    pub async fn update(
        &self,
        gw: &Gateway,
        id: &str,
        spec: &KeySpec,
    ) -> Result<KeyRecord, KeyOpError> {
        let r = store_keys::update_key(&*self.store, id, spec, now_ms(), &model_names(gw)).await?;
        self.remember(gw, id, Some(r.clone()));
        Ok(r)
    }

    /// Revokes key `id` (at once on this instance; within the cache TTL on others).
    pub async fn revoke(&self, gw: &Gateway, id: &str) -> Result<KeyRecord, KeyOpError> {
        let r = store_keys::revoke_key(&*self.store, id, now_ms()).await?;
        self.remember(gw, id, Some(r.clone()));
        Ok(r)
    }

    pub async fn list(&self) -> Result<Vec<KeyRecord>, KeyOpError> {
        Ok(self.store.list_keys().await?)
    }

    /// Where the keys' budgets are kept.
    pub fn budgets(&self) -> Arc<dyn BudgetStore> {
        Arc::clone(&self.budgets)
    }

    /// The count of reservations open or settling ([`super::budget`] keeps it).
    pub fn pending(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.pending)
    }

    /// At shutdown: waits up to `limit` for the reservations still settling, then writes
    /// the local spend; whether everything was written.
    pub async fn drain(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.pending.load(Ordering::Acquire) > 0 && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let settled = self.pending.load(Ordering::Acquire) == 0;
        if let Some(l) = &self.local {
            let l = Arc::clone(l);
            match tokio::task::spawn_blocking(move || l.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "key spend could not be written at shutdown");
                    return false;
                }
                Err(_) => return false,
            }
        }
        settled
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        if let Some(f) = self.flusher.take() {
            f.abort();
        }
    }
}

/// Flushes local spend to the state file until the budgets are dropped.
async fn flush_every(budgets: Weak<LocalBudgets>) {
    let mut tick = tokio::time::interval(Duration::from_millis(FLUSH_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = budgets.upgrade() else {
            return;
        };
        match tokio::task::spawn_blocking(move || b.flush()).await {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "key spend could not be written to the state file")
            }
            Err(e) => tracing::warn!(error = %e, "the spend flush task failed"),
            Ok(Ok(_)) => {}
        }
    }
}

/// The configured model names (what a key's `models` may list).
fn model_names(gw: &Gateway) -> Vec<&str> {
    gw.config.models.iter().map(|m| m.name.as_str()).collect()
}

pub(crate) fn caller(gw: &Gateway, r: &KeyRecord) -> Caller {
    let allow = r.models.as_ref().map(|names| {
        let mut allow = vec![false; gw.upstreams.len()];
        for n in names {
            if let Some(m) = gw.upstreams.by_name(n) {
                allow[m.index()] = true;
            }
        }
        allow
    });
    Caller {
        id: r.id.clone(),
        name: r.name.clone(),
        allow,
        // Validated when the key was written; a record edited by hand to a bad policy
        // falls back to the config's.
        policy: r.policy.as_deref().and_then(|p| p.parse().ok()),
        team: r.team.clone(),
        tags: r.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        budget: r.budget_usd.map(|b| (b, r.period.unwrap_or(Period::Month))),
        rpm: r.rpm,
        tpm: r.tpm,
        pace: r.pace && r.budget_usd.is_some(),
    }
}

/// Runs stage 0: `None` in `auth: {mode: open}`.
pub async fn authenticate(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Result<Option<Arc<Caller>>, ApiError> {
    if gw.config.auth.mode == AuthMode::Open {
        return Ok(None);
    }
    let refuse = |why: keys::AuthFailure| {
        gw.metrics.auth_failure(why.label());
        ApiError::Unauthorized(why.to_string())
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .or_else(|| headers.get("api-key"))
        .and_then(|v| v.to_str().ok())
        .map(keys::bearer)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| refuse(keys::AuthFailure::Missing))?;
    let id = keys::key_id(presented).ok_or_else(|| refuse(keys::AuthFailure::Invalid))?;
    let Some(ks) = gw.keys.get() else {
        gw.metrics.auth_failure("store_unavailable");
        return Err(ApiError::AuthUnavailable);
    };
    let entry = ks.entry(gw, id).await.map_err(|e| {
        tracing::warn!(error = %e, "the key store could not be read");
        gw.metrics.auth_failure("store_unavailable");
        ApiError::AuthUnavailable
    })?;
    let (Some(record), Some(caller)) = (&entry.record, &entry.caller) else {
        return Err(refuse(keys::AuthFailure::Invalid));
    };
    keys::verify(presented, record, now_ms()).map_err(refuse)?;
    tracing::Span::current().record("key", caller.id.as_str());
    // A paced key's controller for this period (started on its first request).
    ks.pacers.start(gw, caller, &*ks.budgets).await;
    Ok(Some(Arc::clone(caller)))
}

/// Applies the caller's key to a parsed request: a named model outside its models is a
/// 403; its policy is the default.
pub fn apply(gw: &Gateway, caller: &Caller, req: &mut ChatRequest) -> Result<(), ApiError> {
    let named = (!req.is_auto())
        .then(|| gw.upstreams.by_name(&req.model))
        .flatten();
    if let (Some(allow), Some(m)) = (&caller.allow, named) {
        if !allow.get(m.index()).copied().unwrap_or(false) {
            gw.metrics.auth_failure("forbidden_model");
            return Err(ApiError::Blocked {
                code: "model_not_allowed",
                status: 403,
                message: format!(
                    "the API key `{}` may not use the model `{}`",
                    caller.name,
                    gw.upstreams.get(m).name
                ),
                route: None,
            });
        }
    }
    if req.preference.is_none() {
        req.preference = caller.policy;
    }
    // A paced key routes with its controller's lambda, whatever the request asks.
    if let Some(p) = gw.keys.get().and_then(|k| k.pacers.current(gw, caller)) {
        req.preference = Some(Policy::Lambda(p.lambda()));
    }
    // A capped key's calls are held to the output their reservations cover: at most
    // `reserve_output_tokens`, and no more than the smallest configured context window of
    // the models it may use leaves after the prompt (a larger cap would exclude them, or
    // get a 400 from a server that checks it).
    if caller.budget.is_some() {
        let room = gw
            .upstreams
            .iter()
            .filter(|u| {
                caller
                    .allow
                    .as_ref()
                    .is_none_or(|a| a.get(u.id.index()).copied().unwrap_or(false))
            })
            .filter_map(|u| u.context_window)
            .map(|w| w.saturating_sub(req.prompt_tokens))
            .min();
        let cap = room.map_or(gw.config.auth.reserve_output_tokens, |r| {
            gw.config.auth.reserve_output_tokens.min(r)
        });
        super::budget::cap_output(req, cap.max(1));
    }
    // A stream's spend is settled from its usage: ask for it, and keep it from a client
    // that did not.
    if req.stream && !req.include_usage {
        let opts = req
            .rest_mut()
            .entry("stream_options")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(o) = opts.as_object_mut() {
            o.insert("include_usage".into(), true.into());
            req.strip_usage = true;
        }
    }
    Ok(())
}
