//! Batched MiniLM throughput over the prompts of a routing JSONL file (embeddings/s), and
//! the process's peak RSS with the model loaded.
//!
//! Run: `cargo run --release -p routewise-features --features minilm --example
//! embed_throughput -- ../shared/data/mmlu-pro-12k.jsonl [LIMIT] [static|minilm]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::BufRead;
use std::time::Instant;

use routewise_features::{AnyFeaturizer, Featurizer, MiniLmFeaturizer, StaticFeaturizer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: embed_throughput FILE.jsonl [LIMIT] [static|minilm]");
    let limit: usize = args
        .get(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(usize::MAX);
    let which = args.get(3).map(String::as_str).unwrap_or("minilm");
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let prompts: Vec<String> = file
        .lines()
        .take(limit)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            v["prompt"].as_str().unwrap().to_string()
        })
        .collect();
    let t0 = Instant::now();
    let f = match which {
        "static" => AnyFeaturizer::Static(StaticFeaturizer::open("static").unwrap()),
        _ => AnyFeaturizer::MiniLm(MiniLmFeaturizer::open("minilm").unwrap()),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let t1 = Instant::now();
    let out = f.featurize_batch(&texts);
    let secs = t1.elapsed().as_secs_f64();
    let nonzero = out
        .chunks_exact(f.dim())
        .filter(|r| r.iter().any(|x| *x != 0.0))
        .count();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!(
        "{which}: {} prompts in {secs:.1} s = {:.1} embeddings/s (load {load_s:.2} s, {nonzero} non-zero rows); peak {rss}",
        texts.len(),
        texts.len() as f64 / secs
    );
}
