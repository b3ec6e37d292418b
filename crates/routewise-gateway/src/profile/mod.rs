//! `routewise profile`: outcome data from live models. Every probe prompt goes to every
//! profiled model through the gateway's own providers (the models of a gateway config,
//! built as `serve` builds them: [`Pool`]), one call at a time per pair and never to
//! another model (no fallback: the outcome is the model's); each answer is graded
//! ([`routewise_router::grade`]: against the probe's reference, else by the `--judge`
//! model) and written as canonical routing JSONL ([`files`]).
//!
//! * **Concurrency:** at most `concurrency` calls in flight per model (a semaphore per
//!   model; the judge's calls take the judge's), and at most `concurrency` x models pairs
//!   started but not settled, so memory holds a window of probes, not the probe set.
//! * **Retries:** a 429, 5xx, timeout, connection error or broken body is retried up to
//!   `retries` times, after the upstream's `retry-after` (capped at a minute) or an
//!   exponential backoff with jitter (250 ms doubling, capped at 8 s). A 401/403/404,
//!   another 4xx, or a 2xx without text (a refusal, a filtered answer) is not retried.
//! * **Spend:** with `max_usd`, each call (judge calls included) reserves its worst case
//!   before it is sent (`budget::worst_case`: as many input tokens as the body has bytes,
//!   `max_tokens` output tokens, at the model's prices) and settles at its usage after
//!   (`budget::charge`); a call whose reservation does not fit waits for the calls in
//!   flight to settle, and when it does not fit with none in flight it is not sent and
//!   the run stops starting pairs. So the run's spend stays under the cap as long as
//!   upstreams honour `max_tokens`. The cap is per run: a resumed run counts afresh. A
//!   reservation is settled exactly once, at the reserved amount when its call never
//!   finished (a task aborted or panicking). A pair stopped by the budget at its judge
//!   call is not journaled (it has no score): a resumed run asks its model again.
//! * **Failures:** a pair whose calls all fail is left out of its probe's line, never
//!   scored 0; a model failing `give_up_after` pairs in a row is left out of the rest of
//!   the run, and the report lists every model's errors by kind (retries included). A
//!   judge reply without a rating is asked again (twice), then the pair is counted as
//!   missing; a judge whose calls fail `give_up_after` times in a row is left out, and the
//!   probes without a reference are not sent to the models any more (their answers could
//!   not be graded). A pair whose task panics counts as failed.
//! * **Interruption:** the `interrupt` future (Ctrl-C in the CLI) stops the run at once;
//!   graded pairs are already journaled, so `--resume` loses nothing but the calls that
//!   were in flight.

pub mod files;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::FutureExt;
use rand::Rng;
use routewise_data::probes::{Probe, ProbeSource};
use routewise_data::{estimate_tokens, DataError};
use routewise_router::catalog::Reconciled;
use routewise_router::grade;
use routewise_router::{Catalog, ModelInfo};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigError, Issue};
use crate::load::{self, LoadError};
use crate::models::{ModelId, ModelTable};
use crate::pipeline::budget;
use crate::upstream::client::HttpClient;
use crate::upstream::{Answer, AttemptInfo, AttemptOutcome, Call};

pub use files::Output;

/// Why a profile run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Probes(#[from] DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} (or its journal, with `.partial` added) already exists: pass --resume to continue \
         that run, or choose another --out"
    )]
    Exists(PathBuf),
    #[error("{path}:{line}: cannot resume from this line: {message}")]
    Resume {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// The models of a gateway config, built as `serve` builds them, with their prices.
pub struct Pool {
    table: ModelTable,
    timeout: Duration,
    /// Names in the config's order.
    names: Vec<String>,
    /// Models with no price (config index, name): profiling or judging with one is refused.
    unpriced: Vec<(usize, String)>,
    source: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("names", &self.names).finish()
    }
}

impl Pool {
    /// Builds the models of `config`. A model's price is its configured `price`, else
    /// the one its router (the artifact, or the demo router) knows; a model with neither
    /// cannot be profiled or judge ([`Pool::check_prices`]: its calls could not be costed).
    pub fn build(config: Config) -> Result<Pool, ProfileError> {
        let text = config.source.clone();
        let prepared = load::prepare(load::versioned(config, text.as_bytes()))?;
        let config = prepared.config;
        let known = &prepared.engine.catalog.models;
        let mut unpriced = Vec::new();
        let mut models = Vec::with_capacity(config.models.len());
        for (i, m) in config.models.iter().enumerate() {
            let from_router = known.iter().find(|k| k.name == m.name);
            let price = m
                .price
                .map(|p| (p.input_per_mtok, p.output_per_mtok))
                .or_else(|| from_router.map(|k| (k.input_per_mtok, k.output_per_mtok)));
            let (input, output) = price.unwrap_or_else(|| {
                unpriced.push((i, m.name.clone()));
                (0.0, 0.0)
            });
            models.push(ModelInfo {
                name: m.name.clone(),
                input_per_mtok: input,
                output_per_mtok: output,
                mean_output_tokens: from_router.map_or(256.0, |k| k.mean_output_tokens),
            });
        }
        let n = models.len();
        let reconciled = Reconciled {
            catalog: Catalog { models },
            n_known: n,
            entry_of: (0..n).collect(),
        };
        let client = HttpClient::new(Duration::from_millis(config.limits.connect_timeout_ms));
        let table = ModelTable::build(&config, &reconciled, &client, prepared.replay.map(Arc::new))
            .map_err(|issues| config_error(&config.source, issues))?;
        let names = table.in_config_order().map(|u| u.name.clone()).collect();
        Ok(Pool {
            table,
            timeout: Duration::from_millis(config.limits.request_timeout_ms),
            names,
            unpriced,
            source: config.source.clone(),
        })
    }

    /// Refuses `models` when one has no price (naming `models[i].price`).
    pub fn check_prices(&self, models: &[ModelId]) -> Result<(), ProfileError> {
        let issues: Vec<Issue> = self
            .unpriced
            .iter()
            .filter(|(_, name)| models.iter().any(|&m| self.name(m) == name))
            .map(|(i, name)| Issue {
                path: format!("models[{i}].price"),
                message: format!(
                    "`{name}` has no price (and its router does not know it): profile \
                     needs one to cost its answers"
                ),
            })
            .collect();
        if issues.is_empty() {
            return Ok(());
        }
        Err(config_error(&self.source, issues))
    }

    /// Model names, in the config's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The model called `name`; an error naming the configured ones otherwise.
    pub fn model(&self, name: &str) -> Result<ModelId, ProfileError> {
        self.table.by_name(name).ok_or_else(|| {
            ProfileError::Usage(format!(
                "no model `{name}` in the config (its models: {})",
                self.names.join(", ")
            ))
        })
    }

    fn name(&self, id: ModelId) -> &str {
        &self.table.get(id).name
    }
}

/// The config (`file`) has these problems.
fn config_error(file: &str, issues: Vec<Issue>) -> ProfileError {
    ProfileError::Load(LoadError::Config(ConfigError {
        file: file.to_string(),
        issues,
    }))
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The models profiled.
    pub models: Vec<ModelId>,
    /// The model grading answers to probes without a reference.
    pub judge: Option<ModelId>,
    /// Calls in flight per model.
    pub concurrency: usize,
    /// The most this run may spend (USD), judge calls included.
    pub max_usd: Option<f64>,
    /// Retries of a call after a 429, 5xx, timeout or connection error.
    pub retries: u32,
    /// Output tokens per answer at most (sent as `max_tokens`).
    pub max_tokens: u64,
    /// Failed pairs in a row after which a model is left out.
    pub give_up_after: u32,
    /// Ask for the answer in the form the grader reads (a system message; probes with a
    /// reference only).
    pub instruct: bool,
    /// The first backoff (doubling per retry, capped at 8 s).
    pub backoff: Duration,
}

impl Options {
    /// Defaults for `models`.
    pub fn new(models: Vec<ModelId>) -> Options {
        Options {
            models,
            judge: None,
            concurrency: 8,
            max_usd: None,
            retries: 4,
            max_tokens: 1024,
            give_up_after: 5,
            instruct: true,
            backoff: Duration::from_millis(250),
        }
    }
}

/// Where a run stands (for a progress bar).
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Pairs settled this run (answered, failed, missing, or skipped: a model or the
    /// judge left out).
    pub settled: u64,
    /// Pairs this run has to settle.
    pub total: u64,
    /// Spend so far (USD), judge calls included.
    pub spent_usd: f64,
    /// Pairs that failed or went missing so far.
    pub failed: u64,
}

/// Why a run stopped before every pair was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The next call's reservation did not fit under `max_usd`.
    Budget,
    /// The `interrupt` future fired.
    Interrupted,
}

/// One model's account of a run.
#[derive(Debug, Clone, Default)]
pub struct ModelReport {
    pub name: String,
    /// Pairs graded.
    pub answered: u64,
    /// Pairs whose every call failed.
    pub failed: u64,
    /// Pairs whose judge gave no rating.
    pub judge_missing: u64,
    /// Failed calls by kind (`http_5xx`, `http_429`, `timeout`, `connect`, `body`,
    /// `upstream_auth`, `http_400`, ...), retries included.
    pub errors: BTreeMap<String, u64>,
    /// Why the model was left out of the rest of the run, if it was.
    pub left_out: Option<String>,
    /// Pairs not run because it was left out.
    pub skipped: u64,
    /// What its answers cost (USD).
    pub cost_usd: f64,
    /// Answers whose upstream reported no usage (tokens estimated as chars / 4).
    pub estimated_usage: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub models: Vec<ModelReport>,
    /// Probe lines written this run.
    pub lines_written: u64,
    /// Pairs skipped because an earlier run finished them (`--resume`).
    pub already_done: u64,
    /// Spend of this run (USD), judge calls included.
    pub spent_usd: f64,
    /// Of which the judge's.
    pub judge_usd: f64,
    /// Judge replies without a rating (each asked again).
    pub judge_parse_failures: u64,
    /// Set when the run stopped early.
    pub stopped: Option<Stop>,
    /// Pairs this run did not settle (a budget stop, an interruption).
    pub unsettled: u64,
    /// The judge's account (its calls' errors, whether it was left out), when one grades.
    pub judge: Option<ModelReport>,
}

impl Report {
    /// Whether every pair of the run has an outcome.
    pub fn complete(&self) -> bool {
        self.unsettled == 0
            && self
                .models
                .iter()
                .all(|m| m.failed + m.judge_missing + m.skipped == 0)
    }
}

/// Reservations and spend under `max_usd`.
#[derive(Debug, Default)]
struct Spend {
    spent: f64,
    /// What the reservations held add up to (0 whenever `held` is).
    reserved: f64,
    /// Reservations held (counted: a float sum need not come back to exactly 0).
    held: usize,
    judge: f64,
    /// Set once a reservation did not fit.
    exhausted: bool,
}

/// What the tasks share.
struct Ctx {
    pool: Arc<Pool>,
    opts: Options,
    permits: Vec<Arc<Semaphore>>,
    spend: Mutex<Spend>,
    /// Woken when a reservation settles.
    settled: tokio::sync::Notify,
    /// Failed calls by model and kind.
    errors: Mutex<Vec<BTreeMap<String, u64>>>,
    judge_parse_failures: Mutex<u64>,
    /// The judge's failed calls in a row, and whether it was left out.
    judge_streak: Mutex<(u32, bool)>,
}

/// How a pair ended.
enum PairEnd {
    Answered {
        outcome: files::OutcomeJson,
        cost: f64,
        estimated_usage: bool,
    },
    Failed,
    JudgeMissing,
    OverBudget,
}

/// One settled pair, back to the run loop.
struct Settled {
    probe: Arc<Probe>,
    model: ModelId,
    end: PairEnd,
}

/// Runs the probes of `source` over the models of `opts` into `out`; `progress` is told
/// after every settled pair; `interrupt` stops the run.
pub async fn run(
    pool: Arc<Pool>,
    opts: Options,
    source: &ProbeSource,
    out: &mut Output,
    progress: &mut dyn FnMut(&Progress),
    interrupt: impl Future<Output = ()>,
) -> Result<Report, ProfileError> {
    if opts.models.is_empty() {
        return Err(ProfileError::Usage("no models to profile".into()));
    }
    let names: Vec<String> = opts
        .models
        .iter()
        .map(|&m| pool.name(m).to_string())
        .collect();
    // What this run has to do (a first pass over the probes).
    let mut total = 0u64;
    let mut already_done = 0u64;
    for item in source.probes()? {
        let (_, p) = item?;
        for n in &names {
            if out.has(&p.id, n) {
                already_done += 1;
            } else {
                total += 1;
            }
        }
    }
    let n_models = pool.table.len();
    let ctx = Arc::new(Ctx {
        permits: (0..n_models)
            .map(|_| Arc::new(Semaphore::new(opts.concurrency.max(1))))
            .collect(),
        opts: opts.clone(),
        pool: Arc::clone(&pool),
        spend: Mutex::new(Spend::default()),
        settled: tokio::sync::Notify::new(),
        errors: Mutex::new(vec![BTreeMap::new(); n_models]),
        judge_parse_failures: Mutex::new(0),
        judge_streak: Mutex::new((0, false)),
    });
    let mut reports: Vec<ModelReport> = names
        .iter()
        .map(|n| ModelReport {
            name: n.clone(),
            ..ModelReport::default()
        })
        .collect();
    let slot_of = |m: ModelId| opts.models.iter().position(|&x| x == m).unwrap_or(0);
    let mut in_a_row = vec![0u32; opts.models.len()];
    // Probes with pairs in flight: how many are still out.
    let mut waiting: BTreeMap<String, usize> = BTreeMap::new();
    let mut tasks: JoinSet<Settled> = JoinSet::new();
    let window = opts.concurrency.max(1) * opts.models.len();
    let mut state = Progress {
        total,
        ..Progress::default()
    };
    let mut stopped = None;
    tokio::pin!(interrupt);

    // Settles one pair: journals an answer, writes a finished probe's line.
    let settle = |s: Settled,
                  out: &mut Output,
                  waiting: &mut BTreeMap<String, usize>,
                  reports: &mut Vec<ModelReport>,
                  in_a_row: &mut Vec<u32>,
                  state: &mut Progress|
     -> Result<(), ProfileError> {
        let k = slot_of(s.model);
        let r = &mut reports[k];
        state.settled += 1;
        match s.end {
            PairEnd::Answered {
                outcome,
                cost,
                estimated_usage,
            } => {
                r.answered += 1;
                r.cost_usd += cost;
                r.estimated_usage += u64::from(estimated_usage);
                in_a_row[k] = 0;
                out.record(&s.probe, &r.name, outcome)?;
            }
            PairEnd::Failed => {
                r.failed += 1;
                state.failed += 1;
                in_a_row[k] += 1;
                if in_a_row[k] >= opts.give_up_after && r.left_out.is_none() {
                    r.left_out = Some(format!("{} failed pairs in a row", in_a_row[k]));
                }
            }
            PairEnd::JudgeMissing => {
                r.judge_missing += 1;
                state.failed += 1;
            }
            PairEnd::OverBudget => state.settled -= 1,
        }
        if let Some(w) = waiting.get_mut(&s.probe.id) {
            *w -= 1;
            if *w == 0 {
                waiting.remove(&s.probe.id);
                out.finish(&s.probe)?;
            }
        }
        Ok(())
    };

    'probes: for item in source.probes()? {
        let (_, probe) = item?;
        if out.is_finished(&probe.id) {
            continue;
        }
        let probe = Arc::new(probe);
        // A guard count while its pairs start: a pair settling meanwhile must not finish
        // the probe before its other pairs have started.
        *waiting.entry(probe.id.clone()).or_default() += 1;
        for (k, &m) in opts.models.iter().enumerate() {
            if out.has(&probe.id, &names[k]) {
                continue;
            }
            if reports[k].left_out.is_some() {
                reports[k].skipped += 1;
                state.settled += 1;
                continue;
            }
            // Room in the window (and a look at the budget) before starting a pair.
            while tasks.len() >= window {
                tokio::select! {
                    biased;
                    () = &mut interrupt => {
                        stopped = Some(Stop::Interrupted);
                        break 'probes;
                    }
                    Some(done) = tasks.join_next() => {
                        if let Ok(s) = done {
                            settle(s, out, &mut waiting, &mut reports, &mut in_a_row, &mut state)?;
                            progress(&snapshot(&ctx, &state));
                        }
                    }
                }
            }
            if ctx
                .spend
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .exhausted
            {
                stopped = Some(Stop::Budget);
                break 'probes;
            }
            *waiting.entry(probe.id.clone()).or_default() += 1;
            let (ctx, probe) = (Arc::clone(&ctx), Arc::clone(&probe));
            tasks.spawn(async move {
                // A panic fails the pair (and its reservation settles on unwind).
                let end = AssertUnwindSafe(profile_pair(&ctx, &probe, m))
                    .catch_unwind()
                    .await
                    .unwrap_or(PairEnd::Failed);
                Settled {
                    probe,
                    model: m,
                    end,
                }
            });
        }
        // The guard off; with nothing started or everything settled already (a probe an
        // earlier run half finished, say), its line now.
        if let Some(w) = waiting.get_mut(&probe.id) {
            *w -= 1;
            if *w == 0 {
                waiting.remove(&probe.id);
                out.finish(&probe)?;
            }
        }
    }
    // Drain what is in flight (an interruption drops it: the journal has what settled).
    if stopped == Some(Stop::Interrupted) {
        tasks.abort_all();
    }
    while !tasks.is_empty() && stopped != Some(Stop::Interrupted) {
        tokio::select! {
            biased;
            () = &mut interrupt => {
                stopped = Some(Stop::Interrupted);
                tasks.abort_all();
                break;
            }
            Some(done) = tasks.join_next() => {
                if let Ok(s) = done {
                    settle(s, out, &mut waiting, &mut reports, &mut in_a_row, &mut state)?;
                    progress(&snapshot(&ctx, &state));
                }
            }
        }
    }
    let spend = ctx.spend.lock().unwrap_or_else(PoisonError::into_inner);
    if stopped.is_none() && spend.exhausted {
        stopped = Some(Stop::Budget);
    }
    let errors = ctx.errors.lock().unwrap_or_else(PoisonError::into_inner);
    for (k, r) in reports.iter_mut().enumerate() {
        r.errors = errors[opts.models[k].index()].clone();
    }
    let judge = opts.judge.map(|j| {
        let (streak, out) = *ctx
            .judge_streak
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ModelReport {
            name: pool.name(j).to_string(),
            errors: errors[j.index()].clone(),
            left_out: out.then(|| format!("{streak} failed calls in a row")),
            ..ModelReport::default()
        }
    });
    let unsettled = state.total.saturating_sub(state.settled);
    let judge_parse_failures = *ctx
        .judge_parse_failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Ok(Report {
        models: reports,
        lines_written: out.lines_written,
        already_done,
        spent_usd: spend.spent,
        judge_usd: spend.judge,
        judge_parse_failures,
        stopped,
        unsettled,
        judge,
    })
}

fn snapshot(ctx: &Ctx, state: &Progress) -> Progress {
    Progress {
        spent_usd: ctx
            .spend
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spent,
        ..*state
    }
}

/// One probe on one model: the answer, graded.
async fn profile_pair(ctx: &Ctx, probe: &Probe, model: ModelId) -> PairEnd {
    // An answer nobody can grade is not asked for.
    if probe.reference.is_none() && judge_left_out(ctx) {
        return PairEnd::JudgeMissing;
    }
    let Ok(permit) = ctx.permits[model.index()].acquire().await else {
        return PairEnd::Failed;
    };
    let mut messages = Vec::with_capacity(2);
    if let (true, Some(r)) = (ctx.opts.instruct, &probe.reference) {
        messages.push(json!({"role": "system", "content": grade::format_instruction(r)}));
    }
    messages.push(json!({"role": "user", "content": probe.prompt}));
    let answer = match call(ctx, model, messages, false).await {
        Ok(a) => a,
        Err(end) => return end,
    };
    drop(permit);
    let (input_tokens, output_tokens) = answer.usage.unwrap_or_else(|| {
        (
            u64::from(estimate_tokens(&probe.prompt)),
            u64::from(estimate_tokens(&answer.text)),
        )
    });
    let cost = ctx.pool.table.get(model).cost(input_tokens, output_tokens);
    let mut outcome = json!({
        "cost_usd": cost,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    });
    match &probe.reference {
        Some(reference) => {
            let g = grade::grade(reference, &answer.text);
            outcome["score"] = json!(g.score);
            outcome["answer"] = json!(g.answer);
        }
        None => {
            let Some(judge) = ctx.opts.judge else {
                return PairEnd::JudgeMissing;
            };
            let Ok(_judge_permit) = ctx.permits[judge.index()].acquire().await else {
                return PairEnd::JudgeMissing;
            };
            let mut rating = None;
            for _ in 0..3 {
                if judge_left_out(ctx) {
                    break;
                }
                let messages = vec![
                    json!({"role": "system", "content": grade::JUDGE_RUBRIC}),
                    json!({"role": "user", "content": grade::judge_prompt(&probe.prompt, &answer.text)}),
                ];
                let verdict = call(ctx, judge, messages, true).await;
                judge_outcome(ctx, verdict.is_ok());
                match verdict {
                    Ok(verdict) => {
                        rating = grade::parse_rating(&verdict.text);
                        if rating.is_some() {
                            break;
                        }
                        *ctx.judge_parse_failures
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) += 1;
                    }
                    Err(PairEnd::OverBudget) => return PairEnd::OverBudget,
                    Err(_) => break,
                }
            }
            let Some(score) = rating else {
                return PairEnd::JudgeMissing;
            };
            outcome["score"] = json!(score);
        }
    }
    let Value::Object(outcome) = outcome else {
        return PairEnd::Failed;
    };
    PairEnd::Answered {
        outcome,
        cost,
        estimated_usage: answer.usage.is_none(),
    }
}

/// Whether the judge was left out (too many failed calls in a row).
fn judge_left_out(ctx: &Ctx) -> bool {
    ctx.judge_streak
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .1
}

/// Counts a judge call's outcome toward leaving the judge out.
fn judge_outcome(ctx: &Ctx, ok: bool) {
    let mut s = ctx
        .judge_streak
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    s.0 = if ok { 0 } else { s.0 + 1 };
    if s.0 >= ctx.opts.give_up_after {
        s.1 = true;
    }
}

/// A model's answer.
struct Answered {
    text: String,
    /// (prompt, completion) tokens, when the upstream reported them.
    usage: Option<(u64, u64)>,
}

/// Calls `model` with `messages` (retrying as the module docs say); `judge` books the
/// spend as the judge's.
async fn call(
    ctx: &Ctx,
    model: ModelId,
    messages: Vec<Value>,
    judge: bool,
) -> Result<Answered, PairEnd> {
    let up = ctx.pool.table.get(model);
    let body = json!({
        "model": up.name,
        "messages": messages,
        "max_tokens": ctx.opts.max_tokens,
        "temperature": 0,
    });
    let bytes = Bytes::from(body.to_string());
    let Ok(request) = crate::request::parse(&bytes, &HeaderMap::new(), true) else {
        return Err(PairEnd::Failed);
    };
    let count = |kind: String| {
        *ctx.errors.lock().unwrap_or_else(PoisonError::into_inner)[model.index()]
            .entry(kind)
            .or_default() += 1;
    };
    for attempt in 0..=ctx.opts.retries {
        let reserved = budget::worst_case(&request, ctx.opts.max_tokens, |i, o| up.cost(i, o));
        let Some(reservation) = Reservation::take(ctx, reserved, judge).await else {
            return Err(PairEnd::OverBudget);
        };
        // Several deployments take turns.
        let dep = &up.deployments[attempt as usize % up.deployments.len()];
        let id = format!("profile-{}", rand::thread_rng().gen::<u64>());
        let mut info = AttemptInfo::default();
        let result = dep
            .provider
            .call(
                Call {
                    request: &request,
                    model: &up.name,
                    upstream_model: &dep.upstream_model,
                    timeout: ctx.pool.timeout,
                    id: &id,
                    forward: &[],
                },
                &mut info,
            )
            .await;
        let usage = match &result {
            Ok(Answer::Full { body, .. }) => crate::pipeline::stream::parse_usage(body),
            _ => None,
        };
        reservation.settle(budget::charge(
            &result,
            usage.map(|(p, c)| up.cost(p, c)),
            reserved,
        ));
        let retry = match result {
            Ok(Answer::Full { status, body, .. }) if status.is_success() => {
                // No text (a refusal, a filtered or a tool-call answer): asking again at
                // temperature 0 would pay for the same.
                match crate::pipeline::cascade::content(&body) {
                    Some(text) => return Ok(Answered { text, usage }),
                    None => {
                        count("no_content".into());
                        false
                    }
                }
            }
            Ok(Answer::Full { status, .. }) | Ok(Answer::Stream { status, .. }) => {
                count(format!("http_{}", status.as_u16()));
                false
            }
            Err(f) => {
                count(f.outcome.name().to_string());
                matches!(
                    f.outcome,
                    AttemptOutcome::Http429
                        | AttemptOutcome::Http5xx
                        | AttemptOutcome::Timeout
                        | AttemptOutcome::Connect
                        | AttemptOutcome::Body
                )
            }
        };
        if !retry || attempt == ctx.opts.retries {
            break;
        }
        tokio::time::sleep(backoff(ctx.opts.backoff, attempt, retry_after(&info))).await;
    }
    Err(PairEnd::Failed)
}

/// The wait before retry `attempt + 1`: the upstream's `retry-after` (at most a minute),
/// else `base` doubled per attempt (at most 8 s) with up to 50% jitter.
fn backoff(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(60));
    }
    let exp = base
        .saturating_mul(1u32 << attempt.min(16))
        .min(Duration::from_secs(8));
    exp.mul_f64(1.0 + 0.5 * rand::thread_rng().gen::<f64>())
}

/// `retry-after` in seconds, when the upstream sent one.
fn retry_after(info: &AttemptInfo) -> Option<Duration> {
    let secs: f64 = info.retry_after()?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A reservation under `max_usd`, settled exactly once: by [`Reservation::settle`], or at
/// the reserved amount when dropped unsettled (its call aborted or panicked), so that
/// no reservation is ever held forever.
struct Reservation<'a> {
    ctx: &'a Ctx,
    amount: f64,
    judge: bool,
    settled: bool,
}

impl<'a> Reservation<'a> {
    /// Reserves `amount`. When it does not fit while other calls hold reservations,
    /// waits for them to settle (they usually cost far less than reserved); `None` (and
    /// the budget marked exhausted) when it does not fit with none held.
    async fn take(ctx: &'a Ctx, amount: f64, judge: bool) -> Option<Reservation<'a>> {
        loop {
            // Created before the check: a settlement in between still wakes it.
            let settled = ctx.settled.notified();
            {
                let mut s = ctx.spend.lock().unwrap_or_else(PoisonError::into_inner);
                let fits = ctx
                    .opts
                    .max_usd
                    .is_none_or(|cap| s.spent + s.reserved + amount <= cap);
                if fits && !s.exhausted {
                    s.reserved += amount;
                    s.held += 1;
                    return Some(Reservation {
                        ctx,
                        amount,
                        judge,
                        settled: false,
                    });
                }
                if s.exhausted || s.held == 0 {
                    s.exhausted = true;
                    return None;
                }
            }
            settled.await;
        }
    }

    /// Settles at what the call cost.
    fn settle(mut self, charged: f64) {
        self.settled = true;
        self.release(charged);
    }

    fn release(&self, charged: f64) {
        let mut s = self
            .ctx
            .spend
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.held = s.held.saturating_sub(1);
        s.reserved = if s.held == 0 {
            0.0
        } else {
            (s.reserved - self.amount).max(0.0)
        };
        s.spent += charged;
        if self.judge {
            s.judge += charged;
        }
        drop(s);
        self.ctx.settled.notify_waiters();
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.release(self.amount);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after() {
        let base = Duration::from_millis(250);
        for attempt in 0..3 {
            let d = backoff(base, attempt, None);
            let lo = base * (1 << attempt);
            assert!(d >= lo && d <= lo.mul_f64(1.5), "{attempt}: {d:?}");
        }
        assert!(backoff(base, 30, None) <= Duration::from_secs(12));
        assert_eq!(
            backoff(base, 0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff(base, 0, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_report_is_complete_only_with_every_pair_answered() {
        let mut r = Report {
            models: vec![ModelReport::default()],
            ..Report::default()
        };
        assert!(r.complete());
        r.models[0].failed = 1;
        assert!(!r.complete());
        r.models[0].failed = 0;
        r.unsettled = 2;
        assert!(!r.complete());
    }
}
