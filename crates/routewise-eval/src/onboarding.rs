//! `routewise eval --onboarding`: how well a model added from a few probes
//! ([`routewise_router::onboard`]) is routed, against retraining with it.
//!
//! Leave one model out: for each model `M` of the dataset (or a seeded sample),
//! 1. train the router on the train split without `M`;
//! 2. onboard `M` from `N` of its train outcomes, the `N` probes chosen by the greedy
//!    V-optimal selection ([`routewise_router::onboard::select_probes`]) and, as the
//!    baseline, at random; `N` over the option's grid, plus every train prompt ("all");
//! 3. evaluate the full pool on the test prompts every model covers: AIQ over the lambda
//!    sweep (as `eval`), and `M`'s predicted scores against its real ones (Brier,
//!    Spearman, AUC where scores are 0/1), and how often the router picks `M` against how
//!    often the oracle does.
//!
//! The reference is the router retrained on every model (`full_retrain_aiq`). Prices
//! come from the catalog fitted on the full train split, as an operator states a new
//! model's list price. Nothing is tuned on the test split: the head's prior strength is
//! chosen by leave-one-out on the probes; `validation` evaluates on a held-out fifth of
//! train instead, for choosing settings.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use routewise_data::{Dataset, Record};
use routewise_features::{Featurizer, FeaturizerKind};
use routewise_router::onboard::{fit_head, random_probes, select_probes};
use routewise_router::{fit_router, Catalog, Policy, Router, RouterConfigs, RouterKind};
use serde::{Deserialize, Serialize};

use crate::fitted::{complete_rows, validation_split};
use crate::report::split_records;
use crate::{aiq, lambda_grid, realise, EvalError, Outcomes, Predictions, Progress};

/// The probe counts evaluated by default (plus "all").
pub const DEFAULT_NS: [usize; 5] = [0, 25, 50, 100, 200];

/// Settings of [`evaluate_onboarding`].
#[derive(Debug, Clone)]
pub struct OnboardingOptions {
    pub router: RouterKind,
    pub featurizer: FeaturizerKind,
    pub seed: u64,
    /// Probe counts (the "all" point is always added).
    pub ns: Vec<usize>,
    /// Leave out at most this many models (a seeded sample); `None`: every model.
    pub max_models: Option<usize>,
    /// Log-spaced lambdas of the AIQ sweep (0 is added).
    pub n_lambdas: usize,
    /// Evaluate on a held-out fifth of train instead of test.
    pub validation: bool,
}

/// One (probe count, selection) point, averaged over the models left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnboardingPoint {
    /// Probes; for `selection: "all"`, the largest number of train outcomes any left-out
    /// model had.
    pub n: usize,
    /// `selected`, `random` or `all`.
    pub selection: String,
    pub aiq_mean: f64,
    pub aiq_min: f64,
    /// Mean of (full retrain's AIQ - this AIQ).
    pub aiq_gap_mean: f64,
    pub brier_mean: f64,
    pub spearman_mean: f64,
    /// Mean AUC over the models whose test scores are 0/1 with both values present.
    pub auc_mean: Option<f64>,
    /// Share of (prompt, lambda) decisions choosing the left-out model.
    pub pick_rate_mean: f64,
    /// Mean |pick rate - the full retrain's pick rate of the same model|.
    pub pick_rate_diff_full_mean: f64,
    /// Mean |pick rate - the oracle's pick rate of the same model|.
    pub pick_rate_diff_oracle_mean: f64,
}

/// One left-out model's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelResult {
    pub model: String,
    /// The full retrain's predictions of this model (Brier, Spearman, pick rate).
    pub full_retrain: ModelScores,
    /// Share of test prompts on which the oracle (best score, then cheapest) is this model.
    pub oracle_pick_rate: f64,
    pub points: Vec<ModelPoint>,
}

/// How well one model's scores are predicted and how often it is chosen.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ModelScores {
    pub brier: f64,
    pub spearman: f64,
    pub auc: Option<f64>,
    pub pick_rate: f64,
}

/// One left-out model at one (probe count, selection).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelPoint {
    pub n: usize,
    pub selection: String,
    pub aiq: f64,
    #[serde(flatten)]
    pub scores: ModelScores,
}

/// The whole evaluation (`{"onboarding": ...}` in the JSON report).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnboardingReport {
    pub dataset: String,
    pub router: String,
    pub featurizer: String,
    pub seed: u64,
    /// `true`: evaluated on a held-out fifth of train, not on test.
    pub validation: bool,
    pub n_train: usize,
    pub n_test: usize,
    pub full_retrain_aiq: f64,
    /// Mean over the left-out models of the full retrain's Brier on them.
    pub full_retrain_brier_mean: f64,
    pub full_retrain_spearman_mean: f64,
    /// Mean |the full retrain's pick rate - the oracle's| over the left-out models (the
    /// pick rates themselves average 1 / models whoever picks).
    pub full_retrain_pick_rate_diff_oracle_mean: f64,
    pub models_left_out: Vec<String>,
    pub points: Vec<OnboardingPoint>,
    pub per_model: Vec<ModelResult>,
    pub seconds: f64,
}

/// Every `PICK_STRIDE`-th lambda of the sweep is used for the pick rates.
const PICK_STRIDE: usize = 5;

/// Runs the leave-one-model-out evaluation (see the module docs).
pub fn evaluate_onboarding(
    ds: &Dataset,
    opts: &OnboardingOptions,
    progress: &dyn Progress,
) -> Result<OnboardingReport, EvalError> {
    let t0 = Instant::now();
    let nm = ds.models.len();
    if nm < 3 {
        return Err(EvalError::Config(format!(
            "{}: onboarding needs at least 3 models (one left out, two to route among)",
            ds.name
        )));
    }
    let (train, test) = if opts.validation {
        let (train, _) = split_records(ds)?;
        validation_split(train, opts.seed)
    } else {
        split_records(ds)?
    };
    let test: Vec<&Record> = complete_rows(&test, nm)
        .into_iter()
        .map(|i| test[i])
        .collect();
    if test.is_empty() {
        return Err(EvalError::Split(format!(
            "{}: no evaluation prompt has every model's outcome",
            ds.name
        )));
    }
    progress.start(&format!("preparing ({} featurizer)", opts.featurizer), None);
    let prepared = routewise_router::prepare(&ds.models, &train, opts.featurizer)?;
    let texts: Vec<&str> = test.iter().map(|r| r.prompt.as_str()).collect();
    let test_feats = prepared.featurizer.featurize_batch(&texts);
    let dim = prepared.featurizer.dim();
    progress.finish();
    let ts = &prepared.train_set;
    let catalog = &prepared.catalog;
    let outcomes = Outcomes::from_records(&test, nm)?;
    let mut costs = vec![0.0; test.len() * nm];
    for (row, r) in costs.chunks_exact_mut(nm).zip(&test) {
        catalog.expected_costs(r.input_tokens(), row);
    }
    let single_costs: Vec<f64> = (0..nm)
        .filter_map(|m| outcomes.single(m).map(|p| p.cost))
        .collect();
    let c_min = single_costs.iter().copied().fold(f64::INFINITY, f64::min);
    let c_max = single_costs.iter().copied().fold(0.0, f64::max);
    let lambdas = lambda_grid(&single_costs, opts.n_lambdas);
    let cfg = RouterConfigs {
        seed: opts.seed,
        ..RouterConfigs::default()
    };
    let ctx = Ctx {
        outcomes: &outcomes,
        costs: &costs,
        lambdas: &lambdas,
        c_min,
        c_max,
        nm,
    };

    progress.start(&format!("fitting {} on every model", opts.router), None);
    let full = fit_router(opts.router, ts, catalog, &cfg)?;
    let mut full_pred = vec![0.0; test.len() * nm];
    for (i, row) in full_pred.chunks_exact_mut(nm).enumerate() {
        full.predict_scores_keyed(&test_feats[i * dim..(i + 1) * dim], &test[i].id, row);
    }
    let full_retrain_aiq = ctx.aiq(&full_pred)?;
    progress.finish();

    let mut left_out: Vec<usize> = (0..nm).collect();
    if let Some(k) = opts.max_models.filter(|&k| k < nm) {
        left_out.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            opts.seed ^ 0x1e4f,
        ));
        left_out.truncate(k);
        left_out.sort_unstable();
    }
    let max_n = opts.ns.iter().copied().max().unwrap_or(0);
    let mut per_model = Vec::with_capacity(left_out.len());
    progress.start("leaving one model out", Some(left_out.len() as u64));
    for (done, &m) in left_out.iter().enumerate() {
        let base_ts = ts.without_model(m);
        let base_catalog = Catalog {
            models: catalog
                .models
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != m)
                .map(|(_, x)| x.clone())
                .collect(),
        };
        let base = fit_router(opts.router, &base_ts, &base_catalog, &cfg)?;
        let k = nm - 1;
        // The base's predictions on the train prompts where M has an outcome (the
        // candidate probes) and on the test prompts.
        let cand: Vec<usize> = (0..ts.len())
            .filter(|&i| ts.score(i, m).is_some())
            .collect();
        let mut cand_x = vec![0.0; cand.len() * k];
        for (row, &i) in cand_x.chunks_exact_mut(k).zip(&cand) {
            base.predict_scores_keyed(ts.row(i), &train[i].id, row);
        }
        let cand_y: Vec<f64> = cand.iter().filter_map(|&i| ts.score(i, m)).collect();
        // The probes are described by the known models' recorded scores on them (as a
        // profiled pool records every model), the prediction where one is missing.
        let mut cand_rec = cand_x.clone();
        for (row, &i) in cand_rec.chunks_exact_mut(k).zip(&cand) {
            for (j, slot) in row.iter_mut().enumerate() {
                if let Some(v) = ts.score(i, if j < m { j } else { j + 1 }) {
                    *slot = v;
                }
            }
        }
        let mut test_x = vec![0.0; test.len() * k];
        for (i, row) in test_x.chunks_exact_mut(k).enumerate() {
            base.predict_scores_keyed(&test_feats[i * dim..(i + 1) * dim], &test[i].id, row);
        }
        let selected = select_probes(&cand_x, Some(&cand_rec), k, max_n, opts.seed);
        let random = random_probes(cand.len(), max_n, opts.seed.wrapping_add(m as u64));
        let truth: Vec<f64> = (0..test.len())
            .map(|i| outcomes.get(i, m).map_or(0.0, |(s, _)| s))
            .collect();
        let mut points = Vec::new();
        let mut eval_rows = |rows: &[usize], n: usize, selection: &str| -> Result<(), EvalError> {
            let xs: Vec<f64> = rows
                .iter()
                .flat_map(|&r| cand_rec[r * k..(r + 1) * k].iter().copied())
                .collect();
            let ys: Vec<f64> = rows.iter().map(|&r| cand_y[r]).collect();
            let (head, _) = fit_head(&ds.models[m], &xs, &ys, k);
            let mut pred = vec![0.0; test.len() * nm];
            let mut new = Vec::with_capacity(test.len());
            for (i, row) in pred.chunks_exact_mut(nm).enumerate() {
                let known = &test_x[i * k..(i + 1) * k];
                let s = head.predict(known);
                new.push(s);
                row[..m].copy_from_slice(&known[..m]);
                row[m] = s;
                row[m + 1..].copy_from_slice(&known[m..]);
            }
            points.push(ModelPoint {
                n,
                selection: selection.to_string(),
                aiq: ctx.aiq(&pred)?,
                scores: ModelScores {
                    brier: brier(&new, &truth),
                    spearman: spearman(&new, &truth),
                    auc: auc(&new, &truth),
                    pick_rate: ctx.pick_rate(&pred, m),
                },
            });
            Ok(())
        };
        for &n in &opts.ns {
            let n_sel = n.min(selected.len());
            eval_rows(&selected[..n_sel], n, "selected")?;
            let n_rand = n.min(random.len());
            eval_rows(&random[..n_rand], n, "random")?;
        }
        let all: Vec<usize> = (0..cand.len()).collect();
        eval_rows(&all, cand.len(), "all")?;
        let full_new: Vec<f64> = (0..test.len()).map(|i| full_pred[i * nm + m]).collect();
        per_model.push(ModelResult {
            model: ds.models[m].clone(),
            full_retrain: ModelScores {
                brier: brier(&full_new, &truth),
                spearman: spearman(&full_new, &truth),
                auc: auc(&full_new, &truth),
                pick_rate: ctx.pick_rate(&full_pred, m),
            },
            oracle_pick_rate: ctx.oracle_pick_rate(m),
            points,
        });
        progress.set_position(done as u64 + 1);
    }
    progress.finish();

    let points = summarise(&per_model, full_retrain_aiq);
    let mean = |f: &dyn Fn(&ModelResult) -> f64| {
        per_model.iter().map(f).sum::<f64>() / per_model.len().max(1) as f64
    };
    Ok(OnboardingReport {
        dataset: ds.name.clone(),
        router: opts.router.to_string(),
        featurizer: opts.featurizer.to_string(),
        seed: opts.seed,
        validation: opts.validation,
        n_train: train.len(),
        n_test: test.len(),
        full_retrain_aiq,
        full_retrain_brier_mean: mean(&|r| r.full_retrain.brier),
        full_retrain_spearman_mean: mean(&|r| r.full_retrain.spearman),
        full_retrain_pick_rate_diff_oracle_mean: mean(&|r| {
            (r.full_retrain.pick_rate - r.oracle_pick_rate).abs()
        }),
        models_left_out: per_model.iter().map(|r| r.model.clone()).collect(),
        points,
        per_model,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The per-model points averaged over the models (same (n, selection) keys, in the
/// first model's order).
fn summarise(per_model: &[ModelResult], full_aiq: f64) -> Vec<OnboardingPoint> {
    let Some(first) = per_model.first() else {
        return Vec::new();
    };
    first
        .points
        .iter()
        .enumerate()
        .map(|(j, p0)| {
            let rows: Vec<(&ModelResult, &ModelPoint)> = per_model
                .iter()
                .filter_map(|r| Some((r, r.points.get(j)?)))
                .collect();
            let pts: Vec<&ModelPoint> = rows.iter().map(|(_, p)| *p).collect();
            let n = pts.len().max(1) as f64;
            let diff = |f: &dyn Fn(&ModelResult) -> f64| {
                rows.iter()
                    .map(|(r, p)| (p.scores.pick_rate - f(r)).abs())
                    .sum::<f64>()
                    / n
            };
            let mean = |f: &dyn Fn(&ModelPoint) -> f64| pts.iter().map(|p| f(p)).sum::<f64>() / n;
            let aucs: Vec<f64> = pts.iter().filter_map(|p| p.scores.auc).collect();
            OnboardingPoint {
                n: pts.iter().map(|p| p.n).max().unwrap_or(p0.n),
                selection: p0.selection.clone(),
                aiq_mean: mean(&|p| p.aiq),
                aiq_min: pts.iter().map(|p| p.aiq).fold(f64::INFINITY, f64::min),
                aiq_gap_mean: mean(&|p| full_aiq - p.aiq),
                brier_mean: mean(&|p| p.scores.brier),
                spearman_mean: mean(&|p| p.scores.spearman),
                auc_mean: (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
                pick_rate_mean: mean(&|p| p.scores.pick_rate),
                pick_rate_diff_full_mean: diff(&|r| r.full_retrain.pick_rate),
                pick_rate_diff_oracle_mean: diff(&|r| r.oracle_pick_rate),
            }
        })
        .collect()
}

/// What every evaluation of a prediction matrix shares.
struct Ctx<'a> {
    outcomes: &'a Outcomes,
    costs: &'a [f64],
    lambdas: &'a [f64],
    c_min: f64,
    c_max: f64,
    nm: usize,
}

impl Ctx<'_> {
    fn preds(&self, scores: &[f64]) -> Predictions {
        Predictions {
            n_models: self.nm,
            scores: scores.to_vec(),
            costs: self.costs.to_vec(),
            fixed_ranking: None,
        }
    }

    /// AIQ of the curve the predictions realise.
    fn aiq(&self, scores: &[f64]) -> Result<f64, EvalError> {
        let curve = realise(self.outcomes, &self.preds(scores), self.lambdas)?.curve();
        let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.cost, p.quality)).collect();
        Ok(aiq(&pts, self.c_min, self.c_max))
    }

    /// Share of (prompt, lambda) first choices that are model `m` (every
    /// [`PICK_STRIDE`]-th lambda of the sweep).
    fn pick_rate(&self, scores: &[f64], m: usize) -> f64 {
        let nm = self.nm;
        let mut idx = Vec::with_capacity(nm);
        let (mut hits, mut total) = (0usize, 0usize);
        for &l in self.lambdas.iter().step_by(PICK_STRIDE) {
            for (s, c) in scores.chunks_exact(nm).zip(self.costs.chunks_exact(nm)) {
                Policy::Lambda(l).rank_into(s, c, &mut idx);
                hits += usize::from(idx.first() == Some(&m));
                total += 1;
            }
        }
        hits as f64 / total.max(1) as f64
    }

    /// Share of prompts whose oracle choice (highest real score, then lowest real cost)
    /// is model `m`.
    fn oracle_pick_rate(&self, m: usize) -> f64 {
        let n = self.outcomes.len();
        let hits = (0..n)
            .filter(|&i| {
                let best = (0..self.nm)
                    .filter_map(|j| self.outcomes.get(i, j).map(|(s, c)| (j, s, c)))
                    .max_by(|a, b| a.1.total_cmp(&b.1).then(b.2.total_cmp(&a.2)));
                best.map(|b| b.0) == Some(m)
            })
            .count();
        hits as f64 / n.max(1) as f64
    }
}

/// Mean squared error of predicted scores.
fn brier(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter()
        .zip(truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / pred.len().max(1) as f64
}

/// Ranks with ties averaged (1-based).
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (0 when either side is constant).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// AUC of `pred` separating `truth == 1` from `truth == 0` (Mann-Whitney, ties count
/// half); `None` unless every truth is 0 or 1 and both occur.
fn auc(pred: &[f64], truth: &[f64]) -> Option<f64> {
    if truth.iter().any(|&t| t != 0.0 && t != 1.0) {
        return None;
    }
    let pos = truth.iter().filter(|&&t| t == 1.0).count();
    let neg = truth.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let r = ranks(pred);
    let rank_sum: f64 = r
        .iter()
        .zip(truth)
        .filter(|(_, &t)| t == 1.0)
        .map(|(x, _)| x)
        .sum();
    let (p, q) = (pos as f64, neg as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * q))
}

/// The SVG: mean AIQ against the number of probes, selected and random, with the full
/// retrain as a horizontal line.
pub fn onboarding_svg(r: &OnboardingReport) -> Result<String, EvalError> {
    let curve = |sel: &str| -> Vec<(usize, f64)> {
        r.points
            .iter()
            .filter(|p| p.selection == sel)
            .map(|p| (p.n, p.aiq_mean))
            .collect()
    };
    let mut curves = vec![
        ("selected probes".to_string(), curve("selected")),
        ("random probes".to_string(), curve("random")),
    ];
    let x_hi = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    curves.push((
        "full retrain".to_string(),
        vec![(0, r.full_retrain_aiq), (x_hi, r.full_retrain_aiq)],
    ));
    crate::online_plot::render_xy_svg(
        &format!(
            "{}: onboarding one model (leave one out, mean over {} models, router {})",
            r.dataset,
            r.models_left_out.len(),
            r.router
        ),
        "probes",
        "mean AIQ of the pool",
        &curves,
    )
    .map_err(EvalError::Plot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_statistics_match_hand_computed_values() {
        assert_eq!(ranks(&[0.3, 0.1, 0.3, 0.2]), vec![3.5, 1.0, 3.5, 2.0]);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[0.0, 1.0]), 0.0);
        // Perfect separation, then one inversion of four pairs.
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[1.0, 1.0, 0.0, 0.0]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.1, 0.2, 0.3], &[1.0, 1.0, 0.0, 0.0]), Some(0.5));
        assert_eq!(auc(&[0.9, 0.1], &[1.0, 1.0]), None);
        assert_eq!(auc(&[0.9, 0.1], &[0.5, 1.0]), None);
        assert!((brier(&[1.0, 0.5], &[0.0, 0.5]) - 0.5).abs() < 1e-12);
    }
}
