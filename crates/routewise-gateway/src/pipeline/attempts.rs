//! Stage 4, attempts: try the candidates down the ranking until one answers.
//!
//! * Which models, in which order: [`fallback`] (context windows, `max_attempts`, skip
//!   cooled-down models, but never refuse a request only because all are cooling down).
//! * When a model is cooled down: [`cooldown`] (a circuit breaker per model).
//! * An attempt goes through the model's [`crate::upstream::Provider`]. It fails over to
//!   the next model on a connection error, HTTP 5xx, 429, a timeout before the first
//!   byte, or a body that breaks before it is complete (non-streaming) or before its first
//!   chunk (streaming). Any other upstream answer (2xx, other 4xx) is returned as is.

pub mod cooldown;
pub mod fallback;

use std::fmt;
use std::time::Duration;

use crate::error::ApiError;
use crate::models::ModelId;
use crate::pipeline::context::{AttemptRecord, RequestContext};
use crate::state::Gateway;
use crate::upstream::{Answer, AttemptOutcome, Call, Timing};

use self::cooldown::{Admit, Breaker};
use self::fallback::AttemptPlan;

/// The attempts as `model: outcome (detail); ...`.
pub struct Attempts<'a>(pub &'a Gateway, pub &'a [AttemptRecord]);

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

/// Releases a half-open probe if the attempt ends with no outcome (request cancelled).
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.abandon_probe();
        }
    }
}

/// Tries the routed candidates; the answering model and its answer, or the error to
/// return when every attempt failed. Every attempt is recorded in `ctx.attempts`.
pub async fn run(ctx: &mut RequestContext) -> Result<(ModelId, Answer), ApiError> {
    let state = ctx.state.clone();
    let gw = &*state;
    let timeout = Duration::from_millis(gw.config.limits.request_timeout_ms);
    let candidates = ctx.routed.candidates.iter().map(|m| m.index()).collect();
    let mut plan = AttemptPlan::new(candidates, gw.config.limits.max_attempts);
    let now = gw.now_ms();
    while let Some((m, admit)) =
        plan.next_attempt(|m| gw.upstreams.get(ModelId::from_index(m)).breaker.admit(now))
    {
        let m = ModelId::from_index(m);
        let up = gw.upstreams.get(m);
        if let Some(prev) = ctx.attempts.last() {
            gw.metrics.fallback(prev.model.index());
        }
        let mut probe = ProbeGuard {
            breaker: &up.breaker,
            armed: admit == Admit::Probe,
        };
        let mut timing = Timing::default();
        let call = Call {
            request: &ctx.request,
            model: &up.name,
            upstream_model: &up.upstream_model,
            timeout,
            id: &ctx.id,
        };
        let result = up.provider.call(call, &mut timing).await;
        probe.armed = false;
        if let Some(t) = timing.headers_after {
            gw.metrics.upstream_latency(m.index(), t.as_secs_f64());
        }
        match result {
            Ok(answer) => {
                gw.record_success(m);
                gw.metrics.attempt(m.index(), AttemptOutcome::Ok);
                ctx.attempts.push(AttemptRecord {
                    model: m,
                    outcome: AttemptOutcome::Ok,
                    detail: String::new(),
                });
                return Ok((m, answer));
            }
            Err(f) => {
                let opened = gw.record_failure(m);
                gw.metrics.attempt(m.index(), f.outcome);
                if opened {
                    tracing::warn!(model = %up.name, cooldown_s = gw.config.cooldown.seconds, "model cooled down after repeated failures");
                }
                ctx.attempts.push(AttemptRecord {
                    model: m,
                    outcome: f.outcome,
                    detail: f.detail,
                });
            }
        }
    }
    let summary = attempts_summary(gw, &ctx.attempts);
    Err(match ctx.attempts.last().map(|a| a.outcome) {
        Some(AttemptOutcome::Timeout) => ApiError::UpstreamTimeout(format!(
            "all {} upstream attempts failed, the last by timeout: {summary}",
            ctx.attempts.len()
        )),
        _ => ApiError::UpstreamFailed(format!(
            "all {} upstream attempts failed: {summary}",
            ctx.attempts.len()
        )),
    })
}
