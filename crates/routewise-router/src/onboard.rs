//! Adding a model to a trained router without retraining it, from the model's outcomes
//! on a small probe set; and choosing that probe set.
//!
//! Method: a model is represented by how it relates to the models the router already
//! knows. That is the idea of Universal Model Routing (Jitkrittum et al., 2025: a model
//! is a vector of its errors on representative prompts) and of IRT-Router and EmbedLLM
//! (a model is a point in the space the known models span). Here the "space" is the
//! router's own predictions: for a prompt with features `f`, the trained router (frozen)
//! predicts the known models' scores `x(f)`, and the new model's score is predicted as
//! an affine function of them, `s(f) = clamp01(b + w . x(f))`. Only `b` and `w` (one
//! weight per known model) are fitted; the featurizer, the router and the other models
//! stay as they are, so onboarding takes milliseconds and any router kind can take a new
//! model.
//!
//! Fit ([`fit_head`]): ridge regression of the probes' observed scores on `[1, x]`,
//! shrunk towards the prior `b = 0, w = 1/M` (the *mean model*: the mean of the known
//! models' predictions). With no probes the head is that prior, so a model known only by
//! its price is routed as an average model (and the online bandit, if on, explores it).
//! On a probe, `x` is the known models' *recorded* scores where the probe file has them
//! (a profile of the whole pool records every model), else their predicted scores. If
//! the new model's score is affine in the known models' recorded outcomes, then
//! `E[s | prompt] = b + w . E[x | prompt]` and a head fitted on recorded outcomes applies
//! to predictions; that holds only approximately (noisy outcomes attenuate the slopes),
//! but it avoids fitting on predictions at training prompts, which a kNN router makes
//! sharper than anywhere else (the prompt is its own nearest neighbour), and it measured
//! better on validation data (BENCHMARKS.md, section 14). Features are centred on the probes' mean;
//! the slopes' prior strength `alpha` is chosen per model from a grid by the closed-form
//! leave-one-out error of ridge regression (PRESS: `e_i / (1 - h_ii)`), and the
//! intercept's by empirical Bayes (the probes' residual variance over the variance of
//! the known models' levels on them: how far a model's level may sit from the mean
//! model's), so nothing is tuned per dataset.
//!
//! Probe selection ([`select_probes`]): greedy V-optimal design (Fedorov, 1972, "Theory
//! of optimal experiments"; as used in active learning for linear models). It picks, one
//! at a time, the candidate prompt whose outcome would most reduce the average variance
//! of the head's predictions over all candidate prompts: with `A = I + sum z z^T` over
//! the probes chosen so far (`z = [1, x]`) and `S` the candidates' second moment, the
//! gain of `z` is `z^T A^-1 S A^-1 z / (1 + z^T A^-1 z)`. Where the known models'
//! recorded scores on the candidates are known, `z` is built from them (the rows the head
//! will be fitted on) and `S` from their predicted scores (the rows it will be applied
//! to). Prompts on which the known models all agree carry little information about a new
//! model and are picked last. Random selection is the baseline it is measured against
//! (`eval --onboarding`); on validation parts of train it also beat choosing by the
//! known models' disagreement alone, by disagreement within difficulty strata, and the
//! design weighted by Bernoulli information.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use routewise_features::Featurizer;

use crate::artifact::OnboardedModel;
use crate::linear::{cholesky, cholesky_solve};
use crate::{AnyRouter, Artifact, ModelInfo, Router, RouterError};

/// Grid of prior strengths (in units of probes' worth of squared features) tried by the
/// leave-one-out choice.
pub const ALPHAS: [f64; 8] = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0];

/// Candidates scored per pick in [`select_probes`] (a seeded sample when there are
/// more): bounds the selection's time at about a second for 200 probes.
pub const SELECTION_CANDIDATES: usize = 4000;

/// Floor of the intercept prior's variance (levels 0.01 apart).
const MIN_LEVEL_VAR: f64 = 1e-4;

/// One onboarded model: its affine map from the known models' predicted scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub name: String,
    pub bias: f64,
    /// One weight per known model, in router order.
    pub weights: Vec<f64>,
    /// Probes it was fitted on (0: the prior alone).
    pub probes: usize,
    /// The prior strength chosen by leave-one-out (`NaN`-free; 0 with no probes).
    pub alpha: f64,
}

impl Head {
    /// The prior: the mean of the `n_known` known models' predictions.
    pub fn prior(name: &str, n_known: usize) -> Head {
        Head {
            name: name.to_string(),
            bias: 0.0,
            weights: vec![1.0 / n_known.max(1) as f64; n_known],
            probes: 0,
            alpha: 0.0,
        }
    }

    /// The predicted score given the known models' predicted scores.
    #[inline]
    pub fn predict(&self, known: &[f64]) -> f64 {
        self.predict_raw(known).clamp(0.0, 1.0)
    }
}

/// A trained router plus onboarded models: the base predicts its own models, each head
/// one new model from the base's predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OnboardedRouter {
    base: Box<AnyRouter>,
    n_base: usize,
    heads: Vec<Head>,
}

impl OnboardedRouter {
    /// `base` (predicting `n_base` models) with `heads` after them.
    pub fn new(base: AnyRouter, n_base: usize, heads: Vec<Head>) -> OnboardedRouter {
        OnboardedRouter {
            base: Box::new(base),
            n_base,
            heads,
        }
    }
    pub fn base(&self) -> &AnyRouter {
        &self.base
    }
    pub fn heads(&self) -> &[Head] {
        &self.heads
    }
    /// Models the base router predicts.
    pub fn n_base(&self) -> usize {
        self.n_base
    }

    /// Each onboarded model's index in the router's order and its probe count.
    pub fn onboarded_probes(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.heads
            .iter()
            .enumerate()
            .map(|(j, h)| (self.n_base + j, h.probes))
    }

    fn fill_heads(&self, out: &mut [f64]) {
        let (known, new) = out.split_at_mut(self.n_base.min(out.len()));
        for (h, o) in self.heads.iter().zip(new) {
            *o = h.predict(known);
        }
    }
}

impl Router for OnboardedRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        let n = self.n_base.min(out.len());
        self.base.predict_scores(features, &mut out[..n]);
        self.fill_heads(out);
    }

    fn predict_scores_keyed(&self, features: &[f32], key: &str, out: &mut [f64]) {
        let n = self.n_base.min(out.len());
        self.base.predict_scores_keyed(features, key, &mut out[..n]);
        self.fill_heads(out);
    }
}

/// What [`fit_head`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadFit {
    /// Leave-one-out RMSE of the fitted head (`None` with no probes).
    pub loo_rmse: Option<f64>,
    /// RMSE of the prior (the mean model) on the probes (`None` with no probes).
    pub prior_rmse: Option<f64>,
}

/// Fits a head for `name` on probes: `xs` holds the known models' predicted scores
/// (`n x n_known`, row-major), `ys` the new model's observed scores (see the module
/// docs). No probes give the prior.
pub fn fit_head(name: &str, xs: &[f64], ys: &[f64], n_known: usize) -> (Head, HeadFit) {
    let mut head = Head::prior(name, n_known);
    let n = ys.len();
    if n == 0 || n_known == 0 || xs.len() != n * n_known {
        return (
            head,
            HeadFit {
                loo_rmse: None,
                prior_rmse: None,
            },
        );
    }
    let d = n_known + 1;
    // Features centred on the probes' mean, so the intercept is the model's level there
    // and is (nearly) unpenalised: a few probes fix a model's overall accuracy well
    // before they fix which known models it resembles.
    let mut centre = vec![0.0; n_known];
    for row in xs.chunks_exact(n_known) {
        for (c, x) in centre.iter_mut().zip(row) {
            *c += x / n as f64;
        }
    }
    let z = |i: usize| {
        std::iter::once(1.0).chain(
            xs[i * n_known..(i + 1) * n_known]
                .iter()
                .zip(&centre)
                .map(|(x, c)| x - c),
        )
    };
    // Residuals against the prior: the ridge then shrinks the correction towards zero.
    let r: Vec<f64> = (0..n)
        .map(|i| ys[i] - head.predict_raw(&xs[i * n_known..(i + 1) * n_known]))
        .collect();
    let prior_rmse = (r.iter().map(|e| e * e).sum::<f64>() / n as f64).sqrt();
    let mut gram = vec![0.0; d * d];
    let mut zr = vec![0.0; d];
    let mut zi = vec![0.0; d];
    for (i, &ri) in r.iter().enumerate() {
        for (slot, v) in zi.iter_mut().zip(z(i)) {
            *slot = v;
        }
        for a in 0..d {
            zr[a] += zi[a] * ri;
            for b in 0..=a {
                gram[a * d + b] += zi[a] * zi[b];
            }
        }
    }
    // The intercept's prior strength, empirical Bayes: the probes' noise variance over
    // the spread of the known models' levels (how far a model's level may sit from the
    // mean model's, measured on the known models).
    let level = centre.iter().sum::<f64>() / n_known as f64;
    let level_var =
        centre.iter().map(|l| (l - level).powi(2)).sum::<f64>() / (n_known.max(2) - 1) as f64;
    let mean_r = r.iter().sum::<f64>() / n as f64;
    let noise = r.iter().map(|e| (e - mean_r).powi(2)).sum::<f64>() / n as f64;
    // The prior variance of the level offset: the known models' spread, or what the
    // probes themselves show when the new model sits outside it (method of moments:
    // mean residual squared less its sampling variance), never below 0.01^2.
    let offset_var = mean_r * mean_r - noise / n as f64;
    let level_prior = level_var.max(offset_var).max(MIN_LEVEL_VAR);
    let intercept_penalty = (noise / level_prior).clamp(1e-3, 1e6);
    let mut best: Option<(f64, f64, Vec<f64>)> = None;
    for &alpha in &ALPHAS {
        let mut a = gram.clone();
        a[0] += intercept_penalty;
        for k in 1..d {
            a[k * d + k] += alpha;
        }
        let Some(l) = cholesky(&a, d) else { continue };
        let theta = cholesky_solve(&l, d, zr.clone());
        // PRESS: h_ii = z_i^T (Z^T Z + alpha I)^-1 z_i.
        let mut press = 0.0;
        for (i, &ri) in r.iter().enumerate() {
            for (slot, v) in zi.iter_mut().zip(z(i)) {
                *slot = v;
            }
            let fit: f64 = zi.iter().zip(&theta).map(|(a, b)| a * b).sum();
            let h: f64 = zi
                .iter()
                .zip(cholesky_solve(&l, d, zi.clone()))
                .map(|(a, b)| a * b)
                .sum();
            let e = (ri - fit) / (1.0 - h).max(1e-9);
            press += e * e;
        }
        if best.as_ref().is_none_or(|(p, _, _)| press < *p) {
            best = Some((press, alpha, theta));
        }
    }
    let Some((press, alpha, theta)) = best else {
        return (
            head,
            HeadFit {
                loo_rmse: None,
                prior_rmse: Some(prior_rmse),
            },
        );
    };
    // Back to the uncentred form: b + w.x with b absorbing -w_corr.centre.
    head.bias += theta[0]
        - theta[1..]
            .iter()
            .zip(&centre)
            .map(|(t, c)| t * c)
            .sum::<f64>();
    for (w, t) in head.weights.iter_mut().zip(&theta[1..]) {
        *w += t;
    }
    head.probes = n;
    head.alpha = alpha;
    (
        head,
        HeadFit {
            loo_rmse: Some((press / n as f64).sqrt()),
            prior_rmse: Some(prior_rmse),
        },
    )
}

impl Head {
    /// `bias + w . x`, unclamped (the regression's own scale).
    fn predict_raw(&self, known: &[f64]) -> f64 {
        self.bias
            + self
                .weights
                .iter()
                .zip(known)
                .map(|(w, x)| w * x)
                .sum::<f64>()
    }
}

/// Picks up to `n_pick` rows of `xs` (`n x n_known` predicted scores of the known
/// models on candidate prompts), most informative first (greedy V-optimal design; see
/// the module docs). `design`, when given (same shape), holds the known models'
/// recorded scores on the candidates: the head is then fitted on those rows and applied
/// to predictions, so the design is built from `design` and the variance averaged over
/// `xs`. When there are more than [`SELECTION_CANDIDATES`] candidates a seeded sample
/// of them is scored; the result's prefixes are the selections of every smaller size.
pub fn select_probes(
    xs: &[f64],
    design: Option<&[f64]>,
    n_known: usize,
    n_pick: usize,
    seed: u64,
) -> Vec<usize> {
    if n_known == 0 || xs.is_empty() {
        return Vec::new();
    }
    let n = xs.len() / n_known;
    let mut cand: Vec<usize> = (0..n).collect();
    if n > SELECTION_CANDIDATES {
        cand.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x000b_0a4d));
        cand.truncate(SELECTION_CANDIDATES);
        cand.sort_unstable();
    }
    let d = n_known + 1;
    let rows = |src: &[f64]| -> Vec<Vec<f64>> {
        cand.iter()
            .map(|&i| {
                std::iter::once(1.0)
                    .chain(src[i * n_known..(i + 1) * n_known].iter().copied())
                    .collect()
            })
            .collect()
    };
    let targets = rows(xs);
    let zs = match design {
        Some(dz) if dz.len() == xs.len() => rows(dz),
        _ => targets.clone(),
    };
    // Second moment of the candidates (the distribution whose prediction variance is
    // averaged).
    let mut s = vec![0.0; d * d];
    for z in &targets {
        for a in 0..d {
            for b in 0..d {
                s[a * d + b] += z[a] * z[b];
            }
        }
    }
    let inv_n = 1.0 / targets.len() as f64;
    s.iter_mut().for_each(|v| *v *= inv_n);
    // A^-1 with A = I initially.
    let mut a_inv = vec![0.0; d * d];
    for k in 0..d {
        a_inv[k * d + k] = 1.0;
    }
    let mut taken = vec![false; zs.len()];
    let mut picked = Vec::with_capacity(n_pick.min(zs.len()));
    let mut tmp = vec![0.0; d * d];
    let mut b = vec![0.0; d * d];
    let mut u = vec![0.0; d];
    for _ in 0..n_pick.min(zs.len()) {
        // B = A^-1 S A^-1.
        matmul(&a_inv, &s, &mut tmp, d);
        matmul(&tmp, &a_inv, &mut b, d);
        let mut best = (f64::NEG_INFINITY, usize::MAX);
        for (j, z) in zs.iter().enumerate() {
            if taken[j] {
                continue;
            }
            let gain = quad(&b, z, d) / (1.0 + quad(&a_inv, z, d));
            if gain > best.0 {
                best = (gain, j);
            }
        }
        let j = best.1;
        if j == usize::MAX {
            break;
        }
        taken[j] = true;
        picked.push(cand[j]);
        // Sherman-Morrison: (A + z z^T)^-1 = A^-1 - (A^-1 z)(A^-1 z)^T / (1 + z^T A^-1 z).
        let z = &zs[j];
        for (r, slot) in u.iter_mut().enumerate() {
            *slot = a_inv[r * d..(r + 1) * d]
                .iter()
                .zip(z)
                .map(|(a, b)| a * b)
                .sum();
        }
        let den = 1.0 + u.iter().zip(z).map(|(a, b)| a * b).sum::<f64>();
        for r in 0..d {
            for c in 0..d {
                a_inv[r * d + c] -= u[r] * u[c] / den;
            }
        }
    }
    picked
}

/// Up to `n_pick` candidate rows in a seeded random order (the baseline selection).
pub fn random_probes(n: usize, n_pick: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x000a_4d0b));
    idx.truncate(n_pick);
    idx
}

fn matmul(a: &[f64], b: &[f64], out: &mut [f64], d: usize) {
    for r in 0..d {
        for c in 0..d {
            out[r * d + c] = (0..d).map(|k| a[r * d + k] * b[k * d + c]).sum();
        }
    }
}

fn quad(m: &[f64], z: &[f64], d: usize) -> f64 {
    (0..d)
        .map(|r| {
            z[r] * m[r * d..(r + 1) * d]
                .iter()
                .zip(z)
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum()
}

/// A model to add: its prices and its outcomes on probes (possibly none).
#[derive(Debug, Clone)]
pub struct NewModel<'a> {
    pub info: ModelInfo,
    /// Probe prompts.
    pub prompts: &'a [&'a str],
    /// The model's observed score on each probe prompt.
    pub scores: &'a [f64],
    /// The known models' recorded scores on the probes (`n x` the base router's models,
    /// router order; `NaN` where not recorded), as a profile of the whole pool records
    /// them. Where present they describe the probe instead of the
    /// router's predictions (see the module docs); empty: predictions only.
    pub recorded: &'a [f64],
}

/// Refuses a baseline router (its ranking ignores predictions, so a head has nothing to
/// build on): models can be onboarded onto learned routers only.
pub fn check_learned(router: &AnyRouter) -> Result<(), RouterError> {
    if crate::RouterKind::ALL_LEARNED.contains(&router.kind()) {
        return Ok(());
    }
    Err(RouterError::Fit {
        router: "onboard".into(),
        message: format!(
            "`{}` is a baseline, not a learned router: models cannot be onboarded onto it; \
             retrain with the new model instead",
            router.name()
        ),
    })
}

/// The recorded scores of the models `names` on `records` (row-major, `records.len() x
/// names.len()`, `NaN` where a record lacks one), read from data whose models are
/// `data_models`; empty when the data records none of them.
pub fn recorded_scores(
    records: &[&routewise_data::Record],
    data_models: &[String],
    names: &[&str],
) -> Vec<f64> {
    let cols: Vec<Option<usize>> = names
        .iter()
        .map(|n| data_models.iter().position(|d| d == n))
        .collect();
    if cols.iter().all(Option::is_none) {
        return Vec::new();
    }
    records
        .iter()
        .flat_map(|r| {
            cols.iter().map(|c| {
                c.and_then(|j| r.outcomes.get(j)?.as_ref())
                    .map_or(f64::NAN, |o| o.score)
            })
        })
        .collect()
}

/// Models the base router of `router` predicts (all of them unless it was onboarded).
pub fn base_models(router: &AnyRouter, catalog_len: usize) -> usize {
    match router {
        AnyRouter::Onboarded(o) => o.n_base,
        _ => catalog_len,
    }
}

/// Adds `model` to `artifact` (see the module docs): featurizes the probes with the
/// artifact's featurizer, predicts the known models' scores, fits the head, appends the
/// model to the catalog and records it in the metadata. Refuses a name the router
/// already has and a baseline router (whose ranking ignores predictions).
pub fn onboard(
    artifact: Artifact,
    model: &NewModel<'_>,
    unix_time: u64,
) -> Result<(Artifact, HeadFit), RouterError> {
    let fail = |message: String| RouterError::Fit {
        router: "onboard".into(),
        message,
    };
    let name = model.info.name.as_str();
    if artifact.catalog.index(name).is_some() {
        return Err(fail(format!(
            "the router already has a model named `{name}`; pick another name or retrain"
        )));
    }
    if model.prompts.len() != model.scores.len() {
        return Err(fail("one score per probe prompt is needed".into()));
    }
    if let Some(s) = model.scores.iter().find(|s| !(0.0..=1.0).contains(*s)) {
        return Err(fail(format!("score {s} is outside [0, 1]")));
    }
    check_learned(&artifact.router)?;
    let Artifact {
        mut meta,
        featurizer,
        router,
        mut catalog,
    } = artifact;
    let (base, n_base, mut heads) = match router {
        AnyRouter::Onboarded(o) => (*o.base, o.n_base, o.heads),
        other => (other, catalog.len(), Vec::new()),
    };
    let feats = featurizer.featurize_batch(model.prompts);
    let dim = featurizer.dim();
    let mut xs = vec![0.0; model.prompts.len() * n_base];
    for (i, row) in xs.chunks_exact_mut(n_base.max(1)).enumerate() {
        base.predict_scores_keyed(&feats[i * dim..(i + 1) * dim], model.prompts[i], row);
    }
    if model.recorded.len() == xs.len() {
        for (x, &r) in xs.iter_mut().zip(model.recorded) {
            if (0.0..=1.0).contains(&r) {
                *x = r;
            }
        }
    } else if !model.recorded.is_empty() {
        return Err(fail(format!(
            "recorded scores: expected {} values ({} probes x {n_base} models), got {}",
            xs.len(),
            model.prompts.len(),
            model.recorded.len()
        )));
    }
    let (head, fit) = fit_head(name, &xs, model.scores, n_base);
    meta.onboarded.push(OnboardedModel {
        name: name.to_string(),
        probes: head.probes,
        alpha: head.alpha,
        created_unix: unix_time,
    });
    heads.push(head);
    catalog.models.push(model.info.clone());
    meta.models = catalog.names().map(str::to_string).collect();
    let router = AnyRouter::Onboarded(OnboardedRouter::new(base, n_base, heads));
    // A calibrated cascade does not survive: the new model changes the router's choices
    // it was calibrated against (`calibrate --cascade --artifact` again).
    meta.cascade = None;
    let mut artifact = Artifact {
        meta,
        featurizer,
        router,
        catalog,
    };
    artifact.meta.format_version = artifact.format_needed();
    Ok((artifact, fit))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Known models' scores on `n` prompts (3 models with different profiles) and a new
    /// model that is exactly `0.1 + 0.8 * model 1`.
    fn synthetic(n: usize) -> (Vec<f64>, Vec<f64>) {
        let mut xs = Vec::with_capacity(n * 3);
        let mut ys = Vec::with_capacity(n);
        for i in 0..n {
            let t = i as f64 / n as f64;
            let a = 0.5 + 0.4 * (7.0 * t).sin();
            let b = 0.5 + 0.4 * (3.0 * t + 1.0).cos();
            let c = (t * 13.0).fract();
            xs.extend([a, b, c]);
            ys.push(0.1 + 0.8 * b);
        }
        (xs, ys)
    }

    #[test]
    fn with_no_probes_the_head_is_the_mean_model() {
        let (h, fit) = fit_head("new", &[], &[], 4);
        assert_eq!(h.probes, 0);
        assert_eq!(fit.loo_rmse, None);
        assert!((h.predict(&[0.2, 0.4, 0.6, 0.8]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn many_probes_recover_an_affine_relation_to_a_known_model() {
        let (xs, ys) = synthetic(400);
        let (h, fit) = fit_head("new", &xs, &ys, 3);
        assert_eq!(h.probes, 400);
        assert!((h.weights[1] - 0.8).abs() < 0.05, "{h:?}");
        assert!(h.bias.abs() < 0.15, "{h:?}");
        let loo = fit.loo_rmse.unwrap();
        assert!(loo < 0.02 && loo < fit.prior_rmse.unwrap() / 5.0, "{fit:?}");
        assert!((h.predict(&[0.3, 0.5, 0.9]) - 0.5).abs() < 0.03);
    }

    #[test]
    fn few_probes_move_the_level_part_of_the_way_many_all_of_it() {
        // Known models at levels 0.4, 0.5, 0.6 on every probe; the new model is right on
        // three probes of four: its level moves from the mean model's 0.5 towards 0.75,
        // partly with 4 probes, almost fully with 400.
        let row = [0.4, 0.5, 0.6];
        let fit = |n: usize| {
            let xs: Vec<f64> = (0..n).flat_map(|_| row).collect();
            let ys: Vec<f64> = (0..n).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
            fit_head("new", &xs, &ys, 3).0.predict(&row)
        };
        let (few, many) = (fit(4), fit(400));
        assert!(few > 0.52 && few < 0.74, "{few}");
        assert!((many - 0.75).abs() < 0.01, "{many}");
    }

    #[test]
    fn a_model_far_outside_similar_known_models_is_not_pinned_to_their_level() {
        // Regression: two known models at 0.50 and 0.52 (a tiny spread) made the
        // intercept's prior so tight that a model right 90% of the time on 100 probes was
        // predicted near 0.55. The probes' own evidence now widens the prior.
        let xs: Vec<f64> = (0..100).flat_map(|_| [0.50, 0.52]).collect();
        let ys: Vec<f64> = (0..100)
            .map(|i| if i % 10 == 0 { 0.0 } else { 1.0 })
            .collect();
        let (h, _) = fit_head("new", &xs, &ys, 2);
        let p = h.predict(&[0.50, 0.52]);
        assert!(p > 0.85, "{p} ({h:?})");
    }

    #[test]
    fn selection_prefers_prompts_where_known_models_disagree() {
        // 50 prompts where all models agree (all 0.5), 50 where they spread out.
        let mut xs = Vec::new();
        for i in 0..100 {
            if i < 50 {
                xs.extend([0.5, 0.5, 0.5]);
            } else {
                let t = i as f64 / 100.0;
                xs.extend([t, 1.0 - t, (t * 7.0).fract()]);
            }
        }
        let picked = select_probes(&xs, None, 3, 10, 0);
        assert_eq!(picked.len(), 10);
        let informative = picked.iter().filter(|&&i| i >= 50).count();
        assert!(informative >= 8, "{picked:?}");
        // Prefixes are the smaller selections.
        assert_eq!(select_probes(&xs, None, 3, 4, 0), picked[..4]);
    }

    #[test]
    fn random_probes_are_seeded_and_distinct() {
        let a = random_probes(50, 10, 1);
        assert_eq!(a, random_probes(50, 10, 1));
        assert_ne!(a, random_probes(50, 10, 2));
        let mut s = a.clone();
        s.sort_unstable();
        s.dedup();
        assert_eq!(s.len(), 10);
        assert_eq!(random_probes(5, 10, 0).len(), 5);
    }

    proptest! {
        /// Whatever the probes, a head's predictions are scores in [0, 1] and selection
        /// returns distinct candidate rows.
        #[test]
        fn heads_predict_scores_and_selection_is_distinct(
            rows in proptest::collection::vec(proptest::collection::vec(0.0f64..=1.0, 4), 0..30),
            query in proptest::collection::vec(0.0f64..=1.0, 3),
            pick in 0usize..40,
        ) {
            let xs: Vec<f64> = rows.iter().flat_map(|r| r[..3].to_vec()).collect();
            let ys: Vec<f64> = rows.iter().map(|r| r[3]).collect();
            let (h, _) = fit_head("m", &xs, &ys, 3);
            let p = h.predict(&query);
            prop_assert!((0.0..=1.0).contains(&p));
            prop_assert!(h.bias.is_finite() && h.weights.iter().all(|w| w.is_finite()));
            let sel = select_probes(&xs, None, 3, pick, 0);
            prop_assert_eq!(sel.len(), pick.min(rows.len()));
            let mut s = sel.clone();
            s.sort_unstable();
            s.dedup();
            prop_assert_eq!(s.len(), sel.len());
            prop_assert!(sel.iter().all(|&i| i < rows.len()));
        }
    }
}
