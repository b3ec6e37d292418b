//! `linear`: one ridge regression per model, predicting that model's score from the
//! prompt features (the linear baseline of RouterBench, Hu et al. 2024, "RouterBench: A
//! Benchmark for Multi-LLM Routing System").
//!
//! Method: for model `m`, on the training rows where `m` has a score, minimise
//! `sum (y - w.x - b)^2 + alpha * |w|^2` (the bias `b` is not penalised). Centring the
//! features and targets on those rows removes the bias from the system, which is then
//! solved in closed form, `(Xc^T Xc + alpha I) w = Xc^T yc`, by a Cholesky decomposition
//! (hand-written below, `f64`), and `b = mean(y) - mean(x).w`.
//!
//! Cost: the Gram matrix `X^T X` over all rows is built once (`n * dim^2 / 2`, split over
//! rayon workers); a model that lacks some rows gets it by subtracting those rows'
//! outer products (or, when it lacks most rows, by summing its own rows). Models with
//! the same set of rows share one factorisation. Missing outcomes (`NaN` scores) never
//! enter a model's fit. Predictions are clipped to `[0, 1]`.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the linear router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearConfig {
    /// L2 penalty on the weights (not on the bias). Features are L2-normalised rows, so
    /// `X^T X` has trace `n`; the default was picked on a held-out slice of the training
    /// prompts (see `examples/tune_models.rs` and the bench notes).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

fn default_alpha() -> f64 {
    50.0
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            alpha: default_alpha(),
        }
    }
}

/// Per-model ridge regressions: `score_m(x) = clip(w_m . x + b_m, 0, 1)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearRouter {
    n_models: usize,
    dim: usize,
    /// `dim * n_models`, row-major by feature (`weights[k * n_models + m]`), so that a
    /// prediction is one pass of `axpy` over the non-zero features.
    weights: Vec<f32>,
    bias: Vec<f64>,
}

impl LinearRouter {
    /// A router that predicts `scores` for every prompt (zero weights): a fixed quality
    /// estimate per model that the policy still trades against each prompt's cost.
    pub fn constant(dim: usize, scores: Vec<f64>) -> Self {
        LinearRouter {
            n_models: scores.len(),
            dim,
            weights: vec![0.0; dim * scores.len()],
            bias: scores,
        }
    }

    /// Fits one ridge regression per model on `train` (see the module docs).
    pub fn fit(train: &TrainSet, config: &LinearConfig) -> Result<Self, RouterError> {
        let err = |message: String| RouterError::Fit {
            router: "linear".into(),
            message,
        };
        let (n, d, nm) = (train.len(), train.dim, train.n_models);
        if n == 0 || d == 0 || nm == 0 {
            return Err(err(format!(
                "empty training data ({n} prompts, {d} features, {nm} models)"
            )));
        }
        if train.features.len() != n * d || train.scores.len() != n * nm {
            return Err(err("feature or score matrix has the wrong size".into()));
        }
        if !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(err(format!(
                "alpha must be finite and > 0, got {}",
                config.alpha
            )));
        }
        if train.features.iter().any(|x| !x.is_finite()) {
            return Err(err("features contain a non-finite value".into()));
        }

        // Group models by the rows they lack; models with the same rows share A.
        let mut groups: BTreeMap<Vec<u32>, Vec<usize>> = BTreeMap::new();
        for m in 0..nm {
            let missing: Vec<u32> = (0..n)
                .filter(|&i| train.scores[i * nm + m].is_nan())
                .map(|i| i as u32)
                .collect();
            groups.entry(missing).or_default().push(m);
        }
        // The full Gram matrix is worth building when some group lacks few rows.
        let need_full = groups.keys().any(|miss| miss.len() * 2 <= n);
        let full = need_full.then(|| gram(train, None));
        let global_mean = {
            let obs: Vec<f64> = train
                .scores
                .iter()
                .copied()
                .filter(|s| !s.is_nan())
                .collect();
            if obs.is_empty() {
                return Err(err("no model has any score in the training set".into()));
            }
            obs.iter().sum::<f64>() / obs.len() as f64
        };

        let mut weights = vec![0.0f32; d * nm];
        let mut bias = vec![global_mean; nm];
        let groups: Vec<(Vec<u32>, Vec<usize>)> = groups.into_iter().collect();
        let solved: Vec<Vec<(usize, Vec<f64>, f64)>> = groups
            .par_iter()
            .map(|(missing, models)| {
                solve_group(train, missing, models, full.as_ref(), config.alpha)
            })
            .collect();
        for (m, w, b) in solved.into_iter().flatten() {
            for (k, wk) in w.iter().enumerate() {
                weights[k * nm + m] = *wk as f32;
            }
            bias[m] = b;
        }
        Ok(LinearRouter {
            n_models: nm,
            dim: d,
            weights,
            bias,
        })
    }
}

/// Sums over a set of rows: the Gram matrix (upper triangle filled, `d * d`), the
/// feature sums and the row count.
struct Moments {
    g: Vec<f64>,
    sum: Vec<f64>,
    count: usize,
}

/// `X^T X` over `rows` (all rows when `None`), built column-wise in `f64`.
fn gram(train: &TrainSet, rows: Option<&[u32]>) -> Moments {
    let d = train.dim;
    let idx: Vec<usize> = match rows {
        Some(r) => r.iter().map(|&i| i as usize).collect(),
        None => (0..train.len()).collect(),
    };
    // Column-major copy of the selected rows: feature k's values are contiguous.
    let cnt = idx.len();
    let mut cols = vec![0.0f64; d * cnt];
    for (r, &i) in idx.iter().enumerate() {
        for (k, &x) in train.row(i).iter().enumerate() {
            cols[k * cnt + r] = x as f64;
        }
    }
    let sum: Vec<f64> = (0..d)
        .map(|k| cols[k * cnt..(k + 1) * cnt].iter().sum())
        .collect();
    let mut g = vec![0.0f64; d * d];
    g.par_chunks_mut(d).enumerate().for_each(|(a, row)| {
        let ca = &cols[a * cnt..(a + 1) * cnt];
        for (b, cell) in row.iter_mut().enumerate().skip(a) {
            *cell = dot(ca, &cols[b * cnt..(b + 1) * cnt]);
        }
    });
    Moments { g, sum, count: cnt }
}

/// Dot product with four independent accumulators (lets the compiler vectorise it).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Fits every model of one group (same missing rows): returns `(model, w, b)`.
fn solve_group(
    train: &TrainSet,
    missing: &[u32],
    models: &[usize],
    full: Option<&Moments>,
    alpha: f64,
) -> Vec<(usize, Vec<f64>, f64)> {
    let (n, d, nm) = (train.len(), train.dim, train.n_models);
    if missing.len() == n {
        // No outcome at all for these models: predict the global mean (set by caller).
        return Vec::new();
    }
    let mom = match full {
        Some(full) if missing.len() * 2 <= n => {
            let mut g = full.g.clone();
            let mut sum = full.sum.clone();
            for &i in missing {
                let x = train.row(i as usize);
                for a in 0..d {
                    let xa = x[a] as f64;
                    if xa == 0.0 {
                        continue;
                    }
                    sum[a] -= xa;
                    let row = &mut g[a * d..(a + 1) * d];
                    for b in a..d {
                        row[b] -= xa * x[b] as f64;
                    }
                }
            }
            Moments {
                g,
                sum,
                count: n - missing.len(),
            }
        }
        _ => {
            let mut present = Vec::with_capacity(n - missing.len());
            let mut mi = missing.iter().peekable();
            for i in 0..n as u32 {
                if mi.peek() == Some(&&i) {
                    mi.next();
                } else {
                    present.push(i);
                }
            }
            gram(train, Some(&present))
        }
    };
    let cnt = mom.count as f64;
    let mean_x: Vec<f64> = mom.sum.iter().map(|s| s / cnt).collect();
    // A = G - n * mean mean^T + alpha I (full symmetric, lower triangle used).
    let mut a = vec![0.0f64; d * d];
    for r in 0..d {
        for c in 0..=r {
            let v = mom.g[c * d + r] - cnt * mean_x[r] * mean_x[c];
            a[r * d + c] = v + if r == c { alpha } else { 0.0 };
        }
    }
    let l = match cholesky(&a, d) {
        Some(l) => l,
        None => return Vec::new(),
    };
    models
        .iter()
        .map(|&m| {
            let mut rhs = vec![0.0f64; d];
            let mut ysum = 0.0;
            for i in 0..n {
                let y = train.scores[i * nm + m];
                if y.is_nan() {
                    continue;
                }
                ysum += y;
                for (r, &x) in rhs.iter_mut().zip(train.row(i)) {
                    *r += y * x as f64;
                }
            }
            let ymean = ysum / cnt;
            for (r, mx) in rhs.iter_mut().zip(&mean_x) {
                *r -= cnt * mx * ymean;
            }
            let w = cholesky_solve(&l, d, rhs);
            let b = ymean - dot(&w, &mean_x);
            (m, w, b)
        })
        .collect()
}

/// Lower-triangular Cholesky factor `L` of the symmetric positive definite `a` (its
/// lower triangle is read), row-major `d * d`; `None` if `a` is not positive definite.
pub(crate) fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s = dot(&l[i * d..i * d + j], &l[j * d..j * d + j]);
            let v = a[i * d + j] - s;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = v / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves `L L^T x = b` given the Cholesky factor `l`.
pub(crate) fn cholesky_solve(l: &[f64], d: usize, mut b: Vec<f64>) -> Vec<f64> {
    // Forward: L z = b.
    for i in 0..d {
        let s = dot(&l[i * d..i * d + i], &b[..i]);
        b[i] = (b[i] - s) / l[i * d + i];
    }
    // Backward: L^T x = z.
    for i in (0..d).rev() {
        let mut s = b[i];
        for j in i + 1..d {
            s -= l[j * d + i] * b[j];
        }
        b[i] = s / l[i * d + i];
    }
    b
}

impl Router for LinearRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        let nm = self.n_models;
        let mut acc = vec![0.0f32; nm];
        for (k, &x) in features.iter().enumerate().take(self.dim) {
            if x == 0.0 {
                continue;
            }
            let w = &self.weights[k * nm..(k + 1) * nm];
            for (a, wm) in acc.iter_mut().zip(w) {
                *a += x * wm;
            }
        }
        for ((o, a), b) in out.iter_mut().zip(&acc).zip(&self.bias) {
            let v = *a as f64 + b;
            *o = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(features: Vec<f32>, dim: usize, scores: Vec<f64>, n_models: usize) -> TrainSet {
        let n = features.len() / dim;
        TrainSet {
            features,
            dim,
            costs: vec![0.0; scores.len()],
            scores,
            input_tokens: vec![10; n],
            n_models,
        }
    }

    #[test]
    fn ridge_matches_hand_computed_one_dimensional_case() {
        // x = [0, 0.5, 1], y = [0.1, 0.3, 0.8]; mean x = 0.5, mean y = 0.4.
        // Sxx = 0.25 + 0 + 0.25 = 0.5; Sxy = (-0.5)(-0.3) + 0 + 0.5*0.4 = 0.35.
        // alpha = 0.5: w = 0.35 / (0.5 + 0.5) = 0.35, b = 0.4 - 0.5 * 0.35 = 0.225.
        let t = set(vec![0.0, 0.5, 1.0], 1, vec![0.1, 0.3, 0.8], 1);
        let r = LinearRouter::fit(&t, &LinearConfig { alpha: 0.5 }).unwrap();
        assert!((r.weights[0] as f64 - 0.35).abs() < 1e-6);
        assert!((r.bias[0] - 0.225).abs() < 1e-9);
        let mut out = [0.0];
        r.predict_scores(&[0.4], &mut out);
        assert!((out[0] - (0.225 + 0.4 * 0.35)).abs() < 1e-6);
    }

    #[test]
    fn missing_rows_are_left_out_of_the_fit() {
        // Model 1 lacks row 2; its fit must equal a fit on rows 0 and 1 alone.
        let t = set(
            vec![0.0, 0.5, 1.0],
            1,
            vec![0.1, 0.0, 0.3, 1.0, 0.8, f64::NAN],
            2,
        );
        let r = LinearRouter::fit(&t, &LinearConfig { alpha: 0.5 }).unwrap();
        // Rows 0, 1: x = [0, 0.5] (mean 0.25), y = [0, 1] (mean 0.5).
        // Sxx = 0.125, Sxy = (-0.25)(-0.5) + 0.25 * 0.5 = 0.25; w = 0.25 / 0.625 = 0.4.
        assert!((r.weights[1] as f64 - 0.4).abs() < 1e-6);
        assert!((r.bias[1] - (0.5 - 0.25 * 0.4)).abs() < 1e-9);
    }

    #[test]
    fn a_model_lacking_most_rows_is_fitted_on_its_own_rows() {
        // Model 1 has rows 0 and 1 only (3 of 5 missing: the direct-sum path), with the
        // same data as above, so the same hand-computed fit: w = 0.4, b = 0.4.
        let t = set(
            vec![0.0, 0.5, 1.0, 0.2, 0.7],
            1,
            vec![
                0.1,
                0.0,
                0.3,
                1.0,
                0.8,
                f64::NAN,
                0.2,
                f64::NAN,
                0.6,
                f64::NAN,
            ],
            2,
        );
        let r = LinearRouter::fit(&t, &LinearConfig { alpha: 0.5 }).unwrap();
        assert!((r.weights[1] as f64 - 0.4).abs() < 1e-6);
        assert!((r.bias[1] - 0.4).abs() < 1e-9);
    }

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]], b = [2, 1] -> x = [0.5, 0].
        let l = cholesky(&[4.0, 0.0, 2.0, 3.0], 2).unwrap();
        let x = cholesky_solve(&l, 2, vec![2.0, 1.0]);
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!(cholesky(&[-1.0], 1).is_none());
    }

    #[test]
    fn rejects_bad_alpha_and_empty_data() {
        let t = set(vec![0.0, 1.0], 1, vec![0.0, 1.0], 1);
        assert!(LinearRouter::fit(&t, &LinearConfig { alpha: 0.0 }).is_err());
        let e = set(vec![], 1, vec![], 1);
        assert!(LinearRouter::fit(&e, &LinearConfig::default()).is_err());
    }
}
