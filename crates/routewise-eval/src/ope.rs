//! Off-policy evaluation: what a candidate routing policy would have earned on traffic
//! that another policy (the logger) routed, from the logged decisions alone.
//!
//! Each logged decision contributes one [`Sample`]: the importance weight
//! `w = pi_c(a | x) / p_log(a | x)` of the logged model `a` (the candidate's probability of
//! it over the logger's propensity), the observed outcome `r`, and the direct model's
//! predictions, `q(x, a)` for the logged model and `sum_m pi_c(m | x) q(x, m)` for the
//! candidate. Three estimators of the candidate's mean outcome:
//!
//! * inverse propensity scoring, `mean(w r)` (Horvitz & Thompson 1952; for contextual
//!   bandits, Dudík, Langford & Li, "Doubly Robust Policy Evaluation and Learning", ICML
//!   2011): unbiased when the logged propensities are right and the logger gave every
//!   model the candidate picks a positive probability;
//! * self-normalised IPS, `sum(w r) / sum(w)` (Swaminathan & Joachims, "The
//!   Self-Normalized Estimator for Counterfactual Learning", NeurIPS 2015): slightly
//!   biased, far less variance when weights are large;
//! * doubly robust, `mean(q_c(x) + w (r - q(x, a)))` (Dudík et al. 2011): the direct
//!   model's estimate corrected by the weighted residuals; unbiased like IPS, and its
//!   variance shrinks as the direct model improves.
//!
//! Confidence intervals: a seeded bootstrap over the decisions (percentile intervals,
//! Efron & Tibshirani 1993, ch. 13), the same resamples for every candidate and estimator,
//! so that differences between candidates come with paired intervals
//! ([`Estimates::dr_replicates`]). The effective sample size `(sum w)^2 / sum w^2`
//! (Kish) says how many decisions really inform an estimate; [`MIN_ESS`] is the flag.
//!
//! DR's interval has a variance floor. With little exploration, a candidate's value on
//! the prompts where it disagrees with the logger rests on a handful of explored
//! decisions, each weighted `1 / p` in the hundreds. When those few happen to miss the
//! rare bad outcome, the estimate is off and the bootstrap, which can only resample what
//! was seen, is confidently narrow: on the shared data at epsilon 0.05 its intervals
//! covered the truth in 85-88% of logs instead of 95% (BENCHMARKS.md, section 9). So DR's
//! interval is the bootstrap interval widened, where needed, to the normal interval of a
//! variance in which each decision's weighted residual `w (r - q)` counts at least as much
//! as it should (`w^2 v`): `v` is the larger of the direct model's own outcome variance
//! ([`Sample::outcome_var`]: `s (1 - s)` for a predicted score `s` of a 0/1-like outcome)
//! and the mean squared residual of the logged model over every decision of the log that
//! the candidate agrees with ([`Sample::group`]; mostly the logger's own choices, many),
//! which also carries what `s (1 - s)` does not: cost prediction errors, a miscalibrated
//! direct model. The floor never narrows an interval.
//!
//! Pure computation; the simulation that validates these estimators is
//! [`crate::ope_validate`], reading logs is the CLI's job.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Below this effective sample size an estimate is flagged as imprecise.
pub const MIN_ESS: f64 = 100.0;
/// Bootstrap resamples when none are configured.
pub const DEFAULT_RESAMPLES: usize = 200;

/// One logged decision, seen from one candidate policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// `pi_c(a | x) / p_log(a | x)` for the logged model `a`.
    pub weight: f64,
    /// The observed outcome of the logged decision.
    pub outcome: f64,
    /// The direct model's value of the candidate's decision, `sum_m pi_c(m|x) q(x, m)`.
    pub direct: f64,
    /// The direct model's prediction for the logged model, `q(x, a)`.
    pub direct_logged: f64,
    /// The direct model's variance of the logged outcome (0: unknown).
    pub outcome_var: f64,
    /// The logged model (pools residuals for the variance floor); [`NO_GROUP`]: none.
    pub group: u32,
}

/// [`Sample::group`] of a sample whose residuals are not pooled.
pub const NO_GROUP: u32 = u32::MAX;

/// Per logged model ([`Sample::group`]), the mean squared residual `(r - q)^2` over the
/// samples with a positive weight (the decisions the candidate agrees with).
fn pooled_residual_vars<'a>(samples: impl Iterator<Item = &'a Sample>) -> HashMap<u32, f64> {
    let mut acc: HashMap<u32, (f64, usize)> = HashMap::new();
    for s in samples.filter(|s| s.weight > 0.0 && s.group != NO_GROUP) {
        let e = acc.entry(s.group).or_default();
        e.0 += (s.outcome - s.direct_logged).powi(2);
        e.1 += 1;
    }
    acc.into_iter()
        .map(|(g, (sq, n))| (g, sq / n as f64))
        .collect()
}

impl Sample {
    /// The floor's variance of this sample's outcome given `pooled` residuals.
    fn floor_var(&self, pooled: &HashMap<u32, f64>) -> f64 {
        self.outcome_var
            .max(pooled.get(&self.group).copied().unwrap_or(0.0))
    }
}

/// The variance of an outcome in `[0, 1]` whose predicted mean is `s` (the Bernoulli
/// bound `s (1 - s)`, the largest variance of a `[0, 1]` variable with that mean).
pub fn bounded_outcome_var(s: f64) -> f64 {
    if s.is_finite() {
        let s = s.clamp(0.0, 1.0);
        s * (1.0 - s)
    } else {
        0.0
    }
}

impl Sample {
    fn ips(&self) -> f64 {
        self.weight * self.outcome
    }
    fn dr(&self) -> f64 {
        self.direct + self.weight * (self.outcome - self.direct_logged)
    }
    fn weighted_residual(&self) -> f64 {
        self.weight * (self.outcome - self.direct_logged)
    }
}

/// z of a two-sided 95% interval.
const Z95: f64 = 1.96;

/// The mean of `terms`' sample variance plus `shortfall` per term, over `n`: the variance
/// of the mean with the floor's shortfall added.
fn floored_variance_of_mean(terms: impl Iterator<Item = (f64, f64)>) -> f64 {
    let (mut n, mut sum, mut sq, mut short) = (0usize, 0.0, 0.0, 0.0);
    for (t, shortfall) in terms {
        n += 1;
        sum += t;
        sq += t * t;
        short += shortfall;
    }
    if n < 2 {
        return 0.0;
    }
    let nf = n as f64;
    let var = ((sq - sum * sum / nf) / (nf - 1.0)).max(0.0) + short / nf;
    var / nf
}

/// `ci` widened to at least `value +- 1.96 sqrt(var)`.
fn widen(ci: [f64; 2], value: f64, var: f64) -> [f64; 2] {
    let half = Z95 * var.sqrt();
    [ci[0].min(value - half), ci[1].max(value + half)]
}

/// A point estimate and its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub ci: [f64; 2],
}

impl Estimate {
    /// Whether the interval contains `x`.
    pub fn covers(&self, x: f64) -> bool {
        self.ci[0] <= x && x <= self.ci[1]
    }
}

/// The three estimates of one candidate on one log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimates {
    pub n: usize,
    pub ips: Estimate,
    pub snips: Estimate,
    pub dr: Estimate,
    /// Kish's effective sample size of the weights.
    pub ess: f64,
    /// Below [`MIN_ESS`]: the estimate is not precise, whatever its interval says.
    pub low_ess: bool,
    /// DR's value on each bootstrap resample (paired across candidates).
    #[serde(skip)]
    pub dr_replicates: Vec<f64>,
    /// The floored variance of DR's mean (see the module docs).
    #[serde(skip)]
    pub dr_floor_var: f64,
}

/// Kish's effective sample size of `weights`.
pub fn effective_sample_size(weights: impl Iterator<Item = f64>) -> f64 {
    let (s, s2) = weights.fold((0.0, 0.0), |(s, s2), w| (s + w, s2 + w * w));
    if s2 > 0.0 {
        s * s / s2
    } else {
        0.0
    }
}

/// The `q`-quantile of sorted `v` (linear interpolation); NaN when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The 2.5% and 97.5% quantiles of `v` (sorted in place).
pub fn percentile_interval(v: &mut [f64]) -> [f64; 2] {
    v.sort_by(f64::total_cmp);
    [quantile(v, 0.025), quantile(v, 0.975)]
}

/// SNIPS of sums; the candidate's value is undefined (NaN) when no logged decision
/// matches it.
fn snips(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        f64::NAN
    }
}

/// Estimates every candidate on one log. `samples` is row-major `n x candidates` (decision
/// `i`, candidate `c` at `i * candidates + c`); every candidate sees the same bootstrap
/// resamples (`resamples` of them, seeded; 0 gives degenerate intervals at the point
/// estimate).
pub fn estimate_all(
    samples: &[Sample],
    candidates: usize,
    resamples: usize,
    seed: u64,
) -> Vec<Estimates> {
    let c = candidates.max(1);
    let n = samples.len() / c;
    let rows = || samples.chunks_exact(c).take(n);
    // [ips sum, snips numerator, snips denominator, dr sum] per candidate.
    let mut full = vec![[0.0f64; 4]; c];
    for row in rows() {
        for (acc, s) in full.iter_mut().zip(row) {
            acc[0] += s.ips();
            acc[1] += s.weight * s.outcome;
            acc[2] += s.weight;
            acc[3] += s.dr();
        }
    }
    let mut reps: Vec<[Vec<f64>; 3]> = (0..c)
        .map(|_| std::array::from_fn(|_| Vec::with_capacity(resamples)))
        .collect();
    if n > 0 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut acc = vec![[0.0f64; 4]; c];
        for _ in 0..resamples {
            acc.iter_mut().for_each(|a| *a = [0.0; 4]);
            for _ in 0..n {
                let i = rng.gen_range(0..n);
                for (a, s) in acc.iter_mut().zip(&samples[i * c..(i + 1) * c]) {
                    a[0] += s.ips();
                    a[1] += s.weight * s.outcome;
                    a[2] += s.weight;
                    a[3] += s.dr();
                }
            }
            for (r, a) in reps.iter_mut().zip(&acc) {
                r[0].push(a[0] / n as f64);
                r[1].push(snips(a[1], a[2]));
                r[2].push(a[3] / n as f64);
            }
        }
    }
    let nf = n.max(1) as f64;
    full.iter()
        .zip(reps)
        .enumerate()
        .map(|(ci, (f, [mut ips, mut sn, dr]))| {
            // The interval always holds the point estimate (a percentile interval of a
            // skewed statistic may not, by a hair of rounding or by skew).
            let interval = |v: &mut Vec<f64>, point: f64| {
                v.retain(|x| x.is_finite());
                if v.is_empty() || !point.is_finite() {
                    [point, point]
                } else {
                    let [lo, hi] = percentile_interval(v);
                    [lo.min(point), hi.max(point)]
                }
            };
            let (ips_v, sn_v, dr_v) = (f[0] / nf, snips(f[1], f[2]), f[3] / nf);
            let mut dr_sorted = dr.clone();
            let ess = effective_sample_size(rows().map(|r| r[ci].weight));
            let pooled = pooled_residual_vars(rows().map(|r| &r[ci]));
            let floor = floored_variance_of_mean(rows().map(|r| {
                let s = &r[ci];
                let seen = s.weighted_residual().powi(2);
                (
                    s.dr(),
                    (s.weight * s.weight * s.floor_var(&pooled) - seen).max(0.0),
                )
            }));
            Estimates {
                n,
                ips: Estimate {
                    value: ips_v,
                    ci: interval(&mut ips, ips_v),
                },
                snips: Estimate {
                    value: sn_v,
                    ci: interval(&mut sn, sn_v),
                },
                dr: Estimate {
                    value: dr_v,
                    ci: widen(interval(&mut dr_sorted, dr_v), dr_v, floor),
                },
                dr_floor_var: floor,
                ess,
                low_ess: ess < MIN_ESS,
                dr_replicates: dr,
            }
        })
        .collect()
}

/// The paired 95% interval of `DR(a) - DR(b)` from the shared resamples, widened by the
/// floor of the paired terms: `samples_a` and `samples_b` are the two candidates' samples
/// of the same logged decisions.
pub fn dr_difference(
    a: &Estimates,
    b: &Estimates,
    samples_a: impl Iterator<Item = Sample>,
    samples_b: impl Iterator<Item = Sample>,
) -> Estimate {
    let mut d: Vec<f64> = a
        .dr_replicates
        .iter()
        .zip(&b.dr_replicates)
        .map(|(x, y)| x - y)
        .collect();
    let value = a.dr.value - b.dr.value;
    let ci = if d.is_empty() {
        [value, value]
    } else {
        let [lo, hi] = percentile_interval(&mut d);
        [lo.min(value), hi.max(value)]
    };
    // Given the logged decision, the two residual terms share the outcome's noise:
    // `(w_a - w_b)^2 v` is the floor of their difference.
    let (xs, ys): (Vec<Sample>, Vec<Sample>) = samples_a.zip(samples_b).unzip();
    let (pa, pb) = (
        pooled_residual_vars(xs.iter()),
        pooled_residual_vars(ys.iter()),
    );
    let floor = floored_variance_of_mean(xs.iter().zip(&ys).map(|(x, y)| {
        let seen = (x.weighted_residual() - y.weighted_residual()).powi(2);
        let var = x.floor_var(&pa).max(y.floor_var(&pb));
        (
            x.dr() - y.dr(),
            ((x.weight - y.weight).powi(2) * var - seen).max(0.0),
        )
    }));
    Estimate {
        value,
        ci: widen(ci, value, floor),
    }
}

/// Candidate `c`'s samples out of row-major `n x candidates` samples.
pub fn column(
    samples: &[Sample],
    candidates: usize,
    c: usize,
) -> impl Iterator<Item = Sample> + '_ {
    samples.chunks_exact(candidates.max(1)).map(move |r| r[c])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(weight: f64, outcome: f64, direct: f64, direct_logged: f64) -> Sample {
        Sample {
            weight,
            outcome,
            direct,
            direct_logged,
            outcome_var: 0.0,
            group: NO_GROUP,
        }
    }

    #[test]
    fn the_estimators_match_their_formulas() {
        // Two decisions; the candidate agrees with the first (p = 0.5), not the second.
        let s = [sample(2.0, 1.0, 0.8, 0.6), sample(0.0, 0.0, 0.3, 0.1)];
        let e = &estimate_all(&s, 1, 0, 0)[0];
        assert!((e.ips.value - 1.0).abs() < 1e-12); // (2*1 + 0) / 2
        assert!((e.snips.value - 1.0).abs() < 1e-12); // 2 / 2
                                                      // ((0.8 + 2*(1-0.6)) + (0.3 + 0)) / 2
        assert!((e.dr.value - 0.95).abs() < 1e-12);
        assert!((e.ess - 1.0).abs() < 1e-12);
        assert!(e.low_ess);
        assert_eq!(e.ips.ci, [1.0, 1.0]);
    }

    #[test]
    fn on_policy_logs_give_the_mean_outcome() {
        // Logger = candidate (w = 1): all three are the sample mean, and the interval
        // brackets it.
        let s: Vec<Sample> = (0..500)
            .map(|i| {
                let r = f64::from(i % 3 == 0);
                sample(1.0, r, 0.5, 0.5)
            })
            .collect();
        let e = &estimate_all(&s, 1, 200, 7)[0];
        let mean = s.iter().map(|x| x.outcome).sum::<f64>() / 500.0;
        for est in [e.ips, e.snips, e.dr] {
            assert!((est.value - mean).abs() < 1e-12);
            assert!(est.ci[0] < mean && mean < est.ci[1], "{est:?}");
            assert!(est.ci[1] - est.ci[0] < 0.15);
        }
        assert!((e.ess - 500.0).abs() < 1e-9);
        assert!(!e.low_ess);
    }

    #[test]
    fn paired_differences_cancel_shared_noise() {
        // Two candidates with the same per-decision samples but one shifted by 0.1 in its
        // direct model and outcome-free: the difference is exactly 0.1 on every resample.
        let mut s = Vec::new();
        for i in 0..300 {
            let r = f64::from(i % 2 == 0);
            s.push(sample(1.0, r, 0.4, 0.4));
            s.push(sample(1.0, r, 0.5, 0.4));
        }
        let e = estimate_all(&s, 2, 100, 1);
        let d = dr_difference(&e[1], &e[0], column(&s, 2, 1), column(&s, 2, 0));
        assert!((d.value - 0.1).abs() < 1e-12);
        assert!((d.ci[0] - 0.1).abs() < 1e-9 && (d.ci[1] - 0.1).abs() < 1e-9);
        // Unpaired, each candidate's own interval is wide.
        assert!(e[0].dr.ci[1] - e[0].dr.ci[0] > 0.05);
    }

    #[test]
    fn snips_is_undefined_without_a_matching_decision() {
        let s = [sample(0.0, 1.0, 0.2, 0.9)];
        let e = &estimate_all(&s, 1, 10, 0)[0];
        assert!(e.snips.value.is_nan());
        assert_eq!(e.ips.value, 0.0);
        assert!((e.dr.value - 0.2).abs() < 1e-12);
        assert_eq!(e.ess, 0.0);
    }

    #[test]
    fn the_floor_widens_dr_when_the_rare_bad_outcome_was_not_seen() {
        // 1,000 decisions; the candidate's model was explored 5 times (p = 0.005) and
        // succeeded each time, although its predicted success rate is 0.8.
        let mut s = Vec::new();
        for i in 0..1000 {
            let explored = i % 200 == 0;
            s.push(Sample {
                weight: if explored { 200.0 } else { 0.0 },
                outcome: 1.0,
                direct: 0.8,
                direct_logged: 0.8,
                outcome_var: bounded_outcome_var(0.8),
                group: NO_GROUP,
            });
        }
        let e = &estimate_all(&s, 1, 200, 3)[0];
        // 0.8 + 5 * 200 * 0.2 / 1000 = 1.0, and the bootstrap alone would say +-0.05 or so.
        assert!((e.dr.value - 1.0).abs() < 1e-9);
        // Floor: 5 * 200^2 * (0.16 - 0.04) / 1000 / 1000 = 0.024: +-0.30.
        assert!(e.dr.ci[0] < 0.75, "{:?}", e.dr);
        assert!(e.dr.covers(0.8));
        // Without a known outcome variance, the interval is the bootstrap's.
        let bare: Vec<Sample> = s
            .iter()
            .map(|x| Sample {
                outcome_var: 0.0,
                ..*x
            })
            .collect();
        let b = &estimate_all(&bare, 1, 200, 3)[0];
        assert!(b.dr.ci[0] > e.dr.ci[0] && b.dr.ci[1] <= e.dr.ci[1]);
    }

    #[test]
    fn bounded_outcome_var_is_the_bernoulli_bound() {
        assert_eq!(bounded_outcome_var(0.5), 0.25);
        assert_eq!(bounded_outcome_var(1.3), 0.0);
        assert!((bounded_outcome_var(0.9) - 0.09).abs() < 1e-12);
        assert_eq!(bounded_outcome_var(f64::NAN), 0.0);
    }
}
