//! kNN and the baselines through the public API (featurizer, catalog, fit_router,
//! engine) on two prompt clusters where the right model is known.
#![cfg(test)]

mod common;

use routewise_data::Record;
use routewise_features::{AnyFeaturizer, TfidfConfig, TfidfFeaturizer};
use routewise_router::{
    fit_router, Catalog, Engine, KnnIndex, Policy, RouterConfigs, RouterKind, TrainSet,
};

fn engine(kind: RouterKind, cfg: &RouterConfigs) -> (Engine, Vec<Record>) {
    let ds = common::dataset(600, 1);
    let train: Vec<&Record> = ds.train().collect();
    let texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let f = AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(
        &texts,
        TfidfConfig {
            dim: 64,
            ..TfidfConfig::default()
        },
    ));
    let ts = TrainSet::from_records(&train, ds.models.len(), &f);
    assert_eq!(ts.len(), 480);
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    let router = fit_router(kind, &ts, &catalog, cfg).unwrap();
    assert_eq!(router.name(), kind.name());
    let test = ds.test().cloned().collect();
    (
        Engine {
            featurizer: f,
            router,
            catalog,
        },
        test,
    )
}

/// Share of test prompts routed (quality first) to the model that is right on them.
fn accuracy(e: &Engine, test: &[Record]) -> f64 {
    let right = test
        .iter()
        .filter(|r| {
            let d = e.decide(&r.prompt, r.input_tokens(), Policy::Lambda(0.0));
            let want = if r.task == "cluster0" { 0 } else { 1 };
            d.chosen == want
        })
        .count();
    right as f64 / test.len() as f64
}

#[test]
fn knn_routes_each_cluster_to_its_model() {
    for index in [
        KnnIndex::Exact,
        KnnIndex::Ivf {
            nlist: 8,
            nprobe: 2,
        },
    ] {
        let mut cfg = RouterConfigs::default();
        cfg.knn.index = index;
        let (e, test) = engine(RouterKind::Knn, &cfg);
        let acc = accuracy(&e, &test);
        assert!(acc >= 0.95, "{index:?}: accuracy {acc}");
    }
}

#[test]
fn knn_predicted_scores_track_the_truth_and_costs_come_from_the_catalog() {
    let (e, test) = engine(RouterKind::Knn, &RouterConfigs::default());
    let r = test.iter().find(|r| r.task == "cluster1").unwrap();
    let d = e.decide(&r.prompt, r.input_tokens(), Policy::Lambda(0.0));
    assert!(d.scores[1] > 0.8 && d.scores[0] < 0.2, "{:?}", d.scores);
    assert!((0.2..0.8).contains(&d.scores[2]), "{:?}", d.scores);
    // Catalog prices were fitted from the outcomes: 10, 8 and 0.5 USD / Mtok.
    for (m, price) in [(0, 10.0), (1, 8.0), (2, 0.5)] {
        let info = &e.catalog.models[m];
        assert!((info.input_per_mtok - price).abs() < 1e-6, "{info:?}");
    }
    // A large lambda sends everything to the cheap model.
    let d = e.decide(&r.prompt, r.input_tokens(), Policy::Lambda(1e6));
    assert_eq!(d.chosen, 2);
}

#[test]
fn baselines_behave_as_documented() {
    let cfg = RouterConfigs::default();
    // best-single: one model for every prompt (a, b or c: all have mean ~0.5).
    let (e, test) = engine(RouterKind::BestSingle, &cfg);
    let first = e.decide(&test[0].prompt, 10, Policy::Lambda(0.0)).chosen;
    assert!(test
        .iter()
        .all(|r| e.decide(&r.prompt, 10, Policy::Lambda(0.0)).chosen == first));
    // cheapest: model c under every policy.
    let (e, test) = engine(RouterKind::Cheapest, &cfg);
    for p in [
        Policy::Lambda(0.0),
        Policy::Lambda(100.0),
        Policy::BudgetUsd(1.0),
        Policy::BudgetUsd(0.0),
    ] {
        assert!(test.iter().all(|r| e.decide(&r.prompt, 10, p).chosen == 2));
    }
    // random: deterministic per prompt, and spread over the models.
    let (e, test) = engine(RouterKind::Random, &cfg);
    let choices: Vec<usize> = test
        .iter()
        .map(|r| e.decide(&r.prompt, 10, Policy::Lambda(0.0)).chosen)
        .collect();
    let again: Vec<usize> = test
        .iter()
        .map(|r| e.decide(&r.prompt, 10, Policy::Lambda(0.0)).chosen)
        .collect();
    assert_eq!(choices, again);
    for m in 0..3 {
        let share = choices.iter().filter(|&&c| c == m).count() as f64 / choices.len() as f64;
        assert!((0.2..0.47).contains(&share), "model {m}: {share}");
    }
}

#[test]
fn router_kind_names_round_trip() {
    for k in RouterKind::ALL {
        assert_eq!(k.to_string().parse::<RouterKind>().unwrap(), k);
    }
    assert_eq!(
        "BEST-SINGLE".parse::<RouterKind>().unwrap(),
        RouterKind::BestSingle
    );
    let e = "oracle".parse::<RouterKind>().unwrap_err().to_string();
    assert!(e.contains("unknown router `oracle`"), "{e}");
    assert_eq!(RouterKind::ALL_LEARNED.len(), 5);
}
