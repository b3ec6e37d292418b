//! all-MiniLM-L6-v2 sentence embeddings on CPU with candle.
//!
//! Model: Wang et al., "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
//! Compression of Pre-Trained Transformers" (NeurIPS 2020), fine-tuned as a sentence
//! encoder by sentence-transformers (Reimers & Gurevych, 2019). Inference: the model's
//! WordPiece tokenizer (`tokenizer.json`, `tokenizers` crate) with `[CLS]`/`[SEP]`, the BERT
//! encoder ([`crate::bert`], on candle tensors), mean pooling over the attention mask and
//! L2 normalisation, exactly as the sentence-transformers pipeline of this model.
//!
//! Prompts are truncated to [`DEFAULT_MAX_TOKENS`] = 256 tokens (the model's
//! `max_seq_length`, so the embedding equals sentence-transformers' for any input); the
//! text is first cut to 16 bytes per token of budget to bound tokenizer time.
//! [`MiniLmFeaturizer::featurize_batch`] sorts prompts by token count and runs batches of
//! similar length to limit padding. The artifact stores the model name and file sha256s,
//! never the weights; [`MiniLmFeaturizer::load`] resolves them (feature `minilm`).

use std::collections::BTreeMap;
#[cfg(feature = "minilm")]
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::handle::{self, Loaded};
use crate::{FeatureError, Featurizer};

/// Token budget per prompt (the model's `max_seq_length`).
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Output dimension of all-MiniLM-L6-v2.
pub const MINILM_DIM: usize = 384;
/// Files a MiniLM (BERT) model directory must hold (Hugging Face layout).
pub const MINILM_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
/// Most padded tokens (rows x longest row) per forward pass in batched featurization.
pub const BATCH_TOKENS: usize = 4096;

/// MiniLM featurizer: configuration (serialised) + loaded model (not).
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct MiniLmFeaturizer {
    /// Model name (`all-minilm-l6-v2`) or a model directory path (Hugging Face layout).
    pub model: String,
    pub dim: usize,
    pub max_tokens: usize,
    /// sha256 of each model file at training time (file name -> hex).
    pub sha256: BTreeMap<String, String>,
    /// Whether the weights are loaded (shared by clones; never serialised).
    #[serde(skip)]
    loaded: Loaded<imp::State>,
}

impl MiniLmFeaturizer {
    /// Opens `model` (a registered name such as `minilm`, or a Hugging Face layout
    /// directory): checks the files (against the registry's sha256 for registered names),
    /// records their hashes and loads the model.
    pub fn open(model: &str) -> Result<Self, FeatureError> {
        let opened = handle::open_model(model, MINILM_FILES)?;
        let state = imp::State::load(&opened.dir, DEFAULT_MAX_TOKENS)?;
        Ok(MiniLmFeaturizer {
            model: opened.name,
            dim: state.dim(),
            max_tokens: DEFAULT_MAX_TOKENS,
            sha256: opened.sha256,
            loaded: Loaded::new(state),
        })
    }

    /// Resolves and loads the weights recorded in this featurizer (after deserialising),
    /// checking each file's sha256. Idempotent.
    pub fn load(&self) -> Result<(), FeatureError> {
        if self.loaded.is_loaded() {
            return Ok(());
        }
        let dir = handle::verified_dir(&self.model, &self.sha256)?;
        let state = imp::State::load(&dir, self.max_tokens)?;
        self.loaded.set(state);
        Ok(())
    }

    /// Whether the model is loaded (featurizing before that yields zero vectors).
    pub fn is_loaded(&self) -> bool {
        self.loaded.is_loaded()
    }

    /// Token ids (with `[CLS]`/`[SEP]`, after truncation) the model sees for `text`.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
        self.load()?;
        match self.loaded.get() {
            Some(s) => s.encode(text),
            None => Ok(Vec::new()),
        }
    }

    /// Embeddings of `texts`, row-major, or the first error.
    pub fn try_embed_batch(&self, texts: &[&str]) -> Result<Vec<f32>, FeatureError> {
        self.load()?;
        let mut out = vec![0.0; texts.len() * self.dim];
        if let Some(s) = self.loaded.get() {
            s.embed_batch(texts, &mut out)?;
        }
        Ok(out)
    }

    /// The loaded state (for distillation).
    #[cfg(feature = "minilm")]
    pub(crate) fn state(&self) -> Result<Arc<imp::State>, FeatureError> {
        self.load()?;
        self.loaded
            .get()
            .cloned()
            .ok_or_else(|| FeatureError::Inference("model not loaded".into()))
    }
}

impl Featurizer for MiniLmFeaturizer {
    fn dim(&self) -> usize {
        self.dim
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        out.fill(0.0);
        if self.load().is_err() {
            return;
        }
        if let Some(s) = self.loaded.get() {
            if s.embed_batch(&[text], out).is_err() {
                out.fill(0.0);
            }
        }
    }

    fn featurize_batch(&self, texts: &[&str]) -> Vec<f32> {
        self.try_embed_batch(texts)
            .unwrap_or_else(|_| vec![0.0; texts.len() * self.dim])
    }
}

#[cfg(feature = "minilm")]
pub(crate) mod imp {
    use std::path::Path;

    use tokenizers::Tokenizer;

    use crate::bert::Bert;

    use crate::FeatureError;

    /// Tokenizer + BERT encoder on the CPU.
    pub struct State {
        tokenizer: Tokenizer,
        model: Bert,
        max_tokens: usize,
    }

    fn inf(e: candle_core::Error) -> FeatureError {
        FeatureError::Inference(e.to_string())
    }

    impl State {
        pub fn load(dir: &Path, max_tokens: usize) -> Result<Self, FeatureError> {
            let tokenizer = crate::static_embed::load_tokenizer(dir, max_tokens)?;
            let cfg_path = dir.join("config.json");
            let cfg_text =
                std::fs::read_to_string(&cfg_path).map_err(|e| FeatureError::io(&cfg_path, e))?;
            let config =
                crate::bert::parse_config(&cfg_text).map_err(|message| FeatureError::BadModel {
                    path: cfg_path.clone(),
                    message,
                })?;
            let w_path = dir.join("model.safetensors");
            let bytes = std::fs::read(&w_path).map_err(|e| FeatureError::io(&w_path, e))?;
            let bad = |e: candle_core::Error| FeatureError::BadModel {
                path: w_path.clone(),
                message: e.to_string(),
            };
            let vb = crate::bert::var_builder(bytes).map_err(bad)?;
            let model = Bert::load(vb, &config).map_err(bad)?;
            Ok(State {
                tokenizer,
                model,
                max_tokens,
            })
        }

        pub fn dim(&self) -> usize {
            self.model.hidden()
        }

        /// Vocabulary size and the ids of `[CLS]` and `[SEP]`.
        pub fn vocab(&self) -> Result<(usize, u32, u32), FeatureError> {
            let id = |t: &str| {
                self.tokenizer
                    .token_to_id(t)
                    .ok_or_else(|| FeatureError::Tokenizer(format!("no `{t}` token")))
            };
            Ok((
                self.tokenizer.get_vocab_size(true),
                id("[CLS]")?,
                id("[SEP]")?,
            ))
        }

        /// Token ids (with `[CLS]`/`[SEP]`, truncated) of one text.
        pub fn encode(&self, text: &str) -> Result<Vec<u32>, FeatureError> {
            let text = crate::static_embed::prefix(text, self.max_tokens.saturating_mul(16));
            let enc = self
                .tokenizer
                .encode_fast(text, true)
                .map_err(|e| FeatureError::Tokenizer(e.to_string()))?;
            Ok(enc.get_ids().to_vec())
        }

        /// Mean-pooled (over the mask), L2-normalised embeddings of pre-tokenised rows.
        pub fn embed_ids(&self, rows: &[&[u32]], out: &mut [f32]) -> Result<(), FeatureError> {
            let b = rows.len();
            let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
            if b == 0 || len == 0 {
                return Ok(());
            }
            let mut ids = vec![0u32; b * len];
            let mut mask = vec![0u32; b * len];
            for (i, r) in rows.iter().enumerate() {
                ids[i * len..i * len + r.len()].copy_from_slice(r);
                mask[i * len..i * len + r.len()].fill(1);
            }
            let hidden = self.model.forward(&ids, &mask, b, len).map_err(inf)?;
            let hidden: Vec<f32> = hidden.flatten_all().map_err(inf)?.to_vec1().map_err(inf)?;
            let d = self.dim();
            for (i, row_out) in out.chunks_exact_mut(d).take(b).enumerate() {
                crate::pooling::masked_mean(
                    &hidden[i * len * d..(i + 1) * len * d],
                    &mask[i * len..(i + 1) * len],
                    row_out,
                );
                crate::l2_normalize(row_out);
            }
            Ok(())
        }

        /// Embeddings of many texts: sorted by length, batched by [`super::BATCH_TOKENS`].
        pub fn embed_batch(&self, texts: &[&str], out: &mut [f32]) -> Result<(), FeatureError> {
            let d = self.dim();
            let encoded: Vec<Vec<u32>> = texts
                .iter()
                .map(|t| self.encode(t))
                .collect::<Result<_, _>>()?;
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| encoded[i].len());
            let mut buf = Vec::new();
            let mut start = 0;
            while start < order.len() {
                let mut end = start + 1;
                while end < order.len()
                    && (end + 1 - start) * encoded[order[end]].len() <= super::BATCH_TOKENS
                {
                    end += 1;
                }
                let rows: Vec<&[u32]> = order[start..end]
                    .iter()
                    .map(|&i| encoded[i].as_slice())
                    .collect();
                buf.clear();
                buf.resize(rows.len() * d, 0.0);
                self.embed_ids(&rows, &mut buf)?;
                for (k, &i) in order[start..end].iter().enumerate() {
                    out[i * d..(i + 1) * d].copy_from_slice(&buf[k * d..(k + 1) * d]);
                }
                start = end;
            }
            Ok(())
        }
    }
}

#[cfg(not(feature = "minilm"))]
pub(crate) mod imp {
    use std::path::Path;

    use crate::FeatureError;

    /// Without the `minilm` feature nothing can be loaded.
    pub struct State;

    impl State {
        pub fn load(_dir: &Path, _max_tokens: usize) -> Result<Self, FeatureError> {
            Err(FeatureError::Disabled {
                featurizer: "minilm",
                feature: "minilm",
            })
        }
        pub fn dim(&self) -> usize {
            0
        }
        pub fn embed_batch(&self, _texts: &[&str], _out: &mut [f32]) -> Result<(), FeatureError> {
            Ok(())
        }
        pub fn encode(&self, _text: &str) -> Result<Vec<u32>, FeatureError> {
            Ok(Vec::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_error_names_fetch_command() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var(crate::weights::MODELS_ENV, dir.path());
        let err = MiniLmFeaturizer::open("minilm").unwrap_err().to_string();
        assert!(err.contains("routewise models fetch minilm"), "{err}");
        assert!(err.contains("all-minilm-l6-v2"), "{err}");
        let f = MiniLmFeaturizer {
            model: "all-minilm-l6-v2".into(),
            dim: MINILM_DIM,
            max_tokens: DEFAULT_MAX_TOKENS,
            sha256: crate::weights::registry_hashes(&crate::weights::MINILM),
            loaded: Default::default(),
        };
        let err = f.load().unwrap_err().to_string();
        assert!(err.contains("routewise models fetch minilm"), "{err}");
        assert_eq!(f.featurize("hello"), vec![0.0; MINILM_DIM]);
    }
}
