//! Static embeddings (model2vec-style): tokenize, look up one vector per token, mean-pool,
//! L2-normalise. Method: Tulkens & van Dongen, "Model2Vec: turn any sentence transformer
//! into a small fast model" (MinishLab, 2024): a per-token table distilled from a sentence
//! transformer (see [`crate::distill`]), used as a bag of embeddings at inference.
//!
//! Two sources of the table:
//! * [`StaticFeaturizer`] (`static`): a model directory in model2vec's layout,
//!   `tokenizer.json` (a Hugging Face tokenizer) and `model.safetensors` holding one f32
//!   tensor `embeddings` of shape `[vocab, dim]`. Any model2vec model in that layout works.
//!   The artifact stores the model name (or directory) and the files' sha256;
//!   [`StaticFeaturizer::load`] resolves the directory ([`crate::weights::model_dir`]) and
//!   checks the hashes.
//! * [`BuiltinStaticFeaturizer`] (`static-mini`, the default): the compact int8 model
//!   compiled into the binary ([`crate::compact`]); nothing to download. The artifact
//!   stores the file's sha256, and loading refuses a binary whose built-in model differs.
//!
//! Input is cut to `max_tokens` tokens (default 512) after tokenizing a prefix of at most
//! 16 bytes per token of budget (bounds the cost of huge prompts).

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
        with_state(&self.loaded, || self.load(), |s| s.slow_token_ids(text))
    }

    /// The token ids the featurizer pools for `text` (after truncation).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        with_state(&self.loaded, || self.load(), |s| s.token_ids(text))
    }
}

impl Featurizer for StaticFeaturizer {
    fn dim(&self) -> usize {
        self.dim
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        embed_loaded(&self.loaded, || self.load(), text, out);
    }
}

/// Runs `f` on the loaded state, loading it first with `load` when needed.
fn with_state<T>(
    loaded: &Loaded<imp::State>,
    load: impl FnOnce() -> Result<(), FeatureError>,
    f: impl FnOnce(&imp::State) -> Result<T, FeatureError>,
) -> Result<T, FeatureError> {
    if !loaded.is_loaded() {
        load()?;
    }
    match loaded.get() {
        Some(s) => f(s),
        None => Err(FeatureError::Inference("the model is not loaded".into())),
    }
}

/// Embeds `text` into `out` with the loaded state (zeros when it cannot be loaded).
fn embed_loaded(
    loaded: &Loaded<imp::State>,
    load: impl FnOnce() -> Result<(), FeatureError>,
    text: &str,
    out: &mut [f32],
) {
    out.fill(0.0);
    if !loaded.is_loaded() && load().is_err() {
        return;
    }
    if let Some(s) = loaded.get() {
        s.embed_into(text, out);
    }
}

/// The built-in compact static model (`static-mini`): configuration (serialised) + the
/// loaded table (not). See [`crate::compact`] for the model and how it was derived.
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct BuiltinStaticFeaturizer {
    pub dim: usize,
    pub max_tokens: usize,
    /// sha256 of the built-in model file this featurizer was trained with.
    pub sha256: String,
    /// The loaded model (shared by clones; never serialised).
    #[serde(skip)]
    loaded: Loaded<imp::State>,
}

impl BuiltinStaticFeaturizer {
    /// The built-in model, loaded.
    pub fn new() -> Result<Self, FeatureError> {
        let state = imp::State::builtin(DEFAULT_MAX_TOKENS)?;
        Ok(BuiltinStaticFeaturizer {
            dim: state.dim(),
            max_tokens: DEFAULT_MAX_TOKENS,
            sha256: imp::builtin_sha256().to_string(),
            loaded: Loaded::new(state),
        })
    }

    /// Loads the built-in model after deserialising, refusing an artifact trained with a
    /// different built-in model. Idempotent.
    pub fn load(&self) -> Result<(), FeatureError> {
        if self.loaded.is_loaded() {
            return Ok(());
        }
        let actual = imp::builtin_sha256();
        if actual != self.sha256 {
            return Err(FeatureError::BuiltinMismatch {
                expected: self.sha256.clone(),
                actual: actual.to_string(),
            });
        }
        let state = imp::State::builtin(self.max_tokens)?;
        if state.dim() != self.dim {
            return Err(FeatureError::Inference(format!(
                "built-in static model has dimension {} but the artifact expects {}",
                state.dim(),
                self.dim
            )));
        }
        self.loaded.set(state);
        Ok(())
    }

    /// The token ids the featurizer pools for `text` (after truncation).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        with_state(&self.loaded, || self.load(), |s| s.token_ids(text))
    }

    /// Token ids through the `tokenizers` crate only (reference for the fast path).
    pub fn reference_token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        with_state(&self.loaded, || self.load(), |s| s.slow_token_ids(text))
    }
}

impl Featurizer for BuiltinStaticFeaturizer {
    fn dim(&self) -> usize {
        self.dim
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        embed_loaded(&self.loaded, || self.load(), text, out);
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
    use std::str::FromStr;
    use std::sync::OnceLock;

    use tokenizers::{Tokenizer, TruncationParams};

    use crate::compact::CompactModel;
    use crate::FeatureError;

    /// The built-in compact model (see `crate::compact` and `models/README.md`).
    static BUILTIN: &[u8] = include_bytes!("../models/static-mini.bin");

    /// sha256 of the built-in model file (hashed once).
    pub fn builtin_sha256() -> &'static str {
        static HASH: OnceLock<String> = OnceLock::new();
        HASH.get_or_init(|| {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(BUILTIN))
        })
    }

    /// Where token vectors come from.
    enum Table {
        /// `[vocab, dim]` f32, row-major.
        Dense { values: Vec<f32>, dim: usize },
        /// The built-in int8 table (pruned rows are skipped).
        Compact(CompactModel<'static>),
    }

    /// The loaded tokenizer and token table.
    pub struct State {
        tokenizer: OnceLock<Tokenizer>,
        fast: Option<crate::wordpiece::FastWordPiece>,
        table: Table,
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
            let (values, dim) = read_f32_matrix(&bytes, "embeddings").map_err(|message| {
                FeatureError::BadModel {
                    path: path.clone(),
                    message,
                }
            })?;
            let rows = values.len() / dim.max(1);
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
                tokenizer: OnceLock::from(tokenizer),
                fast,
                table: Table::Dense { values, dim },
                max_tokens,
            })
        }

        /// The built-in compact model. Its `tokenizers` pipeline (only needed for text the
        /// fast path does not take) is built on first use: it is most of the load time.
        pub fn builtin(max_tokens: usize) -> Result<Self, FeatureError> {
            let model = CompactModel::parse(BUILTIN)
                .map_err(|m| FeatureError::Inference(format!("built-in model: {m}")))?;
            let fast = crate::wordpiece::FastWordPiece::from_vocab(
                model
                    .vocab()
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (*t, i as u32)),
                "##",
                model.unk(),
                model.max_input_chars_per_word(),
                special_tokens(&model).map(|(_, t)| t.to_string()).collect(),
            );
            Ok(State {
                tokenizer: OnceLock::new(),
                fast: Some(fast),
                table: Table::Compact(model),
                max_tokens,
            })
        }

        /// The `tokenizers` pipeline: loaded with a directory model, built from the
        /// vocabulary on first use for the built-in one.
        fn tokenizer(&self) -> Result<&Tokenizer, FeatureError> {
            if let Some(t) = self.tokenizer.get() {
                return Ok(t);
            }
            let built = match &self.table {
                Table::Compact(m) => builtin_tokenizer(m, self.max_tokens)?,
                Table::Dense { .. } => {
                    return Err(FeatureError::Tokenizer("tokenizer not loaded".into()))
                }
            };
            Ok(self.tokenizer.get_or_init(|| built))
        }

        pub fn dim(&self) -> usize {
            match &self.table {
                Table::Dense { dim, .. } => *dim,
                Table::Compact(m) => m.dim(),
            }
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
                .tokenizer()?
                .encode_fast(text, false)
                .map_err(|e| FeatureError::Tokenizer(e.to_string()))?;
            Ok(enc.get_ids().to_vec())
        }

        pub fn embed_into(&self, text: &str, out: &mut [f32]) {
            let ids = match self.token_ids(text) {
                Ok(ids) => ids,
                Err(_) => return,
            };
            let mut n = 0usize;
            match &self.table {
                Table::Dense { values, dim } => {
                    for &id in &ids {
                        let start = id as usize * dim;
                        if let Some(row) = values.get(start..start + dim) {
                            out.iter_mut().zip(row).for_each(|(o, x)| *o += x);
                            n += 1;
                        }
                    }
                }
                Table::Compact(m) => {
                    for &id in &ids {
                        n += usize::from(m.add_row(id, out));
                    }
                }
            }
            if n > 0 {
                let inv = 1.0 / n as f32;
                out.iter_mut().for_each(|o| *o *= inv);
            }
            crate::l2_normalize(out);
        }
    }

    /// BERT's special tokens in the built-in vocabulary, with their ids.
    fn special_tokens<'m>(
        model: &'m CompactModel<'static>,
    ) -> impl Iterator<Item = (usize, &'m str)> + 'm {
        model
            .vocab()
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(**t, "[PAD]" | "[UNK]" | "[CLS]" | "[SEP]" | "[MASK]"))
            .map(|(i, t)| (i, *t))
    }

    /// A BERT WordPiece tokenizer over the built-in vocabulary: lowercasing
    /// `BertNormalizer`, `BertPreTokenizer`, BERT's special tokens (the same pipeline as
    /// all-MiniLM-L6-v2's `tokenizer.json`).
    fn builtin_tokenizer(
        model: &CompactModel<'static>,
        max_tokens: usize,
    ) -> Result<Tokenizer, FeatureError> {
        let unk = model
            .vocab()
            .get(model.unk() as usize)
            .copied()
            .ok_or_else(|| FeatureError::Inference("built-in model: no [UNK] token".into()))?;
        let vocab: serde_json::Map<String, serde_json::Value> = model
            .vocab()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
            .collect();
        let added: Vec<serde_json::Value> = special_tokens(model)
            .map(|(id, t)| {
                serde_json::json!({
                    "id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true
                })
            })
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": unk,
                "continuing_subword_prefix": "##",
                "max_input_chars_per_word": model.max_input_chars_per_word(),
                "vocab": vocab},
        });
        let mut tokenizer = Tokenizer::from_str(&json.to_string())
            .map_err(|e| FeatureError::Tokenizer(e.to_string()))?;
        configure(&mut tokenizer, max_tokens)?;
        Ok(tokenizer)
    }

    /// Our truncation, and no padding.
    fn configure(tok: &mut Tokenizer, max_tokens: usize) -> Result<(), FeatureError> {
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| FeatureError::Tokenizer(e.to_string()))?;
        Ok(())
    }

    /// The model's `tokenizer.json` with our truncation and no padding.
    pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<Tokenizer, FeatureError> {
        let path = dir.join("tokenizer.json");
        let mut tok = Tokenizer::from_file(&path)
            .map_err(|e| FeatureError::Tokenizer(format!("{}: {e}", path.display())))?;
        configure(&mut tok, max_tokens)?;
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

    /// No built-in model in this build.
    pub fn builtin_sha256() -> &'static str {
        ""
    }

    impl State {
        pub fn load(_dir: &Path, _max_tokens: usize) -> Result<Self, FeatureError> {
            Err(FeatureError::Disabled {
                featurizer: "static",
                feature: "static-embed",
            })
        }
        pub fn builtin(_max_tokens: usize) -> Result<Self, FeatureError> {
            Err(FeatureError::Disabled {
                featurizer: "static-mini",
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
