//! A router fitted on a dataset's train split, and its predictions for any of its
//! records: the shared start of the lab's stream simulations (`eval --pacing`,
//! `eval --affinity`, `simulate`).

use routewise_data::{Dataset, Record};
use routewise_features::{Featurizer, FeaturizerKind};
use routewise_router::train::Prepared;
use routewise_router::{AnyRouter, RouterConfigs, RouterKind};

use crate::report::split_records;
use crate::EvalError;

/// Rows of `records` where every one of the `nm` models has an outcome.
pub(crate) fn complete_rows(records: &[&Record], nm: usize) -> Vec<usize> {
    (0..records.len())
        .filter(|&i| records[i].outcomes.iter().take(nm).all(Option::is_some))
        .collect()
}

pub(crate) struct Fitted<'a> {
    pub train: Vec<&'a Record>,
    pub test: Vec<&'a Record>,
    pub prepared: Prepared,
    pub router: AnyRouter,
    pub cfg: RouterConfigs,
    nm: usize,
}

impl<'a> Fitted<'a> {
    /// `kind` fitted on `ds`'s train split.
    pub fn new(
        ds: &'a Dataset,
        kind: RouterKind,
        featurizer: FeaturizerKind,
        seed: u64,
    ) -> Result<Fitted<'a>, EvalError> {
        let (train, test) = split_records(ds)?;
        let prepared = routewise_router::prepare(&ds.models, &train, featurizer)?;
        let cfg = RouterConfigs {
            seed,
            ..RouterConfigs::default()
        };
        let router = prepared.fit(kind, &cfg)?;
        Ok(Fitted {
            train,
            test,
            prepared,
            router,
            cfg,
            nm: ds.models.len(),
        })
    }

    /// Row-major predicted scores and expected costs of every model on `records`.
    pub fn predict(&self, records: &[&Record]) -> (Vec<f64>, Vec<f64>) {
        let nm = self.nm;
        let texts: Vec<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
        let feats = self.prepared.featurizer.featurize_batch(&texts);
        let dim = self.prepared.featurizer.dim();
        let mut pred = vec![0.0; records.len() * nm];
        for (i, row) in pred.chunks_exact_mut(nm).enumerate() {
            routewise_router::Router::predict_scores_keyed(
                &self.router,
                &feats[i * dim..(i + 1) * dim],
                &records[i].id,
                row,
            );
        }
        (pred, self.expected_costs(records))
    }

    /// Row-major expected costs of every model on `records`.
    pub fn expected_costs(&self, records: &[&Record]) -> Vec<f64> {
        let mut c = vec![0.0; records.len() * self.nm];
        for (row, r) in c.chunks_exact_mut(self.nm).zip(records) {
            self.prepared.catalog.expected_costs(r.input_tokens(), row);
        }
        c
    }

    /// The model with the best mean score on train.
    pub fn best_on_train(&self) -> usize {
        let mean = |m: usize| {
            let (s, n) = self
                .train
                .iter()
                .filter_map(|r| r.outcomes.get(m)?.as_ref())
                .fold((0.0, 0usize), |(s, n), o| (s + o.score, n + 1));
            if n == 0 {
                f64::NEG_INFINITY
            } else {
                s / n as f64
            }
        };
        (0..self.nm)
            .max_by(|&a, &b| mean(a).total_cmp(&mean(b)))
            .unwrap_or(0)
    }
}
