//! Disjoint linear contextual bandit over the models ("arms"), learning the *residual* of
//! an offline router's predicted reward.
//!
//! Model (per arm `m`, context `x` in R^d): `reward = prior_m(x) + theta_m^T x + noise`,
//! where `prior_m(x)` is the offline router's predicted reward (predicted score minus
//! lambda times expected cost). The bandit keeps ridge statistics of the residual
//! `y = reward - prior_m(x)`: `A_m = lambda0 I + sum x x^T`, `b_m = sum y x`, so
//! `theta_m = A_m^-1 b_m` starts at 0 (the offline router's choice) and `lambda0` is the
//! strength of that prior.
//!
//! * LinUCB (Li, Chu, Langford, Schapire, WWW 2010, "disjoint" variant): the estimate is
//!   `theta^T x + alpha sqrt(x^T A^-1 x)`; `A^-1` is kept current by Sherman-Morrison
//!   rank-one updates (recomputed by Cholesky when forgetting is on, since the discount
//!   toward the prior is not rank one).
//! * Linear Thompson sampling (Agrawal & Goyal, ICML 2013): `theta ~ N(A^-1 b, v^2 A^-1)`,
//!   drawn as `mu + v L^-T z` with `A = L L^T` and `z ~ N(0, I)` from a seeded stream.
//! * Forgetting for drift: each update of an arm first discounts its statistics toward
//!   the prior, `A <- gamma A + (1 - gamma) lambda0 I`, `b <- gamma b` (discounted
//!   LinUCB, Russac et al., NeurIPS 2019, with the prior as the floor so `A` stays well
//!   conditioned).
//! * New models: an arm flagged new gets an optimistic prior mean (set by the caller) and
//!   is forced-explored with a configured probability until it has `N` pulls.
//!
//! Pure: no I/O; randomness comes from the caller's RNG.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, BanditConfig};
use crate::linalg;

/// Sufficient statistics of one arm: what is persisted and shared between instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    /// `d x d`, row-major.
    pub a: Vec<f64>,
    /// `d`.
    pub b: Vec<f64>,
    /// Number of updates (feedbacks) applied.
    pub n: u64,
}

impl ArmStats {
    /// The prior: `A = lambda0 I`, `b = 0`.
    pub fn prior(d: usize, lambda0: f64) -> Self {
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            a[i * d + i] = lambda0;
        }
        ArmStats {
            a,
            b: vec![0.0; d],
            n: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.b.len()
    }

    /// One observation: discount toward the prior, then add `x x^T` and `y x`.
    /// The Redis store runs exactly this arithmetic in its Lua script.
    pub fn update(&mut self, x: &[f64], y: f64, gamma: f64, lambda0: f64) {
        let d = self.dim();
        if gamma < 1.0 {
            for v in &mut self.a {
                *v *= gamma;
            }
            for i in 0..d {
                self.a[i * d + i] += (1.0 - gamma) * lambda0;
            }
            for v in &mut self.b {
                *v *= gamma;
            }
        }
        for r in 0..d {
            for c in 0..d {
                self.a[r * d + c] += x[r] * x[c];
            }
            self.b[r] += y * x[r];
        }
        self.n += 1;
    }

    pub fn is_finite(&self) -> bool {
        self.a.iter().chain(&self.b).all(|v| v.is_finite())
    }
}

/// Errors of the bandit math.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BanditError {
    #[error("arm statistics have dimension {got}, expected {want}")]
    Dimension { got: usize, want: usize },
    #[error("arm statistics are not positive definite (corrupt or non-finite state)")]
    NotPositiveDefinite,
}

/// One arm with its derived quantities (`A^-1`, Cholesky factor, `theta`).
#[derive(Debug, Clone)]
pub struct Arm {
    stats: ArmStats,
    a_inv: Vec<f64>,
    chol: Vec<f64>,
    theta: Vec<f64>,
}

impl Arm {
    pub fn from_stats(stats: ArmStats) -> Result<Self, BanditError> {
        let d = stats.dim();
        if stats.a.len() != d * d {
            return Err(BanditError::Dimension {
                got: stats.a.len(),
                want: d * d,
            });
        }
        let chol = linalg::cholesky(&stats.a, d).ok_or(BanditError::NotPositiveDefinite)?;
        let a_inv = linalg::inverse_from_cholesky(&chol, d);
        let theta = linalg::mat_vec(&a_inv, &stats.b, d);
        Ok(Arm {
            stats,
            a_inv,
            chol,
            theta,
        })
    }

    pub fn stats(&self) -> &ArmStats {
        &self.stats
    }
    pub fn theta(&self) -> &[f64] {
        &self.theta
    }
    pub fn a_inv(&self) -> &[f64] {
        &self.a_inv
    }

    /// Applies one observation (`y` = reward residual) and refreshes `A^-1` and `theta`.
    pub fn update(&mut self, x: &[f64], y: f64, gamma: f64, lambda0: f64) {
        let d = self.stats.dim();
        self.stats.update(x, y, gamma, lambda0);
        // A failed factorisation (non-finite input) keeps the previous factor and inverse.
        let chol = linalg::cholesky(&self.stats.a, d);
        if gamma >= 1.0 {
            linalg::sherman_morrison(&mut self.a_inv, x, d);
        } else if let Some(l) = &chol {
            self.a_inv = linalg::inverse_from_cholesky(l, d);
        }
        if let Some(l) = chol {
            self.chol = l;
        }
        self.theta = linalg::mat_vec(&self.a_inv, &self.stats.b, d);
    }

    /// Point estimate of the residual, `theta^T x`.
    pub fn mean(&self, x: &[f64]) -> f64 {
        linalg::dot(&self.theta, x)
    }

    /// Confidence width `sqrt(x^T A^-1 x)`.
    pub fn width(&self, x: &[f64]) -> f64 {
        linalg::quad_form(&self.a_inv, x, self.stats.dim())
            .max(0.0)
            .sqrt()
    }

    /// One posterior draw `theta ~ N(A^-1 b, v^2 A^-1)`.
    pub fn sample_theta<R: Rng + ?Sized>(&self, v: f64, rng: &mut R) -> Vec<f64> {
        let d = self.stats.dim();
        let z: Vec<f64> = (0..d).map(|_| standard_normal(rng)).collect();
        let w = linalg::solve_lower_transpose(&self.chol, &z, d);
        self.theta.iter().zip(w).map(|(m, w)| m + v * w).collect()
    }
}

/// A standard normal draw (Box-Muller).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The bandit over all arms.
#[derive(Debug, Clone)]
pub struct LinearBandit {
    config: BanditConfig,
    arms: Vec<Arm>,
    /// Arms the offline router does not know: forced-explored until enough pulls.
    is_new: Vec<bool>,
}

impl LinearBandit {
    /// `n_arms` arms at the prior; `is_new[m]` marks models unknown to the offline router.
    pub fn new(config: &BanditConfig, is_new: Vec<bool>) -> Self {
        let d = config.context_dim();
        let arms = is_new
            .iter()
            .map(|_| {
                let stats = ArmStats::prior(d, config.prior_strength);
                let mut a_inv = vec![0.0; d * d];
                let mut chol = vec![0.0; d * d];
                for i in 0..d {
                    a_inv[i * d + i] = 1.0 / config.prior_strength;
                    chol[i * d + i] = config.prior_strength.sqrt();
                }
                Arm {
                    stats,
                    a_inv,
                    chol,
                    theta: vec![0.0; d],
                }
            })
            .collect();
        LinearBandit {
            config: config.clone(),
            arms,
            is_new,
        }
    }

    pub fn config(&self) -> &BanditConfig {
        &self.config
    }
    pub fn arm(&self, m: usize) -> &Arm {
        &self.arms[m]
    }

    /// Replaces arm `m`'s statistics (loaded from a store).
    pub fn set_stats(&mut self, m: usize, stats: ArmStats) -> Result<(), BanditError> {
        let want = self.config.context_dim();
        if stats.dim() != want {
            return Err(BanditError::Dimension {
                got: stats.dim(),
                want,
            });
        }
        self.arms[m] = Arm::from_stats(stats)?;
        Ok(())
    }

    /// Learns from arm `m`'s observed reward residual `y` in context `x`.
    pub fn update(&mut self, m: usize, x: &[f64], y: f64) {
        let (g, l0) = (self.config.forgetting, self.config.prior_strength);
        self.arms[m].update(x, y, g, l0);
    }

    /// Per-arm residual estimate plus exploration: the UCB (LinUCB) or one posterior
    /// sample (Thompson). Add it to the prior mean to rank.
    pub fn estimates<R: Rng + ?Sized>(&self, x: &[f64], rng: &mut R, out: &mut [f64]) {
        let alpha = self.config.alpha;
        for (o, arm) in out.iter_mut().zip(&self.arms) {
            *o = match self.config.algorithm {
                Algorithm::Linucb => arm.mean(x) + alpha * arm.width(x),
                Algorithm::Thompson => linalg::dot(&arm.sample_theta(alpha, rng), x),
            };
        }
    }

    /// Per arm, the mean and the standard deviation of the residual estimate's exploration
    /// term in context `x`: LinUCB adds `alpha * width` deterministically; Thompson's
    /// `theta^T x` with `theta ~ N(A^-1 b, alpha^2 A^-1)` is normal with mean `mean(x)` and
    /// standard deviation `alpha * width(x)`, so one draw of it needs one normal, not a
    /// `d`-dimensional sample.
    pub fn estimate_moments(&self, x: &[f64]) -> Vec<(f64, f64)> {
        let alpha = self.config.alpha;
        self.arms
            .iter()
            .map(|arm| (arm.mean(x), alpha * arm.width(x)))
            .collect()
    }

    /// New arms still under their forced-exploration limit, among `available`.
    pub fn forced_candidates(&self, available: &[bool]) -> Vec<usize> {
        (0..self.arms.len())
            .filter(|&m| {
                available[m]
                    && self.is_new[m]
                    && self.arms[m].stats.n < self.config.forced_exploration_pulls
            })
            .collect()
    }

    /// Draws the forced-exploration coin: `Some(arm)` when this request must go to an
    /// under-explored new model.
    pub fn forced_pick<R: Rng + ?Sized>(&self, available: &[bool], rng: &mut R) -> Option<usize> {
        let cands = self.forced_candidates(available);
        if cands.is_empty() || self.config.forced_exploration_rate <= 0.0 {
            return None;
        }
        (rng.gen::<f64>() < self.config.forced_exploration_rate)
            .then(|| cands[rng.gen_range(0..cands.len())])
    }

    /// Chooses an arm among `available` for context `x` given the prior means `prior`.
    pub fn choose<R: Rng + ?Sized>(
        &self,
        x: &[f64],
        prior: &[f64],
        available: &[bool],
        rng: &mut R,
    ) -> Option<usize> {
        if let Some(m) = self.forced_pick(available, rng) {
            return Some(m);
        }
        let mut est = vec![0.0; self.arms.len()];
        self.estimates(x, rng, &mut est);
        argmax_available(prior, &est, available)
    }

    /// Probability of choosing each arm: exact for LinUCB (forced mass on under-explored
    /// new arms, the rest on the UCB argmax), Monte-Carlo over `samples` posterior draws
    /// for Thompson. Unavailable arms get 0; the result sums to 1 when any arm is
    /// available.
    pub fn selection_probabilities<R: Rng + ?Sized>(
        &self,
        x: &[f64],
        prior: &[f64],
        available: &[bool],
        samples: usize,
        rng: &mut R,
    ) -> Vec<f64> {
        let k = self.arms.len();
        let mut p = vec![0.0; k];
        let cands = self.forced_candidates(available);
        let forced = if cands.is_empty() {
            0.0
        } else {
            self.config.forced_exploration_rate
        };
        for &m in &cands {
            p[m] += forced / cands.len() as f64;
        }
        let rest = 1.0 - forced;
        let mut est = vec![0.0; k];
        match self.config.algorithm {
            Algorithm::Linucb => {
                self.estimates(x, rng, &mut est);
                if let Some(m) = argmax_available(prior, &est, available) {
                    p[m] += rest;
                }
            }
            Algorithm::Thompson => {
                let n = samples.max(1);
                for _ in 0..n {
                    self.estimates(x, rng, &mut est);
                    if let Some(m) = argmax_available(prior, &est, available) {
                        p[m] += rest / n as f64;
                    }
                }
            }
        }
        p
    }
}

/// Index maximising `prior + est` among available arms (ties: lowest index).
pub fn argmax_available(prior: &[f64], est: &[f64], available: &[bool]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for m in 0..prior.len() {
        if !available[m] {
            continue;
        }
        let u = prior[m] + est[m];
        let better = match best {
            None => true,
            Some((_, b)) => u > b,
        };
        if better {
            best = Some((m, u));
        }
    }
    best.map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn cfg(d: usize) -> BanditConfig {
        BanditConfig {
            dim: d - 1,
            prior_strength: 1.0,
            forgetting: 1.0,
            alpha: 1.0,
            ..BanditConfig::default()
        }
    }

    #[test]
    fn linucb_update_and_width_match_hand_computation() {
        // d = 2, lambda0 = 1, one observation x = (1, 1), y = 2:
        // A = [[2, 1], [1, 2]], b = (2, 2), A^-1 = 1/3 [[2, -1], [-1, 2]],
        // theta = A^-1 b = (2/3, 2/3).
        let mut bandit = LinearBandit::new(&cfg(2), vec![false]);
        bandit.update(0, &[1.0, 1.0], 2.0);
        let arm = bandit.arm(0);
        assert_eq!(arm.stats().a, vec![2.0, 1.0, 1.0, 2.0]);
        assert_eq!(arm.stats().b, vec![2.0, 2.0]);
        assert_eq!(arm.stats().n, 1);
        let want_inv = [2.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0, 2.0 / 3.0];
        for (a, b) in arm.a_inv().iter().zip(want_inv) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!((arm.theta()[0] - 2.0 / 3.0).abs() < 1e-12);
        assert!((arm.theta()[1] - 2.0 / 3.0).abs() < 1e-12);
        // At x = (1, 0): mean 2/3, width sqrt(2/3); UCB with alpha 1 adds them.
        let x = [1.0, 0.0];
        assert!((arm.mean(&x) - 2.0 / 3.0).abs() < 1e-12);
        assert!((arm.width(&x) - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        let mut est = [0.0];
        bandit.estimates(&x, &mut ChaCha8Rng::seed_from_u64(0), &mut est);
        assert!((est[0] - (2.0 / 3.0 + (2.0f64 / 3.0).sqrt())).abs() < 1e-12);
        // The width along the observed direction shrank below the prior's 1.
        assert!(arm.width(&[1.0, 1.0]) / 2f64.sqrt() < 1.0);
    }

    #[test]
    fn forgetting_discounts_toward_the_prior() {
        // gamma = 0.5, lambda0 = 2, d = 1: A = 0.5*2 + 0.5*2 + 1 = 3 after the first
        // update (x = 1, y = 1), b = 1; second (x = 1, y = 0): A = 1.5 + 1 + 1 = 3.5, b = 0.5.
        let mut s = ArmStats::prior(1, 2.0);
        s.update(&[1.0], 1.0, 0.5, 2.0);
        assert_eq!((s.a[0], s.b[0]), (3.0, 1.0));
        s.update(&[1.0], 0.0, 0.5, 2.0);
        assert_eq!((s.a[0], s.b[0]), (3.5, 0.5));
        let arm = Arm::from_stats(s).unwrap();
        assert!((arm.theta()[0] - 0.5 / 3.5).abs() < 1e-12);
    }

    #[test]
    fn sherman_morrison_path_equals_refactorised_inverse() {
        let mut bandit = LinearBandit::new(&cfg(3), vec![false]);
        let xs = [[1.0, 0.2, -0.3], [1.0, -0.5, 0.1], [1.0, 0.9, 0.4]];
        for (i, x) in xs.iter().enumerate() {
            bandit.update(0, x, i as f64 * 0.3 - 0.2);
        }
        let fresh = Arm::from_stats(bandit.arm(0).stats().clone()).unwrap();
        for (a, b) in bandit.arm(0).a_inv().iter().zip(fresh.a_inv()) {
            assert!((a - b).abs() < 1e-10);
        }
        for (a, b) in bandit.arm(0).theta().iter().zip(fresh.theta()) {
            assert!((a - b).abs() < 1e-10);
        }
    }

    #[test]
    fn thompson_posterior_has_mean_theta_and_covariance_v2_a_inv() {
        // A = [[2, 1], [1, 2]], theta = (2/3, 2/3); with v = 0.5 the draws' covariance
        // must be 0.25 * A^-1 = 1/12 [[2, -1], [-1, 2]].
        let c = BanditConfig {
            algorithm: Algorithm::Thompson,
            alpha: 0.5,
            ..cfg(2)
        };
        let mut bandit = LinearBandit::new(&c, vec![false]);
        bandit.update(0, &[1.0, 1.0], 2.0);
        let arm = bandit.arm(0);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 200_000;
        let (mut m0, mut m1, mut s00, mut s01, mut s11) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for _ in 0..n {
            let t = arm.sample_theta(0.5, &mut rng);
            m0 += t[0];
            m1 += t[1];
            s00 += t[0] * t[0];
            s01 += t[0] * t[1];
            s11 += t[1] * t[1];
        }
        let nf = n as f64;
        let (m0, m1) = (m0 / nf, m1 / nf);
        let c00 = s00 / nf - m0 * m0;
        let c01 = s01 / nf - m0 * m1;
        let c11 = s11 / nf - m1 * m1;
        assert!((m0 - 2.0 / 3.0).abs() < 0.01, "{m0}");
        assert!((m1 - 2.0 / 3.0).abs() < 0.01, "{m1}");
        assert!((c00 - 2.0 / 12.0).abs() < 0.005, "{c00}");
        assert!((c01 + 1.0 / 12.0).abs() < 0.005, "{c01}");
        assert!((c11 - 2.0 / 12.0).abs() < 0.005, "{c11}");
    }

    #[test]
    fn untrained_bandit_follows_the_prior_and_new_arms_are_forced() {
        let c = BanditConfig {
            forced_exploration_rate: 0.3,
            forced_exploration_pulls: 2,
            ..cfg(3)
        };
        let bandit = LinearBandit::new(&c, vec![false, false, true]);
        let x = [1.0, 0.0, 0.0];
        let prior = [0.2, 0.7, -5.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let p = bandit.selection_probabilities(&x, &prior, &[true; 3], 0, &mut rng);
        assert!((p[1] - 0.7).abs() < 1e-12 && (p[2] - 0.3).abs() < 1e-12 && p[0] == 0.0);
        let forced = (0..2000)
            .filter(|_| bandit.choose(&x, &prior, &[true; 3], &mut rng) == Some(2))
            .count();
        assert!((450..750).contains(&forced), "{forced}");
        // Unavailable arms are never chosen.
        assert_eq!(
            bandit.choose(&x, &prior, &[true, false, false], &mut rng),
            Some(0)
        );
    }
}
