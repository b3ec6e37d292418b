//! The gateway's shared state: the validated config, the deciding router (one
//! `Arc<dyn Decide>`: the offline [`Engine`], or the online bandit router wrapping it when
//! `bandit:` is configured), the typed model table (its providers share one pooled HTTP client), the metrics,
//! and the online learner's store once attached.
//!
//! Built at start-up by [`AppState::new`]: the configured models are reconciled with
//! the router's catalog (`routewise_router::Catalog::reconcile`: configured prices
//! override fitted ones; with `bandit:`, configured models the artifact lacks join with
//! their price), then the [`ModelTable`] is built in catalog order. The online store is
//! opened by [`AppState::attach_online`] (async; called by [`crate::serve`]).
//!
//! One `Gateway` is one *generation*: a configuration and what was built from it. A hot
//! reload ([`crate::reload`]) builds the next generation with [`AppState::next`], which
//! shares what outlives a configuration (the metrics registry, the decision log, the
//! shutdown signal, the load-shedding counter, the upstream connection pools, the keys
//! and the online store, the admin key) and carries over each kept model's breaker and
//! quota. A request uses the generation it started on until it ends.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use routewise_online::{Backend, OnlineRouter};
use routewise_router::{ConfiguredModel, Decide, Engine, Exploring, ModelInfo};

use crate::config::{Config, ConfigError, Issue};
use crate::limits::Counter;
use crate::metrics::Metrics;
use crate::models::{ModelId, ModelTable};
use crate::online::Online;
use crate::pipeline::decision_log::DecisionLog;
use crate::pipeline::shadow::{Shadow, Shadows};
use crate::upstream::client::HttpClient;
use crate::upstream::replay::Replay;

/// Everything a request handler needs: one generation of the configuration.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    /// 0 for the configuration served at start, then one more per installed reload.
    pub generation: u64,
    /// The configuration's version: a digest of the config file's text and the router
    /// artifact's bytes (`/readyz`, the reload answer).
    pub version: String,
    /// A digest of the router artifact's bytes (`None`: no artifact file).
    pub artifact_digest: Option<String>,
    /// What ranks the models for a request.
    pub decider: Arc<dyn Decide>,
    /// The offline router (the decider without `bandit:`, the bandit's prior with it),
    /// over the artifact's models with the operator's prices.
    pub engine: Arc<Engine>,
    /// The served models, indexed like the decider's catalog.
    pub upstreams: ModelTable,
    /// Their names, in the same order.
    pub names: Arc<[String]>,
    /// Which router decides (the artifact's digest; the version without an artifact): the
    /// dashboard's frontier keeps the predictions of this one only.
    pub router_id: Arc<str>,
    /// The dashboard's statistics ([`crate::stats`]), kept across reloads.
    pub stats: Arc<crate::stats::Stats>,
    pub metrics: Metrics,
    /// The decision log's queue and writer.
    pub decision_log: Arc<DecisionLog>,
    /// The online router (it is the decider) when `bandit:` is configured.
    pub online_router: Option<Arc<OnlineRouter>>,
    /// The online router's store and maintenance task, once attached.
    pub online: Arc<OnceLock<Online>>,
    /// The shadow routers' queue and worker, once attached (`shadow:` in the config); kept
    /// by a reload that leaves them unchanged.
    pub shadows: OnceLock<Arc<Shadows>>,
    /// Digests of the shadow artifacts, in `config.shadows` order.
    pub shadow_digests: Vec<String>,
    /// `/v1/*` requests in flight (load shedding, [`crate::http::limit`]).
    pub in_flight: Arc<Counter>,
    /// The `routes:` rules with their model indices in catalog order (the config compiles
    /// them in its own order; candidates are in the catalog's).
    pub rules: Option<routewise_signals::RuleSet>,
    /// Which models are `private: true`, in catalog order (`pii: {action: restrict}`).
    pub private: Vec<bool>,
    /// The response cache (`cache:` in the config).
    pub cache: Option<Arc<crate::pipeline::cache::ResponseCache>>,
    /// The conversations' models (`affinity:` in the config); kept by a reload with the
    /// same settings over the same models in the same order.
    pub affinity: Option<Arc<crate::pipeline::affinity::Conversations>>,
    /// The batch of balanced dispatch (`dispatch.balance`), per configuration.
    pub balancer: Option<crate::pipeline::balance::Balancer>,
    /// Where shutdown stands (streams end early once it is [`ShutdownPhase::Aborting`]).
    pub shutdown: Arc<watch::Sender<ShutdownPhase>>,
    /// The virtual keys, once attached (`auth: {mode: keys}`).
    pub keys: Arc<OnceLock<crate::pipeline::auth::Keys>>,
    /// SHA-256 of the admin key (`ROUTEWISE_ADMIN_KEY`), once set: the admin API is off
    /// without it.
    pub admin_key: Arc<OnceLock<[u8; 32]>>,
    /// The upstream client (its pools are kept across reloads).
    client: HttpClient,
    started: Instant,
}

/// What a new generation is built from: a validated config and what it points at
/// ([`crate::load::prepare`]).
pub struct Prepared {
    pub config: Config,
    pub engine: Engine,
    /// Answers the `replay` models (required if any).
    pub replay: Option<Replay>,
    pub shadows: Vec<Shadow>,
    pub version: String,
    pub artifact_digest: Option<String>,
    /// Digests of the shadow artifacts, in `config.shadows` order.
    pub shadow_digests: Vec<String>,
}

/// The server's shutdown, as the requests in flight see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownPhase {
    Running,
    /// No new connections; requests in flight finish.
    Draining,
    /// The grace period is over: streams end now with an error event.
    Aborting,
}

/// Cheaply clonable handle on the gateway state.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Gateway>);

impl std::ops::Deref for AppState {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.0
    }
}

/// Failure to build the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the decision log writer: {0}")]
    DecisionLog(#[from] std::io::Error),
    #[error("cannot start the shadow routers' worker: {0}")]
    Shadows(std::io::Error),
}

impl AppState {
    /// Builds the state; `replay` answers the `replay` models (required if any).
    pub fn new(
        config: Config,
        engine: Engine,
        replay: Option<Replay>,
    ) -> Result<AppState, StateError> {
        Self::build(
            Prepared {
                config,
                engine,
                replay,
                shadows: Vec::new(),
                version: String::new(),
                artifact_digest: None,
                shadow_digests: Vec::new(),
            },
            None,
        )
    }

    /// Builds the first generation from `prepared`, shadows attached.
    pub fn first(prepared: Prepared) -> Result<AppState, StateError> {
        Self::build(prepared, None)
    }

    /// Builds the generation that replaces this one (a reload), sharing what outlives a
    /// configuration (see the module docs). The caller has checked that `prepared`
    /// changes nothing fixed at start ([`crate::reload::fixed_at_start`]).
    pub fn next(&self, prepared: Prepared) -> Result<AppState, StateError> {
        Self::build(prepared, Some(self))
    }

    fn build(prepared: Prepared, prev: Option<&Gateway>) -> Result<AppState, StateError> {
        let Prepared {
            config,
            mut engine,
            replay,
            shadows,
            version,
            artifact_digest,
            shadow_digests,
        } = prepared;
        let file = config.source.clone();
        let config_error = |issues: Vec<Issue>| ConfigError {
            file: file.clone(),
            issues,
        };
        let configured: Vec<ConfiguredModel<'_>> = config
            .models
            .iter()
            .map(|m| ConfiguredModel {
                name: &m.name,
                price: m.price.map(|p| (p.input_per_mtok, p.output_per_mtok)),
            })
            .collect();
        let reconciled = engine
            .catalog
            .reconcile(&configured, config.bandit.is_some())
            .map_err(|issues| {
                config_error(
                    issues
                        .into_iter()
                        .map(|i| Issue {
                            path: match i.entry {
                                Some(e) => format!("models[{e}].{}", i.field),
                                None => "router.artifact".into(),
                            },
                            message: i.message,
                        })
                        .collect(),
                )
            })?;
        // The offline router costs its models at the operator's prices.
        engine.catalog.models = reconciled.catalog.models[..reconciled.n_known].to_vec();
        let mut engine = Arc::new(engine);
        let client = match prev {
            Some(p) => p.client.clone(),
            None => HttpClient::new(Duration::from_millis(config.limits.connect_timeout_ms)),
        };
        let mut upstreams = ModelTable::build(&config, &reconciled, &client, replay.map(Arc::new))
            .map_err(config_error)?;
        let metrics = match prev {
            Some(p) => {
                upstreams.carry_from(&p.upstreams, p.config.cooldown == config.cooldown);
                let metrics = p.metrics.for_models(&upstreams.names());
                // The cooldown gauges say what the carried (or fresh) breakers say; a
                // model no longer served is not cooling down.
                let now = p.now_ms();
                for u in upstreams.iter() {
                    metrics.set_cooldown(u.id.index(), u.breaker.is_open(now));
                }
                let gone: Vec<String> = p
                    .upstreams
                    .names()
                    .into_iter()
                    .filter(|n| upstreams.by_name(n).is_none())
                    .collect();
                metrics.clear_cooldowns(&gone);
                // Deployments no longer served stop being exported.
                for u in p.upstreams.iter() {
                    let kept = upstreams.by_name(&u.name).map(|id| upstreams.get(id));
                    for d in &u.deployments {
                        if kept.is_none_or(|k| !k.deployments.iter().any(|x| x.name == d.name)) {
                            metrics.forget_deployment(&u.name, &d.name);
                        }
                    }
                }
                metrics
            }
            None => Metrics::new(&upstreams.names()),
        };
        let carried_bandit =
            prev.and_then(|p| Some((Arc::clone(p.online_router.as_ref()?), Arc::clone(&p.engine))));
        let (decider, online_router): (Arc<dyn Decide>, _) = match (&config.bandit, carried_bandit)
        {
            // The bandit keeps what it learnt: its arms and prior are fixed at start.
            (Some(_), Some((router, prior))) => {
                engine = prior;
                (router.clone(), Some(router))
            }
            (Some(bandit), None) => {
                let router = OnlineRouter::new(
                    bandit.clone(),
                    Arc::clone(&engine),
                    reconciled.catalog.clone(),
                )
                .map_err(|e| ConfigError::single(&file, "bandit", e.to_string()))?;
                let router = Arc::new(router);
                (router.clone(), Some(router))
            }
            (None, _) => (engine.clone(), None),
        };
        let decider: Arc<dyn Decide> = if config.router.epsilon > 0.0 {
            Arc::new(Exploring::new(decider, config.router.epsilon))
        } else {
            decider
        };
        let cache = match (&config.cache, prev) {
            // An unchanged cache over the same models in the same order keeps its answers
            // (an entry names its model by position).
            (Some(c), Some(p))
                if p.config.cache.as_ref() == Some(c)
                    && p.upstreams.names() == upstreams.names() =>
            {
                p.cache.clone()
            }
            (Some(c), _) => Some(Arc::new(
                crate::pipeline::cache::ResponseCache::new(c)
                    .map_err(|e| ConfigError::single(&file, "cache.semantic", e))?,
            )),
            (None, _) => None,
        };
        let config_balance = config.dispatch.balance;
        let affinity = match (config.affinity.clone(), prev) {
            (Some(a), Some(p))
                if p.config.affinity.as_ref() == Some(&a)
                    && p.upstreams.names() == upstreams.names() =>
            {
                p.affinity.clone()
            }
            (Some(a), _) => Some(Arc::new(
                crate::pipeline::affinity::Conversations::new(a)
                    .map_err(|e| ConfigError::single(&file, "affinity.redis_url", e))?,
            )),
            (None, _) => None,
        };
        let catalog_of_config: Vec<Option<usize>> = config
            .models
            .iter()
            .map(|m| upstreams.by_name(&m.name).map(ModelId::index))
            .collect();
        let rules = config
            .routes
            .as_ref()
            .map(|r| r.reordered(&catalog_of_config, upstreams.len()));
        let mut private = vec![false; upstreams.len()];
        for (m, c) in config.models.iter().zip(&catalog_of_config) {
            if let Some(slot) = c.and_then(|c| private.get_mut(c)) {
                *slot = m.private;
            }
        }
        // What outlives a configuration: shared with the generation this one replaces.
        let (
            generation,
            stats,
            decision_log,
            online,
            in_flight,
            shutdown,
            keys,
            admin_key,
            started,
        ) = match prev {
            Some(p) => (
                p.generation + 1,
                Arc::clone(&p.stats),
                Arc::clone(&p.decision_log),
                Arc::clone(&p.online),
                Arc::clone(&p.in_flight),
                Arc::clone(&p.shutdown),
                Arc::clone(&p.keys),
                Arc::clone(&p.admin_key),
                p.started,
            ),
            None => (
                0,
                Arc::default(),
                Arc::new(DecisionLog::start(
                    config.decision_log,
                    metrics.decision_log_dropped(),
                )?),
                Arc::default(),
                Arc::new(Counter::default()),
                Arc::new(watch::channel(ShutdownPhase::Running).0),
                Arc::default(),
                Arc::default(),
                Instant::now(),
            ),
        };
        let gateway = Gateway {
            generation,
            stats,
            names: upstreams.names().into(),
            router_id: artifact_digest.as_ref().unwrap_or(&version).as_str().into(),
            metrics,
            shadow_digests,
            decision_log,
            online,
            in_flight,
            shutdown,
            keys,
            admin_key,
            started,
            config,
            version,
            artifact_digest,
            decider,
            engine,
            upstreams,
            online_router,
            shadows: OnceLock::new(),
            rules,
            private,
            cache,
            affinity,
            balancer: config_balance.map(crate::pipeline::balance::Balancer::new),
            client,
        };
        let state = AppState(Arc::new(gateway));
        let kept = prev.and_then(|p| {
            let same = p.config.shadows == state.config.shadows
                && p.shadow_digests == state.shadow_digests;
            p.shadows.get().filter(|_| same)
        });
        match kept {
            // Pointed at this generation once it is served (`Live::reload`).
            Some(s) => {
                let _ = state.shadows.set(Arc::clone(s));
            }
            None => state.attach_shadows(shadows).map_err(StateError::Shadows)?,
        }
        Ok(state)
    }

    /// Starts the shadow routers' worker (a no-op for none, or when already attached).
    pub fn attach_shadows(&self, shadows: Vec<Shadow>) -> std::io::Result<()> {
        if shadows.is_empty() || self.shadows.get().is_some() {
            return Ok(());
        }
        let started = Shadows::start(
            shadows,
            self.metrics.shadow_dropped(),
            crate::pipeline::shadow::Target::new(Arc::downgrade(&self.0)),
        )?;
        let _ = self.shadows.set(Arc::new(started));
        Ok(())
    }

    /// Attaches the stores the config uses: the online state ([`AppState::attach_online`])
    /// and the virtual keys ([`AppState::attach_keys`]).
    pub async fn attach_stores(&self) -> Result<(), ConfigError> {
        self.attach_online().await?;
        self.attach_keys().await
    }

    /// Opens the virtual keys' store (`auth: {mode: keys}`; a no-op otherwise, or when
    /// already attached) and, for the local file, loads every key.
    pub async fn attach_keys(&self) -> Result<(), ConfigError> {
        if self.config.auth.mode != crate::config::AuthMode::Keys || self.keys.get().is_some() {
            return Ok(());
        }
        let field = match self.config.state.backend() {
            Backend::Redis => "state.redis_url",
            Backend::Local => "state.path",
        };
        let fail = |e: String| ConfigError::single(&self.config.source, field, e);
        let cfg = self.config.state.clone();
        let (store, budgets) = tokio::task::spawn_blocking(move || {
            let keys = routewise_online::store::open::open_keys(&cfg)?;
            Ok::<_, routewise_online::StoreError>((
                keys,
                routewise_online::store::open::open_budgets(&cfg)?,
            ))
        })
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))?;
        let keys = crate::pipeline::auth::Keys::open(store, budgets, self)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = self.keys.set(keys);
        Ok(())
    }

    /// Turns the admin API on with `key` (`ROUTEWISE_ADMIN_KEY`).
    pub fn set_admin_key(&self, key: &str) {
        let _ = self.admin_key.set(crate::http::auth::admin_key_hash(key));
    }

    /// Opens the online router's state store and starts its maintenance task, when
    /// `bandit:` is configured (a no-op otherwise, or when already attached). Errors name
    /// the config file and field.
    pub async fn attach_online(&self) -> Result<(), ConfigError> {
        let (Some(router), None) = (&self.online_router, self.online.get()) else {
            return Ok(());
        };
        let field = match self.config.state.backend() {
            Backend::Redis => "state.redis_url",
            Backend::Local => "state.path",
        };
        let online = Online::open(Arc::clone(router), &self.config.state)
            .await
            .map_err(|e| ConfigError::single(&self.config.source, field, e.to_string()))?;
        // A concurrent attach may have won: ours is dropped (its task aborted).
        let _ = self.online.set(online);
        Ok(())
    }
}

impl Gateway {
    /// The router catalog's mean output tokens of the model at catalog index `i` (0 when
    /// unknown): the expected length of a call when the request sets no `max_tokens`.
    pub fn mean_output_tokens(&self, i: usize) -> u64 {
        self.decider
            .catalog()
            .models
            .get(i)
            .map_or(0.0, |m| m.mean_output_tokens.max(0.0)) as u64
    }

    /// Milliseconds since start-up (the breakers' clock).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Configured models the offline router does not know (onboarded by the bandit).
    pub fn new_models(&self) -> &[ModelInfo] {
        let known = self.engine.catalog.len();
        &self.decider.catalog().models[known.min(self.decider.catalog().len())..]
    }

    /// Records a successful attempt on deployment `d` of `m` that started at `started_ms`
    /// (the breakers' clock): closes the model's and the deployment's breakers unless they
    /// opened since, and clears the model's cooldown gauge when it had failures.
    pub fn record_success(&self, m: ModelId, d: Option<usize>, started_ms: u64) {
        let up = self.upstreams.get(m);
        if let Some(dep) = d.and_then(|d| up.deployments.get(d)) {
            dep.breaker.success_since(started_ms);
            dep.load.observe_outcome(true, self.now_ms());
        }
        if up.breaker.success_since(started_ms) {
            self.metrics.cooldown(m.index(), false);
        }
    }

    /// Records a failed attempt on deployment `d` of `m` (`None`: the model alone, for an
    /// answer with no call of its own); returns true when this failure
    /// opened the model's breaker (then also counted in the cooldown metrics).
    pub fn record_failure(&self, m: ModelId, d: Option<usize>) -> bool {
        let now = self.now_ms();
        let up = self.upstreams.get(m);
        if let Some(dep) = d.and_then(|d| up.deployments.get(d)) {
            dep.breaker.failure(now);
            dep.load.observe_outcome(false, now);
        }
        let opened = up.breaker.failure(now);
        if opened {
            self.metrics.cooldown(m.index(), true);
        }
        opened
    }
}
