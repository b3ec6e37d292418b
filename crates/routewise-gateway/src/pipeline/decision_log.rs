//! Stage 6a, the decision log: one structured line per decision (target
//! `routewise::decision`): the request, the reason, the policy, the chosen and the
//! answering model, every attempt, the realised cost (upstream usage x prices), how the
//! answer ended, and the predictions (each model's predicted score and cost, in ranking
//! order).

use std::fmt;

use routewise_router::Decision;

use crate::models::ModelId;
use crate::pipeline::attempts::AttemptRecord;
use crate::pipeline::stream::End;
use crate::pipeline::RequestContext;
use crate::state::Gateway;

/// The predictions of a decision as compact JSON, best first.
struct Predictions<'a>(&'a Gateway, &'a Decision);

impl fmt::Display for Predictions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (gw, d) = (self.0, self.1);
        f.write_str("[")?;
        for (k, &ci) in d.ranking.iter().enumerate() {
            if k > 0 {
                f.write_str(",")?;
            }
            let name = gw.upstreams.at(ci).map_or("?", |u| u.name.as_str());
            write!(
                f,
                "{{\"model\":\"{}\",\"score\":{:.4},\"cost_usd\":{:.8}}}",
                name, d.scores[ci], d.costs[ci]
            )?;
        }
        f.write_str("]")
    }
}

/// The attempts as `model: outcome (detail); ...`.
struct Attempts<'a>(&'a Gateway, &'a [AttemptRecord]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, a) in self.1.iter().enumerate() {
            if k > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{}: {}",
                self.0.upstreams.get(a.model).name,
                a.outcome.name()
            )?;
            if !a.detail.is_empty() {
                write!(f, " ({})", a.detail)?;
            }
        }
        Ok(())
    }
}

/// The attempts of a request in one line (error messages).
pub fn attempts_summary(gw: &Gateway, attempts: &[AttemptRecord]) -> String {
    Attempts(gw, attempts).to_string()
}

/// Writes the decision's log line: answered by `answered` (if any) with `status`,
/// realised `cost`, ended as `end`.
pub fn emit(
    ctx: &RequestContext,
    answered: Option<ModelId>,
    status: u16,
    cost: Option<f64>,
    end: End,
) {
    let gw = &*ctx.state;
    let model = answered.map_or("-", |m| gw.upstreams.get(m).name.as_str());
    let decision = ctx.routed.decision.as_ref();
    let chosen = decision
        .and_then(|d| gw.upstreams.at(d.chosen))
        .map_or(model, |u| u.name.as_str());
    let policy = serde_json::to_string(&ctx.routed.policy).unwrap_or_default();
    tracing::info!(
        target: "routewise::decision",
        decision_id = %ctx.id,
        requested = %ctx.request.model,
        reason = ctx.routed.reason.name(),
        policy = %policy,
        chosen,
        model,
        status,
        stream = ctx.request.stream,
        end = end.name(),
        attempts = ctx.attempts.len(),
        attempt_log = %Attempts(gw, &ctx.attempts),
        prompt_tokens = ctx.request.prompt_tokens,
        realised_cost_usd = cost.unwrap_or(f64::NAN),
        elapsed_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
        predictions = %decision.map(|d| Predictions(gw, d).to_string()).unwrap_or_default(),
        "decision"
    );
}
