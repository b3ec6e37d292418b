//! Ensemble router: the mean of several learned routers' predicted scores.
//!
//! Method: fit each member (by default kNN, ridge and the MLP) on the same training set
//! and average their per-model score predictions (uniform model averaging; averaging
//! estimators with partly independent errors lowers the variance of the prediction,
//! Breiman, 1996, "Bagging Predictors", and Dietterich, 2000, "Ensemble Methods in
//! Machine Learning"). The averaged scores then go through the usual policy.

use serde::{Deserialize, Serialize};

use crate::TrainSet;
use crate::{AnyRouter, Router, RouterConfigs, RouterError, RouterKind};

fn default_members() -> Vec<RouterKind> {
    vec![RouterKind::Knn, RouterKind::Linear, RouterKind::Mlp]
}

/// Which routers the ensemble averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleConfig {
    /// Learned router kinds to average (`knn`, `linear`, `mlp`, `mf`).
    #[serde(default = "default_members")]
    pub members: Vec<RouterKind>,
}

impl Default for EnsembleConfig {
    fn default() -> Self {
        EnsembleConfig {
            members: default_members(),
        }
    }
}

/// A fitted ensemble: the members' predictions are averaged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsembleRouter {
    members: Vec<AnyRouter>,
    n_models: usize,
}

impl EnsembleRouter {
    /// Fits every member of `cfg.ensemble` on `train` with its own config from `cfg`.
    pub fn fit(train: &TrainSet, cfg: &RouterConfigs) -> Result<Self, RouterError> {
        let fit_err = |message: String| RouterError::Fit {
            router: "ensemble".into(),
            message,
        };
        if cfg.ensemble.members.is_empty() {
            return Err(fit_err("the ensemble has no members".into()));
        }
        let mut members = Vec::with_capacity(cfg.ensemble.members.len());
        for &kind in &cfg.ensemble.members {
            members.push(crate::fit_learned(kind, train, cfg)?.ok_or_else(|| {
                fit_err(format!(
                    "`{kind}` cannot be an ensemble member (use knn, linear, mlp or mf)"
                ))
            })?);
        }
        Ok(EnsembleRouter {
            members,
            n_models: train.n_models,
        })
    }

    /// The fitted members.
    pub fn members(&self) -> &[AnyRouter] {
        &self.members
    }
}

impl Router for EnsembleRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        let n = out.len();
        let mut stack = [0.0f64; 64];
        let mut heap = Vec::new();
        let tmp: &mut [f64] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, 0.0);
            &mut heap
        };
        out.fill(0.0);
        for m in &self.members {
            m.predict_scores(features, tmp);
            for (o, t) in out.iter_mut().zip(tmp.iter()) {
                *o += *t;
            }
        }
        let k = self.members.len().max(1) as f64;
        for o in out.iter_mut() {
            *o /= k;
        }
        debug_assert_eq!(n, self.n_models);
    }
}
