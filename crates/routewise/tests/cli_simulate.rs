//! `routewise simulate`: the dispatch modes on RouterBench's test prompts, with the issue's
//! JSON keys, and the premise it shows (greedy routing breaks the SLO under overload,
//! balanced assignment keeps it).
#![cfg(test)]

mod common;

use std::path::Path;

use serde_json::Value;

#[test]
fn simulate_reports_every_mode_per_load_with_the_issue_keys() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim.json");
    let plot = dir.path().join("sim.svg");
    // One deployment of 2 slots for every model: the pool is small enough that 3x the
    // best model's capacity overloads greedy routing.
    let deployments = dir.path().join("deployments.yaml");
    let ds = std::fs::read_to_string(&data).unwrap();
    let first: Value = serde_json::from_str(ds.lines().next().unwrap()).unwrap();
    let models: Vec<String> = first["models"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let yaml: String = models
        .iter()
        .map(|m| format!("  - {{model: \"{m}\", max_concurrency: 2}}\n"))
        .collect();
    std::fs::write(&deployments, format!("deployments:\n{yaml}")).unwrap();
    let text = common::ok(&[
        "simulate",
        "--data",
        data.to_str().unwrap(),
        "--loads",
        "0.5,3",
        "--duration",
        "300",
        "--deployments",
        deployments.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(text.contains("balanced-sinkhorn"), "{text}");
    // Greedy breaks the SLO at the loads >= 2 here: no note explains a calm overload.
    assert!(!text.contains("note: greedy routing stays"), "{text}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let slo = v["slo_ms"].as_f64().unwrap();
    assert!(slo > 0.0);
    assert!(v["unloaded_greedy_quality"].as_f64().unwrap() > 0.0);
    let loads = v["loads"].as_array().unwrap();
    assert_eq!(loads.len(), 2);
    for l in loads {
        assert!(l["load"].as_f64().is_some());
        for mode in [
            "greedy",
            "greedy-spill",
            "balanced-sinkhorn",
            "balanced-exact",
        ] {
            let m = &l["modes"][mode];
            for k in [
                "quality",
                "cost_usd",
                "p50_ms",
                "p99_ms",
                "slo_violations",
                "drops",
                "spills",
            ] {
                assert!(m[k].as_f64().is_some(), "{mode}.{k} in {l}");
            }
        }
    }
    // Light load: balanced is greedy (the same answers, so the same quality).
    let light = &loads[0]["modes"];
    assert_eq!(
        light["greedy"]["quality"],
        light["balanced-sinkhorn"]["quality"]
    );
    // Overload: greedy's queues break the SLO, balanced assignment keeps p99 within it
    // and answers better than greedy.
    let heavy = &loads[1]["modes"];
    assert!(heavy["greedy"]["p99_ms"].as_f64().unwrap() > slo, "{heavy}");
    for mode in ["balanced-sinkhorn", "balanced-exact"] {
        assert!(
            heavy[mode]["p99_ms"].as_f64().unwrap() <= slo,
            "{mode}: {heavy}"
        );
        assert!(
            heavy[mode]["quality"].as_f64() > heavy["greedy"]["quality"].as_f64(),
            "{mode}: {heavy}"
        );
    }
}

#[test]
fn a_deployments_file_naming_an_unknown_model_is_an_error() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deployments = dir.path().join("d.yaml");
    std::fs::write(&deployments, "deployments:\n  - {model: no-such-model}\n").unwrap();
    let out = common::routewise(&[
        "simulate",
        "--data",
        data.to_str().unwrap(),
        "--loads",
        "1",
        "--deployments",
        deployments.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model"), "{err}");
}

/// Regression (sparse data): the labs that replay whole policies use only the prompts
/// with every model's outcome. With one model run on a fifth of the prompts, `simulate`
/// ran on that fifth alone and said nothing; it now leaves that model out (with its
/// deployments), warns, and names it in the report. `replay --validate` shares the rule.
#[test]
fn a_model_missing_on_most_prompts_is_left_out_of_a_replay_and_named() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sparse = common::sparse_head(&data, dir.path());
    let (v, err) = simulate_with_deployments(
        &sparse,
        "deployments:\n  - {model: claude-v1, replicas: 2}\n  - {model: claude-v2, replicas: 2}\n",
        "60",
    );
    assert!(
        err.contains("test prompts have every model's outcome")
            && err.contains("leaves out 1 of 11 models")
            && err.contains(": claude-v1"),
        "{err}"
    );
    assert_eq!(v["models_left_out"], serde_json::json!(["claude-v1"]));
    let deps = v["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 10, "{deps:?}");
    assert!(deps.iter().all(|d| d["model"] != "claude-v1"));
    assert!(deps
        .iter()
        .any(|d| d["model"] == "claude-v2" && d["replicas"] == 2));
    let replay = dir.path().join("ope.json");
    let (_, err) = common::ok_out(&[
        "replay",
        "--validate",
        "--data",
        sparse.to_str().unwrap(),
        "--runs",
        "3",
        "--sizes",
        "500",
        "--json",
        replay.to_str().unwrap(),
    ]);
    assert!(err.contains("claude-v1"), "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&replay).unwrap()).unwrap();
    assert_eq!(v["models_left_out"], serde_json::json!(["claude-v1"]));
    assert_eq!(v["n_models"], 10, "{v}");
}

/// Data where most prompts have every model's outcome is replayed whole.
#[test]
fn complete_data_is_replayed_with_every_model() {
    let Some(data) = common::data_file() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sim.json");
    let (_, err) = common::ok_out(&[
        "simulate",
        "--data",
        data.to_str().unwrap(),
        "--loads",
        "1",
        "--duration",
        "30",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(!err.contains("leaves out"), "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v.get("models_left_out").is_none());
    assert_eq!(v["deployments"].as_array().unwrap().len(), 11);
}

/// Four tasks, each answered right only by its own model (the others score 0.4), at one
/// price: the router spreads its choices over the four, so twice the best model's
/// capacity overloads none of them, and the report says why greedy keeps the SLO.
#[test]
fn a_pool_the_router_spreads_over_is_named_when_greedy_keeps_the_slo_at_2x() {
    let tasks = [
        (
            "chem",
            "chemistry reaction molecule acid electron bond valence",
        ),
        (
            "sport",
            "football match goal referee striker league penalty",
        ),
        ("poem", "poem rhyme verse stanza sonnet metaphor meter"),
        (
            "money",
            "stock market dividend inflation interest portfolio bank",
        ),
    ];
    let mut lines = String::new();
    for i in 0..800 {
        let (task, words) = tasks[i % 4];
        let models: serde_json::Map<String, Value> = (0..4)
            .map(|m| {
                let score = if m == i % 4 { 1.0 } else { 0.4 };
                (
                    format!("model-{m}"),
                    serde_json::json!({"score": score, "cost_usd": 0.001,
                                       "input_tokens": 20, "output_tokens": 50}),
                )
            })
            .collect();
        let rec = serde_json::json!({
            "id": format!("{task}-{i}"),
            "task": task,
            "prompt": format!("{words} question {i}"),
            "split": if i % 5 == 0 { "test" } else { "train" },
            "models": models,
        });
        lines.push_str(&format!("{rec}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("spread.jsonl");
    std::fs::write(&data, lines).unwrap();
    let out = dir.path().join("sim.json");
    let text = common::ok(&[
        "simulate",
        "--data",
        data.to_str().unwrap(),
        "--loads",
        "2",
        "--duration",
        "200",
        "--json",
        out.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["loads"][0]["modes"]["greedy"]["slo_violations"], 0, "{v}");
    let busiest = v["greedy_shares"][0][1].as_f64().unwrap();
    assert!(busiest < 0.4, "{v}");
    assert!(
        text.contains("note: greedy routing stays within the SLO at load 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("takes {:.0}% of the requests", 100.0 * busiest)),
        "{text}"
    );
    // A quarter of twice one model's capacity each: half of what a model can take.
    assert!(
        text.contains("so its queues are not overloaded there"),
        "{text}"
    );
}

/// Regression: a model with outcomes only in test is left out when the data is loaded;
/// `simulate --deployments` then failed on a deployments file naming it ("not in the
/// dataset"), and the report's `models_left_out` did not list it.
#[test]
fn a_model_without_train_outcomes_is_left_out_of_the_deployments_and_named() {
    let mut lines = String::new();
    for i in 0..300 {
        let test = i % 5 == 0;
        let mut models = serde_json::Map::new();
        for m in 0..3 {
            models.insert(
                format!("model-{m}"),
                serde_json::json!({"score": ((i + m) % 2) as f64, "cost_usd": 0.001 * (m + 1) as f64,
                                   "input_tokens": 20, "output_tokens": 50}),
            );
        }
        if test {
            models.insert(
                "unseen".into(),
                serde_json::json!({"score": 1.0, "cost_usd": 0.0001,
                                   "input_tokens": 20, "output_tokens": 50}),
            );
        }
        let rec = serde_json::json!({
            "id": format!("q{i}"),
            "prompt": format!("question number {i}"),
            "split": if test { "test" } else { "train" },
            "models": models,
        });
        lines.push_str(&format!("{rec}\n"));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("unseen.jsonl");
    std::fs::write(&data, lines).unwrap();
    let (v, err) = simulate_with_deployments(
        &data,
        "deployments:\n  - {model: unseen, replicas: 2}\n  - {model: model-0, replicas: 2}\n",
        "30",
    );
    assert!(err.contains("`unseen`"), "{err}");
    assert_eq!(
        v["models_left_out"],
        serde_json::json!(["unseen"]),
        "{}",
        v["models_left_out"]
    );
    let deps = v["deployments"].as_array().unwrap();
    assert!(deps.iter().all(|d| d["model"] != "unseen"), "{deps:?}");
    assert!(deps
        .iter()
        .any(|d| d["model"] == "model-0" && d["replicas"] == 2));
}

/// `routewise simulate --loads 1 --duration DURATION --deployments` (the file `yaml`) on
/// `data`: the JSON report and stderr.
fn simulate_with_deployments(data: &Path, yaml: &str, duration: &str) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let deployments = dir.path().join("d.yaml");
    std::fs::write(&deployments, yaml).unwrap();
    let out = dir.path().join("sim.json");
    let (_, err) = common::ok_out(&[
        "simulate",
        "--data",
        data.to_str().unwrap(),
        "--loads",
        "1",
        "--duration",
        duration,
        "--deployments",
        deployments.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]);
    let v = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (v, err)
}
