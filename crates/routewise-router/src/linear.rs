//! Ridge regression per model router (placeholder: fit and predict land with the router-lab work).

use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the linear router.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinearConfig {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearRouter {
    n_models: usize,
}

impl LinearRouter {
    /// Fits the router on `train`.
    pub fn fit(train: &TrainSet, config: &LinearConfig) -> Result<Self, RouterError> {
        let _ = config;
        Ok(LinearRouter {
            n_models: train.n_models,
        })
    }
}

impl Router for LinearRouter {
    fn predict_scores(&self, _features: &[f32], out: &mut [f64]) {
        out.fill(0.0);
    }
}
