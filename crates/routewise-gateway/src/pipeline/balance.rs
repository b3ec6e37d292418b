//! Stage 3e, balanced dispatch (`dispatch.balance`): requests that arrive while their
//! first choice is near capacity are assigned jointly instead of one by one.
//!
//! A per-request router is greedy: under load every request that "needs the good model"
//! goes there, and its queue grows. When a routed request's first candidate is near
//! capacity (its calls in flight reach `near` times its deployments' `max_concurrency`),
//! it joins a batch instead of going straight to its attempts. The batch is assigned
//! `window_ms` after its first request joined, or at once when it holds `max_batch`:
//! each request's utility on each model (`predicted score - lambda * predicted cost -
//! latency and energy penalty`, [`super::route`]; minus infinity outside its candidates),
//! each model's free slots (the sum over its deployments with a closed breaker; a model
//! with an uncapped deployment has room for all; a cooling-down model none) and, for each
//! model with fewer free slots than the batch, the places left in its queue go to
//! [`routewise_router::dispatch`]'s solver (`solver`: Sinkhorn, or exact min-cost flow,
//! which places as many requests as the places allow and, among those placements, has the
//! best total utility). A model's queue has as many places as requests that would start
//! within half of `dispatch.queue_ms` at its deployments' observed latency (for the
//! model's mean output tokens), less those already waiting (an estimate: requests that
//! were not batched take freed slots too, and those the last batch placed count once they
//! wait). A place costs `queue_price` times a factor that grows as the queue fills
//! ([`routewise_router::dispatch::queue_place_price`]), so the places go to the requests
//! that gain most by waiting for that model, and the others take free slots elsewhere.
//! A request's assigned model goes first in its candidates (the rest keep their order, as
//! fallbacks). One placed in a queue waits there for a slot (up to half of
//! `dispatch.queue_ms`, leaving the rest for its other candidates) before it spills; a
//! request with `x-routewise-slo-ms` is never placed in a queue (its SLO is dropped rather
//! than waited for). A request nothing could take keeps its order and queues or spills as
//! usual ([`super::attempts`]). Requests whose client left
//! before the batch was assigned are dropped from it. When no model is near capacity,
//! nothing waits and no window is added. The method is the batch assignment of
//! mixture-of-experts routing (BASE layers, Sinkhorn routing) applied to requests, as
//! RouteBalance does.
//!
//! Only lambda rankings are balanced (a utility must exist), and only requests the router
//! ranked by its policy with somewhere else to go: not a named model, a forced route, a
//! conversation kept on its model, an exploration, a request the cascade escalated (its
//! tier already answered), or one with a single candidate. Under `dispatch.spill: false`
//! nothing is balanced (the operator chose to wait for the first choice). The verdict
//! (`kept`, `moved`, `held`, `unplaced`) goes to the decision log (`balanced`) and
//! `routewise_balanced_total{verdict}`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use routewise_router::dispatch::{queue_place_price, Assigner};
use routewise_router::Policy;
use tokio::sync::oneshot;

use crate::config::BalanceConfig;
use crate::models::{ModelId, Upstream};
use crate::pipeline::context::RequestContext;
use crate::pipeline::route::Reason;
use crate::state::{AppState, Gateway};

/// What balancing did to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Assigned to its first choice.
    Kept,
    /// Assigned to another candidate.
    Moved,
    /// Placed in a model's queue (first in its candidates): it waits for that model when
    /// its deployments are full, before spilling.
    Held,
    /// No free slot could take it: its own order stands.
    Unplaced,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::Moved => "moved",
            Verdict::Held => "held",
            Verdict::Unplaced => "unplaced",
        }
    }
}

/// A request waiting in the batch: its utility on every model (catalog order) and where
/// its assignment goes.
struct Pending {
    utility: Vec<f64>,
    /// It may be placed in a queue (not a request with an SLO, which is dropped rather
    /// than waited for).
    may_queue: bool,
    reply: oneshot::Sender<Option<Placed>>,
}

/// Where a request was placed: a model, in a free slot or in its queue.
#[derive(Debug, Clone, Copy)]
struct Placed {
    model: ModelId,
    queued: bool,
}

/// The batch being collected: its number, and its requests.
#[derive(Default)]
struct Batch {
    epoch: u64,
    items: Vec<Pending>,
}

/// The batch of one configuration and its solver.
pub struct Balancer {
    config: BalanceConfig,
    pending: Mutex<Batch>,
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
            pending: Mutex::new(Batch::default()),
            solver: Mutex::new(config.solver.build()),
        }
    }

    /// Assigns batch `epoch` now, if it is still being collected (`None`: whichever is):
    /// each waiting request gets its place (or `None`).
    fn flush(&self, gw: &Gateway, epoch: Option<u64>) {
        let batch = {
            let mut b = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if epoch.is_some_and(|e| e != b.epoch) {
                return;
            }
            b.epoch = b.epoch.wrapping_add(1);
            std::mem::take(&mut b.items)
        };
        // Requests whose client went away take no slot.
        let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let now_ms = gw.now_ms();
        let models = &gw.upstreams;
        let d = models.len();
        // Columns: each model's free slots, then the places left in its queue (priced).
        let mut capacity: Vec<usize> = models.iter().map(|u| free_slots(u, n, now_ms)).collect();
        let mut price = Vec::with_capacity(d);
        for (i, u) in models.iter().enumerate() {
            let places = if capacity[i] < n && !u.breaker.is_open(now_ms) {
                let hold_ms = gw.config.dispatch.hold_ms();
                u.queue_places(hold_ms, gw.mean_output_tokens(i), now_ms)
            } else {
                0
            };
            let queued = u.queued();
            capacity.push(places.saturating_sub(queued).min(n));
            price.push(
                queue_place_price(self.config.queue_price, queued, places, n)
                    .unwrap_or(f64::INFINITY),
            );
        }
        let mut utility = Vec::with_capacity(n * 2 * d);
        for p in &batch {
            let u = |j: usize| p.utility.get(j).copied().unwrap_or(f64::NEG_INFINITY);
            utility.extend((0..d).map(u));
            utility.extend((0..d).map(|j| {
                if p.may_queue {
                    u(j) - price.get(j).copied().unwrap_or(f64::INFINITY)
                } else {
                    f64::NEG_INFINITY
                }
            }));
        }
        let mut out = Vec::with_capacity(n);
        self.solver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .assign(&utility, n, &capacity, &mut out);
        for (p, a) in batch.into_iter().zip(out) {
            let placed = a.map(|c| Placed {
                model: ModelId::from_index(c % d),
                queued: c >= d,
            });
            // A request that went away meanwhile has dropped its receiver.
            let _ = p.reply.send(placed);
        }
    }
}

/// Free slots at `up`'s deployments that can take a call at `now_ms` (`n`, room for the
/// whole batch, when one is uncapped; none while the model cools down).
fn free_slots(up: &Upstream, n: usize, now_ms: u64) -> usize {
    if up.breaker.is_open(now_ms) {
        return 0;
    }
    let mut free = 0usize;
    for d in &up.deployments {
        if up.deployments.len() > 1 && d.breaker.is_open(now_ms) {
            continue;
        }
        match d.max_concurrency {
            None => return n,
            Some(cap) => free += cap.saturating_sub(d.load.in_flight()) as usize,
        }
    }
    free.min(n)
}

/// Whether `up`'s calls in flight reach `near` times its deployments' caps (never for a
/// model with an uncapped deployment).
fn near_capacity(up: &Upstream, near: f64) -> bool {
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
        routed.reason == Reason::Routed
            && routed.by_policy
            && routed.candidates.len() > 1
            && ctx.cascade.is_none()
            && state.config.dispatch.spill,
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
    let (first_in, full, epoch) = {
        let mut b = balancer
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        b.items.push(Pending {
            utility,
            may_queue: ctx.request.slo_ms.is_none(),
            reply,
        });
        (
            b.items.len() == 1,
            b.items.len() >= balancer.config.max_batch,
            b.epoch,
        )
    };
    let window = Duration::from_secs_f64(balancer.config.window_ms / 1000.0);
    if full {
        balancer.flush(&state, None);
    } else if first_in {
        // This batch's timer (a batch flushed sooner, when full, is not flushed again).
        let timer = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            if let Some(b) = timer.balancer.as_ref() {
                b.flush(&timer, Some(epoch));
            }
        });
    }
    // The timer assigns within the window; a batch flushed by a full one sooner.
    let got = tokio::time::timeout(window * 4 + Duration::from_millis(50), assigned).await;
    let verdict = match got {
        Ok(Ok(Some(Placed { model: m, queued }))) => {
            let c = &mut ctx.routed.candidates;
            if let Some(pos) = c.iter().position(|&x| x == m) {
                c.remove(pos);
                c.insert(0, m);
            }
            if m != first {
                // The order is the batch's now, not the policy's.
                ctx.routed.by_policy = false;
            }
            if queued {
                Verdict::Held
            } else if m == first {
                Verdict::Kept
            } else {
                Verdict::Moved
            }
        }
        _ => Verdict::Unplaced,
    };
    state.metrics.balanced(verdict.name());
    ctx.balanced = Some(verdict);
}
