//! Budget pacing of a virtual key (`routewise keys create --budget-usd 200 --pace`): the
//! key's lambda is steered so that its spend follows its budget across the period
//! instead of running out early, spending where it buys the most quality.
//!
//! The controller is [`routewise_router::pacing::Pacer`]: dual descent on the budget
//! constraint, with CARROT's lambda as the knob. The lab measures it with `routewise eval
//! --pacing`, BENCHMARKS.md section 11. Here it runs per key, in each instance:
//!
//! * **Start.** On a paced key's first request of a period, the pacer is made from what
//!   is left of the budget (the spend already recorded in the key store) over what is
//!   left of the period. It starts from the key's lambda (its `policy`), else the
//!   config's `router.policy` lambda, else 100.
//! * **Routing.** Every request of the key is routed with the pacer's lambda, whatever
//!   policy the request asks for.
//! * **Settling.** Each settled call moves the pacer by its realised cost. A released
//!   call (nothing spent) does not move it.
//! * **Backstop.** The budget stays a hard cap: the reservations still refuse calls past
//!   it.
//!
//! **Scope.** The controller's state is per instance. With several instances each paces
//! the key's traffic it sees against the whole remaining budget, so the key spends early
//! up to the shared cap. Pacing that spans instances (a dual variable kept in Redis) is
//! not built.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use routewise_online::service::now_ms;
use routewise_online::store::budget::{BudgetStore, Scope};
use routewise_router::pacing::{Pacer, PacerConfig};
use routewise_router::Policy;

use crate::pipeline::auth::Caller;
use crate::state::Gateway;

/// The step on `log lambda` per settled call: within the range the lab's train-side
/// tuning chose on both shared datasets (0.05 to 0.2).
pub const STEP: f64 = 0.1;
/// The EWMA weight of the newest call in the pacer's signal (the lab chose 0.03 to 1).
pub const SMOOTHING: f64 = 0.1;
/// The starting lambda when neither the key nor the config names one.
pub const DEFAULT_LAMBDA: f64 = 100.0;

/// One key's pacer for one period.
#[derive(Debug)]
pub struct Paced {
    /// The period it paces (its start, unix ms).
    period_start_ms: u64,
    pacer: Mutex<Pacer>,
}

impl Paced {
    /// The lambda to route the key's next request with.
    pub fn lambda(&self) -> f64 {
        self.pacer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lambda()
    }

    /// Moves the pacer by a settled call's cost.
    pub fn record(&self, cost: f64) {
        self.pacer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(now_ms(), cost);
    }
}

/// The paced keys' controllers of this instance, by key id.
#[derive(Debug, Default)]
pub struct Pacers(Mutex<HashMap<String, Arc<Paced>>>);

impl Pacers {
    /// The controller of `c`'s current period, if it has been started.
    pub fn current(&self, c: &Caller) -> Option<Arc<Paced>> {
        let (_, period) = c.budget?;
        let start = period.bounds(now_ms()).0;
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&c.id)
            .filter(|p| p.period_start_ms == start)
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
            return None;
        }
        if let Some(p) = self.current(c) {
            return Some(p);
        }
        let (budget, period) = c.budget?;
        let now = now_ms();
        let (start, end) = period.bounds(now);
        let spent = match budgets
            .usage(&Scope {
                key: &c.id,
                period,
                budget_usd: budget,
                now_ms: now,
            })
            .await
        {
            Ok(u) => u.spent + u.reserved,
            Err(e) => {
                tracing::warn!(key = %c.name, error = %e, "cannot read the key's spend: pacing starts as if none were spent");
                0.0
            }
        };
        let cfg = PacerConfig {
            step: STEP,
            lambda0: starting_lambda(gw, c),
            smoothing: SMOOTHING,
        };
        let paced = Arc::new(Paced {
            period_start_ms: start,
            pacer: Mutex::new(Pacer::new(cfg, (budget - spent).max(0.0), now, end)),
        });
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A concurrent first request may have started it: keep the one already there.
        let kept = map
            .entry(c.id.clone())
            .and_modify(|p| {
                if p.period_start_ms != start {
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
        (Some(Policy::Lambda(l)), _) | (None, Policy::Lambda(l)) if l > 0.0 => l,
        _ => DEFAULT_LAMBDA,
    }
}
