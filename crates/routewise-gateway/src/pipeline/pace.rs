//! Budget pacing of a virtual key (`routewise keys create --budget-usd 200 --pace`): the
//! key's lambda is steered so that its spend follows its budget across the period
//! instead of running out early, spending where it buys the most quality.
//!
//! The controller is [`routewise_router::pacing::Resolving`]: the budget constraint's dual
//! price (CARROT's lambda) re-solved after each settled call from the predictions of the
//! key's recent requests, the spend so far and the time left. The lab measures it with
//! `routewise eval --pacing`, BENCHMARKS.md section 11. Here it runs per key, in each
//! instance:
//!
//! * **Start.** On the first request of a period that this instance sees for a paced key,
//!   the pacer is made from what is left of the budget (the spend already recorded in the
//!   key store) over what is left of the period. It starts from the key's lambda (its
//!   `policy`), else the config's `router.policy` lambda, else 100, and keeps it until
//!   it has seen [`routewise_router::pacing::MIN_SEEN`] routed requests. A key whose budget,
//!   period or starting lambda changes gets a new pacer; one whose pacing is turned off
//!   loses it. A store that cannot be read leaves the request on the key's own policy,
//!   and the next request tries again.
//! * **Routing.** Every request of the key is routed with the pacer's lambda, whatever
//!   policy the request asks for. A `routes:` rule that sets a policy wins for the
//!   requests it matches (the operator's explicit steering); their spend still moves the
//!   pacer.
//! * **Observing.** Once a routed request's first call is admitted (past the key's rate
//!   limits), the router's predictions for its candidates join the pacer's window: all of
//!   them when the candidates are in the order of the pacer's lambda, else (a route's own
//!   policy, a forced model, exploration, the zero-data mode, a conversation kept on its
//!   model) the choice only, a cost that does not depend on lambda. A request for a named
//!   model adds nothing to the window.
//! * **Settling.** Each call that cost something (each attempt and each cascade tier call)
//!   adds its realised cost: to the routed requests' spend, or to the named-model spend,
//!   whose share of the calls is set aside from the budget once 20 such calls were seen. The pacer then solves again. A call that cost
//!   nothing (a failure the upstream did not bill) does not move it. The lambda is
//!   published to an atomic, so that routing reads it without the lock.
//! * **Backstop.** The budget stays a hard cap: the reservations still refuse calls past
//!   it.
//!
//! **Scope.** The controller's state is per instance. With several instances each paces
//! the key's traffic it sees against the whole remaining budget, so the key spends early
//! up to the shared cap. Pacing that spans instances (a dual variable kept in Redis) is
//! not built.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use routewise_online::service::now_ms;
use routewise_online::store::budget::{BudgetStore, Scope};

use routewise_router::pacing::{envelope, BudgetPacer, Resolving, ResolvingConfig};
use routewise_router::{Decision, Policy};

use crate::models::ModelId;
use crate::pipeline::auth::Caller;
use crate::pipeline::context::RequestContext;
use crate::state::Gateway;

/// The starting lambda when neither the key nor the config names one.
pub const DEFAULT_LAMBDA: f64 = routewise_router::pacing::DEFAULT_LAMBDA0;

/// One key's pacer for one period.
#[derive(Debug)]
pub struct Paced {
    /// What it was made for: the period (its start, unix ms), the budget and its period,
    /// the starting lambda. A key whose settings differ gets a new pacer.
    period_start_ms: u64,
    made_for: (f64, routewise_online::budget::Period, f64),
    pacer: Mutex<Resolving>,
    /// The pacer's lambda (f64 bits), read without the lock.
    lambda: AtomicU64,
}

impl Paced {
    /// The lambda to route the key's next request with.
    pub fn lambda(&self) -> f64 {
        f64::from_bits(self.lambda.load(Ordering::Relaxed))
    }

    /// The routed requests the pacer has seen.
    pub fn requests(&self) -> u64 {
        self.pacer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests()
    }

    /// Runs `f` on the pacer and publishes its lambda.
    fn with(&self, f: impl FnOnce(&mut Resolving)) {
        let mut p = self.pacer.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut p);
        self.lambda.store(p.lambda().to_bits(), Ordering::Relaxed);
    }

    /// Adds a routed request's predictions (its candidates' score and cost) to the
    /// pacer's window; `by_lambda`: the candidates are in the order of the pacer's lambda
    /// (else only the choice joins, a cost that does not depend on lambda).
    /// `penalty`: each model's latency and energy penalty in the ranking (empty: none),
    /// taken off its score, so that the choices seen are the ranking's.
    fn observe(
        &self,
        decision: &Decision,
        candidates: &[ModelId],
        penalty: &[f64],
        by_lambda: bool,
        at: f64,
    ) {
        let take = if by_lambda { candidates.len() } else { 1 };
        let mut rows = candidates.iter().take(take).filter_map(|m| {
            let i = m.index();
            let off = penalty.get(i).copied().unwrap_or(0.0);
            Some((*decision.scores.get(i)? - off, *decision.costs.get(i)?))
        });
        // Built outside the lock.
        let e = envelope(&mut rows);
        self.with(|p| p.observe_envelope(e, at));
    }

    /// Moves the pacer by a settled call's cost; `routed`: the call belongs to a request
    /// the pacer observed (a call that cost nothing does not move it).
    pub fn record(&self, cost: f64, routed: bool) {
        if cost > 0.0 && cost.is_finite() {
            self.with(|p| p.record(now_ms(), cost, routed));
        }
    }
}

/// Shows the pacer of the request's key (if paced) its routed request, once its first call
/// was admitted (a request refused by the key's rate limits is not traffic to pace).
pub fn admitted(ctx: &RequestContext) {
    if !ctx.routed.observed() {
        return;
    }
    let (Some(c), Some(d)) = (ctx.caller.as_deref(), ctx.routed.decision.as_ref()) else {
        return;
    };
    let gw = &*ctx.state;
    let Some(p) = gw.keys.get().and_then(|k| k.pacers.current(gw, c)) else {
        return;
    };
    // A route's own policy, a forced model, the zero-data order or conversation affinity
    // chose instead.
    let by_lambda = ctx.routed.by_policy
        && ctx
            .signals
            .as_ref()
            .is_none_or(|s| s.outcome.policy.is_none());
    let at = match ctx.routed.policy {
        Policy::Lambda(l) => l,
        _ => p.lambda(),
    };
    p.observe(
        d,
        &ctx.routed.candidates,
        &ctx.routed.penalty,
        by_lambda,
        at,
    );
}

/// The paced keys' controllers of this instance, by key id.
#[derive(Debug, Default)]
pub struct Pacers(Mutex<HashMap<String, Arc<Paced>>>);

impl Pacers {
    /// The controller of `c`'s current period, if it has been started for the key's
    /// current settings.
    pub fn current(&self, gw: &Gateway, c: &Caller) -> Option<Arc<Paced>> {
        if !c.pace {
            return None;
        }
        let (budget, period) = c.budget?;
        let start = period.bounds(now_ms()).0;
        let made_for = (budget, period, starting_lambda(gw, c));
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&c.id)
            .filter(|p| p.period_start_ms == start && p.made_for == made_for)
            .cloned()
    }

    /// Starts the controller of `c`'s current period when there is none yet (one read of
    /// the key's spend so far), and answers it. `None` for a key that is not paced.
    pub async fn start(
        &self,
        gw: &Gateway,
        c: &Caller,
        budgets: &dyn BudgetStore,
    ) -> Option<Arc<Paced>> {
        if !c.pace {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&c.id);
            return None;
        }
        if let Some(p) = self.current(gw, c) {
            return Some(p);
        }
        let (budget, period) = c.budget?;
        let now = now_ms();
        let (start, end) = period.bounds(now);
        // What was settled so far (calls in flight settle into the cap, not the pacer).
        let spent = match budgets
            .usage(&Scope {
                key: &c.id,
                period,
                budget_usd: budget,
                now_ms: now,
            })
            .await
        {
            Ok(u) => u.spent,
            Err(e) => {
                tracing::warn!(key = %c.name, error = %e, "cannot read the key's spend: this request is not paced");
                return None;
            }
        };
        let lambda0 = starting_lambda(gw, c);
        let cfg = ResolvingConfig {
            lambda0,
            ..ResolvingConfig::default()
        };
        let pacer = Resolving::new(cfg, (budget - spent).max(0.0), now, end);
        let paced = Arc::new(Paced {
            period_start_ms: start,
            made_for: (budget, period, lambda0),
            lambda: AtomicU64::new(pacer.lambda().to_bits()),
            pacer: Mutex::new(pacer),
        });
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A concurrent first request may have started it: keep the one already there,
        // unless it was made for an earlier period or other settings.
        let kept = map
            .entry(c.id.clone())
            .and_modify(|p| {
                if p.period_start_ms < start
                    || (p.period_start_ms == start && p.made_for != paced.made_for)
                {
                    *p = Arc::clone(&paced);
                }
            })
            .or_insert(paced);
        Some(Arc::clone(kept))
    }
}

/// Where a key's pacer starts: the key's lambda, else the config's, else
/// [`DEFAULT_LAMBDA`].
fn starting_lambda(gw: &Gateway, c: &Caller) -> f64 {
    match (c.policy, gw.config.router.policy) {
        (Some(Policy::Lambda(l)), _) if l > 0.0 => l,
        (_, Policy::Lambda(l)) if l > 0.0 => l,
        _ => DEFAULT_LAMBDA,
    }
}
