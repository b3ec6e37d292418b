//! Cosine kNN router (placeholder: fit and predict land with the router-lab work).

use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the knn router.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KnnConfig {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnnRouter {
    n_models: usize,
}

impl KnnRouter {
    /// Fits the router on `train`.
    pub fn fit(train: &TrainSet, config: &KnnConfig) -> Result<Self, RouterError> {
        let _ = config;
        Ok(KnnRouter {
            n_models: train.n_models,
        })
    }
}

impl Router for KnnRouter {
    fn predict_scores(&self, _features: &[f32], out: &mut [f64]) {
        out.fill(0.0);
    }
}
