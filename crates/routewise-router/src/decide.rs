//! The routing seam: one trait, [`Decide`], that turns a prompt and a preference into a
//! [`Decision`]. The gateway holds one `Arc<dyn Decide>` and knows nothing else about
//! how a ranking is made: [`crate::Engine`] (featurizer + offline router + catalog) is
//! one implementation; the online bandit router (`routewise-online`) wraps an engine and
//! is another. A new way of deciding (rules, a cache hit, a shadow router) implements
//! this trait or wraps one that does.
//!
//! A decision carries the ranking (the choice and the fallback order), every model's
//! predicted score and cost, why it was made, the probability with which the choice was
//! made (its propensity, for off-policy evaluation of other policies on the logged
//! decisions), and what a learner needs later ([`Learning`]: the bandit context, the prior
//! scores).

use serde::Serialize;

use crate::{Catalog, Policy};

/// What one routing decision is asked about.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The text the router sees (for chat: the messages' contents).
    pub prompt: &'a str,
    /// The prompt's length in tokens (drives the expected cost).
    pub input_tokens: u32,
    /// The preference: the request's, else the operator's default.
    pub policy: Policy,
}

/// Why the ranking is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionReason {
    /// The router's predictions, ranked by the policy.
    Predicted,
    /// A baseline with a fixed ranking (`best-single`, `cheapest`): the policy is ignored.
    Fixed,
    /// The online router's estimate (offline prior + learned correction), ranked by the
    /// policy.
    Learned,
    /// A forced exploration of a model the router has little evidence about.
    Explored,
}

impl DecisionReason {
    pub fn name(self) -> &'static str {
        match self {
            DecisionReason::Predicted => "predicted",
            DecisionReason::Fixed => "fixed",
            DecisionReason::Learned => "learned",
            DecisionReason::Explored => "explored",
        }
    }
}

/// What a learning router keeps from a decision to learn from its feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct Learning {
    /// The bandit context of the prompt.
    pub context: Vec<f64>,
    /// Prior (offline or optimistic) score per catalog model.
    pub prior_scores: Vec<f64>,
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
    pub reason: DecisionReason,
    /// Probability that `chosen` was chosen under the rule that chose it, given the
    /// prompt: 1 for a deterministic rule; `None` where it is not computed on the request
    /// path (Thompson sampling).
    pub propensity: Option<f64>,
    /// Whether an exploration rule replaced the router's choice
    /// ([`crate::explore::Exploring`]).
    pub explored: bool,
    /// How an exploration rule mixed with the router's own choice: the final propensity
    /// is `keep * p + add`, with `p` the router's probability of `chosen`. Set where the
    /// router's probability is unknown on the request path, so that it can be combined
    /// once estimated.
    #[serde(skip)]
    pub mix: Option<(f64, f64)>,
    /// Set by learning routers (see [`Learning`]).
    #[serde(skip)]
    pub learning: Option<Learning>,
}

impl Decision {
    /// A decision for `ranking` (the first model is the choice).
    pub fn new(
        ranking: Vec<usize>,
        scores: Vec<f64>,
        costs: Vec<f64>,
        policy: Policy,
        reason: DecisionReason,
        learning: Option<Learning>,
    ) -> Decision {
        Decision {
            chosen: ranking.first().copied().unwrap_or(0),
            ranking,
            scores,
            costs,
            policy,
            reason,
            propensity: Some(1.0),
            explored: false,
            mix: None,
            learning,
        }
    }
}

/// Turns a prompt and a preference into a ranking of the catalog's models.
pub trait Decide: Send + Sync + std::fmt::Debug {
    /// Routes one request.
    fn decide(&self, req: &RouteRequest<'_>) -> Decision;

    /// The models decisions rank, in index order.
    fn catalog(&self) -> &Catalog;

    /// A short description for logs (`knn`, `online(linucb) over knn`).
    fn describe(&self) -> String;
}
