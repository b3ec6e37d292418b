//! Quality-vs-latency sweep for choosing the TF-IDF dimension and the kNN settings.
//!
//! For every (dim, knn config) it fits on the `train` split and reports, on `test`:
//! `q@0` = mean score of the model chosen at lambda = 0 (quality first, restricted to
//! the models evaluated on that prompt), `brier` = mean squared error of the predicted
//! scores, and the p50 latency of featurize + knn + lambda selection per prompt.
//!
//! `cargo bench -p routewise-router --bench knn_quality` (env: `RW_DATA` = dataset
//! path, default `../shared/data/mmlu-pro-12k.jsonl`; `RW_DIMS` = comma list,
//! default `128,256,512`; `RW_NPROBES` = comma list of IVF probes; `RW_QUICK=1` =
//! fewer configs).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use routewise_data::{Dataset, Record};
use routewise_features::{Featurizer, TfidfConfig, TfidfFeaturizer};
use routewise_router::{Catalog, KnnConfig, KnnIndex, KnnRouter, Policy, Router, TrainSet};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let data = std::env::var("RW_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("mmlu-pro-12k.jsonl"));
    if !data.exists() {
        println!("skipping: {} is absent", data.display());
        return;
    }
    let ds = Dataset::load(&data).expect("load");
    let train: Vec<&Record> = ds.train().collect();
    let test: Vec<&Record> = ds.test().collect();
    let n_models = ds.models.len();
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    println!(
        "{}: {} train, {} test, {} models",
        ds.name,
        train.len(),
        test.len(),
        n_models
    );
    let dims: Vec<usize> = std::env::var("RW_DIMS")
        .unwrap_or_else(|_| "128,256,512".into())
        .split(',')
        .map(|d| d.trim().parse().expect("dim"))
        .collect();
    let quick = std::env::var("RW_QUICK").is_ok();
    let mut configs: Vec<(String, KnnConfig)> = Vec::new();
    let base = KnnConfig {
        tune: false,
        ..KnnConfig::default()
    };
    configs.push(("ivf default (tuned)".into(), KnnConfig::default()));
    configs.push((
        "exact tuned".into(),
        KnnConfig {
            index: KnnIndex::Exact,
            ..KnnConfig::default()
        },
    ));
    for &k in if quick {
        &[20usize][..]
    } else {
        &[10usize, 20, 40, 80][..]
    } {
        configs.push((
            format!("exact k={k}"),
            KnnConfig {
                k,
                index: KnnIndex::Exact,
                ..base.clone()
            },
        ));
    }
    let nprobes: Vec<usize> = match std::env::var("RW_NPROBES") {
        Ok(v) => v
            .split(',')
            .map(|x| x.trim().parse().expect("nprobe"))
            .collect(),
        Err(_) if quick => vec![12],
        Err(_) => vec![4, 8, 12, 20],
    };
    for nprobe in nprobes {
        configs.push((
            format!("ivf nprobe={nprobe} tuned"),
            KnnConfig {
                index: KnnIndex::Ivf { nlist: 0, nprobe },
                ..KnnConfig::default()
            },
        ));
    }
    if !quick {
        for (name, power, pw) in [
            ("uniform", 0.0, 1.0),
            ("power=2", 2.0, 1.0),
            ("prior=0", 1.0, 0.0),
            ("prior=3", 1.0, 3.0),
            ("prior=10", 1.0, 10.0),
        ] {
            configs.push((
                format!("exact k=40 {name}"),
                KnnConfig {
                    k: 40,
                    index: KnnIndex::Exact,
                    power,
                    prior_weight: pw,
                    ..base.clone()
                },
            ));
        }
    }
    // Reference: best single model's test quality.
    let best_single = (0..n_models)
        .map(|m| {
            let s: Vec<f64> = test
                .iter()
                .filter_map(|r| r.outcomes[m].map(|o| o.score))
                .collect();
            s.iter().sum::<f64>() / s.len().max(1) as f64
        })
        .fold(0.0f64, f64::max);
    println!("best single test quality {best_single:.4}");
    println!(
        "{:>5} {:<28} {:>7} {:>7} {:>9} {:>9}",
        "dim", "knn", "q@0", "brier", "p50_us", "fit_s"
    );
    for &dim in &dims {
        let t0 = Instant::now();
        let texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
        let f = TfidfFeaturizer::fit(
            &texts,
            TfidfConfig {
                dim,
                ..TfidfConfig::default()
            },
        );
        let ts = TrainSet::from_records(&train, n_models, &f);
        let feat_s = t0.elapsed().as_secs_f64();
        let test_texts: Vec<&str> = test.iter().map(|r| r.prompt.as_str()).collect();
        let test_x = f.featurize_batch(&test_texts);
        for (name, cfg) in &configs {
            let t1 = Instant::now();
            let r = KnnRouter::fit(&ts, cfg).expect("fit");
            let fit_s = t1.elapsed().as_secs_f64() + feat_s;
            let name = if cfg.tune {
                format!("{name} k={} p={}", r.config().k, r.config().power)
            } else {
                name.clone()
            };
            let mut scores = vec![0.0; n_models];
            let (mut q, mut brier, mut nb) = (0.0, 0.0, 0usize);
            for (i, rec) in test.iter().enumerate() {
                r.predict_scores(&test_x[i * dim..(i + 1) * dim], &mut scores);
                let best = (0..n_models)
                    .filter(|&m| rec.outcomes[m].is_some())
                    .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
                    .unwrap();
                q += rec.outcomes[best].unwrap().score;
                for (m, o) in rec.outcomes.iter().enumerate() {
                    if let Some(o) = o {
                        brier += (scores[m] - o.score).powi(2);
                        nb += 1;
                    }
                }
            }
            // Latency: featurize + predict + rank, one prompt at a time.
            let mut lat: Vec<f64> = Vec::with_capacity(test.len());
            let mut costs = vec![0.0; n_models];
            let mut idx = Vec::new();
            for rec in test.iter().take(2000) {
                let t = Instant::now();
                let x = f.featurize(&rec.prompt);
                r.predict_scores(&x, &mut scores);
                catalog.expected_costs(rec.input_tokens(), &mut costs);
                Policy::Lambda(0.0).rank_into(&scores, &costs, &mut idx);
                std::hint::black_box(&idx);
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "{:>5} {:<28} {:>7.4} {:>7.4} {:>9.1} {:>9.2}",
                dim,
                name,
                q / test.len() as f64,
                brier / nb.max(1) as f64,
                lat[lat.len() / 2],
                fit_s
            );
        }
    }
}
