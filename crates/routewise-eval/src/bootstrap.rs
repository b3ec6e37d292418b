//! How much of an AIQ is noise: a seeded bootstrap over the test prompts.
//!
//! Each resample draws `n` test prompts with replacement (a multiplicity per prompt),
//! recomputes the single models on the common prompts ([`crate::singles`]), hence the cost
//! range `[c_min, c_max]`, and every router's curve from its realised per-prompt outcomes
//! ([`crate::Realised::curve_weighted`]; decisions do not change, only which prompts
//! count), then each AIQ. The standard error is the standard deviation of a router's AIQ
//! over the resamples (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993,
//! ch. 6). Differences between routers use the same resamples (a paired bootstrap), so
//! the noise they share cancels: a router is *within noise* of the best one when its AIQ
//! gap is below 1.96 standard errors of that paired difference.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_data::coverage::Coverage;

use crate::singles::comparable_points;
use crate::{aiq, Outcomes, Realised};

/// Resamples used when none is configured.
pub const DEFAULT_RESAMPLES: usize = 200;

/// z of a two-sided 95% interval.
const Z95: f64 = 1.96;

/// Bootstrap results, indexed like the routers given.
#[derive(Debug, Clone, PartialEq)]
pub struct AiqNoise {
    pub resamples: usize,
    pub seed: u64,
    /// Standard error of each router's AIQ.
    pub se: Vec<f64>,
    /// The router with the highest AIQ on the full test split.
    pub best: usize,
    /// Standard error of `aiq[r] - aiq[best]` (0 for the best itself).
    pub diff_se: Vec<f64>,
    /// Whether each router's gap to the best is within noise (the best is).
    pub within_noise_of_best: Vec<bool>,
}

/// Bootstraps the AIQ of each router in `routers` (their full-sample AIQs in `aiqs`).
pub fn bootstrap_aiq(
    outcomes: &Outcomes,
    coverage: &Coverage,
    routers: &[&Realised],
    aiqs: &[f64],
    resamples: usize,
    seed: u64,
) -> AiqNoise {
    let n = outcomes.len();
    // The first router with the highest AIQ.
    let best = (0..aiqs.len()).fold(0, |b, i| if aiqs[i] > aiqs[b] { i } else { b });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = vec![0u32; n];
    // samples[r]: AIQ of router r per resample.
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(resamples); routers.len()];
    for _ in 0..resamples {
        weights.fill(0);
        for _ in 0..n {
            weights[rng.gen_range(0..n)] += 1;
        }
        let singles = comparable_points(outcomes, coverage, Some(&weights));
        let costs: Vec<f64> = singles.iter().flatten().map(|p| p.cost).collect();
        let c_min = costs.iter().copied().fold(f64::INFINITY, f64::min);
        let c_max = costs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !(c_min.is_finite() && c_max.is_finite()) {
            continue;
        }
        for (r, realised) in routers.iter().enumerate() {
            let pts: Vec<(f64, f64)> = realised
                .curve_weighted(&weights)
                .iter()
                .map(|p| (p.cost, p.quality))
                .collect();
            samples[r].push(aiq(&pts, c_min, c_max));
        }
    }
    let se: Vec<f64> = samples.iter().map(|s| std_dev(s)).collect();
    let diff_se: Vec<f64> = samples
        .iter()
        .map(|s| {
            let d: Vec<f64> = s.iter().zip(&samples[best]).map(|(a, b)| a - b).collect();
            std_dev(&d)
        })
        .collect();
    let within_noise_of_best = aiqs
        .iter()
        .zip(&diff_se)
        .map(|(a, se)| (aiqs[best] - a) <= Z95 * se)
        .collect();
    AiqNoise {
        resamples,
        seed,
        se,
        best,
        diff_se,
        within_noise_of_best,
    }
}

/// Sample standard deviation (0 for fewer than 2 values).
fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    var.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{realise, Predictions};

    /// `n` prompts, 2 models: model 0 (cost 1) right on every other prompt, model 1 (cost
    /// 0.1) never. `trade` goes to model 0 at lambda 0 and to model 1 at a huge lambda (a
    /// two-point curve: AIQ = q0 / 2 = 0.25 over the range [0.1, 1]); `cheap` always
    /// takes model 1 (AIQ 0).
    fn setup(n: usize) -> (Outcomes, Realised, Realised, f64, f64) {
        let (mut s, mut c) = (Vec::new(), Vec::new());
        for i in 0..n {
            s.extend([f64::from(u8::from(i % 2 == 0)), 0.0]);
            c.extend([1.0, 0.1]);
        }
        let o = Outcomes::new(2, s, c).unwrap();
        let preds = |fixed: Option<Vec<usize>>| Predictions {
            n_models: 2,
            scores: [0.9, 0.1].repeat(n),
            costs: [1.0, 0.1].repeat(n),
            fixed_ranking: fixed,
        };
        let lambdas = [0.0, 1e6];
        let trade = realise(&o, &preds(None), &lambdas).unwrap();
        let cheap = realise(&o, &preds(Some(vec![1, 0])), &lambdas).unwrap();
        let full = |r: &Realised| {
            let pts: Vec<(f64, f64)> = r.curve().iter().map(|p| (p.cost, p.quality)).collect();
            aiq(&pts, 0.1, 1.0)
        };
        let (a, b) = (full(&trade), full(&cheap));
        (o, trade, cheap, a, b)
    }

    #[test]
    fn standard_error_matches_the_binomial_one_and_is_seeded() {
        for n in [100, 400] {
            let (o, trade, _, a, _) = setup(n);
            assert!((a - 0.25).abs() < 1e-9);
            let cov = Coverage::of(o.scores(), 2);
            let x = bootstrap_aiq(&o, &cov, &[&trade], &[a], 400, 7);
            assert_eq!(x, bootstrap_aiq(&o, &cov, &[&trade], &[a], 400, 7));
            // AIQ = q0 / 2 with q0 a mean of n Bernoulli(1/2): se = 0.25 / sqrt(n).
            let expected = 0.25 / (n as f64).sqrt();
            assert!(
                (x.se[0] / expected - 1.0).abs() < 0.2,
                "n {n}: {} vs {expected}",
                x.se[0]
            );
        }
    }

    #[test]
    fn a_real_gap_is_outside_noise_and_a_copy_is_within() {
        let (o, trade, cheap, a, b) = setup(200);
        let cov = Coverage::of(o.scores(), 2);
        let noise = bootstrap_aiq(&o, &cov, &[&trade, &cheap, &trade], &[a, b, a], 200, 1);
        assert_eq!(noise.best, 0);
        assert_eq!(noise.within_noise_of_best, [true, false, true]);
        assert_eq!(noise.diff_se[2], 0.0, "identical routers: no paired noise");
        assert_eq!(noise.se[1], 0.0, "an always-wrong router has no noise");
    }
}
