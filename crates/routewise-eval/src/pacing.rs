//! `routewise eval --pacing`: a key with a budget for a period, measured four ways on the
//! test split replayed as one period of traffic (re-solving, dual descent, a hard cap, the
//! best fixed lambda in hindsight).
//!
//! * **Stream:** the test prompts every model has an outcome on, in a seeded order, spread
//!   over `days` with a diurnal rate (busiest at noon, quietest at midnight UTC: intensity
//!   `1 - 0.6 cos` of the time of day, arrivals at its quantiles).
//! * **Budget:** `budget_fraction` of what always answering with the best single model
//!   (the best mean score on train) costs on the stream. A budget below the stream's
//!   floor (each request answered by its cheapest model) cannot be kept by any policy:
//!   the report says so in its warnings.
//! * **Paced:** the router (fitted on train) picks `argmax predicted score - lambda *
//!   predicted cost`, with `lambda` set by [`routewise_router::pacing::Resolving`] (what
//!   the gateway runs) from each request's predictions and each answer's real cost. It
//!   starts from the best fixed lambda of a train stream built the same way, with
//!   out-of-fold predictions; its window is the gateway's.
//! * **Dual descent:** the same, with [`routewise_router::pacing::DualDescent`] (the
//!   baseline). Its step (and its smoothing) is chosen on the train stream: the best mean
//!   quality among those that end the train period within 2% of its budget when started
//!   from the train lambda and from half and twice it (a step must correct a wrong start,
//!   since a new period's traffic is not train's).
//! * **Hard cap:** the best predicted quality (`lambda = 0`) until the next call would pass
//!   the budget, then the cheapest model for the rest of the period.
//! * **Hindsight lambda:** the fixed lambda, chosen knowing the whole test stream, with the
//!   best quality among those within the budget: what no online rule can beat on average.
//!
//! Quality is the mean real score of the answers; spend the sum of their real costs.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use routewise_data::{Dataset, Record};
use routewise_features::FeaturizerKind;
use routewise_router::pacing::{
    BudgetPacer, DualDescent, DualDescentConfig, Resolving, ResolvingConfig, LAMBDA_MAX,
};
use routewise_router::RouterKind;
use serde::Serialize;

use crate::fitted::complete_rows;
use crate::outcomes::Outcomes;
use crate::singles::Singles;
use crate::EvalError;

/// Steps the train side chooses from.
const STEPS: [f64; 6] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2];
/// EWMA weights the train side chooses from (1: no smoothing).
const SMOOTHINGS: [f64; 3] = [1.0, 0.1, 0.03];
/// Starting lambdas the train side tries each step from, as multiples of its best fixed
/// lambda.
const START_ERRORS: [f64; 3] = [1.0, 0.5, 2.0];
/// How far from the budget a train run may end and count as on target.
const BAND: f64 = 0.02;
/// The diurnal swing of the arrival rate.
const DIURNAL: f64 = 0.6;
const DAY_MS: f64 = 86_400_000.0;

#[derive(Debug, Clone)]
pub struct PacingOptions {
    pub router: RouterKind,
    pub featurizer: FeaturizerKind,
    pub seed: u64,
    /// The budget as a share of the best single model's cost on the stream.
    pub budget_fraction: f64,
    /// The period's length.
    pub days: f64,
}

/// Spend and quality of one way of routing the stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Run {
    pub spend_usd: f64,
    pub quality: f64,
    /// `spend_usd / budget_usd`.
    pub budget_ratio: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Hindsight {
    pub lambda: f64,
    pub spend_usd: f64,
    pub quality: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BestSingle {
    pub model: String,
    pub spend_usd: f64,
    pub quality: f64,
}

/// The re-solving pacer's settings, and its run on the train stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tuned {
    pub lambda0: f64,
    pub window: usize,
    pub min_seen: usize,
    pub train_budget_ratio: f64,
    pub train_quality: f64,
    /// The test runs started from half and from twice `lambda0` (a gateway starts from
    /// its configured lambda, not from train's).
    pub from_half_lambda0: Run,
    pub from_twice_lambda0: Run,
}

/// The dual-descent baseline: its run, the step the train side chose, and its run on the
/// train stream.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Dual {
    #[serde(flatten)]
    pub run: Run,
    pub step: f64,
    pub smoothing: f64,
    pub lambda0: f64,
    pub train_budget_ratio: f64,
    pub train_quality: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PacingReport {
    pub budget_usd: f64,
    pub budget_fraction: f64,
    pub days: f64,
    pub requests: usize,
    pub router: String,
    pub best_single: BestSingle,
    /// Re-solving, what the gateway runs.
    pub paced: Run,
    pub pacer: Tuned,
    /// The paced lambda at the end of the period.
    pub final_lambda: f64,
    pub dual_descent: Dual,
    pub hard_cap: Run,
    pub hindsight_lambda: Hindsight,
    /// What always answering with each prompt's cheapest model costs on the stream: no
    /// policy spends less.
    pub min_spend_usd: f64,
    /// What the reader should know before trusting the figures (e.g. a budget below
    /// `min_spend_usd`, which every policy overspends).
    pub warnings: Vec<String>,
}

/// One period of traffic: predictions and real outcomes of its prompts, in arrival order.
struct Stream {
    nm: usize,
    pred: Vec<f64>,
    pred_cost: Vec<f64>,
    score: Vec<f64>,
    cost: Vec<f64>,
    /// Arrival time of each request, ms from the period's start.
    times: Vec<u64>,
    period_ms: u64,
}

impl Stream {
    /// Rows `rows` of the row-major inputs, shuffled by `seed`, spread over `days`.
    fn new(
        nm: usize,
        pred: &[f64],
        pred_cost: &[f64],
        records: &[&Record],
        rows: &[usize],
        seed: u64,
        days: f64,
    ) -> Stream {
        let mut order = rows.to_vec();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let pick = |v: &[f64]| -> Vec<f64> {
            order
                .iter()
                .flat_map(|&i| v[i * nm..(i + 1) * nm].iter().copied())
                .collect()
        };
        let outcome = |f: fn(&routewise_data::Outcome) -> f64| -> Vec<f64> {
            order
                .iter()
                .flat_map(|&i| {
                    records[i]
                        .outcomes
                        .iter()
                        .take(nm)
                        .map(move |o| o.as_ref().map_or(f64::NAN, f))
                })
                .collect()
        };
        let period_ms = (days * DAY_MS) as u64;
        Stream {
            nm,
            pred: pick(pred),
            pred_cost: pick(pred_cost),
            score: outcome(|o| o.score),
            cost: outcome(|o| o.cost_usd),
            times: diurnal_times(order.len(), period_ms),
            period_ms,
        }
    }

    fn len(&self) -> usize {
        self.times.len()
    }

    /// The model `lambda` picks for request `i` (the cheapest on ties).
    fn choose(&self, i: usize, lambda: f64) -> usize {
        let (p, c) = (self.row(&self.pred, i), self.row(&self.pred_cost, i));
        let mut best = 0;
        let mut best_u = f64::NEG_INFINITY;
        for m in 0..self.nm {
            let u = p[m] - lambda * c[m];
            if u > best_u || (u == best_u && c[m] < c[best]) {
                best = m;
                best_u = u;
            }
        }
        best
    }

    fn row<'a>(&self, v: &'a [f64], i: usize) -> &'a [f64] {
        &v[i * self.nm..(i + 1) * self.nm]
    }

    fn outcome(&self, i: usize, m: usize) -> (f64, f64) {
        (self.score[i * self.nm + m], self.cost[i * self.nm + m])
    }

    fn summary(&self, spent: f64, quality_sum: f64, budget: f64) -> Run {
        Run {
            spend_usd: spent,
            quality: quality_sum / self.len().max(1) as f64,
            budget_ratio: spent / budget,
        }
    }

    fn fixed(&self, lambda: f64) -> (f64, f64) {
        let (mut spent, mut q) = (0.0, 0.0);
        for i in 0..self.len() {
            let (s, c) = self.outcome(i, self.choose(i, lambda));
            spent += c;
            q += s;
        }
        (spent, q / self.len().max(1) as f64)
    }

    /// Routes the stream with `p`'s lambda; the spend and quality, and the last lambda.
    fn paced(&self, p: &mut dyn BudgetPacer, budget: f64) -> (Run, f64) {
        let mut q = 0.0;
        for i in 0..self.len() {
            let (pr, pc) = (self.row(&self.pred, i), self.row(&self.pred_cost, i));
            p.observe(&mut pr.iter().copied().zip(pc.iter().copied()));
            let m = self.choose(i, p.lambda());
            let (s, c) = self.outcome(i, m);
            q += s;
            p.record(self.times[i], c, true);
        }
        (self.summary(p.spent(), q, budget), p.lambda())
    }

    fn dual(&self, cfg: DualDescentConfig, budget: f64) -> (Run, f64) {
        self.paced(
            &mut DualDescent::new(cfg, budget, 0, self.period_ms),
            budget,
        )
    }

    fn resolving(&self, cfg: ResolvingConfig, budget: f64) -> (Run, f64) {
        self.paced(&mut Resolving::new(cfg, budget, 0, self.period_ms), budget)
    }

    fn hard_cap(&self, budget: f64) -> Run {
        let (mut spent, mut q, mut out_of_money) = (0.0, 0.0, false);
        for i in 0..self.len() {
            let mut m = self.choose(i, 0.0);
            if out_of_money || spent + self.row(&self.pred_cost, i)[m] > budget {
                out_of_money = true;
                m = self.choose(i, LAMBDA_MAX);
            }
            let (s, c) = self.outcome(i, m);
            spent += c;
            q += s;
        }
        self.summary(spent, q, budget)
    }

    /// The best fixed lambda within `budget` on this stream.
    fn hindsight(&self, budget: f64) -> Hindsight {
        let mut best: Option<Hindsight> = None;
        for lambda in lambda_grid() {
            let (spend, quality) = self.fixed(lambda);
            if spend <= budget && best.is_none_or(|b| quality > b.quality) {
                best = Some(Hindsight {
                    lambda,
                    spend_usd: spend,
                    quality,
                });
            }
        }
        best.unwrap_or_else(|| {
            let (spend, quality) = self.fixed(LAMBDA_MAX);
            Hindsight {
                lambda: LAMBDA_MAX,
                spend_usd: spend,
                quality,
            }
        })
    }
}

/// 0, then 400 lambdas spaced geometrically over [1e-2, 1e9].
fn lambda_grid() -> Vec<f64> {
    std::iter::once(0.0)
        .chain((0..400).map(|k| 1e-2 * 10f64.powf(11.0 * k as f64 / 399.0)))
        .collect()
}

/// `n` arrival times over `period_ms` at the quantiles of a diurnal intensity.
fn diurnal_times(n: usize, period_ms: u64) -> Vec<u64> {
    // Cumulative intensity per minute, inverted by search.
    let minutes = (period_ms / 60_000).max(1) as usize;
    let mut cum = Vec::with_capacity(minutes + 1);
    cum.push(0.0);
    let mut total = 0.0;
    for k in 0..minutes {
        let t = (k as f64 + 0.5) * 60_000.0;
        let phase = std::f64::consts::TAU * (t % DAY_MS) / DAY_MS;
        total += 1.0 - DIURNAL * phase.cos();
        cum.push(total);
    }
    (0..n)
        .map(|i| {
            let target = (i as f64 + 0.5) / n as f64 * total;
            let k = cum.partition_point(|&c| c < target).clamp(1, minutes);
            let (lo, hi) = (cum[k - 1], cum[k]);
            let frac = if hi > lo {
                (target - lo) / (hi - lo)
            } else {
                0.0
            };
            (((k - 1) as f64 + frac) * 60_000.0) as u64
        })
        .collect()
}

/// Runs the measurement.
pub fn evaluate_pacing(ds: &Dataset, opts: &PacingOptions) -> Result<PacingReport, EvalError> {
    let nm = ds.models.len();
    let fitted = crate::fitted::Fitted::new(ds, opts.router, opts.featurizer, opts.seed)?;
    let (train, all_test) = (&fitted.train, &fitted.test);
    let singles = Singles::of(&Outcomes::from_records(all_test, nm)?);
    let test: Vec<&Record> = all_test
        .iter()
        .zip(&singles.coverage.common)
        .filter(|(_, &c)| c)
        .map(|(r, _)| *r)
        .collect();
    // Test predictions from the router fitted on all of train.
    let (pred, test_costs) = fitted.predict(&test);
    let test_rows = complete_rows(&test, nm);
    if test_rows.is_empty() {
        return Err(EvalError::Split(
            "pacing needs test prompts with every model's outcome".into(),
        ));
    }
    let stream = Stream::new(
        nm,
        &pred,
        &test_costs,
        &test,
        &test_rows,
        opts.seed,
        opts.days,
    );

    // The best single model: the best mean score on train.
    let best = fitted.best_on_train();
    let best_spend: f64 = (0..stream.len()).map(|i| stream.outcome(i, best).1).sum();
    let best_quality = (0..stream.len())
        .map(|i| stream.outcome(i, best).0)
        .sum::<f64>()
        / stream.len() as f64;
    if best_spend <= 0.0 {
        return Err(EvalError::Config(
            "--pacing: the best model's answers to the test stream cost $0, so there is no \
             budget to pace"
                .into(),
        ));
    }
    let budget = opts.budget_fraction * best_spend;
    let min_spend: f64 = (0..stream.len())
        .map(|i| {
            (0..nm)
                .map(|m| stream.outcome(i, m).1)
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    let mut warnings = Vec::new();
    if budget < min_spend {
        warnings.push(format!(
            "the budget (${}) is below what answering every request with its cheapest model \
             costs (${}): every policy overspends it; a --budget-fraction under {:.4} cannot be \
             kept (and one just above it only by always picking the cheapest model)",
            usd(budget),
            usd(min_spend),
            min_spend / best_spend
        ));
    }

    // The pacer's settings, chosen on a train stream with out-of-fold predictions.
    let oof = crate::cascade::cross_fit(
        opts.router,
        &fitted.prepared.train_set,
        &fitted.prepared.catalog,
        &fitted.cfg,
    )?;
    let train_rows = complete_rows(train, nm);
    let train_stream = Stream::new(
        nm,
        &oof,
        &fitted.expected_costs(train),
        train,
        &train_rows,
        opts.seed ^ 0x7ace,
        opts.days,
    );
    let train_best: f64 = (0..train_stream.len())
        .map(|i| train_stream.outcome(i, best).1)
        .sum();
    let train_budget = opts.budget_fraction * train_best;
    let lambda0 = train_stream.hindsight(train_budget).lambda.max(1e-2);
    // The dual-descent baseline's step: each is run from lambda0 and from starts off by 2x
    // either way (a period whose traffic differs from train's), and must bring all three
    // within the band.
    let grid = STEPS
        .iter()
        .flat_map(|&s| SMOOTHINGS.iter().map(move |&w| (s, w)));
    let dual_descent = grid
        .map(|(step, smoothing)| {
            let runs: Vec<Run> = START_ERRORS
                .iter()
                .map(|&e| {
                    let cfg = DualDescentConfig {
                        step,
                        lambda0: lambda0 * e,
                        smoothing,
                    };
                    train_stream.dual(cfg, train_budget).0
                })
                .collect();
            let worst = runs
                .iter()
                .map(|r| (r.budget_ratio - 1.0).abs())
                .fold(0.0, f64::max);
            let quality = runs.iter().map(|r| r.quality).sum::<f64>() / runs.len() as f64;
            ((step, smoothing), worst, quality, runs[0])
        })
        .min_by(|a, b| {
            let off = |w: f64| (w - BAND).max(0.0);
            off(a.1).total_cmp(&off(b.1)).then(b.2.total_cmp(&a.2))
        })
        .map(|((step, smoothing), _, _, train)| {
            let cfg = DualDescentConfig {
                step,
                lambda0,
                smoothing,
            };
            Dual {
                run: stream.dual(cfg, budget).0,
                step,
                smoothing,
                lambda0,
                train_budget_ratio: train.budget_ratio,
                train_quality: train.quality,
            }
        })
        .ok_or_else(|| EvalError::Split("no pacer step".into()))?;

    let resolving = ResolvingConfig {
        lambda0,
        ..ResolvingConfig::default()
    };
    let (train_run, _) = train_stream.resolving(resolving, train_budget);
    let (paced, final_lambda) = stream.resolving(resolving, budget);
    Ok(PacingReport {
        budget_usd: budget,
        budget_fraction: opts.budget_fraction,
        days: opts.days,
        requests: stream.len(),
        router: opts.router.to_string(),
        best_single: BestSingle {
            model: ds.models[best].clone(),
            spend_usd: best_spend,
            quality: best_quality,
        },
        paced,
        pacer: Tuned {
            lambda0,
            window: resolving.window,
            min_seen: resolving.min_seen,
            train_budget_ratio: train_run.budget_ratio,
            train_quality: train_run.quality,
            from_half_lambda0: stream
                .resolving(
                    ResolvingConfig {
                        lambda0: lambda0 * 0.5,
                        ..resolving
                    },
                    budget,
                )
                .0,
            from_twice_lambda0: stream
                .resolving(
                    ResolvingConfig {
                        lambda0: lambda0 * 2.0,
                        ..resolving
                    },
                    budget,
                )
                .0,
        },
        final_lambda,
        dual_descent,
        hard_cap: stream.hard_cap(budget),
        hindsight_lambda: stream.hindsight(budget),
        min_spend_usd: min_spend,
        warnings,
    })
}

/// Dollars with four significant digits.
fn usd(x: f64) -> String {
    let digits = if x > 0.0 {
        (3 - x.log10().floor() as i64).clamp(0, 12) as usize
    } else {
        4
    };
    format!("{x:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_the_day_and_fill_the_period() {
        let period = 30 * 86_400_000;
        let t = diurnal_times(30_000, period);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert!(*t.last().unwrap() < period);
        let hour = |h: u64| {
            t.iter()
                .filter(|&&x| (x % 86_400_000) / 3_600_000 == h)
                .count()
        };
        // Noon is about (1 + 0.6) / (1 - 0.6) = 4 times as busy as midnight.
        let ratio = hour(12) as f64 / hour(0) as f64;
        assert!((3.0..5.0).contains(&ratio), "{ratio}");
    }

    #[test]
    fn the_lambda_grid_is_increasing_from_zero() {
        let g = lambda_grid();
        assert_eq!(g[0], 0.0);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        assert!((g[g.len() - 1] - 1e9).abs() / 1e9 < 1e-9);
    }
}
