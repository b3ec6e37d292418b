//! The static featurizer's fast WordPiece path gives exactly the `tokenizers` crate's ids
//! on real prompts (both shared datasets) and on edge cases. Needs the `static` model
//! (`routewise models fetch static`) and the shared data; prints why it skips otherwise.
#![cfg(feature = "static-embed")]
#![cfg(test)]

use std::path::Path;

use routewise_features::weights::{model_dir, STATIC_MINILM};
use routewise_features::StaticFeaturizer;

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

#[test]
fn fast_path_matches_tokenizers_crate() {
    let dir = model_dir(STATIC_MINILM.name);
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "SKIPPED: static model absent in {} (run `routewise models fetch static`)",
            dir.display()
        );
        return;
    }
    let f = StaticFeaturizer::open("static").unwrap();
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
