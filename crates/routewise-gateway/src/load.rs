//! Building a ready [`AppState`] from a config file or the embedded demo: config, then
//! the routing engine (the artifact, or the demo router when none is given), then the
//! replay data when a model uses the `replay` provider, then the cross-checks, then the
//! shadow routers' artifacts. [`prepare_file`] does the blocking part alone (what a hot
//! reload runs off the async threads, [`crate::reload`]), with the version digest.

use std::path::Path;

use sha2::{Digest, Sha256};

use routewise_router::{Artifact, Catalog, Engine, ModelInfo};

use crate::config::{self, Config, ConfigError, Provider, RouterMode};
use crate::demo;
use crate::pipeline::shadow::Shadow;
use crate::state::{AppState, Prepared, StateError};
use crate::upstream::replay::Replay;

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The config (or the artifact it names) is wrong: every problem, with file and field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded demo data failed to load (a build defect).
    #[error("embedded demo data: {0}")]
    Demo(String),
    #[error("cannot start the decision log writer: {0}")]
    DecisionLog(std::io::Error),
    #[error("cannot start the shadow routers' worker: {0}")]
    Shadows(std::io::Error),
}

impl From<StateError> for LoadError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Config(c) => LoadError::Config(c),
            StateError::DecisionLog(e) => LoadError::DecisionLog(e),
            StateError::Shadows(e) => LoadError::Shadows(e),
        }
    }
}

/// Loads `path` (with `ROUTEWISE_*` overrides from the environment) and builds the state.
pub fn from_file(path: &Path) -> Result<AppState, LoadError> {
    Ok(AppState::first(prepare_file(path)?)?)
}

/// Reads, validates and loads `path` (with `ROUTEWISE_*` overrides from the environment)
/// without building the state: blocking file work only.
pub fn prepare_file(path: &Path) -> Result<Prepared, LoadError> {
    prepare(read_file(path)?)
}

/// Reads and validates `path` and names its version, without loading what it points at
/// (a reload that finds the version unchanged stops there).
pub fn read_file(path: &Path) -> Result<Versioned, LoadError> {
    let (config, text) = config::load_with_text(path)?;
    Ok(versioned(config, text.as_bytes()))
}

/// A validated config with its version: a digest of the text it was parsed from and of
/// every artifact file it names.
pub struct Versioned {
    pub config: Config,
    pub version: String,
    pub artifact_digest: Option<String>,
    pub shadow_digests: Vec<String>,
}

/// Names the version of `config`, parsed from `text`.
pub fn versioned(config: Config, text: &[u8]) -> Versioned {
    let mut version = Sha256::new();
    version.update(Sha256::digest(text));
    let artifact_digest = config.router.artifact.as_deref().map(file_digest);
    if let Some(d) = &artifact_digest {
        version.update(d);
    }
    let mut shadow_digests = Vec::with_capacity(config.shadows.len());
    for s in &config.shadows {
        let d = file_digest(&s.artifact);
        version.update(d);
        shadow_digests.push(short_hex(&d));
    }
    Versioned {
        config,
        version: short_hex(&version.finalize()),
        artifact_digest: artifact_digest.map(|d| short_hex(&d)),
        shadow_digests,
    }
}

/// The embedded demo (with `ROUTEWISE_*` overrides from the environment).
pub fn demo() -> Result<AppState, LoadError> {
    build(demo::config(std::env::vars())?)
}

/// Hex of the first 8 bytes of a SHA-256.
fn short_hex(digest: &[u8]) -> String {
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The digest of a file the config names (empty when unreadable: loading it reports why).
fn file_digest(path: &Path) -> [u8; 32] {
    std::fs::read(path).map_or([0; 32], |b| Sha256::digest(&b).into())
}

/// Builds the state for a validated config.
/// Completion tokens the zero-data router assumes per answer when it prices a request.
pub const ZERO_DATA_OUTPUT_TOKENS: f64 = 256.0;

/// `router.mode: rules`: no outcome data; every model scores its `quality_tier` share
/// ([`routewise_signals::tiers::tier_scores`]) and costs its configured prices.
fn zero_data_engine(config: &Config) -> Engine {
    let catalog = Catalog {
        models: config
            .models
            .iter()
            .map(|m| {
                let (input, output) = m
                    .price
                    .map_or((0.0, 0.0), |p| (p.input_per_mtok, p.output_per_mtok));
                ModelInfo {
                    name: m.name.clone(),
                    input_per_mtok: input,
                    output_per_mtok: output,
                    mean_output_tokens: ZERO_DATA_OUTPUT_TOKENS,
                }
            })
            .collect(),
    };
    let tiers: Vec<Option<u32>> = config.models.iter().map(|m| m.quality_tier).collect();
    Engine::constant(catalog, routewise_signals::tiers::tier_scores(&tiers))
}

/// What the config points at but a start does not require, checked once (blocking): the
/// response cache's and conversation affinity's Redis (`cache.redis_url`,
/// `affinity.redis_url`, PING within 2 s) and, with `auth: {mode:
/// keys}`, the state's Redis (`state.redis_url`). `check-config` reports these as errors;
/// `serve` starts anyway and logs them (the cache misses, and keys not yet seen get 503,
/// until Redis answers).
pub fn reachability(config: &Config) -> Vec<config::Issue> {
    let mut issues = Vec::new();
    let mut ping = |path: &str, url: &str, why: &str| {
        if let Err(e) =
            crate::redis_link::RedisLink::ping_blocking(url, std::time::Duration::from_secs(2))
        {
            issues.push(config::Issue {
                path: path.into(),
                message: format!("cannot reach Redis{why}: {e}"),
            });
        }
    };
    if let Some(config::CacheConfig {
        backend: config::CacheBackend::Redis { url, .. },
        ..
    }) = &config.cache
    {
        ping("cache.redis_url", url, "");
    }
    if let Some(config::AffinityConfig {
        backend: config::CacheBackend::Redis { url, .. },
        ..
    }) = &config.affinity
    {
        ping("affinity.redis_url", url, "");
    }
    // Keys in Redis: every request depends on it (fail closed), so check it like the cache.
    if let (config::AuthMode::Keys, Some(url)) = (config.auth.mode, &config.state.redis_url) {
        ping(
            "state.redis_url",
            url,
            ", where `auth: {mode: keys}` keeps the keys",
        );
    }
    issues
}

pub fn build(config: Config) -> Result<AppState, LoadError> {
    let text = config.source.clone();
    Ok(AppState::first(prepare(versioned(
        config,
        text.as_bytes(),
    ))?)?)
}

/// `router.cascade: {learned: true}`: the artifact's calibrated chain, and its tier's
/// names (the config's models match the artifact's, checked later with the catalog).
fn learned_chain(config: &mut Config, artifact: &Artifact) -> Result<(), ConfigError> {
    let source = config.source.clone();
    let Some(c) = config.router.cascade.as_mut().filter(|c| c.learned) else {
        return Ok(());
    };
    let Some(chain) = &artifact.meta.cascade else {
        return Err(ConfigError::single(
            &source,
            "router.cascade.learned",
            "the router artifact carries no calibrated cascade: write one with `routewise \
             calibrate --cascade --alpha A --artifact router.rw`",
        ));
    };
    c.tier = chain
        .cascade
        .tier
        .iter()
        .filter_map(|&m| artifact.meta.models.get(m).cloned())
        .collect();
    c.chain = Some(std::sync::Arc::new(chain.clone()));
    // The guarantee holds for escalation at the calibrated lambda.
    if config.router.policy != routewise_router::Policy::Lambda(chain.lambda) {
        tracing::warn!(
            calibrated_lambda = chain.lambda,
            policy = ?config.router.policy,
            "the learned cascade was calibrated for escalation at another policy: its \
             guarantee does not carry over to this one"
        );
    }
    Ok(())
}

/// Loads what a validated config points at (the artifacts, the demo data).
pub fn prepare(versioned: Versioned) -> Result<Prepared, LoadError> {
    let Versioned {
        mut config,
        version,
        artifact_digest,
        shadow_digests,
    } = versioned;
    let needs_replay = config.models.iter().any(|m| m.provider == Provider::Replay);
    let rules_mode = config.router.mode == RouterMode::Rules;
    let demo_data = if needs_replay || (config.router.artifact.is_none() && !rules_mode) {
        Some(demo::dataset().map_err(|e| LoadError::Demo(e.to_string()))?)
    } else {
        None
    };
    let engine: Engine = match &config.router.artifact {
        None if rules_mode => zero_data_engine(&config),
        Some(path) => {
            let artifact = Artifact::load(path).map_err(|e| {
                ConfigError::single(&config.source, "router.artifact", e.to_string())
            })?;
            learned_chain(&mut config, &artifact)?;
            artifact.into_engine()
        }
        None => match &demo_data {
            Some(d) => demo::engine(d).map_err(|e| LoadError::Demo(e.to_string()))?,
            None => return Err(LoadError::Demo("no demo data".into())),
        },
    };
    let replay = match (&demo_data, needs_replay) {
        (Some(d), true) => Some(Replay::from_dataset(d)),
        _ => None,
    };
    let mut shadows = Vec::with_capacity(config.shadows.len());
    for (i, s) in config.shadows.iter().enumerate() {
        let engine = Artifact::load(&s.artifact)
            .map_err(|e| {
                ConfigError::single(
                    &config.source,
                    &format!("shadow[{i}].artifact"),
                    e.to_string(),
                )
            })?
            .into_engine();
        shadows.push(Shadow {
            name: s.name.clone(),
            engine,
            policy: s.policy,
            sample: s.sample,
            execute: s.execute,
        });
    }
    Ok(Prepared {
        config,
        engine,
        replay,
        shadows,
        version,
        artifact_digest,
        shadow_digests,
    })
}
