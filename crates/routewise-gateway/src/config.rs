//! Gateway configuration: YAML in, a validated [`Config`] out, in two phases.
//!
//! 1. The file is read as a YAML tree; environment overrides are applied to the tree.
//! 2. Each section is deserialised into raw serde structs (`deny_unknown_fields`) and then
//!    checked (URLs, ranges, uniqueness, environment variables for keys). Every problem is
//!    collected, not just the first, and names the file and the field path, e.g.
//!    `gateway.yaml: models[2].base_url: relative URL without a base`.
//!
//! ```yaml
//! listen: 127.0.0.1:8080
//! router:
//!   artifact: router.rw          # optional; relative to this file; default: the embedded demo router
//!   policy: {lambda: 0.5}        # or {budget_usd: 0.002}; default {lambda: 0}
//!   cascade: {tier: [a, b], min_agree: 2, extractor: choice}   # optional (see below)
//!   exploration: {epsilon: 0.02}  # optional: epsilon-greedy, logged propensities (see below)
//!   mu: 0.0                      # utility per second of expected latency (lambda policies)
//!   nu: 0.0                      # utility per Wh of expected energy (lambda policies)
//! models:
//!   - name: gpt-4-1106-preview
//!     provider: openai           # openai (any OpenAI-compatible upstream), anthropic, or replay (demo)
//!     base_url: http://127.0.0.1:9001/v1
//!     api_key_env: OPENAI_API_KEY
//!     upstream_model: gpt-4-1106-preview
//!     price: {input_per_mtok: 10.0, output_per_mtok: 30.0, cached_input_per_mtok: 5.0}  # cached: optional
//!     context_window: 128000
//!     max_tokens: 4096           # anthropic: the output cap sent when a request gives none
//!     anthropic_version: 2023-06-01  # anthropic: the API version header
//!     quality_tier: 3            # optional: routes' `min_tier`, and `router.mode: rules`
//!     private: false             # optional: may receive personal data (`pii: {action: restrict}`)
//!     limits: {rpm: 500, tpm: 200000}  # optional: the provider's quota, kept below (see `models.rs`)
//!     max_concurrency: 16        # optional: calls in flight at most
//!     energy_wh_per_mtok: 2.5    # optional: energy per million tokens (weighed by router.nu)
//!   - name: llama-3-70b          # several deployments (replicas, or other providers of the model):
//!     deployments:               # instead of base_url / api_key_env / limits / max_concurrency
//!       - {name: gpu-a, base_url: http://10.0.0.1:8000/v1, max_concurrency: 8, weight: 1}
//!       - {name: hosted, base_url: https://api.example.com/v1, api_key_env: HOSTED_KEY,
//!          upstream_model: meta-llama/Llama-3-70b, limits: {rpm: 600}, weight: 0.5}
//! limits: {max_body_bytes: 4194304, request_timeout_ms: 60000, max_attempts: 3, connect_timeout_ms: 5000,
//!          header_timeout_ms: 10000, body_timeout_ms: 30000, idle_timeout_ms: 60000,
//!          max_connections: 16384, max_connections_per_ip: 1024, max_in_flight: 4096,
//!          shutdown_grace_ms: 10000, trusted_proxies: [10.0.0.0/8]}
//! cooldown: {failures: 3, seconds: 30}
//! log: {decisions: {top_k: 3, sample: 1.0, queue: 8192, prompt: false}}  # the decision log (ROUTEWISE_LOG=warn: off)
//! bandit: {alpha: 0.1, lambda: 0.0}   # optional: learn online from POST /v1/feedback
//! state: {path: routewise-state.redb} # optional; or {redis_url: redis://127.0.0.1:6379}
//! shadow: [{name: next, artifact: candidate.rw, policy: {lambda: 5}, sample: 1.0,   # optional (see below)
//!           execute: {sample: 0.01, max_usd_per_day: 5}}]           # optional
//! routes: [{name: code, when: {keywords: [python]}, then: {models: [a, b]}}]   # optional (see below)
//! pii: {detect: [email, card, iban, phone, ssn, ip, secret], action: redact, restore: true}  # optional
//! auth: {mode: keys, cache_ttl_s: 5, reserve_output_tokens: 4096}  # optional; virtual keys (`routewise keys`), in `state`
//! cache: {exact: true, semantic: {threshold: 0.92, guards: true}, ttl_s: 3600,               # optional
//!         max_entries: 10000, backend: memory, scope_header: x-tenant}
//!         # or backend: redis, redis_url: redis://127.0.0.1:6379, prefix: routewise:cache
//! affinity: {ttl_s: 3600, switch_margin: 0.02, max_conversations: 100000}  # optional (see below)
//!           # or backend: redis, redis_url: redis://127.0.0.1:6379, prefix: routewise:affinity
//! dispatch: {spill: true, queue_ms: 1000,   # when a model's deployments are all full
//!           balance: {solver: sinkhorn, window_ms: 2, max_batch: 64, near: 0.75,  # optional
//!                     queue_price: 0.02}}
//! ```
//!
//! `routes` is the ordered rule list, compiled here by `routewise_signals::RuleSet` against
//! the configured models (a bad regex, an unknown model, a route that leaves no model, an
//! action beside `block` are errors at their path, e.g. `routes[1].then.models[0]`); `pii`
//! sets the detectors and the default action (`block | redact | restrict | tag`; `restrict`
//! needs a model with `private: true`); `cache` the response cache
//! ([`crate::pipeline::cache`]); `affinity` keeps a conversation on its model
//! ([`crate::pipeline::affinity`]); `dispatch` what a request does when every deployment of
//! its model is at `max_concurrency` (pass it over for the next model in the ranking, or
//! wait; at most `queue_ms` in all, see [`crate::pipeline::attempts`]). `router.mode: rules` routes without an artifact: every
//! model needs a `price`, and `quality_tier` orders unmatched requests.
//!
//! `shadow` lists shadow routers: artifacts (relative to this file) that decide every
//! routed request beside the live router, off the request path; their choices are logged
//! and compared ([`crate::pipeline::shadow`]), and with `execute` a sample of them is also
//! sent upstream (never to the client) within a daily budget.
//!
//! A hot reload ([`crate::reload`]) applies everything here except what is read once at
//! start (`listen`, `state`, `auth`, `log`, `bandit`, the connection limits), which it
//! refuses to change, naming the paths ([`crate::reload::fixed_at_start`]).
//!
//! `bandit` (absent = off, `bandit: {}` = on with the defaults of
//! [`routewise_online::BanditConfig`]) makes `model: auto` requests use the online router
//! and enables `POST /v1/feedback`; `state` ([`routewise_online::StateConfig`]) says where
//! its decisions, feedback log and statistics live: a local redb file (relative to this
//! file) unless `redis_url` is set. Both reject unknown keys.
//!
//! Environment overrides: `ROUTEWISE_<PATH>=value`, where PATH is the key path upper-cased
//! with `__` between levels and list indices as numbers, e.g. `ROUTEWISE_LISTEN`,
//! `ROUTEWISE_ROUTER__POLICY__LAMBDA`, `ROUTEWISE_LIMITS__MAX_ATTEMPTS`,
//! `ROUTEWISE_MODELS__0__BASE_URL`. Values are parsed as YAML scalars. Setting one of
//! `ROUTER__POLICY__LAMBDA` / `ROUTER__POLICY__BUDGET_USD` replaces the file's policy (the
//! override becomes the policy string `lambda=x`, parsed like every policy by
//! `routewise_router::Policy`).
//!
//! `router.cascade` (absent = off) asks the `tier` models first, in parallel, for a request
//! the router chooses for (`model: auto`), and returns their plurality answer when at least
//! `min_agree` (default: all of them) gave it, read by `extractor` (`choice`, `number`,
//! `exact` or `json:FIELD`; default `choice`); otherwise the request goes to the router's
//! choice ([`crate::pipeline::cascade`]). Tier names must be configured models. With
//! `min_confidence: p` (in (0, 1]), a tier answer whose token confidence (from the
//! upstream's logprobs) is at least `p` is accepted on its own. `learned: true` serves the
//! router artifact's calibrated confidence chain instead (its tier, acceptor and
//! threshold, filled in when the artifact is loaded; `tier`, `min_agree` and
//! `min_confidence` are then refused).
//!
//! `router.exploration.epsilon` (default 0: off) replaces the router's choice by a
//! uniformly drawn model on that share of `model: auto` requests
//! ([`routewise_router::explore`]), so that the decision log, whose lines carry each
//! choice's propensity, can evaluate other routers off-line (`routewise replay --log`).
//! `log.decisions.prompt: true` also logs the prompt text the router saw, which `replay`
//! needs to re-score decisions with another router; it is off by default because prompts
//! may be sensitive.
//!
//! Each section validates itself (the policy in `routewise_router::policy`, `bandit:` and
//! `state:` in `routewise_online::config`, models here); this module collects the issues.
//! The upstream URL and the auth header of each model are built here, once.
//! The settings in [`RESERVED_ENV`] (`ROUTEWISE_ADMIN_KEY`, `ROUTEWISE_CONFIG`,
//! `ROUTEWISE_LOG`, `ROUTEWISE_MODELS`, `ROUTEWISE_PYTHON`) belong to the command line, not
//! to the config.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use routewise_router::extract::Extractor;

use crate::limits::TrustedProxies;
use routewise_online::{BanditConfig, ConfigIssue, StateConfig};
use routewise_router::Policy;
use routewise_signals::rules::ModelFacts;
use routewise_signals::{Detector, Embedder, PiiAction, PiiKind, RawRoute, RuleSet};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// How the gateway reaches a model (`provider:`).
pub use crate::upstream::ProviderKind as Provider;

/// Variables with the `ROUTEWISE_` prefix that are not config overrides.
pub const RESERVED_ENV: &[&str] = &[
    "ROUTEWISE_ADMIN_KEY",
    "ROUTEWISE_CONFIG",
    "ROUTEWISE_LOG",
    "ROUTEWISE_MODELS",
    "ROUTEWISE_PYTHON",
];

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (file name, or `<embedded demo>`), for messages.
    pub source: String,
    pub listen: SocketAddr,
    pub router: RouterConfig,
    pub models: Vec<ModelConfig>,
    pub limits: Limits,
    pub cooldown: CooldownConfig,
    /// The decision log.
    pub decision_log: DecisionLogConfig,
    /// Online learning from feedback (`None`: off, requests routed by the engine alone).
    pub bandit: Option<BanditConfig>,
    /// Where the online state and the virtual keys live (used when `bandit` is set or
    /// `auth.mode` is `keys`).
    pub state: StateConfig,
    /// Shadow routers: decide every routed request beside the live router, off the
    /// request path, logged and compared ([`crate::pipeline::shadow`]).
    pub shadows: Vec<ShadowConfig>,
    /// The `routes:` rules, compiled (`None`: none configured).
    pub routes: Option<Arc<RuleSet>>,
    /// The PII guard (`None`: off).
    pub pii: Option<PiiConfig>,
    /// The response cache (`None`: off).
    pub cache: Option<CacheConfig>,
    /// Conversation affinity (`None`: off).
    pub affinity: Option<AffinityConfig>,
    /// What a request does when its model's deployments are full.
    pub dispatch: DispatchConfig,
    /// Who may call the gateway.
    pub auth: AuthConfig,
    /// Settings that are accepted but deprecated (logged at start, shown by
    /// `check-config`), as issues with their paths.
    pub warnings: Vec<Issue>,
}

/// `pii:`: which detectors run on every chat request's messages, and what a finding does.
#[derive(Debug, Clone)]
pub struct PiiConfig {
    pub detector: Arc<Detector>,
    /// The default action (a route's `pii:` overrides it).
    pub action: PiiAction,
    /// With `redact`: put the originals back in the answer (full or streamed).
    pub restore: bool,
}

/// `auth.mode`: who may call the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the port (the demo default; a warning when listening beyond
    /// loopback).
    #[default]
    Open,
    /// Only virtual keys (`Authorization: Bearer rw-...`) from `routewise keys`, kept in
    /// the `state` store.
    Keys,
}

/// `auth:` ([`crate::pipeline::auth`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// How long an instance trusts a key record it read before reading it again (a
    /// revocation by another instance takes effect within this).
    pub cache_ttl_ms: u64,
    /// Output tokens a budget reserves for a request without `max_tokens`.
    pub reserve_output_tokens: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Open,
            cache_ttl_ms: 5_000,
            reserve_output_tokens: 4_096,
        }
    }
}

/// `cache:`: the in-memory response cache ([`crate::pipeline::cache`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Look requests up by the hash of the whole normalised request.
    pub exact: bool,
    /// Look up near-duplicates of the last user message at this cosine (`None`: off).
    pub threshold: Option<f32>,
    /// Veto semantic hits whose numbers, negations or names differ.
    pub guards: bool,
    pub ttl_ms: u64,
    pub max_entries: usize,
    /// A header whose value scopes the cache (a tenant or key id); requests without it are
    /// not cached.
    pub scope_header: Option<HeaderName>,
    pub backend: CacheBackend,
}

/// `affinity:`: keep a conversation on its model unless switching is worth its prompt
/// cache ([`crate::pipeline::affinity`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    /// How long a conversation's model is kept after its last turn.
    pub ttl_ms: u64,
    /// The utility a switch must gain beyond the cache it loses.
    pub switch_margin: f64,
    /// Conversations kept in this instance's memory (with Redis too: the fallback).
    pub max_conversations: usize,
    /// Where the conversations' models are kept: this instance's memory, or Redis, shared
    /// by every instance (the same `CacheBackend` shape as the response cache's).
    pub backend: CacheBackend,
}

/// Where the response cache keeps its entries (`cache.backend`).
#[derive(Debug, Clone, PartialEq)]
pub enum CacheBackend {
    /// This instance's memory (`max_entries`, LRU).
    Memory,
    /// Redis, shared by every instance (`redis_url`; entries under `prefix`; the size bound
    /// is Redis's `maxmemory` with an LRU policy).
    Redis { url: String, prefix: String },
}

/// How `model: auto` requests are ranked (`router.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouterMode {
    /// The router artifact (or the embedded demo router).
    #[default]
    Learned,
    /// No outcome data: route pools from `routes:`, ordered by price; otherwise the
    /// models' `quality_tier` under the policy ([`routewise_signals::tiers`]).
    Rules,
}

/// One `shadow:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Its name in logs and stats (default: the artifact's file stem).
    pub name: String,
    pub artifact: PathBuf,
    /// Its policy; `None`: the live request's.
    pub policy: Option<Policy>,
    /// Share of routed requests it decides (default 1).
    pub sample: f64,
    /// Execute a sample of its choices (`execute: {sample, max_usd_per_day}`).
    pub execute: Option<ShadowExecute>,
}

/// `execute:` of a shadow ([`crate::pipeline::shadow`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowExecute {
    /// Share of routed requests executed (chosen by the decision id).
    pub sample: f64,
    /// Spend per UTC day, reservations included, at most.
    pub max_usd_per_day: f64,
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Router artifact; `None` serves the embedded demo router.
    pub artifact: Option<PathBuf>,
    /// Policy used when a request gives none.
    pub policy: Policy,
    /// The agreement cascade in front of the router, if configured.
    pub cascade: Option<CascadeConfig>,
    /// The epsilon-greedy exploration rate (0: off).
    pub epsilon: f64,
    pub mode: RouterMode,
    /// Utility per second of expected latency (`router.mu`; a request's `mu` overrides).
    pub mu: f64,
    /// Utility per watt-hour of expected energy (`router.nu`; a request's `nu` overrides).
    pub nu: f64,
}

/// `router.cascade`: ask the tier first, accept an answer enough of it agrees on.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeConfig {
    /// Configured model names, called in parallel.
    pub tier: Vec<String>,
    /// How many tier answers must agree (1..=tier.len()).
    pub min_agree: usize,
    /// How an answer is read from a response's text.
    pub extractor: Extractor,
    /// Also accept a single tier answer whose token confidence (the geometric mean of its
    /// tokens' probabilities, from the upstream's logprobs) is at least this, agreement
    /// or not; the tier is then asked for logprobs.
    pub min_confidence: Option<f64>,
    /// `learned: true`: run the artifact's calibrated confidence chain instead (one tier
    /// model at a time, its acceptor deciding); `tier` is then the artifact's.
    pub learned: bool,
    /// That chain, filled in when the artifact is loaded ([`crate::load`]).
    pub chain: Option<std::sync::Arc<routewise_router::artifact::CalibratedCascade>>,
}

/// An upstream API key. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    /// The key itself: only for the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Configured list prices, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// What a cached prompt prefix costs (the provider's prompt-cache price; default: the
    /// input price, no discount). Conversation affinity weighs it.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
}

impl Price {
    /// The cached input price, USD per million tokens.
    pub fn cached_input(&self) -> f64 {
        self.cached_input_per_mtok.unwrap_or(self.input_per_mtok)
    }
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub provider: Provider,
    /// Where the model is served: one deployment for a model with a top-level `base_url`
    /// (or a `replay` model), else `deployments:` in order (at least one).
    pub deployments: Vec<DeploymentConfig>,
    /// The model name sent upstream unless a deployment names its own.
    pub upstream_model: String,
    pub price: Option<Price>,
    pub context_window: Option<u64>,
    /// Output cap sent when a request gives none (providers that require one).
    pub max_tokens: Option<u64>,
    /// `anthropic-version` for the anthropic provider.
    pub anthropic_version: Option<String>,
    /// A positive integer, higher is better: the zero-data router's quality, and what
    /// routes' `min_tier` reads.
    pub quality_tier: Option<u32>,
    /// Self-hosted (or otherwise trusted with personal data): where `pii: {action:
    /// restrict}` sends requests with findings.
    pub private: bool,
    /// Energy per million tokens (prompt and output), watt-hours: weighed by `nu`,
    /// reported in the decision log and `/metrics`.
    pub energy_wh_per_mtok: Option<f64>,
}

/// One place a model is served (`models[].deployments[]`, or the model's own `base_url`):
/// a replica or another provider of the same model.
#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    /// Its name in metrics and logs: `name`, else the URL's `host:port` (`replay` for the
    /// demo provider); unique within the model.
    pub name: String,
    /// Base URL without a trailing slash (`http://host:port/v1`); empty for `replay`.
    pub base_url: String,
    /// The provider's chat endpoint under `base_url`, parsed once.
    pub endpoint: Option<reqwest::Url>,
    pub api_key_env: Option<String>,
    pub api_key: Option<Secret>,
    /// The header carrying the key (`Authorization: Bearer ...` or `x-api-key`), marked
    /// sensitive.
    pub auth: Option<(HeaderName, HeaderValue)>,
    /// The model name sent to this deployment.
    pub upstream_model: String,
    /// The provider's requests and tokens per minute at this deployment.
    pub limits: Option<ModelLimits>,
    /// Calls in flight at most (`None`: no cap).
    pub max_concurrency: Option<u32>,
    /// Its share of the traffic when the deployments are equally fast (> 0).
    pub weight: f64,
}

/// `dispatch:`: what a request does when the deployments of its model are at their
/// `max_concurrency` ([`crate::pipeline::attempts`]), and the balanced assignment of
/// requests that arrive while a model is near capacity ([`crate::pipeline::balance`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatchConfig {
    /// Pass a full model over for the next in the ranking (true), or wait for it first.
    pub spill: bool,
    /// How long a request waits for a free slot before it moves on (or, when every
    /// candidate is full, before it is refused with 503).
    pub queue_ms: u64,
    /// Balanced assignment (`None`: greedy, each request on its own).
    pub balance: Option<BalanceConfig>,
}

impl DispatchConfig {
    /// How long a request that balanced dispatch placed in a model's queue waits for that
    /// model: half of `queue_ms`, leaving the rest for its other candidates (the queue's
    /// places are counted for that long).
    pub fn hold_ms(&self) -> u64 {
        self.queue_ms / 2
    }
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            spill: true,
            queue_ms: 1000,
            balance: None,
        }
    }
}

/// `dispatch.balance`: requests whose first choice is near capacity wait `window_ms`
/// and are assigned jointly, maximising their total utility under the free slots and the
/// priced places of the models' queues.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceConfig {
    pub solver: routewise_router::dispatch::AssignerKind,
    /// The micro-window a batch collects requests for, milliseconds.
    pub window_ms: f64,
    /// A batch is assigned at once when it holds this many requests.
    pub max_batch: usize,
    /// A model is near capacity when its calls in flight reach this share of its
    /// deployments' `max_concurrency` (models without a cap never are).
    pub near: f64,
    /// Price scale of a place in a full model's queue
    /// ([`routewise_router::dispatch::queue_place_price`]).
    pub queue_price: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Per attempt: time allowed until the upstream's first byte (and, for non-streaming
    /// calls, its whole body); for streams also the longest pause between two chunks.
    pub request_timeout_ms: u64,
    pub max_attempts: u32,
    pub connect_timeout_ms: u64,
    /// A request head must arrive within this long (a silent connection is closed then).
    pub header_timeout_ms: u64,
    /// A request body must arrive within this long once its head has.
    pub body_timeout_ms: u64,
    /// A keep-alive connection may stay idle between requests this long.
    pub idle_timeout_ms: u64,
    /// Open connections at most; more are accepted and closed at once.
    pub max_connections: usize,
    /// Open connections per client IP at most (0: no cap); for trusted proxies, requests in
    /// flight per forwarded client instead.
    pub max_connections_per_ip: usize,
    /// `/v1/*` requests in flight at most; more get 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// On shutdown, time given to requests in flight before streams are ended.
    pub shutdown_grace_ms: u64,
    /// Addresses (IPs or CIDR ranges) whose `x-forwarded-for` is believed.
    pub trusted_proxies: TrustedProxies,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout_ms: 60_000,
            max_attempts: 3,
            connect_timeout_ms: 5_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 16_384,
            max_connections_per_ip: 1_024,
            max_in_flight: 4_096,
            shutdown_grace_ms: 10_000,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// The decision log (`log.decisions`): one line per decision, written by a background
/// thread ([`crate::pipeline::decision_log`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionLogConfig {
    /// Predictions logged per decision: the first `top_k` models of the ranking.
    pub top_k: usize,
    /// Share of decisions logged (1 = all), chosen by the decision id.
    pub sample: f64,
    /// Decisions queued for the writer at most; past it they are dropped and counted.
    pub queue: usize,
    /// Whether a line carries the prompt text the router saw (for `routewise replay`).
    pub prompt: bool,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            top_k: 3,
            sample: 1.0,
            queue: 8192,
            prompt: false,
        }
    }
}

/// A model failing `failures` times in a row is skipped for `seconds`, then probed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CooldownConfig {
    pub failures: u32,
    pub seconds: f64,
}

impl Default for CooldownConfig {
    fn default() -> Self {
        CooldownConfig {
            failures: 3,
            seconds: 30.0,
        }
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// Field path (`models[2].base_url`), or empty for the whole file.
    pub path: String,
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub issues: Vec<Issue>,
}

/// Text with its control characters escaped (`\n`, `\u{1b}`), so that one issue stays
/// one line whatever keys or values the file holds.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One line per issue: `file: path: message`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: ", OneLine(&self.file))?;
            if !issue.path.is_empty() {
                write!(f, "{}: ", OneLine(&issue.path))?;
            }
            write!(f, "{}", OneLine(&issue.message))?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(file: &str, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            issues: vec![Issue {
                path: path.to_string(),
                message: message.into(),
            }],
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    #[serde(default)]
    artifact: Option<String>,
    /// Parsed on its own from the tree (as a [`Policy`]) so its problems and the router's
    /// are all reported; here it is only an accepted key.
    #[serde(default, rename = "policy")]
    _policy: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    cascade: Option<RawCascade>,
    #[serde(default)]
    exploration: Option<RawExploration>,
    #[serde(default)]
    mode: Option<RawMode>,
    #[serde(default)]
    mu: Option<f64>,
    #[serde(default)]
    nu: Option<f64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Learned,
    Rules,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAffinity {
    #[serde(default)]
    ttl_s: Option<f64>,
    #[serde(default)]
    switch_margin: Option<f64>,
    #[serde(default)]
    max_conversations: Option<usize>,
    #[serde(default)]
    backend: Option<RawCacheBackend>,
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default)]
    exact: Option<bool>,
    #[serde(default)]
    semantic: Option<RawSemantic>,
    #[serde(default)]
    ttl_s: Option<f64>,
    #[serde(default)]
    max_entries: Option<usize>,
    #[serde(default)]
    backend: Option<RawCacheBackend>,
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    scope_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSemantic {
    threshold: f32,
    #[serde(default)]
    guards: Option<bool>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawCacheBackend {
    Memory,
    Redis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    mode: Option<AuthMode>,
    #[serde(default)]
    cache_ttl_s: Option<f64>,
    #[serde(default)]
    reserve_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPii {
    #[serde(default)]
    detect: Option<Vec<PiiKind>>,
    #[serde(default)]
    action: Option<PiiAction>,
    #[serde(default)]
    restore: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExploration {
    epsilon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCascade {
    #[serde(default)]
    tier: Vec<String>,
    #[serde(default)]
    learned: bool,
    #[serde(default)]
    min_agree: Option<usize>,
    #[serde(default)]
    extractor: Option<String>,
    #[serde(default)]
    min_confidence: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    price: Option<Price>,
    #[serde(default)]
    context_window: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    anthropic_version: Option<String>,
    #[serde(default)]
    quality_tier: Option<u32>,
    #[serde(default)]
    private: Option<bool>,
    #[serde(default)]
    limits: Option<ModelLimits>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    weight: Option<f64>,
    #[serde(default)]
    deployments: Option<Vec<RawDeployment>>,
    #[serde(default)]
    energy_wh_per_mtok: Option<f64>,
}

/// `models[].deployments[]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    limits: Option<ModelLimits>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    weight: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    #[serde(default)]
    spill: Option<bool>,
    #[serde(default)]
    queue_ms: Option<u64>,
    #[serde(default)]
    balance: Option<RawBalance>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBalance {
    #[serde(default)]
    solver: Option<routewise_router::dispatch::AssignerKind>,
    #[serde(default)]
    window_ms: Option<f64>,
    #[serde(default)]
    max_batch: Option<usize>,
    #[serde(default)]
    near: Option<f64>,
    #[serde(default)]
    queue_price: Option<f64>,
}

/// `models[].limits`: the provider's quota for this model, which routewise keeps below
/// (tokens are the prompt's plus `max_tokens`, as providers count them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    header_timeout_ms: Option<u64>,
    #[serde(default)]
    body_timeout_ms: Option<u64>,
    #[serde(default)]
    idle_timeout_ms: Option<u64>,
    #[serde(default)]
    max_connections: Option<u64>,
    #[serde(default)]
    max_connections_per_ip: Option<u64>,
    #[serde(default)]
    max_in_flight: Option<u64>,
    #[serde(default)]
    shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    trusted_proxies: Option<Vec<String>>,
}

/// The range a setting must lie in, for messages.
const DAY_MS: u64 = 86_400_000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCooldown {
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    seconds: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    decisions: Option<RawDecisionLog>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDecisionLog {
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    sample: Option<f64>,
    #[serde(default)]
    queue: Option<usize>,
    #[serde(default)]
    prompt: Option<bool>,
}

const TOP_KEYS: &[&str] = &[
    "listen", "router", "models", "limits", "cooldown", "log", "bandit", "state", "shadow",
    "routes", "pii", "cache", "auth", "affinity", "dispatch",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    #[serde(default)]
    name: Option<String>,
    artifact: String,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    sample: Option<f64>,
    #[serde(default)]
    execute: Option<RawExecute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecute {
    sample: f64,
    max_usd_per_day: f64,
}

/// Reads, overrides from the process environment, and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with_text(path).map(|(config, _)| config)
}

/// [`load`], also answering the text that was read (a reload's version digests it).
pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single(&file, "", format!("cannot read: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let config = parse(&text, &file, base, std::env::vars(), |k| {
        std::env::var(k).ok()
    })?;
    Ok((config, text))
}

/// Parses and validates config text.
///
/// `file` names the source in messages, `base_dir` resolves a relative artifact path,
/// `overrides` are candidate `ROUTEWISE_*` variables and `getenv` reads API keys.
pub fn parse(
    text: &str,
    file: &str,
    base_dir: &Path,
    overrides: impl IntoIterator<Item = (String, String)>,
    getenv: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let err = |issues: Vec<Issue>| ConfigError {
        file: file.to_string(),
        issues,
    };
    let mut tree: Value = serde_yaml::from_str(text).map_err(|e| {
        err(vec![Issue {
            path: String::new(),
            message: format!("invalid YAML: {e}"),
        }])
    })?;
    if tree.is_null() {
        tree = Value::Mapping(Mapping::new());
    }
    let mut issues = Vec::new();
    let set_by = apply_overrides(&mut tree, overrides, &mut issues);
    let Value::Mapping(map) = tree else {
        return Err(err(vec![Issue {
            path: String::new(),
            message: "the top level must be a mapping".into(),
        }]));
    };
    let mut v = Validator {
        issues,
        getenv: &getenv,
    };
    for key in map.keys() {
        let name = key.as_str().unwrap_or("<non-string key>");
        if !TOP_KEYS.contains(&name) {
            v.issue(
                name,
                format!("unknown field, expected one of {}", TOP_KEYS.join(", ")),
            );
        }
    }
    let listen = match map.get("listen") {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
        Some(val) => v.listen(val),
    };
    let router: RawRouter = v.section(map.get("router"), "router").unwrap_or_default();
    let limits: RawLimits = v.section(map.get("limits"), "limits").unwrap_or_default();
    let cooldown: RawCooldown = v
        .section(map.get("cooldown"), "cooldown")
        .unwrap_or_default();
    // Read from the tree, so that its problems show even when the router section has others.
    let policy = v
        .section::<Policy>(
            map.get("router").and_then(|r| r.get("policy")),
            "router.policy",
        )
        .unwrap_or(Policy::Lambda(0.0));
    let artifact = router.artifact.map(|a| {
        let p = PathBuf::from(a);
        if p.is_relative() {
            base_dir.join(p)
        } else {
            p
        }
    });
    let limits = v.limits(&limits);
    let cooldown = v.cooldown(&cooldown);
    let log: RawLog = v.section(map.get("log"), "log").unwrap_or_default();
    let decision_log = v.decision_log(&log.decisions.unwrap_or_default());
    let bandit: Option<BanditConfig> = v.section(map.get("bandit"), "bandit");
    let mut warnings = Vec::new();
    if let Some(b) = &bandit {
        v.collect(b.validate());
        warnings.extend(b.deprecations().into_iter().map(Issue::from));
    }
    let mut state: StateConfig = v.section(map.get("state"), "state").unwrap_or_default();
    if state.path.is_relative() {
        state.path = base_dir.join(&state.path);
    }
    v.collect(state.validate());
    let models = match map.get("models") {
        None => {
            v.issue("models", "missing field: at least one model is needed");
            Vec::new()
        }
        Some(Value::Sequence(items)) => {
            if items.is_empty() {
                v.issue("models", "at least one model is needed");
            }
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("models[{i}]");
                if item.is_null() {
                    v.issue(&path, "must be a model: a mapping with at least a `name`");
                    continue;
                }
                if let Some(raw) = v.section::<RawModel>(Some(item), &path) {
                    if !seen.insert(raw.name.clone()) {
                        v.issue(
                            &format!("{path}.name"),
                            format!("duplicate model name `{}`", raw.name),
                        );
                    }
                    if let Some(m) = v.model(raw, &path) {
                        out.push(m);
                    }
                }
            }
            out
        }
        Some(_) => {
            v.issue("models", "must be a list of models");
            Vec::new()
        }
    };
    let has_artifact = artifact.is_some();
    let cascade = router
        .cascade
        .and_then(|c| v.cascade(c, &models, has_artifact));
    let raw_shadows: Vec<(usize, RawShadow)> = match map.get("shadow") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| Some((i, v.section(Some(item), &format!("shadow[{i}]"))?)))
            .collect(),
        Some(_) => {
            v.issue("shadow", "must be a list of shadow routers");
            Vec::new()
        }
    };
    let mut shadows: Vec<ShadowConfig> = Vec::with_capacity(raw_shadows.len());
    for (i, raw) in raw_shadows {
        let mut artifact = PathBuf::from(&raw.artifact);
        if artifact.is_relative() {
            artifact = base_dir.join(artifact);
        }
        let name = raw.name.unwrap_or_else(|| {
            artifact.file_stem().map_or_else(
                || format!("shadow-{i}"),
                |s| s.to_string_lossy().into_owned(),
            )
        });
        if name.trim().is_empty() {
            v.issue(&format!("shadow[{i}].name"), "must not be empty");
        } else if shadows.iter().any(|s| s.name == name) {
            v.issue(
                &format!("shadow[{i}].name"),
                format!("duplicate shadow name `{name}` (give each a distinct `name`)"),
            );
        }
        let execute = raw.execute.and_then(|e| {
            let mut ok = true;
            if !(0.0..=1.0).contains(&e.sample) {
                v.issue(
                    &format!("shadow[{i}].execute.sample"),
                    format!(
                        "must be in 0..=1 (the share of requests executed), found {}",
                        e.sample
                    ),
                );
                ok = false;
            }
            if !(e.max_usd_per_day.is_finite() && e.max_usd_per_day >= 0.0) {
                v.issue(
                    &format!("shadow[{i}].execute.max_usd_per_day"),
                    format!("must be a finite amount >= 0, found {}", e.max_usd_per_day),
                );
                ok = false;
            }
            ok.then_some(ShadowExecute {
                sample: e.sample,
                max_usd_per_day: e.max_usd_per_day,
            })
        });
        let sample = raw.sample.unwrap_or(1.0);
        if !(sample > 0.0 && sample <= 1.0) {
            v.issue(
                &format!("shadow[{i}].sample"),
                format!(
                    "must be in (0, 1] (the share of requests the shadow decides), found {sample}"
                ),
            );
        }
        shadows.push(ShadowConfig {
            name,
            artifact,
            policy: raw.policy,
            sample,
            execute,
        });
    }
    let epsilon = router.exploration.map_or(0.0, |e| e.epsilon);
    if !(0.0..=1.0).contains(&epsilon) {
        v.issue(
            "router.exploration.epsilon",
            format!("must be in 0..=1 (the share of requests explored), found {epsilon}"),
        );
    }
    let (mu, nu) = (router.mu.unwrap_or(0.0), router.nu.unwrap_or(0.0));
    for (field, x) in [("mu", mu), ("nu", nu)] {
        if !(x.is_finite() && x >= 0.0) {
            v.issue(
                &format!("router.{field}"),
                format!("must be finite and >= 0, found {x}"),
            );
        }
    }
    let mode = match router.mode {
        None | Some(RawMode::Learned) => RouterMode::Learned,
        Some(RawMode::Rules) => RouterMode::Rules,
    };
    if mode == RouterMode::Rules {
        if artifact.is_some() {
            v.issue(
                "router.artifact",
                "`mode: rules` routes without a trained router: remove the artifact or the mode",
            );
        }
        for (i, m) in models.iter().enumerate() {
            if m.price.is_none() {
                v.issue(
                    &format!("models[{i}].price"),
                    "`router.mode: rules` orders models by price: give each model a price",
                );
            }
        }
    }
    let (routes, pii) = v.signals(map.get("routes"), map.get("pii"), &models);
    let cache = v.cache(map.get("cache"));
    let affinity = v.affinity(map.get("affinity"));
    let dispatch = v.dispatch(map.get("dispatch"));
    let auth = v.auth(map.get("auth"));
    if !v.issues.is_empty() {
        let mut issues = v.issues;
        blame_env(&mut issues, &set_by);
        return Err(err(issues));
    }
    Ok(Config {
        source: file.to_string(),
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        router: RouterConfig {
            artifact,
            policy,
            cascade,
            epsilon,
            mode,
            mu,
            nu,
        },
        models,
        limits,
        cooldown,
        decision_log,
        bandit,
        state,
        shadows,
        routes,
        pii,
        cache,
        affinity,
        dispatch,
        auth,
        warnings,
    })
}

impl From<ConfigIssue> for Issue {
    fn from(i: ConfigIssue) -> Self {
        Issue {
            path: i.path,
            message: i.message,
        }
    }
}

struct Validator<'a> {
    issues: Vec<Issue>,
    getenv: &'a dyn Fn(&str) -> Option<String>,
}

/// Most entries a cache may hold.
const MAX_CACHE_ENTRIES: usize = 10_000_000;
/// `affinity.switch_margin` when unset.
pub use routewise_router::affinity::DEFAULT_SWITCH_MARGIN;

impl Validator<'_> {
    /// `auth:`, checked.
    fn auth(&mut self, raw: Option<&Value>) -> AuthConfig {
        let Some(raw) = self.section::<RawAuth>(raw, "auth") else {
            return AuthConfig::default();
        };
        let ttl_s = raw.cache_ttl_s.unwrap_or(5.0);
        if !(0.0..=3600.0).contains(&ttl_s) {
            self.issue(
                "auth.cache_ttl_s",
                format!("must be in [0, 3600] seconds, found {ttl_s}"),
            );
        }
        let reserve = raw.reserve_output_tokens.unwrap_or(4_096);
        if !(1..=10_000_000).contains(&reserve) {
            self.issue(
                "auth.reserve_output_tokens",
                format!("must be in [1, 10000000], found {reserve}"),
            );
        }
        AuthConfig {
            mode: raw.mode.unwrap_or_default(),
            cache_ttl_ms: (ttl_s * 1000.0) as u64,
            reserve_output_tokens: reserve,
        }
    }

    /// `affinity:`, checked.
    fn affinity(&mut self, raw: Option<&Value>) -> Option<AffinityConfig> {
        let raw: RawAffinity = self.section(raw, "affinity")?;
        let ttl_s = raw.ttl_s.unwrap_or(3600.0);
        if !(1.0..=30.0 * 86_400.0).contains(&ttl_s) {
            self.issue(
                "affinity.ttl_s",
                format!("must be in [1, 2592000] seconds, found {ttl_s}"),
            );
        }
        let switch_margin = raw.switch_margin.unwrap_or(DEFAULT_SWITCH_MARGIN);
        if !(switch_margin.is_finite() && switch_margin >= 0.0) {
            self.issue(
                "affinity.switch_margin",
                format!("must be finite and >= 0, found {switch_margin}"),
            );
        }
        let max_conversations = raw.max_conversations.unwrap_or(100_000);
        if !(1..=10_000_000).contains(&max_conversations) {
            self.issue(
                "affinity.max_conversations",
                format!("must be in 1..=10000000, found {max_conversations}"),
            );
        }
        let backend = self.backend(
            "affinity",
            raw.backend,
            raw.redis_url,
            raw.prefix,
            "routewise:affinity",
        );
        Some(AffinityConfig {
            ttl_ms: (ttl_s * 1000.0) as u64,
            switch_margin,
            max_conversations,
            backend,
        })
    }

    /// A section's `backend` / `redis_url` / `prefix` (the response cache's, affinity's).
    fn backend(
        &mut self,
        section: &str,
        backend: Option<RawCacheBackend>,
        redis_url: Option<String>,
        prefix: Option<String>,
        default_prefix: &str,
    ) -> CacheBackend {
        let b = match (backend, redis_url) {
            (None | Some(RawCacheBackend::Memory), None) => CacheBackend::Memory,
            (None | Some(RawCacheBackend::Memory), Some(_)) => {
                self.issue(
                    &format!("{section}.redis_url"),
                    "belongs to `backend: redis`",
                );
                CacheBackend::Memory
            }
            (Some(RawCacheBackend::Redis), None) => {
                self.issue(
                    &format!("{section}.redis_url"),
                    "the redis backend needs a redis_url",
                );
                CacheBackend::Memory
            }
            (Some(RawCacheBackend::Redis), Some(url)) => {
                if let Err(e) = redis::Client::open(url.as_str()) {
                    self.issue(
                        &format!("{section}.redis_url"),
                        format!("not a Redis URL: {e}"),
                    );
                }
                CacheBackend::Redis {
                    url,
                    prefix: prefix.clone().unwrap_or_else(|| default_prefix.into()),
                }
            }
        };
        if prefix.is_some() && b == CacheBackend::Memory {
            self.issue(&format!("{section}.prefix"), "belongs to `backend: redis`");
        }
        b
    }

    /// `dispatch:`, checked.
    fn dispatch(&mut self, raw: Option<&Value>) -> DispatchConfig {
        let Some(raw) = self.section::<RawDispatch>(raw, "dispatch") else {
            return DispatchConfig::default();
        };
        let d = DispatchConfig::default();
        let queue_ms = self.bounded(
            "dispatch.queue_ms",
            raw.queue_ms.unwrap_or(d.queue_ms),
            0,
            60_000,
        );
        let balance = raw.balance.map(|b| {
            let window_ms = b.window_ms.unwrap_or(2.0);
            if !(0.1..=50.0).contains(&window_ms) {
                self.issue(
                    "dispatch.balance.window_ms",
                    format!("must be in [0.1, 50], found {window_ms}"),
                );
            }
            let max_batch = self.bounded(
                "dispatch.balance.max_batch",
                b.max_batch.unwrap_or(64) as u64,
                1,
                1024,
            ) as usize;
            let near = b.near.unwrap_or(0.75);
            if !(near > 0.0 && near <= 1.0) {
                self.issue(
                    "dispatch.balance.near",
                    format!("must be in (0, 1], found {near}"),
                );
            }
            let queue_price = b
                .queue_price
                .unwrap_or(routewise_router::dispatch::DEFAULT_QUEUE_PRICE);
            if !(queue_price >= 0.0 && queue_price.is_finite()) {
                self.issue(
                    "dispatch.balance.queue_price",
                    format!("must be finite and >= 0, found {queue_price}"),
                );
            }
            BalanceConfig {
                solver: b
                    .solver
                    .unwrap_or(routewise_router::dispatch::AssignerKind::Sinkhorn),
                window_ms,
                max_batch,
                near,
                queue_price,
            }
        });
        DispatchConfig {
            spill: raw.spill.unwrap_or(d.spill),
            queue_ms,
            balance,
        }
    }

    /// `cache:`, checked.
    fn cache(&mut self, raw: Option<&Value>) -> Option<CacheConfig> {
        let raw: RawCache = self.section(raw, "cache")?;
        let exact = raw.exact.unwrap_or(true);
        let threshold = raw.semantic.as_ref().map(|s| s.threshold);
        if let Some(t) = threshold {
            if !(t > 0.0 && t <= 1.0) {
                self.issue(
                    "cache.semantic.threshold",
                    format!("must be a cosine in (0, 1], found {t}"),
                );
            }
        }
        if !exact && threshold.is_none() {
            self.issue(
                "cache",
                "nothing to look up: set `exact: true` or a `semantic` threshold",
            );
        }
        let ttl_s = raw.ttl_s.unwrap_or(3600.0);
        if !(0.001..=365.0 * 86_400.0).contains(&ttl_s) {
            self.issue(
                "cache.ttl_s",
                format!("must be in [0.001, 31536000] seconds, found {ttl_s}"),
            );
        }
        let max_entries = raw.max_entries.unwrap_or(10_000);
        if !(1..=MAX_CACHE_ENTRIES).contains(&max_entries) {
            self.issue(
                "cache.max_entries",
                format!("must be in 1..={MAX_CACHE_ENTRIES}, found {max_entries}"),
            );
        }
        let scope_header = raw.scope_header.as_deref().and_then(|h| {
            match HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.issue(
                        "cache.scope_header",
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            }
        });
        let backend = self.backend(
            "cache",
            raw.backend,
            raw.redis_url,
            raw.prefix,
            "routewise:cache",
        );
        if raw.max_entries.is_some() && backend != CacheBackend::Memory {
            self.issue(
                "cache.max_entries",
                "bounds the memory backend; bound Redis with its maxmemory and an LRU policy",
            );
        }
        Some(CacheConfig {
            exact,
            threshold,
            guards: raw.semantic.and_then(|s| s.guards).unwrap_or(true),
            ttl_ms: (ttl_s * 1000.0) as u64,
            max_entries,
            scope_header,
            backend,
        })
    }

    /// `routes:` and `pii:`, compiled against the configured models.
    fn signals(
        &mut self,
        routes: Option<&Value>,
        pii: Option<&Value>,
        models: &[ModelConfig],
    ) -> (Option<Arc<RuleSet>>, Option<PiiConfig>) {
        let mut all_parsed = true;
        let raw_routes: Vec<RawRoute> = match routes {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let r = self.section(Some(item), &format!("routes[{i}]"));
                    all_parsed &= r.is_some();
                    r
                })
                .collect(),
            Some(_) => {
                self.issue("routes", "must be a list of routes");
                Vec::new()
            }
        };
        let facts: Vec<ModelFacts<'_>> = models
            .iter()
            .map(|m| ModelFacts {
                name: &m.name,
                context_window: m.context_window,
                quality_tier: m.quality_tier,
            })
            .collect();
        // Compiled only when every route parsed, so that the paths of its problems hold.
        let rules = if raw_routes.is_empty() || !all_parsed {
            None
        } else {
            match RuleSet::compile(&raw_routes, &facts, || {
                Embedder::builtin().map_err(|e| e.to_string())
            }) {
                Ok(r) => Some(Arc::new(r)),
                Err(issues) => {
                    for i in issues {
                        self.issue(&i.path, i.message);
                    }
                    None
                }
            }
        };
        let raw_pii: Option<RawPii> = self.section(pii, "pii");
        let route_pii: Vec<(usize, PiiAction)> = raw_routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.then.pii?)))
            .collect();
        let restricts = raw_pii
            .as_ref()
            .and_then(|p| p.action)
            .map(|a| ("pii.action".to_string(), a))
            .into_iter()
            .chain(
                route_pii
                    .iter()
                    .map(|(i, a)| (format!("routes[{i}].then.pii"), *a)),
            )
            .filter(|(_, a)| *a == PiiAction::Restrict);
        for (path, _) in restricts {
            if !models.iter().any(|m| m.private) {
                self.issue(
                    &path,
                    "`restrict` sends requests with personal data to private models, and no model has `private: true`",
                );
            }
        }
        let pii = match raw_pii {
            Some(p) => {
                let kinds = p.detect.unwrap_or_else(|| PiiKind::ALL.to_vec());
                if kinds.is_empty() {
                    self.issue("pii.detect", "must list at least one detector");
                }
                if p.restore == Some(true) && p.action != Some(PiiAction::Redact) {
                    self.issue("pii.restore", "`restore` belongs to `action: redact`");
                }
                Some(PiiConfig {
                    detector: Arc::new(Detector::new(kinds)),
                    action: p.action.unwrap_or(PiiAction::Tag),
                    restore: p.restore.unwrap_or(false),
                })
            }
            // A route's `pii:` action alone turns every detector on, tagging elsewhere.
            None if !route_pii.is_empty() => Some(PiiConfig {
                detector: Arc::new(Detector::new(PiiKind::ALL)),
                action: PiiAction::Tag,
                restore: false,
            }),
            None => None,
        };
        (rules, pii)
    }

    /// `router.cascade`, checked against the configured `models`.
    fn cascade(
        &mut self,
        raw: RawCascade,
        models: &[ModelConfig],
        has_artifact: bool,
    ) -> Option<CascadeConfig> {
        let before = self.issues.len();
        if raw.learned {
            // The tier, its acceptor and threshold come from the artifact.
            if !has_artifact {
                self.issue(
                    "router.cascade.learned",
                    "needs `router.artifact`: an artifact written by `routewise calibrate \
                     --cascade --artifact`",
                );
            }
            for (set, field) in [
                (!raw.tier.is_empty(), "tier"),
                (raw.min_agree.is_some(), "min_agree"),
                (raw.min_confidence.is_some(), "min_confidence"),
            ] {
                if set {
                    self.issue(
                        &format!("router.cascade.{field}"),
                        "does not apply with `learned: true` (the artifact's chain decides)",
                    );
                }
            }
        } else if raw.tier.is_empty() {
            self.issue("router.cascade.tier", "must name at least one model");
        }
        let mut seen = HashSet::new();
        for (i, name) in raw.tier.iter().enumerate() {
            let path = format!("router.cascade.tier[{i}]");
            if !models.iter().any(|m| &m.name == name) {
                self.issue(&path, format!("`{name}` is not a configured model"));
            } else if !seen.insert(name) {
                self.issue(&path, format!("`{name}` is listed twice"));
            }
        }
        let min_agree = raw.min_agree.unwrap_or(raw.tier.len());
        if raw.min_agree.is_some() && !(1..=raw.tier.len().max(1)).contains(&min_agree) {
            self.issue(
                "router.cascade.min_agree",
                format!("must lie in 1..={} (the tier's size)", raw.tier.len()),
            );
        }
        let extractor = match raw
            .extractor
            .as_deref()
            .unwrap_or("choice")
            .parse::<Extractor>()
        {
            Ok(e) if e.semantic_threshold().is_some() => match Embedder::builtin() {
                Ok(_) => Some(e),
                Err(err) => {
                    self.issue(
                        "router.cascade.extractor",
                        format!("`{e}` needs the built-in embedding model: {err}"),
                    );
                    None
                }
            },
            Ok(e) => Some(e),
            Err(e) => {
                self.issue("router.cascade.extractor", e);
                None
            }
        };
        if let Some(c) = raw.min_confidence {
            if let Err(e) = routewise_router::cascade::check_min_confidence(c) {
                self.issue("router.cascade.min_confidence", e);
            }
        }
        (self.issues.len() == before).then_some(CascadeConfig {
            tier: raw.tier,
            min_agree,
            extractor: extractor?,
            min_confidence: raw.min_confidence,
            learned: raw.learned,
            chain: None,
        })
    }

    fn issue(&mut self, path: &str, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Adds the issues a section found itself.
    fn collect(&mut self, issues: Vec<ConfigIssue>) {
        self.issues.extend(issues.into_iter().map(Issue::from));
    }

    /// Deserialises a section, reporting every problem in it: after each error the
    /// offending key is taken out and the section is read again, so a second bad field is
    /// not hidden by the first.
    fn section<T: DeserializeOwned>(&mut self, val: Option<&Value>, path: &str) -> Option<T> {
        let mut val = val?.clone();
        if val.is_null() {
            return None;
        }
        // Each round reports one problem and removes the key at fault, so that every
        // problem of the section is reported; what remains is returned for validation.
        let mut reported: Vec<String> = Vec::new();
        for _ in 0..256 {
            match serde_path_to_error::deserialize::<_, T>(val.clone()) {
                Ok(t) => return Some(t),
                Err(e) => {
                    let inner = e.path().to_string();
                    let message = e.into_inner().to_string();
                    let segments: Vec<String> = if inner == "." || inner.is_empty() {
                        Vec::new()
                    } else {
                        inner.split('.').map(str::to_string).collect()
                    };
                    let full = std::iter::once(path.to_string())
                        .chain(segments.iter().cloned())
                        .collect::<Vec<_>>()
                        .join(".");
                    // A parent's complaint caused by removing its child is not news.
                    if !reported.iter().any(|r| r.starts_with(&format!("{full}."))) {
                        self.issue(&full, message);
                        reported.push(full);
                    }
                    if segments.is_empty() || !remove_path(&mut val, &segments) {
                        break;
                    }
                }
            }
        }
        None
    }

    fn listen(&mut self, val: &Value) -> Option<SocketAddr> {
        let s = match val {
            Value::String(s) => s.clone(),
            other => {
                self.issue(
                    "listen",
                    format!("expected an address like 127.0.0.1:8080, found {other:?}"),
                );
                return None;
            }
        };
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                self.issue(
                    "listen",
                    format!("`{s}` is not an address like 127.0.0.1:8080: {e}"),
                );
                None
            }
        }
    }

    /// Checks that `value` lies in `lo..=hi`; returns it clamped (so later checks see a
    /// sane value).
    fn bounded(&mut self, path: &str, value: u64, lo: u64, hi: u64) -> u64 {
        if value < lo || value > hi {
            self.issue(path, format!("must be in {lo}..={hi}, found {value}"));
        }
        value.clamp(lo, hi)
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        let d = Limits::default();
        let mut b = |field: &str, v: Option<u64>, default: u64, lo: u64, hi: u64| {
            self.bounded(&format!("limits.{field}"), v.unwrap_or(default), lo, hi)
        };
        let max_connections = b(
            "max_connections",
            raw.max_connections,
            d.max_connections as u64,
            1,
            1 << 20,
        ) as usize;
        let l = Limits {
            max_body_bytes: b(
                "max_body_bytes",
                raw.max_body_bytes,
                d.max_body_bytes as u64,
                1,
                1 << 30,
            ) as usize,
            request_timeout_ms: b(
                "request_timeout_ms",
                raw.request_timeout_ms,
                d.request_timeout_ms,
                1,
                DAY_MS,
            ),
            max_attempts: b(
                "max_attempts",
                raw.max_attempts.map(u64::from),
                u64::from(d.max_attempts),
                1,
                64,
            ) as u32,
            connect_timeout_ms: b(
                "connect_timeout_ms",
                raw.connect_timeout_ms,
                d.connect_timeout_ms,
                1,
                600_000,
            ),
            header_timeout_ms: b(
                "header_timeout_ms",
                raw.header_timeout_ms,
                d.header_timeout_ms,
                1,
                600_000,
            ),
            body_timeout_ms: b(
                "body_timeout_ms",
                raw.body_timeout_ms,
                d.body_timeout_ms,
                1,
                DAY_MS,
            ),
            idle_timeout_ms: b(
                "idle_timeout_ms",
                raw.idle_timeout_ms,
                d.idle_timeout_ms,
                1,
                DAY_MS,
            ),
            max_connections,
            // Unset, it follows a lowered `max_connections` rather than contradict it.
            max_connections_per_ip: b(
                "max_connections_per_ip",
                raw.max_connections_per_ip,
                (d.max_connections_per_ip as u64).min(max_connections as u64),
                0,
                max_connections as u64,
            ) as usize,
            max_in_flight: b(
                "max_in_flight",
                raw.max_in_flight,
                d.max_in_flight as u64,
                1,
                1 << 20,
            ) as usize,
            shutdown_grace_ms: b(
                "shutdown_grace_ms",
                raw.shutdown_grace_ms,
                d.shutdown_grace_ms,
                0,
                3_600_000,
            ),
            trusted_proxies: TrustedProxies::default(),
        };
        let mut nets = Vec::new();
        for (i, p) in raw.trusted_proxies.iter().flatten().enumerate() {
            let parsed = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => nets.push(n),
                Err(_) => self.issue(
                    &format!("limits.trusted_proxies[{i}]"),
                    format!("`{p}` is not an IP address or a CIDR range like 10.0.0.0/8"),
                ),
            }
        }
        Limits {
            trusted_proxies: TrustedProxies(nets),
            ..l
        }
    }

    fn cooldown(&mut self, raw: &RawCooldown) -> CooldownConfig {
        let d = CooldownConfig::default();
        let c = CooldownConfig {
            failures: raw.failures.unwrap_or(d.failures),
            seconds: raw.seconds.unwrap_or(d.seconds),
        };
        if c.failures == 0 {
            self.issue("cooldown.failures", "must be >= 1");
        }
        if !c.seconds.is_finite() || !(0.0..=86_400.0).contains(&c.seconds) {
            self.issue(
                "cooldown.seconds",
                format!("must be in 0..=86400 (one day), found {}", c.seconds),
            );
        }
        c
    }

    fn decision_log(&mut self, raw: &RawDecisionLog) -> DecisionLogConfig {
        let d = DecisionLogConfig::default();
        let c = DecisionLogConfig {
            top_k: raw.top_k.unwrap_or(d.top_k),
            sample: raw.sample.unwrap_or(d.sample),
            queue: raw.queue.unwrap_or(d.queue),
            prompt: raw.prompt.unwrap_or(d.prompt),
        };
        if !(0.0..=1.0).contains(&c.sample) {
            self.issue(
                "log.decisions.sample",
                format!(
                    "must be in 0..=1 (the share of decisions logged), found {}",
                    c.sample
                ),
            );
        }
        if !(1..=1_048_576).contains(&c.queue) {
            self.issue(
                "log.decisions.queue",
                format!("must be in 1..=1048576, found {}", c.queue),
            );
        }
        if c.top_k > 4096 {
            self.issue(
                "log.decisions.top_k",
                format!("must be in 0..=4096, found {}", c.top_k),
            );
        }
        c
    }

    fn model(&mut self, raw: RawModel, path: &str) -> Option<ModelConfig> {
        let before = self.issues.len();
        if raw.name.trim().is_empty() {
            self.issue(&format!("{path}.name"), "must not be empty");
        }
        if matches!(raw.name.as_str(), "auto" | "routewise") {
            self.issue(
                &format!("{path}.name"),
                format!("`{}` is reserved for routing", raw.name),
            );
        }
        let name = raw.provider.as_deref().unwrap_or("openai");
        let provider = match Provider::from_name(name) {
            Some(p) => p,
            None => {
                self.issue(
                    &format!("{path}.provider"),
                    format!("unknown provider `{name}` (known: openai, anthropic, replay)"),
                );
                Provider::OpenAi
            }
        };
        let upstream_model = raw.upstream_model.unwrap_or_else(|| raw.name.clone());
        let deployments = match raw.deployments {
            None => {
                let own = RawDeployment {
                    name: None,
                    base_url: raw.base_url,
                    api_key_env: raw.api_key_env,
                    upstream_model: None,
                    limits: raw.limits,
                    max_concurrency: raw.max_concurrency,
                    weight: raw.weight,
                };
                self.deployment(own, provider, &upstream_model, path)
                    .into_iter()
                    .collect()
            }
            Some(list) => {
                for (field, set) in [
                    ("base_url", raw.base_url.is_some()),
                    ("api_key_env", raw.api_key_env.is_some()),
                    ("limits", raw.limits.is_some()),
                    ("max_concurrency", raw.max_concurrency.is_some()),
                    ("weight", raw.weight.is_some()),
                ] {
                    if set {
                        self.issue(
                            &format!("{path}.{field}"),
                            "a model with `deployments` sets this per deployment",
                        );
                    }
                }
                if list.is_empty() {
                    self.issue(
                        &format!("{path}.deployments"),
                        "give at least one deployment (or leave the list out and set base_url)",
                    );
                }
                if !provider.needs_url() && !list.is_empty() {
                    self.issue(
                        &format!("{path}.deployments"),
                        format!("a {} model has no deployments", provider.name()),
                    );
                }
                let mut out: Vec<DeploymentConfig> = Vec::with_capacity(list.len());
                for (j, d) in list.into_iter().enumerate() {
                    let dpath = format!("{path}.deployments[{j}]");
                    if let Some(d) = self.deployment(d, provider, &upstream_model, &dpath) {
                        if out.iter().any(|o| o.name == d.name) {
                            self.issue(
                                &format!("{dpath}.name"),
                                format!(
                                    "`{}` names another deployment of this model: give each a distinct name",
                                    d.name
                                ),
                            );
                        }
                        out.push(d);
                    }
                }
                out
            }
        };
        if raw.anthropic_version.is_some() && provider != Provider::Anthropic {
            self.issue(
                &format!("{path}.anthropic_version"),
                "only the anthropic provider takes an anthropic_version",
            );
        }
        if let Some(v) = &raw.anthropic_version {
            if HeaderValue::from_str(v).is_err() || v.is_empty() {
                self.issue(
                    &format!("{path}.anthropic_version"),
                    format!("`{v}` is not a valid header value"),
                );
            }
        }
        if raw.max_tokens == Some(0) {
            self.issue(&format!("{path}.max_tokens"), "must be > 0");
        }
        if let Some(p) = raw.price {
            for (field, x) in [
                ("input_per_mtok", p.input_per_mtok),
                ("output_per_mtok", p.output_per_mtok),
                (
                    "cached_input_per_mtok",
                    p.cached_input_per_mtok.unwrap_or(0.0),
                ),
            ] {
                if !x.is_finite() || x < 0.0 {
                    self.issue(
                        &format!("{path}.price.{field}"),
                        format!("must be finite and >= 0, found {x}"),
                    );
                }
            }
            if let Some(c) = p.cached_input_per_mtok {
                if c > p.input_per_mtok {
                    self.issue(
                        &format!("{path}.price.cached_input_per_mtok"),
                        format!(
                            "a cached prompt costs at most the input price ({}), found {c}",
                            p.input_per_mtok
                        ),
                    );
                }
            }
        }
        if raw.context_window == Some(0) {
            self.issue(&format!("{path}.context_window"), "must be > 0");
        }
        if let Some(e) = raw.energy_wh_per_mtok {
            if !(e.is_finite() && e >= 0.0) {
                self.issue(
                    &format!("{path}.energy_wh_per_mtok"),
                    format!("must be finite and >= 0, found {e}"),
                );
            }
        }
        if raw.quality_tier == Some(0) {
            self.issue(
                &format!("{path}.quality_tier"),
                "must be a positive integer (higher is better)",
            );
        }
        if self.issues.len() > before {
            return None;
        }
        Some(ModelConfig {
            upstream_model,
            name: raw.name,
            provider,
            deployments,
            price: raw.price,
            context_window: raw.context_window,
            max_tokens: raw.max_tokens,
            anthropic_version: raw.anthropic_version,
            quality_tier: raw.quality_tier,
            private: raw.private.unwrap_or(false),
            energy_wh_per_mtok: raw.energy_wh_per_mtok,
        })
    }

    /// One deployment of a `provider` model at `path` (the model's own fields, or
    /// `models[i].deployments[j]`), checked.
    fn deployment(
        &mut self,
        raw: RawDeployment,
        provider: Provider,
        upstream_model: &str,
        path: &str,
    ) -> Option<DeploymentConfig> {
        let before = self.issues.len();
        let (base_url, endpoint) = match (provider.needs_url(), raw.base_url) {
            (true, None) => {
                self.issue(
                    &format!("{path}.base_url"),
                    format!("missing: an {} provider needs a base_url", provider.name()),
                );
                (String::new(), None)
            }
            (true, Some(u)) => match reqwest::Url::parse(&u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {
                    let base = u.trim_end_matches('/').to_string();
                    match provider.endpoint(&base) {
                        Ok(e) => (base, Some(e)),
                        Err(e) => {
                            self.issue(&format!("{path}.base_url"), e);
                            (String::new(), None)
                        }
                    }
                }
                Ok(url) => {
                    self.issue(
                        &format!("{path}.base_url"),
                        format!("scheme `{}` is not http or https", url.scheme()),
                    );
                    (String::new(), None)
                }
                Err(e) => {
                    self.issue(&format!("{path}.base_url"), e.to_string());
                    (String::new(), None)
                }
            },
            (false, Some(_)) => {
                self.issue(
                    &format!("{path}.base_url"),
                    format!("a {} model has no base_url", provider.name()),
                );
                (String::new(), None)
            }
            (false, None) => (String::new(), None),
        };
        let api_key = match &raw.api_key_env {
            None => None,
            Some(var) => match (self.getenv)(var) {
                Some(k) if !k.is_empty() => Some(Secret::new(k)),
                _ => {
                    self.issue(
                        &format!("{path}.api_key_env"),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
        };
        let auth = match &api_key {
            None => None,
            Some(k) => match provider.auth_header(k.expose()) {
                Ok(h) => Some(h),
                Err(message) => {
                    self.issue(&format!("{path}.api_key_env"), message);
                    None
                }
            },
        };
        if let Some(l) = raw.limits {
            if l.rpm == Some(0) || l.tpm == Some(0) {
                self.issue(
                    &format!("{path}.limits"),
                    "rpm and tpm must be > 0 (leave one out for no limit)",
                );
            }
            if l.rpm.is_none() && l.tpm.is_none() {
                self.issue(&format!("{path}.limits"), "give rpm, tpm or both");
            }
        }
        if raw.max_concurrency == Some(0) {
            self.issue(
                &format!("{path}.max_concurrency"),
                "must be > 0 (leave it out for no cap)",
            );
        }
        let weight = raw.weight.unwrap_or(1.0);
        if !(weight.is_finite() && weight > 0.0) {
            self.issue(
                &format!("{path}.weight"),
                format!("must be finite and > 0, found {weight}"),
            );
        }
        if let Some(n) = &raw.name {
            if n.trim().is_empty() {
                self.issue(&format!("{path}.name"), "must not be empty");
            }
        }
        if self.issues.len() > before {
            return None;
        }
        let name = raw.name.unwrap_or_else(|| match &endpoint {
            Some(u) => match (u.host_str(), u.port_or_known_default()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => base_url.clone(),
            },
            None => provider.name().to_string(),
        });
        Some(DeploymentConfig {
            name,
            base_url,
            endpoint,
            api_key_env: raw.api_key_env,
            api_key,
            auth,
            upstream_model: raw
                .upstream_model
                .unwrap_or_else(|| upstream_model.to_string()),
            limits: raw.limits,
            max_concurrency: raw.max_concurrency,
            weight,
        })
    }
}

/// Removes the value at `segments` (keys, with `name[i]` for list items) from `tree`;
/// false when there is nothing there.
fn remove_path(tree: &mut Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for seg in parents {
        let (key, index) = split_index(seg);
        let next = match node {
            Value::Mapping(m) => m.get_mut(key),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = match index {
            Some(i) => match next {
                Value::Sequence(items) => match items.get_mut(i) {
                    Some(item) => item,
                    None => return false,
                },
                _ => return false,
            },
            None => next,
        };
    }
    let (key, index) = split_index(last);
    match (node, index) {
        (Value::Mapping(m), None) => m.remove(key).is_some(),
        (Value::Mapping(m), Some(i)) => match m.get_mut(key) {
            Some(Value::Sequence(items)) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// `name[3]` -> (`name`, Some(3)); `name` -> (`name`, None).
fn split_index(seg: &str) -> (&str, Option<usize>) {
    match seg.strip_suffix(']').and_then(|s| s.split_once('[')) {
        Some((name, i)) => (name, i.parse().ok()),
        None => (seg, None),
    }
}

/// Applies `ROUTEWISE_*` overrides to the YAML tree; returns which config paths each
/// variable set (so that problems there name the variable, not the file).
fn apply_overrides(
    tree: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
    issues: &mut Vec<Issue>,
) -> Vec<(String, String)> {
    let mut set_by = Vec::new();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("ROUTEWISE_") && !RESERVED_ENV.contains(&k.as_str()))
        .collect();
    vars.sort();
    for (key, raw_value) in vars {
        let path: Vec<String> = key["ROUTEWISE_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            issues.push(Issue {
                path: format!("env {key}"),
                message: "empty path segment".into(),
            });
            continue;
        }
        let value: Value =
            serde_yaml::from_str(&raw_value).unwrap_or(Value::String(raw_value.clone()));
        // A policy key replaces the whole policy: `router.policy` becomes `key=value`.
        let (path, value) = match path.as_slice() {
            [r, p, key] if r == "router" && p == "policy" => (
                path[..2].to_vec(),
                Value::String(format!("{key}={}", raw_value.trim())),
            ),
            _ => (path, value),
        };
        match set_path(tree, &path, value) {
            Ok(()) => set_by.push((issue_path(&path), key)),
            Err(message) => issues.push(Issue {
                path: format!("env {key}"),
                message,
            }),
        }
    }
    set_by
}

/// Tree segments as an issue path: `["models", "0", "base_url"]` -> `models[0].base_url`.
fn issue_path(segments: &[String]) -> String {
    let mut out = String::new();
    for seg in segments {
        if seg.parse::<usize>().is_ok() && !out.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Rewrites the path of every issue under a path an environment variable set, to name
/// the variable (the file is not at fault there).
fn blame_env(issues: &mut [Issue], set_by: &[(String, String)]) {
    for issue in issues {
        let by = set_by.iter().find(|(path, _)| {
            issue.path == *path
                || issue.path.starts_with(&format!("{path}."))
                || issue.path.starts_with(&format!("{path}["))
        });
        if let Some((_, var)) = by {
            issue.path = format!("{} (set by {var})", issue.path);
        }
    }
}

fn set_path(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    if tree.is_null() {
        *tree = Value::Mapping(Mapping::new());
    }
    let (head, rest) = match path.split_first() {
        Some(x) => x,
        None => {
            *tree = value;
            return Ok(());
        }
    };
    match tree {
        Value::Mapping(m) => {
            let key = Value::String(head.clone());
            let child = m.entry(key).or_insert(Value::Null);
            set_path(child, rest, value)
        }
        Value::Sequence(items) => {
            let idx: usize = head
                .parse()
                .map_err(|_| format!("`{head}` is not a list index"))?;
            let len = items.len();
            let child = items
                .get_mut(idx)
                .ok_or_else(|| format!("index {idx} is out of range (the list has {len})"))?;
            set_path(child, rest, value)
        }
        _ => Err(format!("cannot set `{head}` inside a scalar")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: 127.0.0.1:8081
router:
  policy: {lambda: 0.5}
models:
  - name: a
    base_url: http://127.0.0.1:9001/v1/
    api_key_env: KEY_A
    price: {input_per_mtok: 1.0, output_per_mtok: 2.0}
    context_window: 4096
  - name: b
    provider: replay
limits: {max_attempts: 2}
"#;

    fn env(k: &str) -> Option<String> {
        (k == "KEY_A").then(|| "sk-secret".to_string())
    }

    fn p(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        parse(
            text,
            "gw.yaml",
            Path::new("/cfg"),
            vars.iter().map(|(a, b)| (a.to_string(), b.to_string())),
            env,
        )
    }

    #[test]
    fn parses_a_good_config() {
        let c = p(GOOD, &[]).unwrap();
        assert_eq!(c.listen.port(), 8081);
        assert_eq!(c.router.policy, Policy::Lambda(0.5));
        assert_eq!(
            c.models[0].deployments[0].base_url,
            "http://127.0.0.1:9001/v1"
        );
        assert_eq!(c.models[0].upstream_model, "a");
        assert_eq!(
            c.models[0].deployments[0]
                .api_key
                .as_ref()
                .unwrap()
                .expose(),
            "sk-secret"
        );
        assert_eq!(c.models[1].provider, Provider::Replay);
        assert_eq!(c.limits.max_attempts, 2);
        assert_eq!(c.limits.max_body_bytes, 4 * 1024 * 1024);
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    #[test]
    fn reports_every_problem_with_file_and_path() {
        let text = r#"
listen: nope
router: {policy: {lambda: 1, budget_usd: 2}, extra: 1}
models:
  - name: a
    base_url: relative/v1
  - name: a
    provider: replay
  - name: c
    base_url: http://x/v1
    api_key_env: MISSING_VAR
    price: {input_per_mtok: -1, output_per_mtok: 1}
  - {name: d, base_url: "http://x", colour: red}
limits: {max_attempts: 0}
bogus: 1
"#;
        let e = p(text, &[]).unwrap_err().to_string();
        for want in [
            "gw.yaml: listen: `nope` is not an address",
            "gw.yaml: router.extra: unknown field `extra`",
            "gw.yaml: models[0].base_url: relative URL without a base",
            "gw.yaml: models[1].name: duplicate model name `a`",
            "gw.yaml: models[2].api_key_env: environment variable MISSING_VAR is not set",
            "gw.yaml: models[2].price.input_per_mtok: must be finite and >= 0",
            "gw.yaml: models[3].colour: unknown field `colour`",
            "gw.yaml: limits.max_attempts: must be in 1..=64, found 0",
            "gw.yaml: bogus: unknown field",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
        assert!(!e.contains("sk-secret"));
    }

    #[test]
    fn env_overrides_follow_the_documented_scheme() {
        let c = p(
            GOOD,
            &[
                ("ROUTEWISE_LISTEN", "0.0.0.0:9999"),
                ("ROUTEWISE_ROUTER__POLICY__BUDGET_USD", "0.002"),
                ("ROUTEWISE_LIMITS__MAX_ATTEMPTS", "5"),
                ("ROUTEWISE_MODELS__0__BASE_URL", "http://10.0.0.1:1/v1"),
                ("ROUTEWISE_CONFIG", "ignored.yaml"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.router.policy, Policy::BudgetUsd(0.002));
        assert_eq!(c.limits.max_attempts, 5);
        assert_eq!(c.models[0].deployments[0].base_url, "http://10.0.0.1:1/v1");
        let e = p(GOOD, &[("ROUTEWISE_MODELS__7__NAME", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("env ROUTEWISE_MODELS__7__NAME: index 7 is out of range"));
        let e = p(GOOD, &[("ROUTEWISE_LIMITS__MAX_ATTEMPTS", "lots")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_attempts"), "{e}");
    }

    #[test]
    fn deployments_are_read_in_order_with_their_own_url_key_and_cap() {
        let text = GOOD.replace(
            "  - name: b\n",
            "  - name: c\n    upstream_model: up-c\n    deployments:\n      \
             - {base_url: 'http://10.0.0.1:8000/v1', max_concurrency: 8}\n      \
             - {name: hosted, base_url: 'https://api.example.com/v1', api_key_env: KEY_A, \
             upstream_model: vendor/c, limits: {rpm: 60}, weight: 0.5}\n  - name: b\n",
        )
            + "dispatch: {spill: false, queue_ms: 250, balance: {solver: exact, window_ms: 3}}\n";
        let c = p(&text, &[]).unwrap();
        let m = &c.models[1];
        assert_eq!(m.deployments.len(), 2);
        let (d0, d1) = (&m.deployments[0], &m.deployments[1]);
        assert_eq!(
            (
                d0.name.as_str(),
                d0.upstream_model.as_str(),
                d0.max_concurrency
            ),
            ("10.0.0.1:8000", "up-c", Some(8))
        );
        assert!(d0.api_key.is_none() && d0.weight == 1.0);
        assert_eq!(
            (d1.name.as_str(), d1.upstream_model.as_str(), d1.weight),
            ("hosted", "vendor/c", 0.5)
        );
        assert_eq!(d1.api_key.as_ref().unwrap().expose(), "sk-secret");
        assert_eq!(d1.limits.unwrap().rpm, Some(60));
        assert_eq!(
            c.dispatch,
            DispatchConfig {
                spill: false,
                queue_ms: 250,
                balance: Some(BalanceConfig {
                    solver: routewise_router::dispatch::AssignerKind::Exact,
                    window_ms: 3.0,
                    max_batch: 64,
                    near: 0.75,
                    queue_price: 0.02,
                }),
            }
        );
        // A single base_url is one deployment named after its host; replay is one too.
        let c = p(GOOD, &[]).unwrap();
        assert_eq!(c.models[0].deployments[0].name, "127.0.0.1:9001");
        assert_eq!(c.models[1].deployments[0].name, "replay");
        assert_eq!(c.dispatch, DispatchConfig::default());
    }

    #[test]
    fn deployment_mistakes_are_reported_at_their_paths() {
        let text = GOOD.replace(
            "  - name: b\n",
            "  - name: c\n    base_url: http://x/v1\n    max_concurrency: 0\n    deployments:\n      \
             - {name: d, base_url: 'http://10.0.0.1/v1', max_concurrency: 0, weight: 0}\n      \
             - {name: d, base_url: 'http://10.0.0.2/v1', colour: red}\n      \
             - {name: e, base_url: 'http://10.0.0.3/v1', api_key_env: NOPE}\n  \
             - {name: f, deployments: []}\n  \
             - {name: g, provider: replay, deployments: [{name: x}]}\n  - name: b\n",
        ) + "dispatch: {queue_ms: 100000, balance: {window_ms: 0, near: 1.5, queue_price: -1}}\n";
        let e = p(&text, &[]).unwrap_err().to_string();
        for want in [
            "gw.yaml: models[1].base_url: a model with `deployments` sets this per deployment",
            "gw.yaml: models[1].max_concurrency: a model with `deployments` sets this per deployment",
            "gw.yaml: models[1].deployments[0].max_concurrency: must be > 0",
            "gw.yaml: models[1].deployments[0].weight: must be finite and > 0, found 0",
            "gw.yaml: models[1].deployments[1].colour: unknown field `colour`",
            "gw.yaml: models[1].deployments[2].api_key_env: environment variable NOPE is not set",
            "gw.yaml: models[2].deployments: give at least one deployment",
            "gw.yaml: models[3].deployments: a replay model has no deployments",
            "gw.yaml: dispatch.queue_ms: must be in 0..=60000, found 100000",
            "gw.yaml: dispatch.balance.window_ms: must be in [0.1, 50], found 0",
            "gw.yaml: dispatch.balance.near: must be in (0, 1], found 1.5",
            "gw.yaml: dispatch.balance.queue_price: must be finite and >= 0, found -1",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
        let e = p(
            &(GOOD.to_string() + "dispatch: {balance: {solver: magic}}\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("gw.yaml: dispatch.balance.solver: unknown variant `magic`"),
            "{e}"
        );
        // Two deployments under one name.
        let dup = GOOD.replace(
            "  - name: b\n",
            "  - name: c\n    deployments:\n      - {name: d, base_url: 'http://10.0.0.1/v1'}\n      \
             - {name: d, base_url: 'http://10.0.0.2/v1'}\n  - name: b\n",
        );
        let e = p(&dup, &[]).unwrap_err().to_string();
        assert!(
            e.contains("models[1].deployments[1].name: `d` names another deployment"),
            "{e}"
        );
    }

    #[test]
    fn model_limits_and_auth_are_checked_at_their_paths() {
        let text = GOOD.replace("  - name: a\n", "  - name: a\n    limits: {rpm: 0}\n")
            + "auth: {mode: keys, cache_ttl_s: -1, reserve_output_tokens: 0}\n";
        let e = p(&text, &[]).unwrap_err().to_string();
        for want in [
            "gw.yaml: models[0].limits: rpm and tpm must be > 0",
            "gw.yaml: auth.cache_ttl_s: must be in [0, 3600]",
            "gw.yaml: auth.reserve_output_tokens: must be in [1, 10000000]",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
        let ok = GOOD.replace("  - name: a\n", "  - name: a\n    limits: {tpm: 1000}\n")
            + "auth: {mode: keys}\n";
        let c = p(&ok, &[]).unwrap();
        assert_eq!(c.auth.mode, AuthMode::Keys);
        assert_eq!(
            c.models[0].deployments[0].limits,
            Some(ModelLimits {
                rpm: None,
                tpm: Some(1000)
            })
        );
    }

    #[test]
    fn sections_validate_themselves_and_deprecations_are_warnings() {
        let c = p(
            &format!("{GOOD}bandit: {{lambda: 2.0}}\nstate: {{backend: local}}\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].path, "bandit.lambda");
        let e = p(
            &format!("{GOOD}bandit: {{alpha: -1, forgetting: 2}}\nstate: {{backend: redis}}\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        for want in [
            "gw.yaml: bandit.alpha: must be finite and >= 0",
            "gw.yaml: bandit.forgetting: must be in (0, 1]",
            "gw.yaml: state.redis_url: the redis backend needs a redis_url",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
        // Policy problems and router problems are reported together.
        let e = p(
            "router: {policy: {lambda: -1}, extra: 1}\nmodels: [{name: x, provider: replay}]",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("gw.yaml: router.policy.lambda: must be a finite number >= 0"),
            "{e}"
        );
        assert!(e.contains("gw.yaml: router.extra: unknown field"), "{e}");
        let e = p(
            "models: [{name: a, provider: anthropic, base_url: 'http://x/v1', anthropic_version: ''}]",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("models[0].anthropic_version"), "{e}");
    }

    #[test]
    fn artifact_is_relative_to_the_file_and_models_are_required() {
        let c = p(
            "router: {artifact: r.rw}\nmodels: [{name: x, provider: replay}]",
            &[],
        )
        .unwrap();
        assert_eq!(c.router.artifact, Some(PathBuf::from("/cfg/r.rw")));
        let e = p("listen: 127.0.0.1:1", &[]).unwrap_err().to_string();
        assert!(e.contains("gw.yaml: models: missing field"));
        let e = p("models: [", &[]).unwrap_err().to_string();
        assert!(e.starts_with("gw.yaml: invalid YAML"), "{e}");
    }

    #[test]
    fn regression_every_error_of_a_section_is_reported() {
        let text = GOOD.replace(
            "limits: {max_attempts: 2}",
            "limits: {max_attempts: 0, request_timeout_ms: -5, header_timeout_ms: x}",
        );
        let e = p(&text, &[]).unwrap_err().to_string();
        for want in [
            "gw.yaml: limits.max_attempts: must be in 1..=64",
            "gw.yaml: limits.request_timeout_ms:",
            "gw.yaml: limits.header_timeout_ms:",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
    }

    #[test]
    fn regression_absurd_values_are_refused_and_realistic_ones_kept() {
        let with = |limits: &str, cooldown: &str| {
            let text = GOOD.replace("limits: {max_attempts: 2}", limits);
            p(&format!("{text}cooldown: {cooldown}\n"), &[])
        };
        let max = u64::MAX;
        let e = with(
            &format!("limits: {{request_timeout_ms: {max}, max_body_bytes: {max}, idle_timeout_ms: {max}}}"),
            "{seconds: 1e300}",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "limits.request_timeout_ms: must be in",
            "limits.max_body_bytes: must be in",
            "limits.idle_timeout_ms: must be in",
            "cooldown.seconds:",
        ] {
            assert!(e.contains(want), "missing `{want}` in:\n{e}");
        }
        let c = with(
            "limits: {max_attempts: 64, request_timeout_ms: 600000, max_body_bytes: 104857600, max_connections: 100000, max_in_flight: 50000, shutdown_grace_ms: 120000}",
            "{seconds: 3600, failures: 10}",
        )
        .unwrap();
        assert_eq!(c.limits.max_attempts, 64);
        assert_eq!(c.limits.max_body_bytes, 100 << 20);
        assert_eq!(c.limits.max_connections, 100_000);
    }

    #[test]
    fn regression_env_override_errors_name_the_variable() {
        let e = p(GOOD, &[("ROUTEWISE_LIMITS__REQUEST_TIMEOUT_MS", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.request_timeout_ms (set by ROUTEWISE_LIMITS__REQUEST_TIMEOUT_MS)"),
            "{e}"
        );
        let e = p(GOOD, &[("ROUTEWISE_MODELS__0__BASE_URL", "nope")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models[0].base_url (set by ROUTEWISE_MODELS__0__BASE_URL)"),
            "{e}"
        );
    }

    #[test]
    fn exploration_and_prompt_logging_are_read_and_checked() {
        let c = p(GOOD, &[]).unwrap();
        assert_eq!(c.router.epsilon, 0.0);
        assert!(!c.decision_log.prompt);
        let c = p(
            GOOD,
            &[
                ("ROUTEWISE_ROUTER__EXPLORATION__EPSILON", "0.05"),
                ("ROUTEWISE_LOG__DECISIONS__PROMPT", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.router.epsilon, 0.05);
        assert!(c.decision_log.prompt);
        for bad in ["1.5", "-0.1", "nan"] {
            let e = p(GOOD, &[("ROUTEWISE_ROUTER__EXPLORATION__EPSILON", bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("router.exploration.epsilon"), "{bad}: {e}");
        }
    }

    #[test]
    fn shadows_are_named_resolved_and_checked() {
        let c = p(
            &format!("{GOOD}shadow: [{{artifact: next.rw}}, {{name: b, artifact: /abs/b.rw, policy: {{lambda: 2}}}}]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.shadows.len(), 2);
        assert_eq!(c.shadows[0].name, "next");
        assert_eq!(c.shadows[0].artifact, Path::new("/cfg/next.rw"));
        assert_eq!(c.shadows[0].policy, None);
        assert_eq!(c.shadows[1].artifact, Path::new("/abs/b.rw"));
        assert_eq!(c.shadows[1].policy, Some(Policy::Lambda(2.0)));
        let e = p(
            &format!("{GOOD}shadow: [{{artifact: a/x.rw}}, {{artifact: b/x.rw}}, {{artifact: c.rw, execute: true}}]\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("shadow[1].name: duplicate shadow name `x`"),
            "{e}"
        );
        assert!(e.contains("shadow[2].execute"), "{e}");
        let e = p(
            &format!(
                "{GOOD}shadow: [{{artifact: a.rw, execute: {{sample: 2, max_usd_per_day: -1}}}}]\n"
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shadow[0].execute.sample"), "{e}");
        assert!(e.contains("shadow[0].execute.max_usd_per_day"), "{e}");
        let e = p(
            &format!(
                "{GOOD}shadow: [{{artifact: a.rw, sample: 0}}, {{artifact: b.rw, sample: 1.5}}]\n"
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("shadow[0].sample") && e.contains("shadow[1].sample"),
            "{e}"
        );
        let c = p(
            &format!("{GOOD}shadow: [{{artifact: a.rw, execute: {{sample: 0.01, max_usd_per_day: 5}}}}]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.shadows[0].execute.unwrap().max_usd_per_day, 5.0);
    }

    #[test]
    fn the_default_limits_are_the_documented_ones() {
        let l = p(GOOD, &[]).unwrap().limits;
        assert_eq!(l.header_timeout_ms, 10_000);
        assert_eq!(l.body_timeout_ms, 30_000);
        assert_eq!(l.idle_timeout_ms, 60_000);
        assert_eq!(l.max_connections, 16_384);
        assert_eq!(l.max_connections_per_ip, 1_024);
        assert_eq!(l.max_in_flight, 4_096);
        assert_eq!(l.shutdown_grace_ms, 10_000);
    }

    #[test]
    fn regression_a_null_model_entry_is_an_error_not_an_empty_pool() {
        // Found by fuzzing: `models: [null]` parsed as a config with no model.
        let e = p("models:\n  - \n", &[]).unwrap_err().to_string();
        assert!(e.contains("gw.yaml: models[0]: must be a model"), "{e}");
    }

    #[test]
    fn regression_an_issue_is_one_line_whatever_the_key_holds() {
        // Found by fuzzing: an unknown key with a newline split its issue over lines.
        let e = p(
            "models: [{name: m, provider: replay, \"bad\\nkey\\r\": 1}]",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e.lines().count(), e.matches("gw.yaml: ").count(), "{e}");
        assert!(e.contains("bad\\nkey\\r"), "{e}");
    }

    #[test]
    fn regression_lowering_max_connections_alone_is_valid() {
        // Review finding: the per-IP default (1024) contradicted a lower total cap.
        let c = p(
            &GOOD.replace(
                "limits: {max_attempts: 2}",
                "limits: {max_connections: 500}",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.limits.max_connections_per_ip, 500);
        let e = p(
            &GOOD.replace(
                "limits: {max_attempts: 2}",
                "limits: {max_connections: 500, max_connections_per_ip: 600}",
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("limits.max_connections_per_ip: must be in 0..=500"),
            "{e}"
        );
    }
}
