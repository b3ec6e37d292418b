//! The gateway's model table: one [`Upstream`] record per served model, indexed by
//! [`ModelId`], the model's index in the deciding router's catalog, so a decision's
//! ranking indexes the table directly. Each record holds everything an attempt needs:
//! the provider (URL and auth parsed once, at config validation), the upstream model
//! name, prices, context window and the model's circuit breaker, and its
//! [`Deployment`]s: where it is served (replicas, or other providers of the same model),
//! each with its provider, quota, concurrency cap, load statistics and breaker.
//!
//! Built by [`ModelTable::build`] from the validated config and the reconciled catalog
//! (`routewise_router::Catalog::reconcile`), which already checked that the router and
//! the config agree.

use axum::http::{HeaderName, HeaderValue};
use routewise_online::budget::{Buckets, Rate, RateLimited};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use routewise_router::Reconciled;

use crate::config::{Config, DeploymentConfig, Issue, ModelConfig, Price};
use crate::pipeline::attempts::cooldown::Breaker;
use crate::pipeline::attempts::deploy::Load;
use crate::pipeline::attempts::fallback::ContextWindows;
use crate::upstream::anthropic::{self, Anthropic};
use crate::upstream::client::{Endpoint, HttpClient};
use crate::upstream::openai::OpenAi;
use crate::upstream::redact::Redactor;
use crate::upstream::replay::{Replay, ReplayProvider};
use crate::upstream::{Provider, ProviderKind};

/// A served model: its index in the router's catalog and in the [`ModelTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(u32);

impl ModelId {
    /// The catalog index.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn from_index(i: usize) -> ModelId {
        ModelId(u32::try_from(i).unwrap_or(u32::MAX))
    }
}

/// One served model at run time.
#[derive(Debug)]
pub struct Upstream {
    pub id: ModelId,
    pub name: String,
    pub kind: ProviderKind,
    /// Configured prices, else the router catalog's.
    pub price: Price,
    pub context_window: Option<u64>,
    /// Watt-hours per million tokens (prompt and output), when configured.
    pub energy_wh_per_mtok: Option<f64>,
    /// The model's breaker: consecutive failures over all its deployments. Shared with the
    /// next configuration a reload installs while the model keeps its name and
    /// deployments and `cooldown:` is unchanged ([`ModelTable::carry_from`]).
    pub breaker: Arc<Breaker>,
    /// Where it is served, in the config's order (at least one).
    pub deployments: Vec<Deployment>,
    /// Woken when a slot at one of its deployments frees (requests queued for the model
    /// wait on it); kept across a reload that keeps the model.
    pub freed: Arc<tokio::sync::Notify>,
    /// Requests waiting for a slot at this model (queued under `dispatch.spill: false`, or
    /// placed in its queue by [`crate::pipeline::balance`]); kept across a reload like
    /// `freed`.
    pub waiting: Arc<AtomicU32>,
}

/// One place a model is served.
#[derive(Debug)]
pub struct Deployment {
    /// Its name in metrics and logs (unique within the model).
    pub name: String,
    pub provider: Arc<dyn Provider>,
    /// The model name sent there.
    pub upstream_model: String,
    /// Where it is served (`base_url`; empty for `replay`).
    pub base_url: String,
    /// The provider's quota there (`limits`), kept in this instance (and across a reload
    /// that keeps the deployment and its limits).
    pub quota: Option<Arc<Quota>>,
    /// Calls in flight at most (`None`: no cap).
    pub max_concurrency: Option<u32>,
    pub weight: f64,
    /// Calls in flight and the latency and error averages; kept across a reload that
    /// keeps the deployment (its calls in flight hold it).
    pub load: Arc<Load>,
    /// This deployment's own breaker (which deployment of the model to try).
    pub breaker: Arc<Breaker>,
}

impl Upstream {
    /// USD cost of a call with this usage.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.price.input_per_mtok
            + completion_tokens as f64 * self.price.output_per_mtok)
            / 1e6
    }

    /// Watt-hours of a call with this usage, when the model's energy is configured.
    pub fn energy_wh(&self, prompt_tokens: u64, completion_tokens: u64) -> Option<f64> {
        self.energy_wh_per_mtok
            .map(|e| (prompt_tokens + completion_tokens) as f64 * e / 1e6)
    }

    /// The expected latency in seconds of a call producing `output_tokens` at the
    /// deployment that would take it (the fastest with room, else the fastest), once any
    /// was observed.
    pub fn expected_latency_s(&self, output_tokens: u64) -> Option<f64> {
        let fastest = |room: bool| {
            self.deployments
                .iter()
                .filter(|d| !room || d.load.has_room(d.max_concurrency))
                .filter_map(|d| d.load.expected_ms(output_tokens))
                .min_by(f64::total_cmp)
        };
        fastest(true)
            .or_else(|| fastest(false))
            .map(|ms| ms / 1000.0)
    }

    /// Takes a call slot at deployment `index` (never past its `max_concurrency`),
    /// released when the slot drops.
    pub fn try_slot(&self, index: usize) -> Option<Slot> {
        let d = self.deployments.get(index)?;
        d.load.try_acquire(d.max_concurrency).then(|| Slot {
            load: Arc::clone(&d.load),
            freed: Arc::clone(&self.freed),
            model: self.id,
            deployment: index,
            call: None,
        })
    }

    /// How many requests can wait in this model's queue and still start within
    /// `wait_ms`: over its capped deployments that take calls (a deployment's breaker
    /// counts when the model has several) and whose latency was observed,
    /// `max_concurrency * wait_ms / expected latency` of a call producing `output_tokens`
    /// (0 when none qualifies; a model with an uncapped deployment never queues). An
    /// estimate: requests that were not placed (below `near`, named models) take freed
    /// slots too.
    pub fn queue_places(&self, wait_ms: u64, output_tokens: u64, now_ms: u64) -> usize {
        let mut places = 0.0;
        for d in &self.deployments {
            if self.deployments.len() > 1 && d.breaker.is_open(now_ms) {
                continue;
            }
            let Some(cap) = d.max_concurrency else {
                return 0;
            };
            if let Some(ms) = d.load.expected_ms(output_tokens).filter(|&ms| ms > 0.0) {
                places += f64::from(cap) * wait_ms as f64 / ms;
            }
        }
        places.floor() as usize
    }

    /// Counts a request waiting in this model's queue until the guard drops.
    pub fn wait_in_queue(&self) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(Arc::clone(&self.waiting))
    }

    /// Requests waiting in this model's queue.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Acquire) as usize
    }

    /// Whether some deployment has a free slot now.
    pub fn has_room(&self) -> bool {
        self.deployments
            .iter()
            .any(|d| d.load.has_room(d.max_concurrency))
    }
}

/// A request counted in its model's queue ([`Upstream::wait_in_queue`]).
#[derive(Debug)]
pub struct Waiting(Arc<AtomicU32>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call slot at a deployment, held from the attempt until its answer ends; dropping it
/// frees the slot and wakes the requests queued for the model (each looks for room
/// itself).
#[derive(Debug)]
pub struct Slot {
    load: Arc<Load>,
    freed: Arc<tokio::sync::Notify>,
    pub model: ModelId,
    /// The deployment's index in its model's list.
    pub deployment: usize,
    /// When the call started, its time to the response head (ms) and whether it streams.
    call: Option<(Instant, f64, bool)>,
}

impl Slot {
    /// The slot of a call that started at `at`, whose head came after `head_ms`.
    pub fn started(mut self, at: Instant, head_ms: f64, streamed: bool) -> Slot {
        self.call = Some((at, head_ms, streamed));
        self
    }

    /// Records a complete answer of `output_tokens` in the deployment's time per token.
    pub fn complete(&self, output_tokens: Option<u64>) {
        let (Some((at, head_ms, streamed)), Some(n)) = (self.call, output_tokens) else {
            return;
        };
        let ms = if streamed {
            at.elapsed().as_secs_f64() * 1000.0 - head_ms
        } else {
            head_ms
        };
        self.load.observe_generation(ms, n, !streamed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.load.release();
        // Everyone queued looks again (each checks for room itself).
        self.freed.notify_waiters();
    }
}

/// A model's quota as token buckets ([`routewise_online::budget::Buckets`]): this
/// instance's own calls, corrected down by the `x-ratelimit-remaining-*` headers the
/// upstream sends.
#[derive(Debug)]
pub struct Quota {
    rpm: Option<u64>,
    tpm: Option<u64>,
    buckets: std::sync::Mutex<Buckets>,
}

impl Quota {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> Quota {
        Quota {
            rpm,
            tpm,
            buckets: std::sync::Mutex::new(Buckets::default()),
        }
    }

    fn rate(&self, tokens: u64) -> Rate {
        Rate {
            rpm: self.rpm,
            tpm: self.tpm,
            tokens,
        }
    }

    /// Takes one call of `tokens` at `now_ms` (a monotonic clock), or says when one fits.
    pub fn take(&self, tokens: u64, now_ms: u64) -> Result<(), RateLimited> {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(&self.rate(tokens), now_ms)
    }

    /// Undoes a [`Quota::take`] of `tokens` for a call that was not made.
    pub fn give_back(&self, tokens: u64) {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .give_back(&self.rate(tokens), tokens);
    }

    /// Lowers the buckets to what the upstream says remains (`x-ratelimit-remaining-requests`,
    /// `x-ratelimit-remaining-tokens`).
    pub fn observe(&self, headers: &[(HeaderName, HeaderValue)], now_ms: u64) {
        let read = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .and_then(|(_, v)| v.to_str().ok()?.trim().parse::<f64>().ok())
        };
        let (requests, tokens) = (
            read("x-ratelimit-remaining-requests"),
            read("x-ratelimit-remaining-tokens"),
        );
        if requests.is_none() && tokens.is_none() {
            return;
        }
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .lower_to(&self.rate(0), now_ms, requests, tokens);
    }
}

/// Every served model, in catalog order.
#[derive(Debug)]
pub struct ModelTable {
    models: Vec<Upstream>,
    by_name: HashMap<String, ModelId>,
    /// Ids in the config's order (listings).
    config_order: Vec<ModelId>,
}

impl ModelTable {
    /// Builds the table: the catalog of `reconciled` decides the order, `config` says how
    /// each model is reached. `replay` answers the `replay` models (required if any).
    pub fn build(
        config: &Config,
        reconciled: &Reconciled,
        client: &HttpClient,
        replay: Option<Arc<Replay>>,
    ) -> Result<ModelTable, Vec<Issue>> {
        let mut issues = Vec::new();
        let mut models = Vec::with_capacity(reconciled.catalog.len());
        for (ci, info) in reconciled.catalog.models.iter().enumerate() {
            let Some(&entry) = reconciled.entry_of.get(ci) else {
                continue;
            };
            let Some(m) = config.models.get(entry) else {
                continue;
            };
            let breaker = || {
                Arc::new(Breaker::new(
                    config.cooldown.failures,
                    (config.cooldown.seconds * 1000.0) as u64,
                ))
            };
            let mut deployments = Vec::with_capacity(m.deployments.len());
            for d in &m.deployments {
                match provider(m, d, client, replay.as_ref()) {
                    Ok(provider) => deployments.push(Deployment {
                        name: d.name.clone(),
                        provider,
                        upstream_model: d.upstream_model.clone(),
                        base_url: d.base_url.clone(),
                        quota: d.limits.map(|l| Arc::new(Quota::new(l.rpm, l.tpm))),
                        max_concurrency: d.max_concurrency,
                        weight: d.weight,
                        load: Arc::new(Load::default()),
                        breaker: breaker(),
                    }),
                    Err(message) => {
                        let issue = Issue {
                            path: format!("models[{entry}].provider"),
                            message,
                        };
                        // A model-level problem is said once, not per deployment.
                        if issues.last() != Some(&issue) {
                            issues.push(issue);
                        }
                    }
                }
            }
            if deployments.len() != m.deployments.len() {
                continue;
            }
            models.push(Upstream {
                id: ModelId::from_index(ci),
                name: m.name.clone(),
                kind: m.provider,
                deployments,
                price: m.price.unwrap_or(Price {
                    input_per_mtok: info.input_per_mtok,
                    output_per_mtok: info.output_per_mtok,
                    cached_input_per_mtok: None,
                }),
                context_window: m.context_window,
                energy_wh_per_mtok: m.energy_wh_per_mtok,
                breaker: breaker(),
                freed: Arc::new(tokio::sync::Notify::new()),
                waiting: Arc::new(AtomicU32::new(0)),
            });
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let by_name: HashMap<String, ModelId> =
            models.iter().map(|u| (u.name.clone(), u.id)).collect();
        let config_order = config
            .models
            .iter()
            .filter_map(|m| by_name.get(&m.name).copied())
            .collect();
        Ok(ModelTable {
            models,
            by_name,
            config_order,
        })
    }

    /// Takes over the run-time state of `old` (the configuration a reload replaces) for
    /// every deployment kept by model and deployment name at the same place (provider,
    /// `base_url`, upstream model): its calls in flight and latency averages, its quota
    /// buckets when its limits are unchanged, and, with `breakers` (an unchanged
    /// `cooldown:`), its circuit breaker; the model's breaker too when all its deployments
    /// are kept. So a reload neither forgets failures, nor hands out a fresh quota, nor
    /// lets a deployment past its `max_concurrency`. A deployment moved elsewhere starts
    /// afresh (a reload that fixes a wrong URL does not leave it cooling down).
    pub fn carry_from(&mut self, old: &ModelTable, breakers: bool) {
        for u in &mut self.models {
            let Some(prev) = old.by_name(&u.name).map(|id| old.get(id)) else {
                continue;
            };
            if prev.kind != u.kind {
                continue;
            }
            u.freed = Arc::clone(&prev.freed);
            u.waiting = Arc::clone(&prev.waiting);
            let mut all_kept = prev.deployments.len() == u.deployments.len();
            for d in &mut u.deployments {
                let Some(p) = prev.deployments.iter().find(|p| {
                    (&p.name, &p.base_url, &p.upstream_model)
                        == (&d.name, &d.base_url, &d.upstream_model)
                }) else {
                    all_kept = false;
                    continue;
                };
                d.load = Arc::clone(&p.load);
                if breakers {
                    d.breaker = Arc::clone(&p.breaker);
                }
                if let (Some(q), Some(pq)) = (&d.quota, &p.quota) {
                    if (q.rpm, q.tpm) == (pq.rpm, pq.tpm) {
                        d.quota = Some(Arc::clone(pq));
                    }
                }
            }
            if breakers && all_kept {
                u.breaker = Arc::clone(&prev.breaker);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model with this id.
    pub fn get(&self, id: ModelId) -> &Upstream {
        &self.models[id.index()]
    }

    /// The model a catalog index names, if served.
    pub fn at(&self, catalog_index: usize) -> Option<&Upstream> {
        self.models.get(catalog_index)
    }

    /// The model called `name`, if served.
    pub fn by_name(&self, name: &str) -> Option<ModelId> {
        self.by_name.get(name).copied()
    }

    /// Whether `name` is served.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Every model, in catalog order.
    pub fn iter(&self) -> impl Iterator<Item = &Upstream> {
        self.models.iter()
    }

    /// Every model, in the config's order.
    pub fn in_config_order(&self) -> impl Iterator<Item = &Upstream> {
        self.config_order.iter().map(|&id| self.get(id))
    }

    /// Model names, in catalog order (metrics labels).
    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|u| u.name.clone()).collect()
    }
}

impl ContextWindows for ModelTable {
    fn window(&self, model: usize) -> Option<u64> {
        self.models.get(model).and_then(|u| u.context_window)
    }
}

/// The provider that reaches `m` at deployment `d`.
fn provider(
    m: &ModelConfig,
    d: &DeploymentConfig,
    client: &HttpClient,
    replay: Option<&Arc<Replay>>,
) -> Result<Arc<dyn Provider>, String> {
    let redactor = || Redactor::new(d.api_key.as_ref().map(|k| k.expose()));
    let endpoint = || {
        d.endpoint
            .as_ref()
            .ok_or_else(|| format!("`{}` has no endpoint", m.name))
            .and_then(Endpoint::new)
    };
    Ok(match m.provider {
        ProviderKind::OpenAi => Arc::new(OpenAi::new(
            client.clone(),
            endpoint()?,
            d.auth.clone(),
            redactor(),
        )),
        ProviderKind::Anthropic => {
            let version = m
                .anthropic_version
                .as_deref()
                .unwrap_or(anthropic::DEFAULT_VERSION);
            let version = HeaderValue::from_str(version)
                .map_err(|_| format!("anthropic_version `{version}` is not a header value"))?;
            Arc::new(Anthropic::new(
                client.clone(),
                endpoint()?,
                d.auth.clone(),
                version,
                m.max_tokens.unwrap_or(anthropic::DEFAULT_MAX_TOKENS),
                redactor(),
            ))
        }
        ProviderKind::Replay => match replay.filter(|r| r.knows(&m.name)) {
            Some(r) => Arc::new(ReplayProvider::new(Arc::clone(r))),
            None => {
                return Err(format!(
                    "the replay provider has no recorded outcomes for `{}`",
                    m.name
                ))
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refuses_past_its_rate_and_follows_the_upstreams_remaining_count() {
        let q = Quota::new(Some(10), None);
        for _ in 0..10 {
            assert!(q.take(5, 0).is_ok());
        }
        let e = q.take(5, 0).unwrap_err();
        assert_eq!((e.limit, e.retry_after_ms), ("rpm", 6_000));
        // Six seconds later one call fits again; the upstream then says none remain.
        assert!(q.take(5, 6_000).is_ok());
        let q = Quota::new(Some(10), Some(1_000));
        assert!(q.take(5, 0).is_ok());
        q.observe(
            &[(
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from_static("0"),
            )],
            0,
        );
        assert_eq!(q.take(5, 0).unwrap_err().limit, "rpm");
        q.observe(
            &[(
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderValue::from_static("3"),
            )],
            0,
        );
        // Six seconds on: one request back, 3 + 100 tokens, short of 200.
        assert_eq!(q.take(200, 6_000).unwrap_err().limit, "tpm");
    }
}
