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
    let candidates: Vec<usize> = match (direct, &decision) {
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
    })
}
