//! Stage 4, attempts: try the candidates down the ranking until one answers.
//!
//! * Which models, in which order: [`fallback`] (context windows, `max_attempts`, skip
//!   cooled-down models, but never refuse a request only because all are cooling down).
//! * When a model is cooled down: [`cooldown`] (a circuit breaker per model, and one per
//!   deployment).
//! * Which of the model's deployments takes the call: [`deploy`] (the power of two choices
//!   over calls in flight times expected latency, never past a deployment's
//!   `max_concurrency`; a request with `x-routewise-slo-ms` passes over deployments whose
//!   time to first token, observed in the last 30 s, averages more; when that leaves no
//!   deployment with room, the SLO is dropped rather than the request waiting or being
//!   refused). The call holds its slot until its answer ends ([`crate::models::Slot`],
//!   kept in the context).
//! * When every deployment of a model is full, the model is passed over for the next in
//!   the ranking (`dispatch.spill`, the default; the decision log says
//!   `skipped=<model>:capacity`), or waited for first (`spill: false`, or a request that
//!   balanced dispatch placed in the model's queue, [`super::balance`]). When every
//!   candidate is full, the request waits up to `dispatch.queue_ms` for a slot, then gets
//!   503 `at_capacity` with `Retry-After`.
//! * An attempt goes through the deployment's [`crate::upstream::Provider`], with the
//!   request id and trace context ([`crate::trace`]; a span id per attempt). A failed call
//!   moves to another deployment of the same model first (while attempts remain), then to
//!   the next model. It fails over on a connection error, HTTP 5xx, 429, 401 / 403 / 404 (`upstream_auth`: a
//!   refused key or a model missing upstream), a timeout before the first byte, or a body
//!   that breaks before it is complete (non-streaming) or before its first chunk
//!   (streaming); each failure counts against the model's breaker. Any other answer (2xx,
//!   other 4xx) is returned (see [`crate::upstream`] for what reaches the client).
//! * A key with a budget reserves each attempt's worst case first ([`super::budget`]): a
//!   candidate it cannot afford is skipped, and when it could afford none the request gets
//!   429 `budget_exceeded`. A failed attempt's reservation is settled at what the upstream may
//!   have billed ([`super::budget::charge`]); the answering
//!   one's is settled when the answer is complete.
//! * A deployment with `limits` (its provider's quota) takes each call from its token
//!   buckets first ([`crate::models::Quota`]); when every deployment of a model is over
//!   them, the model is passed over for the next candidate,
//!   without using up an attempt, and the decision log says `skipped=<model>:quota`. When
//!   every candidate was passed over: 429 `rate_limited` with `Retry-After`.
//! * When every attempt failed: 504 if the last timed out, else 502; a model named
//!   directly (`reason: direct`) that answered 429 gives the client that 429 with the
//!   upstream's `Retry-After` (and `x-ratelimit-*`, [`RequestContext::rate_limit`]).

pub mod cooldown;
pub mod deploy;
pub mod fallback;

use std::fmt;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;

use crate::error::ApiError;
use crate::models::{Deployment, ModelId, Slot, Upstream};
use crate::pipeline::balance::Verdict;
use crate::pipeline::budget;
use crate::pipeline::context::{AttemptRecord, RequestContext};
use crate::pipeline::route::Reason;
use crate::request::ChatRequest;
use crate::state::Gateway;
use crate::upstream::{Answer, AttemptInfo, AttemptOutcome, Call};
use routewise_online::budget::RateLimited;
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
            let up = self.0.upstreams.get(a.model);
            f.write_str(&up.name)?;
            if up.deployments.len() > 1 {
                if let Some(d) = up.deployments.get(a.deployment) {
                    write!(f, "@{}", d.name)?;
                }
            }
            write!(f, ": {}", a.outcome.name())?;
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

/// Output tokens a call is expected to produce when choosing a deployment (capped by the
/// request's `max_tokens`).
pub const EXPECTED_OUTPUT_TOKENS: u64 = 256;

/// Why a model gave no slot for a call.
#[derive(Debug)]
pub enum Pass {
    /// Every deployment is at its `max_concurrency`.
    Capacity,
    /// Every deployment's time to first token averages more than the request's SLO.
    Slo,
    /// Every deployment with room is at its quota (the soonest refusal).
    Quota(RateLimited),
}

impl Pass {
    /// The decision log's word for it (`skipped=<model>:<why>`).
    pub fn name(&self) -> &'static str {
        match self {
            Pass::Capacity => "capacity",
            Pass::Slo => "slo",
            Pass::Quota(_) => "quota",
        }
    }
}

/// Whether deployment `d` meets `req`'s SLO at `now_ms` (a time to first token observed
/// recently and above it does not).
fn within_slo(d: &Deployment, req: &ChatRequest, now_ms: u64) -> bool {
    req.slo_ms
        .is_none_or(|slo| d.load.fresh_ttft_ms(now_ms).is_none_or(|t| t <= slo as f64))
}

/// Whether a deployment of `up` not in `tried` and within `req`'s SLO has a free slot:
/// what [`take_deployment`] can take (quota aside).
fn has_room_for(gw: &Gateway, up: &Upstream, req: &ChatRequest, tried: &[usize]) -> bool {
    let now = gw.now_ms();
    up.deployments.iter().enumerate().any(|(i, d)| {
        !tried.contains(&i) && within_slo(d, req, now) && d.load.has_room(d.max_concurrency)
    })
}

/// What [`take_deployment`] took for a call: the slot (freed when dropped) and the quota.
pub struct Taken<'a> {
    pub slot: Slot,
    pub quota: QuotaBack<'a>,
}

/// The quota a call took at its deployment, given back when dropped unless the call is
/// made ([`QuotaBack::keep`]): on every path without a call, the request going away while
/// it waits (for the key's budget, for a slot) included.
pub struct QuotaBack<'a>(Option<(&'a crate::models::Quota, u64)>);

impl QuotaBack<'_> {
    /// The call is made: the quota stays taken.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for QuotaBack<'_> {
    fn drop(&mut self) {
        if let Some((q, tokens)) = self.0 {
            q.give_back(tokens);
        }
    }
}

/// Takes a slot and the quota for a call to `up` with `req` at the deployment
/// [`deploy::order`] puts first among those not in `tried` (deployment indexes of `up`
/// already called by this request).
pub fn take_deployment<'a>(
    gw: &Gateway,
    up: &'a Upstream,
    req: &ChatRequest,
    tried: &[usize],
) -> Result<Taken<'a>, Pass> {
    let now = gw.now_ms();
    // One deployment (every model without `deployments:`): nothing to order.
    let ordered;
    let order: &[usize] = if up.deployments.len() == 1 {
        &[0]
    } else {
        let out_tokens = req
            .max_tokens
            .unwrap_or(EXPECTED_OUTPUT_TOKENS)
            .min(EXPECTED_OUTPUT_TOKENS);
        let candidates: Vec<deploy::Candidate> = up
            .deployments
            .iter()
            .map(|d| deploy::Candidate {
                weight: d.weight,
                in_flight: d.load.in_flight(),
                room: d.load.has_room(d.max_concurrency),
                healthy: !d.breaker.is_open(now),
                expected_ms: d.load.expected_ms(out_tokens),
                error_rate: d.load.error_rate(now),
            })
            .collect();
        ordered = deploy::order(&candidates, [rand::random::<f64>(), rand::random::<f64>()]);
        &ordered
    };
    let mut pass = Pass::Capacity;
    let mut in_slo = false;
    for &i in order {
        let d = &up.deployments[i];
        if tried.contains(&i) || !within_slo(d, req, now) {
            continue;
        }
        in_slo = true;
        let Some(slot) = up.try_slot(i) else {
            continue;
        };
        let tokens = req.needed_tokens();
        if let Some(q) = &d.quota {
            if let Err(e) = q.take(tokens, now) {
                pass = match pass {
                    Pass::Quota(p) if p.retry_after_ms <= e.retry_after_ms && !p.never => {
                        Pass::Quota(p)
                    }
                    _ => Pass::Quota(e),
                };
                continue;
            }
        }
        return Ok(Taken {
            slot,
            quota: QuotaBack(d.quota.as_deref().map(|q| (q, tokens))),
        });
    }
    // None within the SLO, or those within it full while a slower one has room: the SLO
    // is what stands in the way.
    let slower_has_room = || {
        up.deployments.iter().enumerate().any(|(i, d)| {
            !tried.contains(&i) && !within_slo(d, req, now) && d.load.has_room(d.max_concurrency)
        })
    };
    if !in_slo || (matches!(pass, Pass::Capacity) && slower_has_room()) {
        return Err(Pass::Slo);
    }
    Err(pass)
}

/// Waits until one of `models` has room by `ready` (woken when a slot frees there) or
/// `deadline` passes; true when it has.
async fn wait_for_room(
    gw: &Gateway,
    models: &[ModelId],
    deadline: Instant,
    ready: impl Fn(&Upstream) -> bool,
) -> bool {
    loop {
        if Instant::now() >= deadline || models.is_empty() {
            return false;
        }
        let mut waits: Vec<_> = models
            .iter()
            .map(|&m| Box::pin(gw.upstreams.get(m).freed.notified()))
            .collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        // A slot that freed before the waits were registered is seen here.
        if models.iter().any(|&m| ready(gw.upstreams.get(m))) {
            return true;
        }
        let any = futures_util::future::select_all(waits);
        if tokio::time::timeout_at(deadline.into(), any).await.is_err() {
            return false;
        }
    }
}

/// Tries the routed candidates; the answering model and its answer, or the error to
/// return when every attempt failed. Every attempt is recorded in `ctx.attempts`. When
/// no call could be made because every candidate was full, the request's SLO (if any) is
/// dropped first; then it waits for a slot (up to `dispatch.queue_ms` in all) and goes
/// round again.
pub async fn run(ctx: &mut RequestContext) -> Result<(ModelId, Answer), ApiError> {
    let state = ctx.state.clone();
    let gw = &*state;
    let deadline = Instant::now() + Duration::from_millis(gw.config.dispatch.queue_ms);
    let skipped_before = ctx.skipped.len();
    loop {
        let round = round(ctx, deadline).await;
        let slo_passed = ctx.skipped[skipped_before..]
            .iter()
            .any(|(_, why)| *why == "slo");
        match round {
            // No deployment meets the request's SLO, or those that do are full: the
            // objective is a preference, not a reason to refuse or wait, so the request
            // goes round again without it.
            Round::Done(Err(_)) | Round::Full(_)
                if ctx.attempts.is_empty() && ctx.request.slo_ms.is_some() && slo_passed =>
            {
                ctx.request.slo_ms = None;
                ctx.skipped.truncate(skipped_before);
            }
            Round::Done(result) => return result,
            Round::Full(full) => {
                let waited = wait_for_room(gw, &full, deadline, Upstream::has_room).await;
                if !waited {
                    gw.metrics.at_capacity();
                    return Err(ApiError::AtCapacity(format!(
                        "every eligible model is at its deployments' max_concurrency ({}; waited up to {} ms); retry shortly",
                        full.iter()
                            .map(|&m| gw.upstreams.get(m).name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        gw.config.dispatch.queue_ms
                    )));
                }
                // Round again: the passes of this round are not the request's story.
                ctx.skipped.truncate(skipped_before);
            }
        }
    }
}

/// How a round of attempts ended.
enum Round {
    Done(Result<(ModelId, Answer), ApiError>),
    /// No call was made and these models were full.
    Full(Vec<ModelId>),
}

/// One pass down the candidates (see [`run`]).
async fn round(ctx: &mut RequestContext, deadline: Instant) -> Round {
    let state = ctx.state.clone();
    let gw = &*state;
    let timeout = Duration::from_millis(gw.config.limits.request_timeout_ms);
    let candidates = ctx.routed.candidates.iter().map(|m| m.index()).collect();
    let mut plan = AttemptPlan::new(candidates, gw.config.limits.max_attempts);
    let mut now = gw.now_ms();
    let mut last_info = AttemptInfo::default();
    // The budget refusal of a candidate the key could not afford (the next may fit).
    let mut refused: Option<budget::Refused> = None;
    // The soonest a model over its quota has room again, when one was passed over.
    let mut quota_wait: Option<u64> = None;
    // Models passed over because every deployment was full.
    let mut full: Vec<ModelId> = Vec::new();
    // The deployments of the model being tried that this request already called.
    let mut tried: Vec<usize> = Vec::new();
    let mut again: Option<ModelId> = None;
    loop {
        let retry = again.take();
        let (m, admit) = match retry {
            Some(m) => (m, Admit::Yes),
            None => {
                let Some((m, admit)) = plan
                    .next_attempt(|m| gw.upstreams.get(ModelId::from_index(m)).breaker.admit(now))
                else {
                    break;
                };
                tried.clear();
                (ModelId::from_index(m), admit)
            }
        };
        let up = gw.upstreams.get(m);
        // A half-open breaker's probe is released on every path that makes no call,
        // including the request going away while it waits.
        let mut probe = ProbeGuard {
            breaker: &up.breaker,
            armed: admit == Admit::Probe,
        };
        // The deployment's slot and quota first (waiting for a slot holds nothing else).
        let mut taken = take_deployment(gw, up, &ctx.request, &tried);
        // Wait for this model before moving on: always without spill (until the
        // deadline), and for the model whose queue balanced dispatch placed the request in
        // (half of `queue_ms`, leaving the rest for the other candidates; not with an SLO,
        // which is dropped rather than waited for).
        let wait_until = if !matches!(taken, Err(Pass::Capacity)) || retry.is_some() {
            None
        } else if !gw.config.dispatch.spill {
            Some(deadline)
        } else {
            let held = ctx.balanced == Some(Verdict::Held)
                && ctx.attempts.is_empty()
                && ctx.request.slo_ms.is_none()
                && ctx.routed.candidates.first() == Some(&m);
            let hold = Duration::from_millis(gw.config.dispatch.hold_ms());
            held.then(|| (Instant::now() + hold).min(deadline))
        };
        if let Some(until) = wait_until {
            // Counted in the model's queue while it waits. A half-open probe is not held
            // while waiting (the model would look closed to everyone else): it is given
            // back. The breaker is asked again once there is room: it may have opened
            // meanwhile.
            let _queued = up.wait_in_queue();
            if probe.armed {
                probe.armed = false;
                up.breaker.abandon_probe();
            }
            while matches!(taken, Err(Pass::Capacity))
                && wait_for_room(gw, &[m], until, |u| {
                    has_room_for(gw, u, &ctx.request, &tried)
                })
                .await
            {
                taken = take_deployment(gw, up, &ctx.request, &tried);
            }
            now = gw.now_ms();
            if taken.is_ok() {
                match up.breaker.admit(now) {
                    Admit::No => {
                        // Cooling down now, or someone else probes it: pass it over (what
                        // was taken goes back as it drops).
                        plan.refund();
                        ctx.skipped.push((m, "cooldown"));
                        continue;
                    }
                    a => probe.armed = a == Admit::Probe,
                }
            }
        }
        let taken = match taken {
            Ok(t) => t,
            Err(pass) => {
                plan.refund();
                // Another deployment of a model already called: not a pass over the model.
                if retry.is_some() {
                    continue;
                }
                ctx.skipped.push((m, pass.name()));
                match pass {
                    Pass::Quota(e) if !e.never => {
                        quota_wait =
                            Some(quota_wait.map_or(e.retry_after_ms, |w| w.min(e.retry_after_ms)));
                    }
                    Pass::Capacity => {
                        gw.metrics.model_full(&up.name);
                        full.push(m);
                    }
                    _ => {}
                }
                continue;
            }
        };
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
                drop(taken);
                // Over the key's rate, or the store is down: the request ends here.
                if !matches!(r, budget::Refused::Exceeded(_)) {
                    return Round::Done(Err(r.into()));
                }
                // Not a call: it does not use up an attempt.
                plan.refund();
                if retry.is_none() {
                    ctx.skipped.push((m, "budget"));
                }
                refused = Some(r);
                continue;
            }
        };
        let Taken { slot, quota } = taken;
        quota.keep();
        let d = slot.deployment;
        let dep = &up.deployments[d];
        tried.push(d);
        if let Some(prev) = ctx.attempts.last().filter(|a| a.model != m) {
            gw.metrics.fallback(prev.model.index());
        }
        let span = tracing::debug_span!(
            "attempt",
            model = %up.name,
            deployment = %dep.name,
            attempt = ctx.attempts.len() + 1,
            outcome = tracing::field::Empty,
            upstream_request_id = tracing::field::Empty,
        );
        let forward = ctx.trace.upstream_headers(
            crate::otel::span_id(&span).unwrap_or_else(crate::trace::new_span_id),
        );
        let mut info = AttemptInfo::default();
        let attempt_started = gw.now_ms();
        let call_started = Instant::now();
        let call = Call {
            request: &ctx.request,
            model: &up.name,
            upstream_model: &dep.upstream_model,
            timeout,
            id: &ctx.id,
            forward: &forward,
        };
        let result = dep
            .provider
            .call(call, &mut info)
            .instrument(span.clone())
            .await;
        probe.armed = false;
        // A stream is returned with its first chunk: this is its time to first token; a
        // full answer's, the whole call.
        let call_ms = call_started.elapsed().as_secs_f64() * 1000.0;
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
                if let Some(q) = &dep.quota {
                    q.observe(&info.rate_limit, gw.now_ms());
                }
                let streamed = matches!(answer, Answer::Stream { .. });
                if streamed {
                    dep.load.observe_ttft(call_ms, gw.now_ms());
                }
                ctx.slot = Some(slot.started(call_started, call_ms, streamed));
                ctx.hold = hold;
                gw.record_success(m, Some(d), attempt_started);
                ctx.attempts.push(AttemptRecord {
                    model: m,
                    deployment: d,
                    outcome,
                    detail: String::new(),
                    upstream_request_id,
                });
                ctx.rate_limit = info.rate_limit;
                return Round::Done(Ok((m, answer)));
            }
            Err(f) => {
                if let Some(h) = hold {
                    h.settle(failed_charge);
                }
                // The breakers learn of the failure before the slot frees, so a request
                // waiting for the slot sees the model cooling down.
                let opened = gw.record_failure(m, Some(d));
                drop(slot);
                if opened {
                    tracing::warn!(model = %up.name, reason = outcome.name(), cooldown_s = gw.config.cooldown.seconds, "model cooled down after repeated failures");
                }
                ctx.attempts.push(AttemptRecord {
                    model: m,
                    deployment: d,
                    outcome,
                    detail: f.detail,
                    upstream_request_id,
                });
                last_info = info;
                // Another deployment of the same model first, while attempts remain.
                if tried.len() < up.deployments.len() && plan.take_one() {
                    again = Some(m);
                }
            }
        }
    }
    if ctx.attempts.is_empty() && !full.is_empty() {
        return Round::Full(full);
    }
    if let (true, Some(r)) = (ctx.attempts.is_empty(), refused) {
        return Round::Done(Err(r.into()));
    }
    if let (true, Some(ms)) = (ctx.attempts.is_empty(), quota_wait) {
        return Round::Done(Err(ApiError::RateLimited {
            message: "every eligible model is at its configured quota (limits); retry shortly"
                .into(),
            retry_after: HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()).ok(),
        }));
    }
    if ctx.attempts.is_empty() && ctx.skipped.iter().any(|(_, why)| *why == "quota") {
        return Round::Done(Err(ApiError::bad_request(
            "the request (prompt plus max_tokens) is larger than the tokens per minute of every eligible deployment (limits.tpm)",
            Some("max_tokens"),
        )));
    }
    let summary = attempts_summary(gw, &ctx.attempts);
    let n = ctx.attempts.len();
    Round::Done(Err(match ctx.attempts.last().map(|a| a.outcome) {
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
    }))
}
