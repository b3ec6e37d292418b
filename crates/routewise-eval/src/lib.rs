//! Router evaluation on held-out outcomes: what quality and cost a router's decisions
//! *realise* on test prompts, swept over CARROT's lambda, summarised by RouterBench's
//! AIQ and RouteLLM's APGR/CPT, and drawn as a quality-vs-cost SVG.
//!
//! * [`outcomes`]: the test outcome matrix (prompt x model -> score, cost), single-model
//!   and oracle points.
//! * [`sweep`]: realised quality/cost of a router's predictions under a policy, and the
//!   lambda grid.
//! * [`metrics`]: the non-decreasing convex hull, AIQ and the per-router summary.
//! * [`pairwise`]: RouteLLM's strong/weak metrics (PGR curve, APGR, CPT).
//! * [`singles`]: the single models compared on common prompts, and the best one.
//! * [`bootstrap`]: standard errors of AIQs, and which differences are within noise.
//! * [`plot`]: the SVG plot (returns a `String`; writing it is the caller's job).
//!
//! Everything here is pure computation: no file or network I/O.

pub mod bootstrap;
pub mod metrics;
pub mod outcomes;
pub mod pairwise;
pub mod plot;
pub mod singles;
pub mod sweep;

pub use bootstrap::{bootstrap_aiq, AiqNoise};
pub use metrics::{aiq, nondecreasing_hull, router_metrics, Hull, RouterMetrics};
pub use outcomes::{Outcomes, Point};
pub use pairwise::{pairwise_metrics, pgr_curve, PairwiseMetrics};
pub use singles::{SingleModel, Singles};
pub use sweep::{
    evaluate_policy, lambda_grid, realise, sweep_lambda, CurvePoint, Predictions, Realised,
};

/// Errors from building evaluation inputs or rendering the plot.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("prompt {0} has no model outcome")]
    NoOutcome(usize),
    #[error("cannot render plot: {0}")]
    Plot(String),
}
