//! The semantic cache's quality (`bash bench/cache_quality.sh` runs it): how often a
//! paraphrase hits the cached original, and how often a hard negative (the same prompt with
//! one number, option or negation changed) wrongly hits, at several thresholds, with and
//! without the guards.
//!
//! Every original (the paraphrase pairs' first sentences and the hard negatives' source
//! prompts) is inserted into one index of the same context, as the gateway would hold them;
//! then every second sentence and every changed prompt is looked up. A paraphrase's hit
//! counts when it returns its own original; any hit of a hard negative is a false hit.
//!
//! `cargo run --release -p routewise-signals --example cache_quality -- --paraphrases P.jsonl
//!  --data D.jsonl [--data ...] [--max-negatives 3000] [--json OUT]`

use std::io::Write;

use routewise_signals::cache::{CacheIndex, CacheSettings, Guard, RequestKeys, Semantic};
use routewise_signals::Embedder;
use serde_json::{json, Value};

const THRESHOLDS: [f32; 5] = [0.85, 0.9, 0.92, 0.95, 0.98];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Change {
    Number,
    Option,
    Negation,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Number => "number",
            Change::Option => "option",
            Change::Negation => "negation",
        }
    }
}

/// One number in `p` changed (the first one, plus 1), if it has one.
fn change_number(p: &str) -> Option<String> {
    let start = p.find(|c: char| c.is_ascii_digit())?;
    let end = p[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(p.len(), |e| start + e);
    let n: u64 = p[start..end].parse().ok()?;
    Some(format!("{}{}{}", &p[..start], n + 1, &p[end..]))
}

/// One multiple-choice option's text replaced by another option's (`B. x` -> `B. y`).
fn change_option(p: &str) -> Option<String> {
    let lines: Vec<&str> = p.lines().collect();
    let opts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let b = l.as_bytes();
            b.len() > 3 && b[0].is_ascii_uppercase() && b[1] == b'.' && b[2] == b' '
        })
        .map(|(i, _)| i)
        .collect();
    if opts.len() < 3 {
        return None;
    }
    let (i, j) = (opts[1], opts[opts.len() - 1]);
    if lines[i][3..] == lines[j][3..] {
        return None;
    }
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out[i] = format!("{}{}", &lines[i][..3], &lines[j][3..]);
    Some(out.join("\n"))
}

/// A negation inserted after the first `is` / `are` / `does` / `can` / `was` / `will`.
fn change_negation(p: &str) -> Option<String> {
    for verb in [
        " is ", " are ", " does ", " can ", " was ", " will ", " should ",
    ] {
        if let Some(i) = p.find(verb) {
            let at = i + verb.len();
            return Some(format!("{}not {}", &p[..at], &p[at..]));
        }
    }
    None
}

struct Args {
    paraphrases: String,
    data: Vec<String>,
    max_negatives: usize,
    json: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        paraphrases: String::new(),
        data: Vec::new(),
        max_negatives: 3000,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--paraphrases" => a.paraphrases = v,
            "--data" => a.data.push(v),
            "--max-negatives" => a.max_negatives = v.parse().unwrap_or(3000),
            "--json" => a.json = Some(v),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn read_jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

struct Item {
    text: String,
    emb: Vec<f32>,
    guard: Guard,
}

fn item(e: &Embedder, text: &str) -> Item {
    Item {
        text: text.to_string(),
        emb: e.embed(text),
        guard: Guard::of(text),
    }
}

fn main() {
    let a = args();
    let e = Embedder::builtin().unwrap_or_else(|err| panic!("{err}"));
    let pairs: Vec<(Item, Item)> = read_jsonl(&a.paraphrases)
        .iter()
        .filter_map(|v| Some((item(&e, v["a"].as_str()?), item(&e, v["b"].as_str()?))))
        .collect();
    // Hard negatives: each change applied to prompts in file order, round-robin, up to
    // max_negatives in all.
    let mut negatives: Vec<(Item, Item, Change)> = Vec::new();
    let prompts: Vec<String> = a
        .data
        .iter()
        .flat_map(|p| read_jsonl(p))
        .filter_map(|v| v["prompt"].as_str().map(str::to_string))
        .collect();
    for (k, p) in prompts.iter().enumerate() {
        if negatives.len() >= a.max_negatives {
            break;
        }
        let kind = [Change::Number, Change::Option, Change::Negation][k % 3];
        let changed = match kind {
            Change::Number => change_number(p),
            Change::Option => change_option(p),
            Change::Negation => change_negation(p),
        };
        if let Some(c) = changed {
            negatives.push((item(&e, p), item(&e, &c), kind));
        }
    }
    let keys = |t: &str| RequestKeys::new("bench", "{}", &[], t);
    let mut rows = Vec::new();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} paraphrase pairs, {} hard negatives ({} number, {} option, {} negation)",
        pairs.len(),
        negatives.len(),
        negatives.iter().filter(|n| n.2 == Change::Number).count(),
        negatives.iter().filter(|n| n.2 == Change::Option).count(),
        negatives.iter().filter(|n| n.2 == Change::Negation).count()
    );
    let _ = writeln!(
        out,
        "{:>9} {:>6} {:>14} {:>13} {:>10} {:>10} {:>10}",
        "threshold", "guards", "paraphrase hit", "false hit", "number", "option", "negation"
    );
    for guards in [false, true] {
        for t in THRESHOLDS {
            let mut c: CacheIndex<usize> = CacheIndex::new(
                CacheSettings {
                    exact: true,
                    threshold: Some(t),
                    guards,
                    ttl_ms: u64::MAX / 2,
                    max_entries: 1 << 20,
                },
                e.dim(),
                1,
            );
            let put = |c: &mut CacheIndex<usize>, it: &Item, v: usize| {
                let s = Semantic {
                    embedding: &it.emb,
                    guard: &it.guard,
                };
                c.insert(keys(&it.text), Some(&s), v, 0);
            };
            for (i, (orig, _)) in pairs.iter().enumerate() {
                put(&mut c, orig, i);
            }
            for (i, (orig, _, _)) in negatives.iter().enumerate() {
                put(&mut c, orig, pairs.len() + i);
            }
            let get = |c: &mut CacheIndex<usize>, it: &Item| {
                let s = Semantic {
                    embedding: &it.emb,
                    guard: &it.guard,
                };
                c.get(keys(&it.text), Some(&s), 1).map(|(_, v)| v)
            };
            let mut own = 0;
            let mut wrong_para = 0;
            for (i, (_, para)) in pairs.iter().enumerate() {
                match get(&mut c, para) {
                    Some(v) if v == i => own += 1,
                    Some(_) => wrong_para += 1,
                    None => {}
                }
            }
            let mut false_hits = [0usize; 3];
            let mut totals = [0usize; 3];
            for (_, changed, kind) in &negatives {
                let k = *kind as usize;
                totals[k] += 1;
                if get(&mut c, changed).is_some() {
                    false_hits[k] += 1;
                }
            }
            let rate = |a: usize, b: usize| {
                if b == 0 {
                    f64::NAN
                } else {
                    a as f64 / b as f64
                }
            };
            let all_false = false_hits.iter().sum::<usize>();
            let all = totals.iter().sum::<usize>();
            let _ = writeln!(
                out,
                "{t:>9.2} {:>6} {:>14.3} {:>13.4} {:>10.4} {:>10.4} {:>10.4}",
                if guards { "on" } else { "off" },
                rate(own, pairs.len()),
                rate(all_false, all),
                rate(false_hits[0], totals[0]),
                rate(false_hits[1], totals[1]),
                rate(false_hits[2], totals[2]),
            );
            rows.push(json!({
                "threshold": t,
                "guards": guards,
                "paraphrase_hit_rate": rate(own, pairs.len()),
                "paraphrase_wrong_entry_rate": rate(wrong_para, pairs.len()),
                "false_hit_rate": rate(all_false, all),
                "false_hit_rate_by_change": {
                    Change::Number.name(): rate(false_hits[0], totals[0]),
                    Change::Option.name(): rate(false_hits[1], totals[1]),
                    Change::Negation.name(): rate(false_hits[2], totals[2]),
                },
            }));
        }
    }
    if let Some(path) = a.json {
        let report = json!({
            "paraphrase_pairs": pairs.len(),
            "hard_negatives": negatives.len(),
            "rows": rows,
        });
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
        .unwrap_or_else(|err| panic!("{path}: {err}"));
    }
}
