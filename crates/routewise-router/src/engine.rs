//! One routing decision: featurize the prompt, predict scores, estimate costs, rank.

use routewise_features::{AnyFeaturizer, Featurizer};
use serde::Serialize;

use crate::{AnyRouter, Catalog, Policy, Router};

/// A loaded router ready to serve decisions.
#[derive(Debug, Clone)]
pub struct Engine {
    pub featurizer: AnyFeaturizer,
    pub router: AnyRouter,
    pub catalog: Catalog,
}

/// The outcome of routing one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Index of the chosen model in the catalog (`ranking[0]`).
    pub chosen: usize,
    /// Every model, best first: the fallback order.
    pub ranking: Vec<usize>,
    /// Predicted score per catalog model.
    pub scores: Vec<f64>,
    /// Predicted cost (USD) per catalog model.
    pub costs: Vec<f64>,
    pub policy: Policy,
}

impl Engine {
    /// Routes `prompt` (whose length is `input_tokens`) under `policy`.
    pub fn decide(&self, prompt: &str, input_tokens: u32, policy: Policy) -> Decision {
        let features = self.featurizer.featurize(prompt);
        self.decide_features(&features, prompt, input_tokens, policy)
    }

    /// Routes already-featurized input; `prompt` keys the per-prompt random baseline.
    pub fn decide_features(
        &self,
        features: &[f32],
        prompt: &str,
        input_tokens: u32,
        policy: Policy,
    ) -> Decision {
        let n = self.catalog.len();
        let mut scores = vec![0.0; n];
        let mut costs = vec![0.0; n];
        self.router
            .predict_scores_keyed(features, prompt, &mut scores);
        self.catalog.expected_costs(input_tokens, &mut costs);
        let ranking = self
            .router
            .fixed_ranking()
            .unwrap_or_else(|| policy.rank(&scores, &costs));
        Decision {
            chosen: ranking.first().copied().unwrap_or(0),
            ranking,
            scores,
            costs,
            policy,
        }
    }
}
