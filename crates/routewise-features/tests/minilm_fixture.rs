//! MiniLM (candle) against the reference embeddings in `fixtures/minilm_reference.json`
//! (made by `scripts/minilm_reference.py`). Needs the weights: `routewise models fetch
//! minilm` (CI does this first); without them the tests print why they skip.
#![cfg(feature = "minilm")]
#![cfg(test)]

use routewise_features::pooling::cosine;
use routewise_features::weights::{model_dir, MINILM};
use routewise_features::{Featurizer, MiniLmFeaturizer};

fn reference() -> Vec<(String, usize, Vec<f32>)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["text"].as_str().unwrap().to_string(),
                s["n_tokens"].as_u64().unwrap() as usize,
                s["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect()
}

fn open_or_skip() -> Option<MiniLmFeaturizer> {
    let dir = model_dir(MINILM.name);
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "SKIPPED: MiniLM weights not found in {} (run `routewise models fetch minilm`)",
            dir.display()
        );
        return None;
    }
    Some(MiniLmFeaturizer::open("minilm").unwrap())
}

#[test]
fn minilm_matches_reference_embeddings() {
    let Some(f) = open_or_skip() else { return };
    let refs = reference();
    assert_eq!(refs.len(), 20);
    let mut min_cos = f32::INFINITY;
    for (text, _, want) in &refs {
        let got = f.featurize(text);
        assert_eq!(got.len(), 384);
        let c = cosine(&got, want);
        assert!(c >= 0.999, "cosine {c} < 0.999 for {text:?}");
        min_cos = min_cos.min(c);
        let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    eprintln!("minilm vs reference: min cosine over 20 sentences = {min_cos:.6}");
}

#[test]
fn batched_equals_single_despite_padding() {
    let Some(f) = open_or_skip() else { return };
    let refs = reference();
    let texts: Vec<&str> = refs.iter().map(|r| r.0.as_str()).collect();
    let batch = f.featurize_batch(&texts);
    for (i, (text, _, want)) in refs.iter().enumerate() {
        let row = &batch[i * 384..(i + 1) * 384];
        let c = cosine(row, want);
        assert!(c >= 0.999, "batched cosine {c} for {text:?}");
        let single = f.featurize(text);
        assert!(
            cosine(row, &single) > 0.9999,
            "batch vs single differ for {text:?}"
        );
    }
}

#[test]
fn artifact_round_trip_stores_hashes_not_weights() {
    let Some(f) = open_or_skip() else { return };
    let any = routewise_features::AnyFeaturizer::MiniLm(f);
    let text = "Which of the following is a prime number? (A) 21 (B) 27 (C) 29 (D) 33";
    let before = any.featurize(text);
    let bytes = bincode::serialize(&any).unwrap();
    assert!(bytes.len() < 4096, "{} bytes", bytes.len());
    let back: routewise_features::AnyFeaturizer = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back.name(), "minilm");
    back.load().unwrap();
    assert_eq!(back.featurize(text), before);
}
