//! Cosine k-nearest-neighbour router (RouterBench's kNN router, Hu et al., 2024; and
//! "simple kNN beats complex routers", e.g. Li et al., 2025).
//!
//! Prediction for a prompt `q` (features are L2-normalised, so cosine = dot product):
//! take the `k` training prompts with the highest `dot(q, x)`, weight each by
//! `(1 / (1 - cos + eps))^power` (inverse cosine distance; `power = 0` is a plain
//! average), and predict model `m`'s score as the weighted mean of the neighbours' scores
//! for `m`, skipping neighbours on which `m` was not evaluated, shrunk towards `m`'s
//! global mean train score with `prior_weight` pseudo-neighbours:
//! `(sum w_j s_jm + prior_weight * mean_m) / (sum w_j + prior_weight)`. A model no
//! neighbour has falls back to its global mean.
//!
//! Index: `exact` scans every training vector; `ivf` (inverted file, Jegou et al., 2011,
//! "Product quantization for nearest neighbor search", its coarse quantiser) clusters the
//! training vectors with spherical k-means into `nlist` lists (seeded, trained on a
//! subsample of at most 64 points per list) and scans only the `nprobe` lists whose
//! centroids are closest to the query.
//!
//! Storage: a scan of 9.6k x 256 `f32` (10 MB, beyond the L2 cache) is bound by memory
//! and, on baseline x86-64 (SSE2, no FMA), by arithmetic; so training vectors are
//! quantised to 8-bit values (kept as `i16` in memory for 16-bit multiply-adds, `i8` in
//! the artifact) contiguously per list, with one `f32` scale per row (symmetric max-abs quantisation, `x ~ scale * q`, `|q| <= 127`),
//! and the query is quantised the same way: similarity = `scale_q * scale_x * sum q_i
//! x_i` with the sum in exact `i32`. The rounding error of a similarity is below
//! `|x|_1 * |q|_inf / 254 + ...`, in practice about 1e-3, far below the gaps that
//! separate neighbours that matter (measured: see BENCHMARKS.md). The dot products are
//! written over 16-lane chunks with independent accumulators so they auto-vectorise on
//! any target (no `unsafe`, no intrinsics). The top `k` are chosen with
//! `select_nth_unstable` over the scanned similarities (linear time).

use std::cell::RefCell;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Router, RouterError, TrainSet};

fn default_k() -> usize {
    40
}
fn default_power() -> f64 {
    2.0
}
fn default_eps() -> f64 {
    0.05
}
fn default_prior_weight() -> f64 {
    3.0
}

/// How the neighbours are searched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KnnIndex {
    /// Scan every training vector.
    Exact,
    /// Inverted file: k-means lists, scan the `nprobe` nearest. `nlist = 0` picks
    /// `round(sqrt(n))`.
    Ivf { nlist: usize, nprobe: usize },
}

impl Default for KnnIndex {
    fn default() -> Self {
        KnnIndex::Ivf {
            nlist: 0,
            nprobe: 8,
        }
    }
}

/// Hyper-parameters of the knn router (every field has a serde default).
///
/// Defaults: `k` and `power` are tuned per training set by leave-one-out (`tune`; the
/// best grid point differs between datasets: k = 80 with power 2 on mmlu-pro-12k, k = 80
/// with power 0 on routerbench-3k); prior weight 3; IVF with `sqrt(n)` lists and 8
/// probed, which keeps the test Brier error of the predicted scores within 0.0005 of
/// exact search at a fifth of its latency. Measured with
/// `cargo bench -p routewise-router --bench knn_quality` (numbers in BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnConfig {
    /// Neighbours per prediction.
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default)]
    pub index: KnnIndex,
    /// Exponent of the inverse-distance weight (0 = uniform).
    #[serde(default = "default_power")]
    pub power: f64,
    /// Added to the cosine distance before inverting (bounds a duplicate's weight).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Pseudo-neighbours at the model's global mean score (shrinkage).
    #[serde(default = "default_prior_weight")]
    pub prior_weight: f64,
    /// Seed of the k-means initialisation and of the tuning sample.
    #[serde(default)]
    pub seed: u64,
    /// Choose `k` (10, 20, 40, 80) and `power` (0, 1, 2) at fit time by leave-one-out
    /// squared error of the predicted scores on a sample of up to 1,000 training prompts
    /// (exact neighbours); the fitted router's config records the choice. `k` and
    /// `power` above are used as given when this is off.
    #[serde(default = "default_tune")]
    pub tune: bool,
}

fn default_tune() -> bool {
    true
}

/// Training prompts sampled for the leave-one-out tuning.
const TUNE_SAMPLE: usize = 1000;

impl Default for KnnConfig {
    fn default() -> Self {
        KnnConfig {
            k: default_k(),
            index: KnnIndex::default(),
            power: default_power(),
            eps: default_eps(),
            prior_weight: default_prior_weight(),
            seed: 0,
            tune: default_tune(),
        }
    }
}

/// A fitted knn router.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnnRouter {
    config: KnnConfig,
    dim: usize,
    n_models: usize,
    /// Quantised training vectors, grouped by list (`n * dim`): `i8` values held as
    /// `i16` in memory (16-bit multiply-adds need no sign extension: 2x faster scans on
    /// baseline x86-64) and stored as `i8` in artifacts.
    #[serde(serialize_with = "ser_i8", deserialize_with = "de_i8")]
    vectors: Vec<i16>,
    /// Per-row dequantisation scale.
    row_scale: Vec<f32>,
    /// Scores in the same row order (`n * n_models`), `NaN` where missing.
    scores: Vec<f32>,
    /// `list_start[l]..list_start[l + 1]` are list `l`'s rows (one list when exact).
    list_start: Vec<u32>,
    /// `nlist * dim` centroids (empty when exact).
    centroids: Vec<f32>,
    /// Global mean score per model (fallback and prior).
    mean_scores: Vec<f64>,
}

#[derive(Default)]
struct Scratch {
    cand: Vec<(f32, u32)>,
    probe: Vec<(f32, u32)>,
    query: Vec<i16>,
    num: Vec<f64>,
    den: Vec<f64>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Dot product written to auto-vectorise: 16 independent lanes, then a tail.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0.0;
    for i in 0..8 {
        s += acc[i] + acc[i + 8];
    }
    s + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Integer dot product of two quantised vectors (values in `[-127, 127]`, held as
/// `i16`; exact). Written as 16-element chunks with one `i32` sum each, the shape LLVM
/// turns into 16-bit multiply-adds (`pmaddwd`) on any x86-64.
#[inline]
pub fn dot_q(a: &[i16], b: &[i16]) -> i32 {
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut s = 0i32;
    for (x, y) in ca.zip(cb) {
        let mut t = 0i32;
        for i in 0..16 {
            t += i32::from(x[i]) * i32::from(y[i]);
        }
        s += t;
    }
    s + ra
        .iter()
        .zip(rb)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum::<i32>()
}

fn ser_i8<S: serde::Serializer>(v: &[i16], s: S) -> Result<S::Ok, S::Error> {
    let bytes: Vec<i8> = v.iter().map(|&x| x.clamp(-127, 127) as i8).collect();
    bytes.serialize(s)
}

fn de_i8<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i16>, D::Error> {
    let bytes = Vec::<i8>::deserialize(d)?;
    Ok(bytes.into_iter().map(i16::from).collect())
}

/// Symmetric max-abs quantisation of `x` into `out`; returns the scale.
fn quantize(x: &[f32], out: &mut Vec<i16>) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let inv = 1.0 / scale;
    out.extend(
        x.iter()
            .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i16),
    );
    scale
}

impl KnnRouter {
    /// Fits the router on `train`.
    pub fn fit(train: &TrainSet, config: &KnnConfig) -> Result<Self, RouterError> {
        let fail = |message: String| RouterError::Fit {
            router: "knn".into(),
            message,
        };
        if train.is_empty() {
            return Err(fail("the training set is empty".into()));
        }
        if config.k == 0 {
            return Err(fail("k must be at least 1".into()));
        }
        if !(config.power.is_finite() && config.eps > 0.0 && config.prior_weight >= 0.0) {
            return Err(fail(
                "power must be finite, eps > 0 and prior_weight >= 0".into(),
            ));
        }
        let (n, dim, m) = (train.len(), train.dim, train.n_models);
        let mean_scores: Vec<f64> = train
            .mean_scores()
            .into_iter()
            .map(|s| if s.is_nan() { 0.0 } else { s })
            .collect();

        let (assign, centroids, nlist) = match config.index {
            KnnIndex::Exact => (vec![0u32; n], Vec::new(), 1),
            KnnIndex::Ivf { nlist, nprobe } => {
                if nprobe == 0 {
                    return Err(fail("nprobe must be at least 1".into()));
                }
                let nlist = if nlist == 0 {
                    ((n as f64).sqrt().round() as usize).max(1)
                } else {
                    nlist
                }
                .min(n);
                let centroids = spherical_kmeans(train, nlist, config.seed);
                let assign = (0..n)
                    .map(|i| nearest_centroid(&centroids, dim, train.row(i)))
                    .collect();
                (assign, centroids, nlist)
            }
        };

        // Group rows by list (stable, so the order inside a list is the train order).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| assign[i]);
        let mut list_start = vec![0u32; nlist + 1];
        for &a in &assign {
            list_start[a as usize + 1] += 1;
        }
        for l in 0..nlist {
            list_start[l + 1] += list_start[l];
        }
        let mut vectors = Vec::with_capacity(n * dim);
        let mut row_scale = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n * m);
        for &i in &order {
            row_scale.push(quantize(train.row(i), &mut vectors));
            scores.extend(train.scores[i * m..(i + 1) * m].iter().map(|&s| s as f32));
        }
        let mut router = KnnRouter {
            config: config.clone(),
            dim,
            n_models: m,
            vectors,
            row_scale,
            scores,
            list_start,
            centroids,
            mean_scores,
        };
        if config.tune {
            router.tune(train, &order);
        }
        Ok(router)
    }

    /// Weighted neighbour average with the prior (see the module docs) into `out`.
    fn aggregate(
        &self,
        cand: &[(f32, u32)],
        power: f64,
        num: &mut Vec<f64>,
        den: &mut Vec<f64>,
        out: &mut [f64],
    ) {
        let m = self.n_models;
        num.clear();
        num.resize(m, 0.0);
        den.clear();
        den.resize(m, 0.0);
        for &(sim, r) in cand {
            let dist = (1.0 - f64::from(sim)).max(0.0);
            let inv = 1.0 / (dist + self.config.eps);
            let w = if power == 1.0 {
                inv
            } else if power == 2.0 {
                inv * inv
            } else {
                inv.powf(power)
            };
            let row = &self.scores[r as usize * m..(r as usize + 1) * m];
            for ((n, dd), &sc) in num.iter_mut().zip(den.iter_mut()).zip(row) {
                if !sc.is_nan() {
                    *n += w * f64::from(sc);
                    *dd += w;
                }
            }
        }
        let pw = self.config.prior_weight;
        for (i, o) in out.iter_mut().enumerate().take(m) {
            let g = self.mean_scores[i];
            *o = if den[i] > 0.0 {
                (num[i] + pw * g) / (den[i] + pw)
            } else {
                g
            };
        }
    }

    /// Leave-one-out selection of `k` and `power` (see [`KnnConfig::tune`]): for a
    /// seeded sample of training prompts, the exact neighbours among all the others, and
    /// the squared error of every grid point's predicted scores against the observed
    /// ones. Returns the best `(k, power)`.
    fn tune(&mut self, train: &TrainSet, order: &[usize]) {
        const KS: [usize; 4] = [10, 20, 40, 80];
        const POWERS: [f64; 3] = [0.0, 1.0, 2.0];
        let n = train.len();
        let ks: Vec<usize> = KS.iter().map(|&k| k.min(n - 1)).collect();
        if n < 3 {
            return;
        }
        let kmax = ks.iter().copied().max().unwrap_or(1);
        // stored row of each original training row
        let mut stored = vec![0u32; n];
        for (r, &i) in order.iter().enumerate() {
            stored[i] = r as u32;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ 0x6c6f_6f5f_7475_6e65);
        let mut sample: Vec<usize> = (0..n).collect();
        sample.shuffle(&mut rng);
        sample.truncate(TUNE_SAMPLE);
        let m = self.n_models;
        let mut sse = vec![0.0f64; ks.len() * POWERS.len()];
        let (mut num, mut den, mut pred) = (Vec::new(), Vec::new(), vec![0.0; m]);
        let mut s = Scratch::default();
        let mut sorted: Vec<(f32, u32)> = Vec::with_capacity(kmax + 1);
        for &i in &sample {
            self.search_k(train.row(i), &mut s, kmax + 1, true);
            sorted.clear();
            sorted.extend(s.cand.iter().copied().filter(|&(_, r)| r != stored[i]));
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (ki, &k) in ks.iter().enumerate() {
                let nb = &sorted[..k.min(sorted.len())];
                for (pi, &p) in POWERS.iter().enumerate() {
                    self.aggregate(nb, p, &mut num, &mut den, &mut pred);
                    for (mm, &pr) in pred.iter().enumerate() {
                        if let Some(y) = train.score(i, mm) {
                            sse[ki * POWERS.len() + pi] += (pr - y) * (pr - y);
                        }
                    }
                }
            }
        }
        let best = (0..sse.len())
            .min_by(|&a, &b| sse[a].total_cmp(&sse[b]))
            .unwrap_or(0);
        self.config.k = ks[best / POWERS.len()].max(1);
        self.config.power = POWERS[best % POWERS.len()];
    }

    pub fn config(&self) -> &KnnConfig {
        &self.config
    }

    /// Training prompts held.
    pub fn len(&self) -> usize {
        self.row_scale.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The `k` nearest stored rows (similarity, row), best first.
    pub fn neighbours(&self, q: &[f32]) -> Vec<(f32, u32)> {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            self.search(q, &mut s);
            let mut v = s.cand.clone();
            v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            v
        })
    }

    /// Fills `s.cand` with the top-k (unordered).
    fn search(&self, q: &[f32], s: &mut Scratch) {
        self.search_k(q, s, self.config.k, false);
    }

    /// Fills `s.cand` with the top `k` (unordered); `exhaustive` ignores the IVF lists.
    fn search_k(&self, q: &[f32], s: &mut Scratch, k: usize, exhaustive: bool) {
        let d = self.dim;
        s.cand.clear();
        s.query.clear();
        let qscale = quantize(q, &mut s.query);
        let nlist = self.list_start.len() - 1;
        let scan = |s: &mut Scratch, l: usize| {
            let (a, b) = (self.list_start[l] as usize, self.list_start[l + 1] as usize);
            let rows = self.vectors[a * d..b * d].chunks_exact(d.max(1));
            let Scratch { cand, query, .. } = s;
            for ((r, x), &sc) in (a as u32..).zip(rows).zip(&self.row_scale[a..b]) {
                cand.push((dot_q(query, x) as f32 * (sc * qscale), r));
            }
        };
        match self.config.index {
            KnnIndex::Ivf { nprobe, .. } if nprobe < nlist && !exhaustive => {
                s.probe.clear();
                for (l, c) in (0u32..).zip(self.centroids.chunks_exact(d.max(1))) {
                    s.probe.push((dot(q, c), l));
                }
                s.probe
                    .select_nth_unstable_by(nprobe - 1, |a, b| b.0.total_cmp(&a.0));
                for p in 0..nprobe {
                    let l = s.probe[p].1 as usize;
                    scan(s, l);
                }
            }
            _ => {
                for l in 0..nlist {
                    scan(s, l);
                }
            }
        }
        if k > 0 && s.cand.len() > k {
            s.cand
                .select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            s.cand.truncate(k);
        }
    }
}

impl Router for KnnRouter {
    fn predict_scores(&self, features: &[f32], out: &mut [f64]) {
        if features.len() != self.dim || self.is_empty() {
            for (o, &g) in out.iter_mut().zip(&self.mean_scores) {
                *o = g;
            }
            return;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            self.search(features, &mut s);
            let Scratch { cand, num, den, .. } = &mut *s;
            self.aggregate(cand, self.config.power, num, den, out);
        });
    }
}

/// Index of the centroid with the highest dot product with `x`.
fn nearest_centroid(centroids: &[f32], dim: usize, x: &[f32]) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (l, c) in (0u32..).zip(centroids.chunks_exact(dim.max(1))) {
        let s = dot(x, c);
        if s > best.0 {
            best = (s, l);
        }
    }
    best.1
}

/// Spherical k-means (cosine; centroids re-normalised each step), Dhillon & Modha,
/// 2001. Seeded random initialisation from distinct rows; trained on a subsample of at
/// most `64 * nlist` rows; 12 Lloyd iterations; an empty list is re-seeded with a
/// random row.
fn spherical_kmeans(train: &TrainSet, nlist: usize, seed: u64) -> Vec<f32> {
    let (n, dim) = (train.len(), train.dim);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b6e_6e5f_6976_6600);
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(&mut rng);
    let sample: Vec<usize> = rows.iter().copied().take((64 * nlist).min(n)).collect();
    let mut centroids: Vec<f32> = Vec::with_capacity(nlist * dim);
    for &i in sample.iter().take(nlist) {
        centroids.extend_from_slice(train.row(i));
    }
    let mut assign = vec![0u32; sample.len()];
    for _ in 0..12 {
        for (a, &i) in assign.iter_mut().zip(&sample) {
            *a = nearest_centroid(&centroids, dim, train.row(i));
        }
        let mut sums = vec![0.0f32; nlist * dim];
        let mut counts = vec![0usize; nlist];
        for (&a, &i) in assign.iter().zip(&sample) {
            let a = a as usize;
            counts[a] += 1;
            for (s, &x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(train.row(i)) {
                *s += x;
            }
        }
        for l in 0..nlist {
            let c = &mut sums[l * dim..(l + 1) * dim];
            if counts[l] == 0 {
                if let Some(&i) = sample.choose(&mut rng) {
                    c.copy_from_slice(train.row(i));
                }
            }
            routewise_features::l2_normalize(c);
        }
        centroids = sums;
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        routewise_features::l2_normalize(&mut v);
        v
    }

    fn set(rows: &[Vec<f32>], scores: &[f64], m: usize) -> TrainSet {
        TrainSet {
            features: rows.concat(),
            dim: rows[0].len(),
            scores: scores.to_vec(),
            costs: vec![0.0; scores.len()],
            input_tokens: vec![10; rows.len()],
            n_models: m,
        }
    }

    #[test]
    fn dot_matches_naive_for_any_length() {
        for len in [0usize, 1, 15, 16, 17, 33, 100] {
            let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32).sin()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - naive).abs() < 1e-3 * (1.0 + naive.abs()),
                "{len}"
            );
        }
    }

    #[test]
    fn quantised_similarity_is_close_to_float() {
        let a = unit(
            &(0..256)
                .map(|i| ((i * 7919) % 101) as f32 - 50.0)
                .collect::<Vec<_>>(),
        );
        let b = unit(
            &(0..256)
                .map(|i| ((i * 104_729) % 89) as f32 - 40.0)
                .collect::<Vec<_>>(),
        );
        let (mut qa, mut qb) = (Vec::new(), Vec::new());
        let (sa, sb) = (quantize(&a, &mut qa), quantize(&b, &mut qb));
        let approx = dot_q(&qa, &qb) as f32 * sa * sb;
        assert!(
            (approx - dot(&a, &b)).abs() < 5e-3,
            "{approx} {}",
            dot(&a, &b)
        );
        let self_sim = dot_q(&qa, &qa) as f32 * sa * sa;
        assert!((self_sim - 1.0).abs() < 5e-3);
    }

    #[test]
    fn nearest_neighbours_decide_and_missing_models_fall_back() {
        let rows = vec![
            unit(&[1.0, 0.0, 0.0]),
            unit(&[0.9, 0.1, 0.0]),
            unit(&[0.0, 1.0, 0.0]),
            unit(&[0.0, 0.9, 0.1]),
        ];
        // model 0 right near x, model 1 right near y; model 2 only on row 0.
        let nan = f64::NAN;
        let scores = [1.0, 0.0, 1.0, 1.0, 0.0, nan, 0.0, 1.0, nan, 0.0, 1.0, nan];
        let t = set(&rows, &scores, 3);
        let cfg = KnnConfig {
            k: 2,
            index: KnnIndex::Exact,
            prior_weight: 0.0,
            tune: false,
            ..KnnConfig::default()
        };
        let r = KnnRouter::fit(&t, &cfg).unwrap();
        let mut out = vec![0.0; 3];
        r.predict_scores(&unit(&[1.0, 0.05, 0.0]), &mut out);
        assert_eq!(&out[..2], &[1.0, 0.0]);
        assert_eq!(out[2], 1.0); // only row 0 has model 2
        r.predict_scores(&unit(&[0.0, 1.0, 0.05]), &mut out);
        assert_eq!(&out[..2], &[0.0, 1.0]);
        assert_eq!(out[2], 1.0); // no neighbour has model 2: global mean (1.0)
        let nb = r.neighbours(&unit(&[0.0, 1.0, 0.05]));
        assert_eq!(nb.len(), 2);
        assert!(nb[0].0 >= nb[1].0);
    }

    #[test]
    fn ivf_with_all_lists_probed_equals_exact() {
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                unit(&[
                    (i as f32).sin(),
                    (i as f32 * 0.7).cos(),
                    (i % 7) as f32 * 0.1,
                ])
            })
            .collect();
        let scores: Vec<f64> = (0..400).map(|i| ((i * 37) % 11) as f64 / 10.0).collect();
        let t = set(&rows, &scores, 2);
        let exact = KnnRouter::fit(
            &t,
            &KnnConfig {
                index: KnnIndex::Exact,
                ..KnnConfig::default()
            },
        )
        .unwrap();
        let ivf = KnnRouter::fit(
            &t,
            &KnnConfig {
                index: KnnIndex::Ivf {
                    nlist: 8,
                    nprobe: 8,
                },
                ..KnnConfig::default()
            },
        )
        .unwrap();
        let (mut a, mut b) = (vec![0.0; 2], vec![0.0; 2]);
        for i in 0..50 {
            let q = unit(&[(i as f32 * 1.3).cos(), (i as f32).sin(), 0.2]);
            exact.predict_scores(&q, &mut a);
            ivf.predict_scores(&q, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-9, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn prior_weight_shrinks_towards_the_global_mean() {
        let rows = vec![unit(&[1.0, 0.0]), unit(&[0.0, 1.0])];
        let t = set(&rows, &[1.0, 0.0, 0.0, 1.0], 2);
        let predict = |pw: f64| {
            let cfg = KnnConfig {
                k: 1,
                index: KnnIndex::Exact,
                prior_weight: pw,
                tune: false,
                ..KnnConfig::default()
            };
            let mut out = vec![0.0; 2];
            KnnRouter::fit(&t, &cfg)
                .unwrap()
                .predict_scores(&unit(&[1.0, 0.0]), &mut out);
            out
        };
        assert_eq!(predict(0.0), vec![1.0, 0.0]);
        let mid = predict(3.0);
        assert!(
            mid[0] < 1.0 && mid[0] > 0.5 && mid[1] > 0.0 && mid[1] < 0.5,
            "{mid:?}"
        );
        let strong = predict(1e9);
        assert!((strong[0] - 0.5).abs() < 1e-6 && (strong[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn tuning_picks_a_small_k_when_the_signal_is_local() {
        // 400 points on a circle; the right model flips every 10 consecutive points, so
        // only small neighbourhoods carry the signal.
        let rows: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let t = i as f32 * std::f32::consts::TAU / 400.0;
                vec![t.cos(), t.sin()]
            })
            .collect();
        let scores: Vec<f64> = (0..400)
            .flat_map(|i| {
                let a = if (i / 10) % 2 == 0 { 1.0 } else { 0.0 };
                [a, 1.0 - a]
            })
            .collect();
        let t = set(&rows, &scores, 2);
        let r = KnnRouter::fit(
            &t,
            &KnnConfig {
                index: KnnIndex::Exact,
                ..KnnConfig::default()
            },
        )
        .unwrap();
        assert_eq!(r.config().k, 10, "{:?}", r.config());
        assert!([0.0, 1.0, 2.0].contains(&r.config().power));
    }

    #[test]
    fn rejects_bad_config() {
        let t = set(&[unit(&[1.0, 0.0])], &[1.0, 0.0], 2);
        let bad = KnnConfig {
            k: 0,
            ..KnnConfig::default()
        };
        assert!(KnnRouter::fit(&t, &bad).is_err());
    }
}
