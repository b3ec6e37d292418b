//! The dashboard: `GET /v1/stats`, a JSON report of what this instance is doing, and
//! `GET /dashboard`, one self-contained page that draws it (no CDN, no external asset:
//! it works offline). The page polls the report every two seconds.
//!
//! The report (documented in the README, "Dashboard") joins:
//! * the live statistics ([`crate::stats`]);
//! * the current configuration's models, with their cooldowns (breakers);
//! * the virtual keys' spend against their budgets (`auth: {mode: keys}`);
//! * the router's frontier on recent traffic, with the configured policy's point.

use serde_json::{json, Value};

use crate::state::Gateway;
use crate::stats::{self, Point};

/// The page (HTML, CSS and script in one file).
pub const PAGE: &str = include_str!("../assets/dashboard.html");

/// Keys listed in the report at most.
const MAX_KEYS: usize = 200;

/// The `GET /v1/stats` report at `now_unix_ms`.
pub async fn report(gw: &Gateway, now_unix_ms: u64) -> Value {
    let names: &[String] = &gw.names;
    let snap = gw.stats.snapshot(now_unix_ms / 1000, &gw.router_id, names);
    let prices: Vec<(f64, f64)> = gw
        .upstreams
        .iter()
        .map(|u| (u.price.input_per_mtok, u.price.output_per_mtok))
        .collect();
    let reference = stats::reference_model(
        &snap.reservoir,
        &prices.iter().map(|(i, o)| i + o).collect::<Vec<_>>(),
    );
    let totals = &snap.totals;
    let reference_cost = reference.and_then(|r| prices.get(r)).map(|(i, o)| {
        (totals.prompt_tokens as f64 * i + totals.completion_tokens as f64 * o) / 1e6
    });
    let rate = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
    let now = gw.now_ms();
    let models: Vec<Value> = gw
        .upstreams
        .iter()
        .map(|u| {
            let sums = snap
                .per_model
                .iter()
                .find(|(n, _)| *n == u.name)
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            json!({
                "name": u.name,
                "price": {"input_per_mtok": u.price.input_per_mtok,
                          "output_per_mtok": u.price.output_per_mtok},
                "cooling_down": u.breaker.is_open(now),
                "requests": sums.requests,
                "spend_usd": sums.spend_usd,
                "quota_skips": sums.quota_skips,
                "budget_skips": sums.budget_skips,
            })
        })
        .collect();
    // A key store that does not answer leaves the rest of the report standing.
    let keys = match gw.keys.get() {
        Some(_) => match crate::pipeline::budget::usages(gw, MAX_KEYS).await {
            Ok(k) => json!(k),
            Err(e) => json!({"error": e.to_string()}),
        },
        None => Value::Null,
    };
    let point = |p: Point| json!({"quality": p.quality, "cost_usd": p.cost_usd});
    let samples = &snap.reservoir;
    let frontier = (!samples.is_empty()).then(|| {
        let operating = match gw.config.router.policy {
            routewise_router::Policy::Lambda(l) => {
                let p = stats::at_lambda(samples, l);
                json!({"lambda": l, "quality": p.quality, "cost_usd": p.cost_usd})
            }
            _ => Value::Null,
        };
        json!({
            "samples": samples.len(),
            "points": stats::frontier(samples).into_iter().map(|(l, p)| {
                json!({"lambda": l, "quality": p.quality, "cost_usd": p.cost_usd})
            }).collect::<Vec<_>>(),
            "singles": stats::singles(samples, names.len()).into_iter().zip(names)
                .map(|(p, n)| json!({"model": n, "point": point(p)})).collect::<Vec<_>>(),
            "operating": operating,
        })
    });
    json!({
        "now_unix_ms": now_unix_ms,
        "uptime_s": now / 1000,
        "config": {"version": gw.version, "generation": gw.generation,
                   "policy": gw.config.router.policy, "router": gw.decider.describe()},
        "window_s": stats::WINDOW_S,
        "totals": {
            "requests": totals.requests,
            "errors": totals.errors,
            "spend_usd": totals.spend_usd,
            "reference_model": reference.and_then(|r| names.get(r)),
            "reference_cost_usd": reference_cost,
            "savings_usd": reference_cost.map(|c| c - totals.spend_usd),
            "cache_hits": totals.cache_hits,
            "cache_hit_rate": rate(totals.cache_hits, totals.requests),
            "cascades": {"accepted": totals.cascades_accepted,
                         "escalated": totals.cascades_escalated},
            "cascade_accept_rate": rate(totals.cascades_accepted,
                                        totals.cascades_accepted + totals.cascades_escalated),
            "quota_skips": totals.quota_skips,
            "budget_skips": totals.budget_skips,
        },
        "series": snap.series,
        "models": models,
        "keys": keys,
        "recent": snap.recent,
        "frontier": frontier,
    })
}
