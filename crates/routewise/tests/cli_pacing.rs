//! `routewise eval --pacing`: the paced key (re-solving), the dual-descent baseline, the
//! hard cap and the hindsight lambda on RouterBench's test split replayed as a month, with
//! the issue's JSON keys.
#![cfg(test)]

mod common;

use serde_json::Value;

#[test]
fn eval_pacing_reports_every_policy_with_the_issue_keys() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pacing.json");
    let text = common::ok(&[
        "eval",
        "--pacing",
        "--data",
        data.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(
        text.contains("hard cap") && text.contains("hindsight lambda"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let budget = v["budget_usd"].as_f64().unwrap();
    assert!(budget > 0.0);
    for k in ["paced", "dual_descent", "hard_cap", "hindsight_lambda"] {
        for f in ["spend_usd", "quality"] {
            assert!(v[k][f].as_f64().is_some(), "{k}.{f} in {v}");
        }
    }
    assert!(v["hindsight_lambda"]["lambda"].as_f64().is_some());
    // 30% of the best single model's cost by default, over 30 days.
    let best = v["best_single"]["spend_usd"].as_f64().unwrap();
    assert!((budget / best - 0.3).abs() < 1e-9, "{budget} of {best}");
    let paced = v["paced"]["spend_usd"].as_f64().unwrap() / budget;
    assert!(
        (0.97..=1.03).contains(&paced),
        "paced spent {paced} of the budget"
    );
    assert!(
        v["paced"]["quality"].as_f64() > v["hard_cap"]["quality"].as_f64(),
        "{v}"
    );
    assert!(v["hindsight_lambda"]["spend_usd"].as_f64().unwrap() <= budget);
    // The issue's target: within 0.01 of the best fixed lambda in hindsight.
    let gap = v["paced"]["quality"].as_f64().unwrap()
        - v["hindsight_lambda"]["quality"].as_f64().unwrap();
    assert!(gap > -0.01, "paced is {gap} from the hindsight lambda: {v}");
    // A feasible budget: nothing to warn about.
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    assert!(v["min_spend_usd"].as_f64().unwrap() < budget, "{v}");
}

/// Three models at $0.001, $0.002 and $0.01 a request, the dearest the best: a budget of
/// 5% of always the best ($0.0005 a request) is below the cheapest model's spend.
#[test]
fn a_budget_below_the_cheapest_models_spend_is_named_infeasible() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("three.jsonl");
    let lines: String = (0..600)
        .map(|i| {
            let topic = ["algebra integral equation", "poem story verse"][i % 2];
            let rec = serde_json::json!({
                "id": format!("q{i}"),
                "prompt": format!("{topic} question {i}"),
                "split": if i % 5 == 4 { "test" } else { "train" },
                "models": {
                    "cheap": {"score": (i % 3 == 0) as u8 as f64, "cost_usd": 0.001},
                    "mid": {"score": (i % 2 == 0) as u8 as f64, "cost_usd": 0.002},
                    "best": {"score": (i % 7 != 0) as u8 as f64, "cost_usd": 0.01},
                },
            });
            format!("{rec}\n")
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let out = dir.path().join("pacing.json");
    let (_, err) = common::ok_out(&[
        "eval",
        "--pacing",
        "--data",
        data.to_str().unwrap(),
        "--budget-fraction",
        "0.05",
        "--json",
        out.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let (budget, floor) = (
        v["budget_usd"].as_f64().unwrap(),
        v["min_spend_usd"].as_f64().unwrap(),
    );
    assert!(budget < floor, "{v}");
    // The floor is the cheapest model on every request: $0.001 a request.
    let requests = v["requests"].as_f64().unwrap();
    assert!((floor - 0.001 * requests).abs() < 1e-9, "{v}");
    // Every policy overspends such a budget, and the report says so.
    assert!(v["hindsight_lambda"]["spend_usd"].as_f64().unwrap() > budget);
    let w = v["warnings"][0].as_str().unwrap();
    assert!(w.contains("every policy overspends"), "{w}");
    assert!(err.contains("warning: the budget"), "{err}");
}

/// Regression: with every cost at 0, `eval --pacing` printed `NaN%` for every policy's
/// share of the budget; there is no budget to pace, and it now says so.
#[test]
fn a_dataset_without_costs_has_no_budget_to_pace() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("free.jsonl");
    let lines: String = (0..300)
        .map(|i| {
            let rec = serde_json::json!({
                "id": format!("q{i}"),
                "prompt": format!("question {i}"),
                "split": if i % 5 == 4 { "test" } else { "train" },
                "models": {
                    "a": {"score": (i % 3 == 0) as u8 as f64, "cost_usd": 0.0},
                    "b": {"score": (i % 2 == 0) as u8 as f64, "cost_usd": 0.0},
                },
            });
            format!("{rec}\n")
        })
        .collect();
    std::fs::write(&data, lines).unwrap();
    let out = common::routewise(&["eval", "--pacing", "--data", data.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no budget to pace"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("NaN"));
}
