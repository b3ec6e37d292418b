//! What semantic answer agreement adds to a cascaded request: grouping three tier answers
//! (embedding each with the built-in static model, its guards, the cosines), for short
//! and long answers.
//!
//! `cargo bench -p routewise-signals --bench agreement`
#![allow(clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use routewise_signals::agreement::Groups;
use routewise_signals::Embedder;

const SHORT: [&str; 3] = [
    "The capital of France is Paris, which has been its capital for most of its history.",
    "Paris is the capital of France; it has been the capital for most of French history.",
    "The capital of France is Lyon, which has been its capital for most of its history.",
];

fn long(s: &str) -> String {
    std::iter::repeat_n(s, 12).collect::<Vec<_>>().join(" ")
}

fn bench(c: &mut Criterion) {
    let embedder = Embedder::builtin().expect("the built-in model");
    c.bench_function("agreement: group 3 answers of ~15 words", |b| {
        b.iter(|| {
            let mut g = Groups::new(&embedder, 0.9);
            for a in SHORT {
                black_box(g.key(black_box(a)));
            }
        })
    });
    let longer: Vec<String> = SHORT.iter().map(|s| long(s)).collect();
    c.bench_function("agreement: group 3 answers of ~180 words", |b| {
        b.iter(|| {
            let mut g = Groups::new(&embedder, 0.9);
            for a in &longer {
                black_box(g.key(black_box(a)));
            }
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
