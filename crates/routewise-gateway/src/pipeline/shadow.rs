//! Stage 3c, shadow routers (`shadow:` in the config): every routed request is also
//! decided by each shadow router, off the request path; the client only ever gets the live
//! choice's answer. The request's task moves a small job (the decision id, the prompt, the
//! live choice and its propensity) into a queue bounded in jobs and in bytes; when it is
//! full the job is dropped and counted (`routewise_shadow_dropped_total`), so a shadow
//! never slows or blocks live traffic. A worker thread decides with each shadow's engine
//! and:
//!
//! * logs one `routewise::shadow` line per shadow (decision id, the shadow's choice, the
//!   live one, whether they agree, the shadow's predicted score and cost for both), from
//!   which `routewise replay --log LOG --shadow NAME` evaluates it without its artifact
//!   or the prompts;
//! * keeps running statistics, served by `GET /v1/stats/shadow`: decisions, agreement with
//!   live, predicted savings per request (the shadow's expected cost of the live choice
//!   minus that of its own, at the shadow artifact's prices), and, as feedback arrives
//!   (`POST /v1/feedback`), an off-policy estimate of the shadow's mean quality (score)
//!   on live traffic: self-normalised IPS and doubly robust, the latter with a 95% normal
//!   interval under a variance floor like `routewise_eval::ope`'s, from `s (1 - s)` of the
//!   predicted score (the lab's also pools each model's residuals). Running sums: the
//!   shadow's predicted score is DR's direct model, the live choice's logged propensity
//!   the weight's denominator. Decisions whose propensity is unknown on the request path
//!   (Thompson sampling; an exploration replacing a forced pick) count in agreement only,
//!   as does feedback on a fallback's answer.
//!
//! Pending decisions wait for their feedback in a bounded map (oldest evicted first).
//!
//! A hot reload that leaves `shadow:` and the shadow artifacts unchanged keeps the same
//! worker, statistics, pending feedback and execution budgets; executions then call the
//! upstreams of the configuration being served ([`Target`]). A reload that changes them
//! starts the shadows afresh, statistics and daily budgets included.
//!
//! Optional execution (`execute: {sample, max_usd_per_day}`, per instance: N replicas
//! spend up to N budgets): on a `sample` share of the
//! routed requests (chosen by the decision id, so the same on every instance), when the
//! shadow picks another model than live, the request is also sent to the shadow's pick,
//! without streaming, on the runtime, after the decision; the client never sees it. Each
//! call first reserves its worst case (as many input tokens as the body has bytes, and
//! `max_tokens` output tokens per completion, `max_completion_tokens` set to 4,096 when
//! the request gives none, at the gateway's prices for that model) against the shadow's budget for the
//! UTC day (wall clock), and settles to the
//! real cost from usage once it answers: the reservations never exceed the budget, so
//! neither does the spend, as long as the upstream bills no more input tokens than the
//! body has bytes (true of text; images are billed by their own rules). Each execution is
//! logged as a `routewise::shadow_execution` line (status, cost, latency, and the answer's
//! text when `log.decisions.prompt` is on) for comparison by a judge or feedback, and
//! counted in the statistics. Shadow calls leave the live breakers and cost metrics alone,
//! but they share the upstreams' rate limits and deployment slots with live traffic: keep
//! `sample` small. At most 64 run at once, and each takes a slot at one of the model's
//! deployments (past either, or past the deployment's quota, they are skipped and counted
//! as `throttled`); a call cut short by shutdown is charged its reservation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use prometheus_client::metrics::counter::Counter;
use routewise_router::{Engine, Policy};
use serde::Serialize;

use crate::request::ChatRequest;
use crate::state::Gateway;
use crate::upstream::{Answer, AttemptInfo, Call};

/// Jobs queued for the worker at most.
const QUEUE: usize = 4096;
/// Bytes of prompts and request copies queued at most (past it, jobs are dropped and
/// counted like a full queue): a burst of large prompts cannot grow memory unboundedly.
const QUEUE_BYTES: usize = 64 << 20;
/// Decisions kept waiting for feedback at most.
const PENDING: usize = 65_536;
/// Effective sample size under which the estimate is flagged.
const MIN_ESS: f64 = 100.0;

/// One shadow router.
#[derive(Debug)]
pub struct Shadow {
    pub name: String,
    pub engine: Engine,
    /// `None`: the live request's policy.
    pub policy: Option<Policy>,
    /// Share of routed requests this shadow decides (chosen by the decision id; 1: all):
    /// bounds its CPU on a small machine, its statistics staying unbiased.
    pub sample: f64,
    /// Whether (and how much) the shadow's choices are executed.
    pub execute: Option<Execute>,
}

pub use crate::config::ShadowExecute as Execute;

/// Output tokens reserved for a call that gives no `max_tokens`.
const DEFAULT_RESERVED_OUTPUT: u64 = 4096;
const DAY_MS: u64 = 86_400_000;

/// One shadow's spend for the current UTC day.
#[derive(Debug, Default)]
struct Budget {
    day: u64,
    spent: f64,
    reserved: f64,
}

impl Budget {
    /// Reserves `amount` if it fits in `limit` today.
    fn reserve(&mut self, now_ms: u64, amount: f64, limit: f64) -> bool {
        let day = now_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.spent = 0.0;
        }
        if self.spent + self.reserved + amount > limit {
            return false;
        }
        self.reserved += amount;
        true
    }

    /// Replaces a reservation by the real cost.
    fn settle(&mut self, reserved: f64, cost: f64) {
        self.reserved = (self.reserved - reserved).max(0.0);
        self.spent += cost;
    }
}

/// Whether decision `id` is in a shadow's `share` sample ([`super::id_in_sample`], salted
/// so that it is independent of the decision log's sample).
pub fn sampled(id: &str, share: f64) -> bool {
    super::id_in_sample(id, 0x5bd1_e995_0000_0001, share)
}

/// What executing a shadow's choice needs from the request.
#[derive(Debug)]
pub struct ExecRequest {
    /// The client's request, made non-streaming.
    pub request: ChatRequest,
    /// The client's body size, which bounds what the copy holds.
    pub body_bytes: usize,
    /// The runtime the call runs on.
    pub runtime: tokio::runtime::Handle,
}

/// A routed request, as the shadows see it.
#[derive(Debug)]
pub struct Job {
    pub decision_id: String,
    pub prompt: String,
    pub input_tokens: u32,
    pub policy: Policy,
    /// The live choice's name and propensity.
    pub live: String,
    pub propensity: Option<f64>,
    /// Present when some shadow executes this request ([`Shadows::executes`]).
    pub exec: Option<ExecRequest>,
}

enum Msg {
    /// A job and the bytes it holds (released once handled).
    Decide(Box<Job>, usize),
    Feedback {
        decision_id: String,
        /// The model that answered (a fallback's score is not the live choice's).
        model: String,
        score: f64,
    },
    Flush(Sender<()>),
}

/// Running sums of one shadow.
#[derive(Debug, Clone, Default)]
struct Sums {
    decisions: u64,
    agreed: u64,
    /// Decisions where the live model is in the shadow's catalog (savings are defined).
    priced: u64,
    savings: f64,
    /// With feedback and a known propensity:
    n: u64,
    w: f64,
    w2: f64,
    wr: f64,
    dr: f64,
    dr2: f64,
    shortfall: f64,
    /// Executions sent, their settled cost, those the budget refused, and those skipped
    /// while [`MAX_EXECUTIONS`] were running.
    executed: u64,
    executed_usd: f64,
    over_budget: u64,
    throttled: u64,
}

/// What `GET /v1/stats/shadow` reports for one shadow.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShadowStats {
    pub name: String,
    pub decisions: u64,
    /// Share of decisions where the shadow picks the live model.
    pub agreement: f64,
    /// Mean of (expected cost of the live choice - of the shadow's), USD per request.
    pub predicted_savings_usd: f64,
    /// Decisions with feedback used by the estimate.
    pub feedback: u64,
    /// The shadow's estimated mean quality on live traffic (SNIPS; null before feedback).
    pub quality_snips: Option<f64>,
    /// The same, doubly robust, with a 95% interval.
    pub quality_dr: Option<f64>,
    pub quality_dr_ci: Option<[f64; 2]>,
    /// Kish's effective sample size of the weights.
    pub ess: f64,
    /// Below 100: the estimate is imprecise whatever its interval says.
    pub low_ess: bool,
    /// Executions of the shadow's choice sent (`execute:`), their cost so far, and those
    /// the daily budget refused.
    pub executed: u64,
    pub executed_usd: f64,
    pub over_budget: u64,
    /// Executions skipped because 64 were already running.
    pub throttled: u64,
}

impl Sums {
    fn stats(&self, name: &str) -> ShadowStats {
        let d = self.decisions.max(1) as f64;
        let n = self.n as f64;
        let (snips, dr, ci) = if self.n > 1 {
            let mean = self.dr / n;
            let var =
                ((self.dr2 - self.dr * self.dr / n) / (n - 1.0)).max(0.0) + self.shortfall / n;
            let half = 1.96 * (var / n).sqrt();
            (
                (self.w > 0.0).then(|| self.wr / self.w),
                Some(mean),
                Some([mean - half, mean + half]),
            )
        } else {
            (None, None, None)
        };
        let ess = if self.w2 > 0.0 {
            self.w * self.w / self.w2
        } else {
            0.0
        };
        ShadowStats {
            name: name.to_string(),
            decisions: self.decisions,
            agreement: self.agreed as f64 / d,
            predicted_savings_usd: if self.priced > 0 {
                self.savings / self.priced as f64
            } else {
                0.0
            },
            feedback: self.n,
            quality_snips: snips,
            quality_dr: dr,
            quality_dr_ci: ci,
            ess,
            low_ess: ess < MIN_ESS,
            executed: self.executed,
            executed_usd: self.executed_usd,
            over_budget: self.over_budget,
            throttled: self.throttled,
        }
    }
}

/// A decision waiting for its feedback: per shadow, (weight numerator: agrees, the shadow's
/// predicted score of its pick, of the live model, the outcome variance floor).
struct Pending {
    propensity: f64,
    /// The live choice: feedback on another model's answer (a fallback) is not its.
    live: String,
    per_shadow: Vec<(bool, f64, f64, f64)>,
}

/// The gateway whose upstreams executions call: the configuration being served (held
/// weakly: the gateway owns the shadows); a reload that keeps the shadows points it at
/// the new configuration.
#[derive(Debug, Default)]
pub struct Target(Mutex<Weak<Gateway>>);

impl Target {
    pub fn new(gateway: Weak<Gateway>) -> Arc<Target> {
        Arc::new(Target(Mutex::new(gateway)))
    }

    /// Points executions at `gateway`.
    pub fn set(&self, gateway: Weak<Gateway>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = gateway;
    }

    fn get(&self) -> Option<Arc<Gateway>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
    }
}

/// The shadows' queue, worker and statistics.
pub struct Shadows {
    /// Where executions go.
    pub target: Arc<Target>,
    tx: Sender<Msg>,
    /// Bytes held by queued jobs.
    queued: Arc<AtomicUsize>,
    names: Vec<String>,
    /// Each shadow's decision sample.
    decides: Vec<f64>,
    /// Each shadow's execution sample (0: not executed).
    samples: Vec<f64>,
    stats: Arc<Mutex<Vec<Sums>>>,
    dropped: Counter,
}

impl std::fmt::Debug for Shadows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadows")
            .field("names", &self.names)
            .finish()
    }
}

impl Shadows {
    /// Starts the worker thread for `shadows`; full-queue drops count on `dropped`;
    /// executions call the upstreams of the gateway `target` names.
    pub fn start(
        shadows: Vec<Shadow>,
        dropped: Counter,
        target: Arc<Target>,
    ) -> std::io::Result<Shadows> {
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(QUEUE);
        let names: Vec<String> = shadows.iter().map(|s| s.name.clone()).collect();
        let decides = shadows.iter().map(|s| s.sample).collect();
        let samples = shadows
            .iter()
            .map(|s| s.execute.map_or(0.0, |e| e.sample.min(s.sample)))
            .collect();
        let stats = Arc::new(Mutex::new(vec![Sums::default(); shadows.len()]));
        let shared = Arc::clone(&stats);
        let queued = Arc::new(AtomicUsize::new(0));
        let held = Arc::clone(&queued);
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let to = Arc::clone(&target);
        std::thread::Builder::new()
            .name("routewise-shadows".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    worker(&shadows, &rx, &shared, &to, &held)
                })
            })?;
        Ok(Shadows {
            target,
            tx,
            queued,
            names,
            decides,
            samples,
            stats,
            dropped,
        })
    }

    /// Whether some shadow executes decision `id` (then the job carries the request).
    pub fn executes(&self, id: &str) -> bool {
        // Every shadow's sample uses the same draw of the id: some shadow samples it
        // exactly when the largest share does (one hash, not one per shadow).
        let share = self.samples.iter().copied().fold(0.0, f64::max);
        share > 0.0 && sampled(id, share)
    }

    /// Whether some shadow decides decision `id` (else nothing is queued for it).
    pub fn decides(&self, id: &str) -> bool {
        let share = self.decides.iter().copied().fold(0.0, f64::max);
        share > 0.0 && sampled(id, share)
    }

    /// Queues a routed request for the shadows; never blocks.
    pub fn observe(&self, job: Job) {
        // A parsed request copy holds about twice its body (the values and their keys).
        let bytes = job.prompt.len() + job.exec.as_ref().map_or(0, |e| 2 * e.body_bytes);
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > QUEUE_BYTES
            || self.tx.try_send(Msg::Decide(Box::new(job), bytes)).is_err()
        {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped.inc();
        }
    }

    /// Passes a decision's feedback score (for the answer of `model`) to the shadows'
    /// estimates; never blocks.
    pub fn feedback(&self, decision_id: &str, model: &str, score: f64) {
        let msg = Msg::Feedback {
            decision_id: decision_id.to_string(),
            model: model.to_string(),
            score,
        };
        if self.tx.try_send(msg).is_err() {
            self.dropped.inc();
        }
    }

    /// The statistics so far, one entry per shadow.
    pub fn stats(&self) -> Vec<ShadowStats> {
        let sums = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        self.names
            .iter()
            .zip(sums.iter())
            .map(|(n, s)| s.stats(n))
            .collect()
    }

    /// Waits (up to `timeout`) until every job queued so far is handled.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (ack, done) = crossbeam_channel::bounded(1);
        self.tx.send_timeout(Msg::Flush(ack), timeout).is_ok() && done.recv_timeout(timeout).is_ok()
    }
}

/// `routewise_eval::ope::bounded_outcome_var` (the gateway does not depend on the lab).
fn bounded_var(s: f64) -> f64 {
    if s.is_finite() {
        let s = s.clamp(0.0, 1.0);
        s * (1.0 - s)
    } else {
        0.0
    }
}

/// The worker: decides queued jobs with every shadow, folds feedback into the estimates;
/// ends when the gateway (the sender) is gone.
fn worker(
    shadows: &[Shadow],
    rx: &Receiver<Msg>,
    stats: &Arc<Mutex<Vec<Sums>>>,
    target: &Arc<Target>,
    queued: &AtomicUsize,
) {
    let budgets: Vec<Arc<Mutex<Budget>>> = shadows
        .iter()
        .map(|_| Arc::new(Mutex::new(Budget::default())))
        .collect();
    let running = Arc::new(AtomicUsize::new(0));
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut order: VecDeque<String> = VecDeque::new();
    let index: Vec<HashMap<String, usize>> = shadows
        .iter()
        .map(|s| {
            s.engine
                .catalog
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect()
        })
        .collect();
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Decide(job, bytes) => {
                queued.fetch_sub(bytes, Ordering::Relaxed);
                let mut per_shadow = Vec::with_capacity(shadows.len());
                let mut local = Vec::with_capacity(shadows.len());
                for (k, (s, idx)) in shadows.iter().zip(&index).enumerate() {
                    if !sampled(&job.decision_id, s.sample) {
                        // Not in this shadow's sample: no decision, nothing to estimate.
                        per_shadow.push((false, f64::NAN, f64::NAN, 0.0));
                        local.push(None);
                        continue;
                    }
                    let policy = s.policy.unwrap_or(job.policy);
                    let d = s.engine.decide(&job.prompt, job.input_tokens, policy);
                    let pick = &s.engine.catalog.models[d.chosen].name;
                    let agrees = *pick == job.live;
                    if let (Some(e), Some(exec), false) = (s.execute, &job.exec, agrees) {
                        if sampled(&job.decision_id, e.sample) {
                            execute(
                                target,
                                exec,
                                &job.decision_id,
                                &s.name,
                                pick,
                                e,
                                &budgets[k],
                                &running,
                                stats,
                                k,
                            );
                        }
                    }
                    let live = idx.get(&job.live).copied();
                    let savings = live.map(|l| d.costs[l] - d.costs[d.chosen]);
                    let s_live = live.map_or(f64::NAN, |l| d.scores[l]);
                    // With the shadow's predictions for the live model too, `routewise
                    // replay --log --shadow NAME` evaluates it from this line alone (DR's
                    // direct model at the logged choice); NaN (null) when it lacks it.
                    let shadow_policy = serde_json::to_string(&policy).unwrap_or_default();
                    tracing::info!(
                        target: "routewise::shadow",
                        decision_id = %job.decision_id,
                        shadow = %s.name,
                        policy = %shadow_policy,
                        chosen = %pick,
                        live = %job.live,
                        agrees,
                        predicted_score = d.scores[d.chosen],
                        predicted_cost_usd = d.costs[d.chosen],
                        live_predicted_score = s_live,
                        live_predicted_cost_usd = live.map_or(f64::NAN, |l| d.costs[l]),
                        "shadow decision"
                    );
                    per_shadow.push((agrees, d.scores[d.chosen], s_live, bounded_var(s_live)));
                    local.push(Some((agrees, savings)));
                }
                {
                    let mut sums = stats.lock().unwrap_or_else(PoisonError::into_inner);
                    for (sum, (agrees, savings)) in sums
                        .iter_mut()
                        .zip(local)
                        .filter_map(|(sum, l)| Some((sum, l?)))
                    {
                        sum.decisions += 1;
                        sum.agreed += u64::from(agrees);
                        if let Some(v) = savings.filter(|v| v.is_finite()) {
                            sum.priced += 1;
                            sum.savings += v;
                        }
                    }
                }
                // A shadow that does not know the live model has no direct model for it:
                // its entry (NaN) is skipped when the feedback comes, the others count.
                if let Some(p) = job.propensity.filter(|p| *p > 0.0) {
                    if order.len() >= PENDING {
                        if let Some(old) = order.pop_front() {
                            pending.remove(&old);
                        }
                    }
                    order.push_back(job.decision_id.clone());
                    pending.insert(
                        job.decision_id,
                        Pending {
                            propensity: p,
                            live: job.live,
                            per_shadow,
                        },
                    );
                }
            }
            Msg::Feedback {
                decision_id,
                model,
                score,
            } => {
                let Some(p) = pending.remove(&decision_id) else {
                    continue;
                };
                if model != p.live {
                    continue;
                }
                let mut sums = stats.lock().unwrap_or_else(PoisonError::into_inner);
                for (sum, (agrees, s_pick, s_live, var)) in sums.iter_mut().zip(p.per_shadow) {
                    if !s_live.is_finite() {
                        continue;
                    }
                    let w = if agrees { 1.0 / p.propensity } else { 0.0 };
                    let resid = w * (score - s_live);
                    let t = s_pick + resid;
                    sum.n += 1;
                    sum.w += w;
                    sum.w2 += w * w;
                    sum.wr += w * score;
                    sum.dr += t;
                    sum.dr2 += t * t;
                    sum.shortfall += (w * w * var - resid * resid).max(0.0);
                }
            }
            Msg::Flush(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

/// Executions of shadow choices running at once, at most (past it they are skipped and
/// counted as `throttled`): their request copies stay bounded.
const MAX_EXECUTIONS: usize = 64;

/// The worst case of a shadow call ([`super::budget::worst_case`]); `request` gets
/// an output cap of [`DEFAULT_RESERVED_OUTPUT`] when it has none, so that the upstream
/// is held to what is reserved.
fn reserve_for(request: &mut ChatRequest, cost: impl Fn(u64, u64) -> f64) -> f64 {
    super::budget::cap_output(request, DEFAULT_RESERVED_OUTPUT);
    super::budget::worst_case(request, DEFAULT_RESERVED_OUTPUT, cost)
}

/// A reservation against a shadow's budget, settled exactly once: by [`Held::settle`], or
/// at the reserved amount if the call is dropped unfinished (shutdown), so that a lost
/// task never holds budget forever.
struct Held {
    budget: Arc<Mutex<Budget>>,
    running: Arc<AtomicUsize>,
    amount: f64,
    settled: bool,
}

impl Held {
    fn settle(mut self, cost: f64) {
        self.settled = true;
        self.budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settle(self.amount, cost);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.settled {
            self.budget
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .settle(self.amount, self.amount);
        }
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `exec`'s request to `model` for shadow `k` (see the module docs), within its
/// budget; returns at once, the call runs on the request's runtime.
#[allow(clippy::too_many_arguments)]
fn execute(
    target: &Target,
    exec: &ExecRequest,
    decision_id: &str,
    shadow: &str,
    model: &str,
    e: Execute,
    budget: &Arc<Mutex<Budget>>,
    running: &Arc<AtomicUsize>,
    stats: &Arc<Mutex<Vec<Sums>>>,
    k: usize,
) {
    let Some(gw) = target.get() else {
        return;
    };
    let Some(m) = gw.upstreams.by_name(model) else {
        return;
    };
    if running.fetch_add(1, Ordering::Relaxed) >= MAX_EXECUTIONS {
        running.fetch_sub(1, Ordering::Relaxed);
        stats.lock().unwrap_or_else(PoisonError::into_inner)[k].throttled += 1;
        return;
    }
    let up = gw.upstreams.get(m);
    let mut request = exec.request.clone();
    let reservation = reserve_for(&mut request, |i, o| up.cost(i, o));
    let admitted = budget
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .reserve(
            routewise_online::service::now_ms(),
            reservation,
            e.max_usd_per_day,
        );
    if !admitted {
        running.fetch_sub(1, Ordering::Relaxed);
        stats.lock().unwrap_or_else(PoisonError::into_inner)[k].over_budget += 1;
        return;
    }
    let held = Held {
        budget: Arc::clone(budget),
        running: Arc::clone(running),
        amount: reservation,
        settled: false,
    };
    // A slot at one of the model's deployments, for the request as sent (an execution
    // never pushes one past its max_concurrency or quota): none free counts as throttled.
    let Ok(super::attempts::Taken { slot, quota }) =
        super::attempts::take_deployment(&gw, up, &request, &[])
    else {
        held.settle(0.0);
        stats.lock().unwrap_or_else(PoisonError::into_inner)[k].throttled += 1;
        return;
    };
    quota.keep();
    let stats = Arc::clone(stats);
    let (id, shadow) = (decision_id.to_string(), shadow.to_string());
    // The call keeps the configuration it started on (as a request does).
    exec.runtime.spawn(async move {
        let up = gw.upstreams.get(m);
        let dep = &up.deployments[slot.deployment];
        let timeout = Duration::from_millis(gw.config.limits.request_timeout_ms);
        let call = Call {
            request: &request,
            model: &up.name,
            upstream_model: &dep.upstream_model,
            timeout,
            id: &id,
            forward: &[],
        };
        let started = Instant::now();
        let mut info = AttemptInfo::default();
        let result = dep.provider.call(call, &mut info).await;
        drop(slot);
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let (status, usage, text) = match &result {
            Ok(Answer::Full { status, body, .. }) => (
                status.as_u16(),
                crate::pipeline::stream::parse_usage(body).map(|(p, c)| up.cost(p, c)),
                status
                    .is_success()
                    .then(|| super::cascade::content(body))
                    .flatten(),
            ),
            Ok(Answer::Stream { status, .. }) => (status.as_u16(), None, None),
            Err(_) => (0, None, None),
        };
        let charged = super::budget::charge(&result, usage, reservation);
        held.settle(charged);
        {
            let mut sums = stats.lock().unwrap_or_else(PoisonError::into_inner);
            sums[k].executed += 1;
            sums[k].executed_usd += charged;
        }
        let answer = text.filter(|_| gw.config.decision_log.prompt);
        tracing::info!(
            target: "routewise::shadow_execution",
            decision_id = %id,
            shadow = %shadow,
            model = %up.name,
            status,
            cost_usd = charged,
            latency_ms,
            error = result.as_ref().err().map(|f| f.outcome.name()),
            answer = answer.as_deref(),
            "shadow execution"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::budget::charge;
    use routewise_router::{Catalog, ModelInfo};

    fn chat(body: serde_json::Value) -> ChatRequest {
        crate::request::parse(
            &bytes::Bytes::from(body.to_string()),
            &axum::http::HeaderMap::new(),
            true,
        )
        .unwrap()
    }

    #[test]
    fn a_reservation_covers_every_completion_and_caps_the_output() {
        let per_token = |i: u64, o: u64| (i + o) as f64;
        let m = serde_json::json!([{"role": "user", "content": "hi"}]);
        // No max_tokens: 4,096 reserved, and set on the copy sent.
        let mut r = chat(serde_json::json!({"model": "auto", "messages": m}));
        let got = reserve_for(&mut r, per_token);
        assert_eq!(got, r.body_bytes as f64 + 4096.0);
        assert_eq!(r.max_tokens, Some(4096));
        assert_eq!(r.rest()["max_completion_tokens"], 4096);
        // n completions of max_tokens each.
        let mut r =
            chat(serde_json::json!({"model": "auto", "messages": m, "max_tokens": 10, "n": 3}));
        let input = r.body_bytes as f64;
        assert_eq!(reserve_for(&mut r, per_token), input + 30.0);
    }

    #[test]
    fn a_call_is_charged_what_it_may_have_cost() {
        use crate::upstream::{AttemptOutcome, Failure};
        let full = |status: u16| -> Result<Answer, Failure> {
            Ok(Answer::Full {
                status: axum::http::StatusCode::from_u16(status).unwrap(),
                content_type: None,
                body: bytes::Bytes::new(),
            })
        };
        assert_eq!(charge(&full(200), Some(0.2), 1.0), 0.2); // usage reported
        assert_eq!(charge(&full(200), None, 1.0), 1.0); // answered, usage unknown
        assert_eq!(charge(&full(400), None, 1.0), 0.0); // refused
        let err = |o| -> Result<Answer, Failure> { Err(Failure::new(o, "x")) };
        assert_eq!(charge(&err(AttemptOutcome::Timeout), None, 1.0), 1.0);
        assert_eq!(charge(&err(AttemptOutcome::Body), None, 1.0), 1.0);
        assert_eq!(charge(&err(AttemptOutcome::Connect), None, 1.0), 0.0);
        assert_eq!(charge(&err(AttemptOutcome::Http429), None, 1.0), 0.0);
    }

    #[test]
    fn a_dropped_call_settles_its_reservation() {
        let budget = Arc::new(Mutex::new(Budget::default()));
        let running = Arc::new(AtomicUsize::new(1));
        assert!(budget.lock().unwrap().reserve(0, 0.4, 1.0));
        drop(Held {
            budget: Arc::clone(&budget),
            running: Arc::clone(&running),
            amount: 0.4,
            settled: false,
        });
        let b = budget.lock().unwrap();
        assert_eq!((b.reserved, b.spent), (0.0, 0.4));
        assert_eq!(running.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_budget_holds_reservations_and_resets_each_day() {
        let mut b = Budget::default();
        assert!(b.reserve(1_000, 0.6, 1.0));
        assert!(!b.reserve(1_000, 0.6, 1.0)); // 1.2 > 1
        b.settle(0.6, 0.1);
        assert!(b.reserve(2_000, 0.6, 1.0)); // 0.1 + 0.6
        assert!(!b.reserve(2_000, 0.31, 1.0));
        // The next UTC day starts from what is still reserved, not from what was spent.
        assert!(b.reserve(DAY_MS + 5, 0.3, 1.0));
        assert!(!b.reserve(DAY_MS + 5, 0.2, 1.0)); // 0.6 + 0.3 + 0.2 reserved
    }

    #[test]
    fn sampling_by_decision_id_keeps_about_the_share() {
        let ids: Vec<String> = (0..4000u64).map(|i| format!("{:032x}", i * 7919)).collect();
        let kept = ids.iter().filter(|id| sampled(id, 0.25)).count();
        assert!((800..=1200).contains(&kept), "{kept}");
        assert!(ids.iter().all(|id| sampled(id, 1.0)));
        assert!(!ids.iter().any(|id| sampled(id, 0.0)));
    }

    fn engine(scores: Vec<f64>) -> Engine {
        Engine::constant(
            Catalog {
                models: vec![ModelInfo::flat("cheap", 1.0), ModelInfo::flat("dear", 10.0)],
            },
            scores,
        )
    }

    fn job(id: &str, live: &str, p: Option<f64>) -> Job {
        Job {
            decision_id: id.into(),
            prompt: "hello".into(),
            input_tokens: 100,
            policy: Policy::Lambda(0.0),
            live: live.into(),
            propensity: p,
            exec: None,
        }
    }

    #[test]
    fn shadows_report_agreement_savings_and_a_feedback_estimate() {
        // "prefers-cheap" always picks `cheap`; "prefers-dear" always `dear`.
        let shadows = Shadows::start(
            vec![
                Shadow {
                    name: "prefers-cheap".into(),
                    engine: engine(vec![0.8, 0.5]),
                    policy: None,
                    sample: 1.0,
                    execute: None,
                },
                Shadow {
                    name: "prefers-dear".into(),
                    engine: engine(vec![0.5, 0.8]),
                    policy: None,
                    sample: 1.0,
                    execute: None,
                },
            ],
            Counter::default(),
            Arc::default(),
        )
        .unwrap();
        // Live: `dear` with probability 0.5, `cheap` 0.5 (a coin flip logger); `cheap`
        // scores 1, `dear` 0.
        for i in 0..400 {
            let live = if i % 2 == 0 { "cheap" } else { "dear" };
            shadows.observe(job(&i.to_string(), live, Some(0.5)));
            shadows.feedback(
                &i.to_string(),
                live,
                if live == "cheap" { 1.0 } else { 0.0 },
            );
        }
        // Unknown propensity: counted in agreement, not in the estimate.
        shadows.observe(job("x", "cheap", None));
        shadows.feedback("x", "cheap", 1.0);
        // Feedback on a fallback's answer is not the live choice's.
        shadows.observe(job("y", "cheap", Some(0.5)));
        shadows.feedback("y", "dear", 0.0);
        assert!(shadows.flush(std::time::Duration::from_secs(5)));
        let s = shadows.stats();
        assert_eq!(s[0].name, "prefers-cheap");
        assert_eq!(s[0].decisions, 402);
        assert!((s[0].agreement - 202.0 / 402.0).abs() < 1e-12);
        assert_eq!(s[0].feedback, 400);
        // Its true quality is 1 (it always picks the model that scores 1).
        assert!((s[0].quality_snips.unwrap() - 1.0).abs() < 1e-9);
        let ci = s[0].quality_dr_ci.unwrap();
        assert!(ci[0] <= 1.0 && 1.0 <= ci[1], "{ci:?}");
        assert!((s[1].quality_snips.unwrap() - 0.0).abs() < 1e-9);
        let ci = s[1].quality_dr_ci.unwrap();
        assert!(ci[0] <= 0.0 && 0.0 <= ci[1], "{ci:?}");
        // Picking `cheap` where live picked `dear` saves; the other shadow spends.
        assert!(s[0].predicted_savings_usd > 0.0 && s[1].predicted_savings_usd < 0.0);
        assert!((s[0].ess - 200.0).abs() < 1e-9 && !s[0].low_ess);
    }

    #[test]
    fn a_sampled_shadow_decides_its_share_and_estimates_on_it() {
        let shadows = Shadows::start(
            vec![Shadow {
                name: "half".into(),
                engine: engine(vec![0.8, 0.5]),
                policy: None,
                sample: 0.5,
                execute: None,
            }],
            Counter::default(),
            Arc::default(),
        )
        .unwrap();
        let ids: Vec<String> = (0..2000u64)
            .map(|i| format!("{:032x}", i * 104_729))
            .collect();
        let mut queued = 0;
        for (i, id) in ids.iter().enumerate() {
            if !shadows.decides(id) {
                continue;
            }
            queued += 1;
            let live = if i % 2 == 0 { "cheap" } else { "dear" };
            shadows.observe(job(id, live, Some(0.5)));
            shadows.feedback(id, live, if live == "cheap" { 1.0 } else { 0.0 });
        }
        assert!(shadows.flush(std::time::Duration::from_secs(5)));
        let s = &shadows.stats()[0];
        assert!((800..=1200).contains(&queued), "{queued}");
        assert_eq!(s.decisions, queued as u64);
        assert_eq!(s.feedback, queued as u64);
        // Always `cheap`, which scores 1: the estimate on the sample is still 1.
        assert!((s.quality_snips.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dropped = Counter::default();
        let shadows = Shadows::start(
            vec![Shadow {
                name: "s".into(),
                engine: engine(vec![0.5, 0.5]),
                policy: None,
                sample: 1.0,
                execute: None,
            }],
            dropped.clone(),
            Arc::default(),
        )
        .unwrap();
        for i in 0..(QUEUE * 4) {
            shadows.observe(job(&i.to_string(), "cheap", Some(1.0)));
        }
        assert!(shadows.flush(std::time::Duration::from_secs(10)));
        let handled = shadows.stats()[0].decisions;
        assert_eq!(handled + dropped.get(), (QUEUE * 4) as u64);
    }
}
