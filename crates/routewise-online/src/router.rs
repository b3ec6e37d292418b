//! The online ("bandit") router for the gateway: the offline router's predicted scores
//! are the prior mean, the [`LinearBandit`] adds its learned residual and exploration
//! term, and the request's [`Policy`] ranks the result with the catalog's costs.
//!
//! With `Policy::Lambda(lambda)` and the bandit configured with the same `lambda`, the
//! ranking maximises `prior_reward + residual + exploration`, where
//! `prior_reward = offline_score - lambda * expected_cost`: exactly the bandit's reward
//! model. Models in the serving catalog that the offline router does not know (newly
//! configured ones, appended after the offline models) get `optimistic_score` as their
//! prior score and are force-explored (see [`crate::bandit`]).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_router::{Catalog, Decision, ModelInfo, Policy, Router};

use crate::bandit::{ArmStats, BanditError, LinearBandit};
use crate::config::BanditConfig;
use crate::feedback::DecisionRecord;
use crate::project::Projector;

/// A decision plus what must be kept to learn from its feedback.
#[derive(Debug, Clone)]
pub struct OnlineDecision {
    /// `scores` are the bandit-adjusted scores the ranking used.
    pub decision: Decision,
    /// The bandit context of the prompt.
    pub context: Vec<f64>,
    /// Prior (offline or optimistic) score per catalog model.
    pub prior_scores: Vec<f64>,
    /// Whether the choice was a forced exploration of a new model.
    pub forced: bool,
}

/// The bandit router shared by the gateway's request handlers.
#[derive(Debug)]
pub struct OnlineRouter {
    config: BanditConfig,
    catalog: Catalog,
    n_offline: usize,
    projector: Projector,
    bandit: RwLock<LinearBandit>,
    rng: Mutex<ChaCha8Rng>,
    /// Every catalog model is a forced-exploration candidate (`forced_pick`'s mask).
    all_available: Vec<bool>,
}

/// The shared RNG, locked on its first draw and held until dropped: a request's draws
/// stay one contiguous run of the stream, and requests that draw nothing (LinUCB without
/// forced exploration) never take the lock.
struct LazyRng<'a> {
    rng: &'a Mutex<ChaCha8Rng>,
    guard: Option<MutexGuard<'a, ChaCha8Rng>>,
}

impl<'a> LazyRng<'a> {
    fn new(rng: &'a Mutex<ChaCha8Rng>) -> Self {
        LazyRng { rng, guard: None }
    }

    fn get(&mut self) -> &mut ChaCha8Rng {
        let rng = self.rng;
        self.guard
            .get_or_insert_with(|| rng.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl RngCore for LazyRng<'_> {
    fn next_u32(&mut self) -> u32 {
        self.get().next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.get().next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.get().fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.get().try_fill_bytes(dest)
    }
}

/// Errors building the online router.
#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Bandit(#[from] BanditError),
}

impl OnlineRouter {
    /// `offline`: the artifact's catalog (the offline router predicts these, in order);
    /// `new_models`: configured models the artifact lacks; `feature_dim`: the
    /// featurizer's output dimension.
    pub fn new(
        config: BanditConfig,
        offline: &Catalog,
        new_models: Vec<ModelInfo>,
        feature_dim: usize,
    ) -> Result<Self, OnlineError> {
        config.validate().map_err(OnlineError::Config)?;
        let n_offline = offline.len();
        let mut models = offline.models.clone();
        for m in new_models {
            if models.iter().any(|k| k.name == m.name) {
                return Err(OnlineError::Config(format!(
                    "model `{}` listed twice",
                    m.name
                )));
            }
            models.push(m);
        }
        let is_new = (0..models.len()).map(|i| i >= n_offline).collect();
        Ok(OnlineRouter {
            projector: Projector::new(feature_dim, config.dim, config.projection_seed),
            bandit: RwLock::new(LinearBandit::new(&config, is_new)),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
            all_available: vec![true; models.len()],
            catalog: Catalog { models },
            n_offline,
            config,
        })
    }

    pub fn config(&self) -> &BanditConfig {
        &self.config
    }

    /// Routes one prompt: `offline` predicts the prior scores of the offline models.
    pub fn decide(
        &self,
        offline: &dyn Router,
        features: &[f32],
        input_tokens: u32,
        policy: Policy,
    ) -> OnlineDecision {
        let n = self.catalog.len();
        let mut prior = vec![self.config.optimistic_score; n];
        offline.predict_scores(features, &mut prior[..self.n_offline]);
        let mut costs = vec![0.0; n];
        self.catalog.expected_costs(input_tokens, &mut costs);
        let x = self.projector.context(features);
        let mut est = vec![0.0; n];
        let forced_pick = {
            let bandit = self.bandit.read().unwrap_or_else(PoisonError::into_inner);
            let mut rng = LazyRng::new(&self.rng);
            bandit.estimates(&x, &mut rng, &mut est);
            bandit.forced_pick(&self.all_available, &mut rng)
        };
        let scores: Vec<f64> = prior.iter().zip(&est).map(|(p, e)| p + e).collect();
        let mut ranking = policy.rank(&scores, &costs);
        if let Some(f) = forced_pick {
            ranking.retain(|&m| m != f);
            ranking.insert(0, f);
        }
        OnlineDecision {
            decision: Decision {
                chosen: ranking.first().copied().unwrap_or(0),
                ranking,
                scores,
                costs,
                policy,
            },
            context: x,
            prior_scores: prior,
            forced: forced_pick.is_some(),
        }
    }

    /// The record to store once model `served` (the chosen one, or the fallback that
    /// answered) has answered, with the measured cost, latency and decision time.
    pub fn record(
        &self,
        decision: &OnlineDecision,
        id: String,
        served: usize,
        cost_usd: f64,
        latency_ms: Option<f64>,
        created_ms: u64,
    ) -> DecisionRecord {
        DecisionRecord {
            id,
            model: self.catalog.models[served].name.clone(),
            x: decision.context.clone(),
            prior_reward: decision.prior_scores[served]
                - self.config.lambda * decision.decision.costs[served],
            cost_usd,
            latency_ms,
            created_ms,
        }
    }

    /// Replaces a model's statistics (from the store); unknown models are ignored
    /// (returns `false`). Statistics equal to the current ones are a no-op (the periodic
    /// refresh reloads every arm), so the arm is not refactorised under the write lock.
    pub fn set_arm(&self, model: &str, stats: ArmStats) -> Result<bool, BanditError> {
        let Some(m) = self.catalog.index(model) else {
            return Ok(false);
        };
        {
            let b = self.bandit.read().unwrap_or_else(PoisonError::into_inner);
            if b.arm(m).stats() == &stats {
                return Ok(true);
            }
        }
        let mut b = self.bandit.write().unwrap_or_else(PoisonError::into_inner);
        b.set_stats(m, stats)?;
        Ok(true)
    }

    /// A copy of a model's statistics.
    pub fn arm_stats(&self, model: &str) -> Option<ArmStats> {
        let m = self.catalog.index(model)?;
        let b = self.bandit.read().unwrap_or_else(PoisonError::into_inner);
        Some(b.arm(m).stats().clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Fixed(Vec<f64>);
    impl Router for Fixed {
        fn predict_scores(&self, _f: &[f32], out: &mut [f64]) {
            out.copy_from_slice(&self.0);
        }
    }

    fn info(name: &str, price: f64) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            input_per_mtok: price,
            output_per_mtok: price,
            mean_output_tokens: 10.0,
        }
    }

    #[test]
    fn starts_as_the_offline_router_then_learns() {
        let cat = Catalog {
            models: vec![info("a", 1.0), info("b", 1.0)],
        };
        let cfg = BanditConfig {
            alpha: 0.0,
            dim: 4,
            prior_strength: 1.0,
            forgetting: 1.0,
            ..BanditConfig::default()
        };
        let r = OnlineRouter::new(cfg, &cat, vec![], 8).unwrap();
        let off = Fixed(vec![0.9, 0.8]);
        let f = [0.5f32; 8];
        let d = r.decide(&off, &f, 100, Policy::Lambda(0.0));
        assert_eq!(d.decision.chosen, 0);
        assert_eq!(d.decision.scores, vec![0.9, 0.8]);
        // Model a turns out bad: residual -0.9 many times.
        let mut s = ArmStats::prior(5, 1.0);
        for _ in 0..20 {
            s.update(&d.context, -0.9, 1.0, 1.0);
        }
        assert!(r.set_arm("a", s).unwrap());
        assert!(!r.set_arm("zz", ArmStats::prior(5, 1.0)).unwrap());
        let d2 = r.decide(&off, &f, 100, Policy::Lambda(0.0));
        assert_eq!(d2.decision.chosen, 1);
        let rec = r.record(&d2, "id".into(), 1, 0.001, None, 7);
        assert_eq!(rec.model, "b");
        assert_eq!(rec.prior_reward, 0.8);
    }

    #[test]
    fn new_model_gets_optimistic_prior() {
        let cat = Catalog {
            models: vec![info("a", 1.0)],
        };
        let cfg = BanditConfig {
            alpha: 0.0,
            optimistic_score: 1.0,
            forced_exploration_rate: 0.0,
            ..BanditConfig::default()
        };
        let r = OnlineRouter::new(cfg, &cat, vec![info("new", 1.0)], 8).unwrap();
        let d = r.decide(&Fixed(vec![0.9]), &[0.1; 8], 10, Policy::Lambda(0.0));
        assert_eq!(d.prior_scores, vec![0.9, 1.0]);
        assert_eq!(d.decision.chosen, 1);
        assert!(OnlineRouter::new(BanditConfig::default(), &cat, vec![info("a", 1.0)], 8).is_err());
    }
}
