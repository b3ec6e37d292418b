//! Stage 6b, the feedback record: a decision made by a learning router (the online
//! bandit) is kept, once a model has answered, for `state.decision_ttl_s`, so that
//! `POST /v1/feedback` can teach the router. The record holds the decision id (the
//! `x-routewise-decision-id` header), the bandit context, the prior reward, the realised
//! cost (the upstream's usage x prices, else the decision's expected cost), the
//! latency, and the decision's context for off-policy evaluation (the choice, its
//! propensity, the policy, and the prompt when `log.decisions.prompt` is on), which the
//! feedback log keeps for `routewise logs export`. A non-streaming answer is recorded
//! before it is returned while the store is reachable, so feedback may follow at once; a
//! stream's record is written when it ends.
//! Failures are counted (and logged at debug level: the outage itself is logged once by
//! [`crate::online`]), never fail the request.

use routewise_online::{DecisionRecord, ReplayContext};

use crate::models::ModelId;
use crate::pipeline::context::RequestContext;
use crate::state::{AppState, Gateway};

/// When the record is written relative to the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before answering (waits for the store while it is reachable).
    BeforeAnswering,
    /// In the background (a stream that already ended).
    Background,
}

/// Records the context's decision as answered by `m` with realised `cost`.
pub async fn record(ctx: &RequestContext, m: ModelId, cost: Option<f64>, when: When) {
    let Some(rec) = build(ctx, m, cost) else {
        return;
    };
    let gw = &*ctx.state;
    let reachable = gw.online.get().is_some_and(|o| o.feedback.available());
    if when == When::BeforeAnswering && reachable {
        store(gw, rec).await;
    } else {
        store_in_background(ctx.state.clone(), rec);
    }
}

/// Records in the background (callable from synchronous code: a stream's end).
pub fn record_in_background(ctx: &RequestContext, m: ModelId, cost: Option<f64>) {
    if let Some(rec) = build(ctx, m, cost) {
        store_in_background(ctx.state.clone(), rec);
    }
}

/// The record, when the decision was learned and the store is attached.
fn build(ctx: &RequestContext, m: ModelId, cost: Option<f64>) -> Option<DecisionRecord> {
    let decision = ctx.routed.decision.as_ref()?;
    decision.learning.as_ref()?;
    let online = ctx.state.online.get()?;
    let ci = m.index();
    let cost = cost
        .filter(|c| c.is_finite() && *c >= 0.0)
        .or_else(|| decision.costs.get(ci).copied())?;
    let latency_ms = ctx.started.elapsed().as_secs_f64() * 1e3;
    let mut rec = online
        .feedback
        .record_for(decision, &ctx.id, ci, cost, latency_ms)?;
    let gw = &*ctx.state;
    rec.cascade = ctx.cascade.as_ref().map(|t| {
        let verdict = if t.accepted.is_some() {
            "accepted"
        } else {
            "escalated"
        };
        verdict.to_string()
    });
    rec.replay = Some(ReplayContext {
        chosen: gw
            .upstreams
            .at(ctx.routed.chosen().unwrap_or(decision.chosen))
            .map_or_else(String::new, |u| u.name.clone()),
        propensity: decision.propensity,
        explored: decision.explored,
        policy: serde_json::to_string(&decision.policy).unwrap_or_default(),
        prompt: gw
            .config
            .decision_log
            .prompt
            .then(|| crate::pipeline::decision_log::logged_prompt(&ctx.request.prompt)),
        prompt_tokens: ctx.request.prompt_tokens,
    });
    Some(rec)
}

/// Stores a record; failures are logged and counted.
async fn store(gw: &Gateway, rec: DecisionRecord) {
    let Some(online) = gw.online.get() else {
        return;
    };
    let id = rec.id.clone();
    let result = online.feedback.record_decision(rec).await;
    gw.metrics.decision_recorded(result.is_ok());
    if let Err(e) = result {
        tracing::debug!(decision_id = %id, error = %e, "cannot keep the decision for feedback");
    }
}

/// Stores a record without waiting.
fn store_in_background(state: AppState, rec: DecisionRecord) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { store(&state, rec).await });
    }
}
