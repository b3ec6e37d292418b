//! The built-in compact static model (`static-mini`, the default featurizer): it loads
//! with no download, embeds sensibly, survives the artifact round trip, refuses an
//! artifact made with another built-in model, and tokenizes exactly like the full model's
//! `tokenizer.json` (that part needs `routewise models fetch static` and the shared data;
//! it prints why it skips otherwise).
#![cfg(feature = "static-embed")]
#![cfg(test)]

use std::path::Path;

use routewise_features::weights::{model_dir, STATIC_MINILM};
use routewise_features::{
    AnyFeaturizer, BuiltinStaticFeaturizer, Featurizer, FeaturizerKind, StaticFeaturizer,
};

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

/// The compact model keeps the whole vocabulary, so its tokenizer (built from that
/// vocabulary) must give the full model's ids, fast path and `tokenizers` path alike.
#[test]
fn tokenizes_exactly_like_the_full_model() {
    let dir = model_dir(STATIC_MINILM.name);
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "SKIPPED: static model absent in {} (run `routewise models fetch static`)",
            dir.display()
        );
        return;
    }
    let full = StaticFeaturizer::open("static").unwrap();
    let mini = BuiltinStaticFeaturizer::new().unwrap();
    let mut texts: Vec<String> = [
        "Café, naïve, résumé: accents and UTF-8 text should tokenize correctly.",
        "日本語のテキストと English mixed 123",
        "Ünïcödé ½ — “quotes” …",
        "[CLS] special [SEP] [MASK]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    for file in ["routerbench-3k.jsonl", "mmlu-pro-12k.jsonl"] {
        match std::fs::read_to_string(data.join(file)) {
            Ok(text) => texts.extend(text.lines().step_by(40).map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["prompt"].as_str().unwrap().to_string()
            })),
            Err(_) => eprintln!("SKIP part: {file} is absent"),
        }
    }
    for t in &texts {
        assert_eq!(
            mini.token_ids(t).unwrap(),
            full.token_ids(t).unwrap(),
            "{t}"
        );
        assert_eq!(
            mini.reference_token_ids(t).unwrap(),
            full.reference_token_ids(t).unwrap(),
            "{t}"
        );
    }
}
