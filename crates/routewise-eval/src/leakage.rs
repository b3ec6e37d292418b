//! Duplicates the train split holds and the test split does not: a check `eval` runs
//! before trusting what was tuned on train.
//!
//! Several fits choose their settings by leave-one-out or hold-out on `train` (knn's `k`
//! and weighting, the ensemble's weights, the cascades' cross-fitted acceptor). That
//! choice assumes a held-out train prompt relates to the rest of train as a new prompt
//! does. It fails when train holds near-identical copies of its prompts that test prompts
//! do not have (a dataset split by group, or one whose train part was augmented): the
//! copy left in answers for the one held out, the fits learn to memorise, and they do
//! worse on test than they would have with a setting tuned on honest neighbours. On a
//! split by a hash of the id (the shared files) copies land on both sides alike, and
//! nothing is reported.
//!
//! The check: for a seeded sample of train prompts, the share whose most similar *other*
//! train prompt is near-identical (cosine at least [`NEAR_IDENTICAL`] on the router's
//! features); for a sample of test prompts, the share whose most similar train prompt is.
//! A warning when the first exceeds the second by [`MIN_EXCESS`] and is at least twice it.
//! Pure: feature rows in, shares out.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use routewise_features::pooling::dot;

/// Cosine at or above which two prompts count as near-identical copies.
pub const NEAR_IDENTICAL: f32 = 0.999;

/// Prompts sampled from each split.
pub const SAMPLE: usize = 256;

/// How much larger the train share must be (absolute) to warn.
pub const MIN_EXCESS: f64 = 0.2;

/// The two shares of prompts with a near-identical train prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyShares {
    /// Train prompts with a near-identical copy elsewhere in train.
    pub train: f64,
    /// Test prompts with a near-identical prompt in train.
    pub test: f64,
}

impl CopyShares {
    /// The warning, when train holds copies that test does not share.
    pub fn warning(&self) -> Option<String> {
        (self.train >= self.test + MIN_EXCESS && self.train >= 2.0 * self.test).then(|| {
            format!(
                "{:.0}% of train prompts have a near-identical copy elsewhere in train, but only \
                 {:.0}% of test prompts have one in train: settings tuned on held-out train \
                 prompts (knn's k, the ensemble's weights) learn to memorise and will do worse \
                 on test; remove the copies from train, or split copies together",
                100.0 * self.train,
                100.0 * self.test
            )
        })
    }
}

/// Shares of sampled train and test prompts with a near-identical train prompt. `train`
/// and `test` are row-major L2-normalised feature rows of width `dim`.
pub fn copy_shares(train: &[f32], test: &[f32], dim: usize, seed: u64) -> CopyShares {
    if dim == 0 {
        return CopyShares {
            train: 0.0,
            test: 0.0,
        };
    }
    let n_train = train.len() / dim;
    // Whether a query has a near-identical train row other than `skip`.
    let has_copy = |q: &[f32], skip: Option<usize>| {
        (0..n_train).any(|j| Some(j) != skip && dot(q, row(train, j, dim)) >= NEAR_IDENTICAL)
    };
    let sample = |n: usize, salt: u64| -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ salt));
        idx.truncate(SAMPLE);
        idx
    };
    let share = |hits: usize, n: usize| if n == 0 { 0.0 } else { hits as f64 / n as f64 };
    let train_idx = sample(n_train, 0x7e57_c0b1);
    let train_hits = train_idx
        .iter()
        .filter(|&&i| has_copy(row(train, i, dim), Some(i)))
        .count();
    let test_idx = sample(test.len() / dim, 0x7e57_c0b2);
    let test_hits = test_idx
        .iter()
        .filter(|&&i| has_copy(row(test, i, dim), None))
        .count();
    CopyShares {
        train: share(train_hits, train_idx.len()),
        test: share(test_hits, test_idx.len()),
    }
}

/// Row `i` of a row-major matrix of width `dim`.
fn row(v: &[f32], i: usize, dim: usize) -> &[f32] {
    &v[i * dim..(i + 1) * dim]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit vector along axis `a` tilted slightly towards axis `b` (cosine to the pure
    /// axis `a` about 1 - t^2 / 2).
    fn unit(dim: usize, a: usize, b: usize, t: f32) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[a] = 1.0;
        v[b] += t;
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn copies_in_train_alone_are_reported_and_copies_on_both_sides_are_not() {
        let dim = 64;
        // 30 distinct prompts, each in train three times (tiny variations), test holding
        // 20 other distinct prompts: a group split of an augmented train part.
        let mut train = Vec::new();
        for p in 0..30 {
            for c in 0..3 {
                train.extend(unit(dim, p, (p + 1) % dim, 0.001 * c as f32));
            }
        }
        let mut test = Vec::new();
        for p in 30..50 {
            test.extend(unit(dim, p, (p + 7) % dim, 0.5));
        }
        let s = copy_shares(&train, &test, dim, 0);
        assert_eq!(s.train, 1.0);
        assert_eq!(s.test, 0.0);
        let w = s.warning().expect("a warning");
        assert!(
            w.contains("100% of train prompts") && w.contains("0% of test"),
            "{w}"
        );

        // The same train part with test drawn from the same groups (a split by id): no
        // warning.
        let mut test = Vec::new();
        for p in 0..20 {
            test.extend(unit(dim, p, (p + 1) % dim, 0.002));
        }
        let s = copy_shares(&train, &test, dim, 0);
        assert_eq!((s.train, s.test), (1.0, 1.0));
        assert_eq!(s.warning(), None);
    }

    #[test]
    fn distinct_prompts_have_no_copies() {
        let dim = 32;
        let train: Vec<f32> = (0..20).flat_map(|p| unit(dim, p, p + 1, 0.3)).collect();
        let test: Vec<f32> = (0..5).flat_map(|p| unit(dim, p + 20, p, 0.4)).collect();
        let s = copy_shares(&train, &test, dim, 3);
        assert_eq!((s.train, s.test), (0.0, 0.0));
        assert_eq!(s.warning(), None);
        // Degenerate inputs stay quiet.
        assert_eq!(copy_shares(&[], &[], dim, 0).warning(), None);
        assert_eq!(copy_shares(&[], &[], 0, 0).warning(), None);
    }
}
