//! Stage 6a, the decision log: one structured line per decision (target
//! `routewise::decision`): the request, the reason, the policy, the chosen and the
//! answering model, every attempt, the realised cost (upstream usage x prices), how the
//! answer ended, the request id, trace id and the answering upstream's request id, and
//! the predictions (each model's predicted score and cost, in ranking order). Written
//! once per request ([`RequestContext::mark_logged`]).

use std::fmt;

use routewise_router::Decision;

use crate::models::ModelId;
use crate::pipeline::attempts::Attempts;
use crate::pipeline::context::RequestContext;
use crate::state::Gateway;

/// How an answer ended (the decision log's `end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every chunk (or the whole body) reached the client.
    Complete,
    /// The client went away first.
    ClientDisconnected,
    /// The upstream stream broke after the first chunk.
    StreamError,
    /// The upstream stream stalled longer than `request_timeout_ms`.
    StreamTimeout,
    /// Every attempt failed: no answer.
    Failed,
    /// The gateway's shutdown grace period ended the stream.
    Shutdown,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::Complete => "complete",
            End::ClientDisconnected => "client_disconnected",
            End::StreamError => "stream_error",
            End::StreamTimeout => "stream_timeout",
            End::Failed => "failed",
            End::Shutdown => "shutdown",
        }
    }

    /// Whether the upstream is to blame (counts as a failure of the model).
    pub fn upstream_failed(self) -> bool {
        matches!(self, End::StreamError | End::StreamTimeout)
    }
}

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

/// Writes the decision's log line: answered by `answered` (if any) with `status`,
/// realised `cost`, ended as `end`.
pub fn emit(
    ctx: &RequestContext,
    answered: Option<ModelId>,
    status: u16,
    cost: Option<f64>,
    end: End,
) {
    if !ctx.mark_logged() {
        return;
    }
    let gw = &*ctx.state;
    let model = answered.map_or("-", |m| gw.upstreams.get(m).name.as_str());
    let decision = ctx.routed.decision.as_ref();
    let chosen = decision
        .and_then(|d| gw.upstreams.at(d.chosen))
        .map_or(model, |u| u.name.as_str());
    let policy = serde_json::to_string(&ctx.routed.policy).unwrap_or_default();
    let upstream_request_id = ctx
        .attempts
        .last()
        .and_then(|a| a.upstream_request_id.as_deref())
        .unwrap_or("-");
    tracing::info!(
        target: "routewise::decision",
        decision_id = %ctx.id,
        request_id = %ctx.trace.request_id,
        trace_id = %ctx.trace.trace_id_hex(),
        upstream_request_id,
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
