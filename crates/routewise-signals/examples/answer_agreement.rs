//! Calibrating semantic answer agreement (`bash bench/answer_agreement.sh` runs it): on
//! STS-B sentence pairs, how often two sentences that mean the same (scored >= 4 of 5)
//! agree, and how often two that do not (scored <= 2) wrongly agree, at several cosine
//! thresholds, with the guards (as [`routewise_signals::agreement`] compares tier
//! answers).
//!
//! The threshold is chosen on STS-B's `train` pairs only: the one that lets the most
//! equivalent pairs agree while at most `--max-false` (default 2%) of the non-equivalent
//! pairs do. The `dev` and `test` pairs are then reported at every threshold.
//!
//! `cargo run --release -p routewise-signals --example answer_agreement -- --pairs P.jsonl
//!  [--max-false 0.02] [--json OUT]` (pairs: `bench/paraphrase_pairs.py SDIST OUT --all`).
#![allow(clippy::expect_used, clippy::panic)]

use std::io::Write;

use routewise_signals::cache::Guard;
use routewise_signals::Embedder;
use serde_json::{json, Value};

const THRESHOLDS: [f32; 8] = [0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];

struct Pair {
    cosine: f32,
    guards_agree: bool,
    score: f64,
    split: String,
}

/// Agreement rates of `split`'s pairs at `t`: (equivalent pairs, non-equivalent pairs,
/// their counts).
fn rates(pairs: &[Pair], split: &str, t: f32) -> (f64, f64, usize, usize) {
    let (mut same, mut same_n, mut diff, mut diff_n) = (0usize, 0usize, 0usize, 0usize);
    for p in pairs.iter().filter(|p| p.split == split) {
        let agrees = p.cosine >= t && p.guards_agree;
        if p.score >= 4.0 {
            same_n += 1;
            same += usize::from(agrees);
        } else if p.score <= 2.0 {
            diff_n += 1;
            diff += usize::from(agrees);
        }
    }
    let rate = |k: usize, n: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    (rate(same, same_n), rate(diff, diff_n), same_n, diff_n)
}

fn main() {
    let mut it = std::env::args().skip(1);
    let (mut path, mut max_false, mut out) = (String::new(), 0.02, None);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "--pairs" => path = v,
            "--max-false" => max_false = v.parse().unwrap_or(0.02),
            "--json" => out = Some(v),
            other => panic!("unknown argument {other}"),
        }
    }
    let embedder = Embedder::builtin().expect("the built-in model");
    let text = std::fs::read_to_string(&path).expect("the pairs file");
    let pairs: Vec<Pair> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            let (a, b) = (v["a"].as_str().unwrap_or(""), v["b"].as_str().unwrap_or(""));
            let (ea, eb) = (embedder.embed(a), embedder.embed(b));
            let (ga, gb) = (Guard::of_answer(a), Guard::of_answer(b));
            Pair {
                // Equal texts agree outright, as in `Groups`.
                cosine: if a == b {
                    1.0
                } else {
                    ea.iter().zip(&eb).map(|(x, y)| x * y).sum()
                },
                // The guards alone: the cosine is compared per threshold below.
                guards_agree: a == b || ga.agrees(&gb),
                score: v["score"].as_f64().unwrap_or(f64::NAN),
                split: v["split"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect();
    let chosen = THRESHOLDS
        .iter()
        .copied()
        .filter(|&t| rates(&pairs, "train", t).1 <= max_false)
        .max_by(|&x, &y| {
            let (sx, sy) = (rates(&pairs, "train", x).0, rates(&pairs, "train", y).0);
            sx.total_cmp(&sy).then(y.total_cmp(&x))
        });
    let mut rows = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(
        stdout,
        "threshold | split | equivalent pairs agreeing | non-equivalent pairs agreeing"
    );
    for &t in &THRESHOLDS {
        for split in ["train", "dev", "test"] {
            let (same, diff, same_n, diff_n) = rates(&pairs, split, t);
            let mark = if Some(t) == chosen { " (chosen)" } else { "" };
            let _ = writeln!(
                stdout,
                "{t:.2}{mark} | {split} | {same:.3} of {same_n} | {diff:.4} of {diff_n}"
            );
            rows.push(
                json!({"threshold": t, "split": split, "equivalent_agree": same,
                "non_equivalent_agree": diff, "equivalent": same_n, "non_equivalent": diff_n}),
            );
        }
    }
    let report = json!({"max_false": max_false, "chosen": chosen, "rows": rows});
    if let Some(out) = out {
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
        .expect("write the report");
    }
}
