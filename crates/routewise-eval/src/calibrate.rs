//! A cascade's acceptance threshold with a finite-sample guarantee on the quality it
//! gives up (`routewise calibrate --cascade`, issue 13).
//!
//! Method: Learn then Test (Angelopoulos, Bates, Candès, Jordan & Lei, "Learn then Test:
//! Calibrating Predictive Algorithms to Achieve Risk Control", 2021) with the
//! Hoeffding-Bentkus p-value of Bates, Angelopoulos, Lei, Malik & Jordan ("Distribution-
//! Free, Risk-Controlling Prediction Sets", JACM 2021).
//! * Loss of a prompt at threshold `t`: `max(0, y_esc - y_cascade(t))` in `[0, 1]`, the
//!   quality the cascade loses on it against always escalating (the router's choice at
//!   the policy's lambda, without the tier). Its mean bounds the quality loss from above.
//! * For each threshold, from the most conservative (1.0) down to 0.3, the null
//!   hypothesis "risk(t) > alpha" is tested on the calibration prompts; fixed-sequence
//!   testing stops at the first threshold not rejected at level `delta`. Every rejected
//!   threshold has risk <= alpha with probability >= 1 - delta (family-wise), and the
//!   lowest of them (the cheapest) is chosen; when none is, the cascade is off (always
//!   escalate).
//!
//! Assumption: the calibration prompts and the prompts served (here `test`) are
//! exchangeable. That holds for the data's hash-based `split`; a dataset whose `split`
//! field separates train and test some other way (by time, by task) weakens the headline
//! guarantee, and the re-split check below cannot see it (it pools the two).
//!
//! Protocol: `train` is split (seeded) into a fitting part (70%: the router, cross-fitted
//! for the acceptor as in [`crate::cascade`], and the featurizer and tier: of the chains
//! of cheap candidates on static-mini and on TF-IDF features (unless one is given), the
//! one that saves the most when its threshold is calibrated the same way on one half of
//! the fitting part's out-of-fold predictions and measured on the other, both ways; the
//! acceptor itself is fitted on the whole fitting part) and a calibration part (30%). The
//! headline calibrates on that part and reports `test` once. The guarantee is then
//! checked empirically: the calibration part and `test` (both unseen by the router
//! and the acceptor, so exchangeable) are pooled and re-split at random `splits` times
//! into calibration and test sets of the same sizes; the share of splits whose realised
//! test loss exceeds alpha must be at most delta, up to sampling noise.

use routewise_data::{Dataset, Record};
use routewise_features::Featurizer;
use routewise_features::FeaturizerKind;
use routewise_router::artifact::CalibratedCascade;
use routewise_router::baselines::splitmix64;
use routewise_router::cascade::{Cascade, CascadeRule};
use routewise_router::{Artifact, Router, RouterConfigs, RouterKind};
use serde::Serialize;

use crate::cascade::{
    build, candidates, cross_fit, realise_prompt, tier_run, tiers, CascadeInputs, Family,
    CHEAP_SHARE, MAX_TIER,
};
use crate::fitted::expected_costs;
use crate::report::split_records;
use crate::{EvalError, Progress};

/// Share of `train` held out for calibration.
pub const CALIBRATION_SHARE: f64 = 0.3;

/// Default `delta` (the guarantee holds with probability at least `1 - delta`).
pub const DEFAULT_DELTA: f64 = 0.1;

/// Default number of random calibration/test splits of the empirical check.
pub const DEFAULT_SPLITS: usize = 200;

/// Thresholds tested, most conservative first: 1.00, 0.99, ..., 0.30.
pub fn threshold_sequence() -> Vec<f64> {
    (30..=100).rev().map(|t| f64::from(t) / 100.0).collect()
}

/// KL divergence between Bernoulli(a) and Bernoulli(b).
fn kl_bernoulli(a: f64, b: f64) -> f64 {
    let term = |p: f64, q: f64| if p <= 0.0 { 0.0 } else { p * (p / q).ln() };
    term(a, b) + term(1.0 - a, 1.0 - b)
}

/// `P(Binomial(n, p) <= k)`, summed in log space.
fn binom_cdf(k: usize, n: usize, p: f64) -> f64 {
    if k >= n || p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let mut log_pmf = n as f64 * lq; // j = 0
    let mut acc = log_pmf;
    for j in 0..k {
        log_pmf += ((n - j) as f64).ln() - ((j + 1) as f64).ln() + lp - lq;
        let (hi, lo) = if acc > log_pmf {
            (acc, log_pmf)
        } else {
            (log_pmf, acc)
        };
        acc = hi + (lo - hi).exp().ln_1p();
    }
    acc.exp().min(1.0)
}

/// The Hoeffding-Bentkus p-value of "risk > alpha" given the mean loss `risk_hat` of `n`
/// losses in `[0, 1]`.
pub fn hb_p_value(risk_hat: f64, alpha: f64, n: usize) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let hoeffding = (-(n as f64) * kl_bernoulli(risk_hat.min(alpha), alpha)).exp();
    // 1e-9: a mean of 0/1 losses times n is an integer up to rounding.
    let k = (n as f64 * risk_hat - 1e-9).ceil().max(0.0) as usize;
    let bentkus = std::f64::consts::E * binom_cdf(k, n, alpha);
    hoeffding.min(bentkus).min(1.0)
}

/// Fixed-sequence testing over thresholds ordered most conservative first: the index of
/// the last threshold whose null "risk > alpha" is rejected at `delta` before the first
/// that is not, or `None` when the first is not.
pub fn ltt_select(mean_losses: &[f64], n: usize, alpha: f64, delta: f64) -> Option<usize> {
    let mut chosen = None;
    for (j, &r) in mean_losses.iter().enumerate() {
        if hb_p_value(r, alpha, n) <= delta {
            chosen = Some(j);
        } else {
            break;
        }
    }
    chosen
}

/// What to calibrate.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub alpha: f64,
    pub delta: f64,
    pub splits: usize,
    /// The escalation policy's lambda (0: quality first).
    pub lambda: f64,
    pub router: RouterKind,
    /// `None`: static-mini or tfidf, whichever saves more on the fitting part.
    pub featurizer: Option<FeaturizerKind>,
    pub seed: u64,
}

/// The headline calibration (calibration part -> `test`).
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    /// The chosen threshold; `None`: no threshold passed, the cascade is off.
    pub threshold: Option<f64>,
    /// Mean loss (quality lost against always escalating, per prompt, clipped at 0).
    pub realised_loss: f64,
    /// Quality of always escalating minus the cascade's (may be negative).
    pub quality_loss: f64,
    /// `1 - cost / cost of always escalating`.
    pub cost_saved: f64,
    pub quality: f64,
    pub cost: f64,
    pub escalate_quality: f64,
    pub escalate_cost: f64,
    /// Share of prompts answered by the tier.
    pub accepted_share: f64,
}

/// `routewise calibrate --cascade --json` (the keys, plus extra ones).
#[derive(Debug, Clone, Serialize)]
pub struct CascadeCalibration {
    pub alpha: f64,
    pub delta: f64,
    pub splits: usize,
    /// Mean over the random splits of the realised test loss.
    pub realised_loss_mean: f64,
    /// Share of the random splits whose realised test loss exceeds alpha.
    pub violation_rate: f64,
    /// Mean over the random splits of the cost saved against always escalating.
    pub cost_saved_mean: f64,
    /// Share of the random splits where no threshold passed (cascade off); 1 when no
    /// tier saves anything on the fitting part at this alpha.
    pub off_rate: f64,
    /// Why the cascade is off entirely (`off_rate` 1), when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub off_reason: Option<String>,
    pub dataset: String,
    pub router: String,
    pub featurizer: String,
    pub lambda: f64,
    pub tier: Vec<String>,
    pub n_fit: usize,
    pub n_calibration: usize,
    pub n_test: usize,
    pub test: HeldOut,
    pub method: &'static str,
}

/// Per prompt of the pool: always-escalating (score, cost) and, per threshold of
/// [`threshold_sequence`], the cascade's (score, cost, accepted).
struct Pool {
    escalate: Vec<(f64, f64)>,
    /// `thresholds x prompts`.
    cascade: Vec<Vec<(f64, f64, bool)>>,
}

impl Pool {
    fn build(d: &CascadeInputs, cascade: &Cascade, lambda: f64) -> Result<Pool, EvalError> {
        let targets = d.escalation_targets(&[lambda])?;

        let step_discount = match cascade.rule {
            CascadeRule::Chain { step_discount, .. } => step_discount,
            CascadeRule::Gain { .. } | CascadeRule::Agreement { .. } => 0.0,
        };
        let ts = threshold_sequence();
        let mut out = Pool {
            escalate: Vec::with_capacity(d.len()),
            cascade: vec![Vec::with_capacity(d.len()); ts.len()],
        };
        for (i, &t) in targets[0].iter().enumerate() {
            // Always escalating: the router's choice alone.
            out.escalate.push(d.outcome(i, t).unwrap_or((0.0, 0.0)));
            let run = tier_run(d, i, &cascade.tier, cascade.acceptor.as_ref());
            for (j, &threshold) in ts.iter().enumerate() {
                let rule = CascadeRule::Chain {
                    threshold,
                    step_discount,
                };
                let (s, c) = realise_prompt(d, i, &run, &rule, t, lambda);
                let accepted = run.accepted_after(&rule, |_| 0.0).is_some();
                out.cascade[j].push((s, c, accepted));
            }
        }
        Ok(out)
    }

    fn loss(&self, j: usize, i: usize) -> f64 {
        (self.escalate[i].0 - self.cascade[j][i].0).max(0.0)
    }

    /// Calibrates on `cal` and measures on `test` (prompt indices into the pool).
    fn held_out(&self, cal: &[usize], test: &[usize], alpha: f64, delta: f64) -> HeldOut {
        let mean = |f: &dyn Fn(usize) -> f64, rows: &[usize]| {
            rows.iter().map(|&i| f(i)).sum::<f64>() / rows.len().max(1) as f64
        };
        let cal_losses: Vec<f64> = (0..self.cascade.len())
            .map(|j| mean(&|i| self.loss(j, i), cal))
            .collect();
        let chosen = ltt_select(&cal_losses, cal.len(), alpha, delta);
        let esc_q = mean(&|i| self.escalate[i].0, test);
        let esc_c = mean(&|i| self.escalate[i].1, test);
        let ts = threshold_sequence();
        match chosen {
            None => HeldOut {
                threshold: None,
                realised_loss: 0.0,
                quality_loss: 0.0,
                cost_saved: 0.0,
                quality: esc_q,
                cost: esc_c,
                escalate_quality: esc_q,
                escalate_cost: esc_c,
                accepted_share: 0.0,
            },
            Some(j) => {
                let q = mean(&|i| self.cascade[j][i].0, test);
                let c = mean(&|i| self.cascade[j][i].1, test);
                HeldOut {
                    threshold: Some(ts[j]),
                    realised_loss: mean(&|i| self.loss(j, i), test),
                    quality_loss: esc_q - q,
                    cost_saved: if esc_c > 0.0 { 1.0 - c / esc_c } else { 0.0 },
                    quality: q,
                    cost: c,
                    escalate_quality: esc_q,
                    escalate_cost: esc_c,
                    accepted_share: mean(&|i| f64::from(u8::from(self.cascade[j][i].2)), test),
                }
            }
        }
    }
}

/// A seeded permutation of `0..n` (splitmix64 + Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut s = seed ^ GOLDEN;
    let mut next = || {
        let z = splitmix64(s);
        s = s.wrapping_add(GOLDEN);
        z
    };
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// A calibration and what `serve` needs to run it.
#[derive(Debug, Clone)]
pub struct Calibrated {
    pub report: CascadeCalibration,
    /// The router fitted on train's fitting part, carrying the calibrated chain (its
    /// tier, acceptor and the headline threshold); `None` when the cascade is off (no
    /// tier saves anything, or no threshold passed on the calibration part).
    pub artifact: Option<Artifact>,
}

/// Calibrates the confidence chain of `ds` (see the module docs).
pub fn calibrate_cascade(
    ds: &Dataset,
    opts: &CalibrateOptions,
    progress: &dyn Progress,
) -> Result<Calibrated, EvalError> {
    let open_unit = |x: f64| x > 0.0 && x < 1.0;
    if !open_unit(opts.alpha) || !open_unit(opts.delta) {
        return Err(EvalError::Config(format!(
            "alpha and delta must lie in (0, 1), got {} and {}",
            opts.alpha, opts.delta
        )));
    }
    let (train, test) = split_records(ds)?;
    let perm = permutation(train.len(), opts.seed);
    let n_cal = ((train.len() as f64) * CALIBRATION_SHARE).round() as usize;
    if n_cal < 10 || train.len() - n_cal < 10 {
        return Err(EvalError::Split(format!(
            "calibration needs at least 20 train prompts, got {}",
            train.len()
        )));
    }
    let cal: Vec<&Record> = perm[..n_cal].iter().map(|&i| train[i]).collect();
    let fit: Vec<&Record> = perm[n_cal..].iter().map(|&i| train[i]).collect();
    let nm = ds.models.len();

    progress.start("fitting the router and the cascade", None);
    let cfg = RouterConfigs {
        seed: opts.seed,
        ..RouterConfigs::default()
    };
    let featurizers = match opts.featurizer {
        Some(f) => vec![f],
        None => vec![FeaturizerKind::StaticMini, FeaturizerKind::Tfidf],
    };
    // The featurizer and tier: the chain that saves the most on the fitting part's
    // out-of-fold predictions when calibrated there the same way (the calibration part
    // stays unseen).
    let mut best: Option<(f64, Cascade, routewise_router::Prepared)> = None;
    let mut first = None;
    // Without recorded answers there is nothing to check: no tier is searched.
    let answered = fit.iter().any(|r| r.has_answers());
    // Whether any model is cheap enough to be a tier (the same candidates on every
    // featurizer: they come from the outcomes).
    let mut tier_tried = false;
    for featurizer in featurizers {
        let prepared = routewise_router::prepare(&ds.models, &fit, featurizer)?;
        if !answered {
            first = Some(prepared);
            break;
        }
        let oof = cross_fit(opts.router, &prepared.train_set, &prepared.catalog, &cfg)?;
        let fit_in = CascadeInputs::new(&fit, nm, oof, expected_costs(&prepared.catalog, &fit))?;
        // Savings are estimated out of sample: calibrated on one half of the fitting part
        // and measured on the other, both ways (in-sample savings favour tiers whose
        // threshold only fits the prompts it was chosen on).
        let halves: [Vec<usize>; 2] =
            [0, 1].map(|h| (0..fit_in.len()).filter(|i| i % 2 == h).collect());
        let mut local: Option<(f64, Cascade)> = None;
        for tier in tiers(&candidates(&fit_in), Family::Chain.min_tier(), MAX_TIER) {
            tier_tried = true;
            let cascade = build(&fit_in, Family::Chain, tier);
            let pool = Pool::build(&fit_in, &cascade, opts.lambda)?;
            let runs = [(0, 1), (1, 0)]
                .map(|(c, t)| pool.held_out(&halves[c], &halves[t], opts.alpha, opts.delta));
            let saved = runs.iter().map(|h| h.cost_saved).sum::<f64>() / 2.0;
            let saves = runs.iter().all(|h| h.threshold.is_some()) && saved > 0.0;
            if saves && local.as_ref().is_none_or(|b| saved > b.0) {
                local = Some((saved, cascade));
            }
        }
        match local {
            Some((saved, cascade)) if best.as_ref().is_none_or(|b| saved > b.0) => {
                best = Some((saved, cascade, prepared));
            }
            _ if first.is_none() => first = Some(prepared),
            _ => {}
        }
    }
    // No tier saves anything at this alpha: the cascade is off (an empty tier always
    // escalates, at no loss and no saving), on the first featurizer.
    let (chosen, prepared) = match (best, first) {
        (Some((_, cascade, prepared)), _) => (cascade, prepared),
        (None, Some(prepared)) => (
            Cascade {
                tier: Vec::new(),
                rule: CascadeRule::Chain {
                    threshold: f64::INFINITY,
                    step_discount: 0.0,
                },
                acceptor: None,
            },
            prepared,
        ),
        (None, None) => {
            return Err(EvalError::Config("no featurizer to calibrate with".into()));
        }
    };
    let router = prepared.fit(opts.router, &cfg)?;
    progress.finish();

    // The pool: calibration part, then test.
    let pool_recs: Vec<&Record> = cal.iter().chain(test.iter()).copied().collect();
    let texts: Vec<&str> = pool_recs.iter().map(|r| r.prompt.as_str()).collect();
    let feats = prepared.featurizer.featurize_batch(&texts);
    let dim = prepared.featurizer.dim();
    let mut pred = vec![0.0; pool_recs.len() * nm];
    for (i, row) in pred.chunks_exact_mut(nm).enumerate() {
        router.predict_scores_keyed(&feats[i * dim..(i + 1) * dim], &pool_recs[i].id, row);
    }
    let pool_in = CascadeInputs::new(
        &pool_recs,
        nm,
        pred,
        expected_costs(&prepared.catalog, &pool_recs),
    )?;
    let pool = Pool::build(&pool_in, &chosen, opts.lambda)?;

    let cal_rows: Vec<usize> = (0..n_cal).collect();
    let test_rows: Vec<usize> = (n_cal..pool_recs.len()).collect();
    let mut headline = pool.held_out(&cal_rows, &test_rows, opts.alpha, opts.delta);
    let off_entirely = chosen.tier.is_empty();
    if off_entirely {
        headline.threshold = None;
    }

    progress.start(
        &format!("{} random splits", opts.splits),
        Some(opts.splits as u64),
    );
    let (mut loss_sum, mut saved_sum, mut violations, mut off) = (0.0, 0.0, 0usize, 0usize);
    for s in 0..opts.splits {
        let p = permutation(pool_recs.len(), opts.seed.wrapping_add(1 + s as u64));
        let h = pool.held_out(&p[..n_cal], &p[n_cal..], opts.alpha, opts.delta);
        loss_sum += h.realised_loss;
        saved_sum += h.cost_saved;
        violations += usize::from(h.realised_loss > opts.alpha);
        off += usize::from(h.threshold.is_none());
        progress.set_position(s as u64 + 1);
    }
    progress.finish();
    let k = opts.splits.max(1) as f64;
    let tier_names = chosen.tier.iter().map(|&m| ds.models[m].clone()).collect();
    let featurizer_name = prepared.featurizer.name().to_string();
    let artifact = match (headline.threshold, off_entirely) {
        (Some(threshold), false) => {
            let step_discount = match chosen.rule {
                CascadeRule::Chain { step_discount, .. } => step_discount,
                CascadeRule::Gain { .. } | CascadeRule::Agreement { .. } => 0.0,
            };
            let mut a = prepared.into_artifact(&ds.name, router);
            a.meta.cascade = Some(CalibratedCascade {
                cascade: Cascade {
                    rule: CascadeRule::Chain {
                        threshold,
                        step_discount,
                    },
                    ..chosen
                },
                alpha: opts.alpha,
                delta: opts.delta,
                lambda: opts.lambda,
                n_calibration: n_cal,
            });
            Some(a)
        }
        _ => None,
    };
    let report = CascadeCalibration {
        alpha: opts.alpha,
        delta: opts.delta,
        splits: opts.splits,
        realised_loss_mean: loss_sum / k,
        violation_rate: violations as f64 / k,
        cost_saved_mean: saved_sum / k,
        off_rate: if off_entirely { 1.0 } else { off as f64 / k },
        off_reason: match (off_entirely, answered, tier_tried) {
            (false, _, _) => None,
            (true, false, _) => Some(
                "no prompt of train's fitting part records a model answer \
                 (`models.<name>.answer`): a cascade has nothing to check"
                    .to_string(),
            ),
            (true, true, false) => Some(format!(
                "no model is cheap enough to be a tier (a tier model's mean cost is at most \
                 {CHEAP_SHARE} of the best model's)"
            )),
            (true, true, true) => {
                Some("no tier saves cost on the fitting part at this alpha".to_string())
            }
        },
        dataset: ds.name.clone(),
        router: opts.router.to_string(),
        featurizer: featurizer_name,
        lambda: opts.lambda,
        tier: tier_names,
        n_fit: fit.len(),
        n_calibration: n_cal,
        n_test: test.len(),
        test: headline,
        method: "Learn then Test (fixed-sequence, Hoeffding-Bentkus p-values)",
    };
    Ok(Calibrated { report, artifact })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_cdf_matches_small_cases() {
        // Bin(4, 0.5): P(X <= 1) = (1 + 4) / 16.
        assert!((binom_cdf(1, 4, 0.5) - 5.0 / 16.0).abs() < 1e-12);
        assert!((binom_cdf(0, 3, 0.1) - 0.729).abs() < 1e-12);
        assert_eq!(binom_cdf(3, 3, 0.1), 1.0);
        // Large n stays finite and tiny.
        let tail = binom_cdf(10, 12_000, 0.05);
        assert!((0.0..1e-100).contains(&tail), "{tail}");
    }

    #[test]
    fn hb_p_values_reject_low_risks_and_keep_high_ones() {
        // 1% observed on 2,000 prompts against alpha = 2%: strong evidence.
        assert!(hb_p_value(0.01, 0.02, 2000) < 1e-3);
        // Observed at alpha: no evidence.
        assert!(hb_p_value(0.02, 0.02, 2000) > 0.3);
        // Above alpha: p = 1-ish.
        assert!(hb_p_value(0.05, 0.02, 2000) > 0.9);
        // Few prompts: little evidence even at zero observed loss.
        assert!(hb_p_value(0.0, 0.02, 20) > 0.5);
    }

    #[test]
    fn fixed_sequence_stops_at_the_first_failure() {
        // Risks grow as the threshold falls; the third one is too high, the fourth
        // low again (never reached).
        let r = [0.0, 0.005, 0.05, 0.0];
        assert_eq!(ltt_select(&r, 2000, 0.02, 0.1), Some(1));
        assert_eq!(ltt_select(&[0.05], 2000, 0.02, 0.1), None);
    }

    /// The guarantee on synthetic losses: thresholds whose true risk rises linearly;
    /// across many draws of the calibration set, the chosen threshold's true risk exceeds
    /// alpha in at most delta of them.
    #[test]
    fn the_chosen_risk_exceeds_alpha_rarely() {
        let (alpha, delta, n) = (0.05, 0.1, 500);
        let true_risk: Vec<f64> = (0..40).map(|j| j as f64 * 0.0025).collect();
        let mut x = 7u64;
        let mut u = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut bad = 0;
        let trials = 400;
        for _ in 0..trials {
            // One calibration draw: each prompt's uniform decides its loss at every
            // threshold (losses nested as in a real cascade).
            let draws: Vec<f64> = (0..n).map(|_| u()).collect();
            let means: Vec<f64> = true_risk
                .iter()
                .map(|&r| draws.iter().filter(|&&d| d < r).count() as f64 / n as f64)
                .collect();
            if let Some(j) = ltt_select(&means, n, alpha, delta) {
                bad += usize::from(true_risk[j] > alpha);
            }
        }
        assert!((bad as f64) / (trials as f64) <= delta, "{bad} of {trials}");
    }

    #[test]
    fn permutations_are_seeded_and_complete() {
        let a = permutation(100, 3);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, permutation(100, 3));
        assert_ne!(a, permutation(100, 4));
    }
}
