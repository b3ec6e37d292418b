//! Static embeddings (model2vec-style): tokenize, look up one vector per token, mean-pool,
//! L2-normalise. Method: Tulkens & van Dongen, "Model2Vec: turn any sentence transformer
//! into a small fast model" (MinishLab, 2024): a per-token table distilled from a sentence
//! transformer (see [`crate::distill`]), used as a bag of embeddings at inference.
//!
//! Model directory layout (the same as model2vec's): `tokenizer.json` (a Hugging Face
//! tokenizer) and `model.safetensors` holding one f32 tensor `embeddings` of shape
//! `[vocab, dim]`. Any model2vec model in that layout works. The artifact stores the model
//! name (or directory) and the files' sha256; [`StaticFeaturizer::load`] resolves the
//! directory ([`crate::weights::model_dir`]) and checks the hashes.
//!
//! Input is cut to [`StaticFeaturizer::max_tokens`] tokens (default 512) after tokenizing a
//! prefix of at most 16 bytes per token of budget (bounds the cost of huge prompts).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::handle::{self, Loaded};
use crate::{FeatureError, Featurizer};

/// Default token budget of the static featurizer.
pub const DEFAULT_MAX_TOKENS: usize = 512;

/// Files a static model directory must hold.
pub const STATIC_FILES: &[&str] = &["tokenizer.json", "model.safetensors"];

/// A static-embedding featurizer: configuration (serialised) + loaded table (not).
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct StaticFeaturizer {
    /// Model name (`static-minilm-256`) or a model directory path.
    pub model: String,
    pub dim: usize,
    pub max_tokens: usize,
    /// sha256 of each model file at training time (file name -> hex).
    pub sha256: BTreeMap<String, String>,
    /// Whether the weights are loaded (shared by clones; never serialised).
    #[serde(skip)]
    loaded: Loaded<imp::State>,
}

impl StaticFeaturizer {
    /// Opens the static model `model` (a registered name such as `static`, or a directory
    /// in model2vec layout): checks the files, records their hashes, loads the table.
    pub fn open(model: &str) -> Result<Self, FeatureError> {
        let opened = handle::open_model(model, STATIC_FILES)?;
        let state = imp::State::load(&opened.dir, DEFAULT_MAX_TOKENS)?;
        Ok(StaticFeaturizer {
            model: opened.name,
            dim: state.dim(),
            max_tokens: DEFAULT_MAX_TOKENS,
            sha256: opened.sha256,
            loaded: Loaded::new(state),
        })
    }

    /// Resolves and loads the weights recorded in this featurizer (after deserialising),
    /// checking every file against the recorded sha256. Idempotent.
    pub fn load(&self) -> Result<(), FeatureError> {
        if self.loaded.is_loaded() {
            return Ok(());
        }
        let dir = handle::verified_dir(&self.model, &self.sha256)?;
        let state = imp::State::load(&dir, self.max_tokens)?;
        if state.dim() != self.dim {
            return Err(FeatureError::BadModel {
                path: dir,
                message: format!(
                    "dimension {} but the artifact expects {}",
                    state.dim(),
                    self.dim
                ),
            });
        }
        self.loaded.set(state);
        Ok(())
    }

    /// Whether the table is loaded (featurizing before that yields zero vectors).
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_loaded()
    }

    /// Token ids through the `tokenizers` crate only (reference for the fast path).
    pub fn reference_token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        self.load()?;
        match self.loaded.get() {
            Some(s) => s.slow_token_ids(text),
            None => Ok(Vec::new()),
        }
    }

    /// The token ids the featurizer pools for `text` (after truncation).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        match self.loaded.get() {
            Some(s) => s.token_ids(text),
            None => {
                self.load()?;
                self.token_ids(text)
            }
        }
    }
}

impl Featurizer for StaticFeaturizer {
    fn dim(&self) -> usize {
        self.dim
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        out.fill(0.0);
        if !self.loaded.is_loaded() && self.load().is_err() {
            return;
        }
        if let Some(s) = self.loaded.get() {
            s.embed_into(text, out);
        }
    }
}

/// Cuts `text` to at most `max_bytes` bytes at a char boundary.
pub fn prefix(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(feature = "static-embed")]
mod imp {
    use std::path::Path;

    use tokenizers::{Tokenizer, TruncationParams};

    use crate::FeatureError;

    /// The loaded tokenizer and `[vocab, dim]` table.
    pub struct State {
        tokenizer: Tokenizer,
        fast: Option<crate::wordpiece::FastWordPiece>,
        table: Vec<f32>,
        dim: usize,
        max_tokens: usize,
    }

    impl State {
        pub fn load(dir: &Path, max_tokens: usize) -> Result<Self, FeatureError> {
            let tokenizer = load_tokenizer(dir, max_tokens)?;
            let tok_path = dir.join("tokenizer.json");
            let tok_text =
                std::fs::read_to_string(&tok_path).map_err(|e| FeatureError::io(&tok_path, e))?;
            let fast = serde_json::from_str(&tok_text)
                .ok()
                .and_then(|v| crate::wordpiece::FastWordPiece::from_tokenizer_json(&v));
            let path = dir.join("model.safetensors");
            let bytes = std::fs::read(&path).map_err(|e| FeatureError::io(&path, e))?;
            let (table, dim) = read_f32_matrix(&bytes, "embeddings").map_err(|message| {
                FeatureError::BadModel {
                    path: path.clone(),
                    message,
                }
            })?;
            let rows = table.len() / dim.max(1);
            if rows < tokenizer.get_vocab_size(true) {
                return Err(FeatureError::BadModel {
                    path,
                    message: format!(
                        "{rows} rows but the tokenizer has {} tokens",
                        tokenizer.get_vocab_size(true)
                    ),
                });
            }
            Ok(State {
                tokenizer,
                fast,
                table,
                dim,
                max_tokens,
            })
        }

        pub fn dim(&self) -> usize {
            self.dim
        }

        pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
            let text = super::prefix(text, self.max_tokens.saturating_mul(16));
            if let Some(fast) = &self.fast {
                let mut ids = Vec::with_capacity(text.len() / 3 + 1);
                if fast.encode(text, self.max_tokens, &mut ids).is_some() {
                    return Ok(ids);
                }
            }
            self.slow_token_ids(text)
        }

        /// Token ids through the `tokenizers` crate (the reference path).
        pub fn slow_token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
            let text = super::prefix(text, self.max_tokens.saturating_mul(16));
            let enc = self
                .tokenizer
                .encode_fast(text, false)
                .map_err(|e| FeatureError::Tokenizer(e.to_string()))?;
            Ok(enc.get_ids().to_vec())
        }

        pub fn embed_into(&self, text: &str, out: &mut [f32]) {
            let ids = match self.token_ids(text) {
                Ok(ids) => ids,
                Err(_) => return,
            };
            let d = self.dim;
            let mut n = 0usize;
            for &id in &ids {
                let start = id as usize * d;
                if let Some(row) = self.table.get(start..start + d) {
                    out.iter_mut().zip(row).for_each(|(o, x)| *o += x);
                    n += 1;
                }
            }
            if n > 0 {
                let inv = 1.0 / n as f32;
                out.iter_mut().for_each(|o| *o *= inv);
            }
            crate::l2_normalize(out);
        }
    }

    /// The model's `tokenizer.json` with our truncation and no padding.
    pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<Tokenizer, FeatureError> {
        let path = dir.join("tokenizer.json");
        let mut tok = Tokenizer::from_file(&path)
            .map_err(|e| FeatureError::Tokenizer(format!("{}: {e}", path.display())))?;
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| FeatureError::Tokenizer(e.to_string()))?;
        Ok(tok)
    }

    /// Reads a 2-D f32 tensor from safetensors bytes: (row-major values, columns).
    pub fn read_f32_matrix(bytes: &[u8], name: &str) -> Result<(Vec<f32>, usize), String> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let t = st
            .tensor(name)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 {
            return Err(format!(
                "tensor `{name}` must be 2-D f32, found {:?} {:?}",
                t.dtype(),
                t.shape()
            ));
        }
        let values = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((values, t.shape()[1]))
    }

    /// Writes a 2-D f32 tensor as a safetensors file.
    pub fn write_f32_matrix(
        path: &Path,
        name: &str,
        values: &[f32],
        cols: usize,
    ) -> Result<(), FeatureError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let rows = values.len() / cols.max(1);
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, cols], &bytes)
                .map_err(|e| FeatureError::BadModel {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        let out =
            safetensors::serialize([(name, view)], None).map_err(|e| FeatureError::BadModel {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        std::fs::write(path, out).map_err(|e| FeatureError::io(path, e))
    }
}

#[cfg(not(feature = "static-embed"))]
mod imp {
    use std::path::Path;

    use crate::FeatureError;

    /// Placeholder state type: without the `static-embed` feature nothing can be loaded.
    pub struct State;

    impl State {
        pub fn load(_dir: &Path, _max_tokens: usize) -> Result<Self, FeatureError> {
            Err(FeatureError::Disabled {
                featurizer: "static",
                feature: "static-embed",
            })
        }
        pub fn dim(&self) -> usize {
            0
        }
        pub fn token_ids(&self, _text: &str) -> Result<Vec<u32>, FeatureError> {
            Ok(Vec::new())
        }
        pub fn slow_token_ids(&self, _text: &str) -> Result<Vec<u32>, FeatureError> {
            Ok(Vec::new())
        }
        pub fn embed_into(&self, _text: &str, _out: &mut [f32]) {}
    }
}

#[cfg(feature = "static-embed")]
pub use imp::{load_tokenizer, read_f32_matrix, write_f32_matrix};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn prefix_respects_char_boundaries() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(prefix("abc", 10), "abc");
    }

    #[test]
    fn unloaded_featurizer_writes_zeros_and_load_names_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let f = StaticFeaturizer {
            model: dir.path().join("nope").display().to_string(),
            dim: 4,
            max_tokens: 8,
            sha256: [("model.safetensors".to_string(), String::new())].into(),
            loaded: Default::default(),
        };
        let mut out = [1.0; 4];
        f.featurize_into("hello", &mut out);
        assert_eq!(out, [0.0; 4]);
        let err = f.load().unwrap_err().to_string();
        assert!(err.contains("routewise models fetch"), "{err}");
    }
}
