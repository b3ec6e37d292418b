//! Which deployment of a model takes a call, and what routewise knows about each
//! deployment's load.
//!
//! * **What is tracked** ([`Load`], one per deployment, lock-free): calls in flight (held
//!   by a [`Load::try_acquire`] until the answer ends, never past `max_concurrency`), and
//!   exponentially weighted moving averages (weight [`EWMA_ALPHA`]) of the time to first
//!   token (streamed answers: from the call to its first chunk), of the time per output
//!   token (streams: from the first chunk to the end over the completion tokens; full
//!   answers: the whole call less the time to first token, over the completion tokens) and
//!   of the error rate (each call a 0 or a 1). The error rate also halves every
//!   [`ERROR_HALF_LIFE_MS`] without a call, and a time to first token older than
//!   [`TTFT_STALE_MS`] no longer excludes the deployment from a request's SLO, so what a
//!   deployment did once does not shun it for good.
//! * **Expected latency** of a call with `n` output tokens: `ttft + n * ms_per_token`.
//!   A deployment with no observation yet is expected to be as fast as the mean of its
//!   peers that have some (or [`UNKNOWN_MS`] when none has), so a new replica is tried.
//! * **Choice** ([`order`]): the power of two choices (Mitzenmacher 2001; the load-aware
//!   form LinkerD and Envoy use for least-request balancing). Two deployments are drawn at
//!   random, with replacement, in proportion to their `weight` among those with a free
//!   slot and a closed breaker, and the one with the smaller `(in_flight + 1) * expected
//!   latency / (1 - error rate)` goes first (the first drawn on a tie). So equally fast,
//!   equally loaded deployments share the traffic by weight, and a worse one still gets
//!   the share of requests that draw it twice (its weight squared), which keeps its
//!   statistics current. The others follow in that score's order (with room first, then
//!   cooling down, then full), which is the order a failed call falls back through before
//!   it moves to another model.
//!
//! Pure logic: atomics and arithmetic, no I/O and no clock (times are passed in).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The weight of a new observation in the moving averages.
pub const EWMA_ALPHA: f64 = 0.2;
/// The expected latency of a call when no deployment of the model has been observed.
pub const UNKNOWN_MS: f64 = 1000.0;
/// The error rate is capped here in the score, so a failing deployment still ranks.
const MAX_ERROR_RATE: f64 = 0.95;
/// Without calls, a deployment's error rate halves this often.
pub const ERROR_HALF_LIFE_MS: u64 = 10_000;
/// A time to first token observed longer ago than this no longer counts against a
/// request's SLO.
pub const TTFT_STALE_MS: u64 = 30_000;

/// A deployment's live statistics.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU32,
    /// f64 bits; NaN until the first observation.
    ttft_ms: AtomicU64,
    ms_per_token: AtomicU64,
    error_rate: AtomicU64,
    /// When the error rate was last observed (the caller's clock, ms).
    error_at_ms: AtomicU64,
    /// When the time to first token was last observed.
    ttft_at_ms: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            in_flight: AtomicU32::new(0),
            ttft_ms: AtomicU64::new(f64::NAN.to_bits()),
            ms_per_token: AtomicU64::new(f64::NAN.to_bits()),
            error_rate: AtomicU64::new(0f64.to_bits()),
            error_at_ms: AtomicU64::new(0),
            ttft_at_ms: AtomicU64::new(0),
        }
    }
}

/// `rate` decayed over `elapsed_ms` without calls.
fn decayed(rate: f64, elapsed_ms: u64) -> f64 {
    rate * 0.5f64.powf(elapsed_ms as f64 / ERROR_HALF_LIFE_MS as f64)
}

/// Folds `x` into the moving average held in `cell` (its first value when it has none).
fn fold(cell: &AtomicU64, x: f64) {
    if !x.is_finite() {
        return;
    }
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        let old = f64::from_bits(bits);
        let new = if old.is_nan() {
            x
        } else {
            old + EWMA_ALPHA * (x - old)
        };
        Some(new.to_bits())
    });
}

fn read(cell: &AtomicU64) -> Option<f64> {
    Some(f64::from_bits(cell.load(Ordering::Acquire))).filter(|x| !x.is_nan())
}

impl Load {
    /// Takes a slot unless `max` calls are in flight; true when taken.
    pub fn try_acquire(&self, max: Option<u32>) -> bool {
        let cap = max.unwrap_or(u32::MAX);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether a call fits under `max` now.
    pub fn has_room(&self, max: Option<u32>) -> bool {
        max.is_none_or(|m| self.in_flight() < m)
    }

    /// Records a call's outcome (failed or not) at `now_ms` in the error rate.
    pub fn observe_outcome(&self, ok: bool, now_ms: u64) {
        let before = self.error_at_ms.fetch_max(now_ms, Ordering::AcqRel);
        let elapsed = now_ms.saturating_sub(before);
        let x = if ok { 0.0 } else { 1.0 };
        let _ = self
            .error_rate
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let old = decayed(f64::from_bits(bits), elapsed);
                Some((old + EWMA_ALPHA * (x - old)).to_bits())
            });
    }

    /// Records a streamed call's time to its first chunk, at `now_ms`.
    pub fn observe_ttft(&self, ms: f64, now_ms: u64) {
        fold(&self.ttft_ms, ms.max(0.0));
        self.ttft_at_ms.fetch_max(now_ms, Ordering::AcqRel);
    }

    /// The time to first token, while observed within [`TTFT_STALE_MS`] of `now_ms`.
    pub fn fresh_ttft_ms(&self, now_ms: u64) -> Option<f64> {
        let at = self.ttft_at_ms.load(Ordering::Acquire);
        self.ttft_ms()
            .filter(|_| now_ms.saturating_sub(at) <= TTFT_STALE_MS)
    }

    /// Records a complete answer: `generating_ms` spent after the first token (streams),
    /// or the whole call (`full`), over `output_tokens`.
    pub fn observe_generation(&self, ms: f64, output_tokens: u64, full: bool) {
        if output_tokens == 0 {
            return;
        }
        let ms = if full {
            ms - self.ttft_ms().unwrap_or(0.0)
        } else {
            ms
        };
        fold(&self.ms_per_token, ms.max(0.0) / output_tokens as f64);
    }

    /// The moving average of the time to first token, once observed.
    pub fn ttft_ms(&self) -> Option<f64> {
        read(&self.ttft_ms)
    }

    /// The moving average of the time per output token, once observed.
    pub fn ms_per_token(&self) -> Option<f64> {
        read(&self.ms_per_token)
    }

    /// The moving average of the error rate at `now_ms` (decayed since its last call).
    pub fn error_rate(&self, now_ms: u64) -> f64 {
        let at = self.error_at_ms.load(Ordering::Acquire);
        decayed(
            read(&self.error_rate).unwrap_or(0.0),
            now_ms.saturating_sub(at),
        )
    }

    /// The expected latency of a call with `output_tokens`, once anything was observed.
    pub fn expected_ms(&self, output_tokens: u64) -> Option<f64> {
        match (self.ttft_ms(), self.ms_per_token()) {
            (None, None) => None,
            (t, p) => Some(t.unwrap_or(0.0) + p.unwrap_or(0.0) * output_tokens as f64),
        }
    }
}

/// One deployment as [`order`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub weight: f64,
    pub in_flight: u32,
    /// A call fits under its `max_concurrency` now.
    pub room: bool,
    /// Its breaker admits calls.
    pub healthy: bool,
    /// Expected latency of this call (`None`: never observed).
    pub expected_ms: Option<f64>,
    pub error_rate: f64,
}

/// The order in which to try `options`: the power-of-two-choices winner first, then the
/// rest by score (see the module docs). `draws` are two uniform numbers in [0, 1).
pub fn order(options: &[Candidate], draws: [f64; 2]) -> Vec<usize> {
    let known: Vec<f64> = options.iter().filter_map(|o| o.expected_ms).collect();
    let prior = if known.is_empty() {
        UNKNOWN_MS
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let score = |o: &Candidate| {
        let latency = o.expected_ms.unwrap_or(prior).max(1e-3);
        (f64::from(o.in_flight) + 1.0) * latency / (1.0 - o.error_rate.min(MAX_ERROR_RATE))
    };
    // Room and health first, then room, then the rest; each by score.
    let class = |o: &Candidate| match (o.room, o.healthy) {
        (true, true) => 0,
        (true, false) => 1,
        _ => 2,
    };
    let mut out: Vec<usize> = (0..options.len()).collect();
    out.sort_by(|&a, &b| {
        let (oa, ob) = (&options[a], &options[b]);
        class(oa)
            .cmp(&class(ob))
            .then(score(oa).total_cmp(&score(ob)))
            .then(a.cmp(&b))
    });
    let ready: Vec<usize> = out
        .iter()
        .copied()
        .filter(|&i| class(&options[i]) == 0)
        .collect();
    if ready.len() > 1 {
        let first = draw(options, &ready, draws[0]);
        let second = draw(options, &ready, draws[1]);
        let winner = if score(&options[second]) < score(&options[first]) {
            second
        } else {
            first
        };
        if let Some(pos) = out.iter().position(|&i| i == winner) {
            out.remove(pos);
            out.insert(0, winner);
        }
    }
    out
}

/// One of `among` drawn in proportion to its weight (`u` uniform in [0, 1)).
fn draw(options: &[Candidate], among: &[usize], u: f64) -> usize {
    let total: f64 = among.iter().map(|&i| options[i].weight.max(0.0)).sum();
    let mut left = u.clamp(0.0, 1.0) * total;
    for &i in among {
        left -= options[i].weight.max(0.0);
        if left < 0.0 {
            return i;
        }
    }
    among.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opt(in_flight: u32, expected: f64) -> Candidate {
        Candidate {
            weight: 1.0,
            in_flight,
            room: true,
            healthy: true,
            expected_ms: Some(expected),
            error_rate: 0.0,
        }
    }

    #[test]
    fn a_slot_is_never_taken_past_the_cap_and_comes_back() {
        let l = Load::default();
        assert!(l.try_acquire(Some(2)));
        assert!(l.try_acquire(Some(2)));
        assert!(!l.try_acquire(Some(2)));
        assert!(!l.has_room(Some(2)));
        l.release();
        assert!(l.has_room(Some(2)));
        assert!(l.try_acquire(Some(2)));
        assert_eq!(l.in_flight(), 2);
        l.release();
        l.release();
        l.release(); // one too many: stays at zero
        assert_eq!(l.in_flight(), 0);
        assert!(l.try_acquire(None));
    }

    #[test]
    fn the_averages_start_at_the_first_observation_then_move_a_fifth_of_the_way() {
        let l = Load::default();
        assert_eq!(l.expected_ms(100), None);
        l.observe_ttft(100.0, 0);
        assert_eq!(l.ttft_ms(), Some(100.0));
        l.observe_ttft(200.0, 0);
        assert_eq!(l.fresh_ttft_ms(TTFT_STALE_MS), l.ttft_ms());
        assert_eq!(l.fresh_ttft_ms(TTFT_STALE_MS + 1), None, "stale");
        assert!((l.ttft_ms().unwrap() - 120.0).abs() < 1e-9);
        // A full answer of 10 tokens in 320 ms: 200 ms of it after the first token.
        l.observe_generation(320.0, 10, true);
        assert!((l.ms_per_token().unwrap() - 20.0).abs() < 1e-9);
        assert!((l.expected_ms(5).unwrap() - 220.0).abs() < 1e-9);
        l.observe_outcome(false, 0);
        assert!((l.error_rate(0) - 0.2).abs() < 1e-9);
        l.observe_outcome(false, 0);
        assert!((l.error_rate(0) - 0.36).abs() < 1e-9);
        // Ten seconds without a call: half of it is forgotten.
        assert!((l.error_rate(ERROR_HALF_LIFE_MS) - 0.18).abs() < 1e-9);
        l.observe_outcome(true, ERROR_HALF_LIFE_MS);
        assert!((l.error_rate(ERROR_HALF_LIFE_MS) - 0.144).abs() < 1e-9);
    }

    #[test]
    fn the_less_loaded_of_two_equally_fast_deployments_goes_first() {
        let opts = [opt(5, 100.0), opt(0, 100.0)];
        for u in [0.1, 0.6] {
            assert_eq!(order(&opts, [u, 1.0 - u])[0], 1);
        }
        // Drawn twice, the busier one goes first anyway (its weight squared of the time).
        // (draws index the ready deployments in score order: both above 0.5 pick the busy one)
        assert_eq!(order(&opts, [0.6, 0.7])[0], 0);
        // A slower deployment wins when the faster one is busy enough.
        let opts = [opt(4, 100.0), opt(0, 300.0)];
        assert_eq!(order(&opts, [0.1, 0.9])[0], 1);
    }

    #[test]
    fn equally_fast_idle_deployments_share_the_traffic_by_weight() {
        let mut heavy = opt(0, 100.0);
        heavy.weight = 3.0;
        let opts = [heavy, opt(0, 100.0)];
        let grid = 200;
        let mut firsts = [0usize; 2];
        for a in 0..grid {
            for b in 0..grid {
                let u = |k: usize| (k as f64 + 0.5) / grid as f64;
                firsts[order(&opts, [u(a), u(b)])[0]] += 1;
            }
        }
        let share = firsts[0] as f64 / (grid * grid) as f64;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }

    #[test]
    fn full_and_cooling_down_deployments_come_last() {
        let mut full = opt(0, 10.0);
        full.room = false;
        let mut sick = opt(0, 10.0);
        sick.healthy = false;
        let opts = [full, sick, opt(3, 500.0)];
        assert_eq!(order(&opts, [0.5, 0.5]), vec![2, 1, 0]);
    }

    #[test]
    fn an_unobserved_deployment_is_expected_as_fast_as_its_peers() {
        let mut new = opt(0, 0.0);
        new.expected_ms = None;
        // Peers average 200 ms and are busy: the new one goes first.
        let opts = [opt(2, 100.0), opt(2, 300.0), new];
        assert_eq!(order(&opts, [0.0, 0.99])[0], 2);
    }

    proptest! {
        #[test]
        fn the_order_is_a_permutation_led_by_a_ready_deployment_when_there_is_one(
            spec in proptest::collection::vec(
                (0.1f64..5.0, 0u32..20, any::<bool>(), any::<bool>(),
                 proptest::option::of(1.0f64..5000.0), 0.0f64..1.0),
                1..12),
            a in 0.0f64..1.0, b in 0.0f64..1.0,
        ) {
            let opts: Vec<Candidate> = spec
                .iter()
                .map(|&(weight, in_flight, room, healthy, expected_ms, error_rate)| Candidate {
                    weight, in_flight, room, healthy, expected_ms, error_rate,
                })
                .collect();
            let o = order(&opts, [a, b]);
            let mut sorted = o.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..opts.len()).collect::<Vec<_>>());
            if opts.iter().any(|x| x.room && x.healthy) {
                prop_assert!(opts[o[0]].room && opts[o[0]].healthy);
            }
        }

        #[test]
        fn concurrent_slots_never_exceed_the_cap(cap in 1u32..8, takes in 0usize..40) {
            let l = Load::default();
            let taken = (0..takes).filter(|_| l.try_acquire(Some(cap))).count();
            prop_assert_eq!(taken, takes.min(cap as usize));
            prop_assert!(l.in_flight() <= cap);
        }
    }
}
