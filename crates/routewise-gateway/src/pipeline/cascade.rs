//! Stage 3b, the cascade (`router.cascade`, issue 13): for a request the router chooses
//! for, ask the cheap tier first and return its answer when enough of the tier agrees;
//! otherwise escalate to the router's choice (stage 4).
//!
//! The agreement family of [`routewise_router::cascade`] (the mixture-of-thoughts cascade,
//! Yue et al., ICLR 2024): the tier models are called concurrently, without streaming; each
//! answer is read by the configured extractor ([`routewise_router::extract`]) from the
//! response's `choices[0].message.content`, and the plurality answer is accepted as soon
//! as `min_agree` models gave it (under `extractor: semantic`, answers that agree in
//! meaning count as one: [`routewise_signals::agreement`]). With `min_confidence`, the
//! tier is asked for token logprobs, and a readable answer whose token confidence
//! ([`routewise_router::cascade::token_confidence`]) reaches it is accepted on its own,
//! agreement or not; an upstream that returns no logprobs takes part by agreement only,
//! as does one that refuses the parameter (a 400: asked once more without it, unless
//! the client asked for logprobs itself), and a client that did not ask for logprobs
//! gets none. The calls still running are
//! then dropped, which closes their upstream connections; likewise once no plurality can
//! reach `min_agree` any more (and no answer still to come could be confident).
//!
//! With `learned: true` the artifact's calibrated confidence chain (FrugalGPT's family,
//! [`routewise_router::cascade`]) runs instead: its tier one model at a time, in its
//! order, and after each answer its acceptor, on the router's predicted scores and the
//! agreement so far, accepts or asks the next; after the last, the request escalates.
//!
//! A tier model that fails, times out or is cooling down simply gives no answer: the
//! request escalates, it is never lost. When the router's choice is a tier model that
//! answered, that answer is used without a new call. Under a key with a budget each tier
//! call reserves its worst case first ([`super::budget`]); a tier model the key cannot
//! afford is not asked, and a call dropped by the verdict is charged its reservation.
//!
//! A streaming request is answered from the buffer: the accepted completion is replayed
//! as `chat.completion.chunk` events (role and content in one chunk, then the finish
//! reason, the usage chunk when asked for, and `[DONE]`), so the time to first token is
//! the slowest tier call that the verdict waited for. An escalated stream streams from
//! the upstream as usual.
//!
//! Skipped for requests that name a model, that turn it off (`"routewise": {"cascade":
//! false}`), and when no cascade is configured (a request asking for one then gets a 400).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use routewise_router::artifact::CalibratedCascade;
use routewise_router::cascade::{plurality, AnswerKey, Call as VoteCall, Next, Plurality};
use routewise_router::extract::Extractor;
use routewise_signals::agreement::Groups;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::error::ApiError;
use crate::models::ModelId;
use crate::pipeline::attempts;
use crate::pipeline::attempts::cooldown::Admit;
use crate::pipeline::attempts::ProbeGuard;
use crate::pipeline::budget;
use crate::pipeline::context::RequestContext;
use crate::pipeline::route::{Reason, Routed};
use crate::request::{CascadeChoice, ChatRequest};
use crate::state::Gateway;
use crate::upstream::{Answer, AttemptInfo, AttemptOutcome, Call, Failure};

/// What the cascade will do for a request, decided before any call.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tier: Vec<ModelId>,
    pub min_agree: usize,
    pub extractor: Extractor,
    /// The semantic comparison, for `extractor: semantic`.
    pub semantic: Option<Semantic>,
    /// Accept a single readable answer whose token confidence reaches this.
    pub min_confidence: Option<f64>,
    /// The artifact's calibrated chain (`learned: true`): the tier is called one model at
    /// a time and its acceptor decides.
    pub chain: Option<Arc<CalibratedCascade>>,
}

impl Plan {
    /// How many tier answers a verdict needs at least: 1 when a confident answer is
    /// accepted on its own, else `min_agree`.
    fn needed(&self) -> usize {
        if self.min_confidence.is_some() {
            1
        } else {
            self.min_agree
        }
    }
}

/// Semantic agreement for one request: the gateway's embedder and the threshold.
#[derive(Debug, Clone)]
pub struct Semantic {
    embedder: routewise_signals::Embedder,
    threshold: f32,
}

impl Semantic {
    fn groups(&self) -> Groups<'_> {
        Groups::new(&self.embedder, self.threshold)
    }
}

/// The cascade's plan for `request`, `None` when it does not apply; a 400 when the
/// request asks for a cascade that is not configured or overrides it badly.
pub fn plan(
    gw: &Gateway,
    request: &ChatRequest,
    routed: &Routed,
) -> Result<Option<Plan>, ApiError> {
    let (config, min_agree, extractor, min_confidence) =
        match (&request.cascade, &gw.config.router.cascade) {
            (CascadeChoice::Off, _) | (CascadeChoice::Config, None) => return Ok(None),
            (CascadeChoice::With { .. }, None) => {
                return Err(ApiError::bad_request(
                    "`routewise.cascade`: no cascade is configured (`router.cascade`)",
                    Some("routewise.cascade"),
                ))
            }
            (CascadeChoice::Config, Some(c)) => {
                (c, c.min_agree, c.extractor.clone(), c.min_confidence)
            }
            (
                CascadeChoice::With {
                    min_agree,
                    extractor,
                    min_confidence,
                },
                Some(c),
            ) => (
                c,
                min_agree.unwrap_or(c.min_agree),
                extractor.clone().unwrap_or_else(|| c.extractor.clone()),
                min_confidence.or(c.min_confidence),
            ),
        };
    if routed.reason == Reason::Direct {
        return Ok(None);
    }
    if config.learned {
        if let CascadeChoice::With {
            min_agree: Some(_), ..
        }
        | CascadeChoice::With {
            min_confidence: Some(_),
            ..
        } = request.cascade
        {
            return Err(ApiError::bad_request(
                "`routewise.cascade`: the configured cascade is a learned chain \
                 (`learned: true`); only `extractor` can be overridden",
                Some("routewise.cascade"),
            ));
        }
        // The chain weighs the router's predictions: without a decision there is none.
        if config.chain.is_none() || routed.decision.is_none() {
            return Ok(None);
        }
    }
    if min_agree > config.tier.len() {
        return Err(ApiError::bad_request(
            format!(
                "`routewise.cascade.min_agree`: {min_agree} is more than the tier's {} models",
                config.tier.len()
            ),
            Some("routewise.cascade.min_agree"),
        ));
    }
    let semantic = match extractor.semantic_threshold() {
        None => None,
        // (The built-in model is loaded once per process: the config check loaded it.)
        Some(threshold) => match routewise_signals::Embedder::builtin() {
            Ok(embedder) => Some(Semantic {
                embedder,
                threshold,
            }),
            Err(_) => {
                return Err(ApiError::bad_request(
                    "`routewise.cascade.extractor`: `semantic` needs the built-in embedding \
                     model, which this build does not have",
                    Some("routewise.cascade.extractor"),
                ))
            }
        },
    };
    // Only tier models the request fits (context windows, as for the ranking).
    let tier = config
        .tier
        .iter()
        .filter_map(|n| gw.upstreams.by_name(n))
        .filter(|m| routed.candidates.contains(m))
        .collect();
    Ok(Some(Plan {
        tier,
        min_agree,
        extractor,
        semantic,
        min_confidence,
        chain: config.chain.clone(),
    }))
}

/// One tier call, for the decision log and the headers.
#[derive(Debug, Clone)]
pub struct TierCall {
    pub model: ModelId,
    pub outcome: AttemptOutcome,
    /// The HTTP status of an answer that came back (`None`: no answer).
    pub status: Option<u16>,
    /// The extracted answer, when one could be read.
    pub answer: Option<String>,
    /// Its cost from the upstream's usage and the model's prices.
    pub cost: Option<f64>,
    /// Its token confidence, when the plan asked for logprobs and they came back.
    pub confidence: Option<f64>,
}

/// What the cascade did (kept in the request context).
#[derive(Debug, Clone, Default)]
pub struct CascadeTrace {
    pub calls: Vec<TierCall>,
    /// `Some(model)`: that tier answer was accepted.
    pub accepted: Option<ModelId>,
}

impl CascadeTrace {
    /// The verdict, and the model it names, for a request answered by `answered`:
    /// `accepted` (a tier answer) or `escalated` (by the answering model, if any).
    pub fn verdict(&self, answered: Option<ModelId>) -> (&'static str, Option<ModelId>) {
        match self.accepted {
            Some(m) => ("accepted", Some(m)),
            None => ("escalated", answered),
        }
    }

    /// What the tier calls cost together.
    pub fn cost(&self) -> f64 {
        self.calls.iter().filter_map(|c| c.cost).sum()
    }
}

/// A tier answer that came back (2xx, complete body).
#[derive(Debug, Clone)]
pub struct TierAnswer {
    pub model: ModelId,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// The stage's verdict.
#[derive(Debug)]
pub enum Verdict {
    /// Answer with this tier response.
    Accepted(TierAnswer),
    /// Go on to the router's choice; the tier answers that came back, for reuse.
    Escalate(Vec<TierAnswer>),
}

/// The text of a completion's first choice.
pub(crate) fn content(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    text_of(&v)
}

fn text_of(v: &Value) -> Option<String> {
    v.pointer("/choices/0/message/content")?
        .as_str()
        .map(str::to_string)
}

/// What the cascade reads from a tier completion: its first choice's text and, when
/// `logprobs` is set, the token confidence of that choice
/// ([`routewise_router::cascade::token_confidence`] over
/// `choices[0].logprobs.content[].logprob`). A completion whose logprobs the client did
/// not ask for (`strip`) has them removed, as if never asked: the returned body.
fn read_tier_answer(
    body: Bytes,
    logprobs: bool,
    strip: bool,
) -> (Option<String>, Option<f64>, Bytes) {
    if !logprobs {
        return (content(&body), None, body);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return (None, None, body);
    };
    let text = text_of(&v);
    let confidence = v
        .pointer("/choices/0/logprobs/content")
        .and_then(Value::as_array)
        .and_then(|tokens| {
            let lp: Option<Vec<f64>> = tokens
                .iter()
                .map(|t| t.get("logprob").and_then(Value::as_f64))
                .collect();
            routewise_router::cascade::token_confidence(lp?)
        });
    if !strip {
        return (text, confidence, body);
    }
    let mut removed = false;
    if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            if let Some(l) = c.get_mut("logprobs").filter(|l| !l.is_null()) {
                *l = Value::Null;
                removed = true;
            }
        }
    }
    // Re-encoded only when something was removed: otherwise the upstream's bytes stay.
    let body = match removed {
        true => serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body),
        false => body,
    };
    (text, confidence, body)
}

/// What every tier call of one request shares.
struct Tier<'a> {
    gw: &'a Gateway,
    plan: &'a Plan,
    /// The request as the tier gets it (non-streaming, with logprobs when needed).
    request: &'a ChatRequest,
    /// The request without the logprobs routewise added (`None` when it added none):
    /// the answers are stripped of them, and an upstream that refuses them (a 400) is
    /// asked once more without and takes part by agreement.
    plain: Option<&'a ChatRequest>,
    forward: &'a [(HeaderName, HeaderValue)],
    id: &'a str,
    timeout: Duration,
}

/// A tier model taken for one call: its breaker's probe, the key's budget hold and a
/// deployment slot with its quota.
struct Admitted<'g> {
    model: ModelId,
    probe: ProbeGuard<'g>,
    hold: Option<budget::Hold>,
    taken: attempts::Taken<'g>,
}

/// Over the key's rate, or the store is down: the attempts that follow refuse the
/// request, so no further tier model is asked (those admitted before are).
struct Stop;

/// Takes what calling tier model `m` needs; `Ok(None)`: not this one (its breaker is
/// open, no deployment has a slot and quota, or the key's budget cannot afford it). What
/// is taken (a half-open probe, a slot and its quota) is given back when dropped unless
/// the call runs; a hold is released by the caller when the call is not made.
async fn admit<'g>(
    ctx: &mut RequestContext,
    gw: &'g Gateway,
    request: &ChatRequest,
    m: ModelId,
) -> Result<Option<Admitted<'g>>, Stop> {
    let up = gw.upstreams.get(m);
    let admit = up.breaker.admit(gw.now_ms());
    if admit == Admit::No {
        return Ok(None);
    }
    let probe = ProbeGuard {
        breaker: &up.breaker,
        armed: admit == Admit::Probe,
    };
    let taken = match attempts::take_deployment(gw, up, request, &[]) {
        Ok(t) => t,
        Err(pass) => {
            ctx.skipped.push((m, pass.name()));
            return Ok(None);
        }
    };
    match budget::reserve(
        gw,
        ctx.caller.as_deref(),
        m,
        request,
        !ctx.rate_taken,
        ctx.routed.observed(),
    )
    .await
    {
        Ok(hold) => {
            if !ctx.rate_taken {
                crate::pipeline::pace::admitted(ctx);
            }
            ctx.rate_taken = true;
            Ok(Some(Admitted {
                model: m,
                probe,
                hold,
                taken,
            }))
        }
        Err(r) if !matches!(r, budget::Refused::Exceeded(_)) => Err(Stop),
        Err(_) => {
            ctx.skipped.push((m, "budget"));
            Ok(None)
        }
    }
}

/// What one tier call returned: the model, the deployment, when it started, the result.
type Returned = (ModelId, usize, u64, Result<Answer, Failure>);

/// One tier call, settling the key's budget with what its answer cost. The half-open
/// breaker's probe moves into the call: released if the call is dropped, run or not.
fn tier_call<'a>(
    t: &Tier<'a>,
    a: Admitted<'a>,
) -> impl std::future::Future<Output = Returned> + 'a {
    let Admitted {
        model: m,
        probe,
        hold,
        taken,
    } = a;
    let attempts::Taken { slot, quota } = taken;
    quota.keep();
    let (gw, request, plain, forward, id, timeout) =
        (t.gw, t.request, t.plain, t.forward, t.id, t.timeout);
    let up = gw.upstreams.get(m);
    let span = tracing::debug_span!("tier_call", model = %up.name);
    async move {
        let mut probe = probe; // the whole guard moves into the call
        let dep = &up.deployments[slot.deployment];
        let mut info = AttemptInfo::default();
        let started = gw.now_ms();
        let call = |request| Call {
            request,
            model: &up.name,
            upstream_model: &dep.upstream_model,
            timeout,
            id,
            forward,
        };
        let mut result = dep.provider.call(call(request), &mut info).await;
        if let (Some(plain), Ok(Answer::Full { status, .. })) = (plain, &result) {
            if *status == StatusCode::BAD_REQUEST {
                result = dep.provider.call(call(plain), &mut info).await;
            }
        }
        probe.armed = false;
        let d = slot.deployment;
        drop(slot);
        if let Some(h) = hold {
            let usage = match &result {
                Ok(Answer::Full { status, body, .. }) if status.is_success() => {
                    crate::pipeline::stream::parse_usage(body).map(|(p, c)| up.cost(p, c))
                }
                _ => None,
            };
            let amount = h.amount();
            h.settle(Some(budget::charge(&result, usage, amount)));
        }
        (m, d, started, result)
    }
    .instrument(span)
}

/// A 2xx tier answer, read.
struct Read {
    answer: TierAnswer,
    /// What the extractor read from it.
    key: Option<String>,
    confidence: Option<f64>,
}

/// Records a tier call's result (the breaker, the deployment's latency, the metrics and
/// `ctx.cascade`), and reads the answer of a 2xx completion.
fn record(ctx: &mut RequestContext, t: &Tier<'_>, returned: Returned) -> Option<Read> {
    let (m, d, started, result) = returned;
    let gw = t.gw;
    let trace = ctx.cascade.get_or_insert_with(CascadeTrace::default);
    let up = gw.upstreams.get(m);
    let (outcome, read) = match result {
        Ok(Answer::Full {
            status,
            content_type,
            body,
        }) if status.is_success() => {
            gw.record_success(m, Some(d), started);
            let logprobs = t.plan.min_confidence.is_some();
            let (text, confidence, body) = read_tier_answer(body, logprobs, t.plain.is_some());
            let key = text.as_deref().and_then(|x| t.plan.extractor.extract(x));
            let cost = crate::pipeline::stream::parse_usage(&body).map(|(p, c)| up.cost(p, c));
            if let Some(c) = cost {
                gw.metrics.cost(m.index(), c);
            }
            trace.calls.push(TierCall {
                model: m,
                outcome: AttemptOutcome::Ok,
                status: Some(status.as_u16()),
                answer: key.clone(),
                cost,
                confidence,
            });
            let answer = TierAnswer {
                model: m,
                content_type,
                body,
            };
            (
                AttemptOutcome::Ok,
                Some(Read {
                    answer,
                    key,
                    confidence,
                }),
            )
        }
        Ok(other) => {
            // An answer the client would get as is (a 4xx other than auth): the model
            // works (its breaker is told so, releasing a half-open probe), but no vote.
            gw.record_success(m, Some(d), started);
            let status = match &other {
                Answer::Full { status, .. } | Answer::Stream { status, .. } => status.as_u16(),
            };
            trace.calls.push(TierCall {
                model: m,
                outcome: AttemptOutcome::Ok,
                status: Some(status),
                answer: None,
                cost: None,
                confidence: None,
            });
            (AttemptOutcome::Ok, None)
        }
        Err(f) => {
            gw.record_failure(m, Some(d));
            trace.calls.push(TierCall {
                model: m,
                outcome: f.outcome,
                status: None,
                answer: None,
                cost: None,
                confidence: None,
            });
            (f.outcome, None)
        }
    };
    gw.metrics.attempt(m.index(), outcome);
    read
}

/// Read answers interned as keys for the router crate's rules: equal answers share a
/// key; under `semantic`, answers that agree in meaning do (their groups).
struct Keys<'p> {
    seen: Vec<String>,
    groups: Option<Groups<'p>>,
}

impl<'p> Keys<'p> {
    fn new(plan: &'p Plan) -> Keys<'p> {
        Keys {
            seen: Vec::new(),
            groups: plan.semantic.as_ref().map(|s| s.groups()),
        }
    }

    fn key(&mut self, a: &str) -> AnswerKey {
        let k = match self.groups.as_mut() {
            Some(g) => g.key(a),
            None => self.seen.iter().position(|x| x == a).unwrap_or_else(|| {
                self.seen.push(a.to_string());
                self.seen.len() - 1
            }),
        };
        k as AnswerKey
    }
}

/// Runs the tier of `plan` for `ctx`'s request (see the module docs); records every call
/// in `ctx.cascade`.
pub async fn run(ctx: &mut RequestContext, plan: &Plan) -> Verdict {
    let state = ctx.state.clone();
    let gw = &*state;
    // The tier is asked without streaming, whatever the client asked, and for logprobs
    // when a confident answer may be accepted on its own.
    let request = ctx.request.non_streaming();
    let (request, plain) = if plan.min_confidence.is_some() && !ctx.request.asks_logprobs() {
        (request.clone().with_logprobs(), Some(request))
    } else {
        (request, None)
    };
    let forward = ctx.trace.upstream_headers(crate::trace::new_span_id());
    let id = ctx.id.clone();
    let tier = Tier {
        gw,
        plan,
        request: &request,
        plain: plain.as_ref(),
        forward: &forward,
        id: id.as_str(),
        timeout: Duration::from_millis(gw.config.limits.request_timeout_ms),
    };
    // The trace lives in the context from the start, so that a request cut short (the
    // client went away) still logs the tier calls it paid for.
    ctx.cascade = Some(CascadeTrace::default());
    let (accepted, mut answers) = match &plan.chain {
        Some(chain) => run_chain(ctx, &tier, chain).await,
        None => run_parallel(ctx, &tier).await,
    };
    match accepted {
        Some(k) if k < answers.len() => {
            let a = answers.swap_remove(k);
            if let Some(t) = ctx.cascade.as_mut() {
                t.accepted = Some(a.model);
            }
            gw.metrics.cascade("accepted");
            Verdict::Accepted(a)
        }
        _ => {
            gw.metrics.cascade("escalated");
            Verdict::Escalate(answers)
        }
    }
}

/// The agreement family (and the confidence check): the tier called concurrently; the
/// index of the accepted answer, if any, and the answers that came back.
async fn run_parallel(ctx: &mut RequestContext, t: &Tier<'_>) -> (Option<usize>, Vec<TierAnswer>) {
    let (gw, plan) = (t.gw, t.plan);
    // The tier models the breakers admit, with a free slot and quota at a deployment, that
    // the key's budget (if any) can afford: taken and reserved now, given back below if
    // the tier is not asked.
    let mut admitted = Vec::with_capacity(plan.tier.len());
    for &m in &plan.tier {
        match admit(ctx, gw, t.request, m).await {
            Ok(Some(a)) => admitted.push(a),
            Ok(None) => {}
            Err(Stop) => break,
        }
    }
    // Too few tier models can be asked to ever agree: nothing is called, and what was
    // reserved and taken is given back.
    if admitted.len() < plan.needed() {
        for a in admitted.drain(..) {
            if let Some(h) = a.hold {
                h.release();
            }
        }
    }
    let mut pending: FuturesUnordered<_> = admitted.into_iter().map(|a| tier_call(t, a)).collect();
    // The answers that came back, and their votes (`predicted` plays no part here).
    let mut answers: Vec<TierAnswer> = Vec::new();
    let mut votes: Vec<VoteCall> = Vec::new();
    let mut keys = Keys::new(plan);
    let mut accepted = None;
    while let Some(returned) = pending.next().await {
        let m = returned.0;
        if let Some(read) = record(ctx, t, returned) {
            let confident = match (plan.min_confidence, read.confidence, &read.key) {
                (Some(min), Some(c), Some(_)) => c >= min,
                _ => false,
            };
            votes.push(VoteCall {
                model: m.index(),
                answer: read.key.as_deref().map(|a| keys.key(a)),
                predicted: 0.0,
            });
            answers.push(read.answer);
            // A confident answer is accepted on its own.
            if confident {
                accepted = Some(answers.len() - 1);
                break;
            }
        }
        // The plurality so far, and whether it can still reach min_agree (with a
        // confidence check, any answer still to come can be accepted alone).
        let top = if votes.is_empty() {
            Plurality { pick: 0, votes: 0 }
        } else {
            plurality(&votes)
        };
        if top.votes >= plan.min_agree.max(1) {
            accepted = Some(top.pick);
            break;
        }
        if top.votes + pending.len() < plan.min_agree && plan.min_confidence.is_none() {
            break;
        }
    }
    drop(pending); // cancels the calls still running
    (accepted, answers)
}

/// The learned confidence chain (FrugalGPT): the artifact's tier called one model at a
/// time, in its order; after each answer the chain's acceptor weighs the router's
/// predicted score for the model that gave the answer in hand and the agreement so far
/// ([`routewise_router::cascade::Cascade::next`], the rule the lab calibrated). A tier
/// model that cannot be asked or fails is passed over, as the lab does with a model
/// without an outcome.
async fn run_chain(
    ctx: &mut RequestContext,
    t: &Tier<'_>,
    chain: &CalibratedCascade,
) -> (Option<usize>, Vec<TierAnswer>) {
    let (gw, plan) = (t.gw, t.plan);
    let Some(decision) = ctx.routed.decision.as_ref() else {
        return (None, Vec::new());
    };
    // The acceptor was calibrated on the offline router's predictions: under a bandit,
    // those are the decision's priors, not the bandit's (possibly sampled) estimates.
    let scores = match &decision.learning {
        Some(l) => l.prior_scores.clone(),
        None => decision.scores.clone(),
    };
    let best_predicted = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A calibrated chain's rule is `Chain` (checked on load), which weighs no escalation
    // penalty.
    let cx = routewise_router::cascade::Context {
        best_predicted,
        escalation_penalty: 0.0,
    };
    let mut calls: Vec<VoteCall> = Vec::new();
    let mut answers: Vec<TierAnswer> = Vec::new();
    let mut keys = Keys::new(plan);
    let mut attempted = 0;
    loop {
        let m = match chain.cascade.next(&calls, attempted, cx) {
            Next::Accept(k) => return (Some(k), answers),
            Next::Escalate => return (None, answers),
            Next::Call(i) => {
                attempted += 1;
                match plan.tier.iter().copied().find(|m| m.index() == i) {
                    Some(m) => m,
                    None => continue, // the prompt does not fit it
                }
            }
        };
        let a = match admit(ctx, gw, t.request, m).await {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(Stop) => return (None, answers),
        };
        let returned = tier_call(t, a).await;
        if let Some(read) = record(ctx, t, returned) {
            calls.push(VoteCall {
                model: m.index(),
                answer: read.key.as_deref().map(|a| keys.key(a)),
                predicted: scores.get(m.index()).copied().unwrap_or(0.0),
            });
            answers.push(read.answer);
        }
    }
}

/// A complete chat completion replayed as a chat-completions SSE stream: one chunk with
/// the role and the whole content, one with the finish reason, the usage chunk when
/// `include_usage`, then `[DONE]`. `None` when `body` is not a single-choice text
/// completion (tool calls and `n > 1` are not replayed: the request goes upstream).
pub fn replay_as_stream(body: &[u8], include_usage: bool) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("choices")?.as_array()?.len() != 1 {
        return None;
    }
    let choice = v.pointer("/choices/0")?;
    let message = choice.get("message")?;
    if message.get("tool_calls").is_some_and(|t| !t.is_null()) {
        return None;
    }
    let base = |choices: Value| {
        json!({
            "id": v.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": v.get("created").cloned().unwrap_or(Value::Null),
            "model": v.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        })
    };
    let delta = json!({"role": "assistant", "content": message.get("content").cloned().unwrap_or(Value::Null)});
    let mut out = String::new();
    let mut push = |v: Value| {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    push(base(
        json!([{"index": 0, "delta": delta, "finish_reason": null}]),
    ));
    push(base(
        json!([{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason").cloned().unwrap_or(json!("stop"))}]),
    ));
    if include_usage {
        if let Some(u) = v.get("usage") {
            let mut last = base(json!([]));
            last["usage"] = u.clone();
            push(last);
        }
    }
    out.push_str("data: [DONE]\n\n");
    Some(Bytes::from(out))
}

/// The answer for an accepted (or reused) tier response, in the shape the client asked
/// for; `None` when a stream was asked for and the response cannot be replayed as one.
pub fn answer_of(a: TierAnswer, request: &ChatRequest) -> Option<Answer> {
    buffered_answer(a.body, a.content_type, request)
}

/// A complete chat completion body (a tier's, a cached one) as the answer the request asks
/// for: the body, or a stream replayed from it; `None` when a stream was asked for and the
/// body cannot be replayed as one.
pub fn buffered_answer(
    body: Bytes,
    content_type: Option<HeaderValue>,
    request: &ChatRequest,
) -> Option<Answer> {
    if request.stream {
        let sse = replay_as_stream(&body, request.include_usage)?;
        return Some(Answer::Stream {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("text/event-stream")),
            first: sse,
            rest: Box::pin(futures_util::stream::empty()),
        });
    }
    Some(Answer::Full {
        status: StatusCode::OK,
        content_type,
        body,
    })
}

/// Whether `ctx`'s answer from `m` is a tier response (accepted, or reused by the
/// escalation), whose cost was counted with the tier calls.
pub fn answered_by_tier(ctx: &RequestContext, m: ModelId) -> bool {
    ctx.cascade.as_ref().is_some_and(|t| {
        t.accepted == Some(m)
            || (ctx.attempts.is_empty()
                && t.calls
                    .iter()
                    .any(|c| c.model == m && c.outcome == AttemptOutcome::Ok))
    })
}

/// The decision's realised cost: the answer's own (`None` for a tier response) plus every
/// tier call's.
pub fn total_cost(ctx: &RequestContext, own: Option<f64>) -> Option<f64> {
    match &ctx.cascade {
        Some(t) => Some(t.cost() + own.unwrap_or(0.0)),
        None => own,
    }
}

/// `x-routewise-cascade`: `accepted@<model>` or `escalated@<model>`.
pub fn header_value(
    gw: &Gateway,
    trace: &CascadeTrace,
    answered: Option<ModelId>,
) -> Option<HeaderValue> {
    match trace.verdict(answered) {
        (verdict, Some(m)) => {
            HeaderValue::from_str(&format!("{verdict}@{}", gw.upstreams.get(m).name)).ok()
        }
        (verdict, None) => Some(HeaderValue::from_static(verdict)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_answer_is_read_with_its_confidence_and_stripped_of_unasked_logprobs() {
        let body = Bytes::from_static(
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"(B)"},
                "logprobs":{"content":[{"token":"(B","logprob":-0.5},{"token":")","logprob":-1.5}]},
                "finish_reason":"stop"}]}"#,
        );
        let (text, c, kept) = read_tier_answer(body.clone(), true, false);
        assert_eq!(text.as_deref(), Some("(B)"));
        assert!((c.unwrap() - (-1.0f64).exp()).abs() < 1e-12);
        assert_eq!(kept, body, "asked by the client: untouched");
        let (_, c2, stripped) = read_tier_answer(body.clone(), true, true);
        assert_eq!(c2, c);
        let v: Value = serde_json::from_slice(&stripped).unwrap();
        assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], "(B)");
        // Not asked: no confidence, body untouched.
        let (text, c, same) = read_tier_answer(body.clone(), false, false);
        assert_eq!((text.as_deref(), c), (Some("(B)"), None));
        assert_eq!(same, body);
        // Nothing to strip: the upstream's bytes are kept as they are.
        let plain = Bytes::from_static(
            br#"{"choices":[{"message":{"content":"B"},"logprobs":null}],"z":1,"a":2}"#,
        );
        assert_eq!(read_tier_answer(plain.clone(), true, true).2, plain);
        // An upstream without logprobs (or with a malformed entry): no confidence.
        for b in [
            &br#"{"choices":[{"message":{"content":"B"},"logprobs":null}]}"#[..],
            br#"{"choices":[{"message":{"content":"B"},"logprobs":{"content":[{"token":"B"}]}}]}"#,
            br#"{"choices":[{"message":{"content":"B"},"logprobs":{"content":[]}}]}"#,
        ] {
            let (text, c, _) = read_tier_answer(Bytes::copy_from_slice(b), true, true);
            assert_eq!((text.as_deref(), c), (Some("B"), None));
        }
    }

    #[test]
    fn a_completion_replays_as_chunks_with_usage_and_done() {
        let body = br#"{"id":"c1","object":"chat.completion","created":7,"model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"The answer is (B)."},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        let sse = String::from_utf8(replay_as_stream(body, true).unwrap().to_vec()).unwrap();
        let events: Vec<&str> = sse.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{sse}");
        let first: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"]["content"],
            "The answer is (B)."
        );
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let second: Value =
            serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(second["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 5);
        assert_eq!(events[3], "data: [DONE]");
        // Without include_usage: no usage chunk.
        let sse = String::from_utf8(replay_as_stream(body, false).unwrap().to_vec()).unwrap();
        assert_eq!(sse.matches("data: ").count(), 3);
        assert!(replay_as_stream(b"{\"error\":{}}", true).is_none());
        // Tool calls and several choices are not replayed.
        let tools = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#;
        assert!(replay_as_stream(tools, false).is_none());
        let two = br#"{"choices":[{"index":0,"message":{"content":"a"}},{"index":1,"message":{"content":"b"}}]}"#;
        assert!(replay_as_stream(two, false).is_none());
    }
}
