//! Live statistics for the dashboard (`GET /v1/stats`, `GET /dashboard`): what this
//! instance answered over the last [`WINDOW_S`] seconds, second by second, its totals
//! since start, the last [`RECENT`] decisions with their explanation, and the router's
//! quality-cost frontier on recent traffic.
//!
//! Fed off the request path: the decision log's writer thread hands every decision record
//! to [`Stats::observe`] ([`crate::pipeline::decision_log`]), whether or not the log level
//! writes it. The request only queues the record, as it does for the log.
//!
//! * **Savings.** The reference is the best single model, meaning the served model with
//!   the highest mean predicted score over the recent decisions. It falls back to the
//!   most expensive model until a decision was made. Its cost is the tokens the answers
//!   used, at its prices, assuming it would have written as many tokens as the model that
//!   answered. Cache hits are not credited, so the savings are a lower bound.
//! * **The frontier.** It is the loaded router's own predictions over the last
//!   [`RESERVOIR`] routed requests of the current configuration. For each lambda, each
//!   request takes the model with the best predicted `score - lambda * cost`, and the mean
//!   predicted score and cost are reported, beside each single model's means. This is the
//!   trade-off `router.policy` picks from, measured on this traffic, not on a benchmark.
//!   The operating point is the configured lambda's place on it.
//!
//! Pure aggregation behind one mutex: the writer thread and the stats handler take it.
//! The handler takes it for microseconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// Milliseconds since the Unix epoch (the statistics' clock).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds of per-second history kept.
pub const WINDOW_S: u64 = 300;
/// Decisions listed in `recent`.
pub const RECENT: usize = 50;
/// Routed requests the frontier is computed on.
pub const RESERVOIR: usize = 512;

/// One decision as the statistics see it (built on the decision log's writer thread).
#[derive(Debug, Clone)]
pub struct Observation {
    pub unix_ms: u64,
    /// The answering model (`None`: every attempt failed, or a client error).
    pub model: Option<String>,
    pub status: u16,
    /// The answer broke off upstream after its first chunk (a stream answered 200).
    pub broken: bool,
    /// Realised cost of the whole request (`None`: unknown, no usage).
    pub cost_usd: Option<f64>,
    /// The same cost by the model that was called: a cascade's tier calls and the answer.
    pub costs: Vec<(String, f64)>,
    /// Upstream usage (prompt, completion tokens).
    pub usage: Option<(u64, u64)>,
    pub cached: bool,
    /// `accepted` / `escalated` for a cascaded request.
    pub cascade: Option<&'static str>,
    /// Candidates passed over without a call: (model, `quota` / `budget`).
    pub skipped: Vec<(String, &'static str)>,
    /// Predicted score and cost of every served model (names in catalog order), when a
    /// router decided.
    pub predictions: Option<Predicted>,
    pub recent: Recent,
}

/// A routed request's predictions over the served models.
#[derive(Debug, Clone)]
pub struct Predicted {
    /// Which router made them: the artifact's digest (or the configuration's version
    /// without one), so that a reload to another router starts the frontier afresh.
    pub router: Arc<str>,
    pub names: Arc<[String]>,
    pub scores: Vec<f64>,
    pub costs: Vec<f64>,
}

/// A decision in the `recent` list: its explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Recent {
    pub unix_ms: u64,
    pub decision_id: String,
    pub key: Option<String>,
    pub requested: String,
    pub reason: &'static str,
    pub chosen: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub cost_usd: Option<f64>,
    pub elapsed_ms: f64,
    pub route: Option<String>,
    pub skipped: Option<String>,
    pub cascade: Option<&'static str>,
    /// The first models of the ranking: (model, predicted score, predicted cost).
    pub predictions: Vec<RecentPrediction>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentPrediction {
    pub model: String,
    pub score: f64,
    pub cost_usd: f64,
}

/// Sums over a set of requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sums {
    pub requests: u64,
    pub errors: u64,
    pub spend_usd: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
    pub cascades_accepted: u64,
    pub cascades_escalated: u64,
    pub quota_skips: u64,
    pub budget_skips: u64,
}

impl Sums {
    fn add(&mut self, o: &Observation) {
        self.requests += 1;
        self.errors += u64::from(o.status >= 400 || o.broken);
        self.spend_usd += o.cost_usd.filter(|c| c.is_finite()).unwrap_or(0.0);
        if let Some((p, c)) = o.usage {
            self.prompt_tokens += p;
            self.completion_tokens += c;
        }
        self.cache_hits += u64::from(o.cached);
        match o.cascade {
            Some("accepted") => self.cascades_accepted += 1,
            Some(_) => self.cascades_escalated += 1,
            None => {}
        }
        for (_, why) in &o.skipped {
            match *why {
                "quota" => self.quota_skips += 1,
                _ => self.budget_skips += 1,
            }
        }
    }
}

/// One second of traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Unix seconds.
    pub t: u64,
    #[serde(flatten)]
    pub sums: Sums,
    /// Requests answered per model.
    pub models: Vec<(String, u64)>,
}

/// A served model's means over the reservoir, or a point of the frontier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Mean predicted score.
    pub quality: f64,
    /// Mean predicted cost per request, USD.
    pub cost_usd: f64,
}

#[derive(Debug, Default)]
struct Inner {
    seconds: VecDeque<Second>,
    totals: Sums,
    per_model: Vec<(String, ModelSums)>,
    recent: VecDeque<Recent>,
    reservoir: VecDeque<Predicted>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelSums {
    pub requests: u64,
    pub spend_usd: f64,
    pub quota_skips: u64,
    pub budget_skips: u64,
}

/// The statistics of one instance (shared by every configuration a reload installs).
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

/// What [`Stats::snapshot`] answers.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub totals: Sums,
    pub per_model: Vec<(String, ModelSums)>,
    pub series: Vec<Second>,
    pub recent: Vec<Recent>,
    /// The routed requests of the current model set in the reservoir, oldest first.
    #[serde(skip)]
    pub reservoir: Vec<Predicted>,
}

impl Inner {
    /// The second a record at `unix_ms` counts in: a new one when it is later than the
    /// newest, else the newest (a record that arrives late, the writer batches, counts
    /// there). Seconds older than the window go.
    fn second(&mut self, unix_ms: u64) -> &mut Second {
        let t = unix_ms / 1000;
        if self.seconds.back().is_none_or(|b| b.t < t) {
            self.seconds.push_back(Second {
                t,
                sums: Sums::default(),
                models: Vec::new(),
            });
        }
        while self.seconds.front().is_some_and(|f| f.t + WINDOW_S <= t) {
            self.seconds.pop_front();
        }
        // Never empty: a second was pushed above unless a later one was already there.
        let last = self.seconds.len() - 1;
        &mut self.seconds[last]
    }
}

impl Stats {
    /// Counts one decision.
    pub fn observe(&self, o: Observation) {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let b = s.second(o.unix_ms);
        b.sums.add(&o);
        if let Some(m) = &o.model {
            bump(&mut b.models, m, 1);
        }
        s.totals.add(&o);
        if let Some(m) = &o.model {
            entry(&mut s.per_model, m).requests += 1;
        }
        for (m, c) in &o.costs {
            if c.is_finite() {
                entry(&mut s.per_model, m).spend_usd += c;
            }
        }
        for (m, why) in &o.skipped {
            let e = entry(&mut s.per_model, m);
            match *why {
                "quota" => e.quota_skips += 1,
                _ => e.budget_skips += 1,
            }
        }
        if let Some(p) = o.predictions {
            if s.reservoir.len() == RESERVOIR {
                s.reservoir.pop_front();
            }
            s.reservoir.push_back(p);
        }
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back(o.recent);
    }

    /// Counts a request refused before it was routed (a parse error, a blocking rule, a
    /// key refused, load shed): it has no decision, only a status.
    pub fn rejected(&self, unix_ms: u64, status: u16) {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let error = u64::from(status >= 400);
        let b = s.second(unix_ms);
        b.sums.requests += 1;
        b.sums.errors += error;
        s.totals.requests += 1;
        s.totals.errors += error;
    }

    /// Everything observed, at `now_unix_s`: the last [`WINDOW_S`] seconds (seconds
    /// without traffic left out), the recent decisions newest first, and the reservoir's
    /// samples of `router` over `models` (the current configuration's).
    pub fn snapshot(&self, now_unix_s: u64, router: &str, models: &[String]) -> Snapshot {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Snapshot {
            totals: s.totals.clone(),
            per_model: s.per_model.clone(),
            series: s
                .seconds
                .iter()
                .filter(|b| b.t + WINDOW_S > now_unix_s)
                .cloned()
                .collect(),
            recent: s.recent.iter().rev().cloned().collect(),
            reservoir: s
                .reservoir
                .iter()
                .filter(|p| &*p.router == router && p.names.as_ref() == models)
                .cloned()
                .collect(),
        }
    }
}

fn bump(counts: &mut Vec<(String, u64)>, name: &str, by: u64) {
    match counts.iter_mut().find(|(n, _)| n == name) {
        Some((_, c)) => *c += by,
        None => counts.push((name.to_string(), by)),
    }
}

fn entry<'a>(per_model: &'a mut Vec<(String, ModelSums)>, name: &str) -> &'a mut ModelSums {
    let i = match per_model.iter().position(|(n, _)| n == name) {
        Some(i) => i,
        None => {
            per_model.push((name.to_string(), ModelSums::default()));
            per_model.len() - 1
        }
    };
    &mut per_model[i].1
}

/// Each model's mean predicted score and cost over `samples` (all over the same models).
pub fn singles(samples: &[Predicted], n_models: usize) -> Vec<Point> {
    let n = samples.len().max(1) as f64;
    (0..n_models)
        .map(|m| Point {
            quality: samples.iter().map(|p| p.scores[m]).sum::<f64>() / n,
            cost_usd: samples.iter().map(|p| p.costs[m]).sum::<f64>() / n,
        })
        .collect()
}

/// The mean predicted score and cost when every sample takes the model with the best
/// `score - lambda * cost` (ties: the first).
pub fn at_lambda(samples: &[Predicted], lambda: f64) -> Point {
    let n = samples.len().max(1) as f64;
    let (mut q, mut c) = (0.0, 0.0);
    for p in samples {
        let best = (0..p.scores.len()).fold(None::<(usize, f64)>, |best, m| {
            let u = p.scores[m] - lambda * p.costs[m];
            match best {
                Some((_, bu)) if bu >= u => best,
                _ => Some((m, u)),
            }
        });
        if let Some((m, _)) = best {
            q += p.scores[m];
            c += p.costs[m];
        }
    }
    Point {
        quality: q / n,
        cost_usd: c / n,
    }
}

/// The frontier over a log grid of lambdas (0, then 10^-1 .. 10^7, four per decade),
/// with each point's lambda; points that repeat the previous one are left out.
pub fn frontier(samples: &[Predicted]) -> Vec<(f64, Point)> {
    let mut out: Vec<(f64, Point)> = Vec::new();
    let grid = std::iter::once(0.0).chain((-4..=28).map(|k| 10f64.powf(k as f64 / 4.0)));
    for lambda in grid {
        let p = at_lambda(samples, lambda);
        if out.last().is_none_or(|(_, last)| *last != p) {
            out.push((lambda, p));
        }
    }
    out
}

/// The index of the best single model: the highest mean predicted score over `samples`;
/// with none, the most expensive by `prices` (input + output per Mtok).
pub fn reference_model(samples: &[Predicted], prices: &[f64]) -> Option<usize> {
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .fold(None::<(usize, f64)>, |b, (i, &x)| match b {
                Some((_, bx)) if bx >= x => b,
                _ => Some((i, x)),
            })
            .map(|(i, _)| i)
    };
    if samples.is_empty() {
        return argmax(prices);
    }
    let means: Vec<f64> = singles(samples, prices.len())
        .iter()
        .map(|p| p.quality)
        .collect();
    argmax(&means)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Arc<[String]> {
        vec!["big".to_string(), "small".to_string()].into()
    }

    fn predicted(scores: [f64; 2], costs: [f64; 2]) -> Predicted {
        Predicted {
            router: "r".into(),
            names: names(),
            scores: scores.to_vec(),
            costs: costs.to_vec(),
        }
    }

    fn obs(unix_ms: u64, model: &str, cost: f64) -> Observation {
        Observation {
            unix_ms,
            model: Some(model.to_string()),
            status: 200,
            broken: false,
            cost_usd: Some(cost),
            costs: vec![(model.to_string(), cost)],
            usage: Some((10, 5)),
            cached: false,
            cascade: None,
            skipped: vec![("big".to_string(), "quota")],
            predictions: Some(predicted([0.9, 0.6], [0.01, 0.001])),
            recent: Recent {
                unix_ms,
                decision_id: format!("d{unix_ms}"),
                key: None,
                requested: "auto".into(),
                reason: "routed",
                chosen: Some(model.to_string()),
                model: Some(model.to_string()),
                status: 200,
                cost_usd: Some(cost),
                elapsed_ms: 1.0,
                route: None,
                skipped: None,
                cascade: None,
                predictions: Vec::new(),
            },
        }
    }

    #[test]
    fn seconds_totals_and_recent_add_up() {
        let stats = Stats::default();
        stats.observe(obs(1_000_000, "small", 0.001));
        stats.observe(obs(1_000_400, "small", 0.001));
        stats.observe(obs(1_001_000, "big", 0.01));
        let snap = stats.snapshot(1_001, "r", &names());
        assert_eq!(snap.series.len(), 2);
        assert_eq!(snap.series[0].sums.requests, 2);
        assert_eq!(snap.series[0].models, vec![("small".to_string(), 2)]);
        assert_eq!(snap.series[1].models, vec![("big".to_string(), 1)]);
        assert_eq!(snap.totals.requests, 3);
        assert_eq!(snap.totals.prompt_tokens, 30);
        assert_eq!(snap.totals.quota_skips, 3);
        assert!((snap.totals.spend_usd - 0.012).abs() < 1e-12);
        assert_eq!(snap.recent[0].decision_id, "d1001000", "newest first");
        assert_eq!(snap.reservoir.len(), 3);
        let big = &snap.per_model.iter().find(|(n, _)| n == "big").unwrap().1;
        assert_eq!((big.requests, big.quota_skips), (1, 3));
        // Seconds older than the window are gone; another model set has no samples.
        stats.observe(obs((1_001 + WINDOW_S) * 1000, "small", 0.001));
        let snap = stats.snapshot(1_001 + WINDOW_S, "r", &["x".to_string()]);
        assert_eq!(snap.series.len(), 1);
        assert!(snap.reservoir.is_empty());
        assert_eq!(snap.totals.requests, 4);
        // Refusals count alike, and move the window as well.
        stats.rejected((1_001 + 2 * WINDOW_S) * 1000, 403);
        let snap = stats.snapshot(1_001 + 2 * WINDOW_S, "r", &names());
        assert_eq!(snap.series.len(), 1);
        assert_eq!(
            (snap.series[0].sums.requests, snap.series[0].sums.errors),
            (1, 1)
        );
        assert_eq!((snap.totals.requests, snap.totals.errors), (5, 1));
    }

    #[test]
    fn the_recent_list_and_the_reservoir_are_bounded() {
        let stats = Stats::default();
        for i in 0..(RESERVOIR as u64 + 10) {
            stats.observe(obs(1_000_000 + i, "small", 0.001));
        }
        let snap = stats.snapshot(1_000, "r", &names());
        assert_eq!(snap.recent.len(), RECENT);
        assert_eq!(snap.reservoir.len(), RESERVOIR);
    }

    #[test]
    fn the_frontier_runs_from_the_best_model_to_the_cheapest() {
        let samples = vec![
            predicted([0.9, 0.6], [0.01, 0.001]),
            predicted([0.8, 0.7], [0.01, 0.001]),
        ];
        let f = frontier(&samples);
        let close = |p: Point, q: f64, c: f64| {
            (p.quality - q).abs() < 1e-12 && (p.cost_usd - c).abs() < 1e-12
        };
        assert!(close(f[0].1, 0.85, 0.01), "{f:?}");
        assert!(close(f[f.len() - 1].1, 0.65, 0.001), "{f:?}");
        // In between: the second prompt moves first (it loses only 0.1 for 0.009 saved).
        assert!(f.iter().any(|(_, p)| close(*p, 0.8, 0.0055)), "{f:?}");
        // Cost never rises along the grid.
        assert!(f.windows(2).all(|w| w[1].1.cost_usd <= w[0].1.cost_usd));
        assert!(close(at_lambda(&samples, 20.0), 0.8, 0.0055));
        assert_eq!(reference_model(&samples, &[2.0, 1.0]), Some(0));
        assert_eq!(reference_model(&[], &[1.0, 2.0]), Some(1));
        let s = singles(&samples, 2);
        assert!(close(s[1], 0.65, 0.001));
    }
}
