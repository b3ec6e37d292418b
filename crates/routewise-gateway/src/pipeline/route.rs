//! Stage 3, routing: the decider (`Arc<dyn Decide>`: the offline engine, or the online
//! router) ranks every model for `model: auto`; a configured model name goes straight to
//! that model. The ranking minus the models whose context window is too small is the
//! fallback order ([`super::attempts::fallback::eligible`]).
//!
//! What stage 2's rules decided ([`super::rules::SignalTrace`]) applies here: a route's
//! policy replaces the request's and the config's; only the route's pool is ranked (and
//! fallen back through); a forced model goes first; in `router.mode: rules` a route's pool
//! is ordered cheapest first ([`routewise_signals::tiers`]). A model named directly that
//! the pool excludes is refused (403 `blocked_by_route`).
//!
//! Latency and energy as costs: under a lambda policy with a latency weight `mu` or an
//! energy weight `nu` (`router.mu` / `router.nu`, or the request's), the candidates are
//! ranked by `predicted score - lambda * predicted cost - mu * expected latency (s) - nu *
//! expected energy (Wh)` ([`rerank`]). A model's expected latency is an estimate: that of
//! its fastest observed deployment with room ([`crate::models::Upstream::expected_latency_s`],
//! from the live statistics, at the catalog's mean output tokens capped by `max_tokens`),
//! which the power of two choices usually but not always picks; a model not yet observed
//! is expected to be as fast as the mean of those observed (each at its own length). Its
//! energy is the prompt and expected output tokens times `energy_wh_per_mtok` (0 when not
//! configured). GreenServ (2025) weighs energy the same way; the latency term is the
//! "cost of waiting" of latency-aware routing. The ranking's first is then the policy's
//! choice ([`Routed::chosen`]: the decision log, the shadows and the pacer see it); a
//! learned router's logged propensity does not account for the reordering.

use routewise_router::{Decision, Policy, RouteRequest};

use crate::config::RouterMode;
use crate::error::ApiError;
use crate::models::ModelId;
use crate::pipeline::attempts::fallback;
use crate::pipeline::rules::SignalTrace;
use crate::request::ChatRequest;
use crate::state::Gateway;

/// Why these models are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The router chose (`model: auto`).
    Routed,
    /// The client named the model.
    Direct,
    /// The response cache answered.
    Cached,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Routed => "routed",
            Reason::Direct => "direct",
            Reason::Cached => "cache",
        }
    }
}

/// A routed request: the models to try, and why.
#[derive(Debug)]
pub struct Routed {
    pub reason: Reason,
    pub policy: Policy,
    /// The decision (`None` for a direct request unless predictions were asked for).
    pub decision: Option<Decision>,
    /// Models to try, best first, all fitting the context window.
    pub candidates: Vec<ModelId>,
    /// Whether the candidates are in the decision's order, by its policy (no forced
    /// model, no zero-data reorder, no exploration, no conversation kept on its model).
    pub by_policy: bool,
    /// Each model's latency and energy penalty (`mu * latency + nu * energy`, by catalog
    /// index) when the ranking weighed them, else empty.
    pub penalty: Vec<f64>,
}

impl Routed {
    /// Model `m`'s latency and energy penalty in this ranking (0 when none was weighed).
    pub fn penalty_of(&self, m: ModelId) -> f64 {
        self.penalty.get(m.index()).copied().unwrap_or(0.0)
    }

    /// The policy's choice (catalog index): the decision's, or, when latency and energy
    /// were weighed, the first of that ranking.
    pub fn chosen(&self) -> Option<usize> {
        let d = self.decision.as_ref()?;
        if self.penalty.is_empty() {
            return Some(d.chosen);
        }
        let by_utility = |m: usize| {
            d.scores.get(m).copied().unwrap_or(f64::NEG_INFINITY)
                - match self.policy {
                    Policy::Lambda(l) => l * d.costs.get(m).copied().unwrap_or(0.0),
                    _ => 0.0,
                }
                - self.penalty.get(m).copied().unwrap_or(0.0)
        };
        self.candidates
            .iter()
            .map(|m| m.index())
            .max_by(|&a, &b| by_utility(a).total_cmp(&by_utility(b)))
    }
}

impl Routed {
    /// Whether the router chose (a paced key's pacer observes these requests).
    pub fn observed(&self) -> bool {
        self.reason == Reason::Routed && self.decision.is_some()
    }
}

/// Routes a parsed request. `decide_direct` also runs the router for a named model
/// (to report predictions from `/v1/route`).
pub fn route(
    gw: &Gateway,
    req: &ChatRequest,
    decide_direct: bool,
    signals: Option<&SignalTrace>,
) -> Result<Routed, ApiError> {
    let rules = signals.map(|s| &s.outcome);
    let policy = rules
        .and_then(|o| o.policy)
        .or(req.preference)
        .unwrap_or(gw.config.router.policy);
    let needed = req.needed_tokens();
    let direct = if req.is_auto() {
        None
    } else {
        Some(
            gw.upstreams
                .by_name(&req.model)
                .ok_or_else(|| ApiError::ModelNotFound(req.model.clone()))?,
        )
    };
    let decision = (direct.is_none() || decide_direct).then(|| {
        gw.decider.decide(&RouteRequest {
            prompt: &req.prompt,
            input_tokens: u32::try_from(req.prompt_tokens).unwrap_or(u32::MAX),
            policy,
        })
    });
    if let (Some(m), Some(o)) = (direct, rules) {
        if !o.allows(m.index()) {
            return Err(ApiError::Blocked {
                code: "blocked_by_route",
                status: 403,
                message: format!(
                    "the model `{}` is outside the models the matched rules allow for this request",
                    req.model
                ),
                route: signals.and_then(|s| s.route_names(gw)),
            });
        }
    }
    if let Some(o) = rules {
        if o.allow.as_ref().is_some_and(|a| !a.iter().any(|&x| x)) {
            return Err(ApiError::Blocked {
                code: "blocked_by_route",
                status: 403,
                message: "the routes that matched this request leave no model to try".into(),
                route: signals.and_then(|s| s.route_names(gw)),
            });
        }
    }
    // Whether the candidates keep the order the policy gave (the zero-data mode orders by
    // tier, not by the policy's utility).
    let mut by_policy = direct.is_none()
        && gw.config.router.mode != RouterMode::Rules
        && decision
            .as_ref()
            .is_some_and(|d| !d.explored && d.reason != routewise_router::DecisionReason::Explored);
    let mut candidates: Vec<usize> = match (direct, &decision) {
        (Some(m), _) => fallback::eligible([m.index()], &gw.upstreams, needed),
        (None, Some(d)) => match rules {
            None => fallback::eligible(d.ranking.iter().copied(), &gw.upstreams, needed),
            Some(o) => {
                let mut pool: Vec<usize> =
                    d.ranking.iter().copied().filter(|&m| o.allows(m)).collect();
                if o.allow.is_some() && gw.config.router.mode == RouterMode::Rules {
                    routewise_signals::tiers::cheapest_first(&mut pool, &d.costs);
                }
                if let Some(f) = o.force.filter(|&f| o.allows(f)) {
                    pool.retain(|&m| m != f);
                    pool.insert(0, f);
                    by_policy = false;
                }
                fallback::eligible(pool, &gw.upstreams, needed)
            }
        },
        (None, None) => Vec::new(),
    };
    if candidates.is_empty() {
        return Err(ApiError::ContextTooLong { tokens: needed });
    }
    let (mu, nu) = (
        req.mu.unwrap_or(gw.config.router.mu),
        req.nu.unwrap_or(gw.config.router.nu),
    );
    let mut penalty = Vec::new();
    if let (true, Policy::Lambda(lambda), Some(d)) =
        (by_policy && (mu > 0.0 || nu > 0.0), policy, &decision)
    {
        penalty = penalties(gw, req, mu, nu);
        rerank(&mut candidates, &d.scores, &d.costs, lambda, &penalty);
    }
    Ok(Routed {
        reason: if direct.is_some() {
            Reason::Direct
        } else {
            Reason::Routed
        },
        policy,
        decision,
        candidates: candidates.into_iter().map(ModelId::from_index).collect(),
        by_policy,
        penalty,
    })
}

/// Each served model's `mu * expected latency + nu * expected energy` for `req`, by
/// catalog index (see the module docs).
fn penalties(gw: &Gateway, req: &ChatRequest, mu: f64, nu: f64) -> Vec<f64> {
    let output = |i: usize| {
        let mean = gw.mean_output_tokens(i);
        req.max_tokens.map_or(mean, |cap| cap.min(mean))
    };
    let latency: Vec<Option<f64>> = gw
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| u.expected_latency_s(output(i)))
        .collect();
    let known: Vec<f64> = latency.iter().flatten().copied().collect();
    let prior = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    gw.upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let energy = u.energy_wh(req.prompt_tokens, output(i)).unwrap_or(0.0);
            mu * latency[i].unwrap_or(prior) + nu * energy
        })
        .collect()
}

/// Orders `candidates` (catalog indexes) by `scores - lambda * costs - penalty`, best
/// first; ties keep their order.
pub fn rerank(
    candidates: &mut [usize],
    scores: &[f64],
    costs: &[f64],
    lambda: f64,
    penalty: &[f64],
) {
    let utility = |m: usize| {
        let at = |v: &[f64]| v.get(m).copied().unwrap_or(0.0);
        let u = at(scores) - lambda * at(costs) - at(penalty);
        if u.is_nan() {
            f64::NEG_INFINITY
        } else {
            u
        }
    };
    candidates.sort_by(|&a, &b| utility(b).total_cmp(&utility(a)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_and_energy_reorder_the_candidates_by_the_full_utility() {
        // a is best but slow; b is close behind and fast; c is cheap.
        let (scores, costs) = ([0.90, 0.88, 0.60], [0.010, 0.002, 0.0001]);
        let mut c = vec![0, 1, 2];
        rerank(&mut c, &scores, &costs, 0.0, &[]);
        assert_eq!(c, vec![0, 1, 2], "no penalty: by score");
        // mu = 0.01 per second, a expected at 5 s, b at 1 s: b first.
        rerank(&mut c, &scores, &costs, 0.0, &[0.05, 0.01, 0.01]);
        assert_eq!(c, vec![1, 0, 2]);
        // A large energy term on a and b puts c first.
        rerank(&mut c, &scores, &costs, 0.0, &[0.5, 0.5, 0.0]);
        assert_eq!(c, vec![2, 0, 1]);
        // Ties keep their order; a NaN utility goes last.
        let mut c = vec![2, 0, 1];
        rerank(&mut c, &[0.5, f64::NAN, 0.5], &[0.0; 3], 0.0, &[]);
        assert_eq!(c, vec![2, 0, 1]);
    }
}
