//! Stage 6a, the decision log: one structured line per decision (target
//! `routewise::decision`): the request, the reason, the policy, the chosen and the
//! answering model, every attempt, the realised cost (upstream usage x prices), how the
//! answer ended, the request id, trace id and the answering upstream's request id, and
//! the predictions of the first `log.decisions.top_k` models of the ranking (predicted
//! score and cost), and for a cascaded request its verdict and every tier call (answer
//! read, cost). Written once per request ([`RequestContext::mark_logged`]).
//!
//! For off-policy evaluation (`routewise replay --log`), a line also carries the
//! propensity of the router's choice (`propensity`: 1 for a deterministic router, the
//! epsilon-greedy probability under `router.exploration`), whether the choice was an
//! exploration (`explored`), and, with `log.decisions.prompt: true`, the prompt text the
//! router saw (`prompt`, cut at [`MAX_LOGGED_PROMPT`] bytes; after redaction when the PII
//! guard redacts). The `routes:` rules that applied are in `route`, the kinds of personal
//! data found in `pii` with `pii_action` (never the matched text), the candidates passed
//! over without a call in `skipped` (`model:quota`, `model:budget`, `model:capacity`,
//! `model:slo`), the answering deployment in `deployment` (`attempt_log` names each
//! attempt's as `model@deployment` for a model with several), the answer's energy in
//! `energy_wh` (its usage times the model's `energy_wh_per_mtok`; absent when either is
//! unknown; cascade tier calls are not counted), balanced dispatch's verdict in `balanced` (`kept`, `moved`, `held`, `unplaced`), the
//! API key's name in `key`. Accepted feedback is logged as a
//! `routewise::feedback` line with the decision id and the score, so that one log holds
//! decisions and outcomes. Where the request path leaves the propensity unknown (Thompson
//! sampling; an exploration over a stochastic choice), the writer thread estimates it
//! with the online router's current state ([`THOMPSON_DRAWS`] Monte-Carlo draws,
//! `OnlineRouter::choice_probability`), mixed with the exploration rate when
//! `router.exploration` is on; the field is absent only without a learning context.
//!
//! Off the request path: the request's task only moves a [`DecisionRecord`] (owned
//! fields, no formatting) into a bounded queue ([`DecisionLog`]); a writer thread takes
//! the queued records in batches and emits them as `tracing` events, which the installed
//! subscriber formats (text or JSON, `routewise serve --log-format`) and filters
//! (`ROUTEWISE_LOG`). The queue never blocks a request: when it is full the record is
//! dropped and counted (`routewise_decision_log_dropped_total`). `log.decisions.sample`
//! keeps a share of the decisions, chosen by the decision id (the same decisions on every
//! instance). The same records feed the dashboard's statistics ([`crate::stats`]) on the
//! writer thread, so a record is built for every decision, whatever the log level or the
//! sample; only the log line is left out for a decision outside it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use prometheus_client::metrics::counter::Counter;
use routewise_router::Policy;

use crate::config::DecisionLogConfig;
use crate::models::ModelId;
use crate::pipeline::attempts::Attempts;
use crate::pipeline::cascade::CascadeTrace;
use crate::pipeline::context::{AttemptRecord, RequestContext};
use crate::state::{AppState, Gateway};
use crate::upstream::AttemptOutcome;

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

/// The predictions of a decision as compact JSON, in ranking order.
struct Predictions<'a>(&'a Gateway, &'a [Prediction]);

impl fmt::Display for Predictions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (k, p) in self.1.iter().enumerate() {
            if k > 0 {
                f.write_str(",")?;
            }
            let name = self
                .0
                .upstreams
                .at(p.model)
                .map_or("?", |u| u.name.as_str());
            write!(
                f,
                "{{\"model\":\"{}\",\"score\":{:.4},\"cost_usd\":{:.8}}}",
                name, p.score, p.cost_usd
            )?;
        }
        f.write_str("]")
    }
}

/// A cascade's verdict and tier calls: `accepted@a [a: B $0.00010000; b: B ...]`, or `-`;
/// a call's token confidence, when read, as `p=0.950` before its cost.
struct CascadeLog<'a>(&'a Gateway, Option<&'a CascadeTrace>, Option<ModelId>);

impl fmt::Display for CascadeLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(t) = self.1 else {
            return f.write_str("-");
        };
        let name = |m: ModelId| self.0.upstreams.get(m).name.as_str();
        match t.verdict(self.2) {
            (verdict, Some(m)) => write!(f, "{verdict}@{} [", name(m))?,
            (verdict, None) => write!(f, "{verdict} [")?,
        }
        for (k, c) in t.calls.iter().enumerate() {
            if k > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: ", name(c.model))?;
            match (&c.answer, c.outcome, c.status) {
                (Some(a), _, _) => match a.char_indices().nth(ANSWER_CHARS) {
                    // A free-text answer (`semantic`) is cut: the log shows what was read.
                    Some((cut, _)) => write!(f, "{:?}...", &a[..cut])?,
                    None => write!(f, "{a:?}")?,
                },
                (None, AttemptOutcome::Ok, Some(s)) if !(200..300).contains(&s) => {
                    write!(f, "answered HTTP {s}")?
                }
                (None, AttemptOutcome::Ok, _) => f.write_str("no answer read")?,
                (None, o, _) => write!(f, "failed ({})", o.name())?,
            }
            if let Some(p) = c.confidence {
                write!(f, " p={p:.3}")?;
            }
            if let Some(cost) = c.cost {
                write!(f, " ${cost:.8}")?;
            }
        }
        f.write_str("]")
    }
}

/// Characters of a tier call's answer the decision log shows.
const ANSWER_CHARS: usize = 60;

/// Bytes of a prompt logged (and kept with a decision in the state store) at most: the
/// decision log's queue and the store stay bounded whatever the requests' size. Longer
/// prompts are cut at a character boundary, which `replay` then re-routes as they are.
pub const MAX_LOGGED_PROMPT: usize = 16 << 10;

/// `prompt` cut to [`MAX_LOGGED_PROMPT`] bytes (at a character boundary).
pub fn logged_prompt(prompt: &str) -> String {
    routewise_features::static_embed::prefix(prompt, MAX_LOGGED_PROMPT).to_string()
}

/// Posterior draws per decision when the writer estimates a Thompson-sampling propensity
/// (one normal per model and draw; the estimate's standard error is at most
/// `sqrt(0.25 / 256)`, about 0.03).
pub const THOMPSON_DRAWS: usize = 256;

/// What the writer needs to estimate a propensity the request path left unknown.
struct PropensityInput {
    learning: routewise_router::Learning,
    costs: Vec<f64>,
    chosen: usize,
    /// Whether the router's own rule made the choice (not a forced or an outer
    /// exploration): the decision then counts as one of the rule's draws.
    drawn: bool,
    /// How an outer exploration mixed with the router's choice (`Decision::mix`).
    mix: Option<(f64, f64)>,
}

/// One model's prediction (catalog index).
#[derive(Debug, Clone, Copy)]
struct Prediction {
    model: usize,
    score: f64,
    cost_usd: f64,
}

/// Everything a decision line says, owned, so that it can be formatted on another thread.
pub struct DecisionRecord {
    state: AppState,
    decision_id: String,
    request_id: String,
    trace_id: [u8; 16],
    upstream_request_id: Option<String>,
    requested: String,
    reason: &'static str,
    policy: Policy,
    chosen: Option<usize>,
    model: Option<ModelId>,
    status: u16,
    stream: bool,
    end: End,
    attempts: Vec<AttemptRecord>,
    prompt_tokens: u64,
    cost: Option<f64>,
    elapsed_ms: f64,
    predictions: Vec<Prediction>,
    cascade: Option<CascadeTrace>,
    propensity: Option<f64>,
    /// Set when `propensity` is unknown and a learning context exists.
    estimate: Option<Box<PropensityInput>>,
    explored: bool,
    prompt: Option<String>,
    /// The `routes:` rules that applied (names, comma-separated).
    routes: Option<String>,
    /// The kinds of personal data found (never the text) and the action taken.
    pii: Option<(routewise_signals::KindSet, &'static str)>,
    /// Candidates passed over without a call (logged as `model:quota,model:budget`).
    skipped: Vec<(ModelId, &'static str)>,
    /// The API key's name (`auth: {mode: keys}`).
    key: Option<String>,
    /// The conversation affinity's verdict, explained.
    affinity: Option<routewise_router::affinity::Verdict>,
    /// Balanced dispatch's verdict, when the request was batched.
    balanced: Option<crate::pipeline::balance::Verdict>,
    /// Whether a log line is written (the statistics see every record).
    log: bool,
    unix_ms: u64,
    /// The answer's usage (prompt, completion tokens).
    usage: Option<(u64, u64)>,
    /// Every served model's predicted score and cost (the router decided).
    all: Option<(Vec<f64>, Vec<f64>)>,
    cached: bool,
}

impl DecisionRecord {
    /// Emits the record as a `routewise::decision` event (on the writer thread).
    fn write(&self) {
        let gw = &*self.state;
        let model = self
            .model
            .map_or("-", |m| gw.upstreams.get(m).name.as_str());
        let chosen = self
            .chosen
            .and_then(|c| gw.upstreams.at(c))
            .map_or(model, |u| u.name.as_str());
        let policy = serde_json::to_string(&self.policy).unwrap_or_default();
        let propensity = self.propensity.or_else(|| self.estimated_propensity(gw));
        tracing::info!(
            target: "routewise::decision",
            decision_id = %self.decision_id,
            request_id = %self.request_id,
            trace_id = %crate::trace::hex(&self.trace_id),
            upstream_request_id = self.upstream_request_id.as_deref().unwrap_or("-"),
            requested = %self.requested,
            reason = self.reason,
            policy = %policy,
            chosen,
            model,
            status = self.status,
            stream = self.stream,
            end = self.end.name(),
            attempts = self.attempts.len(),
            attempt_log = %Attempts(gw, &self.attempts),
            deployment = self.deployment_name(),
            energy_wh = self.energy_wh(),
            prompt_tokens = self.prompt_tokens,
            realised_cost_usd = self.cost,
            elapsed_ms = self.elapsed_ms,
            predictions = %Predictions(gw, &self.predictions),
            cascade = %CascadeLog(gw, self.cascade.as_ref(), self.model),
            // Absent when unknown or when no router decided.
            propensity,
            explored = self.explored,
            prompt = self.prompt.as_deref(),
            route = self.routes.as_deref(),
            pii = self.pii.map(|(k, _)| k.names()),
            pii_action = self.pii.map(|(_, a)| a),
            skipped = self.skipped_names().as_deref(),
            key = self.key.as_deref(),
            affinity = self.affinity.map(|v| v.explain()).as_deref(),
            balanced = self.balanced.map(|v| v.name()),
            "decision"
        );
    }

    /// The answer's energy (its usage times the model's `energy_wh_per_mtok`).
    fn energy_wh(&self) -> Option<f64> {
        let (p, c) = self.usage?;
        self.state.upstreams.get(self.model?).energy_wh(p, c)
    }

    /// The answering deployment's name.
    fn deployment_name(&self) -> Option<&str> {
        let m = self.model?;
        let a = self.attempts.iter().rev().find(|a| a.model == m)?;
        Some(
            self.state
                .upstreams
                .get(m)
                .deployments
                .get(a.deployment)?
                .name
                .as_str(),
        )
    }

    /// `model:why,...` for the candidates passed over.
    fn skipped_names(&self) -> Option<String> {
        (!self.skipped.is_empty()).then(|| {
            self.skipped
                .iter()
                .map(|(m, why)| format!("{}:{why}", self.state.upstreams.get(*m).name))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// What the dashboard's statistics keep of it.
    fn observation(&self) -> crate::stats::Observation {
        let gw = &*self.state;
        let name = |m: ModelId| gw.upstreams.get(m).name.clone();
        let model = self.model.map(name);
        let chosen = self
            .chosen
            .and_then(|c| gw.upstreams.at(c))
            .map(|u| u.name.clone());
        let cascade = self.cascade.as_ref().map(|c| c.verdict(self.model).0);
        // Each call's cost goes to its own model: the tier calls, then the answer (what
        // the total holds beyond them).
        let mut costs: Vec<(String, f64)> = self
            .cascade
            .iter()
            .flat_map(|t| &t.calls)
            .filter_map(|c| Some((name(c.model), c.cost?)))
            .collect();
        let tier: f64 = costs.iter().map(|(_, c)| c).sum();
        if let (Some(m), Some(total)) = (self.model, self.cost) {
            let own = total - tier;
            if own > 1e-15 {
                costs.push((name(m), own));
            }
        }
        crate::stats::Observation {
            unix_ms: self.unix_ms,
            model: model.clone(),
            status: self.status,
            broken: self.end.upstream_failed(),
            cost_usd: self.cost,
            costs,
            usage: self.usage,
            cached: self.cached,
            cascade,
            skipped: self
                .skipped
                .iter()
                .map(|&(m, why)| (name(m), why))
                .collect(),
            predictions: self
                .all
                .as_ref()
                .map(|(scores, costs)| crate::stats::Predicted {
                    router: Arc::clone(&gw.router_id),
                    names: Arc::clone(&gw.names),
                    scores: scores.clone(),
                    costs: costs.clone(),
                }),
            recent: crate::stats::Recent {
                unix_ms: self.unix_ms,
                decision_id: self.decision_id.clone(),
                key: self.key.clone(),
                requested: self.requested.clone(),
                reason: self.reason,
                chosen,
                model,
                status: self.status,
                cost_usd: self.cost,
                elapsed_ms: self.elapsed_ms,
                route: self.routes.clone(),
                skipped: self.skipped_names(),
                cascade,
                predictions: self
                    .predictions
                    .iter()
                    .filter_map(|p| {
                        Some(crate::stats::RecentPrediction {
                            model: gw.upstreams.at(p.model)?.name.clone(),
                            score: p.score,
                            cost_usd: p.cost_usd,
                        })
                    })
                    .collect(),
            },
        }
    }
}

impl DecisionRecord {
    /// The propensity the request path left unknown, estimated with the online router's
    /// current state (see the module docs).
    fn estimated_propensity(&self, gw: &Gateway) -> Option<f64> {
        let input = self.estimate.as_ref()?;
        let router = gw.online_router.as_ref()?;
        // Both halves of the id: its first 16 hex digits are mostly the timestamp.
        let seed =
            routewise_router::baselines::splitmix64(crate::pipeline::id_bits(&self.decision_id));
        let choice = routewise_online::Choice {
            learning: &input.learning,
            costs: &input.costs,
            policy: self.policy,
            chosen: input.chosen,
            drawn: input.drawn,
        };
        let inner = router.choice_probability(&choice, THOMPSON_DRAWS, seed);
        Some(match input.mix {
            Some((keep, add)) => keep * inner + add,
            None => inner,
        })
    }
}

enum Msg {
    Record(Box<DecisionRecord>),
    /// Answered once every record queued before it is written.
    Flush(Sender<()>),
}

/// How long the writer lets records gather after the first of a batch: one wake-up per
/// batch, not per request.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// The decision log's queue and its writer thread.
pub struct DecisionLog {
    tx: Sender<Msg>,
    config: DecisionLogConfig,
    dropped: Counter,
}

impl fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionLog")
            .field("config", &self.config)
            .field("queued", &self.tx.len())
            .finish()
    }
}

impl DecisionLog {
    /// Starts the writer thread. Its events go to the subscriber that is the default
    /// where this is called (the global one in `routewise serve`).
    pub fn start(config: DecisionLogConfig, dropped: Counter) -> std::io::Result<DecisionLog> {
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(config.queue);
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::Builder::new()
            .name("routewise-decisions".into())
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || writer(&rx)))?;
        Ok(DecisionLog {
            tx,
            config,
            dropped,
        })
    }

    /// Whether decision lines are logged at all (the log level lets them through).
    pub fn enabled() -> bool {
        tracing::enabled!(target: "routewise::decision", tracing::Level::INFO)
    }

    /// Whether the decision `decision_id` is in the sample.
    fn sampled(&self, decision_id: &str) -> bool {
        crate::pipeline::id_in_sample(decision_id, 0, self.config.sample)
    }

    /// Queues a record; drops (and counts) it when the queue is full.
    fn push(&self, record: DecisionRecord) {
        if self.tx.try_send(Msg::Record(Box::new(record))).is_err() {
            self.dropped.inc();
        }
    }

    /// Waits (up to `timeout`) until every decision queued so far is written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = crossbeam_channel::bounded(1);
        self.tx.send_timeout(Msg::Flush(ack), timeout).is_ok() && done.recv_timeout(timeout).is_ok()
    }
}

/// The writer thread: waits for a record, lets a batch gather, writes it; ends when the
/// gateway (the sender) is gone.
fn writer(rx: &Receiver<Msg>) {
    let handle = |msg: Msg| match msg {
        Msg::Record(r) => {
            if r.log {
                r.write();
            }
            r.state.stats.observe(r.observation());
        }
        Msg::Flush(ack) => {
            let _ = ack.send(());
        }
    };
    while let Ok(first) = rx.recv() {
        let flush_now = matches!(first, Msg::Flush(_));
        handle(first);
        if !flush_now {
            std::thread::sleep(BATCH_WINDOW);
        }
        for msg in rx.try_iter() {
            handle(msg);
        }
    }
}

/// Logs the decision: answered by `answered` (if any) with `status`, realised `cost`
/// (from `usage`), ended as `end`. Builds the record and queues it; formatting and the
/// statistics happen on the writer thread.
pub fn emit(
    ctx: &RequestContext,
    answered: Option<ModelId>,
    status: u16,
    cost: Option<f64>,
    usage: Option<(u64, u64)>,
    end: End,
) {
    if !ctx.mark_logged() {
        return;
    }
    if let (Some(m), Some((p, c))) = (answered, usage) {
        if let Some(wh) = ctx.state.upstreams.get(m).energy_wh(p, c) {
            ctx.state.metrics.energy(m.index(), wh);
        }
    }
    let log = &ctx.state.decision_log;
    let logged = DecisionLog::enabled() && log.sampled(&ctx.id);
    let decision = ctx.routed.decision.as_ref();
    let predictions = decision.map_or_else(Vec::new, |d| {
        d.ranking
            .iter()
            .take(log.config.top_k)
            .map(|&ci| Prediction {
                model: ci,
                score: d.scores[ci],
                cost_usd: d.costs[ci],
            })
            .collect()
    });
    log.push(DecisionRecord {
        state: ctx.state.clone(),
        decision_id: ctx.id.clone(),
        request_id: ctx.trace.request_id.clone(),
        trace_id: ctx.trace.trace_id,
        upstream_request_id: ctx
            .attempts
            .last()
            .and_then(|a| a.upstream_request_id.clone()),
        requested: ctx.request.model.clone(),
        reason: ctx.routed.reason.name(),
        policy: ctx.routed.policy,
        // A conversation kept on its model: the rule that chose it is affinity's.
        chosen: match ctx.affinity.and_then(|t| t.verdict) {
            Some(v) if v.stayed() => ctx.routed.candidates.first().map(|m| m.index()),
            _ => ctx.routed.chosen(),
        },
        model: answered,
        status,
        stream: ctx.request.stream,
        end,
        attempts: ctx.attempts.clone(),
        key: ctx.caller.as_ref().map(|c| c.name.clone()),
        affinity: ctx.affinity.and_then(|t| t.verdict),
        balanced: ctx.balanced,
        skipped: ctx.skipped.clone(),
        log: logged,
        unix_ms: crate::stats::unix_ms(),
        usage,
        all: decision.map(|d| (d.scores.clone(), d.costs.clone())),
        cached: ctx.routed.reason == crate::pipeline::route::Reason::Cached,
        prompt_tokens: ctx.request.prompt_tokens,
        cost,
        elapsed_ms: ctx.started.elapsed().as_secs_f64() * 1e3,
        predictions,
        cascade: ctx.cascade.clone(),
        propensity: decision.and_then(|d| d.propensity),
        // Only a logged line estimates a propensity (the statistics do not need it).
        estimate: decision.filter(|_| logged).and_then(|d| {
            let learning = d.learning.as_ref().filter(|_| d.propensity.is_none())?;
            Some(Box::new(PropensityInput {
                learning: learning.clone(),
                costs: d.costs.clone(),
                chosen: d.chosen,
                drawn: d.reason != routewise_router::DecisionReason::Explored,
                mix: d.mix,
            }))
        }),
        explored: decision.is_some_and(|d| d.explored),
        prompt: (logged && log.config.prompt && decision.is_some())
            .then(|| logged_prompt(&ctx.request.prompt)),
        routes: ctx.signals.as_ref().and_then(|s| s.route_names(&ctx.state)),
        pii: ctx.signals.as_ref().and_then(|s| {
            let action = s.pii_action?;
            Some((s.pii, action.name()))
        }),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_prompts_are_cut_at_a_character_boundary() {
        assert_eq!(logged_prompt("short"), "short");
        let long = "é".repeat(MAX_LOGGED_PROMPT); // two bytes each
        let cut = logged_prompt(&long);
        assert_eq!(cut.len(), MAX_LOGGED_PROMPT);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("a{long}");
        let cut = logged_prompt(&odd);
        assert_eq!(cut.len(), MAX_LOGGED_PROMPT - 1);
    }

    #[test]
    fn regression_ids_made_back_to_back_are_sampled_independently() {
        // Review finding: sampling on the id's raw bits kept or dropped whole bursts,
        // because ids made in one millisecond share them.
        let log = DecisionLog::start(
            DecisionLogConfig {
                sample: 0.5,
                ..DecisionLogConfig::default()
            },
            Counter::default(),
        )
        .unwrap();
        let ids: Vec<String> = (0..2000)
            .map(|_| crate::pipeline::new_decision_id())
            .collect();
        let kept = ids.iter().filter(|id| log.sampled(id)).count();
        assert!((850..=1150).contains(&kept), "{kept} of 2000");
        // the same decision is always in or out
        assert!(ids.iter().all(|id| log.sampled(id) == log.sampled(id)));
    }
}
