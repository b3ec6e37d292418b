//! Choosing and fitting the prompt featurizer named on the command line
//! (`--featurizer`, default `tfidf`). `train` and `eval` both go through
//! [`fit_featurizer`], so a new featurizer is one match arm here.

use routewise_features::{AnyFeaturizer, TfidfConfig, TfidfFeaturizer};

/// The featurizer names `--featurizer` accepts.
pub const FEATURIZERS: &[&str] = &["tfidf"];

/// Fits the featurizer `name` on the training prompts.
pub fn fit_featurizer(name: &str, train_texts: &[&str]) -> anyhow::Result<AnyFeaturizer> {
    match name.trim().to_ascii_lowercase().as_str() {
        "tfidf" => Ok(AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(
            train_texts,
            TfidfConfig::default(),
        ))),
        other => anyhow::bail!(
            "unknown featurizer `{other}` (known: {})",
            FEATURIZERS.join(", ")
        ),
    }
}
