//! A router fitted on a dataset's train split, and its predictions for any of its
//! records: the shared start of the lab's stream simulations (`eval --pacing`,
//! `eval --affinity`, `simulate`).

use routewise_data::{Dataset, Record};
use routewise_features::{Featurizer, FeaturizerKind};
use routewise_router::train::Prepared;
use routewise_router::{AnyRouter, Catalog, RouterConfigs, RouterKind};

use crate::report::split_records;
use crate::EvalError;

/// Rows of `records` where every one of the `nm` models has an outcome.
pub(crate) fn complete_rows(records: &[&Record], nm: usize) -> Vec<usize> {
    (0..records.len())
        .filter(|&i| records[i].outcomes.iter().take(nm).all(Option::is_some))
        .collect()
}

/// `Fitted::new_on_validation` holds out one train prompt in this many.
const VALIDATION_SHARE: usize = 5;

/// `train` cut into the part to fit on and a seeded fifth held out.
pub(crate) fn validation_split(mut train: Vec<&Record>, seed: u64) -> (Vec<&Record>, Vec<&Record>) {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    train.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7a11d));
    let held = train.split_off(train.len() - train.len() / VALIDATION_SHARE);
    (train, held)
}

/// Row-major expected costs of every model of `catalog` on `records`.
pub(crate) fn expected_costs(catalog: &Catalog, records: &[&Record]) -> Vec<f64> {
    let nm = catalog.len();
    let mut c = vec![0.0; records.len() * nm];
    for (row, r) in c.chunks_exact_mut(nm).zip(records) {
        catalog.expected_costs(r.input_tokens(), row);
    }
    c
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
        Self::fit(ds, train, test, kind, featurizer, seed)
    }

    /// `kind` fitted on all but a seeded fifth of `ds`'s train split, with that fifth as
    /// its `test`: for choosing settings without looking at the test split.
    pub fn new_on_validation(
        ds: &'a Dataset,
        kind: RouterKind,
        featurizer: FeaturizerKind,
        seed: u64,
    ) -> Result<Fitted<'a>, EvalError> {
        let (train, _) = split_records(ds)?;
        let n = train.len();
        let (fit, held) = validation_split(train, seed);
        if held.is_empty() {
            return Err(EvalError::Split(format!(
                "{}: train has too few prompts ({n}) to hold out a validation part",
                ds.name
            )));
        }
        Self::fit(ds, fit, held, kind, featurizer, seed)
    }

    fn fit(
        ds: &'a Dataset,
        train: Vec<&'a Record>,
        test: Vec<&'a Record>,
        kind: RouterKind,
        featurizer: FeaturizerKind,
        seed: u64,
    ) -> Result<Fitted<'a>, EvalError> {
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
        expected_costs(&self.prepared.catalog, records)
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

#[cfg(test)]
mod tests {
    use routewise_data::Split;

    use super::*;

    fn record(i: usize) -> Record {
        crate::testing::record(i, Split::Train, Vec::new())
    }

    #[test]
    fn the_validation_split_holds_out_a_seeded_fifth_of_train() {
        let records: Vec<Record> = (0..103).map(record).collect();
        let refs: Vec<&Record> = records.iter().collect();
        let (fit, held) = validation_split(refs.clone(), 3);
        assert_eq!(held.len(), 20);
        assert_eq!(fit.len(), 83);
        let mut ids: Vec<&str> = fit.iter().chain(&held).map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 103, "every prompt once");
        // The same seed, the same cut; another seed, another.
        let again = validation_split(refs.clone(), 3).1;
        assert!(held.iter().zip(&again).all(|(a, b)| a.id == b.id));
        let other = validation_split(refs, 4).1;
        assert!(held.iter().zip(&other).any(|(a, b)| a.id != b.id));
        // Too few prompts: nothing held out.
        let few: Vec<&Record> = records.iter().take(4).collect();
        assert!(validation_split(few, 0).1.is_empty());
    }
}
