//! The embedded demo (`routewise serve` with no `--config`), labelled as a demo everywhere.
//!
//! * `fixtures/routerbench-demo.jsonl`: 300 RouterBench train prompts (tails of the
//!   prompts, all 11 models' real outcomes with their extracted answers, and the gold
//!   `reference` where RouterBench has one), derived by `fixtures/make_demo_fixture.py`
//!   from `../shared/data/routerbench-3k.jsonl`;
//! * `fixtures/demo.yaml`: the config, every model served by the `replay` provider;
//! * the router: the built-in compact static embeddings (`static-mini`, the default
//!   featurizer) + kNN, trained on the fixture at start-up (well under a second), with the
//!   catalog (prices, mean output tokens) fitted on the same records.

use std::path::Path;

use routewise_data::{jsonl, DataError, Dataset, Record};
use routewise_features::FeaturizerKind;
use routewise_online::StateConfig;
use routewise_router::{Engine, RouterConfigs, RouterError, RouterKind};

use crate::config::{self, Config, ConfigError};

/// The demo's routing data (canonical JSONL).
pub const DEMO_FIXTURE: &str = include_str!("../fixtures/routerbench-demo.jsonl");
/// The demo's config.
pub const DEMO_CONFIG: &str = include_str!("../fixtures/demo.yaml");
/// How the demo config is named in messages.
pub const DEMO_SOURCE: &str = "<embedded demo config>";

/// Parses the embedded fixture.
pub fn dataset() -> Result<Dataset, DataError> {
    jsonl::parse(DEMO_FIXTURE.as_bytes(), Path::new("routerbench-demo.jsonl"))
}

/// The demo config, with `ROUTEWISE_*` overrides from `overrides`.
pub fn config(
    overrides: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut c = config::parse(DEMO_CONFIG, DEMO_SOURCE, Path::new("."), overrides, |k| {
        std::env::var(k).ok()
    })?;
    // With `ROUTEWISE_BANDIT__...` set, the demo's default state file goes to the temp
    // directory, not the working directory (`ROUTEWISE_STATE__PATH` still wins).
    if c.state.path == Path::new(".").join(StateConfig::default().path) {
        c.state.path = std::env::temp_dir().join("routewise-demo-state.redb");
    }
    Ok(c)
}

/// Trains the demo router (`static-mini` + kNN) on `data`'s train records, through the
/// one training pipeline.
pub fn engine(data: &Dataset) -> Result<Engine, RouterError> {
    let train: Vec<&Record> = data.train().collect();
    let prepared = routewise_router::prepare(&data.models, &train, FeaturizerKind::StaticMini)?;
    let router = prepared.fit(RouterKind::Knn, &RouterConfigs::default())?;
    Ok(prepared.into_engine(router))
}
