//! Budget pacing: the lambda of a CARROT-style policy (choose the model maximising
//! `predicted score - lambda * predicted cost`) steered so that spend follows a budget
//! across a period instead of running out early (a hard cap) or being left unspent.
//!
//! The method is the dual-descent pacing of online advertising (Balseiro & Gur, 2019,
//! "Learning in repeated auctions with budgets: regret minimization and equilibrium"),
//! applied to routing: `lambda` is the Lagrange multiplier of the budget constraint. After
//! each request the pacer compares the request's realised cost with the spend per request
//! that would exhaust the remaining budget exactly at the end of the period, and moves
//! `log lambda` by a step proportional to the gap:
//!
//! ```text
//! target = remaining budget / expected remaining requests
//! signal = EWMA over requests of (min(cost / target, CLIP) - 1), weight `smoothing`
//! log lambda += step * signal
//! ```
//!
//! The smoothing keeps the sum of the updates (what corrects a lasting over- or
//! under-spend) while damping the jitter of single requests, whose costs differ by orders
//! of magnitude between models; a jittery lambda routes worse than a steady one at the
//! same mean.
//!
//! The expected remaining requests come from the rate observed so far (requests per
//! elapsed time, once [`MIN_ELAPSED_FRACTION`] of the period has passed; before that, the
//! requests seen so far spread over that first fraction, an under-estimate of the rate
//! that lowers lambda a little until the fraction has passed). Over a stationary stream
//! this converges to the fixed lambda that spends the budget, which is the best fixed lambda
//! in hindsight when the router's predictions are calibrated. Pure logic: the caller says
//! what each request cost and when it came.

use serde::{Deserialize, Serialize};

/// `cost / target` is clipped at this (one expensive request does not swing lambda far).
pub const CLIP: f64 = 4.0;
/// The observed rate is trusted from this fraction of the period on.
pub const MIN_ELAPSED_FRACTION: f64 = 0.01;
/// Lambda stays within `[LAMBDA_MIN, LAMBDA_MAX]` (quality per USD).
pub const LAMBDA_MIN: f64 = 1e-3;
pub const LAMBDA_MAX: f64 = 1e9;

/// How the pacer moves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PacerConfig {
    /// The step on `log lambda` per request.
    pub step: f64,
    /// The starting lambda.
    pub lambda0: f64,
    /// The EWMA weight of the newest request in the update signal, in (0, 1] (1: none).
    #[serde(default = "no_smoothing")]
    pub smoothing: f64,
}

fn no_smoothing() -> f64 {
    1.0
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            step: 0.05,
            lambda0: 100.0,
            smoothing: 1.0,
        }
    }
}

/// One key's pacing over one period.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacer {
    cfg: PacerConfig,
    budget: f64,
    start_ms: u64,
    end_ms: u64,
    log_lambda: f64,
    spent: f64,
    requests: u64,
    signal: f64,
}

impl Pacer {
    /// A pacer spending `budget` USD over `[start_ms, end_ms)`.
    pub fn new(cfg: PacerConfig, budget: f64, start_ms: u64, end_ms: u64) -> Pacer {
        Pacer {
            cfg,
            budget,
            start_ms,
            end_ms: end_ms.max(start_ms + 1),
            log_lambda: cfg.lambda0.clamp(LAMBDA_MIN, LAMBDA_MAX).ln(),
            spent: 0.0,
            requests: 0,
            signal: 0.0,
        }
    }

    /// The lambda to route the next request with.
    pub fn lambda(&self) -> f64 {
        self.log_lambda.exp()
    }

    pub fn spent(&self) -> f64 {
        self.spent
    }

    /// Records a request at `now_ms` that cost `cost` USD and moves lambda.
    pub fn record(&mut self, now_ms: u64, cost: f64) {
        let cost = if cost.is_finite() { cost.max(0.0) } else { 0.0 };
        self.spent += cost;
        self.requests += 1;
        let period = (self.end_ms - self.start_ms) as f64;
        let elapsed = (now_ms.saturating_sub(self.start_ms) as f64).max(1.0);
        let left = (self.end_ms.saturating_sub(now_ms)) as f64;
        let remaining = self.budget - self.spent;
        if remaining <= 0.0 {
            // The budget is gone: only the cheapest answers from now on.
            self.log_lambda = LAMBDA_MAX.ln();
            return;
        }
        let rate = if elapsed >= MIN_ELAPSED_FRACTION * period {
            self.requests as f64 / elapsed
        } else {
            // Too early to trust the rate: assume the spend so far is on pace.
            self.requests as f64 / elapsed.max(MIN_ELAPSED_FRACTION * period)
        };
        let expected_left = (rate * left).max(1.0);
        let target = remaining / expected_left;
        let ratio = (cost / target).min(CLIP);
        let w = self.cfg.smoothing.clamp(1e-3, 1.0);
        self.signal += w * ((ratio - 1.0) - self.signal);
        self.log_lambda =
            (self.log_lambda + self.cfg.step * self.signal).clamp(LAMBDA_MIN.ln(), LAMBDA_MAX.ln());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two models: a cheap (score 0.5, $0.001) and a dear one (score 0.5 + gain, $0.01),
    /// the gain of each request spread evenly in [0, 0.5]: at lambda L the dear model is
    /// taken when gain > 0.009 L.
    fn run(budget_per_request: f64, step: f64) -> (f64, f64) {
        let n = 10_000u64;
        let mut p = Pacer::new(
            PacerConfig {
                step,
                lambda0: 1.0,
                smoothing: 1.0,
            },
            budget_per_request * n as f64,
            0,
            n * 1000,
        );
        let mut quality = 0.0;
        for i in 0..n {
            let gain = ((i * 7919) % n) as f64 / n as f64 * 0.5;
            let l = p.lambda();
            let (q, c) = if 0.5 + gain - l * 0.01 > 0.5 - l * 0.001 {
                (0.5 + gain, 0.01)
            } else {
                (0.5, 0.001)
            };
            quality += q;
            p.record(i * 1000 + 500, c);
        }
        (
            p.spent() / (budget_per_request * n as f64),
            quality / n as f64,
        )
    }

    #[test]
    fn spend_ends_near_the_budget_whatever_the_budget() {
        for per_request in [0.002, 0.004, 0.007] {
            let (ratio, _) = run(per_request, 0.05);
            assert!(
                (0.97..=1.01).contains(&ratio),
                "{per_request}: spent {ratio} of the budget"
            );
        }
    }

    #[test]
    fn a_larger_budget_buys_more_quality() {
        let (_, low) = run(0.002, 0.05);
        let (_, high) = run(0.007, 0.05);
        assert!(high > low + 0.05, "{low} -> {high}");
    }

    #[test]
    fn a_spent_budget_pins_lambda_to_the_cheapest() {
        let mut p = Pacer::new(PacerConfig::default(), 1.0, 0, 1000);
        p.record(10, 2.0);
        assert!((p.lambda() / LAMBDA_MAX - 1.0).abs() < 1e-9);
    }
}
