//! Description routing measured as a classifier (`routewise eval --routes`): each route is
//! a task of the dataset (its name is the `task` value) with a one-sentence natural-language
//! description; a test prompt's predicted route is the closest route vector. The embedder
//! is the gateway's (the built-in static model) unless another featurizer is given. Four
//! ways of making the route vectors are compared on the test split:
//!
//! * `zero_shot` — the description's static embedding alone (what an operator has on day
//!   one: Arch-Router's routing preferences, matched by embeddings);
//! * `ten_shot` — the description averaged with 10 train prompts of the route
//!   ([`crate::describe::SHOTS`], drawn by a seeded shuffle);
//! * `centroid` — a baseline with no description: the centroid of every train prompt of the
//!   route in a TF-IDF space fitted on train;
//! * `supervised` — the kNN router's way: a cosine-weighted vote of the k nearest train
//!   prompts (same embeddings), k chosen on a held-out fifth of train.
//!
//! Reported: accuracy and macro-F1 (the unweighted mean of per-route F1) on test.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use routewise_data::{Dataset, Record};
use routewise_features::{Featurizer, TfidfConfig, TfidfFeaturizer};
use routewise_signals::describe::{argmax, cosines};
use routewise_signals::Embedder;
use serde::Serialize;

/// Train prompts per route in the few-shot vectors.
pub const SHOTS: usize = 10;

/// The k values the supervised baseline chooses from.
const K_GRID: [usize; 6] = [1, 5, 10, 25, 50, 100];

/// One route: the task it stands for and its description.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub description: String,
}

/// A classifier's scores on test.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// The report `eval --routes` writes.
#[derive(Debug, Clone, Serialize)]
pub struct DescribeReport {
    pub zero_shot: Scores,
    pub ten_shot: Scores,
    pub supervised: Scores,
    pub centroid: Scores,
    /// The k the supervised baseline chose on the train holdout.
    pub supervised_k: usize,
    pub routes: Vec<String>,
    pub n_train: usize,
    pub n_test: usize,
    /// Per route: test prompts and each classifier's F1.
    pub per_route: Vec<RouteScores>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteScores {
    pub route: String,
    pub n_test: usize,
    pub zero_shot_f1: f64,
    pub ten_shot_f1: f64,
    pub supervised_f1: f64,
    pub centroid_f1: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error("no route matches a task of the data (tasks are: {0})")]
    NoTasks(String),
    #[error("route `{0}` has no train prompts in the data")]
    EmptyRoute(String),
}

/// Runs the measurement: prompts whose task is not a route are left out.
pub fn evaluate_descriptions(
    ds: &Dataset,
    routes: &[RouteSpec],
    emb: &Embedder,
    seed: u64,
) -> Result<DescribeReport, DescribeError> {
    let label = |r: &Record| routes.iter().position(|x| x.name == r.task);
    let train: Vec<(&Record, usize)> = ds.train().filter_map(|r| Some((r, label(r)?))).collect();
    let test: Vec<(&Record, usize)> = ds.test().filter_map(|r| Some((r, label(r)?))).collect();
    if test.is_empty() || train.is_empty() {
        let mut tasks: Vec<&str> = ds.records.iter().map(|r| r.task.as_str()).collect();
        tasks.sort_unstable();
        tasks.dedup();
        return Err(DescribeError::NoTasks(tasks.join(", ")));
    }
    let n = routes.len();
    for (i, r) in routes.iter().enumerate() {
        if !train.iter().any(|&(_, l)| l == i) {
            return Err(DescribeError::EmptyRoute(r.name.clone()));
        }
    }
    let d = emb.dim();
    let embed_all = |rows: &[(&Record, usize)]| -> Vec<f32> {
        let texts: Vec<&str> = rows.iter().map(|(r, _)| r.prompt.as_str()).collect();
        texts
            .par_chunks(256)
            .flat_map_iter(|c| c.iter().flat_map(|t| emb.embed(t)).collect::<Vec<_>>())
            .collect()
    };
    let train_x = embed_all(&train);
    let test_x = embed_all(&test);
    let truth: Vec<usize> = test.iter().map(|&(_, l)| l).collect();
    let classify = |vectors: &[f32], xs: &[f32], dim: usize| -> Vec<usize> {
        xs.par_chunks(dim)
            .map(|q| argmax(&cosines(q, vectors)).unwrap_or(0))
            .collect()
    };

    // Zero-shot: descriptions only.
    let zero: Vec<f32> = routes
        .iter()
        .flat_map(|r| emb.route_vector(&r.description, &[]))
        .collect();
    let zero_pred = classify(&zero, &test_x, d);

    // Ten-shot: descriptions + SHOTS seeded train prompts per route.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng);
    let few: Vec<f32> = (0..n)
        .flat_map(|i| {
            let shots: Vec<String> = order
                .iter()
                .filter(|&&j| train[j].1 == i)
                .take(SHOTS)
                .map(|&j| train[j].0.prompt.clone())
                .collect();
            emb.route_vector(&routes[i].description, &shots)
        })
        .collect();
    let few_pred = classify(&few, &test_x, d);

    // Centroid: TF-IDF fitted on train, the mean of each route's train prompts.
    let texts: Vec<&str> = train.iter().map(|(r, _)| r.prompt.as_str()).collect();
    let tfidf = TfidfFeaturizer::fit(&texts, TfidfConfig::default());
    let td = tfidf.dim();
    let tx = tfidf.featurize_batch(&texts);
    let mut cent = vec![0f32; n * td];
    for (row, &(_, l)) in tx.chunks_exact(td).zip(&train) {
        for (c, v) in cent[l * td..(l + 1) * td].iter_mut().zip(row) {
            *c += v;
        }
    }
    for c in cent.chunks_exact_mut(td) {
        routewise_features::l2_normalize(c);
    }
    let test_texts: Vec<&str> = test.iter().map(|(r, _)| r.prompt.as_str()).collect();
    let cent_pred = classify(&cent, &tfidf.featurize_batch(&test_texts), td);

    // Supervised: a kNN vote over train, k chosen on a held-out fifth of train.
    let labels: Vec<usize> = train.iter().map(|&(_, l)| l).collect();
    let hold: Vec<bool> = (0..train.len())
        .map(|i| order[i].is_multiple_of(5))
        .collect();
    let (fit_x, fit_y, val_x, val_y) = split_rows(&train_x, &labels, &hold, d);
    let k = K_GRID
        .iter()
        .copied()
        .max_by(|&a, &b| {
            let acc = |k| scores(&knn_predict(&fit_x, &fit_y, &val_x, d, k, n), &val_y, n).accuracy;
            acc(a).total_cmp(&acc(b)).then(b.cmp(&a))
        })
        .unwrap_or(10);
    let knn_pred = knn_predict(&train_x, &labels, &test_x, d, k, n);

    let per_route = (0..n)
        .map(|i| RouteScores {
            route: routes[i].name.clone(),
            n_test: truth.iter().filter(|&&t| t == i).count(),
            zero_shot_f1: f1(&zero_pred, &truth, i),
            ten_shot_f1: f1(&few_pred, &truth, i),
            supervised_f1: f1(&knn_pred, &truth, i),
            centroid_f1: f1(&cent_pred, &truth, i),
        })
        .collect();
    Ok(DescribeReport {
        zero_shot: scores(&zero_pred, &truth, n),
        ten_shot: scores(&few_pred, &truth, n),
        supervised: scores(&knn_pred, &truth, n),
        centroid: scores(&cent_pred, &truth, n),
        supervised_k: k,
        routes: routes.iter().map(|r| r.name.clone()).collect(),
        n_train: train.len(),
        n_test: test.len(),
        per_route,
    })
}

type Rows = (Vec<f32>, Vec<usize>, Vec<f32>, Vec<usize>);

/// Rows where `hold` is false, then the held-out rows.
fn split_rows(x: &[f32], y: &[usize], hold: &[bool], d: usize) -> Rows {
    let (mut fx, mut fy, mut vx, mut vy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((row, &l), &h) in x.chunks_exact(d).zip(y).zip(hold) {
        if h {
            vx.extend_from_slice(row);
            vy.push(l);
        } else {
            fx.extend_from_slice(row);
            fy.push(l);
        }
    }
    (fx, fy, vx, vy)
}

/// A cosine-weighted vote of the `k` nearest rows of `x` for each query.
fn knn_predict(
    x: &[f32],
    y: &[usize],
    queries: &[f32],
    d: usize,
    k: usize,
    n: usize,
) -> Vec<usize> {
    queries
        .par_chunks(d)
        .map(|q| {
            let sims = cosines(q, x);
            let mut idx: Vec<usize> = (0..sims.len()).collect();
            let k = k.min(idx.len());
            if k == 0 {
                return 0;
            }
            idx.select_nth_unstable_by(k - 1, |&a, &b| sims[b].total_cmp(&sims[a]));
            let mut votes = vec![0f32; n];
            for &i in &idx[..k] {
                votes[y[i]] += sims[i].max(0.0) + 1e-6;
            }
            argmax(&votes).unwrap_or(0)
        })
        .collect()
}

/// F1 of class `c`.
fn f1(pred: &[usize], truth: &[usize], c: usize) -> f64 {
    let tp = pred
        .iter()
        .zip(truth)
        .filter(|&(&p, &t)| p == c && t == c)
        .count() as f64;
    let fp = pred
        .iter()
        .zip(truth)
        .filter(|&(&p, &t)| p == c && t != c)
        .count() as f64;
    let fne = pred
        .iter()
        .zip(truth)
        .filter(|&(&p, &t)| p != c && t == c)
        .count() as f64;
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fne)
}

fn scores(pred: &[usize], truth: &[usize], n: usize) -> Scores {
    let correct = pred.iter().zip(truth).filter(|(p, t)| p == t).count();
    let present: Vec<usize> = (0..n).filter(|c| truth.contains(c)).collect();
    Scores {
        accuracy: correct as f64 / truth.len().max(1) as f64,
        macro_f1: present.iter().map(|&c| f1(pred, truth, c)).sum::<f64>()
            / present.len().max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_of_known_predictions() {
        let truth = [0, 0, 1, 1];
        let pred = [0, 1, 1, 1];
        let s = scores(&pred, &truth, 2);
        assert!((s.accuracy - 0.75).abs() < 1e-12);
        // class 0: tp 1, fn 1 -> 2/3; class 1: tp 2, fp 1 -> 4/5.
        assert!((s.macro_f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn knn_votes_by_nearest_rows() {
        let x = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0];
        let y = [0, 0, 1];
        assert_eq!(knn_predict(&x, &y, &[1.0, 0.0, 0.0, 1.0], 2, 1, 2), [0, 1]);
    }
}
