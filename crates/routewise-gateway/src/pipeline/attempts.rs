//! Stage 4, attempts: try the candidates down the ranking until one answers.
//!
//! * Which models, in which order: [`fallback`] (context windows, `max_attempts`, skip
//!   cooled-down models, but never refuse a request only because all are cooling down).
//! * When a model is cooled down: [`cooldown`] (a circuit breaker per model).
//! * An attempt goes through the model's [`crate::upstream::Provider`], with the request
//!   id and trace context ([`crate::trace`]; a span id per attempt). It fails over to the
//!   next model on a connection error, HTTP 5xx, 429, 401 / 403 / 404 (`upstream_auth`: a
//!   refused key or a model missing upstream), a timeout before the first byte, or a body
//!   that breaks before it is complete (non-streaming) or before its first chunk
//!   (streaming); each failure counts against the model's breaker. Any other answer (2xx,
//!   other 4xx) is returned (see [`crate::upstream`] for what reaches the client).
//! * A key with a budget reserves each attempt's worst case first ([`super::budget`]): a
//!   candidate it cannot afford is skipped, and when it could afford none the request gets
//!   429 `budget_exceeded`. A failed attempt's reservation is settled at what the upstream may
//!   have billed ([`super::budget::charge`]); the answering
//!   one's is settled when the answer is complete.
//! * A model with `limits` (its provider's quota) takes each call from its token buckets
//!   first ([`crate::models::Quota`]); over them it is passed over for the next candidate,
//!   without using up an attempt, and the decision log says `skipped=<model>:quota`. When
//!   every candidate was passed over: 429 `rate_limited` with `Retry-After`.
//! * When every attempt failed: 504 if the last timed out, else 502; a model named
//!   directly (`reason: direct`) that answered 429 gives the client that 429 with the
//!   upstream's `Retry-After` (and `x-ratelimit-*`, [`RequestContext::rate_limit`]).

pub mod cooldown;
pub mod fallback;

use std::fmt;
use std::time::Duration;

use axum::http::HeaderValue;

use crate::error::ApiError;
use crate::models::ModelId;
use crate::pipeline::budget;
use crate::pipeline::context::{AttemptRecord, RequestContext};
use crate::pipeline::route::Reason;
use crate::state::Gateway;
use crate::upstream::{Answer, AttemptInfo, AttemptOutcome, Call};
use tracing::Instrument;

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
pub(crate) struct ProbeGuard<'a> {
    pub(crate) breaker: &'a Breaker,
    pub(crate) armed: bool,
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
    let mut last_info = AttemptInfo::default();
    // The budget refusal of a candidate the key could not afford (the next may fit).
    let mut refused: Option<budget::Refused> = None;
    // The soonest a model over its quota has room again, when one was passed over.
    let mut quota_wait: Option<u64> = None;
    while let Some((m, admit)) =
        plan.next_attempt(|m| gw.upstreams.get(ModelId::from_index(m)).breaker.admit(now))
    {
        let m = ModelId::from_index(m);
        let up = gw.upstreams.get(m);
        let first = !ctx.rate_taken;
        let observed = ctx.routed.observed();
        let hold = match budget::reserve(
            gw,
            ctx.caller.as_deref(),
            m,
            &ctx.request,
            first,
            observed,
        )
        .await
        {
            Ok(h) => {
                if first {
                    crate::pipeline::pace::admitted(ctx);
                }
                ctx.rate_taken = true;
                h
            }
            Err(r) => {
                if admit == Admit::Probe {
                    up.breaker.abandon_probe();
                }
                // Over the key's rate, or the store is down: the request ends here.
                if !matches!(r, budget::Refused::Exceeded(_)) {
                    return Err(r.into());
                }
                // Not a call: it does not use up an attempt.
                plan.refund();
                ctx.skipped.push((m, "budget"));
                refused = Some(r);
                continue;
            }
        };
        // The model's quota is taken once the call is certain to be made.
        let hold = match budget::take_quota(gw, m, &ctx.request, hold) {
            Ok(h) => h,
            Err(e) => {
                if admit == Admit::Probe {
                    up.breaker.abandon_probe();
                }
                plan.refund();
                ctx.skipped.push((m, "quota"));
                if !e.never {
                    quota_wait =
                        Some(quota_wait.map_or(e.retry_after_ms, |w| w.min(e.retry_after_ms)));
                }
                continue;
            }
        };
        if let Some(prev) = ctx.attempts.last() {
            gw.metrics.fallback(prev.model.index());
        }
        let span = tracing::debug_span!(
            "attempt",
            model = %up.name,
            attempt = ctx.attempts.len() + 1,
            outcome = tracing::field::Empty,
            upstream_request_id = tracing::field::Empty,
        );
        let forward = ctx.trace.upstream_headers(
            crate::otel::span_id(&span).unwrap_or_else(crate::trace::new_span_id),
        );
        let mut probe = ProbeGuard {
            breaker: &up.breaker,
            armed: admit == Admit::Probe,
        };
        let mut info = AttemptInfo::default();
        let attempt_started = gw.now_ms();
        let call = Call {
            request: &ctx.request,
            model: &up.name,
            upstream_model: &up.upstream_model,
            timeout,
            id: &ctx.id,
            forward: &forward,
        };
        let result = up
            .provider
            .call(call, &mut info)
            .instrument(span.clone())
            .await;
        probe.armed = false;
        if let Some(t) = info.headers_after {
            gw.metrics.upstream_latency(m.index(), t.as_secs_f64());
        }
        let outcome = result
            .as_ref()
            .map_or_else(|f| f.outcome, |_| AttemptOutcome::Ok);
        span.record("outcome", outcome.name());
        if let Some(id) = &info.upstream_request_id {
            span.record("upstream_request_id", id.as_str());
        }
        gw.metrics.attempt(m.index(), outcome);
        let upstream_request_id = info.upstream_request_id.take();
        // A failed call is charged what the upstream may have billed (a timeout, a body cut
        // short: the reservation), else released.
        let failed_charge = hold
            .as_ref()
            .map(|h| budget::charge(&result, None, h.amount()));
        match result {
            Ok(answer) => {
                if let Some(q) = &up.quota {
                    q.observe(&info.rate_limit, gw.now_ms());
                }
                ctx.hold = hold;
                gw.record_success(m, attempt_started);
                ctx.attempts.push(AttemptRecord {
                    model: m,
                    outcome,
                    detail: String::new(),
                    upstream_request_id,
                });
                ctx.rate_limit = info.rate_limit;
                return Ok((m, answer));
            }
            Err(f) => {
                if let Some(h) = hold {
                    h.settle(failed_charge);
                }
                if gw.record_failure(m) {
                    tracing::warn!(model = %up.name, reason = outcome.name(), cooldown_s = gw.config.cooldown.seconds, "model cooled down after repeated failures");
                }
                ctx.attempts.push(AttemptRecord {
                    model: m,
                    outcome,
                    detail: f.detail,
                    upstream_request_id,
                });
                last_info = info;
            }
        }
    }
    if let (true, Some(r)) = (ctx.attempts.is_empty(), refused) {
        return Err(r.into());
    }
    if let (true, Some(ms)) = (ctx.attempts.is_empty(), quota_wait) {
        return Err(ApiError::RateLimited {
            message:
                "every eligible model is at its configured quota (models[].limits); retry shortly"
                    .into(),
            retry_after: HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()).ok(),
        });
    }
    if ctx.attempts.is_empty() && ctx.skipped.iter().any(|(_, why)| *why == "quota") {
        return Err(ApiError::bad_request(
            "the request (prompt plus max_tokens) is larger than the tokens per minute of every eligible model (models[].limits.tpm)",
            Some("max_tokens"),
        ));
    }
    let summary = attempts_summary(gw, &ctx.attempts);
    let n = ctx.attempts.len();
    Err(match ctx.attempts.last().map(|a| a.outcome) {
        Some(AttemptOutcome::Timeout) => ApiError::UpstreamTimeout(format!(
            "all {n} upstream attempts failed, the last by timeout: {summary}"
        )),
        Some(AttemptOutcome::Http429) if ctx.routed.reason == Reason::Direct => {
            let retry_after = last_info.retry_after().cloned();
            ctx.rate_limit = last_info.rate_limit;
            ApiError::RateLimited {
                message: format!(
                    "model `{}` is rate limited upstream (HTTP 429); retry later",
                    ctx.request.model
                ),
                retry_after,
            }
        }
        _ => ApiError::UpstreamFailed(format!("all {n} upstream attempts failed: {summary}")),
    })
}
