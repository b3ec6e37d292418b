//! Choosing and fitting the prompt featurizer named on the command line
//! (`--featurizer`, default `tfidf`). `train` and `eval` both go through
//! [`fit_featurizer`], so a new featurizer is one match arm here.

use routewise_features::{
    AnyFeaturizer, MiniLmFeaturizer, StaticFeaturizer, TfidfConfig, TfidfFeaturizer,
};

/// The featurizer names `--featurizer` accepts.
pub const FEATURIZERS: &[&str] = &["tfidf", "static", "minilm"];

/// Fits the featurizer `name` on the training prompts.
pub fn fit_featurizer(name: &str, train_texts: &[&str]) -> anyhow::Result<AnyFeaturizer> {
    match name.trim().to_ascii_lowercase().as_str() {
        "tfidf" => Ok(AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(
            train_texts,
            TfidfConfig::default(),
        ))),
        // Neural featurizers are not fitted: they load pre-trained weights fetched with
        // `routewise models fetch static|minilm` (the error says so when missing).
        "static" => Ok(AnyFeaturizer::Static(StaticFeaturizer::open("static")?)),
        "minilm" => Ok(AnyFeaturizer::MiniLm(MiniLmFeaturizer::open("minilm")?)),
        other => anyhow::bail!(
            "unknown featurizer `{other}` (known: {})",
            FEATURIZERS.join(", ")
        ),
    }
}
