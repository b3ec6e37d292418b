//! `routewise replay --validate`: proves the off-policy estimators ([`crate::ope`]) on
//! data where the truth is known.
//!
//! The test split records every model's outcome on every prompt, so any deterministic
//! policy's true mean reward is exact: the mean over the test prompts of the reward of the
//! model it picks (`score - lambda * cost_usd`). The simulation:
//!
//! 1. fits the logging router (kNN by default) and the candidates' routers on train;
//! 2. per run, draws `n` decisions: a prompt uniformly from the test split (prompts
//!    missing an outcome are left out), and a model from the logger's epsilon-greedy policy
//!    (its top-ranked model with probability `1 - epsilon`, else one of the `K` models
//!    uniformly), recording the propensity `(1 - epsilon) [a = top] + epsilon / K` and the
//!    real outcome;
//! 3. estimates every candidate with IPS, SNIPS and DR (DR's direct model: the candidate's
//!    own predicted reward), with bootstrap intervals;
//! 4. aggregates, per log size and estimator, the bias, RMSE and 95%-interval coverage
//!    over runs and candidates, and, for every pair of candidates whose true rewards
//!    differ by at least [`MIN_GAP`], how often the paired DR interval of the difference
//!    identifies the better one (and how often it names the wrong one).
//!
//! Candidates: the logger itself, the logging router at two other lambdas (a quarter and
//! half way up `eval`'s lambda grid), the linear router at the logger's lambda, and the
//! best-single and cheapest baselines. Runs are independent and seeded (`seed`, size, run),
//! so the result does not depend on the number of threads.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use routewise_data::{Dataset, Record};
use routewise_features::{Featurizer, FeaturizerKind};
use routewise_router::{Policy, Router, RouterConfigs, RouterKind};
use serde::Serialize;

use crate::ope::{bounded_outcome_var, column, dr_difference, estimate_all, Estimates, Sample};
use crate::report::split_records;
use crate::{lambda_grid, EvalError, Outcomes, Progress};

/// Pairs of candidates at least this far apart in true mean reward are checked for
/// identification.
pub const MIN_GAP: f64 = 0.01;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    pub featurizer: FeaturizerKind,
    /// The logging router.
    pub logger: RouterKind,
    /// The reward's (and the logger's) cost weight.
    pub lambda: f64,
    /// The logger's exploration rate.
    pub epsilon: f64,
    /// Simulated logs per size.
    pub runs: usize,
    /// Logged decisions per simulated log.
    pub sizes: Vec<usize>,
    /// Bootstrap resamples per estimate.
    pub resamples: usize,
    pub seed: u64,
    /// Worker threads (runs are split between them).
    pub threads: usize,
}

/// One candidate and its exact value on the test split.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub name: String,
    pub true_reward: f64,
    pub true_quality: f64,
    pub true_cost: f64,
    /// Share of test prompts where it picks the logger's top model.
    pub agreement: f64,
}

/// One estimator's accuracy at one log size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EstimatorStats {
    /// Mean of `estimate - truth` over runs and candidates.
    pub bias: f64,
    /// The largest `|mean error|` of one candidate.
    pub max_abs_bias: f64,
    pub rmse: f64,
    /// Share of (run, candidate) intervals that contain the truth.
    pub coverage: f64,
    /// The lowest coverage of one candidate.
    pub min_coverage: f64,
    pub mean_ci_width: f64,
    /// Coverage over the estimates not flagged for a low effective sample size, and how
    /// many there were.
    pub coverage_precise: f64,
    pub n_precise: usize,
    /// Per candidate (same order as the report's candidates).
    pub by_candidate: Vec<CandidateStats>,
}

/// One estimator on one candidate at one log size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CandidateStats {
    pub bias: f64,
    pub rmse: f64,
    pub coverage: f64,
}

/// The three estimators.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Estimators {
    pub ips: EstimatorStats,
    pub snips: EstimatorStats,
    pub dr: EstimatorStats,
}

/// How often DR's paired interval tells two candidates apart.
#[derive(Debug, Clone, Serialize)]
pub struct Identification {
    pub better: String,
    pub worse: String,
    pub true_gap: f64,
    /// Share of runs whose interval of `better - worse` lies above 0.
    pub identified: f64,
    /// Share of runs whose interval lies below 0 (the wrong one named better).
    pub wrong: f64,
}

/// Results at one log size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub size: usize,
    pub estimators: Estimators,
    /// Mean effective sample size per candidate.
    pub mean_ess: Vec<f64>,
    /// Share of (run, candidate) estimates flagged for a low effective sample size.
    pub low_ess_share: f64,
    pub identification: Vec<Identification>,
}

/// The `replay --validate` report.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub dataset: String,
    pub runs: usize,
    pub epsilon: f64,
    pub lambda: f64,
    pub logger: String,
    pub resamples: usize,
    pub seed: u64,
    pub log_sizes: Vec<usize>,
    pub test_prompts: usize,
    pub n_models: usize,
    pub candidates: Vec<Candidate>,
    /// At the size closest to 5,000 decisions.
    pub reference_size: usize,
    pub estimators: Estimators,
    pub by_size: Vec<SizeReport>,
    pub seconds: f64,
}

/// Per test prompt: everything a run needs, precomputed.
struct World {
    k: usize,
    epsilon: f64,
    /// `n x k` real rewards, scores and costs.
    reward: Vec<f64>,
    /// The logger's top model per prompt.
    top: Vec<usize>,
    /// Per candidate: its model per prompt, and `n x k` predicted rewards.
    picks: Vec<Vec<usize>>,
    predicted: Vec<Vec<f64>>,
    /// Per candidate: `n x k` predicted scores (the outcome variance's mean).
    scores: Vec<Vec<f64>>,
}

impl World {
    fn n(&self) -> usize {
        self.top.len()
    }
    fn propensity(&self, i: usize, a: usize) -> f64 {
        let explore = self.epsilon / self.k as f64;
        if a == self.top[i] {
            1.0 - self.epsilon + explore
        } else {
            explore
        }
    }
    /// One simulated log of `size` decisions, as samples for every candidate.
    fn log(&self, size: usize, rng: &mut ChaCha8Rng) -> Vec<Sample> {
        let (k, c) = (self.k, self.picks.len());
        let mut out = Vec::with_capacity(size * c);
        for _ in 0..size {
            let i = rng.gen_range(0..self.n());
            let a = if rng.gen::<f64>() < self.epsilon {
                rng.gen_range(0..k)
            } else {
                self.top[i]
            };
            let p = self.propensity(i, a);
            let r = self.reward[i * k + a];
            for ((picks, pred), scores) in self.picks.iter().zip(&self.predicted).zip(&self.scores)
            {
                let pick = picks[i];
                out.push(Sample {
                    weight: if pick == a { 1.0 / p } else { 0.0 },
                    outcome: r,
                    direct: pred[i * k + pick],
                    direct_logged: pred[i * k + a],
                    outcome_var: bounded_outcome_var(scores[i * k + a]),
                    group: a as u32,
                });
            }
        }
        out
    }
}

/// A candidate: its name, its router's predicted scores (`n x k`), its ranking lambda and
/// its fixed ranking, if any.
type Spec = (String, Vec<f64>, f64, Option<Vec<usize>>);

/// One run's estimates per candidate.
type RunResult = Vec<Estimates>;
/// One run's verdicts per checked pair: (identified, named the wrong one).
type Verdicts = Vec<(bool, bool)>;

fn run_seed(seed: u64, size: usize, run: usize) -> u64 {
    let x = seed ^ (size as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((run as u64) << 1);
    routewise_router::baselines::splitmix64(x)
}

fn stats(
    results: &[RunResult],
    truth: &[f64],
    pick: fn(&Estimates) -> crate::ope::Estimate,
) -> EstimatorStats {
    let c = truth.len();
    let mut by_candidate = Vec::with_capacity(c);
    let (mut err_sum, mut sq_sum, mut covered, mut width, mut count) =
        (0.0, 0.0, 0usize, 0.0, 0usize);
    let (mut precise, mut precise_covered) = (0usize, 0usize);
    for (ci, &t) in truth.iter().enumerate() {
        let (mut e, mut sq, mut cov, mut n) = (0.0, 0.0, 0usize, 0usize);
        for r in results {
            let est = pick(&r[ci]);
            if !est.value.is_finite() {
                continue;
            }
            let d = est.value - t;
            e += d;
            sq += d * d;
            cov += usize::from(est.covers(t));
            if !r[ci].low_ess {
                precise += 1;
                precise_covered += usize::from(est.covers(t));
            }
            width += est.ci[1] - est.ci[0];
            n += 1;
        }
        err_sum += e;
        sq_sum += sq;
        covered += cov;
        count += n;
        let nf = n.max(1) as f64;
        by_candidate.push(CandidateStats {
            bias: e / nf,
            rmse: (sq / nf).sqrt(),
            coverage: cov as f64 / nf,
        });
    }
    let nf = count.max(1) as f64;
    EstimatorStats {
        bias: err_sum / nf,
        max_abs_bias: by_candidate
            .iter()
            .map(|s| s.bias.abs())
            .fold(0.0, f64::max),
        rmse: (sq_sum / nf).sqrt(),
        coverage: covered as f64 / nf,
        min_coverage: by_candidate.iter().map(|s| s.coverage).fold(1.0, f64::min),
        mean_ci_width: width / nf,
        coverage_precise: precise_covered as f64 / precise.max(1) as f64,
        n_precise: precise,
        by_candidate,
    }
}

/// Runs the validation on `ds` (see the module docs).
pub fn validate(
    ds: &Dataset,
    opts: &ValidateOptions,
    progress: &dyn Progress,
) -> Result<ValidationReport, EvalError> {
    let started = Instant::now();
    if !(opts.epsilon > 0.0 && opts.epsilon <= 1.0) {
        return Err(EvalError::Config(format!(
            "--epsilon must be in (0, 1], got {}",
            opts.epsilon
        )));
    }
    if !(opts.lambda.is_finite() && opts.lambda >= 0.0) {
        return Err(EvalError::Config(format!(
            "--lambda must be finite and >= 0, got {}",
            opts.lambda
        )));
    }
    if opts.runs == 0 {
        return Err(EvalError::Config("--runs must be at least 1".into()));
    }
    if opts.sizes.is_empty() || opts.sizes.contains(&0) {
        return Err(EvalError::Config(
            "--sizes must list positive log sizes".into(),
        ));
    }
    let (train, all_test) = split_records(ds)?;
    let k = ds.models.len();
    // Prompts with every model's outcome: the truth is exact there.
    let test: Vec<&Record> = all_test
        .into_iter()
        .filter(|r| r.outcomes.len() == k && r.outcomes.iter().all(Option::is_some))
        .collect();
    if test.is_empty() {
        return Err(EvalError::Split(
            "no test prompt has an outcome for every model".into(),
        ));
    }
    progress.start(&format!("fitting ({})", opts.featurizer), None);
    let prepared = routewise_router::prepare(&ds.models, &train, opts.featurizer)?;
    let cfg = RouterConfigs {
        seed: opts.seed,
        ..RouterConfigs::default()
    };
    let logger = prepared.fit(opts.logger, &cfg)?;
    let linear = prepared.fit(RouterKind::Linear, &cfg)?;
    let best = prepared.fit(RouterKind::BestSingle, &cfg)?;
    let cheapest = prepared.fit(RouterKind::Cheapest, &cfg)?;
    progress.finish();

    let outcomes = Outcomes::from_records(&test, k)?;
    let costs: Vec<f64> = (0..k)
        .filter_map(|m| outcomes.single(m).map(|p| p.cost))
        .collect();
    let grid = lambda_grid(&costs, 100);
    let at = |q: f64| grid[((grid.len() - 1) as f64 * q).round() as usize];
    let (l_quarter, l_half) = (at(0.25), at(0.5));

    let n = test.len();
    let (featurizer, catalog) = (&prepared.featurizer, &prepared.catalog);
    let texts: Vec<&str> = test.iter().map(|r| r.prompt.as_str()).collect();
    let feats = featurizer.featurize_batch(&texts);
    let dim = featurizer.dim();
    let mut pred_costs = vec![0.0; n * k];
    for (row, r) in pred_costs.chunks_exact_mut(k).zip(&test) {
        catalog.expected_costs(r.input_tokens(), row);
    }
    let predict = |router: &routewise_router::AnyRouter| {
        let mut s = vec![0.0; n * k];
        for (i, row) in s.chunks_exact_mut(k).enumerate() {
            router.predict_scores_keyed(&feats[i * dim..(i + 1) * dim], &test[i].id, row);
        }
        s
    };
    let lambda = opts.lambda;
    let mut reward = vec![0.0; n * k];
    for i in 0..n {
        for m in 0..k {
            if let Some((s, c)) = outcomes.get(i, m) {
                reward[i * k + m] = s - lambda * c;
            }
        }
    }
    let logger_scores = predict(&logger);
    let specs: Vec<Spec> = vec![
        (
            format!("{} lambda={lambda}", opts.logger),
            logger_scores.clone(),
            lambda,
            None,
        ),
        (
            format!("{} lambda={l_quarter:.4}", opts.logger),
            logger_scores.clone(),
            l_quarter,
            None,
        ),
        (
            format!("{} lambda={l_half:.4}", opts.logger),
            logger_scores,
            l_half,
            None,
        ),
        (
            format!("linear lambda={lambda}"),
            predict(&linear),
            lambda,
            None,
        ),
        (
            "best-single".into(),
            predict(&best),
            lambda,
            best.fixed_ranking(),
        ),
        (
            "cheapest".into(),
            predict(&cheapest),
            lambda,
            cheapest.fixed_ranking(),
        ),
    ];
    let mut idx = Vec::with_capacity(k);
    let mut choose = |scores: &[f64], costs: &[f64], l: f64, fixed: &Option<Vec<usize>>| match fixed
    {
        Some(r) => r[0],
        None => {
            Policy::Lambda(l).rank_into(scores, costs, &mut idx);
            idx[0]
        }
    };
    let top: Vec<usize> = (0..n)
        .map(|i| {
            let r = i * k..(i + 1) * k;
            choose(&specs[0].1[r.clone()], &pred_costs[r], lambda, &None)
        })
        .collect();
    let mut candidates = Vec::with_capacity(specs.len());
    let mut picks = Vec::with_capacity(specs.len());
    let mut predicted = Vec::with_capacity(specs.len());
    for (name, scores, l, fixed) in &specs {
        let p: Vec<usize> = (0..n)
            .map(|i| {
                let r = i * k..(i + 1) * k;
                choose(&scores[r.clone()], &pred_costs[r], *l, fixed)
            })
            .collect();
        let mean = |f: &dyn Fn(usize) -> f64| (0..n).map(f).sum::<f64>() / n as f64;
        candidates.push(Candidate {
            name: name.clone(),
            true_reward: mean(&|i| reward[i * k + p[i]]),
            true_quality: mean(&|i| outcomes.get(i, p[i]).map_or(0.0, |o| o.0)),
            true_cost: mean(&|i| outcomes.get(i, p[i]).map_or(0.0, |o| o.1)),
            agreement: mean(&|i| f64::from(u8::from(p[i] == top[i]))),
        });
        // The candidate's own predicted reward is DR's direct model.
        predicted.push(
            scores
                .iter()
                .zip(&pred_costs)
                .map(|(s, c)| s - lambda * c)
                .collect::<Vec<f64>>(),
        );
        picks.push(p);
    }
    let world = World {
        k,
        epsilon: opts.epsilon,
        reward,
        top,
        picks,
        predicted,
        scores: specs.iter().map(|s| s.1.clone()).collect(),
    };
    let truth: Vec<f64> = candidates.iter().map(|c| c.true_reward).collect();
    // Pairs (better, worse) far enough apart to check identification.
    let c = truth.len();
    let pairs: Vec<(usize, usize)> = (0..c)
        .flat_map(|a| (0..c).map(move |b| (a, b)))
        .filter(|&(a, b)| a != b && truth[a] - truth[b] >= MIN_GAP)
        .collect();

    let mut by_size = Vec::with_capacity(opts.sizes.len());
    let threads = opts.threads.max(1);
    for &size in &opts.sizes {
        progress.start(
            &format!("{} logs of {size} decisions", opts.runs),
            Some(opts.runs as u64),
        );
        let done = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<(usize, RunResult, Verdicts)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (world, done, pairs) = (&world, &done, &pairs);
                    s.spawn(move || {
                        (t..opts.runs)
                            .step_by(threads)
                            .map(|run| {
                                let seed = run_seed(opts.seed, size, run);
                                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                                let samples = world.log(size, &mut rng);
                                let est = estimate_all(
                                    &samples,
                                    world.picks.len(),
                                    opts.resamples,
                                    seed ^ 1,
                                );
                                let verdicts: Verdicts = pairs
                                    .iter()
                                    .map(|&(a, b)| {
                                        let c = world.picks.len();
                                        let d = dr_difference(
                                            &est[a],
                                            &est[b],
                                            column(&samples, c, a),
                                            column(&samples, c, b),
                                        );
                                        (d.ci[0] > 0.0, d.ci[1] < 0.0)
                                    })
                                    .collect();
                                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                (run, est, verdicts)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(opts.runs);
            for w in workers {
                // A worker cannot panic short of a bug; its runs are then missing.
                if let Ok(r) = w.join() {
                    all.extend(r);
                }
            }
            all
        });
        progress.set_position(done.into_inner() as u64);
        progress.finish();
        results.sort_by_key(|(run, _, _)| *run);
        let (results, verdicts): (Vec<RunResult>, Vec<Verdicts>) =
            results.into_iter().map(|(_, r, v)| (r, v)).unzip();
        let estimators = Estimators {
            ips: stats(&results, &truth, |e| e.ips),
            snips: stats(&results, &truth, |e| e.snips),
            dr: stats(&results, &truth, |e| e.dr),
        };
        let runs = results.len().max(1) as f64;
        let mean_ess = (0..c)
            .map(|ci| results.iter().map(|r| r[ci].ess).sum::<f64>() / runs)
            .collect();
        let low = results
            .iter()
            .flat_map(|r| r.iter())
            .filter(|e| e.low_ess)
            .count();
        let identification = pairs
            .iter()
            .enumerate()
            .map(|(p, &(a, b))| {
                let count = |f: fn(&(bool, bool)) -> bool| {
                    verdicts.iter().filter(|v| f(&v[p])).count() as f64 / runs
                };
                Identification {
                    better: candidates[a].name.clone(),
                    worse: candidates[b].name.clone(),
                    true_gap: truth[a] - truth[b],
                    identified: count(|v| v.0),
                    wrong: count(|v| v.1),
                }
            })
            .collect();
        by_size.push(SizeReport {
            size,
            estimators,
            mean_ess,
            low_ess_share: low as f64 / (runs * c as f64),
            identification,
        });
    }
    let reference = by_size
        .iter()
        .min_by_key(|s| s.size.abs_diff(5000))
        .map(|s| (s.size, s.estimators.clone()))
        .unwrap_or_default();
    Ok(ValidationReport {
        dataset: ds.name.clone(),
        runs: opts.runs,
        epsilon: opts.epsilon,
        lambda,
        logger: opts.logger.to_string(),
        resamples: opts.resamples,
        seed: opts.seed,
        log_sizes: opts.sizes.clone(),
        test_prompts: n,
        n_models: k,
        candidates,
        reference_size: reference.0,
        estimators: reference.1,
        by_size,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The human-readable summary printed by `replay --validate`.
pub fn write_validation_table(
    out: &mut impl std::io::Write,
    r: &ValidationReport,
) -> std::io::Result<()> {
    writeln!(
        out,
        "off-policy validation on {}: {} test prompts, {} models, logger {} at lambda {} with epsilon {}, {} runs per size, {} bootstrap resamples",
        r.dataset, r.test_prompts, r.n_models, r.logger, r.lambda, r.epsilon, r.runs, r.resamples
    )?;
    writeln!(
        out,
        "\n{:<28} {:>12} {:>10} {:>10} {:>10}",
        "candidate", "true reward", "quality", "cost", "agreement"
    )?;
    for c in &r.candidates {
        writeln!(
            out,
            "{:<28} {:>12.4} {:>10.4} {:>10.6} {:>10.3}",
            c.name, c.true_reward, c.true_quality, c.true_cost, c.agreement
        )?;
    }
    writeln!(
        out,
        "\n{:>6} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>15}",
        "size",
        "est.",
        "bias",
        "max|bias|",
        "rmse",
        "coverage",
        "min cov.",
        "CI width",
        "cov. ESS>=100"
    )?;
    for s in &r.by_size {
        for (name, e) in [
            ("ips", &s.estimators.ips),
            ("snips", &s.estimators.snips),
            ("dr", &s.estimators.dr),
        ] {
            writeln!(
                out,
                "{:>6} {:<6} {:>9.5} {:>9.5} {:>9.5} {:>9.3} {:>9.3} {:>9.4} {:>8.3} ({:>5})",
                s.size,
                name,
                e.bias,
                e.max_abs_bias,
                e.rmse,
                e.coverage,
                e.min_coverage,
                e.mean_ci_width,
                e.coverage_precise,
                e.n_precise
            )?;
        }
    }
    if let Some(last) = r.by_size.last() {
        writeln!(
            out,
            "\nidentification by DR's paired interval at {} decisions (true gap >= {MIN_GAP}):",
            last.size
        )?;
        for p in &last.identification {
            writeln!(
                out,
                "  {} > {} (gap {:.4}): identified {:.3}, wrong {:.3}",
                p.better, p.worse, p.true_gap, p.identified, p.wrong
            )?;
        }
    }
    writeln!(out, "\n{:.1} s", r.seconds)
}
