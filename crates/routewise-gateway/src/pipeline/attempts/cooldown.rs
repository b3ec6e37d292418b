//! Per-model cooldown: a circuit breaker (closed / open / half-open), lock-free. Each
//! deployment has one too, read only as open or not ([`Breaker::is_open`]) to order a
//! model's deployments: once its cooldown ends, a deployment is back in the draw (no
//! single probe), and its next failure opens it again.
//!
//! * closed: requests go through; each failure counts, each success resets the count;
//! * open: after `failures` consecutive failures the model is skipped for `cooldown_ms`;
//! * half-open: once the cooldown has passed, exactly one request is admitted as a probe;
//!   its success closes the breaker, its failure re-opens it for another period, and a
//!   probe abandoned without an outcome (client went away) lets the next request probe;
//! * a success only closes the breaker if its attempt started after the breaker last
//!   opened ([`Breaker::success_since`]): a slow success from before the failures must
//!   not re-admit a model that is failing now.
//!
//! The method is the classic circuit breaker (Nygard, *Release It!*, 2007). Time is
//! passed in as milliseconds on a monotonic clock, so this module does no I/O.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Whether a request may use a model now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed breaker: go.
    Yes,
    /// Half-open: go, as the single probe.
    Probe,
    /// Open (or a probe is in flight): skip this model.
    No,
}

/// One model's breaker.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// When the breaker last opened (0: never).
    opened_at_ms: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    /// A closed breaker that opens after `threshold` consecutive failures (>= 1).
    pub fn new(threshold: u32, cooldown_ms: u64) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            opened_at_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Decides whether a request at `now_ms` may use the model.
    pub fn admit(&self, now_ms: u64) -> Admit {
        if self.failures.load(Ordering::Acquire) < self.threshold {
            return Admit::Yes;
        }
        if now_ms < self.open_until_ms.load(Ordering::Acquire) {
            return Admit::No;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::No,
        }
    }

    /// Records a success: closes the breaker. Returns true when it had counted failures.
    pub fn success(&self) -> bool {
        let had_failures = self.failures.swap(0, Ordering::AcqRel) > 0;
        self.open_until_ms.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        had_failures
    }

    /// Records the success of an attempt that started at `started_ms`: closes the breaker
    /// unless it opened after the attempt started (then the success is stale and the
    /// breaker stays as it is). Returns true when it closed a breaker that had failures.
    pub fn success_since(&self, started_ms: u64) -> bool {
        let open = self.failures.load(Ordering::Acquire) >= self.threshold;
        if open && self.opened_at_ms.load(Ordering::Acquire) > started_ms {
            return false;
        }
        self.success()
    }

    /// Records a failure at `now_ms`; returns true when this failure opened the breaker
    /// (the `failures`-th in a row, or a failed probe).
    pub fn failure(&self, now_ms: u64) -> bool {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= self.threshold {
            self.opened_at_ms.store(now_ms.max(1), Ordering::Release);
            self.open_until_ms
                .store(now_ms.saturating_add(self.cooldown_ms), Ordering::Release);
        }
        n == self.threshold || (was_probe && n > self.threshold)
    }

    /// Releases a probe that ended with no outcome (cancelled).
    pub fn abandon_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// True while the breaker skips the model (open, or half-open with a probe in flight).
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.failures.load(Ordering::Acquire) >= self.threshold
            && (now_ms < self.open_until_ms.load(Ordering::Acquire)
                || self.probing.load(Ordering::Acquire))
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_admits_one_probe() {
        let b = Breaker::new(2, 1000);
        assert_eq!(b.admit(0), Admit::Yes);
        assert!(!b.failure(10));
        assert_eq!(b.admit(11), Admit::Yes);
        assert!(b.failure(20));
        assert!(!b.failure(21), "already open: not a new opening");
        assert_eq!(b.admit(500), Admit::No);
        assert!(b.is_open(500));
        // cooldown over: one probe, others still skip
        assert_eq!(b.admit(1021), Admit::Probe);
        assert_eq!(b.admit(1022), Admit::No);
        // probe fails: open again for a full period
        assert!(b.failure(1030), "a failed probe re-opens");
        assert_eq!(b.admit(1500), Admit::No);
        assert_eq!(b.admit(2030), Admit::Probe);
        b.success();
        assert_eq!(b.admit(2031), Admit::Yes);
        assert!(!b.is_open(2031));
        assert_eq!(b.consecutive_failures(), 0);
    }

    /// Regression (hardening issue, defect 6): a slow success that started before the
    /// model was cooled down re-admitted it (2 cooldowns within 3 s of a 30 s cooldown).
    #[test]
    fn regression_a_late_success_does_not_reopen_a_cooled_down_model() {
        let b = Breaker::new(2, 30_000);
        let slow_started = 100;
        b.failure(200);
        assert!(b.failure(300), "opened");
        assert!(!b.success_since(slow_started), "stale success");
        assert_eq!(b.admit(400), Admit::No, "still cooling down");
        // A probe after the cooldown started after the opening: it closes the breaker.
        assert_eq!(b.admit(30_400), Admit::Probe);
        assert!(b.success_since(30_400));
        assert_eq!(b.admit(30_401), Admit::Yes);
        // Without an opening in between, an old success still closes as before.
        b.failure(40_000);
        assert!(b.success_since(1));
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn success_resets_the_count_and_abandoned_probe_is_released() {
        let b = Breaker::new(3, 100);
        b.failure(0);
        b.failure(0);
        b.success();
        assert!(!b.failure(1));
        assert_eq!(b.admit(2), Admit::Yes);
        b.failure(3);
        b.failure(4);
        assert_eq!(b.admit(200), Admit::Probe);
        b.abandon_probe();
        assert_eq!(b.admit(201), Admit::Probe);
    }
}
