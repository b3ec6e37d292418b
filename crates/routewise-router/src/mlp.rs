//! Multi-output MLP router (placeholder: fit and predict land with the router-lab work).

use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the mlp router.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MlpConfig {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlpRouter {
    n_models: usize,
}

impl MlpRouter {
    /// Fits the router on `train`.
    pub fn fit(train: &TrainSet, config: &MlpConfig) -> Result<Self, RouterError> {
        let _ = config;
        Ok(MlpRouter {
            n_models: train.n_models,
        })
    }
}

impl Router for MlpRouter {
    fn predict_scores(&self, _features: &[f32], out: &mut [f64]) {
        out.fill(0.0);
    }
}
