//! Bring your own models, from the command line: `probes select` -> `onboard` -> `route`
//! on a slice of the shared RouterBench data with one model held back, the price-only
//! path, clear errors; and `eval --onboarding`'s JSON (the issue's keys) on a few models.
#![cfg(test)]

mod common;
use common::{data_file, ok, routewise};

use serde_json::Value;

const NEW: &str = "mistralai/mixtral-8x7b-chat";

/// Writes the first `n` lines of `src` twice: without model `NEW` (what the router is
/// trained on) and whole (the pool as `profile` would record it, `NEW` included).
fn slices(src: &std::path::Path, dir: &std::path::Path, n: usize) -> (String, String) {
    let text = std::fs::read_to_string(src).unwrap();
    let (mut without, mut whole) = (String::new(), String::new());
    for line in text.lines().take(n) {
        whole.push_str(line);
        whole.push('\n');
        let mut v: Value = serde_json::from_str(line).unwrap();
        v["models"].as_object_mut().unwrap().remove(NEW);
        without.push_str(&v.to_string());
        without.push('\n');
    }
    let (a, b) = (dir.join("without.jsonl"), dir.join("whole.jsonl"));
    std::fs::write(&a, without).unwrap();
    std::fs::write(&b, whole).unwrap();
    (
        a.to_str().unwrap().to_string(),
        b.to_str().unwrap().to_string(),
    )
}

#[test]
fn select_probes_onboard_a_model_and_route_to_it() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (without, whole) = slices(&src, dir.path(), 500);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (model, probes, outcomes, model2) =
        (p("knn.rw"), p("probes.jsonl"), p("new.jsonl"), p("knn2.rw"));
    ok(&[
        "train", "--data", &without, "--router", "knn", "--out", &model,
    ]);

    // 40 selected probes from the train split, in the probe-file shape.
    let msg = ok(&[
        "probes", "select", "--model", &model, "--data", &whole, "--n", "40", "--out", &probes,
    ]);
    assert!(msg.contains("40 probes selected"), "{msg}");
    let ids: Vec<String> = std::fs::read_to_string(&probes)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(v["prompt"].is_string() && v["task"].is_string(), "{v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 40);
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 40, "distinct probes");
    // The random baseline is seeded.
    let r1 = ok(&[
        "probes",
        "select",
        "--model",
        &model,
        "--data",
        &whole,
        "--n",
        "5",
        "--random",
        "--out",
        &p("r1.jsonl"),
    ]);
    assert!(r1.contains("at random"), "{r1}");

    // The pool's outcomes on those probes (as `profile` writes them), then onboard.
    let keep: String = std::fs::read_to_string(&whole)
        .unwrap()
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            ids.iter().any(|id| v["id"] == id.as_str())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&outcomes, keep).unwrap();
    let msg = ok(&[
        "onboard",
        "--model",
        &model,
        "--outcomes",
        &outcomes,
        "--name",
        NEW,
        "--out",
        &model2,
    ]);
    assert!(
        msg.contains("from 40 probes") && msg.contains("11 models"),
        "{msg}"
    );
    assert!(msg.contains("recorded scores"), "{msg}");
    let header = String::from_utf8_lossy(&std::fs::read(&model2).unwrap()[..1500]).to_string();
    assert!(
        header.contains("\"onboarded\"") && header.contains(NEW),
        "{header}"
    );

    // The new artifact predicts the new model, prompt by prompt.
    let predicted = |prompt: &str| -> f64 {
        let d: Value = serde_json::from_str(&ok(&["route", "--model", &model2, prompt])).unwrap();
        let m = d["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == NEW)
            .unwrap();
        m["predicted_score"].as_f64().unwrap()
    };
    let (a, b) = (
        predicted("Write a haiku about the sea."),
        predicted("def f(x): return x * 2  # what does f(3) return?"),
    );
    assert!(
        (0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b),
        "{a} {b}"
    );
    assert!(
        (a - b).abs() > 1e-6,
        "the head depends on the prompt: {a} vs {b}"
    );

    // Price only: no outcomes, an explicit price.
    let msg = ok(&[
        "onboard",
        "--model",
        &model,
        "--name",
        "brand-new",
        "--price",
        "0.2,0.6",
        "--out",
        &p("knn3.rw"),
    ]);
    assert!(
        msg.contains("from 0 probes") && msg.contains("$0.200 in / $0.600 out"),
        "{msg}"
    );
}

#[test]
fn onboarding_errors_are_clear() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (without, whole) = slices(&src, dir.path(), 300);
    let model = dir.path().join("knn.rw");
    let model = model.to_str().unwrap();
    let out = dir.path().join("x.rw");
    let out = out.to_str().unwrap();
    ok(&[
        "train", "--data", &without, "--router", "knn", "--out", model,
    ]);
    let fail = |args: &[&str], code: i32, needle: &str| {
        let o = routewise(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    // A name the outcomes file lacks; a model the router already has; no price, no data.
    fail(
        &[
            "onboard",
            "--model",
            model,
            "--outcomes",
            &whole,
            "--name",
            "nope",
            "--out",
            out,
        ],
        1,
        "no outcomes of `nope`",
    );
    fail(
        &[
            "onboard",
            "--model",
            model,
            "--outcomes",
            &whole,
            "--name",
            "gpt-4-1106-preview",
            "--out",
            out,
        ],
        2,
        "already has a model named",
    );
    fail(
        &["onboard", "--model", model, "--name", "z", "--out", out],
        1,
        "--price IN,OUT is needed",
    );
    fail(
        &[
            "onboard", "--model", model, "--name", "z", "--price", "1,-1", "--out", out,
        ],
        1,
        "must be finite and >= 0",
    );
    // The onboarding flags need --onboarding (`eval --validation` must not quietly read
    // the test split); probes cannot be chosen for a baseline.
    fail(
        &["eval", "--data", &whole, "--validation"],
        2,
        "--onboarding",
    );
    let single = dir.path().join("single.rw");
    let single = single.to_str().unwrap();
    ok(&[
        "train",
        "--data",
        &without,
        "--router",
        "best-single",
        "--out",
        single,
    ]);
    fail(
        &[
            "probes", "select", "--model", single, "--data", &whole, "--n", "5", "--out", out,
        ],
        1,
        "is a baseline",
    );
    // A bad outcomes line is refused with file:line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\":\"x\",\"prompt\":\"hi\",\"models\":{\"m\":{\"score\":2,\"cost_usd\":0}}}\n",
    )
    .unwrap();
    fail(
        &[
            "onboard",
            "--model",
            model,
            "--outcomes",
            bad.to_str().unwrap(),
            "--name",
            "m",
            "--out",
            out,
        ],
        2,
        "bad.jsonl:1",
    );
}

#[test]
fn eval_onboarding_reports_the_issue_keys() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("onb.json");
    let svg = dir.path().join("onb.svg");
    let text = ok(&[
        "eval",
        "--onboarding",
        "--data",
        src.to_str().unwrap(),
        "--max-models",
        "3",
        "--probes",
        "0,25,50",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(text.contains("full retrain AIQ"), "{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let o = &v["onboarding"];
    let full = o["full_retrain_aiq"].as_f64().unwrap();
    assert!(full > 0.5 && full <= 1.0, "{o}");
    assert_eq!(o["models_left_out"].as_array().unwrap().len(), 3);
    let points = o["points"].as_array().unwrap();
    // 3 probe counts x {selected, random} + all.
    assert_eq!(points.len(), 7, "{o}");
    for p in points {
        for k in ["n", "aiq_mean", "aiq_min", "brier_mean", "spearman_mean"] {
            assert!(p[k].as_f64().is_some(), "{k} in {p}");
        }
        assert!(p["aiq_min"].as_f64() <= p["aiq_mean"].as_f64());
        assert!(["selected", "random", "all"].contains(&p["selection"].as_str().unwrap()));
    }
    // Zero probes: the same prior whatever the selection.
    let at = |n: u64, sel: &str| {
        points
            .iter()
            .find(|p| p["n"] == n && p["selection"] == sel)
            .unwrap()
    };
    assert_eq!(at(0, "selected")["aiq_mean"], at(0, "random")["aiq_mean"]);
    // Every train outcome: close to the full retrain.
    let all = points.iter().find(|p| p["selection"] == "all").unwrap();
    assert!(
        (all["aiq_mean"].as_f64().unwrap() - full).abs() < 0.02,
        "{all} vs {full}"
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("full retrain"),
        "plot"
    );
}
