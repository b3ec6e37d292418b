//! Realised quality and cost of a router's decisions, and the CARROT lambda sweep.
//!
//! For each test prompt the policy ranks the models from the router's *predicted*
//! scores and costs ([`routewise_router::Policy::rank_into`], the same code the gateway
//! runs; a router with a fixed ranking, such as `best-single`, uses that ranking under
//! every policy); the prompt is then charged the *real* outcome of the chosen model. When the
//! chosen model has no outcome on that prompt (missing in the data), the next model in
//! the ranking that has one is used instead, as the gateway's fallback would. Quality is
//! the mean real score, cost the mean real USD cost per prompt.
//!
//! Lambda grid (CARROT, Somerstep et al. 2025: maximise `score - lambda * cost`): `0`
//! (quality first) plus `n` log-spaced values from `0.01 / c_max` to `100 / c_min`, where
//! `c_min`/`c_max` are the smallest positive and the largest single-model mean cost. At the
//! low end `lambda * cost <= 0.01`, so cost only breaks near-ties in predicted score; at the
//! high end a cost difference of 1% of the cheapest model's cost outweighs any score
//! difference (scores lie in `[0, 1]`), i.e. cheapest first. The curve therefore runs from
//! quality-first to cheapest-first whatever the data's cost scale.

use routewise_router::Policy;
use serde::{Deserialize, Serialize};

use crate::{EvalError, Outcomes, Point};

/// A router's predictions on the test prompts, row-major `n_prompts x n_models`.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub n_models: usize,
    /// Predicted score per prompt and model.
    pub scores: Vec<f64>,
    /// Predicted USD cost per prompt and model.
    pub costs: Vec<f64>,
    /// A ranking used for every prompt under every policy (the fixed baselines; see
    /// `routewise_router::Router::fixed_ranking`).
    pub fixed_ranking: Option<Vec<usize>>,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.scores.len() / self.n_models.max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
    fn row(&self, i: usize) -> (&[f64], &[f64]) {
        let r = i * self.n_models..(i + 1) * self.n_models;
        (&self.scores[r.clone()], &self.costs[r])
    }
    fn check(&self, outcomes: &Outcomes) -> Result<(), EvalError> {
        if self.n_models != outcomes.n_models()
            || self.scores.len() != self.costs.len()
            || self.len() != outcomes.len()
        {
            return Err(EvalError::Shape(format!(
                "predictions {}x{} vs outcomes {}x{}",
                self.len(),
                self.n_models,
                outcomes.len(),
                outcomes.n_models()
            )));
        }
        Ok(())
    }
}

/// One point of a router's curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub lambda: f64,
    pub quality: f64,
    pub cost: f64,
}

/// What routing every test prompt under each of several policies realises: the real score
/// and cost charged per (policy, prompt). The bootstrap reweights these rows
/// ([`Realised::curve_weighted`]) instead of re-ranking.
#[derive(Debug, Clone)]
pub struct Realised {
    n_prompts: usize,
    /// The policies' lambdas (curve order).
    pub lambdas: Vec<f64>,
    /// `lambdas.len() x n_prompts` realised scores.
    scores: Vec<f64>,
    /// `lambdas.len() x n_prompts` realised costs.
    costs: Vec<f64>,
}

/// The realised outcome of each prompt under `policy`: `(scores, costs)` per prompt.
fn realise_policy(
    outcomes: &Outcomes,
    preds: &Predictions,
    policy: Policy,
    scores: &mut Vec<f64>,
    costs: &mut Vec<f64>,
) -> Result<(), EvalError> {
    let mut idx = Vec::with_capacity(outcomes.n_models());
    for i in 0..outcomes.len() {
        let ranking: &[usize] = match &preds.fixed_ranking {
            Some(r) => r,
            None => {
                let (s, pc) = preds.row(i);
                policy.rank_into(s, pc, &mut idx);
                &idx
            }
        };
        let (score, cost) = ranking
            .iter()
            .find_map(|&m| outcomes.get(i, m))
            .ok_or(EvalError::NoOutcome(i))?;
        scores.push(score);
        costs.push(cost);
    }
    Ok(())
}

/// Realised outcomes of CARROT's lambda rule at each of `lambdas`.
pub fn realise(
    outcomes: &Outcomes,
    preds: &Predictions,
    lambdas: &[f64],
) -> Result<Realised, EvalError> {
    preds.check(outcomes)?;
    let n = outcomes.len();
    let mut scores = Vec::with_capacity(n * lambdas.len());
    let mut costs = Vec::with_capacity(n * lambdas.len());
    for &lambda in lambdas {
        realise_policy(
            outcomes,
            preds,
            Policy::Lambda(lambda),
            &mut scores,
            &mut costs,
        )?;
    }
    Ok(Realised {
        n_prompts: n,
        lambdas: lambdas.to_vec(),
        scores,
        costs,
    })
}

impl Realised {
    /// One point per lambda: mean realised quality and cost over the prompts.
    pub fn curve(&self) -> Vec<CurvePoint> {
        let n = self.n_prompts.max(1) as f64;
        self.rows()
            .map(|(lambda, s, c)| CurvePoint {
                lambda,
                quality: s.iter().sum::<f64>() / n,
                cost: c.iter().sum::<f64>() / n,
            })
            .collect()
    }

    /// The curve with prompt `i` counted `weights[i]` times (a bootstrap resample).
    pub fn curve_weighted(&self, weights: &[u32]) -> Vec<CurvePoint> {
        let total = weights.iter().map(|&w| f64::from(w)).sum::<f64>().max(1.0);
        self.rows()
            .map(|(lambda, s, c)| {
                let (mut q, mut k) = (0.0, 0.0);
                for ((&w, &si), &ci) in weights.iter().zip(s).zip(c) {
                    let w = f64::from(w);
                    q += w * si;
                    k += w * ci;
                }
                CurvePoint {
                    lambda,
                    quality: q / total,
                    cost: k / total,
                }
            })
            .collect()
    }

    /// Realised per-prompt scores under the `k`-th lambda (empty past the end).
    pub fn scores_at(&self, k: usize) -> &[f64] {
        let n = self.n_prompts;
        self.scores.get(k * n..(k + 1) * n).unwrap_or(&[])
    }

    fn rows(&self) -> impl Iterator<Item = (f64, &[f64], &[f64])> {
        let n = self.n_prompts.max(1);
        self.lambdas
            .iter()
            .zip(self.scores.chunks(n))
            .zip(self.costs.chunks(n))
            .map(|((&l, s), c)| (l, s, c))
    }
}

/// Realised mean quality and cost of routing every test prompt with `policy`.
pub fn evaluate_policy(
    outcomes: &Outcomes,
    preds: &Predictions,
    policy: Policy,
) -> Result<Point, EvalError> {
    preds.check(outcomes)?;
    let (mut scores, mut costs) = (Vec::new(), Vec::new());
    realise_policy(outcomes, preds, policy, &mut scores, &mut costs)?;
    let n = outcomes.len().max(1) as f64;
    Ok(Point {
        quality: scores.iter().sum::<f64>() / n,
        cost: costs.iter().sum::<f64>() / n,
    })
}

/// The lambda grid: `0` followed by `n` log-spaced values (see the module docs).
/// `model_costs` are the single models' mean costs; non-positive and non-finite ones are
/// ignored, and with none left the grid spans `[1e-3, 1e3]`.
pub fn lambda_grid(model_costs: &[f64], n: usize) -> Vec<f64> {
    let pos: Vec<f64> = model_costs
        .iter()
        .copied()
        .filter(|c| c.is_finite() && *c > 0.0)
        .collect();
    let (lo, hi) = if pos.is_empty() {
        (1e-3, 1e3)
    } else {
        let c_min = pos.iter().copied().fold(f64::INFINITY, f64::min);
        let c_max = pos.iter().copied().fold(0.0, f64::max);
        (0.01 / c_max, 100.0 / c_min)
    };
    let mut grid = Vec::with_capacity(n + 1);
    grid.push(0.0);
    let (llo, lhi) = (lo.ln(), hi.ln());
    for k in 0..n {
        let t = if n == 1 {
            0.0
        } else {
            k as f64 / (n - 1) as f64
        };
        grid.push((llo + t * (lhi - llo)).exp());
    }
    grid
}

/// The router's curve: one realised point per lambda.
pub fn sweep_lambda(
    outcomes: &Outcomes,
    preds: &Predictions,
    lambdas: &[f64],
) -> Result<Vec<CurvePoint>, EvalError> {
    Ok(realise(outcomes, preds, lambdas)?.curve())
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: f64 = f64::NAN;

    fn toy() -> (Outcomes, Predictions) {
        // 2 prompts x 3 models (0 expensive/good, 1 mid, 2 cheap); model 0 missing on prompt 1.
        let o = Outcomes::new(
            3,
            vec![1.0, 0.0, 0.0, N, 1.0, 0.0],
            vec![1.0, 0.1, 0.01, N, 0.1, 0.01],
        )
        .unwrap();
        let p = Predictions {
            n_models: 3,
            scores: vec![0.9, 0.5, 0.2, 0.9, 0.6, 0.2],
            costs: vec![1.0, 0.1, 0.01, 1.0, 0.1, 0.01],
            fixed_ranking: None,
        };
        (o, p)
    }

    #[test]
    fn quality_first_uses_fallback_when_chosen_model_is_missing() {
        let (o, p) = toy();
        let pt = evaluate_policy(&o, &p, Policy::Lambda(0.0)).unwrap();
        // prompt 0 -> model 0 (1.0, 1.0); prompt 1 -> model 0 missing -> model 1 (1.0, 0.1)
        assert!((pt.quality - 1.0).abs() < 1e-12);
        assert!((pt.cost - 0.55).abs() < 1e-12);
    }

    #[test]
    fn huge_lambda_is_cheapest_first() {
        let (o, p) = toy();
        let pt = evaluate_policy(&o, &p, Policy::Lambda(1e6)).unwrap();
        assert!((pt.quality - 0.0).abs() < 1e-12);
        assert!((pt.cost - 0.01).abs() < 1e-12);
    }

    #[test]
    fn grid_starts_at_zero_and_spans_the_cost_scale() {
        let g = lambda_grid(&[0.001, 0.01, 0.0], 50);
        assert_eq!(g.len(), 51);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 0.01 / 0.01).abs() < 1e-9);
        assert!((g[50] - 100.0 / 0.001).abs() < 1e-6);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_fixed_ranking_is_one_point_under_every_lambda() {
        let (o, mut p) = toy();
        p.fixed_ranking = Some(vec![0, 1, 2]);
        let curve = sweep_lambda(&o, &p, &[0.0, 1.0, 1e6]).unwrap();
        for c in &curve {
            // prompt 0 -> model 0 (1.0, 1.0); prompt 1: model 0 missing -> model 1 (1.0, 0.1).
            assert!(
                (c.quality - 1.0).abs() < 1e-12 && (c.cost - 0.55).abs() < 1e-12,
                "{c:?}"
            );
        }
    }

    #[test]
    fn weighted_curve_counts_prompts_by_their_weights() {
        let (o, p) = toy();
        let r = realise(&o, &p, &[0.0]).unwrap();
        assert_eq!(r.curve_weighted(&[1, 1]), r.curve());
        // Prompt 1 twice, prompt 0 never: quality 1.0, cost 0.1.
        let w = r.curve_weighted(&[0, 2])[0];
        assert!((w.quality - 1.0).abs() < 1e-12 && (w.cost - 0.1).abs() < 1e-12);
    }

    #[test]
    fn sweep_rejects_mismatched_shapes() {
        let (o, mut p) = toy();
        p.scores.pop();
        p.costs.pop();
        assert!(sweep_lambda(&o, &p, &[0.0]).is_err());
    }
}
