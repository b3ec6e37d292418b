//! The offline routing engine: featurize the prompt, predict scores, estimate costs, rank.
//! It implements [`Decide`], the seam the gateway routes through.

use routewise_features::{AnyFeaturizer, Featurizer};

use crate::decide::{Decide, Decision, DecisionReason, RouteRequest};
use crate::{AnyRouter, Catalog, Policy, Router};

/// A loaded router ready to serve decisions.
#[derive(Debug, Clone)]
pub struct Engine {
    pub featurizer: AnyFeaturizer,
    pub router: AnyRouter,
    pub catalog: Catalog,
}

impl Engine {
    /// An engine that predicts the same `scores` (one per catalog model) for every prompt:
    /// a hashed TF-IDF featurizer over no data and a constant [`crate::LinearRouter`].
    /// For tests, and for a pool with no outcome data yet (the policy still trades the
    /// scores against each prompt's cost).
    pub fn constant(catalog: Catalog, scores: Vec<f64>) -> Engine {
        let featurizer = AnyFeaturizer::Tfidf(routewise_features::TfidfFeaturizer::fit(
            &[],
            routewise_features::TfidfConfig::default(),
        ));
        let router = AnyRouter::Linear(crate::LinearRouter::constant(featurizer.dim(), scores));
        Engine {
            featurizer,
            router,
            catalog,
        }
    }

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
        let (ranking, reason) = match self.router.fixed_ranking() {
            Some(r) => (r, DecisionReason::Fixed),
            None => (policy.rank(&scores, &costs), DecisionReason::Predicted),
        };
        Decision::new(ranking, scores, costs, policy, reason, None)
    }
}

impl Decide for Engine {
    fn decide(&self, req: &RouteRequest<'_>) -> Decision {
        Engine::decide(self, req.prompt, req.input_tokens, req.policy)
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.router.name(), self.featurizer.name())
    }
}
