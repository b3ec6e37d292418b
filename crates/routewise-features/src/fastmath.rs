//! Elementwise kernels of the BERT forward pass (exp, erf, GELU, softmax) written so the
//! compiler can vectorise them: no calls into libm, no branches in the loop bodies.
//!
//! - `exp`: Cody-Waite range reduction (x = n ln2 + r, |r| <= ln2/2, ln2 split in a high
//!   part exact in few bits and a low correction) and the degree-6 Taylor polynomial of e^r
//!   (truncation error < 2e-7 relative); 2^n is built directly in the exponent bits, and n
//!   is rounded with the 1.5 * 2^23 "magic number" addition, which leaves n in the low
//!   mantissa bits. Inputs above 88 are clamped (2^n stays a normal float); below -87 the
//!   result is 0, so a masked softmax position gets exactly zero weight.
//! - `erf`: Abramowitz & Stegun, Handbook of Mathematical Functions, formula 7.1.26
//!   (|error| <= 1.5e-7 in exact arithmetic, 6e-7 after f32 rounding), odd extension by sign.
//! - `gelu`: the exact (erf) GELU of Hendrycks & Gimpel, "Gaussian Error Linear Units"
//!   (2016), the activation BERT uses: 0.5 x (1 + erf(x / sqrt 2)).
//!
//! The unit tests bound the error against the standard library over dense grids.

const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
const LN2_HI: f32 = 0.693_359_4; // 0.693359375 exactly: few mantissa bits, so n * LN2_HI is exact
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x in [-87, 88], relative error < 4e-7; 0 below -87, e^88 above 88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t's low mantissa bits hold n (two's complement offset by MAGIC's bits).
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        p * scale
    }
}

/// erf(x), |error| <= 6e-7.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the exact (erf) form.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `row[i] = gelu(row[i] + bias[i])` for every row of `bias.len()` values.
pub fn bias_gelu_rows(data: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in data.chunks_exact_mut(bias.len()) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x = gelu(*x + b);
        }
    }
}

/// `row[i] += bias[i] + residual_row[i]` for every row of `bias.len()` values.
pub fn bias_residual_rows(data: &mut [f32], residual: &[f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for (row, res) in data
        .chunks_exact_mut(bias.len())
        .zip(residual.chunks_exact(bias.len()))
    {
        for ((x, &r), &b) in row.iter_mut().zip(res).zip(bias) {
            *x += b + r;
        }
    }
}

/// `row[i] += bias[i]` for every row of `bias.len()` values.
pub fn bias_rows(data: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in data.chunks_exact_mut(bias.len()) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// Numerically stable softmax of one row in place, after adding `mask` (an additive bias
/// per position: 0 to keep, a large negative number to drop) when given.
pub fn softmax_row(row: &mut [f32], mask: Option<&[f32]>) {
    if let Some(m) = mask {
        for (x, &b) in row.iter_mut().zip(m) {
            *x += b;
        }
    }
    // Eight independent lanes for the max and the sum so the loops vectorise (a single
    // float accumulator would force sequential order).
    const L: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let mut sums = [0.0f32; L];
    let mut chunks = row.chunks_exact(L);
    for c in &mut chunks {
        for (s, &x) in sums.iter_mut().zip(c) {
            *s += x;
        }
    }
    let sum: f32 = sums.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    if sum > 0.0 {
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// Test reference: erf in f64 by its Maclaurin series up to |x| = 4.5 (cancellation costs
/// at most ~1e-8 there) and +-1 beyond (1 - erf(4.5) is 2e-10).
#[cfg(test)]
pub(crate) fn erf_f64_series(x: f64) -> f64 {
    if x.abs() > 4.5 {
        return x.signum();
    }
    let (mut term, mut sum, x2) = (x, x, x * x);
    for n in 1..400 {
        term *= -x2 / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_matches_std_within_4e7_relative() {
        let mut worst = 0.0f64;
        for x in grid(-87.0, 88.0, 200_000) {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_clamps_instead_of_overflowing() {
        assert!(exp(1000.0).is_finite());
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(-86.9) > 0.0);
    }

    #[test]
    fn erf_matches_reference_within_6e7() {
        let mut worst = 0.0f64;
        for x in grid(-4.4, 4.4, 88_000) {
            worst = worst.max((erf(x) as f64 - erf_f64_series(x as f64)).abs());
        }
        assert!(worst < 6e-7, "worst absolute error {worst}");
        assert_eq!(erf(0.0), 0.0);
        assert!((erf(10.0) - 1.0).abs() < 1e-7 && (erf(-10.0) + 1.0).abs() < 1e-7);
    }

    #[test]
    fn gelu_known_values() {
        assert_eq!(gelu(0.0), 0.0);
        // gelu(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.841344746...
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert!(gelu(-20.0).abs() < 1e-6 && (gelu(20.0) - 20.0).abs() < 1e-5);
    }

    #[test]
    fn fused_row_ops() {
        let mut d = vec![1.0, 2.0, 3.0, 4.0];
        bias_rows(&mut d, &[0.5, -0.5]);
        assert_eq!(d, vec![1.5, 1.5, 3.5, 3.5]);
        bias_residual_rows(&mut d, &[1.0, 1.0, 2.0, 2.0], &[0.0, 1.0]);
        assert_eq!(d, vec![2.5, 3.5, 5.5, 6.5]);
        let mut g = vec![0.0, -1.0];
        bias_gelu_rows(&mut g, &[1.0, 0.0]);
        assert!((g[0] - gelu(1.0)).abs() < 1e-7 && (g[1] - gelu(-1.0)).abs() < 1e-7);
    }

    #[test]
    fn softmax_mask_drops_positions() {
        let mut row = vec![1.0, 2.0, 3.0];
        softmax_row(&mut row, Some(&[0.0, 0.0, -1e9]));
        assert_eq!(row[2], 0.0);
        let e = (1.0f32).exp();
        assert!((row[0] - 1.0 / (1.0 + e)).abs() < 1e-6);
        assert!((row[1] - e / (1.0 + e)).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn softmax_is_a_distribution(row in prop::collection::vec(-50.0f32..50.0, 1..64)) {
            let mut r = row.clone();
            softmax_row(&mut r, None);
            let sum: f32 = r.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
            prop_assert!(r.iter().all(|&p| (0.0..=1.0).contains(&p)));
            // order preserved
            for i in 0..row.len() {
                for j in 0..row.len() {
                    if row[i] < row[j] {
                        prop_assert!(r[i] <= r[j]);
                    }
                }
            }
        }
    }
}
