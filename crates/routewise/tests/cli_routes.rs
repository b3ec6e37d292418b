//! `routewise eval --routes`: description routing measured as a classifier on RouterBench's
//! tasks (the shared data), with the issue's JSON keys.
#![cfg(test)]

mod common;

use serde_json::Value;

#[test]
fn eval_routes_reports_each_classifier_with_the_issue_keys() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("routes.json");
    let routes = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench/routes/routerbench.yaml");
    let text = common::ok(&[
        "eval",
        "--routes",
        routes.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(
        text.contains("zero-shot") && text.contains("supervised kNN"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for k in ["zero_shot", "ten_shot", "supervised", "centroid"] {
        for m in ["accuracy", "macro_f1"] {
            let x = v[k][m].as_f64().unwrap_or_else(|| panic!("{k}.{m} in {v}"));
            assert!((0.0..=1.0).contains(&x), "{k}.{m} = {x}");
        }
    }
    // Three easily told apart tasks: examples help, and the supervised vote is near perfect.
    assert!(
        v["ten_shot"]["macro_f1"].as_f64() > v["zero_shot"]["macro_f1"].as_f64(),
        "{v}"
    );
    assert!(v["supervised"]["accuracy"].as_f64().unwrap() > 0.95, "{v}");
    assert_eq!(v["routes"].as_array().unwrap().len(), 3);
}

#[test]
fn eval_routes_refuses_routes_without_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("r.yaml");
    std::fs::write(&routes, "routes:\n  - {name: x, when: {keywords: [a]}}\n").unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        r#"{"id": "1", "task": "x", "prompt": "p", "models": {"m": {"score": 1, "cost_usd": 0.1}}}
"#,
    )
    .unwrap();
    let out = common::routewise(&[
        "eval",
        "--routes",
        routes.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[0].when.description"), "{err}");
}
