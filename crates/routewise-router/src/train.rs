//! The one training pipeline: featurizer (fitted or opened) -> training set (features +
//! outcomes) -> catalog (prices fitted on the same records) -> router -> artifact.
//! `routewise train`, `eval`, `eval --online` and the gateway's demo all go through it,
//! so a new featurizer or router is wired once, here and in the config enums.

use std::time::Instant;

use routewise_data::Record;
use routewise_features::{AnyFeaturizer, FeaturizerKind};

use crate::{
    fit_router, AnyRouter, Artifact, Catalog, Engine, RouterConfigs, RouterError, RouterKind,
    TrainSet,
};

/// Training inputs made ready for any router: the featurizer, the featurized records
/// with their outcomes, and the fitted catalog.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub featurizer: AnyFeaturizer,
    pub train_set: TrainSet,
    pub catalog: Catalog,
    /// Seconds spent fitting (TF-IDF) or loading (embeddings) the featurizer.
    pub featurizer_seconds: f64,
}

/// Fits or opens the featurizer on `records`' prompts, featurizes them and fits the
/// catalog. `models` names the dataset's models (the records' outcome order).
pub fn prepare(
    models: &[String],
    records: &[&Record],
    featurizer: FeaturizerKind,
) -> Result<Prepared, RouterError> {
    if records.is_empty() {
        return Err(RouterError::Fit {
            router: featurizer.name().to_string(),
            message: "no training prompts".into(),
        });
    }
    let t0 = Instant::now();
    let texts: Vec<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
    let featurizer = featurizer.fit(&texts)?;
    let featurizer_seconds = t0.elapsed().as_secs_f64();
    let train_set = TrainSet::from_records(records, models.len(), &featurizer);
    let catalog = Catalog::fit(models, records.iter().copied());
    Ok(Prepared {
        featurizer,
        train_set,
        catalog,
        featurizer_seconds,
    })
}

impl Prepared {
    /// Fits a router of `kind` on the prepared training set.
    pub fn fit(&self, kind: RouterKind, cfg: &RouterConfigs) -> Result<AnyRouter, RouterError> {
        fit_router(kind, &self.train_set, &self.catalog, cfg)
    }

    /// The routing engine for `router`.
    pub fn into_engine(self, router: AnyRouter) -> Engine {
        Engine {
            featurizer: self.featurizer,
            router,
            catalog: self.catalog,
        }
    }

    /// The artifact for `router`, trained on `dataset`.
    pub fn into_artifact(self, dataset: &str, router: AnyRouter) -> Artifact {
        let n_train = self.train_set.len();
        Artifact::new(dataset, self.featurizer, router, self.catalog, n_train)
    }
}

/// Trains one router end to end: [`prepare`], fit, and bundle the artifact.
pub fn train(
    dataset: &str,
    models: &[String],
    records: &[&Record],
    featurizer: FeaturizerKind,
    router: RouterKind,
    cfg: &RouterConfigs,
) -> Result<Artifact, RouterError> {
    let prepared = prepare(models, records, featurizer)?;
    let router = prepared.fit(router, cfg)?;
    Ok(prepared.into_artifact(dataset, router))
}
