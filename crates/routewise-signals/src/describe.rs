//! Description matching: natural-language route descriptions (and optional example
//! prompts) embedded once, a prompt embedded per request, cosine similarity between them.
//!
//! The embedder is the built-in compact static model (`static-mini`,
//! [`routewise_features::static_embed::BuiltinStaticFeaturizer`]): compiled into the
//! binary, so description routing works with nothing downloaded, and a prompt costs a
//! tokenizer pass plus a table lookup per token (microseconds). A route's vector is the
//! normalised mean of its description's embedding and its examples' embeddings (the
//! description counts as one example): with no examples it is zero-shot, with a few it is
//! the few-shot centroid classifier measured by `routewise eval --routes`.

use std::sync::{Arc, OnceLock};

use routewise_features::static_embed::BuiltinStaticFeaturizer;
use routewise_features::{l2_normalize, FeatureError, Featurizer};

/// Embeds route descriptions and prompts into one space.
#[derive(Clone)]
pub struct Embedder {
    featurizer: Arc<dyn Featurizer>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.featurizer.dim())
            .finish()
    }
}

impl Embedder {
    /// The built-in static model: loaded once per process and shared (route descriptions,
    /// the semantic cache and answer agreement all embed with it, and a config is checked
    /// before it is served), so later calls are a clone of an `Arc`.
    pub fn builtin() -> Result<Embedder, FeatureError> {
        static BUILT: OnceLock<Embedder> = OnceLock::new();
        if let Some(e) = BUILT.get() {
            return Ok(e.clone());
        }
        let e = Embedder::new(Arc::new(BuiltinStaticFeaturizer::new()?));
        Ok(BUILT.get_or_init(|| e).clone())
    }

    /// Any featurizer (its vectors are L2-normalised by the [`Featurizer`] contract).
    pub fn new(featurizer: Arc<dyn Featurizer>) -> Embedder {
        Embedder { featurizer }
    }

    pub fn dim(&self) -> usize {
        self.featurizer.dim()
    }

    /// The unit vector of `text`.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        self.featurizer.featurize(text)
    }

    /// A route's unit vector: the mean of the description's and the examples' embeddings,
    /// normalised.
    pub fn route_vector(&self, description: &str, examples: &[String]) -> Vec<f32> {
        let mut v = self.embed(description);
        for e in examples {
            for (a, b) in v.iter_mut().zip(self.embed(e)) {
                *a += b;
            }
        }
        l2_normalize(&mut v);
        v
    }

    /// The cosine of `text` to each row of `rows` (unit vectors, row-major).
    pub fn similarities(&self, text: &str, rows: &[f32]) -> Vec<f32> {
        let q = self.embed(text);
        cosines(&q, rows)
    }
}

/// Dot products of `q` with each `q.len()`-wide row of `rows`.
pub fn cosines(q: &[f32], rows: &[f32]) -> Vec<f32> {
    if q.is_empty() {
        return Vec::new();
    }
    rows.chunks_exact(q.len())
        .map(|r| r.iter().zip(q).map(|(a, b)| a * b).sum())
        .collect()
}

/// The index of the largest value (the first of ties); `None` for an empty slice or NaNs only.
pub fn argmax(xs: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in xs.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_skips_nan() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.2]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn route_vectors_are_unit_and_examples_pull_them() {
        let e = Embedder::builtin().unwrap();
        let d = e.route_vector("questions about law", &[]);
        let norm: f32 = d.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        let ex = vec!["What is the statute of limitations for a contract claim?".to_string()];
        let with = e.route_vector("questions about law", &ex);
        let q = e.embed("Is a verbal contract enforceable in court?");
        let (a, b) = (cosines(&q, &d)[0], cosines(&q, &with)[0]);
        assert!(
            b > a,
            "examples should bring a related prompt closer: {a} -> {b}"
        );
    }
}
