//! Single-prompt latency of the embedding featurizers for a 128-token prompt:
//! `static-mini` (built in: int8 lookup + mean), `static` (f32 lookup + mean) and
//! `minilm` (candle BERT, no batching), and the time to load the built-in model.
//! `static` and `minilm` need the weights (`routewise models fetch static` / `minilm`); a
//! missing model is reported and its benchmark skipped.
//!
//! Run: `cargo bench -p routewise-features --features minilm --bench embed`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use criterion::{criterion_group, criterion_main, Criterion};
use routewise_features::{BuiltinStaticFeaturizer, Featurizer, MiniLmFeaturizer, StaticFeaturizer};

const BASE: &str = "A 45-year-old patient presents to the emergency department with sudden \
onset chest pain radiating to the left arm, shortness of breath and sweating. The pain began \
two hours ago while climbing stairs. Past history includes hypertension, type 2 diabetes and \
smoking. Blood pressure is 150/95 mmHg, pulse 110 per minute. Which of the following is the \
most appropriate next step in management, and why would the alternatives be inferior? \
Consider electrocardiography, troponin measurement, aspirin, nitroglycerin, beta blockers, \
anticoagulation, reperfusion therapy, imaging studies and the timing of each intervention \
in relation to the onset of symptoms and the available resources of the hospital.";

/// The longest word-prefix of BASE (repeated) with exactly `n` tokens by `count`.
fn prompt_with_tokens(n: usize, count: impl Fn(&str) -> usize) -> String {
    let words: Vec<&str> = BASE.split_whitespace().cycle().take(400).collect();
    let mut best = String::new();
    for k in 1..words.len() {
        let t = words[..k].join(" ");
        match count(&t) {
            c if c == n => return t,
            c if c > n => break,
            _ => best = t,
        }
    }
    best
}

fn bench(c: &mut Criterion) {
    let mini = BuiltinStaticFeaturizer::new().unwrap();
    let p = prompt_with_tokens(128, |t| mini.token_ids(t).unwrap().len());
    let mut out = vec![0.0; mini.dim()];
    c.bench_function("static_mini_128_tokens", |b| {
        b.iter(|| mini.featurize_into(&p, &mut out))
    });
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("static_mini_load", |b| {
        b.iter(|| BuiltinStaticFeaturizer::new().unwrap())
    });
    g.finish();
    match StaticFeaturizer::open("static") {
        Ok(f) => {
            let p = prompt_with_tokens(128, |t| f.token_ids(t).unwrap().len());
            eprintln!(
                "static: {} tokens, {} bytes",
                f.token_ids(&p).unwrap().len(),
                p.len()
            );
            let mut out = vec![0.0; f.dim()];
            c.bench_function("static_128_tokens", |b| {
                b.iter(|| f.featurize_into(&p, &mut out))
            });
        }
        Err(e) => eprintln!("SKIPPED static: {e}"),
    }
    match MiniLmFeaturizer::open("minilm") {
        Ok(f) => {
            let p = prompt_with_tokens(128, |t| f.token_ids(t).unwrap().len());
            eprintln!(
                "minilm: {} tokens incl. [CLS]/[SEP]",
                f.token_ids(&p).unwrap().len()
            );
            let mut out = vec![0.0; f.dim()];
            let mut g = c.benchmark_group("minilm");
            g.sample_size(30);
            g.bench_function("minilm_128_tokens", |b| {
                b.iter(|| f.featurize_into(&p, &mut out))
            });
            g.finish();
        }
        Err(e) => eprintln!("SKIPPED minilm: {e}"),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
