//! Derives the built-in compact static model (`static-mini`) from the full distilled
//! static model: truncated PCA columns, a pruned set of token rows, int8 rows with
//! per-row scales (format and method: `routewise_features::compact`). Run through
//! `scripts/make-static-mini.sh`, which also fetches the inputs.
//!
//! ```text
//! make_static_mini --static DIR --dims N [--data FILE.jsonl]... [--words FILE]
//!                  [--min-count N] [--out FILE] [--out-dir DIR]
//! ```
//!
//! * `--static`: the full static model directory (`routewise models fetch static`).
//! * `--data`: routing datasets whose **train** split prompts count as corpus (the test
//!   split is never read). `--words`: a word list, one word per line (a general corpus).
//! * `--min-count`: keep a token seen at least this often in the training prompts; every
//!   token of the word list and every single-character token is kept regardless.
//! * `--out`: the compact file. `--out-dir`: the same rows dequantised into a model2vec
//!   directory (pruned rows zero), to evaluate a variant with `--featurizer static`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::path::PathBuf;

use routewise_data::Dataset;
use routewise_features::compact::{encode, CompactModel};
use routewise_features::static_embed::{read_f32_matrix, write_f32_matrix};
use routewise_features::StaticFeaturizer;

#[derive(Default)]
struct Args {
    static_dir: Option<PathBuf>,
    dims: usize,
    data: Vec<PathBuf>,
    words: Option<PathBuf>,
    min_count: usize,
    out: Option<PathBuf>,
    out_dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        min_count: 1,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--static" => a.static_dir = Some(val().into()),
            "--dims" => a.dims = val().parse().expect("--dims N"),
            "--data" => a.data.push(val().into()),
            "--words" => a.words = Some(val().into()),
            "--min-count" => a.min_count = val().parse().expect("--min-count N"),
            "--out" => a.out = Some(val().into()),
            "--out-dir" => a.out_dir = Some(val().into()),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.dims > 0, "--dims N is required");
    a
}

fn main() {
    let a = args();
    let dir = a.static_dir.clone().expect("--static DIR is required");
    let full = StaticFeaturizer::open(&dir.display().to_string()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let (table, full_dim) = read_f32_matrix(&bytes, "embeddings").unwrap();
    assert!(a.dims <= full_dim, "--dims {} > {full_dim}", a.dims);
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let model = &tok["model"];
    let mut vocab = vec![String::new(); model["vocab"].as_object().unwrap().len()];
    for (t, id) in model["vocab"].as_object().unwrap() {
        vocab[id.as_u64().unwrap() as usize] = t.clone();
    }
    let unk = model["vocab"][model["unk_token"].as_str().unwrap()]
        .as_u64()
        .unwrap() as u32;
    let max_chars = model["max_input_chars_per_word"].as_u64().unwrap() as u32;

    // Token counts over the training prompts; the word list and single characters.
    let mut counts: HashMap<u32, usize> = HashMap::new();
    let mut n_prompts = 0usize;
    for path in &a.data {
        let ds = Dataset::load(path).unwrap();
        for r in ds.train() {
            n_prompts += 1;
            for id in full.token_ids(&r.prompt).unwrap() {
                *counts.entry(id).or_default() += 1;
            }
        }
    }
    let mut keep: Vec<bool> = vocab
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let chars = t.strip_prefix("##").unwrap_or(t).chars().count();
            counts.get(&(id as u32)).copied().unwrap_or(0) >= a.min_count
                || (chars == 1 && !t.starts_with("[unused"))
                || id as u32 == unk
        })
        .collect();
    let mut n_words = 0usize;
    if let Some(w) = &a.words {
        for word in std::fs::read_to_string(w).unwrap().lines() {
            n_words += 1;
            for id in full.token_ids(word).unwrap() {
                keep[id as usize] = true;
            }
        }
    }
    let rows: Vec<(u32, &[f32])> = keep
        .iter()
        .enumerate()
        .filter(|(_, &k)| k)
        .map(|(id, _)| (id as u32, &table[id * full_dim..id * full_dim + a.dims]))
        .collect();
    let blob = encode(&vocab, unk, max_chars, a.dims, &rows).unwrap();
    println!(
        "{} of {} tokens kept ({} training prompts, {n_words} words), {} dims: {} bytes",
        rows.len(),
        vocab.len(),
        n_prompts,
        a.dims,
        blob.len()
    );
    if let Some(out) = &a.out {
        std::fs::write(out, &blob).unwrap();
        println!("wrote {}", out.display());
    }
    if let Some(out_dir) = &a.out_dir {
        let m = CompactModel::parse(&blob).unwrap();
        let mut dense = vec![0.0f32; vocab.len() * a.dims];
        for (id, row) in dense.chunks_exact_mut(a.dims).enumerate() {
            m.add_row(id as u32, row);
        }
        std::fs::create_dir_all(out_dir).unwrap();
        std::fs::copy(dir.join("tokenizer.json"), out_dir.join("tokenizer.json")).unwrap();
        write_f32_matrix(
            &out_dir.join("model.safetensors"),
            "embeddings",
            &dense,
            a.dims,
        )
        .unwrap();
        println!("wrote {}", out_dir.display());
    }
}
