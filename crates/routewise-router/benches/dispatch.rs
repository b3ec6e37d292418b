//! The balanced-assignment solvers on a burst: 64 requests over 30 deployments, each with
//! room for 2 (so that 4 go unassigned and the capacities bind), utilities drawn the way
//! a router's predictions look (a per-deployment quality plus per-request noise).
//!
//! `cargo bench -p routewise-router --bench dispatch`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_router::dispatch::{Assigner, Exact, Sinkhorn};

const N: usize = 64;
const D: usize = 30;

fn batch() -> (Vec<f64>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let base: Vec<f64> = (0..D).map(|_| rng.gen_range(0.3..0.9)).collect();
    let u = (0..N * D)
        .map(|k| base[k % D] + rng.gen_range(-0.1..0.1))
        .collect();
    (u, vec![2; D])
}

fn solvers(c: &mut Criterion) {
    let (u, cap) = batch();
    let mut out = Vec::with_capacity(N);
    let mut sinkhorn = Sinkhorn::default();
    c.bench_function("sinkhorn 64x30 (warm)", |b| {
        b.iter(|| {
            sinkhorn.assign(black_box(&u), N, &cap, &mut out);
            black_box(&out);
        })
    });
    c.bench_function("sinkhorn 64x30 (cold)", |b| {
        b.iter(|| {
            let mut s = Sinkhorn::default();
            s.assign(black_box(&u), N, &cap, &mut out);
            black_box(&out);
        })
    });
    c.bench_function("exact 64x30", |b| {
        b.iter(|| {
            Exact.assign(black_box(&u), N, &cap, &mut out);
            black_box(&out);
        })
    });
}

criterion_group!(benches, solvers);
criterion_main!(benches);
