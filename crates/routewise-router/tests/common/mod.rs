//! Synthetic routing data for the integration tests: prompts built from two
//! vocabularies (cluster 0: arithmetic, cluster 1: cooking); model `a` is right on
//! cluster 0, model `b` on cluster 1, model `c` is cheap and right half the time.
#![allow(dead_code)]
#![cfg(test)]

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_data::{Dataset, Outcome, Record, Split};
use routewise_features::{AnyFeaturizer, TfidfConfig, TfidfFeaturizer};
use routewise_router::{fit_router, Artifact, Catalog, RouterConfigs, RouterKind, TrainSet};

/// A `kind` router trained on `ds`'s train split with a 32-dimension TF-IDF featurizer,
/// bundled as an artifact.
pub fn trained(ds: &Dataset, kind: RouterKind) -> Artifact {
    let train: Vec<&Record> = ds.train().collect();
    let texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let f = AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(
        &texts,
        TfidfConfig {
            dim: 32,
            ..TfidfConfig::default()
        },
    ));
    let ts = TrainSet::from_records(&train, ds.models.len(), &f);
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    let router = fit_router(kind, &ts, &catalog, &RouterConfigs::default()).unwrap();
    Artifact::new("synthetic.jsonl", f, router, catalog, ts.len())
}

const MATH: &[&str] = &[
    "integral",
    "derivative",
    "equation",
    "solve",
    "matrix",
    "prime",
    "sum",
    "polynomial",
    "logarithm",
    "fraction",
    "algebra",
    "theorem",
    "square",
    "root",
    "variable",
];
const FOOD: &[&str] = &[
    "recipe", "bake", "flour", "oven", "garlic", "simmer", "sauce", "butter", "onion", "roast",
    "pasta", "season", "whisk", "dough", "boil",
];
const COMMON: &[&str] = &[
    "the", "a", "of", "please", "how", "what", "is", "with", "and",
];

pub fn prompt(cluster: usize, rng: &mut ChaCha8Rng) -> String {
    let vocab = if cluster == 0 { MATH } else { FOOD };
    let n = rng.gen_range(6..14);
    (0..n)
        .map(|_| {
            if rng.gen_bool(0.35) {
                *COMMON.choose(rng).unwrap()
            } else {
                *vocab.choose(rng).unwrap()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` prompts alternating clusters; `split` every 5th is test. Model `b` is missing on
/// every 7th prompt (missing models are normal).
pub fn dataset(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let records = (0..n)
        .map(|i| {
            let cl = i % 2;
            let p = prompt(cl, &mut rng);
            let tok = routewise_data::estimate_tokens(&p);
            let o = |score: f64, price: f64| {
                Some(Outcome {
                    score,
                    cost_usd: price * f64::from(tok + 10) / 1e6,
                    input_tokens: tok,
                    output_tokens: 10,
                    answer: Default::default(),
                })
            };
            let c_right = rng.gen_bool(0.5);
            Record {
                id: format!("p{i}"),
                task: format!("cluster{cl}"),
                prompt: p,
                split: if i % 5 == 4 {
                    Split::Test
                } else {
                    Split::Train
                },
                reference: None,
                outcomes: vec![
                    o(if cl == 0 { 1.0 } else { 0.0 }, 10.0),
                    if i % 7 == 3 {
                        None
                    } else {
                        o(if cl == 1 { 1.0 } else { 0.0 }, 8.0)
                    },
                    o(if c_right { 1.0 } else { 0.0 }, 0.5),
                ],
            }
        })
        .collect();
    Dataset {
        name: "synthetic".into(),
        models: vec!["a".into(), "b".into(), "c".into()],
        records,
        answers: Vec::new(),
        warnings: Vec::new(),
    }
}
