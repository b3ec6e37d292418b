//! Context reduction: the featurizer's vector (hashed TF-IDF or an embedding, hundreds to
//! tens of thousands of dimensions) becomes the bandit's small dense context.
//!
//! Method: a fixed Gaussian random projection (Johnson-Lindenstrauss; Achlioptas, 2003):
//! `z = P f` with `P` a `k x D` matrix of i.i.d. `N(0, 1/k)` entries drawn from a ChaCha
//! stream seeded by `projection_seed`, then `z` is L2-normalised and a constant 1 is
//! prepended as the bias term: `x = [1, z / |z|]`, `|x|^2 = 2` for every non-empty prompt.
//! Random projection needs no fitting, is identical on every instance given the seed
//! (instances sharing Redis statistics must agree on the context), and keeps cosine
//! geometry up to `O(1/sqrt(k))` distortion, which is all a linear residual model over
//! `k = 16..32` dimensions can use. Zero input entries are skipped, so sparse TF-IDF
//! vectors cost `nnz * k` multiply-adds.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::bandit::standard_normal;

/// A seeded `k x D` Gaussian projection.
#[derive(Debug, Clone)]
pub struct Projector {
    in_dim: usize,
    out_dim: usize,
    /// Column-major: `in_dim` columns of `out_dim` entries (column `j` = image of `e_j`).
    cols: Vec<f32>,
}

impl Projector {
    pub fn new(in_dim: usize, out_dim: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scale = 1.0 / (out_dim.max(1) as f64).sqrt();
        let cols = (0..in_dim * out_dim)
            .map(|_| (standard_normal(&mut rng) * scale) as f32)
            .collect();
        Projector {
            in_dim,
            out_dim,
            cols,
        }
    }

    /// Context dimension (`out_dim + 1`).
    pub fn context_dim(&self) -> usize {
        self.out_dim + 1
    }

    /// The bandit context `[1, normalised P f]` of a feature vector. A feature vector of
    /// the wrong length is truncated or zero-padded (never panics).
    pub fn context(&self, features: &[f32]) -> Vec<f64> {
        let k = self.out_dim;
        let mut z = vec![0.0f64; k];
        for (j, &f) in features.iter().take(self.in_dim).enumerate() {
            if f == 0.0 {
                continue;
            }
            let col = &self.cols[j * k..(j + 1) * k];
            for (zi, &p) in z.iter_mut().zip(col) {
                *zi += f64::from(p) * f64::from(f);
            }
        }
        let norm = z.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut x = Vec::with_capacity(k + 1);
        x.push(1.0);
        if norm > 0.0 && norm.is_finite() {
            x.extend(z.iter().map(|v| v / norm));
        } else {
            x.resize(k + 1, 0.0);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_seeded_normalised_and_biased() {
        let p = Projector::new(50, 8, 3);
        let mut f = vec![0.0f32; 50];
        f[3] = 0.6;
        f[17] = 0.8;
        let x = p.context(&f);
        assert_eq!(x.len(), 9);
        assert_eq!(x[0], 1.0);
        let n: f64 = x[1..].iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-9);
        assert_eq!(x, Projector::new(50, 8, 3).context(&f));
        assert_ne!(x, Projector::new(50, 8, 4).context(&f));
        // Zero vector: bias only.
        let z = p.context(&[0.0; 50]);
        assert_eq!(z[0], 1.0);
        assert!(z[1..].iter().all(|v| *v == 0.0));
    }
}
