//! Small dense linear algebra for the bandit's `d x d` statistics (d is ~17, so plain
//! loops beat any BLAS call overhead): Cholesky factorisation, the inverse of a symmetric
//! positive-definite matrix, the Sherman-Morrison rank-one update of an inverse, and the
//! triangular solve used to draw Gaussian samples.
//!
//! Matrices are row-major `Vec<f64>` / `&[f64]` of length `d * d`. Pure functions, no I/O.

/// Lower-triangular Cholesky factor `L` with `A = L L^T`, or `None` when `a` is not
/// (numerically) positive definite.
pub fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves `L y = b` for lower-triangular `L` (forward substitution).
pub fn solve_lower(l: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut y = vec![0.0; d];
    for i in 0..d {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * d + k] * y[k];
        }
        y[i] = s / l[i * d + i];
    }
    y
}

/// Solves `L^T x = y` for lower-triangular `L` (back substitution).
pub fn solve_lower_transpose(l: &[f64], y: &[f64], d: usize) -> Vec<f64> {
    let mut x = vec![0.0; d];
    for i in (0..d).rev() {
        let mut s = y[i];
        for k in i + 1..d {
            s -= l[k * d + i] * x[k];
        }
        x[i] = s / l[i * d + i];
    }
    x
}

/// Inverse of a symmetric positive-definite matrix through its Cholesky factor.
pub fn spd_inverse(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let l = cholesky(a, d)?;
    Some(inverse_from_cholesky(&l, d))
}

/// `A^-1` from the lower-triangular Cholesky factor `l` of `A` (as [`cholesky`] returns it).
pub fn inverse_from_cholesky(l: &[f64], d: usize) -> Vec<f64> {
    let mut inv = vec![0.0; d * d];
    let mut e = vec![0.0; d];
    for c in 0..d {
        e.fill(0.0);
        e[c] = 1.0;
        let y = solve_lower(l, &e, d);
        let x = solve_lower_transpose(l, &y, d);
        for r in 0..d {
            inv[r * d + c] = x[r];
        }
    }
    // Symmetrise away rounding.
    for r in 0..d {
        for c in r + 1..d {
            let m = 0.5 * (inv[r * d + c] + inv[c * d + r]);
            inv[r * d + c] = m;
            inv[c * d + r] = m;
        }
    }
    inv
}

/// `M x`.
pub fn mat_vec(m: &[f64], x: &[f64], d: usize) -> Vec<f64> {
    (0..d)
        .map(|r| {
            m[r * d..(r + 1) * d]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect()
}

/// `x^T M x`.
pub fn quad_form(m: &[f64], x: &[f64], d: usize) -> f64 {
    mat_vec(m, x, d).iter().zip(x).map(|(a, b)| a * b).sum()
}

/// `a . b`.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Sherman-Morrison: given `A^-1`, overwrites it with `(A + x x^T)^-1
/// = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x)` (valid for symmetric `A`).
pub fn sherman_morrison(a_inv: &mut [f64], x: &[f64], d: usize) {
    let u = mat_vec(a_inv, x, d);
    let denom = 1.0 + dot(x, &u);
    for r in 0..d {
        for c in 0..d {
            a_inv[r * d + c] -= u[r] * u[c] / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_of_hand_matrix() {
        // A = [[4, 2], [2, 3]] -> L = [[2, 0], [1, sqrt(2)]]
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert!((l[0] - 2.0).abs() < 1e-12);
        assert!((l[2] - 1.0).abs() < 1e-12);
        assert!((l[3] - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(l[1], 0.0);
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn inverse_of_hand_matrix() {
        // [[4, 2], [2, 3]]^-1 = 1/8 [[3, -2], [-2, 4]]
        let inv = spd_inverse(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        let want = [3.0 / 8.0, -2.0 / 8.0, -2.0 / 8.0, 4.0 / 8.0];
        for (a, b) in inv.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{inv:?}");
        }
    }

    #[test]
    fn sherman_morrison_matches_direct_inverse() {
        let a = [2.0, 0.5, 0.0, 0.5, 1.5, 0.2, 0.0, 0.2, 1.0];
        let x = [0.3, -1.0, 0.7];
        let mut inv = spd_inverse(&a, 3).unwrap();
        sherman_morrison(&mut inv, &x, 3);
        let mut a2 = a;
        for r in 0..3 {
            for c in 0..3 {
                a2[r * 3 + c] += x[r] * x[c];
            }
        }
        let direct = spd_inverse(&a2, 3).unwrap();
        for (p, q) in inv.iter().zip(&direct) {
            assert!((p - q).abs() < 1e-12);
        }
    }
}
