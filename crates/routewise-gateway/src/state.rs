//! The gateway's shared state: validated config + routing engine + per-model runtime
//! (upstream URL, key, prices, breaker, metrics) + the pooled HTTP client.
//!
//! Built once at start-up by [`AppState::new`], which also checks that the router and the
//! config agree: every model the router knows is served by a `models` entry, and every
//! entry is a model the router knows, except, with `bandit:` configured, new models with
//! a configured `price`: the online router onboards them (optimistic prior, forced
//! exploration) with catalog indices after the router's own models.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use routewise_router::{Engine, ModelInfo};

use crate::config::{Config, ConfigError, Issue, Price, Provider};
use crate::cooldown::Breaker;
use crate::metrics::Metrics;
use crate::online::OnlineSlot;
use crate::replay::Replay;

/// One configured model at run time.
#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub provider: Provider,
    /// `{base_url}/chat/completions`, parsed once (`None` for `replay`).
    pub url: Option<reqwest::Url>,
    /// `Bearer <key>`, marked sensitive.
    pub auth: Option<HeaderValue>,
    pub upstream_model: String,
    /// Configured prices, else the router catalog's.
    pub price: Price,
    pub context_window: Option<u64>,
    /// This model's position in the router's catalog.
    pub catalog_index: usize,
}

impl Upstream {
    /// USD cost of a call with this usage.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.price.input_per_mtok
            + completion_tokens as f64 * self.price.output_per_mtok)
            / 1e6
    }
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub engine: Engine,
    pub upstreams: Vec<Upstream>,
    pub by_name: HashMap<String, usize>,
    /// Catalog index -> upstream index.
    pub catalog_to_upstream: Vec<usize>,
    pub context_windows: Vec<Option<u64>>,
    pub breakers: Vec<Breaker>,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    pub replay: Option<Arc<Replay>>,
    /// Configured models the router's artifact does not know (only with `bandit:`);
    /// catalog index `engine.catalog.len() + k`.
    pub new_models: Vec<ModelInfo>,
    /// The online router and its state (set by [`crate::online::attach`] when the
    /// config has `bandit:`).
    pub online: OnlineSlot,
    started: Instant,
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
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl AppState {
    /// Builds the state; `replay` answers the `replay` models (required if any).
    pub fn new(
        config: Config,
        mut engine: Engine,
        replay: Option<Replay>,
    ) -> Result<AppState, StateError> {
        let mut issues = Vec::new();
        let mut catalog_to_upstream = vec![usize::MAX; engine.catalog.len()];
        let mut upstreams = Vec::with_capacity(config.models.len());
        let mut new_models: Vec<ModelInfo> = Vec::new();
        let n_offline = engine.catalog.len();
        let mean_output_tokens = engine
            .catalog
            .models
            .iter()
            .map(|m| m.mean_output_tokens)
            .sum::<f64>()
            / n_offline.max(1) as f64;
        for (i, m) in config.models.iter().enumerate() {
            let known = engine.catalog.index(&m.name);
            let ci = match (known, &config.bandit, m.price) {
                (Some(ci), _, _) => ci,
                (None, Some(_), Some(p)) => {
                    // A new model: onboarded by the online router.
                    new_models.push(ModelInfo {
                        name: m.name.clone(),
                        input_per_mtok: p.input_per_mtok,
                        output_per_mtok: p.output_per_mtok,
                        mean_output_tokens,
                    });
                    catalog_to_upstream.push(usize::MAX);
                    n_offline + new_models.len() - 1
                }
                (None, Some(_), None) => {
                    issues.push(Issue {
                        path: format!("models[{i}].price"),
                        message: format!(
                            "`{}` is not a model the router knows: the bandit can onboard it, but it needs a price",
                            m.name
                        ),
                    });
                    continue;
                }
                (None, None, _) => {
                    issues.push(Issue {
                        path: format!("models[{i}].name"),
                        message: format!(
                            "`{}` is not a model the router knows (router models: {})",
                            m.name,
                            engine.catalog.names().collect::<Vec<_>>().join(", ")
                        ),
                    });
                    continue;
                }
            };
            if m.provider == Provider::Replay && !replay.as_ref().is_some_and(|r| r.knows(&m.name))
            {
                issues.push(Issue {
                    path: format!("models[{i}].provider"),
                    message: format!(
                        "the replay provider has no recorded outcomes for `{}`",
                        m.name
                    ),
                });
            }
            let price = match (m.price, engine.catalog.models.get_mut(ci)) {
                (Some(p), Some(info)) => {
                    // Configured list prices also drive the router's cost predictions.
                    info.input_per_mtok = p.input_per_mtok;
                    info.output_per_mtok = p.output_per_mtok;
                    p
                }
                // A new model (its price is required above).
                (Some(p), None) => p,
                (None, Some(info)) => Price {
                    input_per_mtok: info.input_per_mtok,
                    output_per_mtok: info.output_per_mtok,
                },
                (None, None) => Price {
                    input_per_mtok: 0.0,
                    output_per_mtok: 0.0,
                },
            };
            let auth = match &m.api_key {
                Some(k) => match HeaderValue::from_str(&format!("Bearer {}", k.expose())) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        Some(v)
                    }
                    Err(_) => {
                        issues.push(Issue {
                            path: format!("models[{i}].api_key_env"),
                            message: "the key holds characters not allowed in an HTTP header"
                                .into(),
                        });
                        None
                    }
                },
                None => None,
            };
            let url = match m.provider {
                Provider::Replay => None,
                Provider::OpenAi => {
                    match reqwest::Url::parse(&format!("{}/chat/completions", m.base_url)) {
                        Ok(u) => Some(u),
                        Err(e) => {
                            issues.push(Issue {
                                path: format!("models[{i}].base_url"),
                                message: e.to_string(),
                            });
                            None
                        }
                    }
                }
            };
            catalog_to_upstream[ci] = upstreams.len();
            upstreams.push(Upstream {
                name: m.name.clone(),
                provider: m.provider,
                url,
                auth,
                upstream_model: m.upstream_model.clone(),
                price,
                context_window: m.context_window,
                catalog_index: ci,
            });
        }
        for (ci, &u) in catalog_to_upstream.iter().enumerate() {
            if u == usize::MAX {
                issues.push(Issue {
                    path: "router.artifact".into(),
                    message: format!(
                        "the router knows `{}` but no `models` entry serves it",
                        engine.catalog.models[ci].name
                    ),
                });
            }
        }
        if !issues.is_empty() {
            return Err(ConfigError {
                file: config.source.clone(),
                issues,
            }
            .into());
        }
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .no_proxy()
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_millis(config.limits.connect_timeout_ms))
            .build()
            .map_err(|e| StateError::Client(e.to_string()))?;
        let names: Vec<String> = upstreams.iter().map(|u| u.name.clone()).collect();
        let metrics = Metrics::new(&names);
        let breakers = upstreams
            .iter()
            .map(|_| {
                Breaker::new(
                    config.cooldown.failures,
                    (config.cooldown.seconds * 1000.0) as u64,
                )
            })
            .collect();
        Ok(AppState(Arc::new(Gateway {
            by_name: names
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, n)| (n, i))
                .collect(),
            context_windows: upstreams.iter().map(|u| u.context_window).collect(),
            catalog_to_upstream,
            upstreams,
            breakers,
            client,
            metrics,
            replay: replay.map(Arc::new),
            new_models,
            online: OnlineSlot::new(),
            engine,
            config,
            started: Instant::now(),
        })))
    }
}

impl Gateway {
    /// Milliseconds since start-up (the breakers' clock).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records a successful attempt on model `m`: closes its breaker, and clears its
    /// cooldown gauge when it had failures.
    pub fn record_success(&self, m: usize) {
        if self.breakers[m].success() {
            self.metrics.cooldown(m, false);
        }
    }

    /// Records a failed attempt on model `m`; returns true when this failure opened its
    /// breaker (then also counted in the cooldown metrics).
    pub fn record_failure(&self, m: usize) -> bool {
        let opened = self.breakers[m].failure(self.now_ms());
        if opened {
            self.metrics.cooldown(m, true);
        }
        opened
    }
}
