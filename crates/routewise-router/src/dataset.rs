//! Router training data: a dense feature matrix plus every model's observed score and
//! cost per prompt, built from dataset records and a featurizer.
//!
//! A model missing on a prompt is stored as `NaN` in `scores` and `costs`; routers skip
//! those cells (kNN skips the neighbour for that model, regressions leave the cell out
//! of the loss).

use routewise_data::Record;
use routewise_features::Featurizer;

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
    /// Featurizes `records` (with [`Featurizer::featurize_batch`]) and collects their
    /// outcomes. `n_models` is the dataset's model count: each record's `outcomes` is
    /// indexed by model, cells beyond its length count as missing.
    pub fn from_records(
        records: &[&Record],
        n_models: usize,
        featurizer: &dyn Featurizer,
    ) -> TrainSet {
        let texts: Vec<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
        let features = featurizer.featurize_batch(&texts);
        let n = records.len();
        let mut scores = vec![f64::NAN; n * n_models];
        let mut costs = vec![f64::NAN; n * n_models];
        for (i, r) in records.iter().enumerate() {
            for (m, o) in r.outcomes.iter().take(n_models).enumerate() {
                if let Some(o) = o {
                    scores[i * n_models + m] = o.score;
                    costs[i * n_models + m] = o.cost_usd;
                }
            }
        }
        TrainSet {
            features,
            dim: featurizer.dim(),
            scores,
            costs,
            input_tokens: records.iter().map(|r| r.input_tokens()).collect(),
            n_models,
        }
    }

    pub fn len(&self) -> usize {
        self.input_tokens.len()
    }

    /// The rows `rows` of this set, in that order (cross-fitting: fit on some folds,
    /// predict the others).
    pub fn subset(&self, rows: &[usize]) -> TrainSet {
        let (d, nm) = (self.dim, self.n_models);
        let mut out = TrainSet {
            features: Vec::with_capacity(rows.len() * d),
            dim: d,
            scores: Vec::with_capacity(rows.len() * nm),
            costs: Vec::with_capacity(rows.len() * nm),
            input_tokens: Vec::with_capacity(rows.len()),
            n_models: nm,
        };
        for &i in rows {
            out.features.extend_from_slice(self.row(i));
            out.scores
                .extend_from_slice(&self.scores[i * nm..(i + 1) * nm]);
            out.costs
                .extend_from_slice(&self.costs[i * nm..(i + 1) * nm]);
            out.input_tokens.push(self.input_tokens[i]);
        }
        out
    }
    /// This set without model `m`'s outcomes (its other models keep their order): a
    /// router trained on it has never seen `m` (leave-one-model-out evaluation).
    pub fn without_model(&self, m: usize) -> TrainSet {
        let nm = self.n_models;
        let keep = |v: &[f64]| -> Vec<f64> {
            v.chunks_exact(nm.max(1))
                .flat_map(|row| {
                    row.iter()
                        .enumerate()
                        .filter(move |&(j, _)| j != m)
                        .map(|(_, &x)| x)
                })
                .collect()
        };
        TrainSet {
            features: self.features.clone(),
            dim: self.dim,
            scores: keep(&self.scores),
            costs: keep(&self.costs),
            input_tokens: self.input_tokens.clone(),
            n_models: if m < nm { nm - 1 } else { nm },
        }
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

    /// Each model's mean observed score (`NaN` for a model never observed).
    pub fn mean_scores(&self) -> Vec<f64> {
        let mut sum = vec![0.0; self.n_models];
        let mut cnt = vec![0usize; self.n_models];
        for row in self.scores.chunks_exact(self.n_models.max(1)) {
            for (m, &s) in row.iter().enumerate() {
                if !s.is_nan() {
                    sum[m] += s;
                    cnt[m] += 1;
                }
            }
        }
        sum.iter()
            .zip(&cnt)
            .map(|(&s, &c)| if c > 0 { s / c as f64 } else { f64::NAN })
            .collect()
    }
}
