//! `routewise eval --affinity`: conversation affinity on multi-turn traces, against
//! routing every turn afresh.
//!
//! * **Traces:** the shared data has single prompts, so conversations are synthesised
//!   from them: the test prompts that every model answered, shuffled by the seed, grouped
//!   by task, cut into conversations of `turns` prompts. Turn `t` carries the history of
//!   the turns before it (their prompts and the answering models' recorded output tokens)
//!   as extra prompt tokens.
//! * **Cost:** a turn on model `m` costs its recorded cost plus the history at `m`'s input
//!   price, discounted by `cached_discount` when `m` also answered the turn before (its
//!   provider's prompt cache holds the history). A switch pays the history in full.
//! * **Quality:** the recorded score of the answering model on the turn's own prompt (the
//!   data says nothing about how history changes answers).
//! * **Policies:** the router (fitted on train) picks `argmax predicted score - lambda *
//!   predicted cost` each turn, its predicted cost counting the history; with affinity the
//!   conversation stays on its model unless [`routewise_router::affinity::decide`] says
//!   the switch pays (the gateway's rule, with `switch_margin`). Both run over a lambda
//!   grid; each gives a quality-cost frontier (the convex hull of its points), and the two
//!   are compared by cost at 21 qualities over the range both reach.
//! * **The margin** (unless `--switch-margin` fixes one): chosen per lambda on a train
//!   trace (out-of-fold predictions), as an operator running that lambda would choose it:
//!   the one of [`MARGINS`], or affinity off, with the highest utility there (mean score
//!   minus lambda times the cost per turn: the policy's own objective). A margin holds a
//!   conversation against noise in the predictions; how much that is worth depends on
//!   what a point of score costs, so no single margin suits every lambda.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use routewise_data::{Dataset, Record};
use routewise_features::FeaturizerKind;
use routewise_router::affinity::{decide, Turn};
use routewise_router::{Policy, RouterKind};
use serde::Serialize;

use crate::metrics::nondecreasing_hull;
use crate::EvalError;

#[derive(Debug, Clone)]
pub struct AffinityOptions {
    pub router: RouterKind,
    pub featurizer: FeaturizerKind,
    pub seed: u64,
    pub turns: usize,
    /// The share of the input price a cached prefix saves (0.5: billed at half price).
    pub cached_discount: f64,
    /// `None`: chosen per lambda on a train trace, from [`MARGINS`] or off.
    pub switch_margin: Option<f64>,
}

/// The train trace's choice at one lambda.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TrainChoice {
    pub lambda: f64,
    /// `None`: affinity off (routing afresh had the higher utility).
    pub switch_margin: Option<f64>,
    /// Utility (mean score minus lambda times cost per turn) with the chosen setting, and
    /// routing afresh.
    pub utility: f64,
    pub utility_without: f64,
}

/// One policy over every conversation.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Outcome {
    pub quality: f64,
    pub cost_usd: f64,
    /// Turns answered by another model than the turn before.
    pub switches: usize,
    /// Turns answered.
    pub turns: usize,
}

impl Outcome {
    /// The policy's objective at `lambda`: mean score minus lambda times the mean cost
    /// per turn.
    pub fn utility(&self, lambda: f64) -> f64 {
        self.quality - lambda * self.cost_usd / self.turns.max(1) as f64
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub lambda: f64,
    /// The margin affinity ran at; `None`: affinity off at this lambda.
    pub switch_margin: Option<f64>,
    pub without: Outcome,
    pub with: Outcome,
}

/// What each way costs for one quality, on its own frontier (the best lambda for it,
/// interpolated between the swept ones).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Matched {
    pub quality: f64,
    pub cost_with: f64,
    pub cost_without: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AffinityReport {
    pub router: String,
    pub conversations: usize,
    pub turns: usize,
    pub cached_discount: f64,
    /// The margin given (`--switch-margin`); `None`: chosen per lambda on train (see
    /// `points[].switch_margin`).
    pub switch_margin: Option<f64>,
    pub margin_chosen_on_train: bool,
    /// The train trace's choice at each lambda (when chosen there).
    pub train_choices: Vec<TrainChoice>,
    pub points: Vec<Point>,
    /// 21 qualities evenly over the range both frontiers reach.
    pub matched: Vec<Matched>,
    /// Mean, least and largest `cost_with / cost_without` over `matched`.
    pub mean_cost_ratio_at_equal_quality: Option<f64>,
    pub min_cost_ratio: Option<f64>,
    pub max_cost_ratio: Option<f64>,
}

/// The lambdas swept: 0, then 40 spaced geometrically over [1e-1, 1e6].
fn lambdas() -> Vec<f64> {
    std::iter::once(0.0)
        .chain((0..40).map(|k| 1e-1 * 10f64.powf(7.0 * k as f64 / 39.0)))
        .collect()
}

struct Trace<'a> {
    /// Conversations: rows into `records`, in turn order.
    conversations: Vec<Vec<usize>>,
    records: Vec<&'a Record>,
    pred: Vec<f64>,
    nm: usize,
    /// Per model: input price, USD per token (the router's catalog).
    input_price: Vec<f64>,
    catalog: &'a routewise_router::Catalog,
    cached_discount: f64,
}

impl<'a> Trace<'a> {
    /// Conversations over `records` (every model answered) with predictions `pred`.
    fn new(
        records: Vec<&'a Record>,
        pred: Vec<f64>,
        seed: u64,
        turns: usize,
        catalog: &'a routewise_router::Catalog,
        cached_discount: f64,
    ) -> Trace<'a> {
        let nm = catalog.models.len();
        let rows = crate::fitted::complete_rows(&records, nm);
        Trace {
            conversations: conversations(&records, &rows, seed, turns),
            records,
            pred,
            nm,
            input_price: catalog
                .models
                .iter()
                .map(|m| m.input_per_mtok / 1e6)
                .collect(),
            catalog,
            cached_discount,
        }
    }

    /// Every conversation at `lambda`; `margin`: with affinity at this switch margin.
    fn run(&self, lambda: f64, margin: Option<f64>) -> Outcome {
        let nm = self.nm;
        let (mut quality, mut cost, mut switches, mut turns) = (0.0, 0.0, 0usize, 0usize);
        let mut predicted = vec![0.0; nm];
        let mut ranking = Vec::with_capacity(nm);
        for conv in &self.conversations {
            let mut history = 0u64;
            let mut previous: Option<usize> = None;
            for &row in conv {
                let r = self.records[row];
                let input = r.input_tokens() as u64 + history;
                self.catalog
                    .expected_costs(u32::try_from(input).unwrap_or(u32::MAX), &mut predicted);
                let p = &self.pred[row * nm..(row + 1) * nm];
                let utility = |m: usize| p[m] - lambda * predicted[m];
                // The gateway's ranking (ties to the cheaper, then the lower index).
                Policy::Lambda(lambda).rank_into(p, &predicted, &mut ranking);
                let choice = ranking.first().copied().unwrap_or(0);
                let model = match (margin, previous) {
                    (Some(margin), Some(prev)) if prev != choice => {
                        let v = decide(
                            &Turn {
                                choice_utility: utility(choice),
                                previous_utility: utility(prev),
                                lambda,
                                prompt_tokens: history,
                                input_price: self.input_price[prev],
                                cached_input_price: self.input_price[prev]
                                    * (1.0 - self.cached_discount),
                            },
                            margin,
                        );
                        if v.stayed() {
                            prev
                        } else {
                            choice
                        }
                    }
                    _ => choice,
                };
                let Some(o) = r.outcomes[model].as_ref() else {
                    continue;
                };
                // The provider's cache holds the history when the model answered the turn
                // before, with or without affinity.
                let discount = if previous == Some(model) {
                    self.cached_discount
                } else {
                    0.0
                };
                if previous.is_some_and(|prev| prev != model) {
                    switches += 1;
                }
                quality += o.score;
                cost += o.cost_usd + history as f64 * self.input_price[model] * (1.0 - discount);
                turns += 1;
                history += r.input_tokens() as u64 + u64::from(o.output_tokens);
                previous = Some(model);
            }
        }
        Outcome {
            quality: quality / turns.max(1) as f64,
            cost_usd: cost,
            switches,
            turns,
        }
    }
}

/// Conversations from `rows` of `records` (shuffled by `seed`, grouped by task, cut into
/// `turns`).
fn conversations(records: &[&Record], rows: &[usize], seed: u64, turns: usize) -> Vec<Vec<usize>> {
    let mut order = rows.to_vec();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut by_task: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for i in order {
        by_task.entry(records[i].task.as_str()).or_default().push(i);
    }
    by_task
        .values()
        .flat_map(|rows| rows.chunks_exact(turns).map(<[usize]>::to_vec))
        .collect()
}

/// Both policies over the lambda grid, and their frontiers compared.
struct Comparison {
    points: Vec<Point>,
    matched: Vec<Matched>,
    ratios: Vec<f64>,
}

impl Comparison {
    fn mean_ratio(&self) -> Option<f64> {
        (!self.ratios.is_empty())
            .then(|| self.ratios.iter().sum::<f64>() / self.ratios.len() as f64)
    }
}

/// Both policies at each lambda of the grid, affinity at `margins[k]` for the `k`-th
/// (`None`: off, the same as routing afresh).
fn compare(trace: &Trace, margins: &[Option<f64>]) -> Comparison {
    let points: Vec<Point> = lambdas()
        .into_iter()
        .zip(margins)
        .map(|(lambda, &margin)| {
            let without = trace.run(lambda, None);
            Point {
                lambda,
                switch_margin: margin,
                without,
                with: margin.map_or(without, |m| trace.run(lambda, Some(m))),
            }
        })
        .collect();
    let frontier = |f: fn(&Point) -> Outcome| {
        nondecreasing_hull(
            &points
                .iter()
                .map(|p| (f(p).cost_usd, f(p).quality))
                .collect::<Vec<_>>(),
        )
    };
    let (with, without) = (frontier(|p| p.with), frontier(|p| p.without));
    let span = |h: &[(f64, f64)]| {
        (
            h.first().map_or(0.0, |v| v.1),
            h.last().map_or(0.0, |v| v.1),
        )
    };
    let (lo, hi) = {
        let (a, b) = (span(&with.vertices), span(&without.vertices));
        (a.0.max(b.0), a.1.min(b.1))
    };
    let matched: Vec<Matched> = (0..=20)
        .filter(|_| hi > lo)
        .filter_map(|k| {
            let quality = lo + (hi - lo) * f64::from(k) / 20.0;
            Some(Matched {
                quality,
                cost_with: with.min_cost_reaching(quality)?,
                cost_without: without.min_cost_reaching(quality)?,
            })
        })
        .collect();
    let ratios = matched
        .iter()
        .filter(|m| m.cost_without > 0.0)
        .map(|m| m.cost_with / m.cost_without)
        .collect();
    Comparison {
        points,
        matched,
        ratios,
    }
}

/// Switch margins the train side chooses from (besides affinity off).
pub const MARGINS: [f64; 5] = [0.0, 0.01, 0.02, 0.05, 0.1];

/// Per lambda of the grid, the setting ([`MARGINS`] or off) with the highest utility on
/// `train`; equal utilities (a quality-first policy values no cost) go to the cheaper
/// setting, then to off, then to the smaller margin.
fn choose_margins(train: &Trace) -> Vec<TrainChoice> {
    lambdas()
        .into_iter()
        .map(|lambda| {
            let without = train.run(lambda, None);
            let utility_without = without.utility(lambda);
            let mut best = (None, utility_without, without.cost_usd);
            for m in MARGINS {
                let o = train.run(lambda, Some(m));
                let u = o.utility(lambda);
                if u > best.1 || (u == best.1 && o.cost_usd < best.2) {
                    best = (Some(m), u, o.cost_usd);
                }
            }
            TrainChoice {
                lambda,
                switch_margin: best.0,
                utility: best.1,
                utility_without,
            }
        })
        .collect()
}

/// Runs the measurement.
pub fn evaluate_affinity(
    ds: &Dataset,
    opts: &AffinityOptions,
) -> Result<AffinityReport, EvalError> {
    if opts.turns < 2 {
        return Err(EvalError::Split("--turns must be at least 2".into()));
    }
    if !(0.0..=1.0).contains(&opts.cached_discount) {
        return Err(EvalError::Split(
            "--cached-discount must be in [0, 1]".into(),
        ));
    }
    let fitted = crate::fitted::Fitted::new(ds, opts.router, opts.featurizer, opts.seed)?;
    let catalog = &fitted.prepared.catalog;
    let trace_of = |records, pred, seed| {
        Trace::new(
            records,
            pred,
            seed,
            opts.turns,
            catalog,
            opts.cached_discount,
        )
    };
    // The margin at each lambda: given, or chosen on a train trace (out-of-fold
    // predictions) by the policy's utility.
    let (train_choices, margins) = match opts.switch_margin {
        Some(m) => (Vec::new(), vec![Some(m); lambdas().len()]),
        None => {
            let oof = crate::cascade::cross_fit(
                opts.router,
                &fitted.prepared.train_set,
                catalog,
                &fitted.cfg,
            )?;
            let train = trace_of(fitted.train.clone(), oof, opts.seed ^ 0xaff1);
            if train.conversations.is_empty() {
                return Err(EvalError::Split(
                    "no task has enough train prompts for one conversation (to choose the \
                     switch margin; or give --switch-margin)"
                        .into(),
                ));
            }
            let choices = choose_margins(&train);
            let margins = choices.iter().map(|c| c.switch_margin).collect();
            (choices, margins)
        }
    };
    let test_records: Vec<&Record> = fitted.test.clone();
    let (pred, _) = fitted.predict(&test_records);
    let trace = trace_of(test_records, pred, opts.seed);
    if trace.conversations.is_empty() {
        return Err(EvalError::Split(
            "no task has enough test prompts for one conversation".into(),
        ));
    }
    let c = compare(&trace, &margins);
    Ok(AffinityReport {
        router: opts.router.to_string(),
        conversations: trace.conversations.len(),
        turns: opts.turns,
        cached_discount: opts.cached_discount,
        switch_margin: opts.switch_margin,
        margin_chosen_on_train: opts.switch_margin.is_none(),
        train_choices,
        mean_cost_ratio_at_equal_quality: c.mean_ratio(),
        min_cost_ratio: c.ratios.iter().copied().reduce(f64::min),
        max_cost_ratio: c.ratios.iter().copied().reduce(f64::max),
        points: c.points,
        matched: c.matched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use routewise_data::{Answer, Split};

    /// One conversation of 4 turns over models a ($1/Mtok) and b ($2/Mtok), both always
    /// right; the predictions prefer a on two prompts and b on the other two by 0.1.
    fn records() -> Vec<Record> {
        (0..4)
            .map(|i| {
                let out = |per_mtok: f64| {
                    Some(routewise_data::Outcome {
                        score: 1.0,
                        cost_usd: 1100.0 * per_mtok / 1e6,
                        input_tokens: 1000,
                        output_tokens: 100,
                        answer: Answer::Absent,
                    })
                };
                crate::testing::record(i, Split::Train, vec![out(1.0), out(2.0)])
            })
            .collect()
    }

    #[test]
    fn the_margin_is_chosen_per_lambda_by_utility_then_cost() {
        let recs = records();
        let refs: Vec<&Record> = recs.iter().collect();
        let catalog =
            routewise_router::Catalog::fit(&["a".into(), "b".into()], refs.iter().copied());
        let pred: Vec<f64> = (0..4)
            .flat_map(|i| if i % 2 == 0 { [0.6, 0.5] } else { [0.5, 0.6] })
            .collect();
        let trace = Trace::new(refs, pred, 0, 4, &catalog, 0.5);
        assert_eq!(trace.conversations.len(), 1);
        let choices = choose_margins(&trace);
        assert_eq!(choices.len(), lambdas().len());
        // Quality first: every setting scores 1, so the cheapest wins; only a margin of
        // 0.1 holds the conversation against a gain of 0.1 (a switch needs more).
        let first = &choices[0];
        assert_eq!(first.lambda, 0.0);
        assert_eq!(first.switch_margin, Some(0.1), "{choices:?}");
        assert!(trace.run(0.0, Some(0.1)).cost_usd < trace.run(0.0, None).cost_usd);
        // At a huge lambda the router keeps to a every turn: nothing to hold, affinity off.
        assert_eq!(choices.last().map(|c| c.switch_margin), Some(None));
        for c in &choices {
            assert!(c.utility >= c.utility_without, "{c:?}");
            for m in MARGINS {
                assert!(
                    c.utility >= trace.run(c.lambda, Some(m)).utility(c.lambda),
                    "{c:?}"
                );
            }
        }
    }

    #[test]
    fn the_lambda_grid_starts_at_zero_and_rises_to_a_million() {
        let g = lambdas();
        assert_eq!(g[0], 0.0);
        assert!(g.windows(2).all(|w| w[0] < w[1]));
        assert!((g[g.len() - 1] / 1e6 - 1.0).abs() < 1e-9);
    }
}
