//! Routing latency on real data: featurize + kNN over every training prompt of
//! mmlu-pro-12k (~9.6k) + lambda selection, one prompt at a time.
//!
//! `cargo bench -p routewise-router --bench route`
//!
//! Besides criterion's estimates, prints the p50/p90/p99 of single-call latencies over
//! the test prompts (each call timed separately), for the default IVF index and exact
//! search, and the featurizer alone.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use routewise_data::{Dataset, Record};
use routewise_features::{AnyFeaturizer, Featurizer, TfidfConfig, TfidfFeaturizer};
use routewise_router::{
    fit_router, Artifact, Catalog, Engine, KnnIndex, Policy, RouterConfigs, RouterKind, TrainSet,
};

struct Setup {
    engines: Vec<(String, Engine)>,
    prompts: Vec<(String, u32)>,
}

fn setup() -> Option<Setup> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mmlu-pro-12k.jsonl");
    if !path.exists() {
        println!("skipping the route bench: {} is absent", path.display());
        return None;
    }
    let ds = Dataset::load(&path).expect("load");
    let train: Vec<&Record> = ds.train().collect();
    let texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let f = AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(&texts, TfidfConfig::default()));
    let ts = TrainSet::from_records(&train, ds.models.len(), &f);
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    let mut engines = Vec::new();
    for (name, index) in [
        ("knn-ivf(default)", None),
        ("knn-exact", Some(KnnIndex::Exact)),
    ] {
        let mut cfg = RouterConfigs::default();
        if let Some(i) = index {
            cfg.knn.index = i;
        }
        let router = fit_router(RouterKind::Knn, &ts, &catalog, &cfg).expect("fit");
        let bytes = Artifact::new(
            &ds.name,
            f.clone(),
            router.clone(),
            catalog.clone(),
            ts.len(),
        )
        .to_bytes()
        .expect("artifact")
        .len();
        println!("{name}: artifact {:.2} MB", bytes as f64 / 1e6);
        engines.push((
            name.to_string(),
            Engine {
                featurizer: f.clone(),
                router,
                catalog: catalog.clone(),
            },
        ));
    }
    let prompts = ds
        .test()
        .map(|r| (r.prompt.clone(), r.input_tokens()))
        .collect();
    println!(
        "mmlu-pro-12k: {} training prompts, {} models, dim {}",
        ts.len(),
        ds.models.len(),
        f.dim()
    );
    Some(Setup { engines, prompts })
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (p(0.5), p(0.9), p(0.99))
}

fn bench(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let policy = Policy::Lambda(0.0);
    // Per-call percentiles over all test prompts (after one warm-up pass).
    for (name, e) in &s.engines {
        for (p, t) in &s.prompts {
            black_box(e.decide(p, *t, policy));
        }
        let lat: Vec<f64> = s
            .prompts
            .iter()
            .map(|(p, t)| {
                let t0 = Instant::now();
                black_box(e.decide(p, *t, policy));
                t0.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let (p50, p90, p99) = percentiles(lat);
        println!("route {name}: p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us");
    }
    let f = &s.engines[0].1.featurizer;
    let lat: Vec<f64> = s
        .prompts
        .iter()
        .map(|(p, _)| {
            let t0 = Instant::now();
            black_box(f.featurize(p));
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let (p50, p90, p99) = percentiles(lat);
    let mean_len =
        s.prompts.iter().map(|(p, _)| p.len()).sum::<usize>() as f64 / s.prompts.len() as f64;
    println!(
        "featurize only: p50 {p50:.1} us, p90 {p90:.1} us, p99 {p99:.1} us (mean prompt {mean_len:.0} bytes)"
    );
    let p500: String = s.prompts[0].0.chars().cycle().take(500).collect();
    c.bench_function("featurize 500-char prompt", |b| {
        b.iter(|| black_box(f.featurize(black_box(&p500))))
    });

    let mut g = c.benchmark_group("route one prompt (mmlu-pro-12k)");
    for (name, e) in &s.engines {
        let mut i = 0usize;
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let (p, t) = &s.prompts[i % s.prompts.len()];
                i += 1;
                black_box(e.decide(p, *t, policy))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
