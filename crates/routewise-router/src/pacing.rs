//! Budget pacing: the lambda of a CARROT-style policy (choose the model maximising
//! `predicted score - lambda * predicted cost`) steered so that spend follows a budget
//! across a period instead of running out early (a hard cap) or being left unspent.
//! `lambda` is the Lagrange multiplier (the dual price) of the budget constraint; a
//! controller sets it from the spend so far and the requests seen. Two controllers sit
//! behind [`BudgetPacer`]; both are pure logic: the caller says what each request's
//! candidates were predicted to score and cost, and what each call really cost, and when.
//! A call either belongs to a routed request (one whose predictions the pacer saw) or not
//! (a request for a named model): the latter's spend is paced as a rate of its own.
//!
//! * **[`Resolving`]** (what the gateway runs): certainty-equivalent re-solving of the
//!   dual price, as in online linear programming (Li & Ye, 2022, "Online linear
//!   programming: dual convergence, new algorithms, and regret bounds"; Jasin & Kumar,
//!   2012, for re-solving in revenue management). After each settled call it solves
//!
//!   ```text
//!   target = remaining budget / expected remaining requests
//!   lambda = the smallest lambda with  ratio * mean over the window of
//!            predicted cost of argmax(score - lambda * cost)  <=  target
//!   ```
//!
//!   where the window is the recent requests' predictions and `ratio` is the realised
//!   cost of the routed requests' calls (fallbacks and cascade tiers included) over the
//!   predicted cost of their choices (the cost predictor's bias, and the extra calls).
//!   Once `min_seen` calls for named models were seen, their share of the calls at their
//!   mean cost is set aside from the spend per request. A request routed by another rule (a route's own policy,
//!   a forced model) joins the window with its choice only: its cost does not depend on
//!   lambda. Each row's
//!   choice as lambda grows is the upper envelope of its lines `score - lambda * cost`,
//!   kept as breakpoints when the request is observed, so a solve is one sort of the
//!   window's breakpoints: exact, with no step size. Lambda moves only when the window or
//!   the pace does, so it stays steady where a dual-descent lambda jitters; an over- or
//!   under-spend moves the target, which is the feedback.
//! * **[`DualDescent`]** (the lab's baseline): the dual-descent pacing of online
//!   advertising (Balseiro & Gur, 2019, "Learning in repeated auctions with budgets:
//!   regret minimization and equilibrium"). After each request it moves `log lambda` by a
//!   step proportional to the gap between the request's realised cost and the target:
//!
//!   ```text
//!   signal = EWMA over requests of (min(cost / target, CLIP) - 1), weight `smoothing`
//!   log lambda += step * signal
//!   ```
//!
//! `routewise eval --pacing` measures both (BENCHMARKS.md section 11): on the shared data
//! re-solving lands within 0.01 of the best fixed lambda in hindsight, where dual descent
//! falls up to 0.026 short on the shorter stream.
//!
//! The expected remaining requests come from the rate observed so far (requests per
//! elapsed time, once [`MIN_ELAPSED_FRACTION`] of the period has passed; before that, the
//! requests seen so far spread over that first fraction, an under-estimate of the rate
//! that lowers lambda a little until the fraction has passed).

use serde::{Deserialize, Serialize};

/// The starting lambda when none is given (quality per USD).
pub const DEFAULT_LAMBDA0: f64 = 100.0;
/// `cost / target` is clipped at this (one expensive request does not swing lambda far).
pub const CLIP: f64 = 4.0;
/// The observed rate is trusted from this fraction of the period on.
pub const MIN_ELAPSED_FRACTION: f64 = 0.01;
/// Lambda stays within `[LAMBDA_MIN, LAMBDA_MAX]` (quality per USD).
pub const LAMBDA_MIN: f64 = 1e-3;
pub const LAMBDA_MAX: f64 = 1e9;

/// A budget's controller over one period: routes with [`BudgetPacer::lambda`], is shown
/// each routed request's candidates and told each call's cost.
pub trait BudgetPacer: Send {
    /// The lambda to route the next request with.
    fn lambda(&self) -> f64;
    /// What the calls recorded so far cost.
    fn spent(&self) -> f64;
    /// A routed request: its candidates' predicted (score, cost USD).
    fn observe(&mut self, candidates: &mut dyn Iterator<Item = (f64, f64)>);
    /// A call at `now_ms` that cost `cost` USD; `routed`: it belongs to a request that was
    /// observed.
    fn record(&mut self, now_ms: u64, cost: f64, routed: bool);
}

/// A cost as a non-negative finite number (anything else counts as nothing).
fn clean(cost: f64) -> f64 {
    if cost.is_finite() {
        cost.max(0.0)
    } else {
        0.0
    }
}

/// The spend per request that exhausts `remaining` at `end_ms`, from the rate of the
/// `requests` seen since `start_ms`; `None` once nothing remains.
fn target_per_request(
    remaining: f64,
    requests: u64,
    now_ms: u64,
    start_ms: u64,
    end_ms: u64,
) -> Option<f64> {
    if remaining <= 0.0 {
        return None;
    }
    let left = end_ms.saturating_sub(now_ms) as f64;
    let rate = requests as f64 / elapsed_for_rate(now_ms, start_ms, end_ms);
    Some(remaining / (rate * left).max(1.0))
}

/// The elapsed ms a rate so far is taken over: before [`MIN_ELAPSED_FRACTION`] of the
/// period the rate is not trusted, and what came so far is spread over that first
/// fraction.
fn elapsed_for_rate(now_ms: u64, start_ms: u64, end_ms: u64) -> f64 {
    let period = end_ms.saturating_sub(start_ms).max(1) as f64;
    let elapsed = (now_ms.saturating_sub(start_ms) as f64).max(1.0);
    elapsed.max(MIN_ELAPSED_FRACTION * period)
}

/// How [`Resolving`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResolvingConfig {
    /// The lambda until `min_seen` requests have been observed.
    pub lambda0: f64,
    /// How many of the most recent requests' predictions the spend curve is taken over.
    pub window: usize,
    /// Requests observed before the curve replaces `lambda0`; also the unrouted calls seen
    /// before their share is set aside from the budget.
    pub min_seen: usize,
}

/// The window the gateway and the lab use: the lab's train streams gave the same quality
/// (within 0.003) for windows of 64 to 1,024 requests on both shared datasets.
pub const WINDOW: usize = 256;
/// Requests observed before the window's curve is trusted.
pub const MIN_SEEN: usize = 20;

impl Default for ResolvingConfig {
    fn default() -> Self {
        ResolvingConfig {
            lambda0: DEFAULT_LAMBDA0,
            window: WINDOW,
            min_seen: MIN_SEEN,
        }
    }
}

/// One request's choice as lambda grows: `(from lambda, predicted cost of the choice)`,
/// lambda increasing from 0, cost decreasing.
pub type Envelope = Vec<(f64, f64)>;

/// The predicted cost of an envelope's choice at `lambda`.
fn cost_at(e: &Envelope, lambda: f64) -> f64 {
    e.iter()
        .take_while(|p| p.0 <= lambda)
        .last()
        .or(e.first())
        .map_or(0.0, |p| p.1)
}

/// The breakpoints of `argmax score - lambda * cost` over lambda >= 0 (the cheaper model on
/// ties, as the router breaks them). Empty for no finite candidate. A single candidate
/// gives one point: a request whose cost does not depend on lambda.
pub fn envelope(candidates: &mut dyn Iterator<Item = (f64, f64)>) -> Envelope {
    let lines: Vec<(f64, f64)> = candidates
        .filter(|(s, c)| s.is_finite() && c.is_finite())
        .collect();
    let Some(&first) = lines
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)))
    else {
        return Vec::new();
    };
    let mut out = vec![(0.0, first.1)];
    let mut cur = first;
    // Each step moves to a strictly cheaper line, so this ends within `lines.len()` steps.
    loop {
        let next = lines
            .iter()
            .filter(|l| l.1 < cur.1)
            .map(|&l| ((cur.0 - l.0) / (cur.1 - l.1), l))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1 .1.total_cmp(&b.1 .1)));
        let Some((at, line)) = next else { break };
        let from = at.max(out.last().map_or(0.0, |p| p.0));
        out.push((from, line.1));
        cur = line;
    }
    out
}

/// Certainty-equivalent re-solving of one budget over one period (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolving {
    cfg: ResolvingConfig,
    budget: f64,
    start_ms: u64,
    end_ms: u64,
    spent: f64,
    /// The routed requests' realised cost, and the predicted cost of their choices.
    realised_predicted: (f64, f64),
    /// What calls for unrouted requests cost, and how many there were.
    unrouted_spent: f64,
    unrouted_calls: u64,
    /// Requests observed this period.
    requests: u64,
    /// The most recent requests' envelopes, oldest first.
    window: std::collections::VecDeque<Envelope>,
    lambda: f64,
}

impl Resolving {
    /// A pacer spending `budget` USD over `[start_ms, end_ms)`.
    pub fn new(cfg: ResolvingConfig, budget: f64, start_ms: u64, end_ms: u64) -> Resolving {
        let window = cfg.window.max(1);
        Resolving {
            cfg: ResolvingConfig {
                window,
                min_seen: cfg.min_seen.clamp(1, window),
                ..cfg
            },
            budget,
            start_ms,
            end_ms: end_ms.max(start_ms + 1),
            spent: 0.0,
            realised_predicted: (0.0, 0.0),
            unrouted_spent: 0.0,
            unrouted_calls: 0,
            requests: 0,
            window: std::collections::VecDeque::new(),
            lambda: cfg.lambda0.clamp(LAMBDA_MIN, LAMBDA_MAX),
        }
    }

    /// Adds a request's envelope (see [`envelope`]) to the window; the caller may build it
    /// outside a lock. `routed_at`: the lambda the request was routed with.
    pub fn observe_envelope(&mut self, e: Envelope, routed_at: f64) {
        if e.is_empty() {
            return;
        }
        self.requests += 1;
        self.realised_predicted.1 += cost_at(&e, routed_at);
        if self.window.len() >= self.cfg.window {
            self.window.pop_front();
        }
        self.window.push_back(e);
    }

    /// The requests observed this period.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Realised over predicted cost so far (1 before any call with a prediction).
    fn ratio(&self) -> f64 {
        let (real, predicted) = self.realised_predicted;
        if real > 0.0 && predicted > 0.0 {
            real / predicted
        } else {
            1.0
        }
    }

    /// The smallest lambda whose mean predicted cost over the window is at most `target`
    /// (`LAMBDA_MAX` when even the cheapest choices cost more).
    fn solve(&self, target: f64) -> f64 {
        let n = self.window.len() as f64;
        let mut total: f64 = self.window.iter().map(|e| e[0].1).sum();
        if total <= target * n {
            return LAMBDA_MIN;
        }
        let mut steps: Vec<(f64, f64)> = self
            .window
            .iter()
            .flat_map(|e| e.windows(2).map(|w| (w[1].0, w[0].1 - w[1].1)))
            .collect();
        steps.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        for (at, saving) in steps {
            total -= saving;
            if total <= target * n {
                // Just past the breakpoint, where the cheaper choice wins whatever the
                // rounding of the utilities.
                return (at * (1.0 + 1e-9)).clamp(LAMBDA_MIN, LAMBDA_MAX);
            }
        }
        LAMBDA_MAX
    }
}

impl BudgetPacer for Resolving {
    fn lambda(&self) -> f64 {
        self.lambda
    }

    fn spent(&self) -> f64 {
        self.spent
    }

    fn observe(&mut self, candidates: &mut dyn Iterator<Item = (f64, f64)>) {
        let at = self.lambda;
        self.observe_envelope(envelope(candidates), at);
    }

    fn record(&mut self, now_ms: u64, cost: f64, routed: bool) {
        let cost = clean(cost);
        self.spent += cost;
        if routed {
            self.realised_predicted.0 += cost;
        } else {
            self.unrouted_spent += cost;
            self.unrouted_calls += 1;
        }
        // The spend per request of any kind, then what is left of it for a routed one
        // once the unrouted share `f` of the calls, at their mean cost `u`, is paid:
        // f u + (1 - f) routed <= per request. Before `min_seen` unrouted calls their mean
        // is not trusted (one early call would say too much): they count in the spend and
        // in the rate of calls, not in the set-aside.
        let calls = self.requests + self.unrouted_calls;
        let Some(per_request) = target_per_request(
            self.budget - self.spent,
            calls.max(1),
            now_ms,
            self.start_ms,
            self.end_ms,
        ) else {
            // The budget is gone: only the cheapest answers from now on.
            self.lambda = LAMBDA_MAX;
            return;
        };
        let target = if self.unrouted_calls >= self.cfg.min_seen as u64 && calls > 0 {
            let f = self.unrouted_calls as f64 / calls as f64;
            let u = self.unrouted_spent / self.unrouted_calls as f64;
            if f < 1.0 {
                ((per_request - f * u) / (1.0 - f)).max(0.0)
            } else {
                0.0
            }
        } else {
            per_request
        };
        if self.window.len() >= self.cfg.min_seen {
            self.lambda = self.solve(target / self.ratio());
        }
    }
}

/// How [`DualDescent`] moves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DualDescentConfig {
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

impl Default for DualDescentConfig {
    fn default() -> Self {
        DualDescentConfig {
            step: 0.05,
            lambda0: DEFAULT_LAMBDA0,
            smoothing: 1.0,
        }
    }
}

/// Dual-descent pacing of one budget over one period.
#[derive(Debug, Clone, PartialEq)]
pub struct DualDescent {
    cfg: DualDescentConfig,
    budget: f64,
    start_ms: u64,
    end_ms: u64,
    log_lambda: f64,
    spent: f64,
    requests: u64,
    signal: f64,
}

impl DualDescent {
    /// A pacer spending `budget` USD over `[start_ms, end_ms)`.
    pub fn new(cfg: DualDescentConfig, budget: f64, start_ms: u64, end_ms: u64) -> DualDescent {
        DualDescent {
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
}

impl BudgetPacer for DualDescent {
    fn lambda(&self) -> f64 {
        self.log_lambda.exp()
    }

    fn spent(&self) -> f64 {
        self.spent
    }

    /// Dual descent looks at realised costs only.
    fn observe(&mut self, _candidates: &mut dyn Iterator<Item = (f64, f64)>) {}

    /// Counts the call as a request and moves lambda by its cost against the target.
    fn record(&mut self, now_ms: u64, cost: f64, _routed: bool) {
        let cost = clean(cost);
        self.spent += cost;
        self.requests += 1;
        let Some(target) = target_per_request(
            self.budget - self.spent,
            self.requests,
            now_ms,
            self.start_ms,
            self.end_ms,
        ) else {
            // The budget is gone: only the cheapest answers from now on.
            self.log_lambda = LAMBDA_MAX.ln();
            return;
        };
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
    use proptest::prelude::*;

    const N: u64 = 10_000;

    /// The gain of request `i`: spread evenly over [0, 0.5] in a scrambled order.
    fn gain(i: u64) -> f64 {
        ((i * 7919) % N) as f64 / N as f64 * 0.5
    }

    /// Two models: a cheap one (score 0.5, $0.001) and a dear one (score 0.5 + gain,
    /// $0.01, really costing `bias` times that): at lambda L the dear one is taken when
    /// gain > 0.009 L. Answers the share of the budget spent and the mean quality.
    fn run(p: &mut dyn BudgetPacer, budget: f64, bias: f64) -> (f64, f64) {
        let mut quality = 0.0;
        for i in 0..N {
            let g = gain(i);
            let cands = [(0.5, 0.001), (0.5 + g, 0.01)];
            p.observe(&mut cands.iter().copied());
            let l = p.lambda();
            let (q, c) = if 0.5 + g - l * 0.01 > 0.5 - l * 0.001 {
                (0.5 + g, 0.01)
            } else {
                (0.5, 0.001)
            };
            quality += q;
            p.record(i * 1000 + 500, c * bias, true);
        }
        (p.spent() / budget, quality / N as f64)
    }

    fn dual(step: f64) -> DualDescentConfig {
        DualDescentConfig {
            step,
            lambda0: 1.0,
            smoothing: 1.0,
        }
    }

    fn resolving(lambda0: f64) -> ResolvingConfig {
        ResolvingConfig {
            lambda0,
            ..ResolvingConfig::default()
        }
    }

    /// The best fixed lambda's quality at `per_request` (the dear share `f` spends
    /// `0.001 + 0.009 f` a request; the gains above `0.5 (1 - f)` are taken).
    fn hindsight(per_request: f64) -> f64 {
        let f = ((per_request - 0.001) / 0.009).clamp(0.0, 1.0);
        let t = 0.5 * (1.0 - f);
        0.5 + 0.25 - t * t
    }

    #[test]
    fn spend_ends_near_the_budget_whatever_the_budget() {
        for per_request in [0.002, 0.004, 0.007] {
            let budget = per_request * N as f64;
            let mut d = DualDescent::new(dual(0.05), budget, 0, N * 1000);
            let mut r = Resolving::new(resolving(1.0), budget, 0, N * 1000);
            for (name, p) in [
                ("dual", &mut d as &mut dyn BudgetPacer),
                ("resolving", &mut r),
            ] {
                let (ratio, _) = run(p, budget, 1.0);
                assert!(
                    (0.97..=1.01).contains(&ratio),
                    "{name} {per_request}: spent {ratio} of the budget"
                );
            }
        }
    }

    #[test]
    fn a_larger_budget_buys_more_quality() {
        type Make = fn(f64) -> Box<dyn BudgetPacer>;
        let makes: [Make; 2] = [
            |b| Box::new(DualDescent::new(dual(0.05), b, 0, N * 1000)),
            |b| Box::new(Resolving::new(resolving(1.0), b, 0, N * 1000)),
        ];
        for make in makes {
            let (_, low) = run(&mut *make(0.002 * N as f64), 0.002 * N as f64, 1.0);
            let (_, high) = run(&mut *make(0.007 * N as f64), 0.007 * N as f64, 1.0);
            assert!(high > low + 0.05, "{low} -> {high}");
        }
    }

    #[test]
    fn resolving_matches_the_best_fixed_lambda_from_a_start_far_off() {
        for per_request in [0.002, 0.004, 0.007] {
            let budget = per_request * N as f64;
            for lambda0 in [0.1, 1e4] {
                let mut r = Resolving::new(resolving(lambda0), budget, 0, N * 1000);
                let (ratio, q) = run(&mut r, budget, 1.0);
                assert!(
                    (0.97..=1.01).contains(&ratio),
                    "{per_request} from {lambda0}: spent {ratio} of the budget"
                );
                let best = hindsight(per_request);
                assert!(
                    q > best - 0.005,
                    "{per_request} from {lambda0}: {q} vs {best} in hindsight"
                );
            }
        }
    }

    #[test]
    fn resolving_corrects_a_cost_predictor_that_is_off_by_2x() {
        let budget = 0.004 * N as f64;
        let mut r = Resolving::new(resolving(1.0), budget, 0, N * 1000);
        let (ratio, _) = run(&mut r, budget, 2.0);
        assert!(
            (0.97..=1.01).contains(&ratio),
            "spent {ratio} of the budget"
        );
    }

    #[test]
    fn spend_on_named_models_is_kept_out_of_the_routed_requests_budget() {
        // Every fourth request names the dear model ($0.01, not routed): 0.0025 a request
        // of the 0.004 budget. The routed ones get what is left.
        let budget = 0.004 * N as f64;
        let mut r = Resolving::new(resolving(1.0), budget, 0, N * 1000);
        for i in 0..N {
            let now = i * 1000 + 500;
            if i % 4 == 0 {
                r.record(now, 0.01, false);
                continue;
            }
            let g = gain(i);
            r.observe(&mut [(0.5, 0.001), (0.5 + g, 0.01)].into_iter());
            let l = r.lambda();
            let c = if g - l * 0.01 > -l * 0.001 {
                0.01
            } else {
                0.001
            };
            r.record(now, c, true);
        }
        let ratio = r.spent() / budget;
        assert!(
            (0.97..=1.01).contains(&ratio),
            "spent {ratio} of the budget"
        );
    }

    #[test]
    fn regression_one_early_named_model_call_does_not_pin_routed_traffic() {
        // $0.50 for a named model in the first minute of a month with $30: projected at
        // that rate it would exceed the budget, but it is one call.
        let month = 30 * 86_400_000u64;
        let mut r = Resolving::new(resolving(1.0), 30.0, 0, month);
        r.record(60_000, 0.5, false);
        // 100 routed requests at $0.01 over the first 5% of the month: on pace for $20.
        for i in 0..100u64 {
            r.observe(&mut [(0.9, 0.01), (0.5, 0.001)].into_iter());
            r.record(120_000 + i * (month / 2000), 0.01, true);
            if i >= MIN_SEEN as u64 {
                assert!(r.lambda() < 1.0, "request {i}: lambda {}", r.lambda());
            }
        }
    }

    #[test]
    fn a_spent_budget_pins_lambda_to_the_cheapest() {
        let mut d = DualDescent::new(DualDescentConfig::default(), 1.0, 0, 1000);
        d.record(10, 2.0, false);
        assert!((d.lambda() / LAMBDA_MAX - 1.0).abs() < 1e-9);
        let mut r = Resolving::new(ResolvingConfig::default(), 1.0, 0, 1000);
        r.observe(&mut [(0.9, 1.0), (0.1, 0.1)].into_iter());
        r.record(10, 2.0, true);
        assert!((r.lambda() / LAMBDA_MAX - 1.0).abs() < 1e-9);
    }

    #[test]
    fn lambda0_holds_until_enough_requests_were_seen() {
        let mut r = Resolving::new(resolving(7.0), 100.0, 0, 1_000_000);
        for i in 0..(MIN_SEEN as u64 - 1) {
            r.observe(&mut [(0.9, 0.01), (0.5, 0.001)].into_iter());
            r.record(i, 0.001, true);
            assert_eq!(r.lambda(), 7.0);
        }
        r.observe(&mut [(0.9, 0.01), (0.5, 0.001)].into_iter());
        r.record(MIN_SEEN as u64, 0.001, true);
        assert_ne!(r.lambda(), 7.0);
    }

    #[test]
    fn envelope_of_three_lines() {
        // a: 0.9 - 10 L, b: 0.8 - 2 L, c: 0.5 - 0 L. a until b overtakes at
        // 0.1 / 8 = 0.0125; b until c at 0.3 / 2 = 0.15. A dominated line is skipped.
        let e = envelope(&mut [(0.9, 10.0), (0.2, 5.0), (0.8, 2.0), (0.5, 0.0)].into_iter());
        assert_eq!(e.len(), 3);
        assert_eq!(e[0], (0.0, 10.0));
        assert!((e[1].0 - 0.0125).abs() < 1e-12 && e[1].1 == 2.0);
        assert!((e[2].0 - 0.15).abs() < 1e-12 && e[2].1 == 0.0);
        assert!(envelope(&mut [(f64::NAN, 1.0)].into_iter()).is_empty());
    }

    /// The choice the router makes at `lambda` (the cheaper on ties).
    fn choose(lines: &[(f64, f64)], lambda: f64) -> f64 {
        let mut best = (f64::NEG_INFINITY, f64::INFINITY);
        for &(s, c) in lines {
            let u = s - lambda * c;
            if u > best.0 || (u == best.0 && c < best.1) {
                best = (u, c);
            }
        }
        best.1
    }

    fn lines() -> impl Strategy<Value = Vec<(f64, f64)>> {
        prop::collection::vec((0.0f64..1.0, 1e-4f64..1e-1), 1..8)
    }

    proptest! {
        /// The envelope gives the router's choice at every lambda.
        #[test]
        fn envelope_gives_the_routers_choice(ls in lines(), lambda in 0.0f64..100.0) {
            let e = envelope(&mut ls.iter().copied());
            let at = e.iter().rev().find(|p| p.0 <= lambda).map(|p| p.1);
            let want = choose(&ls, lambda);
            // Within rounding of a breakpoint either side may win.
            let near = e.iter().any(|p| (p.0 - lambda).abs() < 1e-9 * (1.0 + lambda));
            prop_assert!(near || at == Some(want), "{:?} at {}: {:?} vs {}", e, lambda, at, want);
        }

        /// The solved lambda is the smallest whose window spends at most the target.
        #[test]
        fn solve_gives_the_smallest_lambda_within_target(
            rows in prop::collection::vec(lines(), 1..30),
            target in 1e-4f64..0.05,
        ) {
            let mut r = Resolving::new(ResolvingConfig::default(), 1.0, 0, 1000);
            for row in &rows {
                r.observe(&mut row.iter().copied());
            }
            let mean = |l: f64| rows.iter().map(|row| choose(row, l)).sum::<f64>() / rows.len() as f64;
            let l = r.solve(target);
            if l < LAMBDA_MAX {
                prop_assert!(mean(l) <= target * (1.0 + 1e-9), "{} at {}", mean(l), l);
            }
            if l > LAMBDA_MIN {
                prop_assert!(mean(l * (1.0 - 1e-8)) > target, "{} below {}", mean(l * (1.0 - 1e-8)), l);
            }
        }
    }
}
