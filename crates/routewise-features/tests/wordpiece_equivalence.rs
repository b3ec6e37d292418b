//! The static featurizer's fast WordPiece path gives exactly the `tokenizers` crate's ids
//! on real prompts (both shared datasets) and on edge cases, and the built-in compact
//! model (whose tokenizer is rebuilt from its vocabulary) gives the full model's ids. Needs the `static` model
//! (`routewise models fetch static`) and the shared data; prints why it skips otherwise.
#![cfg(feature = "static-embed")]
#![cfg(test)]

use std::path::Path;

use routewise_features::weights::{model_dir, STATIC_MINILM};
use routewise_features::{BuiltinStaticFeaturizer, StaticFeaturizer};

fn prompts(file: &str, n: usize) -> Vec<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(file);
    let Ok(text) = std::fs::read_to_string(&p) else {
        eprintln!("SKIP part: {} is absent", p.display());
        return Vec::new();
    };
    text.lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["prompt"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The full static model, or `None` (with the reason printed) when it is not installed.
fn full_static_model() -> Option<StaticFeaturizer> {
    let dir = model_dir(STATIC_MINILM.name);
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "SKIPPED: static model absent in {} (run `routewise models fetch static`)",
            dir.display()
        );
        return None;
    }
    Some(StaticFeaturizer::open("static").unwrap())
}

#[test]
fn fast_path_matches_tokenizers_crate() {
    let Some(f) = full_static_model() else {
        return;
    };
    let mut texts: Vec<String> = [
        "",
        "   ",
        "Hello, World!!",
        "don't stop-believing...",
        "x=3*(y+2)/4; print(x)",
        "tab\tnew\nline\rcarriage",
        "ctrl\u{1}\u{7f}chars",
        "[CLS] special [SEP] [MASK]",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        &"a".repeat(150),
        "C++ & C# vs. Rust_lang: `code` ~home/{x}|y",
        "naïve café résumé",
        "数学",
        "emoji 🙂 text",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.extend(prompts("routerbench-3k.jsonl", 3000));
    texts.extend(prompts("mmlu-pro-12k.jsonl", 3000));
    let mut ascii = 0;
    for t in &texts {
        ascii += usize::from(t.is_ascii());
        assert_eq!(
            f.token_ids(t).unwrap(),
            f.reference_token_ids(t).unwrap(),
            "{t:?}"
        );
    }
    eprintln!(
        "{} texts compared, {ascii} on the ASCII fast path",
        texts.len()
    );
    assert!(ascii > 10);
}

/// The compact model keeps the whole vocabulary, so its tokenizer (built from that
/// vocabulary) must give the full model's ids, fast path and `tokenizers` path alike.
#[test]
fn tokenizes_exactly_like_the_full_model() {
    let Some(full) = full_static_model() else {
        return;
    };
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
    for file in ["routerbench-3k.jsonl", "mmlu-pro-12k.jsonl"] {
        texts.extend(prompts(file, usize::MAX).into_iter().step_by(40));
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
