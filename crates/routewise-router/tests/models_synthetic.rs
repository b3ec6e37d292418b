//! The learned routers `linear`, `mlp` and `mf` on synthetic data whose right answer is
//! known: prompts from two clusters, model A right on the first, model B on the second.
#![cfg(test)]

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_router::{
    AnyRouter, EnsembleConfig, EnsembleRouter, LinearConfig, LinearRouter, MfConfig, MfRouter,
    MlpConfig, MlpRouter, Router, RouterConfigs, RouterKind, TrainSet,
};

const DIM: usize = 32;

/// Unit-norm prompt features around one of two random cluster centres, noisy.
struct Clusters {
    centres: [Vec<f32>; 2],
}

impl Clusters {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut c = || normalised((0..DIM).map(|_| rng.gen_range(-1.0f32..1.0)).collect());
        Clusters {
            centres: [c(), c()],
        }
    }

    fn sample(&self, cluster: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        normalised(
            self.centres[cluster]
                .iter()
                .map(|c| c + rng.gen_range(-0.25f32..0.25))
                .collect(),
        )
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// `n` prompts, alternating clusters. Scores per model come from `score(model, cluster)`
/// (`NaN` = missing); every 10th outcome of A and B is flipped (label noise).
fn make_set(
    clusters: &Clusters,
    n: usize,
    n_models: usize,
    seed: u64,
    score: impl Fn(usize, usize) -> f64,
) -> (TrainSet, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut features = Vec::with_capacity(n * DIM);
    let mut scores = Vec::with_capacity(n * n_models);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let cl = i % 2;
        features.extend(clusters.sample(cl, &mut rng));
        for m in 0..n_models {
            let mut s = score(m, cl);
            if m < 2 && i % 10 == 7 && !s.is_nan() {
                s = 1.0 - s;
            }
            scores.push(s);
        }
        labels.push(cl);
    }
    let set = TrainSet {
        features,
        dim: DIM,
        costs: vec![0.001; n * n_models],
        scores,
        input_tokens: vec![100; n],
        n_models,
    };
    (set, labels)
}

/// Model 0 (A) is right on cluster 0, model 1 (B) on cluster 1; model 2 scores 0.4
/// everywhere.
fn two_cluster_scores(m: usize, cluster: usize) -> f64 {
    match m {
        0 => f64::from(cluster == 0),
        1 => f64::from(cluster == 1),
        _ => 0.4,
    }
}

fn fitted(train: &TrainSet, seed: u64) -> Vec<(&'static str, Box<dyn Router>)> {
    vec![
        (
            "linear",
            Box::new(LinearRouter::fit(train, &LinearConfig::default()).unwrap()),
        ),
        (
            "mlp",
            Box::new(
                MlpRouter::fit(
                    train,
                    &MlpConfig {
                        seed,
                        ..MlpConfig::default()
                    },
                )
                .unwrap(),
            ),
        ),
        (
            "mf",
            Box::new(
                MfRouter::fit(
                    train,
                    &MfConfig {
                        seed,
                        ..MfConfig::default()
                    },
                )
                .unwrap(),
            ),
        ),
        (
            // Seeded through `RouterConfigs::seed` (mixed into the mlp's seed).
            "ensemble",
            Box::new(
                EnsembleRouter::fit(
                    train,
                    &RouterConfigs {
                        seed,
                        ..RouterConfigs::default()
                    },
                )
                .unwrap(),
            ),
        ),
    ]
}

#[test]
fn ensemble_predicts_the_mean_of_its_members() {
    let clusters = Clusters::new(11);
    let (train, _) = make_set(&clusters, 200, 3, 12, two_cluster_scores);
    let (test, _) = make_set(&clusters, 30, 3, 13, two_cluster_scores);
    let cfg = RouterConfigs {
        ensemble: EnsembleConfig {
            members: vec![RouterKind::Knn, RouterKind::Linear, RouterKind::Mf],
        },
        ..RouterConfigs::default()
    };
    let e = EnsembleRouter::fit(&train, &cfg).unwrap();
    assert_eq!(e.members().len(), 3);
    let (mut out, mut m) = ([0.0; 3], [0.0; 3]);
    for i in 0..test.len() {
        e.predict_scores(test.row(i), &mut out);
        let mut mean = [0.0; 3];
        for r in e.members() {
            r.predict_scores(test.row(i), &mut m);
            for (a, b) in mean.iter_mut().zip(m) {
                *a += b / 3.0;
            }
        }
        close(&out, &mean);
    }
    let bad = RouterConfigs {
        ensemble: EnsembleConfig {
            members: vec![RouterKind::Random],
        },
        ..RouterConfigs::default()
    };
    assert!(EnsembleRouter::fit(&train, &bad).is_err());
    let empty = RouterConfigs {
        ensemble: EnsembleConfig { members: vec![] },
        ..RouterConfigs::default()
    };
    assert!(EnsembleRouter::fit(&train, &empty).is_err());
}

#[test]
fn router_configs_seed_reseeds_mlp_and_mf() {
    let clusters = Clusters::new(21);
    let (train, _) = make_set(&clusters, 200, 3, 22, two_cluster_scores);
    let x = train.row(0).to_vec();
    let predict = |kind: RouterKind, seed: u64| {
        let cfg = RouterConfigs {
            seed,
            ..RouterConfigs::default()
        };
        let r = match kind {
            RouterKind::Mlp => AnyRouter::Mlp(MlpRouter::fit(&train, &cfg.mlp_seeded()).unwrap()),
            _ => AnyRouter::Mf(MfRouter::fit(&train, &cfg.mf_seeded()).unwrap()),
        };
        let mut out = [0.0; 3];
        r.predict_scores(&x, &mut out);
        out
    };
    for kind in [RouterKind::Mlp, RouterKind::Mf] {
        assert_eq!(predict(kind, 0), predict(kind, 0), "{kind}");
        assert_ne!(predict(kind, 0), predict(kind, 1), "{kind}: seed ignored");
    }
    // Seed 0 keeps the configured seeds.
    let c = RouterConfigs::default();
    assert_eq!(c.mlp_seeded().seed, c.mlp.seed);
    assert_eq!(c.mf_seeded().seed, c.mf.seed);
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

/// Share of `test` prompts where the router's best predicted model is the cluster's.
fn routing_accuracy(r: &dyn Router, test: &TrainSet, labels: &[usize]) -> f64 {
    let mut out = vec![0.0; test.n_models];
    let hits = (0..test.len())
        .filter(|&i| {
            r.predict_scores(test.row(i), &mut out);
            argmax(&out) == labels[i]
        })
        .count();
    hits as f64 / test.len() as f64
}

#[test]
fn each_router_routes_two_clusters_correctly() {
    let clusters = Clusters::new(1);
    let (train, _) = make_set(&clusters, 400, 3, 2, two_cluster_scores);
    let (test, labels) = make_set(&clusters, 400, 3, 3, two_cluster_scores);
    for (name, r) in fitted(&train, 5) {
        let acc = routing_accuracy(r.as_ref(), &test, &labels);
        assert!(acc >= 0.95, "{name}: routing accuracy {acc}");
    }
}

#[test]
fn a_model_missing_on_a_whole_cluster_gets_sane_predictions() {
    // Model 2 has no outcome on cluster 0 and scores 0.3 on cluster 1. The masked loss
    // must neither drag its predictions towards a fake target nor disturb A and B.
    let clusters = Clusters::new(7);
    let score = |m: usize, cl: usize| match m {
        2 if cl == 0 => f64::NAN,
        2 => 0.3,
        _ => two_cluster_scores(m, cl),
    };
    let (train, _) = make_set(&clusters, 400, 3, 8, score);
    let (test, labels) = make_set(&clusters, 200, 3, 9, score);
    for (name, r) in fitted(&train, 1) {
        let acc = routing_accuracy(r.as_ref(), &test, &labels);
        assert!(acc >= 0.95, "{name}: routing accuracy {acc}");
        let mut out = [0.0; 3];
        for (i, &label) in labels.iter().enumerate() {
            r.predict_scores(test.row(i), &mut out);
            assert!(
                out.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
                "{name}: {out:?}"
            );
            if label == 1 {
                assert!(
                    (out[2] - 0.3).abs() < 0.15,
                    "{name}: model 2 on cluster 1: {}",
                    out[2]
                );
            }
        }
    }
}

#[test]
fn fitting_is_deterministic_for_a_seed() {
    let clusters = Clusters::new(3);
    let (train, _) = make_set(&clusters, 200, 3, 4, two_cluster_scores);
    let (test, _) = make_set(&clusters, 20, 3, 5, two_cluster_scores);
    let predict_all = |r: &dyn Router| {
        let mut all = Vec::new();
        let mut out = [0.0; 3];
        for i in 0..test.len() {
            r.predict_scores(test.row(i), &mut out);
            all.extend_from_slice(&out);
        }
        all
    };
    let a = fitted(&train, 42);
    let b = fitted(&train, 42);
    let c = fitted(&train, 43);
    for ((name, ra), ((_, rb), (_, rc))) in a.iter().zip(b.iter().zip(c.iter())) {
        let (pa, pb, pc) = (
            predict_all(ra.as_ref()),
            predict_all(rb.as_ref()),
            predict_all(rc.as_ref()),
        );
        assert_eq!(pa, pb, "{name}: same seed, different predictions");
        if *name != "linear" {
            assert_ne!(pa, pc, "{name}: the seed has no effect");
        }
    }
}

#[test]
fn routers_survive_a_json_round_trip() {
    let clusters = Clusters::new(2);
    let (train, _) = make_set(&clusters, 100, 3, 6, two_cluster_scores);
    let x = clusters.sample(0, &mut ChaCha8Rng::seed_from_u64(0));
    let (mut o1, mut o2) = ([0.0; 3], [0.0; 3]);

    let r = LinearRouter::fit(&train, &LinearConfig::default()).unwrap();
    let back: LinearRouter = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    r.predict_scores(&x, &mut o1);
    back.predict_scores(&x, &mut o2);
    close(&o1, &o2);

    let r = MlpRouter::fit(&train, &MlpConfig::default()).unwrap();
    let back: MlpRouter = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    r.predict_scores(&x, &mut o1);
    back.predict_scores(&x, &mut o2);
    close(&o1, &o2);

    let r = MfRouter::fit(&train, &MfConfig::default()).unwrap();
    let back: MfRouter = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    r.predict_scores(&x, &mut o1);
    back.predict_scores(&x, &mut o2);
    close(&o1, &o2);
}

/// JSON keeps floats to their shortest round-trip text; allow the last bit.
fn close(a: &[f64], b: &[f64]) {
    assert!(
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9),
        "{a:?} vs {b:?}"
    );
}

/// A small random training set: `n` prompts, `dim` features in [-1, 1], `nm` models,
/// scores in [0, 1] with some missing (at least one observed).
fn arb_train() -> impl Strategy<Value = TrainSet> {
    (2usize..30, 1usize..6, 1usize..4).prop_flat_map(|(n, dim, nm)| {
        (
            prop::collection::vec(-1.0f32..1.0, n * dim),
            prop::collection::vec(prop::option::weighted(0.8, 0.0f64..=1.0), n * nm),
        )
            .prop_map(move |(features, scores)| {
                let mut scores: Vec<f64> =
                    scores.into_iter().map(|s| s.unwrap_or(f64::NAN)).collect();
                scores[0] = 0.5;
                TrainSet {
                    features,
                    dim,
                    costs: vec![0.0; n * nm],
                    scores,
                    input_tokens: vec![1; n],
                    n_models: nm,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn predictions_are_finite_and_in_unit_interval(
        train in arb_train(),
        probe in prop::collection::vec(-10.0f32..10.0, 6),
        seed in 0u64..1000,
    ) {
        let x = &probe[..train.dim];
        let routers: Vec<Box<dyn Router>> = vec![
            Box::new(LinearRouter::fit(&train, &LinearConfig { alpha: 0.01 }).unwrap()),
            Box::new(MlpRouter::fit(&train, &MlpConfig { hidden: 8, epochs: 5, seed, ..MlpConfig::default() }).unwrap()),
            Box::new(MfRouter::fit(&train, &MfConfig { embed_dim: 4, epochs: 5, seed, ..MfConfig::default() }).unwrap()),
        ];
        let mut out = vec![0.0; train.n_models];
        for r in &routers {
            r.predict_scores(x, &mut out);
            prop_assert!(out.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)), "{:?}", out);
        }
    }
}
