//! `routewise simulate`: a discrete-event simulation of the gateway's dispatch under load,
//! to compare greedy routing with balanced assignment on the same arrival trace.
//!
//! * **Traffic:** Poisson arrivals at `load` times the best model's capacity (the best
//!   mean score on train; its capacity is its deployments' concurrency over its mean
//!   service time). Each arrival is a test prompt, cycling through a seeded permutation of
//!   the test split so that every load sees the prompts in the same proportions.
//! * **Service:** each model has deployments, each serving at most `max_concurrency`
//!   requests at once; the rest wait in its queue. A request's service time is
//!   `ttft_ms + ms_per_token * output tokens` (the model's real output tokens on that
//!   prompt), times a seeded log-normal jitter that is the same in every mode. A request
//!   that waited longer than the timeout is dropped (no answer: quality 0, and an SLO
//!   violation).
//! * **Quality and cost** are the real test score and cost of the model that answered.
//! * **Modes**, all from the same router (fitted on train) and policy:
//!   * `greedy`: the router's choice, queued there when it is busy;
//!   * `greedy-spill`: the router's ranking, first model with a free slot, else queued at
//!     the choice;
//!   * `balanced-sinkhorn` / `balanced-exact`: when the choice has a free slot and nothing
//!     is pending, it goes straight there (no window). Otherwise the request joins a batch,
//!     assigned when the window closes or the batch is full by
//!     [`routewise_router::dispatch`]: utility `predicted score - lambda * cost - mu *
//!     expected latency`, capacity the free slots plus the queue places after whose
//!     expected wait the model's p99 service time still ends within [`SLO_HEADROOM`] of
//!     the SLO. A queue place is priced ([`queue_place_price`]: small while the queue is
//!     short, unbounded as it fills), so under overload the queue settles where the price
//!     equals the gain of the marginal request, and the requests that spill are those that
//!     lose least by it, not those that happen to arrive when the queue is full. A request
//!     with no place is queued where the expected wait is shortest.
//! * `validation`: fit on four fifths of train and simulate on the other fifth, to choose
//!   settings (`queue_price`) without looking at the test split.
//!
//! Pure: no I/O, no clock; the caller writes the report.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_data::{Dataset, Record};
use routewise_features::FeaturizerKind;
use routewise_router::dispatch::{queue_place_price, Assigner, AssignerKind};
use routewise_router::RouterKind;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// A deployment's default concurrency.
pub const DEFAULT_MAX_CONCURRENCY: usize = 8;
/// The default time to first token.
pub const DEFAULT_TTFT_MS: f64 = 300.0;
/// The default time per output token.
pub const DEFAULT_MS_PER_TOKEN: f64 = 20.0;
/// The default SLO is this multiple of the unloaded greedy p99 latency.
pub const DEFAULT_SLO_FACTOR: f64 = 2.0;
/// A queue place counts as capacity when its expected end is within this share of the SLO.
pub const SLO_HEADROOM: f64 = 0.8;
/// The spread (sigma of the log) of the service-time jitter.
const JITTER_SIGMA: f64 = 0.2;

/// One model's deployments in the simulation (`--deployments FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub model: String,
    #[serde(default = "one")]
    pub replicas: usize,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    #[serde(default = "default_ttft")]
    pub ttft_ms: f64,
    #[serde(default = "default_ms_per_token")]
    pub ms_per_token: f64,
}

impl DeploymentSpec {
    /// One deployment of `model` with the defaults a file's entry gets.
    pub fn with_defaults(model: &str) -> DeploymentSpec {
        DeploymentSpec {
            model: model.to_string(),
            replicas: one(),
            max_concurrency: default_concurrency(),
            ttft_ms: default_ttft(),
            ms_per_token: default_ms_per_token(),
        }
    }
}

fn one() -> usize {
    1
}
fn default_concurrency() -> usize {
    DEFAULT_MAX_CONCURRENCY
}
fn default_ttft() -> f64 {
    DEFAULT_TTFT_MS
}
fn default_ms_per_token() -> f64 {
    DEFAULT_MS_PER_TOKEN
}

/// The `--deployments` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsFile {
    pub deployments: Vec<DeploymentSpec>,
}

/// How requests are dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Greedy,
    GreedySpill,
    Balanced(AssignerKind),
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Greedy,
        Mode::GreedySpill,
        Mode::Balanced(AssignerKind::Sinkhorn),
        Mode::Balanced(AssignerKind::Exact),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Greedy => "greedy",
            Mode::GreedySpill => "greedy-spill",
            Mode::Balanced(AssignerKind::Sinkhorn) => "balanced-sinkhorn",
            Mode::Balanced(AssignerKind::Exact) => "balanced-exact",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub router: RouterKind,
    pub featurizer: FeaturizerKind,
    pub seed: u64,
    /// Offered loads, as multiples of the best model's capacity.
    pub loads: Vec<f64>,
    pub duration_s: f64,
    /// `None`: [`DEFAULT_SLO_FACTOR`] times the unloaded greedy p99.
    pub slo_ms: Option<f64>,
    pub lambda: f64,
    /// Weight of the expected latency (seconds) in the balanced utility.
    pub mu: f64,
    /// How long a batch may wait for more requests.
    pub window_ms: f64,
    pub max_batch: usize,
    /// A request that waited longer is dropped.
    pub timeout_ms: f64,
    /// Models not listed get one default deployment.
    pub deployments: Vec<DeploymentSpec>,
    /// Price scale of a queue place in the balanced modes (0: queue places are free).
    pub queue_price: f64,
    /// Fit on four fifths of train and simulate on the other fifth (not on test).
    pub validation: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            router: RouterKind::Knn,
            featurizer: FeaturizerKind::StaticMini,
            seed: 0,
            loads: vec![0.5, 1.0, 2.0, 3.0],
            duration_s: 600.0,
            slo_ms: None,
            lambda: 0.0,
            mu: 0.0,
            window_ms: 20.0,
            max_batch: 64,
            timeout_ms: 60_000.0,
            deployments: Vec::new(),
            queue_price: routewise_router::dispatch::DEFAULT_QUEUE_PRICE,
            validation: false,
        }
    }
}

/// One mode at one load.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ModeResult {
    /// Mean real score over every arrival (a dropped request scores 0).
    pub quality: f64,
    /// Total real cost of the answers.
    pub cost_usd: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers slower than the SLO, plus drops.
    pub slo_violations: usize,
    pub drops: usize,
    /// Answers by a model other than the router's choice.
    pub spills: usize,
    /// Batches assigned by the solver (balanced modes).
    pub batches: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub load: f64,
    pub rate_per_s: f64,
    pub requests: usize,
    /// The router's choices on this trace with no contention.
    pub unloaded_greedy_quality: f64,
    pub modes: std::collections::BTreeMap<String, ModeResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentReport {
    pub model: String,
    pub replicas: usize,
    pub max_concurrency: usize,
    pub ttft_ms: f64,
    pub ms_per_token: f64,
    /// Mean service time over the test prompts.
    pub mean_service_ms: f64,
}

impl DeploymentReport {
    /// Requests per second its slots serve at its mean service time.
    pub fn capacity_per_s(&self) -> f64 {
        capacity_per_s(self.replicas, self.max_concurrency, self.mean_service_ms)
    }
}

/// Requests per second `replicas x max_concurrency` slots serve at a mean service time of
/// `mean_service_ms` (0 when that is not positive).
fn capacity_per_s(replicas: usize, max_concurrency: usize, mean_service_ms: f64) -> f64 {
    if mean_service_ms > 0.0 {
        (replicas * max_concurrency) as f64 * 1000.0 / mean_service_ms
    } else {
        0.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub router: String,
    pub lambda: f64,
    pub mu: f64,
    pub slo_ms: f64,
    pub duration_s: f64,
    pub window_ms: f64,
    /// The price scale of a queue place in the balanced modes.
    pub queue_price: f64,
    /// Simulated on a held-out fifth of train (`--validation`), not on test.
    pub validation: bool,
    pub best_model: String,
    /// The best model's capacity in requests per second.
    pub best_capacity_per_s: f64,
    /// The router's choices over the test prompts, unloaded.
    pub unloaded_greedy_quality: f64,
    /// The share of unloaded greedy's choices that go to each model (largest first).
    pub greedy_shares: Vec<(String, f64)>,
    pub deployments: Vec<DeploymentReport>,
    pub loads: Vec<LoadResult>,
}

/// The test prompts' predictions and outcomes, and the pool's deployments.
struct World {
    nm: usize,
    /// Per prompt: models by descending `score - lambda * cost` (the router's ranking).
    ranking: Vec<Vec<usize>>,
    /// Per prompt and model: predicted utility without latency.
    utility: Vec<f64>,
    score: Vec<f64>,
    cost: Vec<f64>,
    /// Per prompt and model: service time, ms.
    service: Vec<f64>,
    /// Deployment -> model.
    dep_model: Vec<usize>,
    dep_cap: Vec<usize>,
    /// Per model: mean service time, ms.
    mean_service: Vec<f64>,
    /// Per model: p99 service time, ms.
    p99_service: Vec<f64>,
}

impl World {
    fn choice(&self, p: usize) -> usize {
        self.ranking[p][0]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Ends first at equal times, so that freed slots are seen by arrivals.
    Done(usize),
    Flush,
    Arrival(usize),
}

/// One mode's run over one trace.
struct Sim<'a> {
    w: &'a World,
    opts: &'a SimOptions,
    slo_ms: f64,
    mode: Mode,
    assigner: Option<Box<dyn Assigner>>,
    /// Arrival time (µs) and prompt of each request.
    trace: &'a [(u64, usize)],
    /// (time, event, sequence): at equal times the event order decides (ends first).
    events: BinaryHeap<Reverse<(u64, Event, u64)>>,
    seq: u64,
    busy: Vec<usize>,
    queue: Vec<VecDeque<usize>>,
    pending: Vec<usize>,
    flush_at: Option<u64>,
    /// Per request: (model, end µs); `None`: not served (yet), or dropped.
    served: Vec<Option<(usize, u64)>>,
    dropped: Vec<bool>,
    /// Batches assigned by the solver.
    batches: usize,
}

impl<'a> Sim<'a> {
    fn new(
        w: &'a World,
        opts: &'a SimOptions,
        slo_ms: f64,
        mode: Mode,
        trace: &'a [(u64, usize)],
    ) -> Sim<'a> {
        let nd = w.dep_model.len();
        Sim {
            w,
            opts,
            slo_ms,
            mode,
            assigner: match mode {
                Mode::Balanced(kind) => Some(kind.build()),
                _ => None,
            },
            trace,
            events: BinaryHeap::new(),
            seq: 0,
            busy: vec![0; nd],
            queue: vec![VecDeque::new(); nd],
            pending: Vec::new(),
            flush_at: None,
            served: vec![None; trace.len()],
            dropped: vec![false; trace.len()],
            batches: 0,
        }
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.push(event_key(at, e, self.seq));
    }

    fn free(&self, d: usize) -> usize {
        self.w.dep_cap[d].saturating_sub(self.busy[d])
    }

    /// Expected wait (ms) for one more request at `d`.
    fn expected_wait(&self, d: usize) -> f64 {
        let ahead = (self.busy[d] + self.queue[d].len() + 1).saturating_sub(self.w.dep_cap[d]);
        ahead as f64 * self.w.mean_service[self.w.dep_model[d]] / self.w.dep_cap[d].max(1) as f64
    }

    /// The deployment of model `m` with the most room (least expected wait).
    fn best_deployment(&self, m: usize) -> Option<usize> {
        (0..self.w.dep_model.len())
            .filter(|&d| self.w.dep_model[d] == m)
            .min_by(|&a, &b| self.expected_wait(a).total_cmp(&self.expected_wait(b)))
    }

    fn start(&mut self, now: u64, r: usize, d: usize) {
        let p = self.trace[r].1;
        let m = self.w.dep_model[d];
        self.busy[d] += 1;
        let end = now + (self.w.service[p * self.w.nm + m] * 1000.0) as u64;
        self.served[r] = Some((m, end));
        self.push(end, Event::Done(d));
    }

    /// Starts `r` at `d` now, or queues it there.
    fn place(&mut self, now: u64, r: usize, d: usize) {
        if self.free(d) > 0 {
            self.start(now, r, d);
        } else {
            self.queue[d].push_back(r);
        }
    }

    fn arrive(&mut self, now: u64, r: usize) {
        let p = self.trace[r].1;
        let first = self.w.choice(p);
        match self.mode {
            Mode::Greedy => {
                if let Some(d) = self.best_deployment(first) {
                    self.place(now, r, d);
                }
            }
            Mode::GreedySpill => {
                let free = self.w.ranking[p]
                    .iter()
                    .find_map(|&m| self.best_deployment(m).filter(|&d| self.free(d) > 0));
                match free {
                    Some(d) => self.start(now, r, d),
                    None => {
                        if let Some(d) = self.best_deployment(first) {
                            self.queue[d].push_back(r);
                        }
                    }
                }
            }
            Mode::Balanced(_) => {
                let direct = self.best_deployment(first).filter(|&d| self.free(d) > 0);
                match direct {
                    Some(d) if self.pending.is_empty() => self.start(now, r, d),
                    _ => {
                        self.pending.push(r);
                        if self.pending.len() >= self.opts.max_batch.max(1) {
                            self.flush(now);
                        } else if self.flush_at.is_none() {
                            let at = now + (self.opts.window_ms.max(0.0) * 1000.0) as u64;
                            self.flush_at = Some(at);
                            self.push(at, Event::Flush);
                        }
                    }
                }
            }
        }
    }

    /// Assigns the pending batch.
    fn flush(&mut self, now: u64) {
        self.flush_at = None;
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let nd = self.w.dep_model.len();
        let budget_ms = SLO_HEADROOM * self.slo_ms;
        // Columns: each deployment's free slots, then its queue places (priced).
        let mut capacity = vec![0usize; 2 * nd];
        let mut price = vec![0.0; nd];
        let mut wait = vec![0.0; nd];
        for (d, wt) in wait.iter_mut().enumerate() {
            let m = self.w.dep_model[d];
            let per_place = self.w.mean_service[m] / self.w.dep_cap[d].max(1) as f64;
            // Queue places after whose expected wait even a slow (p99) answer ends
            // within the headroom.
            let places = if per_place > 0.0 {
                ((budget_ms - self.w.p99_service[m]) / per_place)
                    .floor()
                    .max(0.0) as usize
            } else {
                usize::MAX / 2
            };
            let queued = self.queue[d].len();
            capacity[d] = self.free(d);
            capacity[nd + d] = places.saturating_sub(queued);
            price[d] = queue_place_price(self.opts.queue_price, queued, places, batch.len())
                .unwrap_or(f64::INFINITY);
            *wt = self.expected_wait(d);
        }
        let mut utility = vec![f64::NEG_INFINITY; batch.len() * 2 * nd];
        for (i, &r) in batch.iter().enumerate() {
            let p = self.trace[r].1;
            for d in 0..nd {
                let m = self.w.dep_model[d];
                let latency_s = (wait[d] + self.w.mean_service[m]) / 1000.0;
                let u = self.w.utility[p * self.w.nm + m] - self.opts.mu * latency_s;
                utility[i * 2 * nd + d] = u;
                utility[i * 2 * nd + nd + d] = u - price[d];
            }
        }
        let mut out = Vec::new();
        if let Some(a) = self.assigner.as_mut() {
            a.assign(&utility, batch.len(), &capacity, &mut out);
        }
        self.batches += 1;
        for (i, &r) in batch.iter().enumerate() {
            let d = match out.get(i).copied().flatten() {
                Some(c) => c % nd,
                // No place within the SLO: the shortest expected wait.
                None => (0..nd)
                    .min_by(|&a, &b| self.expected_wait(a).total_cmp(&self.expected_wait(b)))
                    .unwrap_or(0),
            };
            self.place(now, r, d);
        }
    }

    fn done(&mut self, now: u64, d: usize) {
        self.busy[d] = self.busy[d].saturating_sub(1);
        let timeout = (self.opts.timeout_ms * 1000.0) as u64;
        while let Some(r) = self.queue[d].pop_front() {
            if now.saturating_sub(self.trace[r].0) > timeout {
                self.dropped[r] = true;
                continue;
            }
            self.start(now, r, d);
            break;
        }
    }

    fn run(mut self) -> ModeResult {
        self.play();
        self.summary()
    }

    /// Plays the trace to its end.
    fn play(&mut self) {
        for (r, &(at, _)) in self.trace.iter().enumerate() {
            self.push(at, Event::Arrival(r));
        }
        while let Some(Reverse((now, e, _))) = self.events.pop() {
            match e {
                Event::Arrival(r) => self.arrive(now, r),
                Event::Done(d) => self.done(now, d),
                Event::Flush => {
                    if self.flush_at == Some(now) {
                        self.flush(now);
                    }
                }
            }
        }
    }

    fn summary(&self) -> ModeResult {
        let n = self.trace.len();
        let mut latencies = Vec::with_capacity(n);
        let (mut quality, mut cost, mut spills) = (0.0, 0.0, 0);
        for (r, &(at, p)) in self.trace.iter().enumerate() {
            // Dropped requests were never served.
            let Some((m, end)) = self.served[r] else {
                continue;
            };
            quality += self.w.score[p * self.w.nm + m];
            cost += self.w.cost[p * self.w.nm + m];
            if m != self.w.choice(p) {
                spills += 1;
            }
            latencies.push((end - at) as f64 / 1000.0);
        }
        latencies.sort_unstable_by(f64::total_cmp);
        let drops = self.dropped.iter().filter(|&&d| d).count();
        let over = latencies.iter().filter(|&&l| l > self.slo_ms).count();
        ModeResult {
            quality: quality / n.max(1) as f64,
            cost_usd: cost,
            p50_ms: quantile(&latencies, 0.5),
            p99_ms: quantile(&latencies, 0.99),
            slo_violations: over + drops,
            drops,
            spills,
            batches: self.batches,
        }
    }
}

/// An event's place in the queue: by time, then by kind (ends first), then by push order.
fn event_key(at: u64, e: Event, seq: u64) -> Reverse<(u64, Event, u64)> {
    Reverse((at, e, seq))
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// A seeded standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Poisson arrivals at `rate` per second over `duration_s`, each a prompt from `order`
/// (cycled).
fn trace(rate: f64, duration_s: f64, order: &[usize], seed: u64) -> Vec<(u64, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut t = 0.0;
    if rate <= 0.0 || order.is_empty() {
        return out;
    }
    loop {
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        t += -u.ln() / rate;
        if t >= duration_s {
            break;
        }
        out.push(((t * 1e6) as u64, order[out.len() % order.len()]));
    }
    out
}

/// Runs the simulation.
pub fn simulate(ds: &Dataset, opts: &SimOptions) -> Result<SimReport, EvalError> {
    let nm = ds.models.len();
    for spec in &opts.deployments {
        if !ds.models.contains(&spec.model) {
            return Err(EvalError::Split(format!(
                "deployments: model {} is not in the dataset ({})",
                spec.model,
                ds.models.join(", ")
            )));
        }
        if spec.replicas == 0 || spec.max_concurrency == 0 {
            return Err(EvalError::Split(format!(
                "deployments: {} needs replicas and max_concurrency >= 1",
                spec.model
            )));
        }
        let valid = spec.ttft_ms >= 0.0
            && spec.ms_per_token >= 0.0
            && spec.ttft_ms + spec.ms_per_token > 0.0;
        if !valid {
            return Err(EvalError::Split(format!(
                "deployments: {} needs ttft_ms and ms_per_token >= 0, not both 0",
                spec.model
            )));
        }
    }
    let fitted = if opts.validation {
        crate::fitted::Fitted::new_on_validation(ds, opts.router, opts.featurizer, opts.seed)?
    } else {
        crate::fitted::Fitted::new(ds, opts.router, opts.featurizer, opts.seed)?
    };
    let test: Vec<&Record> = crate::fitted::complete_rows(&fitted.test, nm)
        .into_iter()
        .map(|i| fitted.test[i])
        .collect();
    if test.is_empty() {
        return Err(EvalError::Split(
            "simulate needs test prompts with every model's outcome".into(),
        ));
    }
    let (pred, pred_cost) = fitted.predict(&test);

    // Deployments: as listed, else one default deployment per model.
    let spec_of = |m: usize| -> DeploymentSpec {
        opts.deployments
            .iter()
            .find(|s| s.model == ds.models[m])
            .cloned()
            .unwrap_or_else(|| DeploymentSpec::with_defaults(&ds.models[m]))
    };
    let specs: Vec<DeploymentSpec> = (0..nm).map(spec_of).collect();
    let mut dep_model = Vec::new();
    let mut dep_cap = Vec::new();
    for (m, s) in specs.iter().enumerate() {
        for _ in 0..s.replicas {
            dep_model.push(m);
            dep_cap.push(s.max_concurrency);
        }
    }

    // Per prompt and model: outcomes, service time (jitter seeded per pair).
    let np = test.len();
    let mut score = vec![0.0; np * nm];
    let mut cost = vec![0.0; np * nm];
    let mut service = vec![0.0; np * nm];
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5e41);
    for (p, r) in test.iter().enumerate() {
        for m in 0..nm {
            let o = r.outcomes[m].as_ref();
            score[p * nm + m] = o.map_or(0.0, |o| o.score);
            cost[p * nm + m] = o.map_or(0.0, |o| o.cost_usd);
            let tokens = o.map_or(0, |o| o.output_tokens) as f64;
            let jitter = (JITTER_SIGMA * normal(&mut rng)).exp();
            service[p * nm + m] = (specs[m].ttft_ms + specs[m].ms_per_token * tokens) * jitter;
        }
    }
    let mean_service: Vec<f64> = (0..nm)
        .map(|m| (0..np).map(|p| service[p * nm + m]).sum::<f64>() / np as f64)
        .collect();
    let p99_service: Vec<f64> = (0..nm)
        .map(|m| {
            let mut v: Vec<f64> = (0..np).map(|p| service[p * nm + m]).collect();
            v.sort_unstable_by(f64::total_cmp);
            quantile(&v, 0.99)
        })
        .collect();
    let mut utility = vec![0.0; np * nm];
    let mut ranking = Vec::with_capacity(np);
    for p in 0..np {
        for m in 0..nm {
            utility[p * nm + m] = pred[p * nm + m] - opts.lambda * pred_cost[p * nm + m];
        }
        // The gateway's ranking.
        let mut order = Vec::with_capacity(nm);
        routewise_router::Policy::Lambda(opts.lambda).rank_into(
            &pred[p * nm..(p + 1) * nm],
            &pred_cost[p * nm..(p + 1) * nm],
            &mut order,
        );
        ranking.push(order);
    }
    let w = World {
        nm,
        ranking,
        utility,
        score,
        cost,
        service,
        dep_model,
        dep_cap,
        mean_service,
        p99_service,
    };

    // The best model and its capacity.
    let best = fitted.best_on_train();
    let best_capacity = capacity_per_s(
        specs[best].replicas,
        specs[best].max_concurrency,
        w.mean_service[best],
    );
    // Unloaded greedy: its quality, its latency (the service time of each choice).
    let mut unloaded: Vec<f64> = (0..np).map(|p| w.service[p * nm + w.choice(p)]).collect();
    unloaded.sort_unstable_by(f64::total_cmp);
    let slo_ms = opts
        .slo_ms
        .unwrap_or(DEFAULT_SLO_FACTOR * quantile(&unloaded, 0.99));
    let unloaded_quality = (0..np).map(|p| w.score[p * nm + w.choice(p)]).sum::<f64>() / np as f64;
    let mut shares = vec![0usize; nm];
    for p in 0..np {
        shares[w.choice(p)] += 1;
    }
    let mut greedy_shares: Vec<(String, f64)> = shares
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(m, &c)| (ds.models[m].clone(), c as f64 / np as f64))
        .collect();
    greedy_shares.sort_by(|a, b| b.1.total_cmp(&a.1));

    let mut order: Vec<usize> = (0..np).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(opts.seed));
    let mut loads = Vec::with_capacity(opts.loads.len());
    for &load in &opts.loads {
        let rate = load * best_capacity;
        let tr = trace(
            rate,
            opts.duration_s,
            &order,
            // Seeded by the load itself: a load gets the same trace whatever else is listed.
            opts.seed ^ load.to_bits(),
        );
        let unloaded_greedy_quality = tr
            .iter()
            .map(|&(_, p)| w.score[p * nm + w.choice(p)])
            .sum::<f64>()
            / tr.len().max(1) as f64;
        let mut modes = std::collections::BTreeMap::new();
        for mode in Mode::ALL {
            let sim = Sim::new(&w, opts, slo_ms, mode, &tr);
            modes.insert(mode.name().to_string(), sim.run());
        }
        loads.push(LoadResult {
            load,
            rate_per_s: rate,
            requests: tr.len(),
            unloaded_greedy_quality,
            modes,
        });
    }
    Ok(SimReport {
        router: opts.router.to_string(),
        lambda: opts.lambda,
        mu: opts.mu,
        slo_ms,
        duration_s: opts.duration_s,
        window_ms: opts.window_ms,
        queue_price: opts.queue_price,
        validation: opts.validation,
        best_model: ds.models[best].clone(),
        best_capacity_per_s: best_capacity,
        unloaded_greedy_quality: unloaded_quality,
        greedy_shares,
        deployments: specs
            .iter()
            .enumerate()
            .map(|(m, s)| DeploymentReport {
                model: s.model.clone(),
                replicas: s.replicas,
                max_concurrency: s.max_concurrency,
                ttft_ms: s.ttft_ms,
                ms_per_token: s.ms_per_token,
                mean_service_ms: w.mean_service[m],
            })
            .collect(),
        loads,
    })
}

/// The report as an SVG: quality (left) and p99 latency (right, with the SLO) against the
/// offered load, one line per mode.
pub fn render_svg(r: &SimReport) -> Result<String, String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let loads: Vec<f64> = r.loads.iter().map(|l| l.load).collect();
    let x_hi = loads.iter().copied().fold(0.0, f64::max) * 1.05 + 1e-9;
    let series = |f: fn(&ModeResult) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        Mode::ALL
            .iter()
            .map(|m| {
                let pts = r
                    .loads
                    .iter()
                    .filter_map(|l| l.modes.get(m.name()).map(|x| (l.load, f(x))))
                    .collect();
                (m.name().to_string(), pts)
            })
            .collect()
    };
    let quality = series(|m| m.quality);
    let p99 = series(|m| m.p99_ms);
    let range = |s: &[(String, Vec<(f64, f64)>)], extra: f64| {
        let (lo, hi) = s
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| q.1))
            .chain(std::iter::once(extra))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
                (lo.min(y), hi.max(y))
            });
        let pad = ((hi - lo) * 0.08).max(1e-6);
        (lo - pad)..(hi + pad)
    };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1200, 550)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root
            .titled(
                &format!(
                    "dispatch under load: router {}, SLO {:.0} ms, best model {} ({:.2} req/s)",
                    r.router, r.slo_ms, r.best_model, r.best_capacity_per_s
                ),
                ("sans-serif", 18),
            )
            .map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(600);
        let panels = [
            (
                left,
                "quality (mean real score)",
                &quality,
                r.unloaded_greedy_quality,
                "unloaded greedy",
            ),
            (right, "p99 latency (ms)", &p99, r.slo_ms, "SLO"),
        ];
        for (area, y_desc, lines, reference, ref_name) in panels {
            let mut chart = ChartBuilder::on(&area)
                .margin(15)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..x_hi, range(lines, reference))
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("offered load (x the best model's capacity)")
                .y_desc(y_desc)
                .draw()
                .map_err(|e| err(&e))?;
            for (k, (name, pts)) in lines.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, reference), (x_hi, reference)],
                    BLACK.mix(0.5).stroke_width(1),
                )))
                .map_err(|e| err(&e))?
                .label(ref_name)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_trace_has_the_rate_and_cycles_the_prompts() {
        let order = [3, 1, 2];
        let t = trace(50.0, 100.0, &order, 7);
        let n = t.len() as f64;
        assert!((n - 5000.0).abs() < 5.0 * 5000f64.sqrt(), "{n}");
        assert!(t.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(t[0].1, 3);
        assert_eq!(t[4].1, 1);
        assert!(t.last().unwrap().0 < 100_000_000);
    }

    #[test]
    fn regression_at_equal_times_ends_come_before_arrivals() {
        // Pushed first, popped last: the event kind decides before the push order.
        let mut heap = BinaryHeap::new();
        heap.push(event_key(5, Event::Arrival(0), 1));
        heap.push(event_key(5, Event::Flush, 2));
        heap.push(event_key(5, Event::Done(3), 3));
        let order: Vec<Event> = std::iter::from_fn(|| heap.pop().map(|Reverse(k)| k.1)).collect();
        assert_eq!(order, [Event::Done(3), Event::Flush, Event::Arrival(0)]);
    }

    /// Two models with one slot each and 1 s answers; prompt 0 gains 0.8 on model 0 over
    /// model 1, prompt 1 gains 0.01, prompt 2 only fills model 0's slot.
    fn two_model_world() -> World {
        World {
            nm: 2,
            ranking: vec![vec![0, 1]; 3],
            utility: vec![0.9, 0.1, 0.51, 0.5, 0.9, 0.1],
            score: vec![1.0, 0.0, 1.0, 1.0, 1.0, 0.0],
            cost: vec![0.0; 6],
            service: vec![1000.0; 6],
            dep_model: vec![0, 1],
            dep_cap: vec![1, 1],
            mean_service: vec![1000.0; 2],
            p99_service: vec![1000.0; 2],
        }
    }

    /// Which model answered each request of the trace: prompt 2 takes model 0's slot, then
    /// prompts 1 and 0 arrive while it is busy and are batched.
    fn answered_by(queue_price: f64) -> Vec<usize> {
        let w = two_model_world();
        let opts = SimOptions {
            queue_price,
            ..SimOptions::default()
        };
        // SLO 10 s: 7 queue places of 1 s fit before a 1 s answer would end past 8 s.
        let trace = [(0, 2), (1, 1), (2, 0)];
        let mut sim = Sim::new(
            &w,
            &opts,
            10_000.0,
            Mode::Balanced(AssignerKind::Exact),
            &trace,
        );
        sim.play();
        sim.served
            .iter()
            .map(|s| s.map_or(usize::MAX, |s| s.0))
            .collect()
    }

    #[test]
    fn a_priced_queue_keeps_its_places_for_the_requests_that_gain_most_there() {
        // The first queue place costs 0.1 / 7: more than prompt 1 gains by waiting for
        // model 0, less than prompt 0 gains.
        assert_eq!(answered_by(0.1), [0, 1, 0]);
        // Free queue places: both wait for model 0.
        assert_eq!(answered_by(0.0), [0, 0, 0]);
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
