//! `routewise eval --cascades` and `routewise calibrate --cascade` (issue 13): the report's
//! shape, and that a cascade uses what the prompt alone cannot tell (the agreement of
//! cheap answers) on synthetic data; the JSON keys on a slice of the shared data.
#![cfg(test)]

use std::path::Path;

use serde_json::{json, Value};

mod common;
use common::{data_file, ok_out};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A deterministic pseudo-random number in [0, 1) for (prompt, model).
fn u(i: usize, m: usize) -> f64 {
    let mut z = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (m as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 29;
    (z % 1_000_000) as f64 / 1_000_000.0
}

/// Multiple-choice prompts with nothing in their text to tell them apart: two cheap
/// models right 70% of the time (independently; a wrong answer is one of three wrong
/// letters), a strong one right 95%, at 1x, 2x and 50x the price.
fn write_agreement_data(path: &Path, n: usize) {
    let models = [
        ("cheap-a", 0.7, 0.001),
        ("cheap-b", 0.7, 0.002),
        ("strong", 0.95, 0.05),
    ];
    let mut out = String::new();
    for i in 0..n {
        let gold = ["A", "B", "C", "D"][i % 4];
        let mut outcomes = serde_json::Map::new();
        for (m, (name, p, cost)) in models.iter().enumerate() {
            let right = u(i, m) < *p;
            let answer = if right {
                gold.to_string()
            } else {
                let wrong: Vec<&str> = ["A", "B", "C", "D"]
                    .into_iter()
                    .filter(|x| *x != gold)
                    .collect();
                wrong[(u(i, m + 10) * 3.0) as usize % 3].to_string()
            };
            outcomes.insert(
                name.to_string(),
                json!({"score": if right { 1.0 } else { 0.0 }, "cost_usd": cost,
                       "input_tokens": 50, "output_tokens": 1, "answer": answer}),
            );
        }
        let rec = json!({
            "id": format!("q{i}"),
            "prompt": format!("question number {i}: pick one of the options"),
            "split": if i % 5 == 4 { "test" } else { "train" },
            "reference": gold,
            "models": outcomes,
        });
        out.push_str(&rec.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// `routewise eval --routers knn --bootstrap 0 --cascades` on `data` (plus `extra`): the
/// JSON report and the table.
fn eval_cascades(data: &Path, extra: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut args = vec![
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--routers",
        "knn",
        "--bootstrap",
        "0",
        "--cascades",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (table, _) = ok_out(&args);
    let r = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (r, table)
}

/// `routewise calibrate --cascade --alpha 0.05 --splits 10` on `data`: the JSON report and
/// stderr.
fn calibrate_cascade(data: &Path) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cal.json");
    let (_, err) = ok_out(&[
        "calibrate",
        "--cascade",
        "--alpha",
        "0.05",
        "--data",
        data.to_str().unwrap(),
        "--splits",
        "10",
        "--json",
        json.to_str().unwrap(),
    ]);
    let c = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (c, err)
}

fn cascade<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["cascades"]
        .as_array()
        .expect("cascades array")
        .iter()
        .find(|x| x["name"] == name)
        .unwrap_or_else(|| panic!("no cascade {name}"))
}

#[test]
fn cascades_beat_prompt_only_routers_when_cheap_answers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mc.jsonl");
    write_agreement_data(&data, 3000);
    let (r, table) = eval_cascades(&data, &[]);
    assert!(table.contains("cascade-chain"), "{table}");
    let knn = r["routers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "knn")
        .unwrap();
    for name in ["cascade-chain", "cascade-agreement"] {
        let c = cascade(&r, name);
        for key in [
            "aiq",
            "max_quality",
            "cost_ratio_at_best_single_quality",
            "cost_ratio_at_95pct_best_single_quality",
            "curve",
            "tier",
        ] {
            assert!(c.get(key).is_some(), "{name} lacks {key}: {c}");
        }
        assert_eq!(c["prompts_without_answers"], 0);
        // The router's featurizer, chosen on train between the eval's and tfidf.
        let featurizer = c["featurizer"].as_str().unwrap();
        assert!(["static-mini", "tfidf"].contains(&featurizer), "{c}");
        assert!(
            table.contains(&format!("(router: knn on {featurizer})")),
            "{table}"
        );
        // The tier is the cheap models; the strong one is the escalation.
        let tier: Vec<&str> = c["tier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(!tier.contains(&"strong"), "{tier:?}");
        // Agreement is worth something the prompt's text cannot say.
        assert!(
            f(&c["aiq"]) > f(&knn["aiq"]) + 0.01,
            "{name}: {} vs knn {}",
            c["aiq"],
            knn["aiq"]
        );
        // The frontier is sorted by cost with non-decreasing quality.
        let curve = c["curve"].as_array().unwrap();
        assert!(!curve.is_empty());
        for w in curve.windows(2) {
            assert!(
                f(&w[0][0]) <= f(&w[1][0]) && f(&w[0][1]) <= f(&w[1][1]) + 1e-12,
                "{w:?}"
            );
        }
    }
    // Two agreeing cheap answers are right ~97% of the time here: the agreement tier
    // reaches 95% of the strong model's quality far below its cost.
    let ratio = f(&cascade(&r, "cascade-agreement")["cost_ratio_at_95pct_best_single_quality"]);
    assert!(ratio < 0.6, "{ratio}");
}

#[test]
fn calibrate_cascade_controls_the_loss_it_promises() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mc.jsonl");
    write_agreement_data(&data, 3000);
    let json = dir.path().join("cal.json");
    let rw = dir.path().join("cascade.rw");
    ok_out(&[
        "calibrate",
        "--cascade",
        "--alpha",
        "0.05",
        "--data",
        data.to_str().unwrap(),
        "--splits",
        "100",
        "--json",
        json.to_str().unwrap(),
        "--artifact",
        rw.to_str().unwrap(),
    ]);
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "alpha",
        "delta",
        "splits",
        "realised_loss_mean",
        "violation_rate",
        "cost_saved_mean",
    ] {
        assert!(c.get(key).is_some(), "lacks {key}: {c}");
    }
    assert_eq!(f(&c["splits"]), 100.0);
    assert!(f(&c["violation_rate"]) <= f(&c["delta"]) + 0.05, "{c}");
    assert!(f(&c["realised_loss_mean"]) <= 0.05, "{c}");
    // It does save: the tier answers most prompts.
    assert!(f(&c["cost_saved_mean"]) > 0.2, "{c}");
    assert!(c["test"]["threshold"].is_number(), "{c}");
    // The artifact carries the calibrated chain: the reported tier and threshold.
    let art = routewise_router::Artifact::load(&rw).unwrap();
    let served = art
        .meta
        .cascade
        .as_ref()
        .expect("a cascade in the artifact");
    let tier: Vec<&str> = served
        .cascade
        .tier
        .iter()
        .map(|&m| art.meta.models[m].as_str())
        .collect();
    let want: Vec<&str> = c["tier"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tier, want);
    match served.cascade.rule {
        routewise_router::cascade::CascadeRule::Chain { threshold, .. } => {
            assert_eq!(threshold, f(&c["test"]["threshold"]));
        }
        ref other => panic!("{other:?}"),
    }
    assert_eq!(
        (served.alpha, served.n_calibration as f64),
        (0.05, f(&c["n_calibration"]))
    );
    assert_eq!(art.meta.n_train as f64, f(&c["n_fit"]));
    assert_eq!(art.meta.featurizer, c["featurizer"].as_str().unwrap());
}

/// The agreement data with every `answer` (and the `reference`) removed: nothing a
/// cascade could check.
fn write_data_without_answers(path: &Path, n: usize) {
    write_agreement_data(path, n);
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v.as_object_mut().unwrap().remove("reference");
            for o in v["models"].as_object_mut().unwrap().values_mut() {
                o.as_object_mut().unwrap().remove("answer");
            }
            format!("{v}\n")
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn cascades_are_not_reported_when_no_prompt_records_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("free.jsonl");
    write_data_without_answers(&data, 600);
    let (r, table) = eval_cascades(&data, &[]);
    // An empty list (the key stays), a warning saying why, and no cascade rows.
    assert_eq!(r["cascades"], json!([]), "{r}");
    let warned = r["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str()
            .unwrap()
            .contains("no train prompt records a model answer")
    });
    assert!(warned, "{}", r["warnings"]);
    assert!(table.contains("cascades: none"), "{table}");
    assert!(!table.contains("cascade-chain"), "{table}");

    // `calibrate --cascade` is off and says why, on stderr and in the JSON; no artifact.
    let (c, err) = calibrate_cascade(&data);
    assert_eq!(f(&c["off_rate"]), 1.0, "{c}");
    assert_eq!(c["tier"], json!([]), "{c}");
    let reason = c["off_reason"].as_str().unwrap();
    assert!(reason.contains("records a model answer"), "{c}");
    assert!(err.contains(reason), "{err}");
    let rw = dir.path().join("cascade.rw");
    let out = common::routewise(&[
        "calibrate",
        "--cascade",
        "--alpha",
        "0.05",
        "--data",
        data.to_str().unwrap(),
        "--splits",
        "10",
        "--artifact",
        rw.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(reason));
    assert!(!rw.exists());
}

/// Regression: on a pool with one cheap model the agreement family was left out without
/// a word, and with no cheap model at all the chain was reported with an empty tier (plain
/// routing under a cascade's name). Each missing family is now named, with why.
#[test]
fn a_family_without_enough_cheap_models_is_named_not_reported_empty() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jsonl");
    write_agreement_data(&full, 600);
    let keep_only = |keep: &[&str], path: &Path| {
        let text = std::fs::read_to_string(&full).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            let mut v: Value = serde_json::from_str(line).unwrap();
            v["models"]
                .as_object_mut()
                .unwrap()
                .retain(|k, _| keep.contains(&k.as_str()));
            out.push_str(&v.to_string());
            out.push('\n');
        }
        std::fs::write(path, out).unwrap();
    };
    let warned = |r: &Value, family: &str| {
        r["warnings"].as_array().unwrap().iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains(family) && w.contains("is not reported")
        })
    };

    // One cheap model: the chain runs on it; the agreement tier cannot, and says so.
    let two = dir.path().join("two.jsonl");
    keep_only(&["cheap-a", "strong"], &two);
    let (r, table) = eval_cascades(&two, &[]);
    let chain = cascade(&r, "cascade-chain");
    let tiers: Vec<&Value> = chain["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["tier"])
        .collect();
    assert!(tiers.contains(&&json!(["cheap-a"])), "{tiers:?}");
    assert!(!table.contains("cascade-agreement"), "{table}");
    assert!(warned(&r, "cascade-agreement"), "{}", r["warnings"]);
    assert!(!warned(&r, "cascade-chain"), "{}", r["warnings"]);

    // No model cheap enough: no cascade at all, both families named.
    let one = dir.path().join("one.jsonl");
    keep_only(&["strong"], &one);
    let (r, table) = eval_cascades(&one, &[]);
    assert_eq!(r["cascades"], json!([]), "{}", r["cascades"]);
    assert!(table.contains("cascades: none"), "{table}");
    assert!(warned(&r, "cascade-chain"), "{}", r["warnings"]);
    assert!(warned(&r, "cascade-agreement"), "{}", r["warnings"]);

    // `calibrate --cascade` is off there and says why.
    let (c, err) = calibrate_cascade(&one);
    let reason = c["off_reason"].as_str().unwrap();
    assert!(reason.contains("no model is cheap enough"), "{reason}");
    assert!(err.contains(reason), "{err}");
}

#[test]
fn calibrate_cascade_needs_alpha_and_the_threshold_mode_its_models() {
    let out = common::routewise(&["calibrate", "--cascade", "--data", "x.jsonl"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--alpha"));
    let out = common::routewise(&["calibrate", "--data", "x.jsonl", "--strong", "a"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn shared_data_cascades_report_the_issue_keys() {
    let Some(data) = data_file() else { return };
    let (r, _) = eval_cascades(&data, &["--limit", "800"]);
    let cascades = r["cascades"].as_array().unwrap();
    assert_eq!(cascades.len(), 2);
    let models: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for c in cascades {
        assert!(f(&c["aiq"]) > 0.0 && f(&c["max_quality"]) <= 1.0, "{c}");
        for t in c["tier"].as_array().unwrap() {
            assert!(models.contains(&t.as_str().unwrap()), "{t}");
        }
    }
}
