//! Stage 3e, balanced dispatch (`dispatch.balance`): requests that arrive while their
//! first choice is near capacity are assigned jointly instead of one by one.
//!
//! A per-request router is greedy: under load every request that "needs the good model"
//! goes there, and its queue grows. When a routed request's first candidate is near
//! capacity (its calls in flight reach `near` times its deployments' `max_concurrency`),
//! it joins a batch instead of going straight to its attempts. The batch is assigned when
//! `window_ms` has passed since its first request, or at once when it holds `max_batch`:
//! each request's utility on each model (`predicted score - lambda * predicted cost -
//! latency and energy penalty`, [`super::route`]; minus infinity outside its candidates),
//! each model's free slots (the sum over its deployments; a model with an uncapped
//! deployment has room for all) go to [`routewise_router::dispatch`]'s solver (Sinkhorn or
//! exact min-cost flow, `solver`), which maximises the batch's total utility. A request's
//! assigned model goes first in its candidates (the rest keep their order, as fallbacks);
//! a request the free slots could not take keeps its order and queues or spills as
//! usual ([`super::attempts`]). When no model is near capacity, nothing waits and no
//! window is added. The method is the batch assignment of mixture-of-experts routing
//! (BASE layers, Sinkhorn routing) applied to requests, as RouteBalance does.
//!
//! Only lambda rankings are balanced (a utility must exist), and only requests the router
//! ranked by its policy (not a named model, a forced route, a conversation kept on its
//! model, or an exploration). The verdict (`kept`, `moved`, `unplaced`) goes to the
//! decision log (`balanced`) and `routewise_balanced_total{verdict}`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use routewise_router::dispatch::Assigner;
use routewise_router::Policy;
use tokio::sync::oneshot;

use crate::config::BalanceConfig;
use crate::models::{ModelId, ModelTable, Upstream};
use crate::pipeline::context::RequestContext;
use crate::pipeline::route::Reason;
use crate::state::AppState;

/// What balancing did to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Assigned to its first choice.
    Kept,
    /// Assigned to another candidate.
    Moved,
    /// No free slot could take it: its own order stands.
    Unplaced,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::Moved => "moved",
            Verdict::Unplaced => "unplaced",
        }
    }
}

/// A request waiting in the batch: its utility on every model (catalog order) and where
/// its assignment goes.
struct Pending {
    utility: Vec<f64>,
    reply: oneshot::Sender<Option<ModelId>>,
}

/// The batch of one configuration and its solver.
pub struct Balancer {
    config: BalanceConfig,
    pending: Mutex<Vec<Pending>>,
    solver: Mutex<Box<dyn Assigner>>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    pub fn new(config: BalanceConfig) -> Balancer {
        Balancer {
            config,
            pending: Mutex::new(Vec::new()),
            solver: Mutex::new(config.solver.build()),
        }
    }

    /// Assigns the batch now: each waiting request gets its model (or `None`).
    fn flush(&self, models: &ModelTable) {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let capacity: Vec<usize> = models.iter().map(|u| free_slots(u, n)).collect();
        let d = capacity.len();
        let mut utility = Vec::with_capacity(n * d);
        for p in &batch {
            utility.extend((0..d).map(|j| p.utility.get(j).copied().unwrap_or(f64::NEG_INFINITY)));
        }
        let mut out = Vec::with_capacity(n);
        self.solver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .assign(&utility, n, &capacity, &mut out);
        for (p, a) in batch.into_iter().zip(out) {
            // A request that went away meanwhile has dropped its receiver.
            let _ = p.reply.send(a.map(ModelId::from_index));
        }
    }
}

/// Free slots at `up`'s deployments (`n`, room for the whole batch, when one is uncapped).
fn free_slots(up: &Upstream, n: usize) -> usize {
    let mut free = 0usize;
    for d in &up.deployments {
        match d.max_concurrency {
            None => return n,
            Some(cap) => free += cap.saturating_sub(d.load.in_flight()) as usize,
        }
    }
    free.min(n)
}

/// Whether `up`'s calls in flight reach `near` times its deployments' caps (never for a
/// model with an uncapped deployment).
pub fn near_capacity(up: &Upstream, near: f64) -> bool {
    let (mut cap, mut in_flight) = (0u64, 0u64);
    for d in &up.deployments {
        let Some(c) = d.max_concurrency else {
            return false;
        };
        cap += u64::from(c);
        in_flight += u64::from(d.load.in_flight());
    }
    cap > 0 && in_flight as f64 >= near * cap as f64
}

/// Stage 3e (see the module docs): joins the batch when the first choice is near
/// capacity, and puts the assigned model first.
pub async fn apply(ctx: &mut RequestContext) {
    let state: AppState = ctx.state.clone();
    let Some(balancer) = state.balancer.as_ref() else {
        return;
    };
    let routed = &ctx.routed;
    let (Policy::Lambda(lambda), Some(d), true, Some(&first)) = (
        routed.policy,
        routed.decision.as_ref(),
        routed.reason == Reason::Routed && routed.by_policy,
        routed.candidates.first(),
    ) else {
        return;
    };
    if !near_capacity(state.upstreams.get(first), balancer.config.near) {
        return;
    }
    let mut utility = vec![f64::NEG_INFINITY; state.upstreams.len()];
    for &m in &routed.candidates {
        let i = m.index();
        if let (Some(s), Some(c), Some(u)) = (d.scores.get(i), d.costs.get(i), utility.get_mut(i)) {
            let x = s - lambda * c - routed.penalty_of(m);
            if x.is_finite() {
                *u = x;
            }
        }
    }
    let (reply, assigned) = oneshot::channel();
    let (first_in, full) = {
        let mut pending = balancer
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.push(Pending { utility, reply });
        (
            pending.len() == 1,
            pending.len() >= balancer.config.max_batch,
        )
    };
    let window = Duration::from_secs_f64(balancer.config.window_ms / 1000.0);
    if full {
        balancer.flush(&state.upstreams);
    } else if first_in {
        let timer = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            if let Some(b) = timer.balancer.as_ref() {
                b.flush(&timer.upstreams);
            }
        });
    }
    // The timer assigns within the window; a batch flushed by a full one sooner.
    let got = tokio::time::timeout(window * 4 + Duration::from_millis(50), assigned).await;
    let verdict = match got {
        Ok(Ok(Some(m))) => {
            let c = &mut ctx.routed.candidates;
            if let Some(pos) = c.iter().position(|&x| x == m) {
                c.remove(pos);
                c.insert(0, m);
            }
            if m == first {
                Verdict::Kept
            } else {
                // The order is the batch's now, not the policy's.
                ctx.routed.by_policy = false;
                Verdict::Moved
            }
        }
        _ => Verdict::Unplaced,
    };
    state.metrics.balanced(verdict.name());
    ctx.balanced = Some(verdict);
}
