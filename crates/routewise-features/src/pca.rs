//! Principal component analysis of a dense matrix (used to shrink distilled token tables).
//!
//! Method: centre the rows, form the covariance matrix (f64), and diagonalise it with the
//! cyclic Jacobi eigenvalue algorithm (Golub & Van Loan, "Matrix Computations", 4th ed.,
//! section 8.5.2); components are the eigenvectors sorted by decreasing eigenvalue.
//! Suitable for the small dimensions of sentence encoders (hundreds of columns).

/// A fitted PCA: the column means and `k` components (row-major `k x d`).
#[derive(Debug, Clone)]
pub struct Pca {
    pub mean: Vec<f64>,
    pub components: Vec<f64>,
    pub d: usize,
    pub k: usize,
}

impl Pca {
    /// Fits `k` components to `data` (`n x d`, row-major).
    pub fn fit(data: &[f32], d: usize, k: usize) -> Pca {
        let n = data.len().checked_div(d).unwrap_or(0);
        let k = k.min(d);
        let mut mean = vec![0.0f64; d];
        for row in data.chunks_exact(d.max(1)) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        if n > 0 {
            mean.iter_mut().for_each(|m| *m /= n as f64);
        }
        let mut cov = vec![0.0f64; d * d];
        let mut centred = vec![0.0f64; d];
        for row in data.chunks_exact(d.max(1)) {
            centred
                .iter_mut()
                .zip(row)
                .zip(&mean)
                .for_each(|((c, &x), m)| *c = x as f64 - m);
            for i in 0..d {
                let ci = centred[i];
                let dst = &mut cov[i * d..i * d + d];
                for j in i..d {
                    dst[j] += ci * centred[j];
                }
            }
        }
        let denom = (n.max(2) - 1) as f64;
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / denom;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        let (vals, vecs) = jacobi_eigen(&mut cov, d);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let mut components = vec![0.0f64; k * d];
        for (c, &j) in order.iter().take(k).enumerate() {
            for i in 0..d {
                components[c * d + i] = vecs[i * d + j];
            }
        }
        Pca {
            mean,
            components,
            d,
            k,
        }
    }

    /// Projects one row (`d` values) onto the components (`k` values).
    pub fn transform_row(&self, row: &[f32], out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.k) {
            let comp = &self.components[c * self.d..(c + 1) * self.d];
            *o = row
                .iter()
                .zip(&self.mean)
                .zip(comp)
                .map(|((&x, m), w)| (x as f64 - m) * w)
                .sum::<f64>() as f32;
        }
    }
}

/// Eigen-decomposition of the symmetric `d x d` matrix `a` (destroyed) by cyclic Jacobi
/// rotations. Returns (eigenvalues, eigenvectors as columns of a row-major `d x d`).
pub fn jacobi_eigen(a: &mut [f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let total: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j] * a[i * d + j])
            .sum();
        if off <= 1e-22 * total {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let app = a[p * d + p];
                let aqq = a[q * d + q];
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- J^T A J, touching rows/columns p and q.
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigen_of_known_matrix() {
        // [[2,1],[1,2]] has eigenvalues 3 and 1, eigenvectors (1,1)/sqrt2 and (1,-1)/sqrt2.
        let mut a = vec![2.0, 1.0, 1.0, 2.0];
        let (vals, vecs) = jacobi_eigen(&mut a, 2);
        let mut sorted = vals.clone();
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-10 && (sorted[1] - 3.0).abs() < 1e-10);
        let j = if vals[0] > vals[1] { 0 } else { 1 };
        assert!((vecs[j].abs() - 0.5f64.sqrt()).abs() < 1e-10);
        assert!((vecs[2 + j].abs() - 0.5f64.sqrt()).abs() < 1e-10);
    }

    #[test]
    fn first_component_follows_the_spread() {
        // Points along the line y = 2x (plus tiny noise): the first component is (1,2)/sqrt5.
        let data: Vec<f32> = (0..50)
            .flat_map(|i| {
                let x = i as f32 - 25.0;
                [x, 2.0 * x + if i % 2 == 0 { 0.01 } else { -0.01 }]
            })
            .collect();
        let pca = Pca::fit(&data, 2, 1);
        let (a, b) = (pca.components[0], pca.components[1]);
        assert!((a.abs() - 1.0 / 5f64.sqrt()).abs() < 1e-3, "{a}");
        assert!((b.abs() - 2.0 / 5f64.sqrt()).abs() < 1e-3, "{b}");
        let mut out = [0.0f32];
        pca.transform_row(&[pca.mean[0] as f32, pca.mean[1] as f32], &mut out);
        assert!(out[0].abs() < 1e-4);
    }

    #[test]
    fn eigenvectors_are_orthonormal() {
        let d = 6;
        let mut a: Vec<f64> = (0..d * d)
            .map(|k| {
                let (i, j) = (k / d, k % d);
                ((i + 1) * (j + 1)) as f64 / 7.0 + if i == j { 1.0 } else { 0.0 }
            })
            .collect();
        let (_, v) = jacobi_eigen(&mut a, d);
        for p in 0..d {
            for q in 0..d {
                let dot: f64 = (0..d).map(|k| v[k * d + p] * v[k * d + q]).sum();
                let want = if p == q { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-9);
            }
        }
    }
}
