//! Distils a static (per-token) embedding table from all-MiniLM-L6-v2, model2vec-style.
//!
//! Method (Tulkens & van Dongen, Model2Vec, MinishLab 2024): embed every vocabulary token
//! on its own (`[CLS] token [SEP]`, mean-pooled and normalised like a sentence), reduce the
//! table with PCA ([`crate::pca`]) to `dims` columns, then weight token `i` by `ln(1 + i)`
//! ("Zipf" weighting: WordPiece ids grow roughly with rarity, so frequent tokens count
//! less, in the spirit of SIF weighting, Arora et al. 2017). The result is written in the
//! model2vec layout read by [`crate::static_embed`]. Output bytes depend on the machine's
//! float arithmetic, so the file is verified against the artifact, not a fixed hash.

use std::path::Path;

use crate::minilm::MiniLmFeaturizer;
use crate::pca::Pca;
use crate::FeatureError;

/// Distillation settings.
#[derive(Debug, Clone, Copy)]
pub struct DistillConfig {
    /// PCA output dimension.
    pub dims: usize,
    /// Apply the `ln(1 + id)` token weighting.
    pub zipf: bool,
    /// Tokens per forward pass.
    pub batch: usize,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            dims: 256,
            zipf: true,
            batch: 512,
        }
    }
}

/// The per-token table (`vocab x cfg.dims`, row-major) distilled from `minilm`.
pub fn distill_table(
    minilm: &MiniLmFeaturizer,
    cfg: DistillConfig,
) -> Result<(Vec<f32>, usize), FeatureError> {
    let state = minilm.state()?;
    let (vocab, cls, sep) = state.vocab()?;
    let d = state.dim();
    let mut raw = vec![0.0f32; vocab * d];
    let ids: Vec<[u32; 3]> = (0..vocab as u32).map(|t| [cls, t, sep]).collect();
    for (chunk_i, chunk) in ids.chunks(cfg.batch.max(1)).enumerate() {
        let rows: Vec<&[u32]> = chunk.iter().map(|r| r.as_slice()).collect();
        let start = chunk_i * cfg.batch.max(1) * d;
        state.embed_ids(&rows, &mut raw[start..start + rows.len() * d])?;
    }
    let k = cfg.dims.min(d);
    let pca = Pca::fit(&raw, d, k);
    let mut table = vec![0.0f32; vocab * k];
    for (i, (src, dst)) in raw
        .chunks_exact(d)
        .zip(table.chunks_exact_mut(k))
        .enumerate()
    {
        pca.transform_row(src, dst);
        if cfg.zipf {
            let w = (1.0 + i as f32).ln();
            dst.iter_mut().for_each(|x| *x *= w);
        }
    }
    Ok((table, k))
}

/// Distils a static model from `minilm` and writes it to `out_dir` (`tokenizer.json`,
/// `model.safetensors`, `config.json`).
pub fn distill_to_dir(
    minilm: &MiniLmFeaturizer,
    out_dir: &Path,
    cfg: DistillConfig,
) -> Result<(), FeatureError> {
    let (table, k) = distill_table(minilm, cfg)?;
    std::fs::create_dir_all(out_dir).map_err(|e| FeatureError::io(out_dir, e))?;
    let src_dir = crate::weights::model_dir(&minilm.model);
    let tok_src = src_dir.join("tokenizer.json");
    let tok_dst = out_dir.join("tokenizer.json");
    std::fs::copy(&tok_src, &tok_dst).map_err(|e| FeatureError::io(&tok_src, e))?;
    crate::static_embed::write_f32_matrix(
        &out_dir.join("model.safetensors"),
        "embeddings",
        &table,
        k,
    )?;
    let config = serde_json::json!({
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "hidden_dim": k,
        "normalize": true,
        "apply_zipf": cfg.zipf,
        "pca_dims": k,
        "distilled_from": minilm.model,
        "source_sha256": minilm.sha256,
        "method": "routewise distill: [CLS] t [SEP] mean-pooled, PCA, ln(1+id) weights",
    });
    let cfg_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| FeatureError::BadModel {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&cfg_path, text).map_err(|e| FeatureError::io(&cfg_path, e))
}
