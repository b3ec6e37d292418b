//! The online ("bandit") router for the gateway, a [`Decide`] that wraps the offline
//! [`Engine`]: the engine's predicted scores are the prior mean, the [`LinearBandit`] adds
//! its learned residual and exploration term, and the request's [`Policy`] ranks the
//! result with the serving catalog's costs.
//!
//! One lambda: under `Policy::Lambda(lambda)` the ranking maximises
//! `prior_reward + residual + exploration` with `prior_reward = offline_score - lambda *
//! expected_cost`, and the decision's record keeps that `lambda`, so its feedback's reward
//! is `score - lambda * cost`: the policy that decided is the reward model (a budget
//! policy learns quality, lambda 0). Models in the serving catalog that the offline
//! router does not know (newly configured ones, appended after the offline models) get
//! `optimistic_score` as their prior score and are force-explored (see [`crate::bandit`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_features::Featurizer;
use routewise_router::{
    Catalog, Decide, Decision, DecisionReason, Engine, Learning, Policy, RouteRequest, Router,
};

use crate::bandit::{ArmStats, BanditError, LinearBandit};
use crate::config::BanditConfig;
use crate::feedback::DecisionRecord;
use crate::project::Projector;

/// The bandit router shared by the gateway's request handlers.
#[derive(Debug)]
pub struct OnlineRouter {
    config: BanditConfig,
    engine: Arc<Engine>,
    /// The serving catalog: the engine's models (first) and the newly configured ones.
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

/// A decision whose probability [`OnlineRouter::choice_probability`] estimates.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'a> {
    /// The decision's bandit context and prior scores.
    pub learning: &'a Learning,
    /// Its expected cost per model.
    pub costs: &'a [f64],
    pub policy: Policy,
    /// The model chosen.
    pub chosen: usize,
    /// Whether the router's own rule made the choice (not a forced or an outer
    /// exploration): the decision then counts as one of the rule's draws.
    pub drawn: bool,
}

impl OnlineRouter {
    /// `engine`: the offline router (it predicts the first `engine.catalog.len()` models
    /// of `serving`); `serving`: the catalog decisions rank, the engine's models first
    /// (with the operator's prices) and then configured models the engine lacks (see
    /// `routewise_router::Catalog::reconcile`).
    pub fn new(
        config: BanditConfig,
        engine: Arc<Engine>,
        serving: Catalog,
    ) -> Result<Self, OnlineError> {
        if let Some(issue) = config.validate().into_iter().next() {
            return Err(OnlineError::Config(issue.to_string()));
        }
        let n_offline = engine.catalog.len();
        let known_match = serving.len() >= n_offline
            && serving
                .names()
                .zip(engine.catalog.names())
                .all(|(a, b)| a == b);
        if !known_match {
            return Err(OnlineError::Config(
                "the serving catalog must start with the offline router's models, in order".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = serving.names().find(|n| !seen.insert(*n)) {
            return Err(OnlineError::Config(format!("model `{dup}` listed twice")));
        }
        // New to the offline router: models it lacks, and models onboarded onto it from
        // fewer probes than the forced exploration would give them pulls.
        let mut is_new: Vec<bool> = (0..serving.len()).map(|i| i >= n_offline).collect();
        if let routewise_router::AnyRouter::Onboarded(o) = &engine.router {
            for (i, probes) in o.onboarded_probes() {
                if probes < config.forced_exploration_pulls as usize {
                    if let Some(slot) = is_new.get_mut(i) {
                        *slot = true;
                    }
                }
            }
        }
        Ok(OnlineRouter {
            projector: Projector::new(engine.featurizer.dim(), config.dim, config.projection_seed),
            bandit: RwLock::new(LinearBandit::new(&config, is_new)),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
            all_available: vec![true; serving.len()],
            catalog: serving,
            engine,
            n_offline,
            config,
        })
    }

    pub fn config(&self) -> &BanditConfig {
        &self.config
    }

    /// The offline engine this router starts from.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Routes already-featurized input: `offline` predicts the prior scores of the
    /// offline models (`prompt` keys per-prompt baselines).
    pub fn decide_features(
        &self,
        offline: &dyn Router,
        features: &[f32],
        prompt: &str,
        input_tokens: u32,
        policy: Policy,
    ) -> Decision {
        let n = self.catalog.len();
        let mut prior = vec![self.config.optimistic_score; n];
        offline.predict_scores_keyed(features, prompt, &mut prior[..self.n_offline]);
        let mut costs = vec![0.0; n];
        self.catalog.expected_costs(input_tokens, &mut costs);
        let x = self.projector.context(features);
        let mut est = vec![0.0; n];
        let (forced_pick, forced) = {
            let bandit = self.bandit.read().unwrap_or_else(PoisonError::into_inner);
            let mut rng = LazyRng::new(&self.rng);
            bandit.estimates(&x, &mut rng, &mut est);
            (
                bandit.forced_pick(&self.all_available, &mut rng),
                bandit.forced_candidates(&self.all_available),
            )
        };
        let scores: Vec<f64> = prior.iter().zip(&est).map(|(p, e)| p + e).collect();
        let mut ranking = policy.rank(&scores, &costs);
        let rule_top = ranking.first().copied();
        if let Some(f) = forced_pick {
            ranking.retain(|&m| m != f);
            ranking.insert(0, f);
        }
        // The probability of this choice under the rule that made it, exact for LinUCB:
        // the forced-exploration share split evenly over the under-explored models, plus
        // the rule's share when the choice is also the rule's own (a new model's optimistic
        // prior often makes it both). Thompson sampling's needs Monte Carlo, so it is left
        // unknown here (the decision log's writer estimates it).
        let rate = if forced.is_empty() || self.config.forced_exploration_rate <= 0.0 {
            0.0
        } else {
            self.config.forced_exploration_rate
        };
        let chosen = ranking.first().copied();
        let propensity = match self.config.algorithm {
            crate::Algorithm::Linucb => {
                let forced_share = if chosen.is_some_and(|c| forced.contains(&c)) {
                    rate / forced.len() as f64
                } else {
                    0.0
                };
                let rule_share = if chosen == rule_top { 1.0 - rate } else { 0.0 };
                Some(forced_share + rule_share)
            }
            crate::Algorithm::Thompson => None,
        };
        let reason = if forced_pick.is_some() {
            DecisionReason::Explored
        } else {
            DecisionReason::Learned
        };
        let learning = Learning {
            context: x,
            prior_scores: prior,
        };
        let mut d = Decision::new(ranking, scores, costs, policy, reason, Some(learning));
        d.propensity = propensity;
        d
    }

    /// The probability that this router, in its current state, chooses `chosen` for a
    /// decision with `learning`'s context and prior, `costs` and `policy`: the forced
    /// exploration's share, plus LinUCB's deterministic choice or, for Thompson sampling,
    /// a Monte-Carlo estimate over `draws` posterior draws (each arm's estimate is a 1-D
    /// normal, [`crate::bandit::LinearBandit::estimate_moments`]). When the rule itself
    /// chose `chosen` (`drawn`: not a forced or an outer exploration), the decision was one
    /// such draw and is counted, `(hits + 1) / (draws + 1)` of the non-forced share, so a
    /// model that was chosen never gets 0. Meant for the decision log's
    /// writer thread (off the request path); the state may have moved a little since the
    /// decision, which the estimate does not undo.
    pub fn choice_probability(&self, choice: &Choice<'_>, draws: usize, seed: u64) -> f64 {
        let Choice {
            learning,
            costs,
            policy,
            chosen,
            drawn,
        } = *choice;
        let (moments, forced) = {
            let bandit = self.bandit.read().unwrap_or_else(PoisonError::into_inner);
            (
                bandit.estimate_moments(&learning.context),
                bandit.forced_candidates(&self.all_available),
            )
        };
        let rate = if forced.is_empty() {
            0.0
        } else {
            self.config.forced_exploration_rate
        };
        let mut p = if forced.contains(&chosen) {
            rate / forced.len() as f64
        } else {
            0.0
        };
        let k = moments
            .len()
            .min(learning.prior_scores.len())
            .min(costs.len());
        let mut scores = vec![0.0; k];
        let mut idx = Vec::with_capacity(k);
        let top = |scores: &[f64], idx: &mut Vec<usize>| {
            policy.rank_into(scores, &costs[..k], idx);
            idx.first().copied()
        };
        match self.config.algorithm {
            crate::Algorithm::Linucb => {
                for (m, s) in scores.iter_mut().enumerate() {
                    *s = learning.prior_scores[m] + moments[m].0 + moments[m].1;
                }
                if top(&scores, &mut idx) == Some(chosen) {
                    p += 1.0 - rate;
                }
            }
            crate::Algorithm::Thompson => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let own = usize::from(drawn);
                let mut hits = own;
                for _ in 0..draws {
                    for (m, s) in scores.iter_mut().enumerate() {
                        let z = crate::bandit::standard_normal(&mut rng);
                        *s = learning.prior_scores[m] + moments[m].0 + moments[m].1 * z;
                    }
                    hits += usize::from(top(&scores, &mut idx) == Some(chosen));
                }
                p += (1.0 - rate) * hits as f64 / (draws + own).max(1) as f64;
            }
        }
        p.clamp(0.0, 1.0)
    }

    /// The record to store once model `served` (the chosen one, or the fallback that
    /// answered) has answered, with the measured cost, latency and decision time; `None`
    /// for a decision this router did not make (no learning context).
    pub fn record(
        &self,
        decision: &Decision,
        id: String,
        served: usize,
        cost_usd: f64,
        latency_ms: Option<f64>,
        created_ms: u64,
    ) -> Option<DecisionRecord> {
        let learning = decision.learning.as_ref()?;
        let lambda = decision.policy.cost_weight();
        Some(DecisionRecord {
            id,
            model: self.catalog.models.get(served)?.name.clone(),
            x: learning.context.clone(),
            prior_reward: learning.prior_scores.get(served)?
                - lambda * decision.costs.get(served)?,
            lambda: Some(lambda),
            cost_usd,
            latency_ms,
            created_ms,
            cascade: None,
            replay: None,
        })
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

impl Decide for OnlineRouter {
    fn decide(&self, req: &RouteRequest<'_>) -> Decision {
        let features = self.engine.featurizer.featurize(req.prompt);
        self.decide_features(
            &self.engine.router,
            &features,
            req.prompt,
            req.input_tokens,
            req.policy,
        )
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn describe(&self) -> String {
        let algo = match self.config.algorithm {
            crate::Algorithm::Linucb => "linucb",
            crate::Algorithm::Thompson => "thompson",
        };
        format!("online({algo}) over {}", self.engine.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use routewise_features::{AnyFeaturizer, TfidfConfig, TfidfFeaturizer};
    use routewise_router::{AnyRouter, LinearRouter, ModelInfo};

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

    /// An engine over `models` that predicts `scores` for every prompt.
    fn engine(models: Vec<ModelInfo>, scores: Vec<f64>) -> Arc<Engine> {
        let featurizer = AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(
            &["hello world", "some text"],
            TfidfConfig::default(),
        ));
        let router = AnyRouter::Linear(LinearRouter::constant(featurizer.dim(), scores));
        Arc::new(Engine {
            featurizer,
            router,
            catalog: Catalog { models },
        })
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
        let e = engine(cat.models.clone(), vec![0.9, 0.8]);
        let r = OnlineRouter::new(cfg, e, cat).unwrap();
        let req = RouteRequest {
            prompt: "hello",
            input_tokens: 100,
            policy: Policy::Lambda(0.0),
        };
        let d = r.decide(&req);
        assert_eq!(d.chosen, 0);
        assert_eq!(d.scores, vec![0.9, 0.8]);
        assert_eq!(d.reason, DecisionReason::Learned);
        let ctx = d.learning.as_ref().unwrap().context.clone();
        // Model a turns out bad: residual -0.9 many times.
        let mut s = ArmStats::prior(5, 1.0);
        for _ in 0..20 {
            s.update(&ctx, -0.9, 1.0, 1.0);
        }
        assert!(r.set_arm("a", s).unwrap());
        assert!(!r.set_arm("zz", ArmStats::prior(5, 1.0)).unwrap());
        let d2 = r.decide(&req);
        assert_eq!(d2.chosen, 1);
        let rec = r.record(&d2, "id".into(), 1, 0.001, None, 7).unwrap();
        assert_eq!(rec.model, "b");
        assert_eq!(rec.prior_reward, 0.8);
        assert_eq!(rec.lambda, Some(0.0));
    }

    #[test]
    fn a_model_onboarded_from_too_few_probes_is_forced_explored() {
        use routewise_router::onboard::{Head, OnboardedRouter};
        // Base: a and b; c onboarded from its price alone, d from 100 probes.
        let base = engine(vec![info("a", 1.0), info("b", 1.0)], vec![0.9, 0.8]);
        let mut d_head = Head::prior("d", 2);
        d_head.probes = 100;
        let router = AnyRouter::Onboarded(OnboardedRouter::new(
            base.router.clone(),
            2,
            vec![Head::prior("c", 2), d_head],
        ));
        let cat = Catalog {
            models: vec![
                info("a", 1.0),
                info("b", 1.0),
                info("c", 1.0),
                info("d", 1.0),
            ],
        };
        let e = Arc::new(Engine {
            featurizer: base.featurizer.clone(),
            router,
            catalog: cat.clone(),
        });
        let cfg = BanditConfig {
            dim: 4,
            forced_exploration_rate: 1.0,
            forced_exploration_pulls: 50,
            ..BanditConfig::default()
        };
        let r = OnlineRouter::new(cfg, e, cat).unwrap();
        let req = RouteRequest {
            prompt: "hello",
            input_tokens: 100,
            policy: Policy::Lambda(0.0),
        };
        for _ in 0..20 {
            let d = r.decide(&req);
            // Only c (0 probes < 50 pulls) is forced; d's 100 probes count as enough.
            assert_eq!(d.chosen, 2, "{:?}", d.ranking);
            assert_eq!(d.reason, DecisionReason::Explored);
            // The onboarded heads predict the mean of the known models (the bandit's prior).
            let prior = &d.learning.as_ref().unwrap().prior_scores;
            assert!((prior[2] - 0.85).abs() < 1e-9 && (prior[3] - 0.85).abs() < 1e-9);
        }
    }

    #[test]
    fn thompson_choice_probabilities_match_the_choice_frequencies() {
        // Three close models and a wide posterior: Thompson sampling spreads its choices.
        let cat = Catalog {
            models: vec![info("a", 1.0), info("b", 1.0), info("c", 1.0)],
        };
        let cfg = BanditConfig {
            algorithm: crate::Algorithm::Thompson,
            alpha: 0.3,
            dim: 4,
            ..BanditConfig::default()
        };
        let r =
            OnlineRouter::new(cfg, engine(cat.models.clone(), vec![0.8, 0.78, 0.7]), cat).unwrap();
        let req = RouteRequest {
            prompt: "hello",
            input_tokens: 100,
            policy: Policy::Lambda(0.0),
        };
        let n = 6000;
        let mut counts = [0usize; 3];
        let mut last = None;
        for _ in 0..n {
            let d = r.decide(&req);
            assert_eq!(d.propensity, None);
            counts[d.chosen] += 1;
            last = Some(d);
        }
        let d = last.unwrap();
        let learning = d.learning.as_ref().unwrap();
        let mut total = 0.0;
        for (m, &count) in counts.iter().enumerate() {
            let choice = Choice {
                learning,
                costs: &d.costs,
                policy: d.policy,
                chosen: m,
                drawn: true,
            };
            let p = r.choice_probability(&choice, 4000, m as u64);
            let freq = count as f64 / n as f64;
            assert!((p - freq).abs() < 0.03, "model {m}: {p} vs {freq}");
            total += p;
        }
        // Three independent estimates (each within about 0.007 of its value): they sum
        // to 1 up to that noise.
        assert!((total - 1.0).abs() < 0.04, "{total}");
        // LinUCB is deterministic: 1 for its choice, 0 otherwise.
        let cat = Catalog {
            models: vec![info("a", 1.0), info("b", 1.0)],
        };
        let r = OnlineRouter::new(
            BanditConfig {
                dim: 4,
                ..BanditConfig::default()
            },
            engine(cat.models.clone(), vec![0.9, 0.5]),
            cat,
        )
        .unwrap();
        let d = r.decide(&req);
        let l = d.learning.as_ref().unwrap();
        let choice = |chosen: usize, drawn: bool| Choice {
            learning: l,
            costs: &d.costs,
            policy: d.policy,
            chosen,
            drawn,
        };
        assert_eq!(r.choice_probability(&choice(d.chosen, true), 0, 0), 1.0);
        assert_eq!(
            r.choice_probability(&choice(1 - d.chosen, false), 0, 0),
            0.0
        );
    }

    #[test]
    fn the_deciding_policy_sets_the_reward_lambda() {
        let cat = Catalog {
            models: vec![info("a", 1.0), info("b", 100.0)],
        };
        let r = OnlineRouter::new(
            BanditConfig::default(),
            engine(cat.models.clone(), vec![0.5, 0.9]),
            cat,
        )
        .unwrap();
        for (policy, lambda) in [(Policy::Lambda(10.0), 10.0), (Policy::BudgetUsd(1.0), 0.0)] {
            let d = r.decide(&RouteRequest {
                prompt: "x",
                input_tokens: 1000,
                policy,
            });
            let rec = r.record(&d, "i".into(), 1, 0.2, None, 0).unwrap();
            assert_eq!(rec.lambda, Some(lambda));
            assert!((rec.prior_reward - (0.9 - lambda * d.costs[1])).abs() < 1e-12);
        }
    }

    #[test]
    fn new_model_gets_optimistic_prior() {
        let offline = vec![info("a", 1.0)];
        let cfg = BanditConfig {
            alpha: 0.0,
            optimistic_score: 1.0,
            forced_exploration_rate: 0.0,
            ..BanditConfig::default()
        };
        let serving = Catalog {
            models: vec![info("a", 1.0), info("new", 1.0)],
        };
        let r = OnlineRouter::new(cfg, engine(offline.clone(), vec![0.9]), serving).unwrap();
        let f = vec![0.1f32; r.engine().featurizer.dim()];
        let d = r.decide_features(&Fixed(vec![0.9]), &f, "p", 10, Policy::Lambda(0.0));
        assert_eq!(d.learning.as_ref().unwrap().prior_scores, vec![0.9, 1.0]);
        assert_eq!(d.chosen, 1);
        assert_eq!(d.propensity, Some(1.0));
        let dup = Catalog {
            models: vec![info("a", 1.0), info("a", 1.0)],
        };
        assert!(OnlineRouter::new(
            BanditConfig::default(),
            engine(offline.clone(), vec![0.9]),
            dup
        )
        .is_err());
        let wrong_order = Catalog {
            models: vec![info("new", 1.0), info("a", 1.0)],
        };
        assert!(OnlineRouter::new(
            BanditConfig::default(),
            engine(offline, vec![0.9]),
            wrong_order
        )
        .is_err());
    }
}
