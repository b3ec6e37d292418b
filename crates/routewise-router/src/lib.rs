//! Routers: given a prompt's features, predict every model's expected score; with the
//! [`Catalog`]'s expected cost, a [`Policy`] turns the predictions into a ranking of
//! models (the first is the choice, the rest are the fallback order).
//!
//! * [`catalog`]: per-model prices and mean output tokens, fitted from the data; expected
//!   cost of a prompt for a model.
//! * [`policy`]: CARROT's lambda rule, per-request budget, RouteLLM's strong/weak threshold.
//! * [`engine`]: featurizer + router + catalog = one routing decision.
//! * router implementations: see [`AnyRouter`].

pub mod catalog;
pub mod engine;
pub mod knn;
pub mod linear;
pub mod mf;
pub mod mlp;
pub mod policy;

use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, ModelInfo};
pub use engine::{Decision, Engine};
pub use policy::Policy;

/// Training data for routers: features and outcomes, dense and row-major.
#[derive(Debug, Clone)]
pub struct TrainSet {
    /// `n * dim` features, one row per prompt.
    pub features: Vec<f32>,
    pub dim: usize,
    /// `n * n_models` scores; `f64::NAN` where the model has no outcome for the prompt.
    pub scores: Vec<f64>,
    /// `n * n_models` observed costs in USD; `f64::NAN` where missing.
    pub costs: Vec<f64>,
    /// Input tokens of each prompt.
    pub input_tokens: Vec<u32>,
    pub n_models: usize,
}

impl TrainSet {
    pub fn len(&self) -> usize {
        self.input_tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.input_tokens.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
    pub fn score(&self, i: usize, m: usize) -> Option<f64> {
        let s = self.scores[i * self.n_models + m];
        (!s.is_nan()).then_some(s)
    }
}

/// Predicts each model's expected score for one prompt.
pub trait Router: Send + Sync {
    /// Writes one expected score per model into `out` (`out.len() == n_models`).
    fn predict_scores(&self, features: &[f32], out: &mut [f64]);
}

/// Errors from fitting or loading routers.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot fit `{router}`: {message}")]
    Fit { router: String, message: String },
    #[error("unknown router `{0}` (known: knn, linear, mlp, mf, best-single, cheapest, random)")]
    UnknownRouter(String),
    #[error("{0}")]
    Artifact(String),
}

/// The routers routewise can train and serve (config enum; serialisable into artifacts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AnyRouter {
    Knn(knn::KnnRouter),
    Linear(linear::LinearRouter),
    Mlp(mlp::MlpRouter),
    Mf(mf::MfRouter),
    /// Always predicts each model's mean train score: ranks by mean quality.
    BestSingle {
        mean_scores: Vec<f64>,
    },
}

impl Router for AnyRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        match self {
            AnyRouter::BestSingle { mean_scores } => out.copy_from_slice(mean_scores),
            AnyRouter::Knn(r) => r.predict_scores(features, out),
            AnyRouter::Linear(r) => r.predict_scores(features, out),
            AnyRouter::Mlp(r) => r.predict_scores(features, out),
            AnyRouter::Mf(r) => r.predict_scores(features, out),
        }
    }
}

impl AnyRouter {
    pub fn name(&self) -> &'static str {
        match self {
            AnyRouter::BestSingle { .. } => "best-single",
            AnyRouter::Knn(_) => "knn",
            AnyRouter::Linear(_) => "linear",
            AnyRouter::Mlp(_) => "mlp",
            AnyRouter::Mf(_) => "mf",
        }
    }
}
