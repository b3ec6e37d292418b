//! Tuning bench for the `linear`, `mlp` and `mf` routers: fits them on part of the TRAIN
//! split of a routing dataset and reports validation metrics on the rest (the test split
//! is never read), averaged over several seeded hold-out slices.
//!
//! ```text
//! cargo run -p routewise-router --release --example tune_models -- \
//!     ../shared/data/mmlu-pro-12k.jsonl [--routers linear,mlp,mf,mean,knn,ensemble] [--dim 256] \
//!     [--splits 3] [key=value ...]
//! ```
//! Overrides (`key=value`): `idf_offset`, `max_df`, `tail_bytes`, `tail_weight`
//! (featurizer); `shrink` (scales predictions about the model means); `members` (ensemble,
//! e.g. `knn+linear+mlp+mf`); `alpha` (linear); `hidden`, `refit` (mlp); `k` (mf); and for
//! both mlp and mf `lr`, `wd`, `epochs`, `bs`, `patience`, `seed`.
//!
//! Metrics on the held-out 20% of train: masked mean squared error of the predicted
//! scores, the mean score of the argmax-predicted model (`argmaxQ`), and AIQ of the
//! lambda sweep `argmax(pred - lambda * mean_train_cost)` over 81 lambdas, on the fixed
//! cost range [cheapest, most expensive single model]. `mean` is the best-single
//! reference (it predicts each model's mean train score); `knn` (default config) can be
//! listed for comparison.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use routewise_data::{Dataset, Record};
use routewise_features::{TfidfConfig, TfidfFeaturizer};
use routewise_router::{
    EnsembleRouter, KnnConfig, KnnRouter, LinearConfig, LinearRouter, MfConfig, MfRouter,
    MlpConfig, MlpRouter, Router, RouterConfigs, TrainSet,
};

struct MeanRouter(Vec<f64>);

impl Router for MeanRouter {
    fn predict_scores(&self, _features: &[f32], out: &mut [f64]) {
        out.copy_from_slice(&self.0);
    }
}

#[derive(Default, Clone, Copy)]
struct Metrics {
    fit_s: f64,
    predict_us: f64,
    mse: f64,
    argmax_q: f64,
    aiq: f64,
    /// Lowest curve cost reaching the best single model's quality / that model's cost
    /// (infinite when never reached).
    cost_ratio: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut data = None;
    let mut routers = "linear,mlp,mf,mean".to_string();
    let mut dim = TfidfConfig::default().dim;
    let mut splits = 3u64;
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--routers" => routers = it.next().expect("--routers LIST"),
            "--dim" => dim = it.next().expect("--dim N").parse().expect("--dim N"),
            "--splits" => splits = it.next().expect("--splits N").parse().expect("--splits N"),
            _ if a.contains('=') => {
                let (k, v) = a.split_once('=').unwrap();
                kv.push((k.to_string(), v.to_string()));
            }
            _ => data = Some(a),
        }
    }
    let data = data.expect("usage: tune_models DATA.jsonl [--routers ..] [--dim N] [k=v ..]");
    if !Path::new(&data).exists() {
        println!("skipped: {data} not found");
        return;
    }
    let ds = Dataset::load(Path::new(&data)).expect("load dataset");
    let records: Vec<&Record> = ds.train().collect();
    let nm = ds.models.len();
    let names: Vec<&str> = routers.split(',').collect();
    let mut sums = vec![Metrics::default(); names.len()];
    println!(
        "{}: {} train prompts, {} models, dim {dim}, {splits} hold-out slices",
        ds.name,
        records.len(),
        nm
    );
    for split in 0..splits {
        let mut idx: Vec<usize> = (0..records.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(1000 + split));
        let (val_idx, fit_idx) = idx.split_at(records.len() / 5);
        let pick = |ix: &[usize]| ix.iter().map(|&i| records[i]).collect::<Vec<_>>();
        let (fit_recs, val_recs) = (pick(fit_idx), pick(val_idx));
        let texts: Vec<&str> = fit_recs.iter().map(|r| r.prompt.as_str()).collect();
        let fz = TfidfFeaturizer::fit(&texts, {
            let mut c = TfidfConfig {
                dim,
                ..TfidfConfig::default()
            };
            c.idf_offset = get(&kv, "idf_offset").unwrap_or(c.idf_offset);
            c.max_df = get(&kv, "max_df").unwrap_or(c.max_df);
            c.tail_bytes = get(&kv, "tail_bytes").unwrap_or(c.tail_bytes);
            c.tail_weight = get(&kv, "tail_weight").unwrap_or(c.tail_weight);
            c
        });
        let train = TrainSet::from_records(&fit_recs, nm, &fz);
        let val = TrainSet::from_records(&val_recs, nm, &fz);
        for (name, sum) in names.iter().zip(sums.iter_mut()) {
            let m = evaluate(name, &train, &val, &kv);
            sum.fit_s += m.fit_s;
            sum.predict_us += m.predict_us;
            sum.mse += m.mse;
            sum.argmax_q += m.argmax_q;
            sum.aiq += m.aiq;
            sum.cost_ratio += m.cost_ratio;
        }
    }
    let tag: Vec<String> = kv.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (name, s) in names.iter().zip(&sums) {
        let n = splits as f64;
        println!(
            "{name:7} {:24} fit {:6.2}s  predict {:5.1}us  mse {:.4}  argmaxQ {:.4}  AIQ {:.4}  \
             cost@best-single-quality {:.3}",
            tag.join(" "),
            s.fit_s / n,
            s.predict_us / n,
            s.mse / n,
            s.argmax_q / n,
            s.aiq / n,
            s.cost_ratio / n
        );
    }
}

fn get<T: std::str::FromStr>(kv: &[(String, String)], key: &str) -> Option<T> {
    kv.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.parse().ok().expect("bad override value"))
}

fn evaluate(name: &str, train: &TrainSet, val: &TrainSet, kv: &[(String, String)]) -> Metrics {
    let nm = train.n_models;
    let t = Instant::now();
    let router: Box<dyn Router> = match name {
        "linear" => {
            let mut c = LinearConfig::default();
            c.alpha = get(kv, "alpha").unwrap_or(c.alpha);
            Box::new(LinearRouter::fit(train, &c).unwrap())
        }
        "mlp" => {
            let mut c = MlpConfig::default();
            c.hidden = get(kv, "hidden").unwrap_or(c.hidden);
            c.refit = get(kv, "refit").unwrap_or(c.refit);
            c.learning_rate = get(kv, "lr").unwrap_or(c.learning_rate);
            c.weight_decay = get(kv, "wd").unwrap_or(c.weight_decay);
            c.epochs = get(kv, "epochs").unwrap_or(c.epochs);
            c.batch_size = get(kv, "bs").unwrap_or(c.batch_size);
            c.patience = get(kv, "patience").unwrap_or(c.patience);
            c.seed = get(kv, "seed").unwrap_or(c.seed);
            Box::new(MlpRouter::fit(train, &c).unwrap())
        }
        "mf" => {
            let mut c = MfConfig::default();
            c.embed_dim = get(kv, "k").unwrap_or(c.embed_dim);
            c.learning_rate = get(kv, "lr").unwrap_or(c.learning_rate);
            c.weight_decay = get(kv, "wd").unwrap_or(c.weight_decay);
            c.epochs = get(kv, "epochs").unwrap_or(c.epochs);
            c.batch_size = get(kv, "bs").unwrap_or(c.batch_size);
            c.patience = get(kv, "patience").unwrap_or(c.patience);
            c.seed = get(kv, "seed").unwrap_or(c.seed);
            Box::new(MfRouter::fit(train, &c).unwrap())
        }
        "knn" => Box::new(KnnRouter::fit(train, &KnnConfig::default()).unwrap()),
        "ensemble" => Box::new(
            EnsembleRouter::fit(train, &{
                let mut c = RouterConfigs::default();
                if let Some(m) = get::<String>(kv, "members") {
                    c.ensemble.members = m.split('+').map(|k| k.parse().unwrap()).collect();
                }
                c
            })
            .unwrap(),
        ),
        "mean" => Box::new(MeanRouter(column_means(train, &train.scores))),
        other => panic!("unknown router {other}"),
    };
    let fit_s = t.elapsed().as_secs_f64();

    let mut preds = vec![0.0; val.len() * nm];
    let t = Instant::now();
    for (i, out) in preds.chunks_exact_mut(nm).enumerate() {
        router.predict_scores(val.row(i), out);
    }
    let predict_us = t.elapsed().as_secs_f64() * 1e6 / val.len() as f64;
    // Optional calibration: `shrink=a` maps p to mean + a * (p - mean) per model.
    if let Some(a) = get::<f64>(kv, "shrink") {
        let means = column_means(train, &train.scores);
        for row in preds.chunks_exact_mut(nm) {
            for (p, m) in row.iter_mut().zip(&means) {
                *p = m + a * (*p - m);
            }
        }
    }

    let (mut se, mut cnt) = (0.0, 0usize);
    for (p, s) in preds.iter().zip(&val.scores) {
        if !s.is_nan() {
            se += (p - s).powi(2);
            cnt += 1;
        }
    }
    // Lambda sweep with each model's mean train cost as its expected cost.
    let mean_cost = column_means(train, &train.costs);
    let single_cost = column_means(val, &val.costs);
    let c_min = single_cost.iter().copied().fold(f64::INFINITY, f64::min);
    let c_max = single_cost.iter().copied().fold(0.0, f64::max);
    let mut lambdas = vec![0.0];
    lambdas.extend((0..80).map(|j| 10f64.powf(-2.0 + 8.0 * j as f64 / 79.0)));
    let points: Vec<(f64, f64)> = lambdas
        .iter()
        .map(|&lambda| {
            let (mut q, mut c) = (0.0, 0.0);
            for i in 0..val.len() {
                let best = (0..nm)
                    .filter(|&m| !val.scores[i * nm + m].is_nan())
                    .max_by(|&a, &b| {
                        let ua = preds[i * nm + a] - lambda * mean_cost[a];
                        let ub = preds[i * nm + b] - lambda * mean_cost[b];
                        ua.total_cmp(&ub)
                    })
                    .unwrap();
                q += val.scores[i * nm + best];
                c += val.costs[i * nm + best];
            }
            (c / val.len() as f64, q / val.len() as f64)
        })
        .collect();
    let single_q = column_means(val, &val.scores);
    let best = (0..nm)
        .max_by(|&a, &b| single_q[a].total_cmp(&single_q[b]))
        .unwrap();
    let reach = points
        .iter()
        .filter(|p| p.1 >= single_q[best] - 1e-12)
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min);
    Metrics {
        cost_ratio: reach / single_cost[best],
        fit_s,
        predict_us,
        mse: se / cnt as f64,
        argmax_q: points[0].1,
        aiq: aiq(&points, c_min, c_max),
    }
}

/// Per-model mean of `values` (`n x n_models`, `NaN` = missing).
fn column_means(set: &TrainSet, values: &[f64]) -> Vec<f64> {
    let nm = set.n_models;
    (0..nm)
        .map(|m| {
            let v: Vec<f64> = (0..set.len())
                .map(|i| values[i * nm + m])
                .filter(|x| !x.is_nan())
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        })
        .collect()
}

/// RouterBench-style AIQ: area under the non-decreasing upper convex hull of the
/// (cost, quality) points over `[c_min, c_max]`, flat right of the last point, zero left
/// of the first, divided by the range.
fn aiq(points: &[(f64, f64)], c_min: f64, c_max: f64) -> f64 {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for q in p {
        if hull.last().is_some_and(|l| q.1 <= l.1) {
            continue;
        }
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            if (b.0 - a.0) * (q.1 - a.1) - (b.1 - a.1) * (q.0 - a.0) >= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(q);
    }
    let at = |c: f64| -> f64 {
        if c < hull[0].0 {
            return 0.0;
        }
        for w in hull.windows(2) {
            if c <= w[1].0 {
                let t = (c - w[0].0) / (w[1].0 - w[0].0).max(1e-300);
                return w[0].1 + t * (w[1].1 - w[0].1);
            }
        }
        hull[hull.len() - 1].1
    };
    let steps = 4000;
    (0..steps)
        .map(|i| at(c_min + (c_max - c_min) * (i as f64 + 0.5) / steps as f64))
        .sum::<f64>()
        / steps as f64
}
