//! Offline replay of a prompt stream through the bandit of `routewise-online`: the
//! protocol behind `routewise eval --online`. Pure (no I/O): [`crate::run_online`] loads
//! the predictions, this module simulates deployment.
//!
//! Protocol. The test prompts are replayed `passes` times, each pass in a fresh seeded
//! order (ChaCha8, `seed + pass`). At every step the bandit chooses among the models
//! that have an outcome for the prompt and then sees only that model's reward,
//! `score - lambda * cost_usd` (the real test outcome); the offline router (argmax of its
//! predicted reward, the bandit's prior mean) and the oracle (argmax of the true reward)
//! are charged on the same step. Cumulative regret is `sum(oracle - bandit)` and
//! `sum(offline - bandit)`.
//!
//! Drift scenario: from step `T/2` on, one model's scores drop by `score_drop` (floored at
//! 0) and/or its realised cost is multiplied by `price_factor`. Neither the offline
//! router nor the catalog is told; the drifted model is the one the offline router
//! chooses most often (so the change matters). Forgetting lets the bandit's residual for
//! that model move to the new level.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use routewise_online::bandit::{argmax_available, LinearBandit};
use routewise_online::BanditConfig;

/// The replayed stream, row-major `n x k` (`n` prompts, `k` models).
#[derive(Debug, Clone)]
pub struct ReplayData {
    pub n_models: usize,
    /// Bandit context per prompt (`n x context_dim`).
    pub contexts: Vec<Vec<f64>>,
    /// Offline router's predicted score.
    pub prior_scores: Vec<f64>,
    /// Catalog's expected cost.
    pub expected_costs: Vec<f64>,
    /// True score, `NaN` where the model has no outcome.
    pub scores: Vec<f64>,
    /// True cost, `NaN` where missing.
    pub costs: Vec<f64>,
}

/// A change in the world halfway through.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriftSpec {
    /// Subtracted from the drifted model's scores (floored at 0).
    pub score_drop: f64,
    /// Multiplies the drifted model's realised cost.
    pub price_factor: f64,
}

/// Options of one replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The policy's lambda: the ranking's and the reward's cost weight.
    pub lambda: f64,
    pub passes: usize,
    pub seed: u64,
    pub drift: Option<DriftSpec>,
    /// Number of points kept on the regret curves.
    pub curve_points: usize,
}

/// What one replay measured.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayResult {
    pub steps: usize,
    pub bandit_mean_reward: f64,
    pub offline_mean_reward: f64,
    pub oracle_mean_reward: f64,
    /// `[step, cumulative oracle - bandit reward]`.
    pub regret_curve: Vec<(usize, f64)>,
    /// `[step, cumulative offline - bandit reward]` (negative: the bandit is ahead).
    pub regret_vs_offline_curve: Vec<(usize, f64)>,
    pub final_regret: f64,
    pub final_regret_vs_offline: f64,
    /// Step at which the drift started (`None` without drift).
    pub change_step: Option<usize>,
    /// The drifted model's name index.
    pub drifted_model: Option<usize>,
    /// Mean rewards over the steps from `change_step` on (the whole run without drift).
    pub bandit_mean_reward_after: f64,
    pub offline_mean_reward_after: f64,
    pub oracle_mean_reward_after: f64,
    /// Mean per-step regret vs the oracle before / after the change.
    pub regret_per_step_before: f64,
    pub regret_per_step_after: f64,
    /// Mean per-step regret vs the oracle over the last quarter of the run.
    pub regret_per_step_last_quarter: f64,
    /// Share of steps where the bandit departed from the offline router's choice.
    pub departure_rate: f64,
}

/// The model the offline router picks most often on `data` at `lambda`.
pub fn most_chosen_offline(data: &ReplayData, lambda: f64) -> usize {
    let k = data.n_models;
    let mut counts = vec![0usize; k];
    let mut prior = vec![0.0; k];
    let mut avail = vec![false; k];
    let zero = vec![0.0; k];
    for i in 0..data.contexts.len() {
        fill_row(data, i, lambda, &mut prior, &mut avail);
        if let Some(m) = argmax_available(&prior, &zero, &avail) {
            counts[m] += 1;
        }
    }
    (0..k)
        .max_by_key(|&m| (counts[m], usize::MAX - m))
        .unwrap_or(0)
}

fn fill_row(data: &ReplayData, i: usize, lambda: f64, prior: &mut [f64], avail: &mut [bool]) {
    let k = data.n_models;
    for m in 0..k {
        let j = i * k + m;
        prior[m] = data.prior_scores[j] - lambda * data.expected_costs[j];
        avail[m] = !data.scores[j].is_nan() && !data.costs[j].is_nan();
    }
}

/// Replays `data` through a bandit configured by `config`, deciding and rewarding at
/// `opts.lambda`.
pub fn replay(data: &ReplayData, config: &BanditConfig, opts: &ReplayOptions) -> ReplayResult {
    let k = data.n_models;
    let n = data.contexts.len();
    let lambda = opts.lambda;
    let total = n * opts.passes.max(1);
    let change_step = opts.drift.map(|_| total / 2);
    let drifted = opts.drift.map(|_| most_chosen_offline(data, lambda));
    let mut bandit = LinearBandit::new(config, vec![false; k]);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x0b5e_55ed);
    let mut prior = vec![0.0; k];
    let mut avail = vec![false; k];
    let mut truth = vec![0.0; k];
    let zero = vec![0.0; k];
    let every = (total / opts.curve_points.max(1)).max(1);
    let (mut cb, mut co, mut cor) = (0.0f64, 0.0f64, 0.0f64);
    let (mut ab, mut ao, mut aor, mut after_n) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let (mut reg_before, mut before_n, mut reg_lq, mut lq_n) = (0.0f64, 0usize, 0.0f64, 0usize);
    let mut departures = 0usize;
    let mut curve = Vec::new();
    let mut curve_off = Vec::new();
    let mut order: Vec<usize> = (0..n).collect();
    let mut step = 0usize;
    let mut next_point = every;
    for pass in 0..opts.passes.max(1) {
        let mut prng = ChaCha8Rng::seed_from_u64(opts.seed.wrapping_add(pass as u64));
        order.shuffle(&mut prng);
        for &i in &order {
            fill_row(data, i, lambda, &mut prior, &mut avail);
            let drifting = change_step.is_some_and(|c| step >= c);
            for (m, t) in truth.iter_mut().enumerate() {
                let j = i * k + m;
                let (mut s, mut c) = (data.scores[j], data.costs[j]);
                if drifting && Some(m) == drifted {
                    if let Some(d) = opts.drift {
                        s = (s - d.score_drop).max(0.0);
                        c *= d.price_factor;
                    }
                }
                *t = s - lambda * c;
            }
            let Some(off) = argmax_available(&prior, &zero, &avail) else {
                continue;
            };
            let ora = argmax_available(&truth, &zero, &avail).unwrap_or(off);
            let x = &data.contexts[i];
            let chosen = bandit.choose(x, &prior, &avail, &mut rng).unwrap_or(off);
            let r = truth[chosen];
            bandit.update(
                chosen,
                x,
                routewise_online::feedback::residual(r, prior[chosen]),
            );
            departures += usize::from(chosen != off);
            cb += r;
            co += truth[off];
            cor += truth[ora];
            step += 1;
            let regret_step = truth[ora] - r;
            if drifting || change_step.is_none() {
                ab += r;
                ao += truth[off];
                aor += truth[ora];
                after_n += 1;
            } else {
                reg_before += regret_step;
                before_n += 1;
            }
            if step * 4 > total * 3 {
                reg_lq += regret_step;
                lq_n += 1;
            }
            if step == next_point || step == total {
                next_point += every;
                curve.push((step, cor - cb));
                curve_off.push((step, co - cb));
            }
        }
    }
    let mean = |s: f64, c: usize| if c == 0 { 0.0 } else { s / c as f64 };
    ReplayResult {
        steps: step,
        bandit_mean_reward: mean(cb, step),
        offline_mean_reward: mean(co, step),
        oracle_mean_reward: mean(cor, step),
        regret_curve: curve,
        regret_vs_offline_curve: curve_off,
        final_regret: cor - cb,
        final_regret_vs_offline: co - cb,
        change_step,
        drifted_model: drifted,
        bandit_mean_reward_after: mean(ab, after_n),
        offline_mean_reward_after: mean(ao, after_n),
        oracle_mean_reward_after: mean(aor, after_n),
        regret_per_step_before: mean(reg_before, before_n),
        regret_per_step_after: mean(aor - ab, after_n),
        regret_per_step_last_quarter: mean(reg_lq, lq_n),
        departure_rate: mean(departures as f64, step),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two models, one context: the offline router wrongly prefers model 0.
    fn toy(n: usize) -> ReplayData {
        ReplayData {
            n_models: 2,
            contexts: vec![vec![1.0, 0.0]; n],
            prior_scores: [0.8, 0.6].repeat(n),
            expected_costs: vec![0.0; 2 * n],
            scores: [0.3, 0.7].repeat(n),
            costs: vec![0.0; 2 * n],
        }
    }

    fn cfg() -> BanditConfig {
        BanditConfig {
            dim: 1,
            alpha: 0.1,
            prior_strength: 1.0,
            forgetting: 0.99,
            ..BanditConfig::default()
        }
    }

    #[test]
    fn bandit_corrects_a_biased_offline_router() {
        let opts = ReplayOptions {
            lambda: 0.0,
            passes: 1,
            seed: 0,
            drift: None,
            curve_points: 10,
        };
        let r = replay(&toy(200), &cfg(), &opts);
        assert_eq!(r.steps, 200);
        assert!((r.offline_mean_reward - 0.3).abs() < 1e-12);
        assert!((r.oracle_mean_reward - 0.7).abs() < 1e-12);
        assert!(r.bandit_mean_reward > 0.65, "{r:?}");
        assert_eq!(r.regret_curve.len(), 10);
        assert_eq!(r.regret_curve.last().map(|p| p.0), Some(200));
    }

    #[test]
    fn drift_on_the_offline_choice_is_tracked() {
        // Offline is right (model 0 best) until model 0's score drops by 0.6.
        let mut d = toy(400);
        d.scores = [0.9, 0.6].repeat(400);
        let opts = ReplayOptions {
            lambda: 0.0,
            passes: 1,
            seed: 0,
            drift: Some(DriftSpec {
                score_drop: 0.6,
                price_factor: 1.0,
            }),
            curve_points: 20,
        };
        let r = replay(&d, &cfg(), &opts);
        assert_eq!(r.drifted_model, Some(0));
        assert_eq!(r.change_step, Some(200));
        assert!((r.offline_mean_reward_after - 0.3).abs() < 1e-12);
        // Forgetting (gamma 0.99) lets the residual move: the bandit recovers most of the
        // oracle's reward after the change while the offline router keeps losing 0.3.
        assert!(r.bandit_mean_reward_after > 0.45, "{r:?}");
        assert!(r.regret_per_step_last_quarter < 0.02, "{r:?}");
    }
}
