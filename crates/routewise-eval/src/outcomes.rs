//! The test outcome matrix: for each held-out prompt and each model, the real score and
//! cost (`NaN` where the model has no result for that prompt).
//!
//! Missing outcomes: [`Outcomes::single`] is a model's mean over the prompts it was
//! evaluated on (its "own" prompts); comparing models uses [`crate::singles`] instead,
//! which measures them on common prompts. The oracle picks among the models present on
//! each prompt. Every prompt must have at least one outcome.

use routewise_data::Record;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// A (quality, cost) operating point: mean test score and mean USD cost per prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub quality: f64,
    pub cost: f64,
}

/// Row-major `n_prompts x n_models` real outcomes.
#[derive(Debug, Clone)]
pub struct Outcomes {
    n_models: usize,
    scores: Vec<f64>,
    costs: Vec<f64>,
}

impl Outcomes {
    /// Builds the matrix from row-major scores and costs (`NaN` = missing, in both).
    pub fn new(n_models: usize, scores: Vec<f64>, costs: Vec<f64>) -> Result<Self, EvalError> {
        if n_models == 0
            || scores.len() != costs.len()
            || scores.len() / n_models * n_models != scores.len()
        {
            return Err(EvalError::Shape(format!(
                "{} scores and {} costs for {n_models} models",
                scores.len(),
                costs.len()
            )));
        }
        let out = Outcomes {
            n_models,
            scores,
            costs,
        };
        for i in 0..out.len() {
            if (0..n_models).all(|m| out.get(i, m).is_none()) {
                return Err(EvalError::NoOutcome(i));
            }
        }
        Ok(out)
    }

    /// The outcomes of `records` (indexed like the dataset's models).
    pub fn from_records(records: &[&Record], n_models: usize) -> Result<Self, EvalError> {
        let mut scores = Vec::with_capacity(records.len() * n_models);
        let mut costs = Vec::with_capacity(records.len() * n_models);
        for r in records {
            if r.outcomes.len() != n_models {
                return Err(EvalError::Shape(format!(
                    "record `{}` has {} outcome slots, expected {n_models}",
                    r.id,
                    r.outcomes.len()
                )));
            }
            for o in &r.outcomes {
                match o {
                    Some(o) => {
                        scores.push(o.score);
                        costs.push(o.cost_usd);
                    }
                    None => {
                        scores.push(f64::NAN);
                        costs.push(f64::NAN);
                    }
                }
            }
        }
        Outcomes::new(n_models, scores, costs)
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.scores.len() / self.n_models
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn n_models(&self) -> usize {
        self.n_models
    }

    /// The row-major score matrix (`NaN` = missing).
    pub fn scores(&self) -> &[f64] {
        &self.scores
    }

    /// `(score, cost)` of model `m` on prompt `i`, if it was evaluated there.
    pub fn get(&self, i: usize, m: usize) -> Option<(f64, f64)> {
        let k = i * self.n_models + m;
        let s = self.scores[k];
        (!s.is_nan()).then(|| (s, self.costs[k]))
    }

    /// Model `m` alone: mean score and mean cost over the prompts it has; `None` if it
    /// has none.
    pub fn single(&self, m: usize) -> Option<Point> {
        let (mut q, mut c, mut n) = (0.0, 0.0, 0usize);
        for i in 0..self.len() {
            if let Some((s, cost)) = self.get(i, m) {
                q += s;
                c += cost;
                n += 1;
            }
        }
        (n > 0).then(|| Point {
            quality: q / n as f64,
            cost: c / n as f64,
        })
    }

    /// Every model's single point (`None` for a model absent from all prompts).
    pub fn singles(&self) -> Vec<Option<Point>> {
        (0..self.n_models).map(|m| self.single(m)).collect()
    }

    /// The oracle: on each prompt the best score, the cheapest model among ties.
    pub fn oracle(&self) -> Point {
        let (mut q, mut c) = (0.0, 0.0);
        for i in 0..self.len() {
            let mut best: Option<(f64, f64)> = None;
            for m in 0..self.n_models {
                if let Some((s, cost)) = self.get(i, m) {
                    best = match best {
                        Some((bs, bc)) if bs > s || (bs == s && bc <= cost) => Some((bs, bc)),
                        _ => Some((s, cost)),
                    };
                }
            }
            if let Some((s, cost)) = best {
                q += s;
                c += cost;
            }
        }
        let n = self.len().max(1) as f64;
        Point {
            quality: q / n,
            cost: c / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: f64 = f64::NAN;

    #[test]
    fn singles_average_over_present_prompts_and_oracle_prefers_cheaper_ties() {
        // 3 prompts x 2 models; model 1 missing on prompt 2.
        let o = Outcomes::new(
            2,
            vec![1.0, 1.0, 0.0, 1.0, 1.0, N],
            vec![0.5, 0.1, 0.5, 0.1, 0.5, N],
        )
        .unwrap();
        let s0 = o.single(0).unwrap();
        assert!((s0.quality - 2.0 / 3.0).abs() < 1e-12);
        assert!((s0.cost - 0.5).abs() < 1e-12);
        let s1 = o.single(1).unwrap();
        assert!((s1.quality - 1.0).abs() < 1e-12);
        assert!((s1.cost - 0.1).abs() < 1e-12);
        let or = o.oracle();
        assert!((or.quality - 1.0).abs() < 1e-12);
        // prompt 0: tie -> 0.1; prompt 1: model 1 -> 0.1; prompt 2: model 0 -> 0.5
        assert!((or.cost - 0.7 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_prompt_without_outcomes_and_bad_shapes() {
        assert!(matches!(
            Outcomes::new(2, vec![1.0, 0.0, N, N], vec![0.1, 0.1, N, N]),
            Err(EvalError::NoOutcome(1))
        ));
        assert!(Outcomes::new(2, vec![1.0], vec![0.1]).is_err());
    }
}
