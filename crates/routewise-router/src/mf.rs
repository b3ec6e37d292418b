//! `mf`: the matrix-factorisation router of RouteLLM (Ong et al. 2024, "RouteLLM:
//! Learning to Route LLMs with Preference Data"), generalised from pairwise wins to each
//! model's absolute score.
//!
//! RouteLLM scores a (model, prompt) pair as `w2^T (v_m ⊙ (W1 x))`: `x` the prompt
//! embedding, `W1` a learned projection to `k` dimensions (no bias), `v_m` the model's
//! learned embedding (L2-normalised before use) and `w2` a learned vector; it trains the
//! difference of two such scores on pairwise preferences. Here each model's own score is
//! the target, so a per-model bias `b_m` is added (it cancels in RouteLLM's differences):
//! `score(m, x) = sigmoid(w2^T (v_m / |v_m| ⊙ (W1 x)) + b_m)`. Loss: masked binary
//! cross-entropy with fractional scores as soft targets (missing outcomes contribute
//! nothing); Adam with decoupled weight decay on `W1`, mini-batches, seeded early
//! stopping on a held-out slice of the training rows (shared helpers in [`crate::mlp`]).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr_free::normal;
use serde::{Deserialize, Serialize};

use crate::mlp::{
    axpy, bce_grad_in_place, dot32, fit_err, gather_transposed, mean_logits, sigmoid, train_epochs,
    HasValFraction, Hyper, Params, Schedule,
};
use crate::{Router, RouterError, TrainSet};

/// Hyper-parameters of the mf router.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MfConfig {
    /// Dimension `k` of the model embeddings and of the prompt projection.
    pub embed_dim: usize,
    /// Maximum number of passes over the training rows.
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Decoupled (AdamW) weight decay on the projection `W1`.
    pub weight_decay: f64,
    /// Share of training rows held out for early stopping (0 disables it).
    pub val_fraction: f64,
    /// Epochs without improvement of the held-out loss before stopping.
    pub patience: usize,
    /// Seeds initialisation, the held-out slice and the batch order.
    pub seed: u64,
}

impl Default for MfConfig {
    fn default() -> Self {
        MfConfig {
            embed_dim: 64,
            epochs: 40,
            batch_size: 64,
            learning_rate: 3e-3,
            weight_decay: 3.0,
            val_fraction: 0.1,
            patience: 4,
            seed: 0,
        }
    }
}

impl HasValFraction for MfConfig {
    fn val_fraction(&self) -> f64 {
        self.val_fraction
    }
}

/// A trained MF router. For prediction only `u_m = w2 ⊙ v_m / |v_m|` matters, so it is
/// stored folded: `score(m, x) = sigmoid(u_m . (W1 x) + b_m)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfRouter {
    n_models: usize,
    dim: usize,
    embed_dim: usize,
    /// Projection, `dim x k` row-major.
    w1: Vec<f32>,
    /// Folded model vectors, `n_models x k` row-major.
    u: Vec<f32>,
    bias: Vec<f32>,
    /// Epochs of the kept weights.
    epochs_run: usize,
}

#[derive(Debug, Clone)]
struct MfParams {
    w1: Vec<f32>,
    v: Vec<f32>,
    w2: Vec<f32>,
    b: Vec<f32>,
}

impl MfParams {
    #[cfg(test)]
    fn zeros(d: usize, k: usize, nm: usize) -> Self {
        MfParams {
            w1: vec![0.0; d * k],
            v: vec![0.0; nm * k],
            w2: vec![0.0; k],
            b: vec![0.0; nm],
        }
    }

    /// `u_m = w2 ⊙ v_m / |v_m|` and the norms `|v_m|`.
    fn folded(&self, k: usize) -> (Vec<f32>, Vec<f32>) {
        let nm = self.v.len() / k;
        let mut u = vec![0.0f32; nm * k];
        let mut norms = vec![0.0f32; nm];
        for m in 0..nm {
            let vm = &self.v[m * k..(m + 1) * k];
            let norm = dot32(vm, vm).sqrt().max(1e-12);
            norms[m] = norm;
            for j in 0..k {
                u[m * k + j] = self.w2[j] * vm[j] / norm;
            }
        }
        (u, norms)
    }
}

impl Params for MfParams {
    type Workspace = Workspace;

    fn forward_backward(
        &self,
        train: &TrainSet,
        rows: &[usize],
        ws: &mut Workspace,
        grads: Option<&mut Self>,
    ) -> (usize, f64) {
        let count = forward_backward(self, train, rows, ws, grads, self.w2.len());
        (count, ws.loss)
    }

    fn tensors(&mut self) -> [&mut Vec<f32>; 4] {
        [&mut self.w1, &mut self.v, &mut self.w2, &mut self.b]
    }
}

struct Workspace {
    xt: Vec<f32>,
    /// Projected prompts `W1 x`, then their gradients: `batch x k`.
    p: Vec<f32>,
    dp: Vec<f32>,
    /// Logits, then `dL/dz`: `batch x n_models`.
    z: Vec<f32>,
    /// Gradient of the folded `u`: `n_models x k`.
    du: Vec<f32>,
    loss: f64,
}

impl Workspace {
    fn new(batch: usize, d: usize, k: usize, nm: usize) -> Self {
        Workspace {
            xt: vec![0.0; d * batch],
            p: vec![0.0; batch * k],
            dp: vec![0.0; batch * k],
            z: vec![0.0; batch * nm],
            du: vec![0.0; nm * k],
            loss: 0.0,
        }
    }
}

impl MfRouter {
    /// Fits the router on `train` (see the module docs).
    pub fn fit(train: &TrainSet, config: &MfConfig) -> Result<Self, RouterError> {
        let sched = Schedule::check("mf", train, config.epochs, config.batch_size, config)?;
        if config.embed_dim == 0 {
            return Err(fit_err("mf", "embed_dim must be > 0".into()));
        }
        let (d, k, nm) = (train.dim, config.embed_dim, train.n_models);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        // Xavier-uniform projection; model embeddings N(0, 1) (as nn.Embedding); w2
        // starts at ones, so u_m starts as a random unit vector and the first logits
        // stay close to the per-model base rates.
        let xav = (6.0 / (d + k) as f64).sqrt();
        let p = MfParams {
            w1: (0..d * k)
                .map(|_| rng.gen_range(-xav..xav) as f32)
                .collect(),
            v: (0..nm * k).map(|_| normal(&mut rng) as f32).collect(),
            w2: vec![1.0; k],
            b: mean_logits(train),
        };
        let split = sched.split(train.len(), &mut rng);
        let hp = Hyper {
            epochs: config.epochs,
            batch_size: config.batch_size,
            patience: config.patience,
            learning_rate: config.learning_rate,
            decay: [config.weight_decay, 0.0, 0.0, 0.0],
        };
        let mut ws = Workspace::new(config.batch_size, d, k, nm);
        let (p, epochs_run) =
            train_epochs(train, p, &mut ws, &split.train, &split.val, &hp, &mut rng);
        let (u, _) = p.folded(k);
        Ok(MfRouter {
            n_models: nm,
            dim: d,
            embed_dim: k,
            w1: p.w1,
            u,
            bias: p.b,
            epochs_run,
        })
    }
}

impl Router for MfRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        let k = self.embed_dim;
        let mut proj = vec![0.0f32; k];
        for (j, &x) in features.iter().enumerate().take(self.dim) {
            if x != 0.0 {
                axpy(x, &self.w1[j * k..(j + 1) * k], &mut proj);
            }
        }
        for (m, o) in out.iter_mut().enumerate().take(self.n_models) {
            let z = dot32(&self.u[m * k..(m + 1) * k], &proj) + self.bias[m];
            *o = sigmoid(z as f64);
        }
    }
}

/// Forward pass over `rows`; with `grads`, adds the gradients of the summed masked BCE.
/// Returns the number of observed targets; the summed loss is left in `ws.loss`.
fn forward_backward(
    p: &MfParams,
    train: &TrainSet,
    rows: &[usize],
    ws: &mut Workspace,
    grads: Option<&mut MfParams>,
    k: usize,
) -> usize {
    let (d, nm, b) = (train.dim, train.n_models, rows.len());
    let (u, norms) = p.folded(k);
    gather_transposed(train, rows, &mut ws.xt);
    let proj = &mut ws.p[..b * k];
    proj.fill(0.0);
    for j in 0..d {
        let wj = &p.w1[j * k..(j + 1) * k];
        for (s, &x) in ws.xt[j * b..(j + 1) * b].iter().enumerate() {
            if x != 0.0 {
                axpy(x, wj, &mut proj[s * k..(s + 1) * k]);
            }
        }
    }
    let z = &mut ws.z[..b * nm];
    let (mut loss, mut count) = (0.0, 0);
    for (s, &i) in rows.iter().enumerate() {
        let ps = &proj[s * k..(s + 1) * k];
        let zs = &mut z[s * nm..(s + 1) * nm];
        for m in 0..nm {
            zs[m] = dot32(&u[m * k..(m + 1) * k], ps) + p.b[m];
        }
        let (l, c) = bce_grad_in_place(zs, &train.scores[i * nm..(i + 1) * nm]);
        loss += l;
        count += c;
    }
    ws.loss = loss;
    let Some(g) = grads else {
        return count;
    };
    // dz -> db, du (= sum_s dz[s,m] p[s]) and dp (= sum_m dz[s,m] u_m).
    let du = &mut ws.du;
    du.fill(0.0);
    let dp = &mut ws.dp[..b * k];
    dp.fill(0.0);
    for s in 0..b {
        let ps = &proj[s * k..(s + 1) * k];
        let dps = &mut dp[s * k..(s + 1) * k];
        for m in 0..nm {
            let dz = z[s * nm + m];
            if dz == 0.0 {
                continue;
            }
            g.b[m] += dz;
            axpy(dz, ps, &mut du[m * k..(m + 1) * k]);
            axpy(dz, &u[m * k..(m + 1) * k], dps);
        }
    }
    // u_mj = w2_j * vhat_mj with vhat = v / |v|.
    for m in 0..nm {
        let vm = &p.v[m * k..(m + 1) * k];
        let norm = norms[m];
        let dum = &du[m * k..(m + 1) * k];
        // dvhat_j = du_j * w2_j; dw2_j += du_j * vhat_j.
        let mut dvhat = vec![0.0f32; k];
        let mut proj_dv = 0.0f32;
        for j in 0..k {
            let vhat = vm[j] / norm;
            g.w2[j] += dum[j] * vhat;
            dvhat[j] = dum[j] * p.w2[j];
            proj_dv += dvhat[j] * vhat;
        }
        // dv = (dvhat - vhat (vhat . dvhat)) / |v|.
        let gv = &mut g.v[m * k..(m + 1) * k];
        for j in 0..k {
            gv[j] += (dvhat[j] - vm[j] / norm * proj_dv) / norm;
        }
    }
    // dW1 = X^T dp.
    for j in 0..d {
        let gj = &mut g.w1[j * k..(j + 1) * k];
        for (s, &x) in ws.xt[j * b..(j + 1) * b].iter().enumerate() {
            if x != 0.0 {
                axpy(x, &dp[s * k..(s + 1) * k], gj);
            }
        }
    }
    count
}

/// A standard normal draw (Box-Muller) without pulling in `rand_distr`.
mod rand_distr_free {
    use rand::Rng;

    pub(super) fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_matches_finite_differences() {
        let (n, d, k, nm) = (4, 3, 2, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let train = TrainSet {
            features: (0..n * d).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            dim: d,
            scores: vec![
                0.2,
                1.0,
                f64::NAN,
                0.0,
                0.5,
                0.5,
                1.0,
                f64::NAN,
                0.9,
                0.1,
                0.0,
                1.0,
            ],
            costs: vec![0.0; n * nm],
            input_tokens: vec![1; n],
            n_models: nm,
        };
        let p = MfParams {
            w1: (0..d * k).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            v: (0..nm * k).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            w2: vec![0.7, -1.2],
            b: vec![0.1, -0.2, 0.3],
        };
        let rows: Vec<usize> = (0..n).collect();
        let mut ws = Workspace::new(n, d, k, nm);
        let mut g = MfParams::zeros(d, k, nm);
        forward_backward(&p, &train, &rows, &mut ws, Some(&mut g), k);
        let loss_at = |q: &MfParams| {
            let mut w = Workspace::new(n, d, k, nm);
            forward_backward(q, &train, &rows, &mut w, None, k);
            w.loss
        };
        let eps = 1e-2f32;
        let check = |name: &str, get: &dyn Fn(&mut MfParams) -> &mut Vec<f32>, grad: &[f32]| {
            for (idx, &gi) in grad.iter().enumerate() {
                let (mut up, mut dn) = (p.clone(), p.clone());
                get(&mut up)[idx] += eps;
                get(&mut dn)[idx] -= eps;
                let num = (loss_at(&up) - loss_at(&dn)) / (2.0 * eps as f64);
                assert!(
                    (num - gi as f64).abs() < 1e-2,
                    "{name}[{idx}]: {num} vs {gi}"
                );
            }
        };
        check("w1", &|q| &mut q.w1, &g.w1);
        check("v", &|q| &mut q.v, &g.v);
        check("w2", &|q| &mut q.w2, &g.w2);
        check("b", &|q| &mut q.b, &g.b);
    }

    #[test]
    fn normal_draws_have_unit_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let xs: Vec<f64> = (0..20000).map(|_| normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
