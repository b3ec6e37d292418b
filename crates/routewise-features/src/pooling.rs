//! Pooling of per-token vectors into one sentence vector.
//!
//! Mean pooling over the attention mask, as in Sentence-BERT (Reimers & Gurevych, 2019,
//! "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks", section 3): the
//! sentence vector is the average of the token vectors whose mask is 1 (padding
//! excluded), followed by L2 normalisation ([`crate::l2_normalize`]). The static
//! featurizer uses the same mean over looked-up token vectors (model2vec).

/// Mean of the rows of `tokens` (row-major, `mask.len()` rows of `out.len()` values)
/// whose `mask` entry is non-zero, written to `out`. All-zero mask: `out` is zero.
pub fn masked_mean(tokens: &[f32], mask: &[u32], out: &mut [f32]) {
    let d = out.len();
    out.fill(0.0);
    if d == 0 {
        return;
    }
    let mut n = 0usize;
    for (row, &m) in tokens.chunks_exact(d).zip(mask) {
        if m != 0 {
            out.iter_mut().zip(row).for_each(|(o, x)| *o += x);
            n += 1;
        }
    }
    if n > 0 {
        let inv = 1.0 / n as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

/// The dot product of two equally long vectors (the cosine of unit vectors); 0 when their
/// lengths differ. Eight independent sums, so that the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2_normalize;
    use proptest::prelude::*;

    #[test]
    fn dot_matches_the_plain_sum_at_any_length_and_refuses_unequal_lengths() {
        for n in [0usize, 3, 8, 13, 128] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "n = {n}");
        }
        assert_eq!(dot(&[1.0, 2.0], &[1.0]), 0.0);
    }

    #[test]
    fn mean_ignores_masked_rows() {
        let tokens = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let mut out = [0.0; 2];
        masked_mean(&tokens, &[1, 1, 0], &mut out);
        assert_eq!(out, [2.0, 3.0]);
    }

    #[test]
    fn empty_mask_gives_zero_and_normalise_keeps_zero() {
        let mut out = [5.0; 3];
        masked_mean(&[1.0, 2.0, 3.0], &[0], &mut out);
        assert_eq!(out, [0.0; 3]);
        l2_normalize(&mut out);
        assert_eq!(out, [0.0; 3]);
    }

    #[test]
    fn normalise_known_vector() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
    }

    proptest! {
        #[test]
        fn normalised_vectors_have_unit_norm(v in prop::collection::vec(-100.0f32..100.0, 1..64)) {
            let mut v = v;
            let before = v.iter().map(|x| x * x).sum::<f32>();
            l2_normalize(&mut v);
            let after = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if before > 1e-12 {
                prop_assert!((after - 1.0).abs() < 1e-4);
            }
        }

        #[test]
        fn mean_of_identical_rows_is_the_row(row in prop::collection::vec(-10.0f32..10.0, 1..16), n in 1usize..8) {
            let tokens: Vec<f32> = (0..n).flat_map(|_| row.clone()).collect();
            let mut out = vec![0.0; row.len()];
            masked_mean(&tokens, &vec![1; n], &mut out);
            for (o, r) in out.iter().zip(&row) {
                prop_assert!((o - r).abs() < 1e-4);
            }
        }

        #[test]
        fn cosine_is_bounded_and_symmetric(a in prop::collection::vec(-5.0f32..5.0, 8), b in prop::collection::vec(-5.0f32..5.0, 8)) {
            let c = cosine(&a, &b);
            prop_assert!((-1.0001..=1.0001).contains(&c));
            prop_assert!((c - cosine(&b, &a)).abs() < 1e-6);
        }
    }
}
