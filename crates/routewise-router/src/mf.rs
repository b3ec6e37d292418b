//! RouteLLM-style matrix factorisation router (placeholder: fit and predict land with the router-lab work).

use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the mf router.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MfConfig {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfRouter {
    n_models: usize,
}

impl MfRouter {
    /// Fits the router on `train`.
    pub fn fit(train: &TrainSet, config: &MfConfig) -> Result<Self, RouterError> {
        let _ = config;
        Ok(MfRouter {
            n_models: train.n_models,
        })
    }
}

impl Router for MfRouter {
    fn predict_scores(&self, _features: &[f32], out: &mut [f64]) {
        out.fill(0.0);
    }
}
