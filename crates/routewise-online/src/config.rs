//! YAML/JSON configuration of the online router ([`BanditConfig`]) and of its state store
//! ([`StateConfig`]). Both reject unknown keys and default every field, so a gateway
//! config can embed them as `bandit: {...}` and `state: {...}` blocks.

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
    /// Cost weight of the reward `score - lambda * cost_usd`.
    pub lambda: f64,
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
            lambda: 0.0,
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

    /// Checks ranges; returns a message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let finite_nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("bandit.{name} must be finite and >= 0, got {v}"))
            }
        };
        finite_nonneg("alpha", self.alpha)?;
        finite_nonneg("lambda", self.lambda)?;
        if !(self.prior_strength.is_finite() && self.prior_strength > 0.0) {
            return Err(format!(
                "bandit.prior_strength must be > 0, got {}",
                self.prior_strength
            ));
        }
        if !(self.forgetting > 0.0 && self.forgetting <= 1.0) {
            return Err(format!(
                "bandit.forgetting must be in (0, 1], got {}",
                self.forgetting
            ));
        }
        if self.dim == 0 || self.dim > 256 {
            return Err(format!("bandit.dim must be in 1..=256, got {}", self.dim));
        }
        if !self.optimistic_score.is_finite() {
            return Err("bandit.optimistic_score must be finite".into());
        }
        if !(0.0..=1.0).contains(&self.forced_exploration_rate) {
            return Err(format!(
                "bandit.forced_exploration_rate must be in [0, 1], got {}",
                self.forced_exploration_rate
            ));
        }
        Ok(())
    }
}

/// Where the online state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Local redb file (the embedded default), used when `redis_url` is unset.
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
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("routewise-state.redb"),
            redis_url: None,
            redis_prefix: "routewise".into(),
            decision_ttl_s: 86_400,
            redis_timeout_ms: 500,
            refresh_interval_ms: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_validate_and_unknown_keys_are_rejected() {
        BanditConfig::default().validate().unwrap();
        let c: BanditConfig = serde_json::from_str(r#"{"alpha": 0.2, "forgetting": 0.9}"#).unwrap();
        assert_eq!(c.alpha, 0.2);
        assert_eq!(c.dim, BanditConfig::default().dim);
        assert!(serde_json::from_str::<BanditConfig>(r#"{"alpah": 0.2}"#).is_err());
        assert!(serde_json::from_str::<StateConfig>(r#"{"redis": "x"}"#).is_err());
        let bad = BanditConfig {
            forgetting: 1.5,
            ..BanditConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("forgetting"));
    }
}
