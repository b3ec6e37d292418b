//! The BERT encoder forward pass on the CPU, on candle tensors, tuned for one prompt at a
//! time on a few cores.
//!
//! Architecture: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding" (NAACL 2019), post-LayerNorm, absolute position embeddings,
//! exact (erf) GELU, as in all-MiniLM-L6-v2 (Wang et al., "MiniLM", NeurIPS 2020). Weights
//! are read from a Hugging Face `model.safetensors` (`embeddings.*`, `encoder.layer.N.*`,
//! optionally under a `bert.` prefix) and `config.json`.
//!
//! Compared with a straightforward port (candle-transformers' `BertModel`, which this
//! replaced: 43.8 ms -> see BENCHMARKS.md section 4 for a 128-token prompt on 2 cores):
//! - weights are transposed once at load to `(in, out)`, so every dense layer is one plain
//!   row-major GEMM; Q, K and V are one GEMM over the concatenated weights, with the
//!   attention scale 1/sqrt(d_head) folded into Q;
//! - bias + GELU, bias + residual, and masked softmax run as single in-place passes over
//!   the GEMM outputs ([`crate::fastmath`]: vectorisable exp/erf instead of libm calls);
//! - no attention mask is applied when no row is padded (a single prompt).
//!
//! The result matches the reference sentence-transformers embeddings to cosine >= 0.999
//! (fixture test `tests/minilm_fixture.rs`).

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::fastmath;

/// The `config.json` keys the forward pass needs (others are ignored).
#[derive(Deserialize, Debug, Clone)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Checks that the forward pass implements this configuration.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act `{}` is not supported (only `gelu`)",
                self.hidden_act
            ));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(format!("position_embedding_type `{p}` is not supported"));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// A dense layer: `(in, out)` weights and the bias.
struct Dense {
    w: Tensor,
    b: Vec<f32>,
}

impl Dense {
    /// Loads `name.weight` `(out, in)` / `name.bias` of each part, scales part `i` by
    /// `scales[i]` and concatenates the parts along the output dimension.
    fn load(vb: &VarBuilder, names: &[&str], d_in: usize, d_out: usize, scales: &[f32]) -> R<Self> {
        let mut ws = Vec::with_capacity(names.len());
        let mut b = Vec::with_capacity(names.len() * d_out);
        for (name, &s) in names.iter().zip(scales) {
            let vb = vb.pp(*name);
            ws.push((vb.get((d_out, d_in), "weight")? * f64::from(s))?);
            let bias: Vec<f32> = vb.get(d_out, "bias")?.to_vec1()?;
            b.extend(bias.iter().map(|x| x * s));
        }
        let w = Tensor::cat(&ws, 0)?.t()?.contiguous()?;
        Ok(Dense { w, b })
    }

    /// `x (n, in) -> x W (n, out)`, bias not yet added.
    fn matmul(&self, x: &Tensor) -> R<Tensor> {
        x.matmul(&self.w)
    }
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, d: usize, eps: f64) -> R<Self> {
        let vb = vb.pp("LayerNorm");
        Ok(LayerNorm {
            gamma: vb.get(d, "weight")?,
            beta: vb.get(d, "bias")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> R<Tensor> {
        candle_nn::ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    ln_attn: LayerNorm,
    inter: Dense,
    out: Dense,
    ln_out: LayerNorm,
}

/// A loaded BERT encoder.
pub struct Bert {
    word: Tensor,
    /// Position embeddings plus the token-type-0 embedding, `(max_positions, hidden)`.
    pos_type: Tensor,
    ln_emb: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

type R<T> = candle_core::Result<T>;

impl Bert {
    /// Loads the encoder from a VarBuilder over the safetensors file.
    pub fn load(vb: VarBuilder, cfg: &BertConfig) -> R<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let emb = vb.pp("embeddings");
        let word = emb.get((cfg.vocab_size, h), "word_embeddings.weight")?;
        let pos = emb.get(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let type0 = emb.get((2, h), "token_type_embeddings.weight")?.get(0)?;
        let pos_type = pos.broadcast_add(&type0)?.contiguous()?;
        let ln_emb = LayerNorm::load(&emb, h, eps)?;
        let scale = 1.0 / ((h / cfg.num_attention_heads) as f32).sqrt();
        let layers = (0..cfg.num_hidden_layers)
            .map(|n| {
                let l = vb.pp(format!("encoder.layer.{n}"));
                let att = l.pp("attention");
                Ok(Layer {
                    qkv: Dense::load(
                        &att.pp("self"),
                        &["query", "key", "value"],
                        h,
                        h,
                        &[scale, 1.0, 1.0],
                    )?,
                    attn_out: Dense::load(&att.pp("output"), &["dense"], h, h, &[1.0])?,
                    ln_attn: LayerNorm::load(&att.pp("output"), h, eps)?,
                    inter: Dense::load(&l.pp("intermediate"), &["dense"], h, i, &[1.0])?,
                    out: Dense::load(&l.pp("output"), &["dense"], i, h, &[1.0])?,
                    ln_out: LayerNorm::load(&l.pp("output"), h, eps)?,
                })
            })
            .collect::<R<Vec<_>>>()?;
        Ok(Bert {
            word,
            pos_type,
            ln_emb,
            layers,
            heads: cfg.num_attention_heads,
            hidden: h,
        })
    }

    /// Hidden size (the embedding dimension).
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Last hidden states `(rows * len, hidden)` of `rows` token-id rows of length `len`
    /// (row-major `ids`); `mask[r * len + j]` is 1 for real tokens and 0 for padding.
    pub fn forward(&self, ids: &[u32], mask: &[u32], rows: usize, len: usize) -> R<Tensor> {
        let dev = Device::Cpu;
        let h = self.hidden;
        if ids.len() != rows * len || mask.len() != rows * len {
            candle_core::bail!("ids/mask length differs from rows x len");
        }
        if len > self.pos_type.dim(0)? {
            candle_core::bail!("{len} tokens exceed the position embeddings");
        }
        let ids_t = Tensor::from_slice(ids, rows * len, &dev)?;
        let x = self
            .word
            .index_select(&ids_t, 0)?
            .reshape((rows, len, h))?
            .broadcast_add(&self.pos_type.narrow(0, 0, len)?)?
            .reshape((rows * len, h))?;
        let mut x = self.ln_emb.forward(&x)?;
        // Additive key mask, only when some row is padded.
        let mask_bias: Option<Vec<f32>> = mask.contains(&0).then(|| {
            mask.iter()
                .map(|&m| if m == 0 { -1e9 } else { 0.0 })
                .collect()
        });
        for layer in &self.layers {
            x = self.layer(layer, &x, rows, len, mask_bias.as_deref())?;
        }
        Ok(x)
    }

    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        rows: usize,
        len: usize,
        mask: Option<&[f32]>,
    ) -> R<Tensor> {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let qkv = l.qkv.matmul(x)?;
        qkv.inplace_op1(&RowOp::bias(&l.qkv.b))?;
        // (rows*len, 3h) -> 3 x (rows, heads, len, d)
        let qkv = qkv.reshape((rows, len, 3, heads, d))?;
        let part = |i: usize| -> R<Tensor> {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = q.matmul(&k.t()?)?.contiguous()?; // (rows, heads, len, len)
        scores.inplace_op1(&Softmax { mask, len, heads })?;
        let ctx = scores
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows * len, h))?;
        let a = l.attn_out.matmul(&ctx)?;
        a.inplace_op2(x, &BiasResidual(&l.attn_out.b))?;
        let x = l.ln_attn.forward(&a)?;
        let inter = l.inter.matmul(&x)?;
        inter.inplace_op1(&RowOp::bias_gelu(&l.inter.b))?;
        let o = l.out.matmul(&inter)?;
        o.inplace_op2(&x, &BiasResidual(&l.out.b))?;
        l.ln_out.forward(&o)
    }
}

/// The contiguous f32 data of a CPU tensor.
fn f32_slice<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> R<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::msg(format!("{op}: non-contiguous input")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("{op}: f32 expected"),
    }
}

/// An in-place pass over the rows of a GEMM output with the layer's bias
/// ([`fastmath::bias_rows`] or [`fastmath::bias_gelu_rows`]).
struct RowOp<'a> {
    name: &'static str,
    bias: &'a [f32],
    f: fn(&mut [f32], &[f32]),
}

impl<'a> RowOp<'a> {
    fn bias(bias: &'a [f32]) -> Self {
        RowOp {
            name: "bias",
            bias,
            f: fastmath::bias_rows,
        }
    }

    fn bias_gelu(bias: &'a [f32]) -> Self {
        RowOp {
            name: "bias-gelu",
            bias,
            f: fastmath::bias_gelu_rows,
        }
    }
}

impl InplaceOp1 for RowOp<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> R<()> {
        (self.f)(f32_slice(s, l, self.name)?, self.bias);
        Ok(())
    }
}

struct BiasResidual<'a>(&'a [f32]);

impl InplaceOp2 for BiasResidual<'_> {
    fn name(&self) -> &'static str {
        "bias-residual"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> R<()> {
        let (start, end) = l2
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::msg("bias-residual: non-contiguous residual"))?;
        let res = match s2 {
            CpuStorage::F32(v) => &v[start..end],
            _ => candle_core::bail!("bias-residual: f32 expected"),
        };
        let data = f32_slice(s1, l1, "bias-residual")?;
        if data.len() != res.len() {
            candle_core::bail!("bias-residual: shapes differ");
        }
        fastmath::bias_residual_rows(data, res, self.0);
        Ok(())
    }
}

/// Row softmax over `(rows, heads, len, len)` scores with the per-row key mask.
struct Softmax<'a> {
    mask: Option<&'a [f32]>,
    len: usize,
    heads: usize,
}

impl InplaceOp1 for Softmax<'_> {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> R<()> {
        let data = f32_slice(s, l, "masked-softmax")?;
        let per_row = self.heads * self.len; // score rows per input row
        for (r, row) in data.chunks_exact_mut(self.len).enumerate() {
            let b = r / per_row;
            let m = self.mask.map(|m| &m[b * self.len..(b + 1) * self.len]);
            fastmath::softmax_row(row, m);
        }
        Ok(())
    }
}

/// Reads `config.json` text.
pub fn parse_config(text: &str) -> Result<BertConfig, String> {
    let cfg: BertConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
    cfg.validate()?;
    Ok(cfg)
}

/// Loads the f32 weights of `bytes` (a safetensors file) into a VarBuilder on the CPU.
pub fn var_builder(bytes: Vec<u8>) -> R<VarBuilder<'static>> {
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_what_the_forward_pass_does_not_implement() {
        let base = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 4"#;
        assert!(parse_config(&format!("{base}}}")).is_ok());
        let e = parse_config(&format!(r#"{base}, "hidden_act": "relu"}}"#)).unwrap_err();
        assert!(e.contains("relu"), "{e}");
        let e = parse_config(&format!(
            r#"{base}, "position_embedding_type": "relative_key"}}"#
        ))
        .unwrap_err();
        assert!(e.contains("relative_key"), "{e}");
        let bad_heads = base.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
        let e = parse_config(&format!("{bad_heads}}}")).unwrap_err();
        assert!(e.contains("multiple"), "{e}");
    }
}

#[cfg(test)]
mod reference_tests {
    //! The forward pass against a plain f64 implementation on a small random model,
    //! including a padded batch (the key mask) and the `bert.` weight prefix.
    use std::collections::HashMap;

    use super::*;

    const H: usize = 8;
    const HEADS: usize = 2;
    const I: usize = 16;
    const VOCAB: usize = 20;
    const MAXPOS: usize = 8;
    const LAYERS: usize = 2;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    type Weights = HashMap<String, (Vec<f64>, Vec<usize>)>;

    fn random_model(seed: u64) -> Weights {
        let mut rng = Rng(seed);
        let mut w = Weights::new();
        let mut put = |name: String, shape: Vec<usize>, scale: f64, rng: &mut Rng| {
            let n = shape.iter().product();
            w.insert(name, (rng.vec(n, scale), shape));
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            vec![VOCAB, H],
            1.0,
            &mut rng,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            vec![MAXPOS, H],
            0.5,
            &mut rng,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            vec![2, H],
            0.5,
            &mut rng,
        );
        put("embeddings.LayerNorm.weight".into(), vec![H], 1.0, &mut rng);
        put("embeddings.LayerNorm.bias".into(), vec![H], 0.1, &mut rng);
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}");
            for (name, o, i) in [
                ("attention.self.query", H, H),
                ("attention.self.key", H, H),
                ("attention.self.value", H, H),
                ("attention.output.dense", H, H),
                ("intermediate.dense", I, H),
                ("output.dense", H, I),
            ] {
                put(format!("{p}.{name}.weight"), vec![o, i], 0.5, &mut rng);
                put(format!("{p}.{name}.bias"), vec![o], 0.1, &mut rng);
            }
            for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{p}.{ln}.weight"), vec![H], 1.0, &mut rng);
                put(format!("{p}.{ln}.bias"), vec![H], 0.1, &mut rng);
            }
        }
        w
    }

    fn layer_norm(x: &mut [f64], g: &[f64], b: &[f64]) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        for ((v, g), b) in x.iter_mut().zip(g).zip(b) {
            *v = (*v - mean) / (var + 1e-12).sqrt() * g + b;
        }
    }

    /// `W (out, in) x + b`
    fn dense(w: &Weights, name: &str, x: &[f64]) -> Vec<f64> {
        let (wt, shape) = &w[&format!("{name}.weight")];
        let (b, _) = &w[&format!("{name}.bias")];
        (0..shape[0])
            .map(|o| {
                b[o] + (0..shape[1])
                    .map(|i| wt[o * shape[1] + i] * x[i])
                    .sum::<f64>()
            })
            .collect()
    }

    /// Hidden states of one unpadded row.
    fn reference(w: &Weights, ids: &[u32]) -> Vec<Vec<f64>> {
        let g = |n: &str| w[n].0.clone();
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let mut v: Vec<f64> = (0..H)
                    .map(|j| {
                        w["embeddings.word_embeddings.weight"].0[id as usize * H + j]
                            + w["embeddings.position_embeddings.weight"].0[t * H + j]
                            + w["embeddings.token_type_embeddings.weight"].0[j]
                    })
                    .collect();
                layer_norm(
                    &mut v,
                    &g("embeddings.LayerNorm.weight"),
                    &g("embeddings.LayerNorm.bias"),
                );
                v
            })
            .collect();
        let d = H / HEADS;
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}");
            let proj = |name: &str, x: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                x.iter()
                    .map(|v| dense(w, &format!("{p}.{name}"), v))
                    .collect()
            };
            let (q, k, v) = (
                proj("attention.self.query", &x),
                proj("attention.self.key", &x),
                proj("attention.self.value", &x),
            );
            let n = x.len();
            let mut ctx = vec![vec![0.0; H]; n];
            for hd in 0..HEADS {
                for i in 0..n {
                    let s: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|c| q[i][hd * d + c] * k[j][hd * d + c])
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        ctx[i][hd * d + c] = (0..n).map(|j| e[j] / z * v[j][hd * d + c]).sum();
                    }
                }
            }
            let mut a = proj("attention.output.dense", &ctx);
            for (a, x) in a.iter_mut().zip(&x) {
                for (a, x) in a.iter_mut().zip(x) {
                    *a += x;
                }
                let ln = format!("{p}.attention.output.LayerNorm");
                layer_norm(a, &g(&format!("{ln}.weight")), &g(&format!("{ln}.bias")));
            }
            let inter: Vec<Vec<f64>> = proj("intermediate.dense", &a)
                .into_iter()
                .map(|v| {
                    v.into_iter()
                        .map(|z| 0.5 * z * (1.0 + fastmath::erf_f64_series(z / 2f64.sqrt())))
                        .collect()
                })
                .collect();
            let mut o = proj("output.dense", &inter);
            for (o, a) in o.iter_mut().zip(&a) {
                for (o, a) in o.iter_mut().zip(a) {
                    *o += a;
                }
                let ln = format!("{p}.output.LayerNorm");
                layer_norm(o, &g(&format!("{ln}.weight")), &g(&format!("{ln}.bias")));
            }
            x = o;
        }
        x
    }

    fn load(w: &Weights, prefix: &str) -> Bert {
        let dev = Device::Cpu;
        let tensors: HashMap<String, Tensor> = w
            .iter()
            .map(|(k, (v, shape))| {
                let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                (
                    format!("{prefix}{k}"),
                    Tensor::from_vec(v32, shape.as_slice(), &dev).unwrap(),
                )
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let cfg = BertConfig {
            vocab_size: VOCAB,
            hidden_size: H,
            num_hidden_layers: LAYERS,
            num_attention_heads: HEADS,
            intermediate_size: I,
            max_position_embeddings: MAXPOS,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            position_embedding_type: None,
        };
        Bert::load(vb, &cfg).unwrap()
    }

    #[test]
    fn forward_matches_f64_reference_single_and_padded_batch() {
        let w = random_model(7);
        let rows: [&[u32]; 2] = [&[1, 5, 9], &[2, 3, 19, 4, 0]];
        for prefix in ["", "bert."] {
            let bert = load(&w, prefix);
            // single rows, no padding
            for r in rows {
                let got: Vec<f32> = bert
                    .forward(r, &vec![1; r.len()], 1, r.len())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let want = reference(&w, r);
                for (t, row) in want.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        let g = got[t * H + j] as f64;
                        assert!((g - v).abs() < 2e-4, "token {t} dim {j}: {g} vs {v}");
                    }
                }
            }
            // padded batch: the first row is padded to 5 with id 0
            let len = 5;
            let mut ids = vec![0u32; 2 * len];
            let mut mask = vec![0u32; 2 * len];
            for (i, r) in rows.iter().enumerate() {
                ids[i * len..i * len + r.len()].copy_from_slice(r);
                mask[i * len..i * len + r.len()].fill(1);
            }
            let got: Vec<f32> = bert
                .forward(&ids, &mask, 2, len)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, r) in rows.iter().enumerate() {
                let want = reference(&w, r);
                for (t, row) in want.iter().enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        let g = got[(i * len + t) * H + j] as f64;
                        assert!(
                            (g - v).abs() < 2e-4,
                            "row {i} token {t} dim {j}: {g} vs {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn forward_rejects_inconsistent_shapes() {
        let bert = load(&random_model(1), "");
        assert!(bert.forward(&[1, 2], &[1, 1], 1, 3).is_err());
        assert!(
            bert.forward(&[1; 9], &[1; 9], 1, 9).is_err(),
            "beyond max positions"
        );
    }
}
