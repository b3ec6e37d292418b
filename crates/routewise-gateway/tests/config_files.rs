//! Config files on disk: a router artifact and the `models` list must agree, and every
//! problem names the file and the field.
#![cfg(test)]

mod common;

use routewise_gateway::load;
use routewise_router::Artifact;

fn write_artifact(dir: &std::path::Path) {
    let e = common::abc();
    Artifact::new("test", e.featurizer, e.router, e.catalog, 3)
        .save(&dir.join("r.rw"))
        .unwrap();
}

#[test]
fn artifact_and_models_must_agree_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    write_artifact(dir.path());
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "router: {artifact: r.rw}\nmodels:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1'}\n  - {name: b, base_url: 'http://127.0.0.1:9/v1'}\n  - {name: d, base_url: 'http://127.0.0.1:9/v1'}\n",
    )
    .unwrap();
    let err = load::from_file(&path).unwrap_err().to_string();
    let file = path.display();
    assert!(
        err.contains(&format!(
            "{file}: models[2].name: `d` is not a model the router knows"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}: router.artifact: the router knows `c` but no `models` entry serves it"
        )),
        "{err}"
    );

    std::fs::write(
        &path,
        "router: {artifact: r.rw, policy: {budget_usd: 0.01}}\nmodels:\n  - {name: c, base_url: 'http://127.0.0.1:9/v1'}\n  - {name: a, base_url: 'https://api.example.com/v1'}\n  - {name: b, base_url: 'http://127.0.0.1:9/v1', price: {input_per_mtok: 1, output_per_mtok: 2}}\n",
    )
    .unwrap();
    let state = load::from_file(&path).unwrap();
    assert_eq!(state.upstreams.len(), 3);
    assert_eq!(state.engine.router.name(), "linear");
    // configured prices override the artifact's catalog
    let b = state.engine.catalog.index("b").unwrap();
    assert_eq!(state.engine.catalog.models[b].output_per_mtok, 2.0);
}

#[test]
fn a_missing_or_corrupt_artifact_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "router: {artifact: nope.rw}\nmodels: [{name: a, base_url: 'http://x/v1'}]\n",
    )
    .unwrap();
    let err = load::from_file(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: router.artifact: ", path.display())),
        "{err}"
    );
    std::fs::write(dir.path().join("nope.rw"), b"garbage").unwrap();
    let err = load::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("router.artifact"), "{err}");
    let err = load::from_file(&dir.path().join("absent.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("absent.yaml") && err.contains("cannot read"),
        "{err}"
    );
}
