//! Prompt featurizers: text in, a dense L2-normalised `f32` vector out.
//!
//! Every router works on the output of a [`Featurizer`]; which one is used is recorded in
//! the router artifact as an [`AnyFeaturizer`]. The embedded default is [`tfidf`]
//! (hashed TF-IDF; no download, deterministic). Neural embeddings whose weights are
//! fetched with `routewise models fetch`: [`static_embed`] (model2vec-style token lookup,
//! feature `static-embed`) and [`minilm`] (all-MiniLM-L6-v2 on candle, feature `minilm`).
//! Artifacts store only their model name and file hashes; the weights are resolved from
//! the models directory ([`weights`]) when the featurizer is loaded.

#[cfg(feature = "minilm")]
pub mod bert;
pub mod compact;
#[cfg(feature = "minilm")]
pub mod distill;
pub mod fastmath;
mod handle;
pub mod minilm;
#[cfg(feature = "minilm")]
pub mod pca;
pub mod pooling;
pub mod static_embed;
pub mod tfidf;
pub mod weights;
#[cfg(feature = "static-embed")]
pub mod wordpiece;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use minilm::MiniLmFeaturizer;
pub use static_embed::{BuiltinStaticFeaturizer, StaticFeaturizer};
pub use tfidf::{TfidfConfig, TfidfFeaturizer};

/// Errors from loading embedding weights or running an embedding model.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("weights of model `{model}` not found: missing {path}; fetch them with: {fetch}")]
    MissingWeights {
        model: String,
        path: PathBuf,
        fetch: String,
    },
    #[error(
        "{path}: sha256 {actual} differs from the expected {expected}; re-fetch with: {fetch}"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
        fetch: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the `{featurizer}` featurizer needs routewise built with the cargo feature `{feature}`"
    )]
    Disabled {
        featurizer: &'static str,
        feature: &'static str,
    },
    #[error("invalid model files in {path}: {message}")]
    BadModel { path: PathBuf, message: String },
    #[error(
        "this artifact was trained with the built-in static model sha256 {expected}, but this \
         routewise ships {actual}: retrain the router, or serve it with the routewise version \
         that trained it"
    )]
    BuiltinMismatch { expected: String, actual: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model inference: {0}")]
    Inference(String),
}

impl FeatureError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        FeatureError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Turns a prompt into a fixed-size, L2-normalised dense vector.
pub trait Featurizer: Send + Sync {
    /// Output dimension.
    fn dim(&self) -> usize;

    /// Writes the features of `text` into `out` (`out.len() == self.dim()`).
    fn featurize_into(&self, text: &str, out: &mut [f32]);

    /// The features of `text` as a new vector.
    fn featurize(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0; self.dim()];
        self.featurize_into(text, &mut v);
        v
    }

    /// Features of many texts, row-major (`texts.len() * dim()`). Implementations may
    /// batch (neural models) or parallelise.
    fn featurize_batch(&self, texts: &[&str]) -> Vec<f32> {
        let d = self.dim();
        let mut out = vec![0.0; texts.len() * d];
        for (t, row) in texts.iter().zip(out.chunks_exact_mut(d.max(1))) {
            self.featurize_into(t, row);
        }
        out
    }
}

/// The featurizer stored in an artifact (config enum; see each variant's module).
#[derive(Debug, Clone, Serialize, Deserialize)]
///
/// Externally tagged (serde's default) so the bincode artifact payload can read it back
/// (bincode cannot deserialise internally tagged enums).
#[serde(rename_all = "lowercase")]
pub enum AnyFeaturizer {
    Tfidf(TfidfFeaturizer),
    Static(StaticFeaturizer),
    MiniLm(MiniLmFeaturizer),
    /// The built-in compact static model (appended last: bincode stores the variant
    /// index, so older artifacts keep loading).
    #[serde(rename = "static-mini")]
    StaticMini(BuiltinStaticFeaturizer),
}

impl AnyFeaturizer {
    /// The short name used on the command line and in artifacts (`tfidf`, ...).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Which kind of featurizer this is.
    pub fn kind(&self) -> FeaturizerKind {
        match self {
            AnyFeaturizer::Tfidf(_) => FeaturizerKind::Tfidf,
            AnyFeaturizer::Static(_) => FeaturizerKind::Static,
            AnyFeaturizer::MiniLm(_) => FeaturizerKind::MiniLm,
            AnyFeaturizer::StaticMini(_) => FeaturizerKind::StaticMini,
        }
    }

    /// Loads the weights a neural featurizer needs (no-op for TF-IDF). Call this after
    /// deserialising an artifact: until it succeeds, a neural featurizer writes zero
    /// vectors. The error names the command that fetches missing weights.
    pub fn load(&self) -> Result<(), FeatureError> {
        match self {
            AnyFeaturizer::Tfidf(_) => Ok(()),
            AnyFeaturizer::Static(f) => f.load(),
            AnyFeaturizer::MiniLm(f) => f.load(),
            AnyFeaturizer::StaticMini(f) => f.load(),
        }
    }
}

impl Featurizer for AnyFeaturizer {
    fn dim(&self) -> usize {
        match self {
            AnyFeaturizer::Tfidf(f) => f.dim(),
            AnyFeaturizer::Static(f) => f.dim(),
            AnyFeaturizer::MiniLm(f) => f.dim(),
            AnyFeaturizer::StaticMini(f) => f.dim(),
        }
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        match self {
            AnyFeaturizer::Tfidf(f) => f.featurize_into(text, out),
            AnyFeaturizer::Static(f) => f.featurize_into(text, out),
            AnyFeaturizer::MiniLm(f) => f.featurize_into(text, out),
            AnyFeaturizer::StaticMini(f) => f.featurize_into(text, out),
        }
    }

    fn featurize_batch(&self, texts: &[&str]) -> Vec<f32> {
        match self {
            AnyFeaturizer::Tfidf(f) => f.featurize_batch(texts),
            AnyFeaturizer::Static(f) => f.featurize_batch(texts),
            AnyFeaturizer::MiniLm(f) => f.featurize_batch(texts),
            AnyFeaturizer::StaticMini(f) => f.featurize_batch(texts),
        }
    }
}

/// The featurizers routewise can fit or open (the config enum behind `--featurizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeaturizerKind {
    /// The built-in compact static embeddings (default).
    StaticMini,
    /// Hashed TF-IDF fitted on the training prompts.
    Tfidf,
    /// The full static embeddings (`routewise models fetch static`).
    Static,
    /// all-MiniLM-L6-v2 on candle (`routewise models fetch minilm`).
    MiniLm,
}

impl FeaturizerKind {
    /// Every kind, the default first.
    pub const ALL: [FeaturizerKind; 4] = [
        FeaturizerKind::StaticMini,
        FeaturizerKind::Tfidf,
        FeaturizerKind::Static,
        FeaturizerKind::MiniLm,
    ];

    /// The name used on the command line and in artifacts.
    pub fn name(self) -> &'static str {
        match self {
            FeaturizerKind::StaticMini => "static-mini",
            FeaturizerKind::Tfidf => "tfidf",
            FeaturizerKind::Static => "static",
            FeaturizerKind::MiniLm => "minilm",
        }
    }

    /// One line for `--help`.
    pub fn description(self) -> &'static str {
        match self {
            FeaturizerKind::StaticMini => {
                "built-in compact static embeddings (128-d int8, distilled from all-MiniLM-L6-v2); no download"
            }
            FeaturizerKind::Tfidf => "hashed word and char n-gram TF-IDF, fitted on the training prompts",
            FeaturizerKind::Static => {
                "full static embeddings (256-d); needs `routewise models fetch static`"
            }
            FeaturizerKind::MiniLm => {
                "all-MiniLM-L6-v2 on CPU (slow: ~20 ms a prompt); needs `routewise models fetch minilm`"
            }
        }
    }

    /// Fits (TF-IDF, on `train_texts`) or opens (the embedding models) a featurizer.
    pub fn fit(self, train_texts: &[&str]) -> Result<AnyFeaturizer, FeatureError> {
        Ok(match self {
            FeaturizerKind::StaticMini => {
                AnyFeaturizer::StaticMini(BuiltinStaticFeaturizer::new()?)
            }
            FeaturizerKind::Tfidf => {
                AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(train_texts, TfidfConfig::default()))
            }
            FeaturizerKind::Static => AnyFeaturizer::Static(StaticFeaturizer::open("static")?),
            FeaturizerKind::MiniLm => AnyFeaturizer::MiniLm(MiniLmFeaturizer::open("minilm")?),
        })
    }
}

impl fmt::Display for FeaturizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown featurizer name.
#[derive(Debug, thiserror::Error)]
#[error("unknown featurizer `{0}` (known: static-mini, tfidf, static, minilm)")]
pub struct UnknownFeaturizer(pub String);

impl FromStr for FeaturizerKind {
    type Err = UnknownFeaturizer;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        FeaturizerKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownFeaturizer(s.to_string()))
    }
}

/// L2-normalises `v` in place; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
