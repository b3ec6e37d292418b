//! `routewise eval --affinity`: conversations synthesised from RouterBench's test prompts,
//! routed every turn afresh and with affinity, compared at equal quality.
#![cfg(test)]

mod common;

use serde_json::Value;

/// `eval --affinity` on the shared RouterBench file with `extra` arguments: its stdout and
/// JSON report; `None` without the shared data.
fn run(extra: &[&str]) -> Option<(String, Value)> {
    let data = common::data_file()?;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("affinity.json");
    let mut args = vec!["eval", "--affinity", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--json", out.to_str().unwrap()]);
    let text = common::ok(&args);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    Some((text, v))
}

#[test]
fn eval_affinity_reports_both_policies_and_their_frontiers() {
    let Some((text, v)) = run(&["--turns", "3"]) else {
        return;
    };
    assert!(text.contains("at the same quality"), "{text}");
    let r = &v["affinity"];
    assert_eq!(r["turns"], 3);
    // The margin was chosen on train at each lambda, among the documented ones or off,
    // and the test points ran at those choices.
    assert_eq!(r["margin_chosen_on_train"], true);
    assert!(r["switch_margin"].is_null(), "{r}");
    assert!(r["conversations"].as_u64().unwrap() > 10, "{r}");
    let points = r["points"].as_array().unwrap();
    assert!(points.len() > 10);
    let choices = r["train_choices"].as_array().unwrap();
    assert_eq!(choices.len(), points.len());
    for (c, p) in choices.iter().zip(points) {
        assert_eq!(c["lambda"], p["lambda"]);
        assert_eq!(c["switch_margin"], p["switch_margin"]);
        let m = &c["switch_margin"];
        assert!(
            m.is_null() || [0.0, 0.01, 0.02, 0.05, 0.1].contains(&m.as_f64().unwrap()),
            "{c}"
        );
        // The choice is never worse than affinity off, on train.
        assert!(c["utility"].as_f64().unwrap() >= c["utility_without"].as_f64().unwrap());
        // Off means the same decisions as routing afresh.
        if m.is_null() {
            assert_eq!(p["with"], p["without"], "{p}");
        }
    }
    // Affinity switches models less often than routing afresh, over the lambda grid.
    let switches = |k: &str| -> u64 {
        points
            .iter()
            .map(|p| p[k]["switches"].as_u64().unwrap())
            .sum()
    };
    assert!(switches("with") < switches("without"), "{r}");
    assert!(r["mean_cost_ratio_at_equal_quality"].as_f64().unwrap() > 0.0);
    assert!(!r["matched"].as_array().unwrap().is_empty());
}

#[test]
fn eval_affinity_refuses_one_turn_conversations() {
    let Some(data) = common::data_file() else {
        return;
    };
    let out = common::routewise(&[
        "eval",
        "--affinity",
        "--data",
        data.to_str().unwrap(),
        "--turns",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--turns"));
}

#[test]
fn eval_affinity_runs_a_given_margin_at_every_lambda() {
    let Some((text, v)) = run(&["--switch-margin", "0.02"]) else {
        return;
    };
    assert!(text.contains("switch margin 0.02"), "{text}");
    let r = &v["affinity"];
    assert_eq!(r["margin_chosen_on_train"], false);
    assert_eq!(r["switch_margin"], 0.02);
    assert!(r["train_choices"].as_array().unwrap().is_empty());
    let points = r["points"].as_array().unwrap();
    assert!(points.iter().all(|p| p["switch_margin"] == 0.02), "{r}");
}

/// Regression (sparse data): with one model run on a fifth of the prompts, `eval
/// --affinity` built its conversations from the fifth of the test prompts with every
/// model's outcome (7 conversations here; none, and an error, on sparser data) and said
/// nothing; it now leaves that model out, says so, and uses them all (40).
#[test]
fn eval_affinity_runs_on_sparse_data_without_the_sparse_model() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sparse = common::sparse_head(&data, dir.path());
    let json = dir.path().join("aff.json");
    let (_, err) = common::ok_out(&[
        "eval",
        "--affinity",
        "--data",
        sparse.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(err.contains("leaves out 1 of 11 models"), "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["models_left_out"], serde_json::json!(["claude-v1"]));
    assert!(
        v["affinity"]["conversations"].as_u64().unwrap() >= 30,
        "{v}"
    );
}
