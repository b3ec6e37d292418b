//! The built-in compact static model (`static-mini`, the default featurizer): it loads
//! with no download, embeds sensibly, survives the artifact round trip and refuses an
//! artifact made with another built-in model. (That it tokenizes exactly like the full
//! model is in `wordpiece_equivalence.rs`.)
#![cfg(feature = "static-embed")]
#![cfg(test)]

use routewise_features::{AnyFeaturizer, BuiltinStaticFeaturizer, Featurizer, FeaturizerKind};

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn builtin_model_embeds_with_no_download() {
    let f = BuiltinStaticFeaturizer::new().unwrap();
    assert_eq!(f.dim(), 128);
    assert_eq!(f.sha256.len(), 64);
    let maths = f.featurize("Compute the derivative of x^3 sin x.");
    let maths2 = f.featurize("Find the integral of 2x cos x dx.");
    let poem = f.featurize("Write a short poem about autumn leaves.");
    let norm: f32 = maths.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    assert!(
        cos(&maths, &maths2) > cos(&maths, &poem),
        "related prompts must be closer"
    );
    assert_eq!(f.featurize(""), vec![0.0; 128]);
    // Non-ASCII text takes the tokenizers path and still embeds.
    let accents = f.featurize("Café, naïve, résumé — 東京");
    assert!(accents.iter().any(|&x| x != 0.0));
}

#[test]
fn artifact_round_trip_reloads_the_builtin_model() {
    let f = FeaturizerKind::StaticMini.fit(&[]).unwrap();
    assert_eq!(f.name(), "static-mini");
    let text = "Which planet is the largest in the solar system?";
    let before = f.featurize(text);
    let bytes = bincode::serialize(&f).unwrap();
    let back: AnyFeaturizer = bincode::deserialize(&bytes).unwrap();
    back.load().unwrap();
    assert_eq!(back.featurize(text), before);
}

#[test]
fn an_artifact_from_another_builtin_model_is_refused() {
    let f = BuiltinStaticFeaturizer::new().unwrap();
    let mut v = serde_json::to_value(&f).unwrap();
    v["sha256"] = serde_json::json!("0".repeat(64));
    let other: BuiltinStaticFeaturizer = serde_json::from_value(v).unwrap();
    let err = other.load().unwrap_err().to_string();
    assert!(err.contains("retrain"), "{err}");
    assert_eq!(other.featurize("hello"), vec![0.0; 128], "unloaded: zeros");
}

#[test]
fn fast_path_matches_the_tokenizers_crate_on_the_builtin_vocabulary() {
    let f = BuiltinStaticFeaturizer::new().unwrap();
    for text in [
        "Hello, World!!",
        "don't stop-believing...",
        "x=3*(y+2)/4; print(x)",
        "[CLS] special [SEP] [MASK]",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
    ] {
        assert_eq!(
            f.token_ids(text).unwrap(),
            f.reference_token_ids(text).unwrap(),
            "{text}"
        );
    }
}
