//! The chat-completions pipeline: parse once, route, try models down the ranking, answer.
//!
//! * Routing is synchronous: `Engine::decide` ranks every model (with `bandit:` configured,
//!   `model: auto` is ranked by the online router instead, [`crate::online`]); the ranking
//!   (minus models whose context window is too small) is the fallback order
//!   ([`crate::fallback`]). Online decisions are kept for feedback once a model answered.
//! * An attempt fails over to the next model on a connection error, HTTP 5xx, 429, a
//!   timeout before the first byte, or a body that breaks before it is complete
//!   (non-streaming: nothing has reached the client yet) or before its first chunk
//!   (streaming). Any other upstream answer (2xx, other 4xx) is passed through as is.
//! * Streams are piped chunk by chunk. Once the first chunk is sent there is no fallback:
//!   an upstream error or a stall longer than `request_timeout_ms` ends the stream with an
//!   SSE error event (`data: {"error": {...}}`). A client that goes away drops the body,
//!   which drops the upstream response and closes its connection.
//! * One structured log line per decision (target `routewise::decision`): predictions,
//!   reason, attempts, answering model, realised cost (upstream usage x prices).

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use routewise_online::{DecisionRecord, OnlineDecision};
use routewise_router::{Decision, Policy};
use serde::Deserialize;
use serde_json::json;

use crate::config::Provider;
use crate::cooldown::{Admit, Breaker};
use crate::error::{error_json, ApiError};
use crate::fallback::{self, AttemptPlan};
use crate::metrics::AttemptOutcome;
use crate::online;
use crate::request::{self, ChatRequest};
use crate::state::{AppState, Gateway};

/// Response header naming the model that answered.
pub const MODEL_HEADER: HeaderName = HeaderName::from_static("x-routewise-model");
/// Response header carrying the decision id.
pub const DECISION_HEADER: HeaderName = HeaderName::from_static("x-routewise-decision-id");
/// Response header with the number of upstream attempts.
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-routewise-attempts");

/// A fresh decision id (UUIDv7: time-ordered, unique).
pub fn new_decision_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A routed request: the models to try, and why.
#[derive(Debug)]
pub struct Routed {
    /// `routed` (the router chose) or `direct` (the client named the model).
    pub reason: &'static str,
    pub policy: Policy,
    /// The engine's decision (`None` for direct requests, and for online decisions: those
    /// are in `online`; read either through [`Routed::decision`]).
    pub decision: Option<Decision>,
    /// Upstream indices to try, best first, all fitting the context window.
    pub candidates: Vec<usize>,
    /// The online router's decision (`model: auto` with `bandit:` configured).
    pub online: Option<OnlineDecision>,
}

impl Routed {
    /// The decision the candidates came from: the engine's, or the online router's.
    pub fn decision(&self) -> Option<&Decision> {
        decision_of(&self.decision, &self.online)
    }
}

/// The engine's decision if any, else the online router's.
fn decision_of<'a>(
    decision: &'a Option<Decision>,
    online: &'a Option<OnlineDecision>,
) -> Option<&'a Decision> {
    decision.as_ref().or(online.as_ref().map(|o| &o.decision))
}

/// Routes a parsed request. `decide_direct` also runs the router for a named model
/// (to report predictions from `/v1/route`).
pub fn route(gw: &Gateway, req: &ChatRequest, decide_direct: bool) -> Result<Routed, ApiError> {
    let policy = req.preference.unwrap_or(gw.config.router.policy);
    let needed = req.needed_tokens();
    let direct = if req.is_auto() {
        None
    } else {
        Some(
            *gw.by_name
                .get(&req.model)
                .ok_or_else(|| ApiError::ModelNotFound(req.model.clone()))?,
        )
    };
    let tokens = u32::try_from(req.prompt_tokens).unwrap_or(u32::MAX);
    let (decision, online) = match (direct, gw.online.get()) {
        (None, Some(o)) => {
            let od = online::decide(gw, o, &req.prompt, tokens, policy);
            (None, Some(od))
        }
        (None, None) => (Some(gw.engine.decide(&req.prompt, tokens, policy)), None),
        (Some(_), _) if decide_direct => {
            (Some(gw.engine.decide(&req.prompt, tokens, policy)), None)
        }
        (Some(_), _) => (None, None),
    };
    let candidates = match (direct, decision_of(&decision, &online)) {
        (Some(m), _) => fallback::eligible([m], &gw.context_windows, needed),
        (None, Some(d)) => fallback::eligible(
            d.ranking.iter().map(|&ci| gw.catalog_to_upstream[ci]),
            &gw.context_windows,
            needed,
        ),
        (None, None) => Vec::new(),
    };
    if candidates.is_empty() {
        return Err(ApiError::ContextTooLong { tokens: needed });
    }
    Ok(Routed {
        reason: if direct.is_some() { "direct" } else { "routed" },
        policy,
        decision,
        candidates,
        online,
    })
}

/// The JSON form of a policy.
pub fn policy_json(p: &Policy) -> serde_json::Value {
    match *p {
        Policy::Lambda(l) => json!({"lambda": l}),
        Policy::BudgetUsd(b) => json!({"budget_usd": b}),
        Policy::Threshold {
            strong,
            weak,
            threshold,
        } => json!({"threshold": threshold, "strong": strong, "weak": weak}),
    }
}

type UpstreamStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// A successful (non-retryable) upstream answer.
enum Answer {
    Full {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
    Stream {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        first: Bytes,
        rest: UpstreamStream,
    },
}

/// A failed attempt: fall back.
#[derive(Debug, Clone)]
struct Failure {
    outcome: AttemptOutcome,
    detail: String,
}

impl Failure {
    fn new(outcome: AttemptOutcome, detail: impl Into<String>) -> Failure {
        Failure {
            outcome,
            detail: detail.into(),
        }
    }
}

/// One attempt, for the decision log.
#[derive(Debug, Clone)]
struct AttemptRecord {
    model: usize,
    outcome: AttemptOutcome,
    detail: String,
}

/// Describes a transport error with its causes, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() {
        "connect error".to_string()
    } else if e.is_timeout() {
        "timeout".to_string()
    } else if e.is_body() || e.is_decode() {
        "body error".to_string()
    } else {
        "transport error".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn transport_outcome(e: &reqwest::Error) -> AttemptOutcome {
    if e.is_timeout() {
        AttemptOutcome::Timeout
    } else if e.is_body() || e.is_decode() {
        AttemptOutcome::Body
    } else {
        AttemptOutcome::Connect
    }
}

async fn attempt_http(
    gw: &Gateway,
    m: usize,
    req: &ChatRequest,
    timeout: Duration,
) -> Result<Answer, Failure> {
    let up = &gw.upstreams[m];
    let body = req
        .upstream_body(&up.upstream_model)
        .map_err(|e| Failure::new(AttemptOutcome::Body, format!("cannot encode body: {e}")))?;
    let url = up
        .url
        .clone()
        .ok_or_else(|| Failure::new(AttemptOutcome::Connect, "no upstream URL"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rb = gw
        .client
        .post(url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(body);
    if let Some(auth) = &up.auth {
        rb = rb.header(AUTHORIZATION, auth.clone());
    }
    let sent = Instant::now();
    let resp = match tokio::time::timeout_at(deadline, rb.send()).await {
        Err(_) => {
            return Err(Failure::new(
                AttemptOutcome::Timeout,
                format!("no response within {} ms", timeout.as_millis()),
            ))
        }
        Ok(Err(e)) => return Err(Failure::new(transport_outcome(&e), describe(&e))),
        Ok(Ok(r)) => r,
    };
    gw.metrics.upstream_latency(m, sent.elapsed().as_secs_f64());
    let status = resp.status();
    if status.is_server_error() {
        return Err(Failure::new(
            AttemptOutcome::Http5xx,
            format!("HTTP {}", status.as_u16()),
        ));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::new(AttemptOutcome::Http429, "HTTP 429"));
    }
    let content_type = resp.headers().get(CONTENT_TYPE).cloned();
    if !(req.stream && status.is_success()) {
        let body = match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Err(_) => {
                return Err(Failure::new(
                    AttemptOutcome::Timeout,
                    format!("body not complete within {} ms", timeout.as_millis()),
                ))
            }
            Ok(Err(e)) => return Err(Failure::new(AttemptOutcome::Body, describe(&e))),
            Ok(Ok(b)) => b,
        };
        return Ok(Answer::Full {
            status,
            content_type,
            body,
        });
    }
    let mut stream = resp.bytes_stream();
    let first = loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(Failure::new(
                    AttemptOutcome::Timeout,
                    format!("no stream data within {} ms", timeout.as_millis()),
                ))
            }
            Ok(None) => {
                return Err(Failure::new(
                    AttemptOutcome::Body,
                    "the stream ended before any data",
                ))
            }
            Ok(Some(Err(e))) => return Err(Failure::new(AttemptOutcome::Body, describe(&e))),
            Ok(Some(Ok(b))) if b.is_empty() => continue,
            Ok(Some(Ok(b))) => break b,
        }
    };
    Ok(Answer::Stream {
        status,
        content_type,
        first,
        rest: Box::pin(stream.map(|r| r.map_err(|e| describe(&e)))),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn attempt_replay(gw: &Gateway, m: usize, req: &ChatRequest, id: &str) -> Result<Answer, Failure> {
    let up = &gw.upstreams[m];
    let answer = gw
        .replay
        .as_ref()
        .and_then(|r| r.answer(&up.name, &req.prompt, req.prompt_tokens))
        .ok_or_else(|| {
            Failure::new(AttemptOutcome::Connect, "replay has no data for this model")
        })?;
    let json = Some(HeaderValue::from_static("application/json"));
    if !req.stream {
        return Ok(Answer::Full {
            status: StatusCode::OK,
            content_type: json,
            body: answer.completion(id, &up.name, unix_now()),
        });
    }
    let mut events = answer
        .events(id, &up.name, unix_now(), req.include_usage)
        .into_iter();
    let first = events.next().unwrap_or_default();
    Ok(Answer::Stream {
        status: StatusCode::OK,
        content_type: Some(HeaderValue::from_static("text/event-stream")),
        first,
        rest: Box::pin(futures_util::stream::iter(events.map(Ok))),
    })
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

/// Decrements the in-flight gauge when the request ends, however it ends.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

fn parse_usage(json: &[u8]) -> Option<(u64, u64)> {
    let u = serde_json::from_slice::<UsageOnly>(json).ok()?.usage?;
    Some((
        u.prompt_tokens.unwrap_or(0),
        u.completion_tokens.unwrap_or(0),
    ))
}

/// Finds a `usage` object in SSE data lines of `chunk`.
fn scan_stream_usage(chunk: &[u8]) -> Option<(u64, u64)> {
    const NEEDLE: &[u8] = b"\"usage\"";
    if !chunk.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return None;
    }
    chunk
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|data| parse_usage(data.trim_ascii()))
        .next_back()
}

/// Everything the per-decision log line needs.
struct DecisionLog {
    state: AppState,
    id: String,
    requested: String,
    reason: &'static str,
    policy: Policy,
    decision: Option<Decision>,
    online: Option<OnlineDecision>,
    attempts: Vec<AttemptRecord>,
    prompt_tokens: u64,
    stream: bool,
    started: Instant,
}

struct Predictions<'a>(&'a Gateway, &'a Decision);

impl fmt::Display for Predictions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (gw, d) = (self.0, self.1);
        f.write_str("[")?;
        for (k, &ci) in d.ranking.iter().enumerate() {
            if k > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{{\"model\":\"{}\",\"score\":{:.4},\"cost_usd\":{:.8}}}",
                gw.upstreams[gw.catalog_to_upstream[ci]].name, d.scores[ci], d.costs[ci]
            )?;
        }
        f.write_str("]")
    }
}

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
                self.0.upstreams[a.model].name,
                a.outcome.name()
            )?;
            if !a.detail.is_empty() {
                write!(f, " ({})", a.detail)?;
            }
        }
        Ok(())
    }
}

impl DecisionLog {
    /// The decision made: the engine's, or the online router's.
    fn decision(&self) -> Option<&Decision> {
        decision_of(&self.decision, &self.online)
    }

    /// The record to keep for feedback on this (online) decision, answered by `m`.
    fn online_record(&self, m: usize, cost: Option<f64>) -> Option<DecisionRecord> {
        let od = self.online.as_ref()?;
        let online = self.state.online.get()?;
        let latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
        Some(online::record(
            &self.state,
            online,
            od,
            &self.id,
            m,
            cost,
            latency_ms,
        ))
    }

    fn emit(&self, answered: Option<usize>, status: u16, cost: Option<f64>, end: &str) {
        let gw = &*self.state;
        let model = answered.map_or("-", |m| gw.upstreams[m].name.as_str());
        let chosen = self.decision().map_or(model, |d| {
            gw.upstreams[gw.catalog_to_upstream[d.chosen]].name.as_str()
        });
        tracing::info!(
            target: "routewise::decision",
            decision_id = %self.id,
            requested = %self.requested,
            reason = self.reason,
            policy = %policy_json(&self.policy),
            chosen,
            model,
            status,
            stream = self.stream,
            end,
            attempts = self.attempts.len(),
            attempt_log = %Attempts(gw, &self.attempts),
            prompt_tokens = self.prompt_tokens,
            realised_cost_usd = cost.unwrap_or(f64::NAN),
            elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3,
            predictions = %self.decision().map(|d| Predictions(gw, d).to_string()).unwrap_or_default(),
            "decision"
        );
    }
}

fn with_headers(
    mut resp: Response,
    gw: &Gateway,
    model: Option<usize>,
    id: &str,
    attempts: usize,
) -> Response {
    let h = resp.headers_mut();
    if let Some(m) = model {
        if let Ok(v) = HeaderValue::from_str(&gw.upstreams[m].name) {
            h.insert(MODEL_HEADER, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(DECISION_HEADER, v);
    }
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    resp
}

/// Serves `POST /v1/chat/completions` for an already read body.
pub async fn chat(state: AppState, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let id = new_decision_id();
    let gw = &*state;
    let req = match request::parse(&body, &headers, true) {
        Ok(r) => r,
        Err(e) => return reject(gw, e, &id),
    };
    let routed = match route(gw, &req, false) {
        Ok(r) => r,
        Err(e) => return reject(gw, e, &id),
    };
    gw.metrics.decision_latency(started.elapsed().as_secs_f64());
    gw.metrics.in_flight().inc();
    let _in_flight = InFlight(gw.metrics.in_flight().clone());
    let mut log = DecisionLog {
        state: state.clone(),
        id,
        requested: req.model.clone(),
        reason: routed.reason,
        policy: routed.policy,
        decision: routed.decision,
        online: routed.online,
        attempts: Vec::new(),
        prompt_tokens: req.prompt_tokens,
        stream: req.stream,
        started,
    };
    let timeout = Duration::from_millis(gw.config.limits.request_timeout_ms);
    let mut plan = AttemptPlan::new(routed.candidates, gw.config.limits.max_attempts);
    let now = gw.now_ms();
    while let Some((m, admit)) = plan.next_attempt(|m| gw.breakers[m].admit(now)) {
        if let Some(prev) = log.attempts.last() {
            gw.metrics.fallback(prev.model);
        }
        let mut probe = ProbeGuard {
            breaker: &gw.breakers[m],
            armed: admit == Admit::Probe,
        };
        let result = match gw.upstreams[m].provider {
            Provider::OpenAi => attempt_http(gw, m, &req, timeout).await,
            Provider::Replay => attempt_replay(gw, m, &req, &log.id),
        };
        probe.armed = false;
        match result {
            Ok(answer) => {
                gw.record_success(m);
                gw.metrics.attempt(m, AttemptOutcome::Ok);
                log.attempts.push(AttemptRecord {
                    model: m,
                    outcome: AttemptOutcome::Ok,
                    detail: String::new(),
                });
                return answer_response(state.clone(), log, m, answer, &req).await;
            }
            Err(f) => {
                let opened = gw.record_failure(m);
                gw.metrics.attempt(m, f.outcome);
                if opened {
                    tracing::warn!(model = %gw.upstreams[m].name, cooldown_s = gw.config.cooldown.seconds, "model cooled down after repeated failures");
                }
                log.attempts.push(AttemptRecord {
                    model: m,
                    outcome: f.outcome,
                    detail: f.detail,
                });
            }
        }
    }
    let summary = Attempts(gw, &log.attempts).to_string();
    let err = match log.attempts.last().map(|a| a.outcome) {
        Some(AttemptOutcome::Timeout) => ApiError::UpstreamTimeout(format!(
            "all {} upstream attempts failed, the last by timeout: {summary}",
            log.attempts.len()
        )),
        _ => ApiError::UpstreamFailed(format!(
            "all {} upstream attempts failed: {summary}",
            log.attempts.len()
        )),
    };
    let status = err.status().as_u16();
    log.emit(None, status, None, "failed");
    gw.metrics.request("chat", "-", status);
    let attempts = log.attempts.len();
    with_headers(err.into_response(), gw, None, &log.id, attempts)
}

/// A client error: counted, answered, never logged at more than debug.
fn reject(gw: &Gateway, e: ApiError, id: &str) -> Response {
    gw.metrics.request("chat", "-", e.status().as_u16());
    tracing::debug!(decision_id = %id, error = %e, "rejected request");
    with_headers(e.into_response(), gw, None, id, 0)
}

async fn answer_response(
    state: AppState,
    log: DecisionLog,
    m: usize,
    answer: Answer,
    req: &ChatRequest,
) -> Response {
    let gw = &*state;
    let attempts = log.attempts.len();
    match answer {
        Answer::Full {
            status,
            content_type,
            body,
        } => {
            let cost = if status.is_success() {
                parse_usage(&body).map(|(p, c)| gw.upstreams[m].cost(p, c))
            } else {
                None
            };
            if let Some(c) = cost {
                gw.metrics.cost(m, c);
            }
            log.emit(Some(m), status.as_u16(), cost, "complete");
            if status.is_success() {
                if let Some(rec) = log.online_record(m, cost) {
                    if online::store_inline(gw) {
                        online::store(gw, rec).await;
                    } else {
                        online::store_in_background(state.clone(), rec);
                    }
                }
            }
            gw.metrics
                .request("chat", &gw.upstreams[m].name, status.as_u16());
            let mut resp = (status, body).into_response();
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("application/json")),
            );
            with_headers(resp, gw, Some(m), &log.id, attempts)
        }
        Answer::Stream {
            status,
            content_type,
            first,
            rest,
        } => {
            gw.metrics
                .request("chat", &gw.upstreams[m].name, status.as_u16());
            let id = log.id.clone();
            let st = StreamState {
                first: Some(first),
                rest,
                idle: Duration::from_millis(gw.config.limits.request_timeout_ms),
                scan_usage: req.include_usage,
                usage: None,
                model: m,
                log: Some(log),
                done: false,
            };
            let body = futures_util::stream::unfold(st, next_chunk);
            let mut resp = Response::new(Body::from_stream(body));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                content_type.unwrap_or(HeaderValue::from_static("text/event-stream")),
            );
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-cache"));
            with_headers(resp, gw, Some(m), &id, attempts)
        }
    }
}

/// The state of a piped stream; logs the decision when it ends or is dropped.
struct StreamState {
    first: Option<Bytes>,
    rest: UpstreamStream,
    idle: Duration,
    scan_usage: bool,
    usage: Option<(u64, u64)>,
    model: usize,
    log: Option<DecisionLog>,
    done: bool,
}

impl StreamState {
    fn seen(&mut self, b: &Bytes) {
        if self.scan_usage {
            if let Some(u) = scan_stream_usage(b) {
                self.usage = Some(u);
            }
        }
    }

    fn finish(&mut self, end: &str) {
        if let Some(log) = self.log.take() {
            let gw = &*log.state;
            let cost = self.usage.map(|(p, c)| gw.upstreams[self.model].cost(p, c));
            if let Some(c) = cost {
                gw.metrics.cost(self.model, c);
            }
            let failed = end != "complete" && end != "client_disconnected";
            if failed {
                gw.record_failure(self.model);
            }
            log.emit(Some(self.model), 200, cost, end);
            if end == "complete" {
                if let Some(rec) = log.online_record(self.model, cost) {
                    online::store_in_background(log.state.clone(), rec);
                }
            }
        }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.finish("client_disconnected");
    }
}

fn error_event(message: &str) -> Bytes {
    let v = error_json(
        message,
        "upstream_error",
        None,
        Some("upstream_stream_error"),
    );
    Bytes::from(format!("data: {v}\n\n"))
}

async fn next_chunk(mut st: StreamState) -> Option<(Result<Bytes, Infallible>, StreamState)> {
    if st.done {
        return None;
    }
    if let Some(b) = st.first.take() {
        st.seen(&b);
        return Some((Ok(b), st));
    }
    match tokio::time::timeout(st.idle, st.rest.next()).await {
        Ok(Some(Ok(b))) => {
            st.seen(&b);
            Some((Ok(b), st))
        }
        Ok(None) => {
            st.finish("complete");
            None
        }
        Ok(Some(Err(e))) => {
            st.done = true;
            st.finish("stream_error");
            Some((
                Ok(error_event(&format!("the upstream stream broke: {e}"))),
                st,
            ))
        }
        Err(_) => {
            st.done = true;
            st.finish("stream_timeout");
            let msg = format!("the upstream stream stalled for {} ms", st.idle.as_millis());
            Some((Ok(error_event(&msg)), st))
        }
    }
}

/// Serves `POST /v1/route`: the decision only, no upstream call.
pub fn decide(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let started = Instant::now();
    let gw = &**state;
    let req = request::parse(body, headers, false)?;
    let routed = route(gw, &req, true)?;
    gw.metrics.decision_latency(started.elapsed().as_secs_f64());
    let now = gw.now_ms();
    let chosen = routed.candidates[0];
    let mut models = Vec::with_capacity(gw.upstreams.len());
    if let Some(d) = routed.decision() {
        for &ci in &d.ranking {
            let u = gw.catalog_to_upstream[ci];
            models.push(json!({
                "name": gw.upstreams[u].name,
                "predicted_score": d.scores[ci],
                "predicted_cost_usd": d.costs[ci],
                "eligible": routed.candidates.contains(&u),
                "cooling_down": gw.breakers[u].is_open(now),
            }));
        }
    }
    gw.metrics.request("route", &gw.upstreams[chosen].name, 200);
    Ok(json!({
        "decision_id": new_decision_id(),
        "model": gw.upstreams[chosen].name,
        "reason": routed.reason,
        "policy": policy_json(&routed.policy),
        "prompt_tokens": req.prompt_tokens,
        "fallback_order": routed.candidates.iter().map(|&u| gw.upstreams[u].name.as_str()).collect::<Vec<_>>(),
        "models": models,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_usage_in_sse_chunks() {
        let chunk = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        assert_eq!(scan_stream_usage(chunk), Some((3, 4)));
        assert_eq!(scan_stream_usage(b"data: {\"choices\":[]}\n\n"), None);
        assert_eq!(
            parse_usage(br#"{"id":"x","usage":{"prompt_tokens":1}}"#),
            Some((1, 0))
        );
    }

    #[test]
    fn error_event_is_sse_with_openai_error_shape() {
        let e = error_event("boom");
        let s = std::str::from_utf8(&e).unwrap_or("");
        assert!(s.starts_with("data: {") && s.ends_with("}\n\n"));
        let v: serde_json::Value = serde_json::from_str(&s[6..]).unwrap_or_default();
        assert_eq!(v["error"]["message"], "boom");
        assert_eq!(v["error"]["type"], "upstream_error");
    }
}
