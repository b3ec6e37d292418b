//! The request pipeline: one [`RequestContext`] carried through an explicit sequence of
//! stages, each in its own module.
//!
//! `POST /v1/chat/completions` ([`chat`]):
//!
//! | # | stage | module | what it does |
//! |---|---|---|---|
//! | 1 | parse | [`crate::request`] | validate the body and headers once |
//! | 2 | before routing | [`rules`] | the `routes:` rules and the PII guard: block, redact, or narrow the pool (auth goes here too) |
//! | 2c | cache | [`cache`] | a stored answer to the same (or a guarded near-duplicate) request, answered at once |
//! | 3 | route | [`route`] | the decider ranks the models; context windows filter them |
//! | 3d | affinity | [`affinity`] | `affinity:`: keep a conversation on its model unless a switch pays |
//! | 3c | shadow | [`shadow`] | `shadow:` routers decide the request off the request path |
//! | 3b | cascade | [`cascade`] | `router.cascade`: ask the cheap tier first, answer when enough of it agrees, else go on (reusing a tier answer when the router's choice is a tier model) |
//! | 3e | balance | [`balance`] | `dispatch.balance`: near capacity, assign the requests of a short window jointly under the free slots |
//! | 4 | attempts | [`attempts`] | try models down the ranking through their deployments' providers (deployment choice, spill and queue, fallback, cooldown) |
//! | 5 | respond | [`stream`] | the full body, or the stream piped chunk by chunk |
//! | 6 | after the response | [`decision_log`], [`record`] | one log line per decision; the feedback record of a learned decision |
//!
//! `POST /v1/route` ([`decide_only`]) runs stages 1-3 and answers the decision.
//! Stages get the context (or the part they need) and never call back into the HTTP
//! layer; the HTTP layer ([`crate::http`]) only extracts and maps.
//!
//! Every chat request runs in a `request` span, its stages in `parse` / `route` /
//! `attempts` spans and each upstream call in an `attempt` span (debug level: free
//! unless traced, exported with the `otel` feature, [`crate::otel`]). Every answer
//! carries `x-routewise-model`, `x-routewise-decision-id`, `x-routewise-attempts`, the
//! request id and `traceparent` ([`crate::trace`]); a direct request's answer also
//! carries the upstream's rate-limit headers, a cascaded one `x-routewise-cascade`
//! (`accepted@<model>` / `escalated@<model>`) and `x-routewise-cascade-calls`, one
//! that routes matched `x-routewise-route` (their names, comma-separated), and a
//! conversation turn whose model differed from the router's choice
//! `x-routewise-affinity` (`stayed` / `switched`).

pub mod affinity;
pub mod attempts;
pub mod auth;
pub mod balance;
pub mod budget;
pub mod cache;
pub mod cascade;
pub mod context;
pub mod decision_log;
pub mod pace;
pub mod record;
pub mod restore;
pub mod route;
pub mod rules;
pub mod shadow;
pub mod stream;

pub use context::RequestContext;

use std::sync::Arc;
use std::time::Instant;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::error::ApiError;
use crate::models::ModelId;
use crate::request;
use crate::state::{AppState, Gateway};
use crate::trace::TraceContext;
use crate::upstream::Answer;
use tracing::Instrument;

use self::decision_log::End;
use self::route::Reason;

/// Response header naming the model that answered.
pub const MODEL_HEADER: HeaderName = HeaderName::from_static("x-routewise-model");
/// Response header carrying the decision id.
pub const DECISION_HEADER: HeaderName = HeaderName::from_static("x-routewise-decision-id");
/// Response header with the number of upstream attempts.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-routewise-attempts");
/// Response header with a cascade's verdict: `accepted@<model>` or `escalated@<model>`.
pub const CASCADE_HEADER: HeaderName = HeaderName::from_static("x-routewise-cascade");
/// Response header with the cache's verdict: `hit-exact`, `hit-semantic` or `miss`.
pub const CACHE_HEADER: HeaderName = HeaderName::from_static("x-routewise-cache");
/// Response header naming the `routes:` rules that applied (comma-separated).
pub const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-routewise-route");
/// Response header with the upstream calls a cascaded request made (tier + escalation).
pub const CASCADE_CALLS_HEADER: HeaderName = HeaderName::from_static("x-routewise-cascade-calls");

/// Whether decision `id` falls in a `share` sample, the same on every instance. UUIDv7 ids
/// made in the same millisecond differ only by a counter, so their bits are no draw: the
/// id (xor `salt`, which makes independent samples) is mixed by splitmix64's finaliser
/// into a uniform number.
pub fn id_in_sample(id: &str, salt: u64, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    let mut x = id_bits(id) ^ salt;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    ((x >> 11) as f64) < share * (1u64 << 53) as f64
}

/// A hex decision id folded into 64 bits (its two halves xored; 0 if it is not hex).
pub fn id_bits(id: &str) -> u64 {
    let id = u128::from_str_radix(id, 16).unwrap_or(0);
    (id >> 64) as u64 ^ id as u64
}

/// A fresh decision id (UUIDv7: time-ordered, unique).
pub fn new_decision_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .simple()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Decrements the in-flight gauge when the request ends, however it ends.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn start(gw: &Gateway) -> InFlight {
        gw.metrics.in_flight().inc();
        InFlight(gw.metrics.in_flight().clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `POST /v1/chat/completions` for an already read body.
pub async fn chat(
    state: AppState,
    caller: Option<Arc<auth::Caller>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let id = new_decision_id();
    let mut trace = TraceContext::from_headers(&headers, &id);
    let span = tracing::debug_span!(
        "request",
        decision_id = %id,
        request_id = %trace.request_id,
        model = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    crate::otel::link(&span, &mut trace);
    chat_stages(state, caller, headers, body, started, id, trace)
        .instrument(span)
        .await
}

async fn chat_stages(
    state: AppState,
    caller: Option<Arc<auth::Caller>>,
    headers: HeaderMap,
    body: Bytes,
    started: Instant,
    id: String,
    trace: TraceContext,
) -> Response {
    let gw = &*state;
    // 1. parse
    let parsed = tracing::debug_span!("parse").in_scope(|| request::parse(&body, &headers, true));
    let mut request = match parsed {
        Ok(r) => r,
        Err(e) => return reject(gw, e, &id, &trace),
    };
    // 0. (done by the HTTP layer) the caller's key: its models and default policy
    if let Some(c) = &caller {
        if let Err(e) = auth::apply(gw, c, &mut request) {
            return reject(gw, e, &id, &trace);
        }
    }
    // 2. before routing: the rules, the key's pool and the PII guard
    let signals = match rules::run(gw, &mut request, &headers, caller.as_deref(), true) {
        Ok(s) => s.map(Box::new),
        Err(e) => return reject(gw, e, &id, &trace),
    };
    // 2c. the response cache
    let mut probe = cache::probe(gw, &request, &headers, signals.as_deref()).map(Box::new);
    if let Some(p) = probe.as_mut() {
        let allow = caller.as_ref().and_then(|c| c.allow.as_deref());
        let hit = cache::answer(gw, p, &request, allow).await;
        if let Some((model, answer)) = hit {
            let routed = route::Routed {
                reason: route::Reason::Cached,
                policy: request.preference.unwrap_or(gw.config.router.policy),
                decision: None,
                candidates: vec![model],
                by_policy: false,
                penalty: Vec::new(),
            };
            let _in_flight = InFlight::start(gw);
            let ctx = RequestContext::new(
                state.clone(),
                id,
                started,
                request,
                routed,
                trace,
                signals,
                probe,
                caller,
            );
            return respond(ctx, model, answer).await;
        }
    }
    // A pool narrowed by the rules is not left by the calls beside the answer.
    let restricted = signals.as_ref().is_some_and(|s| s.outcome.allow.is_some());
    if restricted {
        request.cascade = request::CascadeChoice::Off;
    }
    // 3. route
    let routed = tracing::debug_span!("route")
        .in_scope(|| route::route(gw, &request, false, signals.as_deref()));
    let mut routed = match routed {
        Ok(r) => r,
        Err(e) => return reject(gw, e, &id, &trace),
    };
    let cascade_plan = match cascade::plan(gw, &request, &routed) {
        Ok(p) => p,
        Err(e) => return reject(gw, e, &id, &trace),
    };
    // 3d. conversation affinity: stay on the conversation's model unless a switch pays.
    let affinity = affinity::apply(
        gw,
        caller.as_deref().map(|c| c.id.as_str()),
        &request,
        &headers,
        &mut routed,
        cascade_plan.is_some(),
    )
    .await;
    gw.metrics.decision_latency(started.elapsed().as_secs_f64());
    // 3c. shadow routers: queued, decided off the request path.
    if let (Some(shadows), Some(d)) = (gw.shadows.get(), &routed.decision) {
        if routed.reason == route::Reason::Routed && shadows.decides(&id) {
            shadows.observe(shadow::Job {
                decision_id: id.clone(),
                prompt: request.prompt.clone(),
                input_tokens: u32::try_from(request.prompt_tokens).unwrap_or(u32::MAX),
                policy: routed.policy,
                live: gw
                    .upstreams
                    .at(routed.chosen().unwrap_or(d.chosen))
                    .map_or_else(String::new, |u| u.name.clone()),
                propensity: d.propensity,
                exec: (!restricted && shadows.executes(&id)).then(|| shadow::ExecRequest {
                    request: request.non_streaming(),
                    body_bytes: body.len(),
                    runtime: tokio::runtime::Handle::current(),
                }),
            });
        }
    }
    let _in_flight = InFlight::start(gw);
    let mut ctx = RequestContext::new(
        state.clone(),
        id,
        started,
        request,
        routed,
        trace,
        signals,
        probe,
        caller,
    );
    ctx.affinity = affinity;
    // 3b. cascade: the tier's agreed answer, or on to the router's choice (reusing a tier
    // answer when the choice is a tier model).
    if let Some(plan) = cascade_plan {
        let verdict = cascade::run(&mut ctx, &plan)
            .instrument(tracing::debug_span!("cascade"))
            .await;
        let reuse = match verdict {
            cascade::Verdict::Accepted(a) => Some(a),
            cascade::Verdict::Escalate(answers) => {
                let first = ctx.routed.candidates.first().copied();
                answers.into_iter().find(|a| Some(a.model) == first)
            }
        };
        if let Some(a) = reuse {
            let m = a.model;
            if let Some(answer) = cascade::answer_of(a, &ctx.request) {
                return respond(ctx, m, answer).await;
            }
            // Not replayable as the stream asked for: the router's choice is asked.
            if let Some(t) = ctx.cascade.as_mut() {
                t.accepted = None;
            }
        }
    }
    // 3e. balanced dispatch: near capacity, assigned jointly with the requests around.
    balance::apply(&mut ctx)
        .instrument(tracing::debug_span!("balance"))
        .await;
    // 4. attempts
    let attempted = attempts::run(&mut ctx)
        .instrument(tracing::debug_span!("attempts"))
        .await;
    match attempted {
        // 5. respond (6. runs when the answer is complete)
        Ok((m, answer)) => respond(ctx, m, answer).await,
        Err(err) => {
            let status = err.status().as_u16();
            let cost = cascade::total_cost(&ctx, None);
            decision_log::emit(&ctx, None, status, cost, None, End::Failed);
            gw.metrics.request("chat", "-", status);
            with_headers(err.into_response(), &ctx, None)
        }
    }
}

/// A client error: counted, answered, never logged at more than debug.
fn reject(gw: &Gateway, e: ApiError, id: &str, trace: &TraceContext) -> Response {
    gw.metrics.request("chat", "-", e.status().as_u16());
    gw.stats
        .rejected(crate::stats::unix_ms(), e.status().as_u16());
    tracing::debug!(decision_id = %id, error = %e, "rejected request");
    let mut resp = e.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(DECISION_HEADER, v);
    }
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(0));
    trace.echo(h);
    resp
}

/// Stage 5 for an answer from model `m`; stage 6 for a complete one.
async fn respond(mut ctx: RequestContext, m: ModelId, answer: Answer) -> Response {
    let state = ctx.state.clone();
    let gw = &*state;
    let name = gw.upstreams.get(m).name.as_str();
    tracing::Span::current().record("model", name);
    match answer {
        Answer::Full {
            status,
            content_type,
            body,
        } => {
            let cached = ctx.routed.reason == Reason::Cached;
            let usage = (status.is_success() && !cached)
                .then(|| stream::parse_usage(&body))
                .flatten();
            // The deployment's slot frees here; a success teaches it the time per token.
            if let Some(slot) = ctx.slot.take() {
                if status.is_success() {
                    slot.complete(usage.map(|(_, c)| c));
                }
            }
            let cost = if cached {
                Some(0.0) // no model was called
            } else if cascade::answered_by_tier(&ctx, m) {
                None // already counted with the tier calls
            } else {
                usage.map(|(p, c)| gw.upstreams.get(m).cost(p, c))
            };
            if let Some(c) = cost {
                gw.metrics.cost(m.index(), c);
            }
            if let Some(h) = ctx.hold.take() {
                if status.is_success() {
                    h.settle(cost);
                } else {
                    h.release();
                }
            }
            let cost = cascade::total_cost(&ctx, cost);
            // 6. after the response (counted before the record's wait, so that a client
            // leaving meanwhile is counted once)
            decision_log::emit(&ctx, Some(m), status.as_u16(), cost, usage, End::Complete);
            gw.metrics.request("chat", name, status.as_u16());
            if status.is_success() {
                affinity::answered(&ctx, m);
                record::record(&ctx, m, cost, record::When::BeforeAnswering).await;
            }
            if let (Some(p), false, true) = (ctx.cache.as_mut(), cached, status.is_success()) {
                cache::store(
                    &state,
                    p,
                    cache::Cached {
                        model: m,
                        content_type: content_type.clone(),
                        body: body.clone(),
                    },
                );
            }
            let body = match ctx.signals.as_ref().and_then(|s| s.restore.as_ref()) {
                Some(r) if !r.is_empty() => match std::str::from_utf8(&body) {
                    Ok(text) => Bytes::from(r.restore(text, true)),
                    Err(_) => body,
                },
                _ => body,
            };
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            with_headers(resp, &ctx, Some(m))
        }
        Answer::Stream {
            status,
            content_type,
            first,
            rest,
        } => {
            gw.metrics.request("chat", name, status.as_u16());
            let mut head = with_headers(Response::new(axum::body::Body::empty()), &ctx, Some(m));
            *head.status_mut() = status;
            head.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("text/event-stream")),
            );
            head.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-cache"));
            let (parts, _) = head.into_parts();
            let piped = stream::pipe(ctx, m, first, rest);
            Response::from_parts(parts, piped.into_body())
        }
    }
}

/// Adds the routewise response headers, the request's ids and, for a direct request,
/// the upstream's rate-limit headers.
fn with_headers(mut resp: Response, ctx: &RequestContext, model: Option<ModelId>) -> Response {
    let gw = &*ctx.state;
    let h = resp.headers_mut();
    if ctx.routed.reason == Reason::Direct {
        for (name, value) in &ctx.rate_limit {
            h.insert(name.clone(), value.clone());
        }
    }
    if let Some(m) = model {
        if let Ok(v) = HeaderValue::from_str(&gw.upstreams.get(m).name) {
            h.insert(MODEL_HEADER, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        h.insert(DECISION_HEADER, v);
    }
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(ctx.attempts.len()));
    if let Some(p) = &ctx.cache {
        h.insert(CACHE_HEADER, HeaderValue::from_static(p.status));
    }
    if let Some(names) = ctx.signals.as_ref().and_then(|s| s.route_names(gw)) {
        if let Ok(v) = HeaderValue::from_str(&names) {
            h.insert(ROUTE_HEADER, v);
        }
    }
    if let Some(v) = ctx.affinity.and_then(|t| t.verdict) {
        h.insert(
            affinity::AFFINITY_HEADER,
            HeaderValue::from_static(v.name()),
        );
    }
    if let Some(t) = &ctx.cascade {
        if let Some(v) = cascade::header_value(gw, t, model) {
            h.insert(CASCADE_HEADER, v);
        }
        h.insert(
            CASCADE_CALLS_HEADER,
            HeaderValue::from(t.calls.len() + ctx.attempts.len()),
        );
    }
    ctx.trace.echo(h);
    resp
}

/// Serves `POST /v1/route`: stages 1-3, then the decision as JSON; no upstream call.
pub fn decide_only(
    state: &AppState,
    caller: Option<&auth::Caller>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<serde_json::Value, ApiError> {
    let started = Instant::now();
    let gw = &**state;
    let mut req = request::parse(body, headers, false)?;
    if let Some(c) = caller {
        auth::apply(gw, c, &mut req)?;
    }
    let signals = rules::run(gw, &mut req, headers, caller, false)?;
    let routed = route::route(gw, &req, true, signals.as_ref())?;
    gw.metrics.decision_latency(started.elapsed().as_secs_f64());
    let now = gw.now_ms();
    let chosen = gw.upstreams.get(routed.candidates[0]);
    let mut models = Vec::with_capacity(gw.upstreams.len());
    if let Some(d) = &routed.decision {
        for &ci in &d.ranking {
            let Some(u) = gw.upstreams.at(ci) else {
                continue;
            };
            models.push(json!({
                "name": u.name,
                "predicted_score": d.scores[ci],
                "predicted_cost_usd": d.costs[ci],
                "eligible": routed.candidates.contains(&u.id),
                "cooling_down": u.breaker.is_open(now),
                "latency_energy_penalty": (!routed.penalty.is_empty()).then(|| routed.penalty_of(u.id)),
                "deployments": u.deployments.iter().map(|d| json!({
                    "name": d.name,
                    "in_flight": d.load.in_flight(),
                    "max_concurrency": d.max_concurrency,
                    "ttft_ms": d.load.ttft_ms(),
                    "ms_per_token": d.load.ms_per_token(),
                    "error_rate": d.load.error_rate(now),
                    "cooling_down": d.breaker.is_open(now),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    gw.metrics.request("route", &chosen.name, 200);
    Ok(json!({
        "decision_id": new_decision_id(),
        "model": chosen.name,
        "reason": routed.reason.name(),
        "policy": routed.policy,
        "prompt_tokens": req.prompt_tokens,
        "propensity": routed.decision.as_ref().and_then(|d| d.propensity),
        "explored": routed.decision.as_ref().is_some_and(|d| d.explored),
        "fallback_order": routed.candidates.iter().map(|&u| gw.upstreams.get(u).name.as_str()).collect::<Vec<_>>(),
        "models": models,
        "key": caller.map(|c| json!({"id": c.id, "name": c.name, "team": c.team})),
        "route": signals.as_ref().map(|s| json!({
            "matched": s.matched_json(gw),
            "tags": s.outcome.tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            "pii": s.pii.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "pii_action": s.pii_action.map(|a| a.name()),
        })),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_uuid_v7_in_simple_lower_hex_and_unique() {
        let ids: Vec<String> = (0..1000).map(|_| new_decision_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{id}"
            );
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 7, "{id}");
        }
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }
}
