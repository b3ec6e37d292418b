//! Hashed TF-IDF featurizer (placeholder until the router-lab work lands the real one).

use serde::{Deserialize, Serialize};

use crate::Featurizer;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TfidfConfig {
    pub dim: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TfidfFeaturizer {
    pub config: TfidfConfig,
}

impl TfidfFeaturizer {
    pub fn fit(texts: &[&str], config: TfidfConfig) -> Self {
        let _ = texts;
        TfidfFeaturizer { config }
    }
}

impl Featurizer for TfidfFeaturizer {
    fn dim(&self) -> usize {
        self.config.dim
    }
    fn featurize_into(&self, _text: &str, out: &mut [f32]) {
        out.fill(0.0);
    }
}
