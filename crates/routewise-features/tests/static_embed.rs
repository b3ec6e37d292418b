//! The static featurizer on a tiny hand-made model (no download): lookup + mean pooling +
//! L2 normalisation against hand-computed vectors, the artifact (bincode) round trip, and
//! the errors for missing and altered weights.
#![cfg(feature = "static-embed")]
#![cfg(test)]

use std::path::Path;

use routewise_features::static_embed::write_f32_matrix;
use routewise_features::{AnyFeaturizer, FeatureError, Featurizer, StaticFeaturizer};

const TOKENIZER: &str = r###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
"normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},
"pre_tokenizer":{"type":"BertPreTokenizer"},"post_processor":null,"decoder":null,
"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
"vocab":{"[UNK]":0,"hello":1,"world":2,"routing":3,"rout":4,"##ing":5}}}"###;

/// Rows: [UNK]=0, hello=e0, world=e1, routing=2*e2, rout=e0+e1, ##ing=e2.
const TABLE: [f32; 18] = [
    0.0, 0.0, 0.0, //
    1.0, 0.0, 0.0, //
    0.0, 1.0, 0.0, //
    0.0, 0.0, 2.0, //
    1.0, 1.0, 0.0, //
    0.0, 0.0, 1.0,
];

fn make_model(dir: &Path) {
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).unwrap();
    write_f32_matrix(&dir.join("model.safetensors"), "embeddings", &TABLE, 3).unwrap();
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

#[test]
fn mean_of_token_vectors_normalised() {
    let dir = tempfile::tempdir().unwrap();
    make_model(dir.path());
    let f = StaticFeaturizer::open(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(f.dim(), 3);
    let h = std::f32::consts::FRAC_1_SQRT_2;
    // mean(e0, e1) -> (0.5, 0.5, 0) -> normalised.
    assert!(close(&f.featurize("Hello WORLD"), &[h, h, 0.0]));
    // mean(e0, e0, 2 e2) = (2/3, 0, 2/3).
    assert!(close(&f.featurize("hello hello routing"), &[h, 0.0, h]));
    // WordPiece split "routings" -> rout ##ing ##s? no "##s": whole word is [UNK] (zero row).
    assert_eq!(f.token_ids("routings").unwrap(), vec![0]);
    assert_eq!(f.featurize("routings"), vec![0.0; 3]);
    // Unknown-only and empty text give the zero vector.
    assert_eq!(f.featurize(""), vec![0.0; 3]);
}

#[test]
fn artifact_round_trip_reloads_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    make_model(dir.path());
    let f = AnyFeaturizer::Static(StaticFeaturizer::open(dir.path().to_str().unwrap()).unwrap());
    let before = f.featurize("hello routing world");
    let bytes = bincode::serialize(&f).unwrap();
    // The table is not in the artifact: only the model reference and file hashes.
    assert!(bytes.len() < 1024, "{} bytes", bytes.len());
    let back: AnyFeaturizer = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back.name(), "static");
    assert_eq!(back.dim(), 3);
    back.load().unwrap();
    assert_eq!(back.featurize("hello routing world"), before);
    // JSON (artifact headers, debugging) round-trips as well.
    let json = serde_json::to_string(&f).unwrap();
    let back: AnyFeaturizer = serde_json::from_str(&json).unwrap();
    back.load().unwrap();
    assert_eq!(back.featurize("hello routing world"), before);
}

#[test]
fn altered_weights_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    make_model(dir.path());
    let f = AnyFeaturizer::Static(StaticFeaturizer::open(dir.path().to_str().unwrap()).unwrap());
    let bytes = bincode::serialize(&f).unwrap();
    let mut table = TABLE;
    table[3] = 0.5;
    write_f32_matrix(
        &dir.path().join("model.safetensors"),
        "embeddings",
        &table,
        3,
    )
    .unwrap();
    let back: AnyFeaturizer = bincode::deserialize(&bytes).unwrap();
    let err = back.load().unwrap_err();
    assert!(matches!(err, FeatureError::Checksum { .. }), "{err}");
}

#[test]
fn missing_weights_error_names_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    make_model(dir.path());
    let f = AnyFeaturizer::Static(StaticFeaturizer::open(dir.path().to_str().unwrap()).unwrap());
    let bytes = bincode::serialize(&f).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let back: AnyFeaturizer = bincode::deserialize(&bytes).unwrap();
    let msg = back.load().unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("routewise models fetch"), "{msg}");
    // The registered model name resolves under the models root and names `static`
    // (no other test in this file resolves by name, so setting the variable is safe).
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var(routewise_features::weights::MODELS_ENV, empty.path());
    let msg = StaticFeaturizer::open("static").unwrap_err().to_string();
    assert!(msg.contains("routewise models fetch static"), "{msg}");
    assert!(msg.contains("static-minilm-256"), "{msg}");
}

#[test]
fn wrong_tensor_shape_is_a_bad_model() {
    let dir = tempfile::tempdir().unwrap();
    make_model(dir.path());
    // 6 x 2 instead of 6 x 3 is fine shape-wise, 2 x 3 has fewer rows than the vocabulary.
    write_f32_matrix(
        &dir.path().join("model.safetensors"),
        "embeddings",
        &TABLE[..6],
        3,
    )
    .unwrap();
    let err = StaticFeaturizer::open(dir.path().to_str().unwrap()).unwrap_err();
    assert!(matches!(err, FeatureError::BadModel { .. }), "{err}");
}
