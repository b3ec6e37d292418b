//! CLI integration test of the router lab: `train` -> `route` -> `eval --json --plot`
//! -> `calibrate` on a slice of the shared RouterBench data, a 2-model slice for the
//! RouteLLM metrics, and invalid input exiting with code 2.
#![cfg(test)]

use std::path::Path;

mod common;
use common::{data_file, ok, routewise};

use serde_json::Value;

const GPT4: &str = "gpt-4-1106-preview";
const MISTRAL: &str = "mistralai/mistral-7b-chat";

/// The first `n` lines of the data, optionally keeping only the `keep` models.
fn slice(src: &Path, dst: &Path, n: usize, keep: Option<&[&str]>) {
    let text = std::fs::read_to_string(src).unwrap();
    let mut out = String::new();
    for line in text.lines().take(n) {
        match keep {
            None => out.push_str(line),
            Some(keep) => {
                let mut v: Value = serde_json::from_str(line).unwrap();
                let models = v["models"].as_object_mut().unwrap();
                models.retain(|k, _| keep.contains(&k.as_str()));
                out.push_str(&v.to_string());
            }
        }
        out.push('\n');
    }
    std::fs::write(dst, out).unwrap();
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn train_route_eval_calibrate_on_a_slice() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("slice.jsonl");
    slice(&src, &data, 400, None);
    let data = data.to_str().unwrap();
    let model = dir.path().join("knn.rw");
    let model = model.to_str().unwrap();

    // train
    let msg = ok(&["train", "--data", data, "--router", "knn", "--out", model]);
    assert!(msg.contains("11 models"), "{msg}");
    let head = std::fs::read(model).unwrap();
    assert!(head.starts_with(b"ROUTEWISE-ARTIFACT"));

    // route: quality first, then a huge lambda and a zero budget pick the cheapest.
    let d: Value = serde_json::from_str(&ok(&[
        "route",
        "--model",
        model,
        "Write a python function that reverses a list.",
    ]))
    .unwrap();
    let models = d["models"].as_array().unwrap();
    assert_eq!(models.len(), 11);
    assert_eq!(d["ranking"].as_array().unwrap().len(), 11);
    assert_eq!(d["ranking"][0], d["chosen"]);
    assert_eq!(d["policy"]["kind"], "lambda");
    for m in models {
        assert!((-0.01..=1.01).contains(&f(&m["predicted_score"])), "{m}");
        assert!(f(&m["predicted_cost_usd"]) >= 0.0, "{m}");
    }
    let best = models
        .iter()
        .max_by(|a, b| f(&a["predicted_score"]).total_cmp(&f(&b["predicted_score"])))
        .unwrap();
    assert_eq!(
        f(&best["predicted_score"]),
        f(&models.iter().find(|m| m["name"] == d["chosen"]).unwrap()["predicted_score"])
    );
    let cheapest = models
        .iter()
        .min_by(|a, b| f(&a["predicted_cost_usd"]).total_cmp(&f(&b["predicted_cost_usd"])))
        .unwrap();
    for policy in [["--lambda", "1e12"], ["--budget", "0"]] {
        let d: Value = serde_json::from_str(&ok(&[
            "route", "--model", model, policy[0], policy[1], "hello",
        ]))
        .unwrap();
        let chosen = d["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == d["chosen"])
            .unwrap();
        assert_eq!(
            f(&chosen["predicted_cost_usd"]),
            d["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| f(&m["predicted_cost_usd"]))
                .fold(f64::INFINITY, f64::min),
            "{policy:?}"
        );
        assert!(cheapest["name"].is_string());
    }

    // eval
    let json = dir.path().join("eval.json");
    let svg = dir.path().join("eval.svg");
    let table = ok(&[
        "eval",
        "--data",
        data,
        "--routers",
        "knn,linear",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    for row in [
        "knn",
        "linear",
        "best-single",
        "cheapest",
        "random",
        "oracle",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(row)),
            "no `{row}` row in\n{table}"
        );
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["dataset"], "slice.jsonl");
    let (n_train, n_test) = (
        r["n_train"].as_u64().unwrap(),
        r["n_test"].as_u64().unwrap(),
    );
    assert_eq!(n_train + n_test, 400);
    assert!(n_test > 20);
    let ms = r["models"].as_array().unwrap();
    assert_eq!(ms.len(), 11);
    let oracle_q = f(&r["oracle"]["quality"]);
    let mut best_q: f64 = 0.0;
    for m in ms {
        let (q, c) = (f(&m["quality"]), f(&m["cost"]));
        assert!((0.0..=1.0).contains(&q) && c > 0.0, "{m}");
        assert!(q <= oracle_q + 1e-12);
        best_q = best_q.max(q);
    }
    assert!(f(&r["oracle"]["cost"]) > 0.0);
    let gpt4 = ms.iter().find(|m| m["name"] == GPT4).unwrap();
    assert!(f(&gpt4["quality"]) > 0.6, "{gpt4}");
    let names: Vec<&str> = r["routers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["knn", "linear", "best-single", "cheapest", "random"]
    );
    for x in r["routers"].as_array().unwrap() {
        let curve = x["curve"].as_array().unwrap();
        assert!(curve.len() >= 51, "{}", curve.len());
        assert_eq!(f(&curve[0]["lambda"]), 0.0);
        assert!(curve
            .windows(2)
            .all(|w| f(&w[0]["lambda"]) < f(&w[1]["lambda"])));
        for p in curve {
            assert!(f(&p["quality"]) <= oracle_q + 1e-12 && f(&p["cost"]) > 0.0);
        }
        let aiq = f(&x["aiq"]);
        // best-single is one point (gpt-4, the dearest model): its hull is zero left of it.
        let floor = if x["name"] == "best-single" {
            0.0
        } else {
            1e-12
        };
        assert!(
            aiq >= floor && aiq <= f(&x["max_quality"]) + 1e-12,
            "{}",
            x["name"]
        );
        assert!(f(&x["max_quality"]) <= oracle_q + 1e-12);
        assert!(f(&x["cost_at_max_quality"]) > 0.0);
        assert!(f(&x["quality_at_best_single_cost"]) <= f(&x["max_quality"]) + 1e-12);
        match &x["cost_ratio_at_best_single_quality"] {
            Value::Null => assert!(f(&x["max_quality"]) < best_q),
            v => assert!(f(v) > 0.0),
        }
        assert!(f(&x["fit_seconds"]) >= 0.0);
        assert!(f(&x["route_us_p50"]) > 0.0);
        assert!(x.get("apgr").is_none(), "APGR only for 2-model data");
    }
    // Cheapest-first end of the sweep costs no more than its quality-first end.
    let knn = &r["routers"][0]["curve"];
    let last = knn.as_array().unwrap().last().unwrap();
    assert!(f(&last["cost"]) <= f(&knn[0]["cost"]));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("knn") && plot.contains(GPT4));

    // calibrate
    let cal: Value = serde_json::from_str(&ok(&[
        "calibrate",
        "--model",
        model,
        "--data",
        data,
        "--strong",
        GPT4,
        "--weak",
        MISTRAL,
        "--strong-share",
        "0.3",
    ]))
    .unwrap();
    assert_eq!(cal["n_prompts"], 400);
    assert!(f(&cal["threshold"]).is_finite());
    let share = f(&cal["realised_strong_share"]);
    assert!((share - 0.3).abs() < 0.1, "{share}");
}

#[test]
fn two_model_data_reports_apgr_and_cpt() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pair.jsonl");
    slice(&src, &data, 400, Some(&[GPT4, MISTRAL]));
    let json = dir.path().join("pair.json");
    ok(&[
        "eval",
        "--data",
        data.to_str().unwrap(),
        "--routers",
        "knn",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["pair"]["strong"], GPT4);
    assert_eq!(r["pair"]["weak"], MISTRAL);
    for x in r["routers"].as_array().unwrap() {
        let apgr = f(&x["apgr"]);
        assert!((-1.0..=2.0).contains(&apgr), "{x}");
        for k in ["cpt50", "cpt80"] {
            assert!(
                x[k].is_null() || (0.0..=100.0).contains(&f(&x[k])),
                "{k}: {}",
                x[k]
            );
        }
    }
    // The random baseline recovers the gap linearly: APGR close to 0.5.
    let random = r["routers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "random")
        .unwrap();
    assert!((f(&random["apgr"]) - 0.5).abs() < 0.15, "{random}");
}

#[test]
fn invalid_input_exits_2_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            r#"{"id":"a","prompt":"p","split":"train","models":{"x":{"score":1.0,"cost_usd":0.1},"y":{"score":0.0,"cost_usd":0.01}}}"#,
            "\n",
            r#"{"id":"b","prompt":"q","split":"test","models":{"x":{"score":1.7,"cost_usd":0.1},"y":{"score":0.0,"cost_usd":0.01}}}"#,
            "\n"
        ),
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let out_rw = dir.path().join("x.rw");
    for args in [
        vec!["train", "--data", bad, "--out", out_rw.to_str().unwrap()],
        vec!["eval", "--data", bad],
    ] {
        let out = routewise(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.jsonl:2"), "{err}");
        assert!(err.contains("score"), "{err}");
    }
    assert!(!out_rw.exists());
    // A file that is not an artifact is invalid input too.
    let out = routewise(&["route", "--model", bad, "hi"]);
    assert_eq!(out.status.code(), Some(2));
    let out = routewise(&["eval", "--data", bad, "--routers", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}
