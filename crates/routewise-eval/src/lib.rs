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
//! * [`calibrate`]: a cascade's threshold with a risk guarantee (Learn then Test).
//! * [`cascade`]: cascades (confidence chain, agreement tier) simulated on recorded
//!   answers: cross-fitted acceptor, tier choice on train, frontier on test.
//! * [`ope`]: off-policy estimators (IPS, SNIPS, doubly robust) with bootstrap
//!   intervals; [`ope_validate`]: their validation in simulation (`replay --validate`);
//!   [`ope_log`]: a candidate router evaluated on the gateway's decision log
//!   (`replay --log`).
//! * [`leakage`]: near-identical copies the train split holds and the test split does
//!   not (what would make settings tuned on train memorise), checked by `eval`.
//! * [`onboarding`]: a model added from a few probes against retraining with it, leaving
//!   one model out (`eval --onboarding`).
//! * [`plot`]: the SVG plot (returns a `String`; writing it is the caller's job).
//! * [`report`]: `routewise eval` as a function ([`evaluate`]): fit, predict, sweep,
//!   summarise; the table and the plot series.
//! * [`online`]: the replay protocol of the bandit router (`eval --online`);
//!   [`online_report`]: the replay as a function ([`evaluate_online`]), its table and its
//!   regret plot ([`online_plot`]).
//!
//! No file or network I/O: data comes in as a `Dataset` (or a log's text), results go out as values and
//! strings; the CLI reads and writes files and draws progress ([`Progress`]).

pub mod affinity;
pub mod bootstrap;
pub mod calibrate;
pub mod cascade;
pub mod describe;
mod fitted;
pub mod leakage;
pub mod metrics;
pub mod onboarding;
pub mod online;
pub mod online_plot;
pub mod online_report;
pub mod ope;
pub mod ope_log;
pub mod ope_validate;
pub mod outcomes;
pub mod pacing;
pub mod pairwise;
pub mod plot;
pub mod report;
pub mod simulate;
pub mod singles;
pub mod sweep;
#[cfg(test)]
mod testing;

pub use bootstrap::{bootstrap_aiq, AiqNoise};
pub use metrics::{aiq, nondecreasing_hull, router_metrics, Hull, RouterMetrics};
pub use online_report::{evaluate_online, OnlineOptions, OnlineReport};
pub use outcomes::{Outcomes, Point};
pub use pairwise::{pairwise_metrics, pgr_curve, PairwiseMetrics};
pub use report::{evaluate, EvalOptions, Report};
pub use singles::{SingleModel, Singles};
pub use sweep::{
    evaluate_policy, lambda_grid, realise, sweep_lambda, CurvePoint, Predictions, Realised,
};

/// Progress of the long steps of an evaluation, one step at a time (the CLI draws bars;
/// [`NoProgress`] ignores it).
pub trait Progress {
    /// A step starts: `len` items, or unknown.
    fn start(&self, message: &str, len: Option<u64>);
    /// Items done in the current step.
    fn set_position(&self, pos: u64);
    /// The current step is over.
    fn finish(&self);
}

/// Reports no progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _message: &str, _len: Option<u64>) {}
    fn set_position(&self, _pos: u64) {}
    fn finish(&self) {}
}

/// Errors from building evaluation inputs, fitting routers or rendering the plot.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The data cannot be evaluated (an empty split, no outcome).
    #[error("{0}")]
    Split(String),
    /// Fitting a featurizer or a router failed.
    #[error("{0}")]
    Router(#[from] routewise_router::RouterError),
    /// Invalid evaluation settings.
    #[error("{0}")]
    Config(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("prompt {0} has no model outcome")]
    NoOutcome(usize),
    #[error("cannot render plot: {0}")]
    Plot(String),
}
