//! `routewise keys`: virtual keys made, listed, updated and revoked in the config's state
//! store (opened directly here; through a running gateway's admin API in `cli_serve.rs`).
#![cfg(test)]

mod common;

use serde_json::Value;

/// A config with `auth: {mode: keys}` and its state file in `dir`.
pub fn keys_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("gw.yaml");
    let text = format!(
        r#"listen: 127.0.0.1:{port}
router: {{mode: rules}}
auth: {{mode: keys}}
state: {{path: "{}"}}
models:
  - {{name: small, base_url: "http://127.0.0.1:9/v1", price: {{input_per_mtok: 0.1, output_per_mtok: 0.1}}, quality_tier: 1}}
  - {{name: big, base_url: "http://127.0.0.1:9/v1", price: {{input_per_mtok: 5, output_per_mtok: 5}}, quality_tier: 2}}
"#,
        dir.join("state.redb").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn keys_are_created_listed_updated_and_revoked_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = keys_config(dir.path(), 8080);
    let cfg = cfg.to_str().unwrap();
    let out = common::ok(&[
        "keys",
        "--config",
        cfg,
        "create",
        "--name",
        "search-team",
        "--models",
        "small",
        "--policy",
        "lambda=5",
    ]);
    // The key, and nothing else, on stdout.
    let key = out.trim_end();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        key.starts_with("rw-") && key.len() == 3 + 10 + 1 + 32,
        "{key}"
    );
    let id = &key[3..13];

    let list = common::ok(&["keys", "--config", cfg, "list", "--json"]);
    let rec: Value = serde_json::from_str(list.trim()).unwrap();
    assert_eq!(
        (rec["id"].as_str(), rec["name"].as_str()),
        (Some(id), Some("search-team"))
    );
    assert_eq!(rec["models"], serde_json::json!(["small"]));
    assert!(
        rec.get("hash").is_none() && !list.contains(&key[14..]),
        "{list}"
    );

    let up = common::ok(&[
        "keys", "--config", cfg, "update", id, "--team", "search", "--tag", "env=prod",
    ]);
    let up: Value = serde_json::from_str(up.trim()).unwrap();
    assert_eq!(
        (up["team"].as_str(), up["tags"]["env"].as_str()),
        (Some("search"), Some("prod"))
    );

    // Pacing: on with `--pace`, off with `--pace false`; it needs a budget.
    let up = common::ok(&[
        "keys",
        "--config",
        cfg,
        "update",
        id,
        "--budget-usd",
        "50",
        "--period",
        "week",
        "--pace",
    ]);
    let up: Value = serde_json::from_str(up.trim()).unwrap();
    assert_eq!(
        (up["pace"].as_bool(), up["budget_usd"].as_f64()),
        (Some(true), Some(50.0))
    );
    let table = common::ok(&["keys", "--config", cfg, "list"]);
    assert!(table.contains("$50/week paced"), "{table}");
    let up = common::ok(&["keys", "--config", cfg, "update", id, "--pace", "false"]);
    let up: Value = serde_json::from_str(up.trim()).unwrap();
    assert!(up.get("pace").is_none(), "{up}");
    let bad = common::routewise(&["keys", "--config", cfg, "create", "--name", "y", "--pace"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pace"));

    common::ok(&["keys", "--config", cfg, "revoke", id]);
    let table = common::ok(&["keys", "--config", cfg, "list"]);
    assert!(table.contains(id) && table.contains("revoked"), "{table}");

    // Bad specs fail with the field named.
    let bad = common::routewise(&[
        "keys", "--config", cfg, "create", "--name", "x", "--models", "gpt-9",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("models") && err.contains("gpt-9"), "{err}");
    assert!(bad.stdout.is_empty());
}
