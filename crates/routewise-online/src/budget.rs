//! Spend budgets per virtual key: reserve the worst case before a model is called, settle
//! to the real cost after, release on failure. Pure logic (no I/O): the periods, and the
//! [`Account`] of one key in one period, which the stores ([`crate::store::budget`]) keep
//! atomically (behind a mutex locally, in one Lua script in Redis).
//!
//! Why it cannot leak (LiteLLM's budgets were skipped on fallbacks and overrun under
//! concurrency): every upstream call, fallbacks and cascade calls included, reserves
//! before it starts, and a reservation is refused unless `spent + reserved + amount <=
//! budget`. Concurrent requests see each other's reservations, so their sum stays within
//! the budget. Spend exceeds the budget only when calls cost more than they reserved (an
//! upstream that bills past `max_tokens`, or prices that changed): by at most the sum of
//! those calls' excesses.
//! A reservation never settled (the process crashed) expires after [`RESERVATION_TTL_MS`],
//! so nothing stays blocked after a restart.

use serde::{Deserialize, Serialize};

/// How long a reservation holds without being settled or released.
pub const RESERVATION_TTL_MS: u64 = 10 * 60 * 1000;

/// A budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// `[start, end)` in Unix milliseconds of the period holding `now_ms` (weeks start on
    /// Monday, months on the 1st, at 00:00 UTC).
    pub fn bounds(self, now_ms: u64) -> (u64, u64) {
        const DAY: u64 = 86_400_000;
        let day = now_ms / DAY;
        match self {
            Period::Day => (day * DAY, (day + 1) * DAY),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday-based weeks start 3 days earlier.
                let w = (day + 3) / 7;
                ((w * 7).saturating_sub(3) * DAY, (w * 7 + 4) * DAY)
            }
            Period::Month => {
                let (y, m) = civil_month(day);
                let start = days_from_civil(y, m);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start * DAY, days_from_civil(ny, nm) * DAY)
            }
        }
    }
}

/// `2026-12-01T00:00:00Z` for Unix milliseconds (whole seconds, UTC).
pub fn rfc3339(ms: u64) -> String {
    let day = ms / 86_400_000;
    let (y, m) = civil_month(day);
    let d = day - days_from_civil(y, m) + 1;
    let s = (ms / 1000) % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The (year, month) of a day count since 1970-01-01 (Hinnant's civil-from-days).
fn civil_month(days: u64) -> (i64, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// Days since 1970-01-01 of the 1st of (year, month).
fn days_from_civil(y: i64, m: u32) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468).max(0) as u64
}

/// A key's request rate limits: requests and tokens per minute, as token buckets (full
/// at the start, refilled continuously: `rpm / 60` requests and `tpm / 60` tokens a
/// second). A request takes one request and its estimated tokens (prompt plus
/// `max_tokens`, as providers count them) from both, or from neither.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The request's estimated tokens.
    pub tokens: u64,
}

/// The two buckets of one key.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Buckets {
    pub requests: f64,
    pub tokens: f64,
    /// When they were last refilled (`None`: never used, full).
    pub at_ms: Option<u64>,
}

/// A request over a key's rate: which limit, and when it would fit.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the {limit} limit of {per_minute} a minute is reached; retry in {retry_after_ms} ms")]
pub struct RateLimited {
    /// `rpm` or `tpm`.
    pub limit: &'static str,
    pub per_minute: u64,
    pub retry_after_ms: u64,
    /// The request is larger than the whole `tpm`: it never fits.
    pub never: bool,
}

impl Buckets {
    /// The levels at `now_ms` (refilled since the last use; full before the first).
    fn levels(&self, rate: &Rate, now_ms: u64) -> (Option<f64>, Option<f64>) {
        let since = self.at_ms.map(|t| now_ms.saturating_sub(t));
        let fill = |level: f64, per_minute: u64| match since {
            None => per_minute as f64,
            Some(ms) => (level + per_minute as f64 * ms as f64 / 60_000.0).min(per_minute as f64),
        };
        (
            rate.rpm.map(|r| fill(self.requests, r)),
            rate.tpm.map(|t| fill(self.tokens, t)),
        )
    }

    /// Refills to `now_ms`, then lowers the levels to at most `requests` and `tokens`
    /// (what an upstream says remains).
    pub fn lower_to(
        &mut self,
        rate: &Rate,
        now_ms: u64,
        requests: Option<f64>,
        tokens: Option<f64>,
    ) {
        let (r, t) = self.levels(rate, now_ms);
        self.requests = r.map_or(0.0, |l| requests.map_or(l, |x| l.min(x.max(0.0))));
        self.tokens = t.map_or(0.0, |l| tokens.map_or(l, |x| l.min(x.max(0.0))));
        self.at_ms = Some(now_ms);
    }

    /// Puts back one request and `tokens` (a take for a call that was not made).
    pub fn give_back(&mut self, rate: &Rate, tokens: u64) {
        if let Some(r) = rate.rpm {
            self.requests = (self.requests + 1.0).min(r as f64);
        }
        if let Some(t) = rate.tpm {
            self.tokens = (self.tokens + tokens as f64).min(t as f64);
        }
    }

    /// Takes one request and `rate.tokens` tokens at `now_ms`, or refuses (taking nothing).
    /// A request larger than the whole `tpm` is refused for good (`never`).
    pub fn take(&mut self, rate: &Rate, now_ms: u64) -> Result<(), RateLimited> {
        let (requests, tokens) = self.levels(rate, now_ms);
        let wait = |level: f64, need: f64, per_minute: u64| {
            ((need - level) * 60_000.0 / per_minute.max(1) as f64).ceil() as u64
        };
        if let (Some(level), Some(r)) = (requests, rate.rpm) {
            if level < 1.0 {
                return Err(RateLimited {
                    limit: "rpm",
                    per_minute: r,
                    retry_after_ms: wait(level, 1.0, r),
                    never: false,
                });
            }
        }
        if let (Some(level), Some(t)) = (tokens, rate.tpm) {
            let need = rate.tokens as f64;
            if level < need {
                let never = need > t as f64;
                return Err(RateLimited {
                    limit: "tpm",
                    per_minute: t,
                    retry_after_ms: if never { 60_000 } else { wait(level, need, t) },
                    never,
                });
            }
        }
        self.requests = requests.map_or(0.0, |l| l - 1.0);
        self.tokens = tokens.map_or(0.0, |l| l - rate.tokens as f64);
        self.at_ms = Some(now_ms);
        Ok(())
    }
}

/// Why a call may not be made.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Budget(#[from] Exceeded),
    #[error(transparent)]
    Rate(#[from] RateLimited),
}

/// One key's spend in one period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Account {
    /// Settled spend, USD.
    pub spent: f64,
    /// Open reservations: (id, amount, expires_ms).
    pub open: Vec<(u64, f64, u64)>,
}

/// A reservation refused: what the key has left.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the key's budget of ${budget:.4} for this {period} is spent (${spent:.4} spent, ${reserved:.4} reserved by calls in flight; this call may cost up to ${amount:.4})", period = period.name())]
pub struct Exceeded {
    pub budget: f64,
    pub spent: f64,
    pub reserved: f64,
    pub amount: f64,
    pub period: Period,
}

impl Account {
    /// What the open reservations hold.
    pub fn reserved(&self) -> f64 {
        self.open.iter().map(|&(_, a, _)| a).sum()
    }

    /// Drops reservations expired at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        self.open.retain(|&(_, _, exp)| exp > now_ms);
    }

    /// Reserves `amount` as reservation `id` if it fits in `budget`.
    pub fn reserve(
        &mut self,
        id: u64,
        amount: f64,
        budget: f64,
        period: Period,
        now_ms: u64,
    ) -> Result<(), Exceeded> {
        self.expire(now_ms);
        let reserved = self.reserved();
        if self.spent + reserved + amount > budget {
            return Err(Exceeded {
                budget,
                spent: self.spent,
                reserved,
                amount,
                period,
            });
        }
        self.open.push((id, amount, now_ms + RESERVATION_TTL_MS));
        Ok(())
    }

    /// Closes reservation `id` and adds `cost` (`None`: a release, nothing spent). A cost
    /// is added even when its reservation has expired: the money was spent.
    pub fn settle(&mut self, id: u64, cost: Option<f64>) {
        self.open.retain(|&(r, _, _)| r != id);
        if let Some(c) = cost.filter(|c| c.is_finite() && *c > 0.0) {
            self.spent += c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn periods_start_at_midnight_monday_and_the_first() {
        // 2026-11-27 (a Friday) 15:00 UTC.
        let now = 1_795_791_600_000;
        let (s, e) = Period::Day.bounds(now);
        assert_eq!((s % DAY, e - s), (0, DAY));
        assert!(s <= now && now < e);
        // The Monday before: 2026-11-23 00:00 UTC.
        assert_eq!(
            Period::Week.bounds(now),
            (1_795_392_000_000, 1_795_392_000_000 + 7 * DAY)
        );
        // 2026-11-01 to 2026-12-01.
        assert_eq!(
            Period::Month.bounds(now),
            (1_793_491_200_000, 1_796_083_200_000)
        );
        // February of a leap year has 29 days.
        let feb = Period::Month.bounds(1_709_251_200_000 - 1); // 2024-02-29 23:59:59.999
        assert_eq!((feb.1 - feb.0) / DAY, 29);
        // Every day of 400 years maps into its own month's bounds.
        for d in (0..146_097u64).step_by(13) {
            let t = d * DAY + 12 * 3_600_000;
            let (s, e) = Period::Month.bounds(t);
            assert!(
                s <= t && t < e && (28..=31).contains(&((e - s) / DAY)),
                "day {d}"
            );
        }
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_083_200_000), "2026-12-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199_000), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn reservations_bound_spend_and_expire() {
        let mut a = Account::default();
        for id in 0..10 {
            a.reserve(id, 1.0, 10.0, Period::Day, 0).unwrap();
        }
        let e = a.reserve(10, 1.0, 10.0, Period::Day, 0).unwrap_err();
        assert_eq!((e.reserved, e.spent), (10.0, 0.0));
        a.settle(0, Some(0.25));
        a.settle(1, None);
        assert_eq!(a.spent, 0.25);
        assert!((a.reserved() - 8.0).abs() < 1e-12);
        a.reserve(11, 1.5, 10.0, Period::Day, 0).unwrap();
        // Crashed calls' reservations are gone after the TTL.
        a.expire(RESERVATION_TTL_MS + 1);
        assert!(a.open.is_empty());
        a.settle(5, Some(1.0)); // late settle of an expired reservation still counts
        assert_eq!(a.spent, 1.25);
    }

    #[test]
    fn buckets_refill_over_a_minute_and_refuse_whole() {
        let rate = Rate {
            rpm: Some(2),
            tpm: Some(1000),
            tokens: 400,
        };
        let mut b = Buckets::default();
        assert!(b.take(&rate, 0).is_ok());
        assert!(b.take(&rate, 0).is_ok());
        let e = b.take(&rate, 0).unwrap_err();
        assert_eq!((e.limit, e.retry_after_ms), ("rpm", 30_000));
        // Half a minute later one request is back; the tokens (200 left + 500) too.
        assert!(b.take(&rate, 30_000).is_ok());
        let e = b.take(&Rate { rpm: None, ..rate }, 30_000).unwrap_err();
        assert_eq!(e.limit, "tpm");
        assert_eq!(e.retry_after_ms, 6_000); // 300 tokens short at 1000 a minute
                                             // A refusal takes nothing.
        assert!(b
            .take(
                &Rate {
                    rpm: None,
                    tokens: 300,
                    ..rate
                },
                30_000
            )
            .is_ok());
        // Larger than the whole minute: never fits.
        let e = b
            .take(
                &Rate {
                    rpm: None,
                    tokens: 5_000,
                    ..rate
                },
                10_000_000,
            )
            .unwrap_err();
        assert!(e.never && e.retry_after_ms == 60_000);
        // Given back, a take is undone; lowered, the levels follow the upstream.
        let mut b = Buckets::default();
        b.take(&rate, 0).unwrap();
        b.give_back(&rate, 400);
        assert_eq!((b.requests, b.tokens), (2.0, 1000.0));
        b.lower_to(&rate, 0, Some(0.0), None);
        assert_eq!(b.take(&rate, 0).unwrap_err().limit, "rpm");
    }

    proptest::proptest! {
        #[test]
        fn spend_never_passes_the_budget_when_calls_cost_at_most_their_reservation(
            ops in proptest::collection::vec((0.0f64..2.0, 0.0f64..1.0, proptest::bool::ANY), 1..200),
        ) {
            let mut a = Account::default();
            let budget = 10.0;
            let mut open = Vec::new();
            for (i, (amount, frac, settle_now)) in ops.iter().enumerate() {
                if a.reserve(i as u64, *amount, budget, Period::Month, 0).is_ok() {
                    open.push((i as u64, amount * frac));
                }
                if *settle_now {
                    if let Some((id, cost)) = open.pop() {
                        a.settle(id, Some(cost));
                    }
                }
                proptest::prop_assert!(a.spent + a.reserved() <= budget + 1e-9);
            }
        }
    }
}
