//! CLI integration test of `routewise replay --validate` on a slice of the shared
//! RouterBench data: the JSON report's shape, and what the estimators must show whatever
//! the seed (unbiased on the logger's own policy, DR no worse than IPS, errors shrinking
//! with the log size).
#![cfg(test)]

mod common;
use common::{data_file, ok, routewise};

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn validate_reports_the_estimators_accuracy_against_the_truth() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("slice.jsonl");
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().take(1200).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("ope.json");
    let table = ok(&[
        "replay",
        "--validate",
        "--data",
        data.to_str().unwrap(),
        "--runs",
        "60",
        "--sizes",
        "300,3000",
        "--bootstrap",
        "100",
        "--epsilon",
        "0.2",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(table.contains("identification"), "{table}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["runs"], 60);
    assert_eq!(f(&r["epsilon"]), 0.2);
    assert_eq!(r["log_sizes"], serde_json::json!([300, 3000]));
    assert_eq!(r["reference_size"], 3000);
    for e in ["ips", "snips", "dr"] {
        for k in ["bias", "rmse", "coverage"] {
            assert!(r["estimators"][e][k].is_number(), "{e}.{k}");
        }
    }
    // The first candidate is the logger's own policy.
    let c = &r["candidates"][0];
    assert_eq!(f(&c["agreement"]), 1.0);
    let by = r["by_size"].as_array().unwrap();
    let (small, large) = (&by[0]["estimators"], &by[1]["estimators"]);
    let logger_dr = &large["dr"]["by_candidate"][0];
    assert!(f(&logger_dr["bias"]).abs() < 0.01, "{logger_dr}");
    assert!(f(&logger_dr["coverage"]) >= 0.8, "{logger_dr}");
    // DR's direct model can only reduce the variance the weights bring.
    assert!(
        f(&large["dr"]["rmse"]) <= f(&large["ips"]["rmse"]),
        "{large}"
    );
    // Ten times the decisions, about a third of the error.
    for e in ["ips", "snips", "dr"] {
        assert!(
            f(&large[e]["rmse"]) < 0.6 * f(&small[e]["rmse"]),
            "{e}: {} vs {}",
            large[e]["rmse"],
            small[e]["rmse"]
        );
    }
    // Pairs far apart are told apart, and never the wrong way round.
    let ident = by[1]["identification"].as_array().unwrap();
    let far: Vec<&Value> = ident.iter().filter(|p| f(&p["true_gap"]) > 0.2).collect();
    assert!(!far.is_empty(), "{ident:?}");
    for p in far {
        assert!(f(&p["identified"]) > 0.75 && f(&p["wrong"]) == 0.0, "{p}");
    }
}

#[test]
fn validate_refuses_bad_settings() {
    let Some(src) = data_file() else { return };
    let src = src.to_str().unwrap();
    for bad in [
        &["--epsilon", "0"][..],
        &["--epsilon", "1.5"],
        &["--runs", "0"],
        &["--lambda=-1"],
    ] {
        let mut args = vec!["replay", "--validate", "--data", src];
        args.extend_from_slice(bad);
        let o = routewise(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        let flag = bad[0].split('=').next().unwrap();
        assert!(err.contains(flag), "{bad:?}: {err}");
    }
}
