//! Realised quality and cost of a router's decisions, and the CARROT lambda sweep.
//!
//! For each test prompt the policy ranks the models from the router's *predicted*
//! scores and costs ([`routewise_router::Policy::rank_into`], the same code the gateway
//! runs); the prompt is then charged the *real* outcome of the chosen model. When the
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

/// Realised mean quality and cost of routing every test prompt with `policy`.
pub fn evaluate_policy(
    outcomes: &Outcomes,
    preds: &Predictions,
    policy: Policy,
) -> Result<Point, EvalError> {
    preds.check(outcomes)?;
    let mut idx = Vec::with_capacity(outcomes.n_models());
    let (mut q, mut c) = (0.0, 0.0);
    for i in 0..outcomes.len() {
        let (s, pc) = preds.row(i);
        policy.rank_into(s, pc, &mut idx);
        let (score, cost) = idx
            .iter()
            .find_map(|&m| outcomes.get(i, m))
            .ok_or(EvalError::NoOutcome(i))?;
        q += score;
        c += cost;
    }
    let n = outcomes.len().max(1) as f64;
    Ok(Point {
        quality: q / n,
        cost: c / n,
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
    lambdas
        .iter()
        .map(|&lambda| {
            evaluate_policy(outcomes, preds, Policy::Lambda(lambda)).map(|p| CurvePoint {
                lambda,
                quality: p.quality,
                cost: p.cost,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
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
    fn sweep_rejects_mismatched_shapes() {
        let (o, mut p) = toy();
        p.scores.pop();
        p.costs.pop();
        assert!(sweep_lambda(&o, &p, &[0.0]).is_err());
    }
}
