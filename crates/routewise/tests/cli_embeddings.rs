//! CLI integration of the neural featurizers: `train --featurizer static|minilm` writes an
//! artifact that `route` reloads (weights resolved from the models directory, not stored),
//! and missing weights fail with the exact fetch command, at train and at load time.
//! The round trip needs the weights (`routewise models fetch static` / `minilm`, run by
//! CI first); without them it prints why it skips.
#![cfg(test)]

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::data_file;

fn routewise(args: &[&str], models: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_routewise"));
    cmd.args(args);
    if let Some(m) = models {
        cmd.env("ROUTEWISE_MODELS", m);
    }
    cmd.output().expect("run routewise")
}

fn weights_present(model: &str) -> bool {
    let out = routewise(&["models", "path", model], None);
    let dir = String::from_utf8(out.stdout).unwrap();
    let present = Path::new(dir.trim()).join("model.safetensors").is_file();
    if !present {
        eprintln!(
            "SKIP: {model} weights absent in {} (run `routewise models fetch {model}`)",
            dir.trim()
        );
    }
    present
}

#[test]
fn missing_weights_fail_with_the_fetch_command() {
    let Some(data) = data_file() else { return };
    let empty = tempfile::tempdir().unwrap();
    let out_file = empty.path().join("x.rw");
    for name in ["static", "minilm"] {
        let out = routewise(
            &[
                "train",
                "--data",
                data.to_str().unwrap(),
                "--featurizer",
                name,
                "--limit",
                "40",
                "--out",
                out_file.to_str().unwrap(),
            ],
            Some(empty.path()),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("routewise models fetch {name}")),
            "{err}"
        );
        assert!(!out_file.exists());
    }
}

#[test]
fn neural_artifacts_round_trip_through_route() {
    let Some(data) = data_file() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    for name in ["static", "minilm"] {
        if !weights_present(name) {
            continue;
        }
        let art = tmp.path().join(format!("{name}.rw"));
        let out = routewise(
            &[
                "train",
                "--data",
                data.to_str().unwrap(),
                "--featurizer",
                name,
                "--router",
                "knn",
                "--limit",
                "120",
                "--out",
                art.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Weights are referenced, not embedded: the artifact stays small.
        let size = std::fs::metadata(&art).unwrap().len();
        assert!(size < 2_000_000, "{name} artifact is {size} bytes");
        let prompt = "Write a Python function that merges two sorted lists.";
        let out = routewise(&["route", "--model", art.to_str().unwrap(), prompt], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["featurizer"], name, "{v}");
        let ranking = v["ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), 11, "{v}");
        assert_eq!(v["chosen"], ranking[0], "{v}");
        // Real (non-zero) embeddings: two unrelated prompts get different neighbours and
        // so different predictions (zero vectors would give identical ones).
        let other = routewise(
            &[
                "route",
                "--model",
                art.to_str().unwrap(),
                "Who painted the Mona Lisa, and when?",
            ],
            None,
        );
        assert!(other.status.success());
        let w: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
        assert_ne!(v["models"], w["models"], "{v}\n{w}");
        // Loading the artifact where the weights are absent names the fetch command.
        let out = routewise(
            &["route", "--model", art.to_str().unwrap(), prompt],
            Some(empty.path()),
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("routewise models fetch {name}")),
            "{err}"
        );
    }
}
