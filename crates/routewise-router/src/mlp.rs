//! `mlp`: a small multi-output MLP that predicts every model's score at once (the MLP
//! router of RouterBench, Hu et al. 2024, "RouterBench: A Benchmark for Multi-LLM Routing
//! System").
//!
//! Network: `features (dim) -> hidden (ReLU) -> n_models (sigmoid)`. Loss: binary
//! cross-entropy with the (possibly fractional) scores as soft targets, masked so that a
//! model without an outcome on a prompt contributes nothing. Optimiser: Adam with
//! decoupled weight decay (AdamW, Loshchilov & Hutter 2019) on the weights, mini-batches
//! in a seeded order, He initialisation of the hidden layer and Xavier of the output
//! layer from a seeded ChaCha RNG. Early stopping: a seeded slice of the training rows
//! is held out; training stops once its masked loss has not improved for `patience`
//! epochs and the best epoch's weights are kept.
//!
//! The forward and backward passes are written by hand over row-major `f32` buffers;
//! the inner loops are `axpy`s over contiguous rows (they auto-vectorise) and skip zero
//! inputs, which are common in hashed TF-IDF features and after a ReLU. The training
//! helpers shared with [`crate::mf`] (Adam, masked BCE, the seeded split) live here.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the mlp router.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MlpConfig {
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Maximum number of passes over the training rows.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Decoupled (AdamW) weight decay on the weight matrices, per step, times the rate.
    pub weight_decay: f64,
    /// Share of training rows held out for early stopping (0 disables it: all rows are
    /// used and all `epochs` run).
    pub val_fraction: f64,
    /// Epochs without improvement of the held-out loss before stopping.
    pub patience: usize,
    /// After early stopping, train again from the same seed on every row (held-out
    /// slice included) for the chosen number of epochs.
    pub refit: bool,
    /// Seeds initialisation, the held-out slice and the batch order.
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            hidden: 128,
            epochs: 40,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1.0,
            val_fraction: 0.1,
            patience: 4,
            refit: false,
            seed: 0,
        }
    }
}

/// A trained multi-output MLP (weights row-major: `w1` is `dim x hidden`, `w2` is
/// `hidden x n_models`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlpRouter {
    n_models: usize,
    dim: usize,
    hidden: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// Epochs actually run (early stopping may end sooner than the configured count).
    epochs_run: usize,
}

impl MlpRouter {
    /// Fits the router on `train` (see the module docs).
    pub fn fit(train: &TrainSet, config: &MlpConfig) -> Result<Self, RouterError> {
        let sched = Schedule::check("mlp", train, config.epochs, config.batch_size, config)?;
        if config.hidden == 0 {
            return Err(fit_err("mlp", "hidden must be > 0".into()));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let split = sched.split(train.len(), &mut rng);
        let (mut p, mut epochs_run) = train_mlp(
            train,
            config,
            &split.train,
            &split.val,
            config.epochs,
            &mut rng,
        );
        if config.refit && !split.val.is_empty() {
            // Same seed, every row, the epoch count early stopping chose.
            let all: Vec<usize> = (0..train.len()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            (p, epochs_run) = train_mlp(train, config, &all, &[], epochs_run, &mut rng);
        }
        Ok(MlpRouter {
            n_models: train.n_models,
            dim: train.dim,
            hidden: config.hidden,
            w1: p.w1,
            b1: p.b1,
            w2: p.w2,
            b2: p.b2,
            epochs_run,
        })
    }
}

impl Router for MlpRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        let (h, nm) = (self.hidden, self.n_models);
        let mut a = self.b1.clone();
        for (k, &x) in features.iter().enumerate().take(self.dim) {
            if x != 0.0 {
                axpy(x, &self.w1[k * h..(k + 1) * h], &mut a);
            }
        }
        let mut z = self.b2.clone();
        for (j, &aj) in a.iter().enumerate() {
            if aj > 0.0 {
                axpy(aj, &self.w2[j * nm..(j + 1) * nm], &mut z);
            }
        }
        for (o, &zm) in out.iter_mut().zip(&z) {
            *o = sigmoid(zm as f64);
        }
    }
}

/// Trains from a fresh seeded initialisation on `rows` for at most `epochs`; with a
/// non-empty `val`, stops early and returns the best held-out epoch's weights.
fn train_mlp(
    train: &TrainSet,
    config: &MlpConfig,
    rows: &[usize],
    val: &[usize],
    epochs: usize,
    rng: &mut ChaCha8Rng,
) -> (MlpParams, usize) {
    let (d, h, nm) = (train.dim, config.hidden, train.n_models);
    // He (ReLU) for the hidden layer, Xavier for the output layer, both uniform.
    let he = (6.0 / d as f64).sqrt();
    let xav = (6.0 / (h + nm) as f64).sqrt();
    let p = MlpParams {
        w1: (0..d * h).map(|_| rng.gen_range(-he..he) as f32).collect(),
        b1: vec![0.0; h],
        w2: (0..h * nm)
            .map(|_| rng.gen_range(-xav..xav) as f32)
            .collect(),
        b2: mean_logits(train),
    };
    let hp = Hyper {
        epochs,
        batch_size: config.batch_size,
        patience: config.patience,
        learning_rate: config.learning_rate,
        decay: [config.weight_decay, 0.0, config.weight_decay, 0.0],
    };
    let mut ws = Workspace::new(config.batch_size, d, h, nm);
    train_epochs(train, p, &mut ws, rows, val, &hp, rng)
}

#[derive(Debug, Clone)]
struct MlpParams {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl MlpParams {
    #[cfg(test)]
    fn zeros(d: usize, h: usize, nm: usize) -> Self {
        MlpParams {
            w1: vec![0.0; d * h],
            b1: vec![0.0; h],
            w2: vec![0.0; h * nm],
            b2: vec![0.0; nm],
        }
    }
}

impl Params for MlpParams {
    type Workspace = Workspace;

    fn forward_backward(
        &self,
        train: &TrainSet,
        rows: &[usize],
        ws: &mut Workspace,
        grads: Option<&mut Self>,
    ) -> (usize, f64) {
        let count = forward_backward(self, train, rows, ws, grads, self.b1.len());
        (count, ws.loss)
    }

    fn tensors(&mut self) -> [&mut Vec<f32>; 4] {
        [&mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2]
    }
}

/// Per-batch buffers, reused across batches.
struct Workspace {
    /// Batch features transposed: `dim x batch`.
    xt: Vec<f32>,
    /// Hidden activations (post-ReLU), then their gradients: `batch x hidden`.
    a: Vec<f32>,
    da: Vec<f32>,
    /// Output logits, then `dL/dz`: `batch x n_models`.
    z: Vec<f32>,
    /// Summed masked BCE of the last batch.
    loss: f64,
}

impl Workspace {
    fn new(batch: usize, d: usize, h: usize, nm: usize) -> Self {
        Workspace {
            xt: vec![0.0; d * batch],
            a: vec![0.0; batch * h],
            da: vec![0.0; batch * h],
            z: vec![0.0; batch * nm],
            loss: 0.0,
        }
    }
}

/// Forward pass over `rows`; with `grads`, adds the (unnormalised) gradients of the
/// summed masked BCE. Returns the number of observed (prompt, model) pairs; the summed
/// loss is left in `ws.loss`.
fn forward_backward(
    p: &MlpParams,
    train: &TrainSet,
    rows: &[usize],
    ws: &mut Workspace,
    grads: Option<&mut MlpParams>,
    h: usize,
) -> usize {
    let (d, nm, b) = (train.dim, train.n_models, rows.len());
    gather_transposed(train, rows, &mut ws.xt);
    // Hidden layer: a = relu(x W1 + b1), feature-major so W1's row stays in L1.
    let a = &mut ws.a[..b * h];
    for s in 0..b {
        a[s * h..(s + 1) * h].copy_from_slice(&p.b1);
    }
    for k in 0..d {
        let wk = &p.w1[k * h..(k + 1) * h];
        for (s, &x) in ws.xt[k * b..(k + 1) * b].iter().enumerate() {
            if x != 0.0 {
                axpy(x, wk, &mut a[s * h..(s + 1) * h]);
            }
        }
    }
    a.iter_mut().for_each(|v| *v = v.max(0.0));
    // Output layer and loss.
    let z = &mut ws.z[..b * nm];
    let mut count = 0;
    let mut loss = 0.0;
    for (s, &i) in rows.iter().enumerate() {
        let zs = &mut z[s * nm..(s + 1) * nm];
        zs.copy_from_slice(&p.b2);
        for (j, &aj) in a[s * h..(s + 1) * h].iter().enumerate() {
            if aj > 0.0 {
                axpy(aj, &p.w2[j * nm..(j + 1) * nm], zs);
            }
        }
        let y = &train.scores[i * nm..(i + 1) * nm];
        let (l, c) = bce_grad_in_place(zs, y);
        loss += l;
        count += c;
    }
    ws.loss = loss;
    let Some(g) = grads else {
        return count;
    };
    // Backward. z now holds dL/dz.
    let da = &mut ws.da[..b * h];
    for s in 0..b {
        let dz = &z[s * nm..(s + 1) * nm];
        for (db, &v) in g.b2.iter_mut().zip(dz) {
            *db += v;
        }
        let as_ = &a[s * h..(s + 1) * h];
        let das = &mut da[s * h..(s + 1) * h];
        for j in 0..h {
            if as_[j] > 0.0 {
                let w2j = &p.w2[j * nm..(j + 1) * nm];
                axpy(as_[j], dz, &mut g.w2[j * nm..(j + 1) * nm]);
                das[j] = dot32(w2j, dz);
            } else {
                das[j] = 0.0;
            }
        }
        for (db, &v) in g.b1.iter_mut().zip(das.iter()) {
            *db += v;
        }
    }
    for k in 0..d {
        let gk = &mut g.w1[k * h..(k + 1) * h];
        for (s, &x) in ws.xt[k * b..(k + 1) * b].iter().enumerate() {
            if x != 0.0 {
                axpy(x, &da[s * h..(s + 1) * h], gk);
            }
        }
    }
    count
}

// ---------------------------------------------------------------------------------------
// Training helpers shared with `mf`.

pub(crate) fn fit_err(router: &str, message: String) -> RouterError {
    RouterError::Fit {
        router: router.into(),
        message,
    }
}

/// Checked training sizes and the held-out split rule.
pub(crate) struct Schedule {
    val_fraction: f64,
}

/// Row indices for training and for early stopping.
pub(crate) struct Split {
    pub(crate) train: Vec<usize>,
    pub(crate) val: Vec<usize>,
}

/// What [`Schedule::check`] needs from a config.
pub(crate) trait HasValFraction {
    fn val_fraction(&self) -> f64;
}

impl HasValFraction for MlpConfig {
    fn val_fraction(&self) -> f64 {
        self.val_fraction
    }
}

impl Schedule {
    /// Validates the training set and the common hyper-parameters.
    pub(crate) fn check(
        router: &str,
        train: &TrainSet,
        epochs: usize,
        batch_size: usize,
        cfg: &impl HasValFraction,
    ) -> Result<Schedule, RouterError> {
        let (n, d, nm) = (train.len(), train.dim, train.n_models);
        if n == 0 || d == 0 || nm == 0 {
            return Err(fit_err(
                router,
                format!("empty training data ({n} prompts, {d} features, {nm} models)"),
            ));
        }
        if train.features.len() != n * d || train.scores.len() != n * nm {
            return Err(fit_err(
                router,
                "feature or score matrix has the wrong size".into(),
            ));
        }
        if train.features.iter().any(|x| !x.is_finite()) {
            return Err(fit_err(
                router,
                "features contain a non-finite value".into(),
            ));
        }
        if train
            .scores
            .iter()
            .any(|s| !s.is_nan() && !(0.0..=1.0).contains(s))
        {
            return Err(fit_err(router, "a score lies outside [0, 1]".into()));
        }
        if epochs == 0 || batch_size == 0 {
            return Err(fit_err(router, "epochs and batch_size must be > 0".into()));
        }
        let vf = cfg.val_fraction();
        if !(0.0..0.9).contains(&vf) {
            return Err(fit_err(
                router,
                format!("val_fraction must lie in [0, 0.9), got {vf}"),
            ));
        }
        Ok(Schedule { val_fraction: vf })
    }

    /// Seeded held-out slice; none when it would hold fewer than 10 rows.
    pub(crate) fn split(&self, n: usize, rng: &mut ChaCha8Rng) -> Split {
        let mut idx: Vec<usize> = (0..n).collect();
        let n_val = (n as f64 * self.val_fraction).round() as usize;
        if n_val < 10 || n - n_val < 10 {
            return Split {
                train: idx,
                val: Vec::new(),
            };
        }
        idx.shuffle(rng);
        let val = idx.split_off(n - n_val);
        idx.sort_unstable();
        Split { train: idx, val }
    }
}

/// Per-model logit of the mean observed train score (clamped away from 0 and 1): the
/// output bias at initialisation, so training starts from the per-model base rates.
pub(crate) fn mean_logits(train: &TrainSet) -> Vec<f32> {
    let nm = train.n_models;
    (0..nm)
        .map(|m| {
            let (mut s, mut c) = (0.0, 0usize);
            for i in 0..train.len() {
                let y = train.scores[i * nm + m];
                if !y.is_nan() {
                    s += y;
                    c += 1;
                }
            }
            let p = if c == 0 { 0.5 } else { s / c as f64 };
            let p = p.clamp(0.01, 0.99);
            (p / (1.0 - p)).ln() as f32
        })
        .collect()
}

/// Copies `rows` of the features into `xt`, transposed (`dim x rows.len()`).
pub(crate) fn gather_transposed(train: &TrainSet, rows: &[usize], xt: &mut [f32]) {
    let b = rows.len();
    for (s, &i) in rows.iter().enumerate() {
        for (k, &x) in train.row(i).iter().enumerate() {
            xt[k * b + s] = x;
        }
    }
}

/// Replaces logits `z` by `dL/dz = sigmoid(z) - y` where `y` is observed and 0 where it
/// is `NaN`; returns the summed BCE and the number of observed targets.
pub(crate) fn bce_grad_in_place(z: &mut [f32], y: &[f64]) -> (f64, usize) {
    let mut loss = 0.0;
    let mut count = 0;
    for (zm, &ym) in z.iter_mut().zip(y) {
        if ym.is_nan() {
            *zm = 0.0;
            continue;
        }
        let zf = *zm as f64;
        // log(1 + e^z) - y z, computed stably.
        loss += zf.max(0.0) + (-zf.abs()).exp().ln_1p() - ym * zf;
        count += 1;
        *zm = (sigmoid(zf) - ym) as f32;
    }
    (loss, count)
}

/// Logistic function; a `NaN` logit (only from non-finite input features) maps to 0.5 so
/// that predictions always stay in `[0, 1]`.
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z.is_nan() {
        0.5
    } else if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `y += a * x`.
#[inline]
pub(crate) fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Dot product with eight independent accumulators (vectorises).
#[inline]
pub(crate) fn dot32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Adam (Kingma & Ba 2015) with decoupled weight decay (AdamW).
pub(crate) struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    pub(crate) fn new(n: usize) -> Self {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One update of `p` with gradient `g * scale`.
    pub(crate) fn step(&mut self, p: &mut [f32], g: &[f32], scale: f32, lr: f64, wd: f64) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        let step = lr as f32 / c1;
        let decay = 1.0 - (lr * wd) as f32;
        let inv_c2 = 1.0 / c2;
        for (((pi, &gi), mi), vi) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            let gi = gi * scale;
            *mi = B1 * *mi + (1.0 - B1) * gi;
            *vi = B2 * *vi + (1.0 - B2) * gi * gi;
            *pi = *pi * decay - step * *mi / ((*vi * inv_c2).sqrt() + EPS);
        }
    }
}

/// A parameter set trained by [`train_epochs`]: four tensors and a masked-BCE
/// forward/backward pass over a batch of training rows.
pub(crate) trait Params: Clone {
    type Workspace;

    /// Forward pass over `rows`; with `grads`, adds the (unnormalised) gradients of the
    /// summed masked BCE. Returns the number of observed targets and the summed loss.
    fn forward_backward(
        &self,
        train: &TrainSet,
        rows: &[usize],
        ws: &mut Self::Workspace,
        grads: Option<&mut Self>,
    ) -> (usize, f64);

    /// The four tensors, in optimiser order.
    fn tensors(&mut self) -> [&mut Vec<f32>; 4];
}

/// Loop settings of [`train_epochs`].
pub(crate) struct Hyper {
    pub(crate) epochs: usize,
    pub(crate) batch_size: usize,
    pub(crate) patience: usize,
    pub(crate) learning_rate: f64,
    /// Decoupled weight decay per tensor, in [`Params::tensors`] order.
    pub(crate) decay: [f64; 4],
}

/// Mini-batch AdamW from `p` on `rows` (shuffled each epoch with `rng`) for at most
/// `hp.epochs`; with a non-empty `val`, stops once its mean masked loss has not improved
/// for `hp.patience` epochs and returns the best held-out epoch's weights. Returns the
/// weights and their epoch count.
pub(crate) fn train_epochs<P: Params>(
    train: &TrainSet,
    mut p: P,
    ws: &mut P::Workspace,
    rows: &[usize],
    val: &[usize],
    hp: &Hyper,
    rng: &mut ChaCha8Rng,
) -> (P, usize) {
    let mut opt = p.tensors().map(|t| Adam::new(t.len()));
    let mut g = p.clone();
    let mut best = (f64::INFINITY, p.clone(), 0usize);
    let mut since_best = 0usize;
    let mut order = rows.to_vec();
    let mut epochs_run = 0;
    let lr = hp.learning_rate;
    for epoch in 0..hp.epochs {
        order.shuffle(rng);
        for batch in order.chunks(hp.batch_size) {
            for t in g.tensors() {
                t.fill(0.0);
            }
            let (count, _) = p.forward_backward(train, batch, ws, Some(&mut g));
            if count == 0 {
                continue;
            }
            let scale = 1.0 / count as f32;
            let steps = opt.iter_mut().zip(p.tensors()).zip(g.tensors());
            for (((o, w), gr), &wd) in steps.zip(&hp.decay) {
                o.step(w, gr, scale, lr, wd);
            }
        }
        epochs_run = epoch + 1;
        if val.is_empty() {
            continue;
        }
        let (mut loss, mut count) = (0.0, 0usize);
        for batch in val.chunks(hp.batch_size) {
            let (c, l) = p.forward_backward(train, batch, ws, None);
            count += c;
            loss += l;
        }
        let loss = loss / count.max(1) as f64;
        if loss < best.0 - 1e-6 {
            best = (loss, p.clone(), epochs_run);
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= hp.patience {
                break;
            }
        }
    }
    if !val.is_empty() && best.0.is_finite() {
        return (best.1, best.2);
    }
    (p, epochs_run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bce_gradient_matches_finite_differences_and_masks_nan() {
        let y = [0.3, f64::NAN, 1.0];
        let z0 = [0.7f32, -2.0, -0.4];
        let mut z = z0;
        let (loss, count) = bce_grad_in_place(&mut z, &y);
        assert_eq!(count, 2);
        assert_eq!(z[1], 0.0);
        let f = |zz: [f32; 3]| {
            let mut t = zz;
            bce_grad_in_place(&mut t, &y).0
        };
        assert!((f(z0) - loss).abs() < 1e-12);
        for m in [0, 2] {
            let mut up = z0;
            up[m] += 1e-3;
            let mut dn = z0;
            dn[m] -= 1e-3;
            let num = (f(up) - f(dn)) / 2e-3;
            assert!((num - z[m] as f64).abs() < 1e-3, "{num} vs {}", z[m]);
        }
    }

    #[test]
    fn adam_minimises_a_quadratic() {
        let mut p = vec![3.0f32, -2.0];
        let mut opt = Adam::new(2);
        for _ in 0..2000 {
            let g: Vec<f32> = p.iter().map(|x| 2.0 * x).collect();
            opt.step(&mut p, &g, 1.0, 0.01, 0.0);
        }
        assert!(p.iter().all(|x| x.abs() < 1e-2), "{p:?}");
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (n, d, h, nm) = (5, 4, 3, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let train = TrainSet {
            features: (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            dim: d,
            scores: vec![0.2, 1.0, f64::NAN, 0.0, 0.5, 0.5, 1.0, f64::NAN, 0.9, 0.1],
            costs: vec![0.0; n * nm],
            input_tokens: vec![1; n],
            n_models: nm,
        };
        let p = MlpParams {
            w1: (0..d * h).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            b1: vec![0.1, -0.1, 0.2],
            w2: (0..h * nm).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            b2: vec![0.0, 0.3],
        };
        let rows: Vec<usize> = (0..n).collect();
        let mut ws = Workspace::new(n, d, h, nm);
        let mut g = MlpParams::zeros(d, h, nm);
        forward_backward(&p, &train, &rows, &mut ws, Some(&mut g), h);
        let loss_at = |q: &MlpParams| {
            let mut w = Workspace::new(n, d, h, nm);
            forward_backward(q, &train, &rows, &mut w, None, h);
            w.loss
        };
        for idx in 0..d * h {
            let (mut up, mut dn) = (p.clone(), p.clone());
            up.w1[idx] += 1e-2;
            dn.w1[idx] -= 1e-2;
            let num = (loss_at(&up) - loss_at(&dn)) / 2e-2;
            assert!((num - g.w1[idx] as f64).abs() < 2e-2, "w1[{idx}]");
        }
        for idx in 0..h * nm {
            let (mut up, mut dn) = (p.clone(), p.clone());
            up.w2[idx] += 1e-2;
            dn.w2[idx] -= 1e-2;
            let num = (loss_at(&up) - loss_at(&dn)) / 2e-2;
            assert!((num - g.w2[idx] as f64).abs() < 2e-2, "w2[{idx}]");
        }
    }
}
