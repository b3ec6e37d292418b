//! What a shadow router costs the request path: building the job and queueing it
//! (`Shadows::observe`), against the live decision it shadows (a kNN engine deciding the
//! same prompt). The shadow's own decision runs on its worker thread, not here.
//!
//! `cargo bench -p routewise-gateway --bench shadow`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use prometheus_client::metrics::counter::Counter;
use routewise_gateway::pipeline::shadow::{Job, Shadow, Shadows};
use routewise_router::{Catalog, Engine, ModelInfo, Policy};

fn engine() -> Engine {
    Engine::constant(
        Catalog {
            models: vec![ModelInfo::flat("cheap", 1.0), ModelInfo::flat("dear", 10.0)],
        },
        vec![0.6, 0.8],
    )
}

fn bench(c: &mut Criterion) {
    let shadows = Shadows::start(
        vec![Shadow {
            name: "next".into(),
            engine: engine(),
            policy: None,
            sample: 1.0,
            execute: None,
        }],
        Counter::default(),
        std::sync::Arc::default(),
    )
    .unwrap();
    let prompt = "Write a Python function that checks whether a number is prime, with a docstring.";
    let mut i = 0u64;
    c.bench_function("shadow/observe (build + queue the job)", |b| {
        b.iter(|| {
            i += 1;
            shadows.observe(Job {
                decision_id: format!("{i:032x}"),
                prompt: black_box(prompt).to_string(),
                input_tokens: 20,
                policy: Policy::Lambda(0.5),
                live: "dear".to_string(),
                propensity: Some(1.0),
                exec: None,
            });
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
