//! YAML/JSON configuration of the online router ([`BanditConfig`]) and of its state store
//! ([`StateConfig`]). Both reject unknown keys and default every field, so a gateway
//! config can embed them as `bandit: {...}` and `state: {...}` blocks, and each validates
//! itself, returning every problem with its field path ([`ConfigIssue`]).
//!
//! The cost weight of the bandit's reward (`score - lambda * cost_usd`) is the lambda of
//! the policy that made each decision (the request's, else the operator's default; 0
//! under a budget policy), recorded with the decision. There is no separate bandit lambda
//! to keep equal to the policy's: `bandit.lambda` is accepted for old configs, ignored,
//! and reported by [`BanditConfig::deprecations`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which exploration rule the bandit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Upper confidence bound: `mean + alpha * sqrt(x^T A^-1 x)`, deterministic.
    Linucb,
    /// Linear Thompson sampling: `theta ~ N(A^-1 b, alpha^2 A^-1)`.
    Thompson,
}

/// Bandit hyper-parameters (see the crate docs for the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BanditConfig {
    pub algorithm: Algorithm,
    /// Exploration rate: the UCB width multiplier (LinUCB) or the posterior scale `v`
    /// (Thompson). 0 = greedy on the current estimate.
    pub alpha: f64,
    /// Prior strength `lambda0`: the ridge `A0 = lambda0 * I`. The larger, the longer the
    /// offline router's prediction (the prior mean) dominates the learned correction.
    pub prior_strength: f64,
    /// Forgetting factor `gamma` in `(0, 1]`: on each update of an arm its statistics are
    /// discounted toward the prior, `A <- gamma A + (1 - gamma) A0`, `b <- gamma b`.
    /// 1 = never forget; `1 / (1 - gamma)` is the effective memory in pulls of that arm.
    pub forgetting: f64,
    /// Dimension of the random projection of the prompt features (the context has one
    /// more entry, a constant bias).
    pub dim: usize,
    /// Seed of the projection matrix (must be equal across instances sharing state).
    pub projection_seed: u64,
    /// Deprecated and ignored: the reward's cost weight is the deciding policy's lambda
    /// (see the module docs). Still read so that old configs load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// Prior score of a model the offline router does not know (a newly configured one):
    /// optimistic, so it gets tried.
    pub optimistic_score: f64,
    /// A new model is force-explored until it has this many feedbacks.
    pub forced_exploration_pulls: u64,
    /// Probability that a request goes to an under-explored new model (split evenly
    /// when there are several).
    pub forced_exploration_rate: f64,
    /// Seed of the Thompson-sampling / forced-exploration random stream.
    pub seed: u64,
}

impl Default for BanditConfig {
    fn default() -> Self {
        BanditConfig {
            algorithm: Algorithm::Linucb,
            alpha: 0.1,
            prior_strength: 32.0,
            forgetting: 0.99,
            dim: 16,
            projection_seed: 0x5eed,
            lambda: None,
            optimistic_score: 1.0,
            forced_exploration_pulls: 50,
            forced_exploration_rate: 0.05,
            seed: 0,
        }
    }
}

impl BanditConfig {
    /// Dimension of the bandit context (projection + bias).
    pub fn context_dim(&self) -> usize {
        self.dim + 1
    }

    /// Checks ranges; every problem, with its field path (`bandit.alpha`).
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut bad =
            |field: &str, message: String| issues.push(ConfigIssue::new("bandit", field, message));
        for (name, v) in [
            ("alpha", self.alpha),
            ("lambda", self.lambda.unwrap_or(0.0)),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bad(name, format!("must be finite and >= 0, got {v}"));
            }
        }
        if !(self.prior_strength.is_finite() && self.prior_strength > 0.0) {
            bad(
                "prior_strength",
                format!("must be > 0, got {}", self.prior_strength),
            );
        }
        if !(self.forgetting > 0.0 && self.forgetting <= 1.0) {
            bad(
                "forgetting",
                format!("must be in (0, 1], got {}", self.forgetting),
            );
        }
        if self.dim == 0 || self.dim > 256 {
            bad("dim", format!("must be in 1..=256, got {}", self.dim));
        }
        if !self.optimistic_score.is_finite() {
            bad("optimistic_score", "must be finite".into());
        }
        if !(0.0..=1.0).contains(&self.forced_exploration_rate) {
            bad(
                "forced_exploration_rate",
                format!("must be in [0, 1], got {}", self.forced_exploration_rate),
            );
        }
        issues
    }

    /// Settings that are read but no longer used, with what to do instead.
    pub fn deprecations(&self) -> Vec<ConfigIssue> {
        match self.lambda {
            Some(l) => vec![ConfigIssue::new(
                "bandit",
                "lambda",
                format!(
                    "ignored ({l}): the reward's cost weight is the lambda of the policy that \
                     made each decision (router.policy, or the request's); remove this key"
                ),
            )],
            None => Vec::new(),
        }
    }
}

/// One configuration problem: the dotted field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl ConfigIssue {
    fn new(section: &str, field: &str, message: String) -> Self {
        ConfigIssue {
            path: format!("{section}.{field}"),
            message,
        }
    }
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Which state store holds the online state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A local redb file (`path`): one process.
    Local,
    /// Redis (`redis_url`): shared by every instance.
    Redis,
}

/// Where the online state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The store: `local` or `redis`. Unset: `redis` when `redis_url` is set, else
    /// `local` (the keys of earlier versions keep their meaning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Local redb file (the embedded default), used by the `local` backend.
    pub path: PathBuf,
    /// `redis://host:port[/db]`: share statistics and decisions across instances.
    pub redis_url: Option<String>,
    /// Key prefix in Redis (lets several deployments share one Redis).
    pub redis_prefix: String,
    /// How long a decision accepts feedback, in seconds.
    pub decision_ttl_s: u64,
    /// Redis command timeout in milliseconds (past it the store counts as unavailable).
    pub redis_timeout_ms: u64,
    /// How often the gateway should pull shared statistics from Redis, in milliseconds.
    pub refresh_interval_ms: u64,
    /// Whether the gateway is unready (`/readyz` 503) while the store is unreachable.
    /// Off by default: routing goes on with the last known statistics, so an optional
    /// store's outage must not take every instance out of a load balancer.
    pub required: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: None,
            path: PathBuf::from("routewise-state.redb"),
            redis_url: None,
            redis_prefix: "routewise".into(),
            decision_ttl_s: 86_400,
            redis_timeout_ms: 500,
            refresh_interval_ms: 1_000,
            required: false,
        }
    }
}

impl StateConfig {
    /// The store in use (see [`StateConfig::backend`]).
    pub fn backend(&self) -> Backend {
        match (self.backend, &self.redis_url) {
            (Some(b), _) => b,
            (None, Some(_)) => Backend::Redis,
            (None, None) => Backend::Local,
        }
    }

    /// Checks the fields the backend uses; every problem, with its path (`state.path`).
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut bad =
            |field: &str, message: String| issues.push(ConfigIssue::new("state", field, message));
        match (self.backend(), &self.redis_url) {
            (Backend::Local, Some(_)) => bad(
                "redis_url",
                "is set but `backend: local` keeps the state in `path`; remove one".into(),
            ),
            (Backend::Redis, None) => {
                bad("redis_url", "the redis backend needs a redis_url".into())
            }
            (_, Some(url)) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
                bad(
                    "redis_url",
                    format!("`{url}` is not a redis:// or rediss:// URL"),
                )
            }
            _ => {}
        }
        if self.path.as_os_str().is_empty() {
            bad("path", "must not be empty".into());
        }
        if self.redis_prefix.is_empty() {
            bad("redis_prefix", "must not be empty".into());
        }
        for (name, val) in [
            ("decision_ttl_s", self.decision_ttl_s),
            ("redis_timeout_ms", self.redis_timeout_ms),
            ("refresh_interval_ms", self.refresh_interval_ms),
        ] {
            if val == 0 {
                bad(name, "must be > 0".into());
            }
        }
        issues
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_keys_are_rejected() {
        assert!(BanditConfig::default().validate().is_empty());
        let c: BanditConfig = serde_json::from_str(r#"{"alpha": 0.2, "forgetting": 0.9}"#).unwrap();
        assert_eq!(c.alpha, 0.2);
        assert_eq!(c.dim, BanditConfig::default().dim);
        assert!(serde_json::from_str::<BanditConfig>(r#"{"alpah": 0.2}"#).is_err());
        assert!(serde_json::from_str::<StateConfig>(r#"{"redis": "x"}"#).is_err());
        let bad = BanditConfig {
            forgetting: 1.5,
            ..BanditConfig::default()
        };
        assert_eq!(bad.validate()[0].path, "bandit.forgetting");
        let old: BanditConfig = serde_json::from_str(r#"{"lambda": 2.0}"#).unwrap();
        assert_eq!(old.deprecations()[0].path, "bandit.lambda");
    }

    #[test]
    fn state_backend_follows_the_keys_and_validates_every_field() {
        let s: StateConfig = serde_json::from_str(r#"{"redis_url": "redis://h:1"}"#).unwrap();
        assert_eq!(s.backend(), Backend::Redis);
        assert!(s.validate().is_empty());
        assert_eq!(StateConfig::default().backend(), Backend::Local);
        let s: StateConfig = serde_json::from_str(
            r#"{"backend": "local", "redis_url": "http://x", "decision_ttl_s": 0, "redis_prefix": ""}"#,
        )
        .unwrap();
        let paths: Vec<String> = s.validate().into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            [
                "state.redis_url",
                "state.redis_prefix",
                "state.decision_ttl_s"
            ]
        );
        let s: StateConfig = serde_json::from_str(r#"{"backend": "redis"}"#).unwrap();
        assert_eq!(s.validate()[0].path, "state.redis_url");
    }
}
