//! Routers: given a prompt's features, predict every model's expected score; with the
//! [`Catalog`]'s expected cost, a [`Policy`] turns the predictions into a ranking of
//! models (the first is the choice, the rest are the fallback order).
//!
//! * [`catalog`]: per-model prices and mean output tokens, fitted from the data; expected
//!   cost of a prompt for a model.
//! * [`policy`]: CARROT's lambda rule, per-request budget, RouteLLM's strong/weak threshold.
//! * [`decide`]: the [`Decide`] seam (prompt + policy -> [`Decision`]) every router serves
//!   through; [`engine`]: featurizer + router + catalog, its offline implementation.
//! * [`train`]: the one training pipeline (featurizer -> train set -> catalog -> router ->
//!   artifact) used by `train`, `eval`, the online replay and the demo.
//! * [`artifact`]: the versioned, checksummed file a trained router is saved as.
//! * [`baselines`]: best-single, cheapest and random reference routers.
//! * [`extract`]: answer extractors (option letter, last number, JSON field, exact text).
//! * [`cascade`]: cascades (confidence chain, agreement tier): the acceptor and the
//!   next-step rule, for the lab and the gateway.
//! * [`ensemble`]: the mean of several learned routers.
//! * [`onboard`]: a model added to a trained router from its outcomes on a few probes
//!   (no retraining), and the choice of those probes.
//! * router implementations: see [`AnyRouter`]; [`fit_router`] trains any of them.

pub mod affinity;
pub mod artifact;
pub mod baselines;
pub mod cascade;
pub mod catalog;
mod dataset;
pub mod decide;
pub mod dispatch;
pub mod engine;
pub mod ensemble;
pub mod explore;
pub mod extract;
pub mod grade;
pub mod knn;
pub mod linear;
pub mod mf;
pub mod mlp;
pub mod onboard;
pub mod pacing;
pub mod policy;
pub mod train;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use artifact::{Artifact, ArtifactMeta, ARTIFACT_FORMAT_VERSION};
pub use catalog::{Catalog, ConfiguredModel, ModelInfo, ReconcileIssue, Reconciled};
pub use decide::{Decide, Decision, DecisionReason, Learning, RouteRequest};
pub use engine::Engine;
pub use ensemble::{EnsembleConfig, EnsembleRouter};
pub use explore::Exploring;
pub use knn::{KnnConfig, KnnIndex, KnnRouter};
pub use linear::{LinearConfig, LinearRouter};
pub use mf::{MfConfig, MfRouter};
pub use mlp::{MlpConfig, MlpRouter};
pub use policy::{Policy, PolicyError};

pub use dataset::TrainSet;
pub use train::{prepare, train, Prepared};

/// Predicts each model's expected score for one prompt.
pub trait Router: Send + Sync {
    /// Writes one expected score per model into `out` (`out.len() == n_models`).
    fn predict_scores(&self, features: &[f32], out: &mut [f64]);

    /// Like [`Router::predict_scores`] for a prompt identified by `key` (its id in a
    /// dataset, its text in the gateway). Only routers that are random per prompt read
    /// the key, so their choices do not depend on the featurizer.
    fn predict_scores_keyed(&self, features: &[f32], key: &str, out: &mut [f64]) {
        let _ = key;
        self.predict_scores(features, out);
    }

    /// A ranking that ignores the prompt and the policy (the fixed baselines
    /// `best-single` and `cheapest`); `None` for routers whose choice depends on them.
    fn fixed_ranking(&self) -> Option<Vec<usize>> {
        None
    }
}

/// Errors from fitting or loading routers.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot fit `{router}`: {message}")]
    Fit { router: String, message: String },
    #[error("unknown router `{0}` (known: knn, linear, mlp, mf, ensemble, best-single, cheapest, random)")]
    UnknownRouter(String),
    #[error("{0}")]
    Artifact(String),
    #[error("featurizer: {0}")]
    Featurizer(#[from] routewise_features::FeatureError),
}

/// The routers routewise can train and serve (config enum; serialisable into artifacts).
///
/// Externally tagged (the serde default) so that both JSON and bincode (the artifact
/// payload, which cannot read internally tagged enums) round-trip it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnyRouter {
    Knn(knn::KnnRouter),
    Linear(linear::LinearRouter),
    Mlp(mlp::MlpRouter),
    Mf(mf::MfRouter),
    /// Mean of several learned routers.
    Ensemble(ensemble::EnsembleRouter),
    /// The best single model on train, under every policy: its fixed ranking orders the
    /// models by `mean_scores` (see [`baselines::mean_scores`]).
    BestSingle {
        mean_scores: Vec<f64>,
    },
    /// The cheapest model under every policy: its fixed ranking orders the models by
    /// `scores` (see [`baselines::cheapest`]).
    Cheapest {
        scores: Vec<f64>,
    },
    /// Seeded per-prompt uniform random scores (see [`baselines::random_scores`]).
    Random {
        seed: u64,
        n_models: usize,
    },
    /// A trained router with models added after training (see [`onboard`]). Last, so
    /// that artifacts written before it keep their variant numbers.
    Onboarded(onboard::OnboardedRouter),
}

impl Router for AnyRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        match self {
            AnyRouter::BestSingle { mean_scores } => out.copy_from_slice(mean_scores),
            AnyRouter::Cheapest { scores } => out.copy_from_slice(scores),
            AnyRouter::Random { seed, .. } => {
                baselines::random_scores(&baselines::feature_bytes(features), *seed, out)
            }
            AnyRouter::Knn(r) => r.predict_scores(features, out),
            AnyRouter::Linear(r) => r.predict_scores(features, out),
            AnyRouter::Mlp(r) => r.predict_scores(features, out),
            AnyRouter::Mf(r) => r.predict_scores(features, out),
            AnyRouter::Ensemble(r) => r.predict_scores(features, out),
            AnyRouter::Onboarded(r) => r.predict_scores(features, out),
        }
    }

    fn predict_scores_keyed(&self, features: &[f32], key: &str, out: &mut [f64]) {
        match self {
            AnyRouter::Random { seed, .. } => baselines::random_scores(key.as_bytes(), *seed, out),
            AnyRouter::Onboarded(r) => r.predict_scores_keyed(features, key, out),
            other => other.predict_scores(features, out),
        }
    }

    fn fixed_ranking(&self) -> Option<Vec<usize>> {
        match self {
            AnyRouter::BestSingle { mean_scores: s } | AnyRouter::Cheapest { scores: s } => {
                Some(baselines::ranking(s))
            }
            _ => None,
        }
    }
}

impl AnyRouter {
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Which kind of router this is (an onboarded router is its base's kind).
    pub fn kind(&self) -> RouterKind {
        match self {
            AnyRouter::Onboarded(r) => r.base().kind(),
            AnyRouter::BestSingle { .. } => RouterKind::BestSingle,
            AnyRouter::Cheapest { .. } => RouterKind::Cheapest,
            AnyRouter::Random { .. } => RouterKind::Random,
            AnyRouter::Knn(_) => RouterKind::Knn,
            AnyRouter::Linear(_) => RouterKind::Linear,
            AnyRouter::Mlp(_) => RouterKind::Mlp,
            AnyRouter::Mf(_) => RouterKind::Mf,
            AnyRouter::Ensemble(_) => RouterKind::Ensemble,
        }
    }
}

/// The router names accepted on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterKind {
    Knn,
    Linear,
    Mlp,
    Mf,
    Ensemble,
    BestSingle,
    Cheapest,
    Random,
}

impl RouterKind {
    /// The routers that learn from prompt features.
    pub const ALL_LEARNED: [RouterKind; 5] = [
        RouterKind::Knn,
        RouterKind::Linear,
        RouterKind::Mlp,
        RouterKind::Mf,
        RouterKind::Ensemble,
    ];
    /// Every router kind.
    pub const ALL: [RouterKind; 8] = [
        RouterKind::Knn,
        RouterKind::Linear,
        RouterKind::Mlp,
        RouterKind::Mf,
        RouterKind::Ensemble,
        RouterKind::BestSingle,
        RouterKind::Cheapest,
        RouterKind::Random,
    ];

    /// The command-line name (`knn`, `best-single`, ...).
    pub fn name(self) -> &'static str {
        match self {
            RouterKind::Knn => "knn",
            RouterKind::Linear => "linear",
            RouterKind::Mlp => "mlp",
            RouterKind::Mf => "mf",
            RouterKind::Ensemble => "ensemble",
            RouterKind::BestSingle => "best-single",
            RouterKind::Cheapest => "cheapest",
            RouterKind::Random => "random",
        }
    }
}

impl fmt::Display for RouterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RouterKind {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        RouterKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| RouterError::UnknownRouter(s.to_string()))
    }
}

/// Hyper-parameters of every router, plus the seed used by the randomised ones.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RouterConfigs {
    #[serde(default)]
    pub knn: KnnConfig,
    #[serde(default)]
    pub linear: LinearConfig,
    #[serde(default)]
    pub mlp: MlpConfig,
    #[serde(default)]
    pub mf: MfConfig,
    #[serde(default)]
    pub ensemble: EnsembleConfig,
    /// Seeds the randomised routers: `random`, and it is added to the mlp and mf seeds
    /// (so the default 0 keeps their configured seeds).
    #[serde(default)]
    pub seed: u64,
}

impl RouterConfigs {
    /// The mlp config with `seed` mixed into its seed.
    pub fn mlp_seeded(&self) -> MlpConfig {
        let mut c = self.mlp.clone();
        c.seed = c.seed.wrapping_add(self.seed);
        c
    }

    /// The mf config with `seed` mixed into its seed.
    pub fn mf_seeded(&self) -> MfConfig {
        let mut c = self.mf.clone();
        c.seed = c.seed.wrapping_add(self.seed);
        c
    }
}

/// Trains a router of `kind` on `train`. `catalog` (fitted on the same training
/// records) supplies the prices the `cheapest` baseline ranks by.
pub fn fit_router(
    kind: RouterKind,
    train: &TrainSet,
    catalog: &Catalog,
    cfg: &RouterConfigs,
) -> Result<AnyRouter, RouterError> {
    if train.is_empty() {
        return Err(RouterError::Fit {
            router: kind.to_string(),
            message: "the training set is empty".into(),
        });
    }
    if catalog.len() != train.n_models {
        return Err(RouterError::Fit {
            router: kind.to_string(),
            message: format!(
                "the catalog has {} models but the training set {}",
                catalog.len(),
                train.n_models
            ),
        });
    }
    Ok(match kind {
        RouterKind::Ensemble => AnyRouter::Ensemble(ensemble::EnsembleRouter::fit(train, cfg)?),
        RouterKind::BestSingle => AnyRouter::BestSingle {
            mean_scores: baselines::mean_scores(train),
        },
        RouterKind::Cheapest => AnyRouter::Cheapest {
            scores: baselines::cheapest(catalog, train),
        },
        RouterKind::Random => AnyRouter::Random {
            seed: cfg.seed,
            n_models: train.n_models,
        },
        learned => fit_learned(learned, train, cfg)?.ok_or_else(|| RouterError::Fit {
            router: kind.to_string(),
            message: "not a learned router".into(),
        })?,
    })
}

/// Fits one of the learned routers (knn, linear, mlp, mf) with its config from `cfg`;
/// `None` for any other kind. Shared by [`fit_router`] and the ensemble's members.
pub(crate) fn fit_learned(
    kind: RouterKind,
    train: &TrainSet,
    cfg: &RouterConfigs,
) -> Result<Option<AnyRouter>, RouterError> {
    Ok(Some(match kind {
        RouterKind::Knn => AnyRouter::Knn(knn::KnnRouter::fit(train, &cfg.knn)?),
        RouterKind::Linear => AnyRouter::Linear(linear::LinearRouter::fit(train, &cfg.linear)?),
        RouterKind::Mlp => AnyRouter::Mlp(mlp::MlpRouter::fit(train, &cfg.mlp_seeded())?),
        RouterKind::Mf => AnyRouter::Mf(mf::MfRouter::fit(train, &cfg.mf_seeded())?),
        _ => return Ok(None),
    }))
}
