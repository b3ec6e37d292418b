//! kNN on the shared routerbench-3k data: the artifact stays small and round-trips.
#![cfg(test)]

use std::path::PathBuf;

use routewise_data::{Dataset, Record};
use routewise_features::{AnyFeaturizer, TfidfConfig, TfidfFeaturizer};
use routewise_router::{
    fit_router, Artifact, Catalog, Policy, RouterConfigs, RouterKind, TrainSet,
};

#[test]
fn routerbench_knn_artifact_is_small_and_round_trips() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/routerbench-3k.jsonl");
    if !path.exists() {
        println!("skipping: {} is absent", path.display());
        return;
    }
    let ds = Dataset::load(&path).unwrap();
    let train: Vec<&Record> = ds.train().collect();
    let texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let f = AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(&texts, TfidfConfig::default()));
    let ts = TrainSet::from_records(&train, ds.models.len(), &f);
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    // The fitted prices order the models sensibly: gpt-4 costs more than mistral-7b.
    let price = |name: &str| catalog.models[catalog.index(name).unwrap()].expected_cost(500);
    assert!(price("gpt-4-1106-preview") > 5.0 * price("mistralai/mistral-7b-chat"));
    let router = fit_router(RouterKind::Knn, &ts, &catalog, &RouterConfigs::default()).unwrap();
    let a = Artifact::new(&ds.name, f, router, catalog, ts.len());
    let bytes = a.to_bytes().unwrap();
    assert!(bytes.len() < 5_000_000, "artifact is {} bytes", bytes.len());
    let b = Artifact::from_bytes(&bytes).unwrap();
    let (ea, eb) = (a.into_engine(), b.into_engine());
    for r in ds.test().take(100) {
        let p = Policy::Lambda(10.0);
        assert_eq!(
            ea.decide(&r.prompt, r.input_tokens(), p).ranking,
            eb.decide(&r.prompt, r.input_tokens(), p).ranking
        );
    }
}
