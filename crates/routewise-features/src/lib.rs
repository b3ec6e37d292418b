//! Prompt featurizers: text in, a dense L2-normalised `f32` vector out.
//!
//! Every router works on the output of a [`Featurizer`]; which one is used is recorded in
//! the router artifact as an [`AnyFeaturizer`]. The embedded default is [`tfidf`]
//! (hashed TF-IDF; no download, deterministic).

pub mod tfidf;

use serde::{Deserialize, Serialize};

pub use tfidf::{TfidfConfig, TfidfFeaturizer};

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
}

impl AnyFeaturizer {
    /// The short name used on the command line and in artifacts (`tfidf`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            AnyFeaturizer::Tfidf(_) => "tfidf",
        }
    }
}

impl Featurizer for AnyFeaturizer {
    fn dim(&self) -> usize {
        match self {
            AnyFeaturizer::Tfidf(f) => f.dim(),
        }
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        match self {
            AnyFeaturizer::Tfidf(f) => f.featurize_into(text, out),
        }
    }

    fn featurize_batch(&self, texts: &[&str]) -> Vec<f32> {
        match self {
            AnyFeaturizer::Tfidf(f) => f.featurize_batch(texts),
        }
    }
}

/// L2-normalises `v` in place; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
