//! Hashed TF-IDF featurizer: the embedded default (no download, deterministic).
//!
//! Method:
//! 1. Normalise: lowercase (Unicode), collapse every whitespace run to one space, and
//!    pad with one space at each end. A prompt longer than `max_bytes` keeps its first
//!    and last `max_bytes / 2` bytes (bounded latency; the question is usually at the
//!    end of a long prompt, the instructions at the start).
//! 2. Terms: word unigrams and bigrams (a word is a maximal run of alphanumeric
//!    characters or `_`), and character 3-, 4- and 5-grams taken over the whole
//!    normalised text, spaces included (so n-grams span word boundaries, capturing
//!    punctuation and formatting such as code). The n-grams are over UTF-8 bytes, which
//!    equals character n-grams for ASCII text.
//! 3. Each term is hashed (a multiply-rotate hash in the FxHash family, computed
//!    incrementally, no allocation per term) into `2^buckets_log2` buckets; term
//!    frequencies are counted per bucket.
//! 4. Weight: sublinear tf `1 + ln(tf)` times idf `ln((1 + n) / (1 + df)) + idf_offset`
//!    (offset 1, the default, is scikit-learn's smooth idf), with `df` counted per bucket
//!    on the training prompts; buckets with `df > max_df * n` get weight 0 (off by
//!    default). The idf table is quantised to one byte per bucket (uniform steps over
//!    `[0, idf_offset + ln(1 + n)]`, an error below 0.2% of the range) to keep artifacts
//!    small. Optionally the last `tail_bytes` of a longer prompt are counted again with
//!    weight `tail_weight` (off by default; validation on the shared data preferred the
//!    defaults, see `/work/notes/lab-quality.md`).
//! 5. Project the bucket vector to `dim` dense dimensions with a signed hash
//!    (feature hashing, Weinberger et al., 2009, "Feature Hashing for Large Scale
//!    Multitask Learning"): bucket `b` adds `sign(b) * w` to coordinate `h(b) mod dim`,
//!    which preserves inner products in expectation. Finally L2-normalise; a text with
//!    no terms maps to the zero vector.
//!
//! Default `dim` (256) was chosen by measuring routing quality against kNN latency on
//! the shared data (see `/work/notes/bench-lab-core.md` and BENCHMARKS.md).

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

use crate::{l2_normalize, Featurizer};

fn default_dim() -> usize {
    256
}
fn default_buckets_log2() -> u32 {
    18
}
fn default_char_min() -> usize {
    3
}
fn default_char_max() -> usize {
    5
}
fn default_max_bytes() -> usize {
    16_384
}
fn default_idf_offset() -> f32 {
    1.0
}
fn default_max_df() -> f32 {
    1.0
}
fn default_tail_bytes() -> usize {
    0
}
fn default_tail_weight() -> f32 {
    0.0
}

/// Hyper-parameters of the TF-IDF featurizer (every field has a serde default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TfidfConfig {
    /// Output dimension of the dense projection.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// The idf table has `2^buckets_log2` buckets (10..=24).
    #[serde(default = "default_buckets_log2")]
    pub buckets_log2: u32,
    /// Shortest character n-gram.
    #[serde(default = "default_char_min")]
    pub char_min: usize,
    /// Longest character n-gram (at most 8).
    #[serde(default = "default_char_max")]
    pub char_max: usize,
    /// Longer prompts keep their first and last `max_bytes / 2` bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Added to `ln((1 + n) / (1 + df))`: 1 is scikit-learn's smooth idf; 0 gives a
    /// term present in every training prompt (shared few-shot prefixes, option
    /// scaffolding) zero weight.
    #[serde(default = "default_idf_offset")]
    pub idf_offset: f32,
    /// Buckets whose document frequency exceeds this fraction of the training prompts
    /// get weight 0 (1.0 keeps every bucket).
    #[serde(default = "default_max_df")]
    pub max_df: f32,
    /// The last `tail_bytes` bytes of a longer prompt (where the actual question sits)
    /// are featurized again and added with weight `tail_weight` (0 disables).
    #[serde(default = "default_tail_bytes")]
    pub tail_bytes: usize,
    /// See `tail_bytes`.
    #[serde(default = "default_tail_weight")]
    pub tail_weight: f32,
}

impl Default for TfidfConfig {
    fn default() -> Self {
        TfidfConfig {
            dim: default_dim(),
            buckets_log2: default_buckets_log2(),
            char_min: default_char_min(),
            char_max: default_char_max(),
            max_bytes: default_max_bytes(),
            idf_offset: default_idf_offset(),
            max_df: default_max_df(),
            tail_bytes: default_tail_bytes(),
            tail_weight: default_tail_weight(),
        }
    }
}

/// A fitted hashed TF-IDF featurizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TfidfFeaturizer {
    pub config: TfidfConfig,
    /// Quantised idf per bucket: `idf = q * idf_step`.
    idf_q: Vec<u8>,
    idf_step: f32,
    /// Training prompts the idf was fitted on.
    n_docs: u64,
}

const K: u64 = 0x517c_c1b7_2722_0a95;
const WORD_SEED: u64 = 0x2545_f491_4f6c_dd1d;
const BIGRAM_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const CHAR_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;
/// Empty slot marker in the per-text counting table.
const EMPTY: u32 = u32::MAX;

#[inline(always)]
fn step(h: u64, b: u8) -> u64 {
    (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K)
}

/// Final avalanche (the murmur3 64-bit finaliser) so high and low bits are both usable.
#[inline(always)]
fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[derive(Default)]
struct Scratch {
    norm: Vec<u8>,
    /// Open-addressing table: (bucket, count); bucket == EMPTY marks a free slot.
    table: Vec<(u32, u32)>,
    /// Slots in use, in insertion order (deterministic iteration).
    used: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Scratch {
    /// Normalises `text` into `self.norm` (see the module docs).
    fn normalise(&mut self, text: &str, max_bytes: usize) {
        self.norm.clear();
        self.norm.push(b' ');
        if text.len() > max_bytes && max_bytes >= 2 {
            let half = max_bytes / 2;
            let mut a = half;
            while !text.is_char_boundary(a) {
                a -= 1;
            }
            let mut b = text.len() - half;
            while !text.is_char_boundary(b) {
                b += 1;
            }
            self.push_normalised(&text[..a]);
            self.push_space();
            self.push_normalised(&text[b..]);
        } else {
            self.push_normalised(text);
        }
        self.push_space();
    }

    fn push_space(&mut self) {
        if self.norm.last() != Some(&b' ') {
            self.norm.push(b' ');
        }
    }

    fn push_normalised(&mut self, text: &str) {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                if b.is_ascii_whitespace() {
                    self.push_space();
                } else {
                    self.norm.push(b.to_ascii_lowercase());
                }
                i += 1;
            } else {
                // Non-ASCII: decode one char (text is valid UTF-8, so the slice is too).
                let rest = &text[i..];
                let Some(c) = rest.chars().next() else { break };
                if c.is_whitespace() {
                    self.push_space();
                } else {
                    let mut buf = [0u8; 4];
                    for l in c.to_lowercase() {
                        self.norm
                            .extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
                    }
                }
                i += c.len_utf8();
            }
        }
    }

    fn reset_table(&mut self, max_terms: usize) {
        // Load factor <= 2/3 even if every term is distinct (linear probing stays short).
        let cap = (max_terms + max_terms / 2).next_power_of_two().max(64);
        self.table.clear();
        self.table.resize(cap, (EMPTY, 0));
        self.used.clear();
    }

    /// Counts the terms of the normalised text per bucket.
    fn count_terms(&mut self, cfg: &TfidfConfig) {
        let n = self.norm.len();
        let (cmin, cmax) = (cfg.char_min.max(1), cfg.char_max.clamp(1, 8));
        let n_char = if cmax >= cmin {
            n * (cmax - cmin + 1)
        } else {
            0
        };
        // Words: at most one per two bytes (a word and its separator), each a unigram
        // plus a bigram.
        self.reset_table(n_char + n + 2);
        let shift = 64 - cfg.buckets_log2.clamp(10, 24);
        let to_bucket = |h: u64| (fmix(h) >> shift) as u32;
        let Scratch { norm, table, used } = self;

        // Character n-grams over the whole normalised text.
        if cmax >= cmin {
            for i in 0..n {
                let mut h = CHAR_SEED;
                let end = (i + cmax).min(n);
                for (len, &b) in (1..).zip(&norm[i..end]) {
                    h = step(h, b);
                    if len >= cmin {
                        add(table, used, to_bucket(h ^ len as u64));
                    }
                }
            }
        }
        // Word unigrams and bigrams.
        let mut prev: Option<u64> = None;
        let mut i = 0;
        while i < n {
            let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
            if !is_word(norm[i]) {
                i += 1;
                continue;
            }
            let mut h = WORD_SEED;
            while i < n && is_word(norm[i]) {
                h = step(h, norm[i]);
                i += 1;
            }
            add(table, used, to_bucket(h));
            if let Some(p) = prev {
                add(
                    table,
                    used,
                    to_bucket(step(p ^ BIGRAM_SEED, 0).wrapping_add(h)),
                );
            }
            prev = Some(h);
        }
    }
}

/// Counts one occurrence of `bucket` in the open-addressing table.
#[inline(always)]
fn add(table: &mut [(u32, u32)], used: &mut Vec<u32>, bucket: u32) {
    let mask = table.len() - 1;
    // Buckets are already well-mixed hash bits: use them as the probe start.
    let mut slot = bucket as usize & mask;
    loop {
        let e = &mut table[slot];
        if e.0 == bucket {
            e.1 += 1;
            return;
        }
        if e.0 == EMPTY {
            *e = (bucket, 1);
            used.push(slot as u32);
            return;
        }
        slot = (slot + 1) & mask;
    }
}

/// `1 + ln(tf)` for small tf, precomputed.
const fn tf_table() -> [f32; 16] {
    // ln(k) for k = 1..16, to f32 precision.
    [
        1.0,
        1.693_147_2,
        2.098_612_3,
        2.386_294_4,
        2.609_438,
        2.791_759_5,
        2.945_910_1,
        3.079_441_5,
        3.197_224_6,
        3.302_585,
        3.397_895_3,
        3.484_906_6,
        3.564_949_4,
        3.639_057_4,
        3.708_050_2,
        3.772_588_7,
    ]
}
const TF: [f32; 16] = tf_table();

#[inline(always)]
fn sublinear_tf(tf: u32) -> f32 {
    match TF.get(tf as usize - 1) {
        Some(&w) => w,
        None => 1.0 + (tf as f32).ln(),
    }
}

impl TfidfFeaturizer {
    /// Fits the idf table on the training prompts.
    pub fn fit(texts: &[&str], config: TfidfConfig) -> Self {
        let buckets = 1usize << config.buckets_log2.clamp(10, 24);
        let mut df = vec![0u32; buckets];
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            for t in texts {
                s.normalise(t, config.max_bytes);
                s.count_terms(&config);
                let Scratch { table, used, .. } = &mut *s;
                for &slot in used.iter() {
                    let b = table[slot as usize].0 as usize;
                    df[b] = df[b].saturating_add(1);
                }
            }
        });
        let n = texts.len() as u64;
        let offset = f64::from(config.idf_offset.max(0.0));
        let max_df = f64::from(config.max_df);
        let range = offset + (1.0 + n as f64).ln();
        let idf_step = (range / 255.0) as f32;
        let idf_q = df
            .iter()
            .map(|&d| {
                let dropped = n > 0 && f64::from(d) > max_df * n as f64;
                let idf = ((1.0 + n as f64) / (1.0 + f64::from(d))).ln() + offset;
                if range > 0.0 && !dropped {
                    (idf / range * 255.0).round().clamp(0.0, 255.0) as u8
                } else {
                    0
                }
            })
            .collect();
        TfidfFeaturizer {
            config,
            idf_q,
            idf_step,
            n_docs: n,
        }
    }

    /// Training prompts the idf was fitted on.
    pub fn n_docs(&self) -> u64 {
        self.n_docs
    }

    /// The (dequantised) idf of bucket `b`.
    #[inline(always)]
    fn idf(&self, b: u32) -> f32 {
        match self.idf_q.get(b as usize) {
            Some(&q) => f32::from(q) * self.idf_step,
            // A table that does not match the config (hand-edited artifact): treat the
            // term as unseen in training.
            None => 255.0 * self.idf_step,
        }
    }
}

impl TfidfFeaturizer {
    /// Adds `scale` times the projected tf-idf weights of the terms counted in `s`.
    #[inline]
    fn accumulate(&self, s: &Scratch, scale: f32, out: &mut [f32]) {
        let dim = out.len();
        for &slot in &s.used {
            let (b, tf) = s.table[slot as usize];
            let w = scale * sublinear_tf(tf) * self.idf(b);
            let h = fmix(u64::from(b) ^ 0xa076_1d64_78bd_642f);
            // Multiply-shift maps the high 32 bits uniformly onto 0..dim.
            let j = (((h >> 32) * dim as u64) >> 32) as usize;
            let signed = if h & 1 == 0 { w } else { -w };
            out[j] += signed;
        }
    }
}

impl Featurizer for TfidfFeaturizer {
    fn dim(&self) -> usize {
        self.config.dim
    }

    fn featurize_into(&self, text: &str, out: &mut [f32]) {
        out.fill(0.0);
        let dim = out.len();
        if dim == 0 {
            return;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.normalise(text, self.config.max_bytes);
            s.count_terms(&self.config);
            self.accumulate(&s, 1.0, out);
            let tail = self.config.tail_bytes;
            if self.config.tail_weight > 0.0 && tail > 0 && text.len() > tail {
                let mut start = text.len() - tail;
                while !text.is_char_boundary(start) {
                    start += 1;
                }
                s.normalise(&text[start..], self.config.max_bytes);
                s.count_terms(&self.config);
                self.accumulate(&s, self.config.tail_weight, out);
            }
        });
        l2_normalize(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The hash buckets of the terms of `text` under `cfg`.
    fn term_buckets(cfg: &TfidfConfig, text: &str) -> Vec<u32> {
        let mut s = Scratch::default();
        s.normalise(text, usize::MAX);
        s.count_terms(cfg);
        s.used.iter().map(|&i| s.table[i as usize].0).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn corpus() -> Vec<&'static str> {
        vec![
            "What is the capital of France? A. Paris B. Lyon",
            "Write a Python function that returns the sum of a list of integers.",
            "The trophy does not fit into the suitcase because it is too big.",
            "Which gas do plants absorb from the atmosphere during photosynthesis?",
            "def add(a, b):\n    return a + b",
            "Solve for x: 2x + 3 = 11.",
        ]
    }

    #[test]
    fn deterministic_and_normalised() {
        let f = TfidfFeaturizer::fit(&corpus(), TfidfConfig::default());
        let a = f.featurize("Write a function that sorts a list in Python.");
        let b = f.featurize("Write a function that sorts a list in Python.");
        assert_eq!(a, b);
        assert_eq!(a.len(), 256);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        // Whitespace and case do not matter.
        let c = f.featurize("  write A function that SORTS a list\tin python. ");
        assert!((dot(&a, &c) - 1.0).abs() < 1e-5);
        assert!(f.featurize("").iter().all(|&x| x == 0.0));
    }

    #[test]
    fn similar_texts_are_closer_than_dissimilar_ones() {
        let f = TfidfFeaturizer::fit(&corpus(), TfidfConfig::default());
        let q = f.featurize("Write a Python function that returns the product of a list.");
        let near = f.featurize("Write a Python function that returns the maximum of a list.");
        let far = f.featurize("Which planet is closest to the sun? A. Mars B. Mercury");
        assert!(
            dot(&q, &near) > dot(&q, &far) + 0.3,
            "{} vs {}",
            dot(&q, &near),
            dot(&q, &far)
        );
    }

    #[test]
    fn idf_downweights_common_terms() {
        let docs: Vec<String> = (0..50).map(|i| format!("common words here {i}")).collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let f = TfidfFeaturizer::fit(&refs, TfidfConfig::default());
        assert_eq!(f.n_docs(), 50);
        let common = term_buckets(&f.config, "common");
        let rare = term_buckets(&f.config, "zebra");
        let mean = |bs: &[u32]| bs.iter().map(|&b| f.idf(b)).sum::<f32>() / bs.len() as f32;
        assert!(
            mean(&common) + 1.0 < mean(&rare),
            "{} {}",
            mean(&common),
            mean(&rare)
        );
    }

    #[test]
    fn long_prompts_keep_head_and_tail() {
        let cfg = TfidfConfig {
            max_bytes: 64,
            ..TfidfConfig::default()
        };
        let f = TfidfFeaturizer::fit(&corpus(), cfg);
        let long = format!(
            "héllo start {} the question at the end",
            "filler ".repeat(1000)
        );
        let v = f.featurize(&long);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
        let mut s = Scratch::default();
        s.normalise(&long, 64);
        assert!(s.norm.len() <= 70);
        assert!(std::str::from_utf8(&s.norm)
            .unwrap()
            .ends_with("at the end "));
    }

    #[test]
    fn idf_offset_zero_and_max_df_drop_ubiquitous_terms() {
        let docs: Vec<String> = (0..40)
            .map(|i| format!("shared prefix {} unique{i}x", i % 7))
            .collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let buckets = |f: &TfidfFeaturizer, t: &str| term_buckets(&f.config, t);
        let smooth = TfidfFeaturizer::fit(&refs, TfidfConfig::default());
        let zero = TfidfFeaturizer::fit(
            &refs,
            TfidfConfig {
                idf_offset: 0.0,
                ..TfidfConfig::default()
            },
        );
        let shared = buckets(&zero, "shared");
        // In every document: full weight 1 with smooth idf, nothing without the offset.
        assert!(shared.iter().all(|&b| (smooth.idf(b) - 1.0).abs() < 0.02));
        assert!(shared.iter().all(|&b| zero.idf(b) < 0.02));
        // A 1/7-frequency term keeps a positive weight either way; max_df = 0.1 drops it.
        let digit = buckets(&zero, " 3 ");
        assert!(digit.iter().any(|&b| zero.idf(b) > 1.0));
        let capped = TfidfFeaturizer::fit(
            &refs,
            TfidfConfig {
                max_df: 0.1,
                ..TfidfConfig::default()
            },
        );
        assert!(digit.iter().all(|&b| capped.idf(b) == 0.0));
        assert!(buckets(&capped, "unique5x")
            .iter()
            .any(|&b| capped.idf(b) > 1.0));
    }

    #[test]
    fn tail_weight_emphasises_the_end_of_long_prompts_only() {
        let base = TfidfFeaturizer::fit(&corpus(), TfidfConfig::default());
        let tailed = TfidfFeaturizer::fit(
            &corpus(),
            TfidfConfig {
                tail_bytes: 40,
                tail_weight: 2.0,
                ..TfidfConfig::default()
            },
        );
        let short = "Solve for x: 2x + 3 = 11.";
        assert_eq!(base.featurize(short), tailed.featurize(short));
        let prefix = "Write a Python function that returns the sum of a list. ".repeat(4);
        let a = format!("{prefix}Which planet is closest to the sun?");
        let b = format!("{prefix}Which gas do plants absorb from the air?");
        let (ba, bb) = (base.featurize(&a), base.featurize(&b));
        let (ta, tb) = (tailed.featurize(&a), tailed.featurize(&b));
        assert!((dot(&ta, &ta) - 1.0).abs() < 1e-5);
        // The shared prefix makes the two prompts look alike; the tail weight separates them.
        assert!(
            dot(&ta, &tb) + 0.1 < dot(&ba, &bb),
            "{} vs {}",
            dot(&ta, &tb),
            dot(&ba, &bb)
        );
    }

    #[test]
    fn serde_defaults_fill_missing_config_fields() {
        let c: TfidfConfig = serde_json::from_str(r#"{"dim": 64}"#).unwrap();
        assert_eq!(c.dim, 64);
        assert_eq!(c.buckets_log2, default_buckets_log2());
        assert_eq!(
            c,
            TfidfConfig {
                dim: 64,
                ..TfidfConfig::default()
            }
        );
    }

    proptest! {
        #[test]
        fn norm_is_one_or_zero_and_finite(text in "\\PC{0,300}") {
            let f = TfidfFeaturizer::fit(&corpus(), TfidfConfig { dim: 64, ..TfidfConfig::default() });
            let v = f.featurize(&text);
            prop_assert!(v.iter().all(|x| x.is_finite()));
            let n = dot(&v, &v);
            prop_assert!(n == 0.0 || (n - 1.0).abs() < 1e-4, "norm {}", n);
        }
    }
}
