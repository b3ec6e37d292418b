//! `routewise eval`, as a library: fit routers on the train split, evaluate them on the
//! test split, and report the way the field does.
//!
//! Steps of [`evaluate`]: measure the single models under the coverage rule
//! ([`crate::singles`]) and keep the test prompts every comparable model has; prepare the
//! training data once (`routewise_router::train::prepare`: featurizer, train set, catalog);
//! fit each requested router plus the baselines (best-single, cheapest, random); predict
//! every test prompt; sweep CARROT's lambda over [`crate::lambda_grid`] and charge each
//! decision the chosen model's real test outcome ([`crate::realise`]); summarise each
//! curve (AIQ and friends, APGR / CPT on 2-model data) with bootstrap standard errors
//! ([`crate::bootstrap`]); flag equal-price data (quality only). [`write_table`] prints
//! the summary; the report serialises to the `--json` shape; [`plot_input`] feeds the SVG.
//!
//! Timings: `fit_seconds` is the router's fit alone (the featurizer's fit is reported
//! once, as `featurizer_fit_seconds`); `route_us_p50` is the median wall time of the
//! full routing path for one prompt (featurize + predict + expected costs + lambda
//! ranking), measured per prompt over up to [`TIMING_PROMPTS`] test prompts spread evenly
//! over the split.

use std::io::Write;
use std::time::Instant;

use routewise_data::{Dataset, Record};
use routewise_features::{AnyFeaturizer, Featurizer, FeaturizerKind};
use routewise_router::{AnyRouter, Catalog, Policy, Router, RouterConfigs, RouterKind};
use serde::Serialize;

use crate::cascade::{CascadeRow, Family};
use crate::metrics::router_metrics;
use crate::pairwise::pairwise_metrics;
use crate::plot::PlotInput;
use crate::{
    bootstrap_aiq, lambda_grid, realise, CurvePoint, EvalError, Outcomes, PairwiseMetrics, Point,
    Predictions, Progress, Realised, SingleModel, Singles,
};

/// Most test prompts timed per router for `route_us_p50`.
pub const TIMING_PROMPTS: usize = 500;

/// Baselines that every evaluation reports.
pub const BASELINES: [RouterKind; 3] = [
    RouterKind::BestSingle,
    RouterKind::Cheapest,
    RouterKind::Random,
];

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Routers to fit, in order (the baselines are added when missing).
    pub routers: Vec<RouterKind>,
    pub featurizer: FeaturizerKind,
    /// Number of log-spaced lambda values in the sweep (0 is always added).
    pub n_lambdas: usize,
    /// Also report each router's realised point at this lambda.
    pub lambda: Option<f64>,
    /// Seeds the randomised routers and the bootstrap.
    pub seed: u64,
    /// Bootstrap resamples (0: off).
    pub bootstrap: usize,
    /// Also evaluate the cascade families ([`crate::cascade`]) on this router's
    /// predictions (`None`: no cascades).
    pub cascades: Option<RouterKind>,
}

/// The routers to evaluate: `kinds` in order without duplicates, then the baselines.
pub fn with_baselines(kinds: &[RouterKind]) -> Vec<RouterKind> {
    let mut out: Vec<RouterKind> = Vec::new();
    for &k in kinds.iter().chain(BASELINES.iter()) {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// One single model on the test split.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub name: String,
    /// Mean test score: on the common prompts for a comparable model, else on its own.
    pub quality: f64,
    /// Mean test cost per prompt, measured like `quality`.
    pub cost: f64,
    /// Share of the test prompts the model has a score on.
    pub coverage: f64,
    /// Test prompts the model has a score on.
    pub n_prompts: usize,
    /// Whether it takes part in the single-model comparison (coverage >= 95%).
    pub comparable: bool,
}

/// One router's results (the shape, plus extra keys).
#[derive(Debug, Clone, Serialize)]
pub struct RouterRow {
    pub name: String,
    pub aiq: f64,
    /// Bootstrap standard error of `aiq` (see `bootstrap` in the report).
    pub aiq_se: f64,
    /// Whether the gap to the router with the highest AIQ is within noise (paired
    /// bootstrap, 95%); true for that router itself.
    pub aiq_within_noise_of_best: bool,
    /// Realised test quality at lambda 0 (quality first), and its standard error.
    pub quality_first: f64,
    pub quality_first_se: f64,
    pub max_quality: f64,
    pub cost_at_max_quality: f64,
    pub quality_at_best_single_cost: f64,
    /// `null` when never reached, and on quality-only datasets (equal prices).
    pub cost_ratio_at_best_single_quality: Option<f64>,
    /// Same, over measured lambda points only (no mixing of two operating points).
    pub cost_ratio_at_best_single_quality_measured: Option<f64>,
    pub fit_seconds: f64,
    pub route_us_p50: f64,
    /// Test prompts timed for `route_us_p50`.
    pub route_timing_prompts: usize,
    /// APGR, CPT(50%), CPT(80%) (percent of strong calls): 2-model datasets only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pairwise: Option<PairwiseMetrics>,
    /// The realised point at `--lambda`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_lambda: Option<CurvePoint>,
    pub curve: Vec<CurvePoint>,
}

/// The strong/weak pair of a 2-model dataset.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub strong: String,
    pub weak: String,
}

/// How the AIQ standard errors were computed.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapInfo {
    pub resamples: usize,
    pub seed: u64,
}

/// The `--json` report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: String,
    pub n_train: usize,
    pub n_test: usize,
    pub featurizer: String,
    pub featurizer_fit_seconds: f64,
    pub seed: u64,
    pub models: Vec<ModelRow>,
    /// Highest test quality among the comparable single models, on the common prompts.
    pub best_single: ModelRow,
    /// Test prompts every figure (routers, single models, oracle) is computed on: those
    /// where every comparable model has a score (all of them, on complete data).
    pub eval_prompts: usize,
    /// `[c_min, c_max]`: the AIQ cost range (cheapest and most expensive comparable model).
    pub cost_range: [f64; 2],
    pub oracle: Point,
    /// AIQ of RouterBench's zero router: the non-decreasing convex hull of the single
    /// models' points (what mixing models at random, ignoring the prompt, achieves).
    pub zero_router_aiq: f64,
    /// Every model costs the same (equal prices, or a cost range under 1% of the top
    /// cost): cost metrics mean nothing, AIQ is plain quality; compare `quality_first`.
    pub quality_only: bool,
    pub bootstrap: BootstrapInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<Pair>,
    pub routers: Vec<RouterRow>,
    /// The cascade families (`eval --cascades`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cascades: Option<Vec<CascadeRow>>,
    /// What the reader should know before trusting the figures (data warnings, partial
    /// coverage of the most accurate model, equal prices, ...).
    pub warnings: Vec<String>,
}

/// Median wall time (microseconds) of routing one prompt end to end.
fn route_p50(
    featurizer: &AnyFeaturizer,
    router: &AnyRouter,
    catalog: &Catalog,
    prompts: &[(&str, u32)],
) -> f64 {
    let n = catalog.len();
    let mut feats = vec![0.0f32; featurizer.dim()];
    let (mut scores, mut costs, mut idx) = (vec![0.0; n], vec![0.0; n], Vec::with_capacity(n));
    let mut once = |text: &str, tokens: u32| {
        featurizer.featurize_into(text, &mut feats);
        router.predict_scores(&feats, &mut scores);
        catalog.expected_costs(tokens, &mut costs);
        Policy::Lambda(0.0).rank_into(&scores, &costs, &mut idx);
        std::hint::black_box(idx.first().copied())
    };
    if let Some(&(t, k)) = prompts.first() {
        once(t, k); // warm-up
    }
    let mut times: Vec<f64> = prompts
        .iter()
        .map(|&(t, k)| {
            let start = Instant::now();
            once(t, k);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    median(&mut times)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// The train and test records of `ds`; an error when either split is empty.
pub fn split_records(ds: &Dataset) -> Result<(Vec<&Record>, Vec<&Record>), EvalError> {
    let train: Vec<&Record> = ds.train().collect();
    let test: Vec<&Record> = ds.test().collect();
    if train.is_empty() || test.is_empty() {
        return Err(EvalError::Split(format!(
            "{}: need prompts in both splits (train {}, test {})",
            ds.name,
            train.len(),
            test.len()
        )));
    }
    Ok((train, test))
}

/// Relative spread of the single models' mean costs under which cost metrics mean nothing.
const EQUAL_COST_SPREAD: f64 = 0.01;

/// Why cost metrics mean nothing on this data, if they do not: every model has the same
/// fitted prices, or the cheapest and the dearest comparable model cost within 1%.
fn quality_only_reason(catalog: &Catalog, c_min: f64, c_max: f64) -> Option<String> {
    let first = catalog.models.first()?;
    if catalog.models.len() == 1 {
        return Some(format!(
            "the data has one model ({}): there is nothing to route between; reporting its \
             quality only",
            first.name
        ));
    }
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-12);
    if catalog.models.iter().all(|m| {
        same(m.input_per_mtok, first.input_per_mtok)
            && same(m.output_per_mtok, first.output_per_mtok)
    }) {
        return Some(format!(
            "every model has the same price (${:.4} in / ${:.4} out per million tokens): cost \
             differences are only output length, so cost metrics are not meaningful; reporting \
             quality only (compare quality_first; AIQ reduces to quality)",
            first.input_per_mtok, first.output_per_mtok
        ));
    }
    if c_max <= 0.0 || c_max - c_min <= EQUAL_COST_SPREAD * c_max {
        return Some(format!(
            "the single models' mean costs span only [{c_min:.6}, {c_max:.6}] USD: cost metrics \
             are not meaningful; reporting quality only (compare quality_first; AIQ reduces to \
             quality)"
        ));
    }
    None
}

/// Mean and standard error of a sample.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Fits and evaluates every router of `opts` (and the baselines) on `ds`.
pub fn evaluate(
    ds: &Dataset,
    opts: &EvalOptions,
    progress: &dyn Progress,
) -> Result<Report, EvalError> {
    let kinds = with_baselines(&opts.routers);
    let (train, all_test) = split_records(ds)?;
    let n_models = ds.models.len();
    let featurizer_kind = opts.featurizer;

    // Single models on the prompts that every comparable model covers; every figure
    // (routers, singles, oracle) is computed on those prompts.
    let singles = Singles::of(&Outcomes::from_records(&all_test, n_models)?);
    let test: Vec<&Record> = all_test
        .iter()
        .zip(&singles.coverage.common)
        .filter(|(_, &common)| common)
        .map(|(r, _)| *r)
        .collect();
    let eval_coverage = singles.coverage.restricted_to_common();

    // Featurizer, training set, catalog: the one training pipeline.
    progress.start(&format!("preparing ({featurizer_kind} featurizer)"), None);
    let prepared = routewise_router::prepare(&ds.models, &train, featurizer_kind)?;
    let (featurizer, catalog) = (&prepared.featurizer, &prepared.catalog);
    let featurizer_fit_seconds = prepared.featurizer_seconds;
    let test_texts: Vec<&str> = test.iter().map(|r| r.prompt.as_str()).collect();
    let test_feats = featurizer.featurize_batch(&test_texts);
    let dim = featurizer.dim();
    let test_tokens: Vec<u32> = test.iter().map(|r| r.input_tokens()).collect();
    progress.finish();

    // Test outcomes, oracle, cost range, lambda grid.
    let outcomes = Outcomes::from_records(&test, n_models)?;
    let mut warnings = ds.warnings.clone();
    warnings.extend(singles.warnings(&ds.models));
    warnings.extend(
        crate::leakage::copy_shares(&prepared.train_set.features, &test_feats, dim, opts.seed)
            .warning(),
    );
    let row = |s: &SingleModel| ModelRow {
        name: ds.models[s.model].clone(),
        quality: s.point.quality,
        cost: s.point.cost,
        coverage: s.coverage,
        n_prompts: s.n_prompts,
        comparable: s.comparable,
    };
    let models: Vec<ModelRow> = singles.models.iter().map(row).collect();
    let best = singles
        .best()
        .ok_or_else(|| EvalError::Split("no model has a test outcome".into()))?;
    let best_single = row(best);
    let comparable_costs: Vec<f64> = singles.comparable().map(|s| s.point.cost).collect();
    let c_min = comparable_costs
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let c_max = comparable_costs
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let quality_only = quality_only_reason(catalog, c_min, c_max);
    warnings.extend(quality_only.clone());
    let mut lambdas = lambda_grid(&comparable_costs, opts.n_lambdas);
    if let Some(l) = opts.lambda {
        if !lambdas.contains(&l) {
            lambdas.push(l);
        }
    }
    let best_point = best.point;

    // 2-model datasets: strong = the more expensive model on the test split.
    let pair = (n_models == 2)
        .then(|| {
            let (a, b) = (outcomes.single(0)?, outcomes.single(1)?);
            Some(if (a.cost, a.quality) >= (b.cost, b.quality) {
                (0, 1)
            } else {
                (1, 0)
            })
        })
        .flatten();

    let mut pred_costs = vec![0.0; test.len() * n_models];
    for (row, &tok) in pred_costs.chunks_exact_mut(n_models).zip(&test_tokens) {
        catalog.expected_costs(tok, row);
    }
    let step = test.len().div_ceil(TIMING_PROMPTS).max(1);
    let timing: Vec<(&str, u32)> = (0..test.len())
        .step_by(step)
        .map(|i| (test_texts[i], test_tokens[i]))
        .collect();

    let cfg = RouterConfigs {
        seed: opts.seed,
        ..RouterConfigs::default()
    };
    let mut routers = Vec::with_capacity(kinds.len());
    let mut realised = Vec::with_capacity(kinds.len());
    // The cascades' router's test predictions, kept when it is one of those evaluated.
    let mut cascade_pred = None;
    for &kind in &kinds {
        progress.start(&format!("fitting {kind}"), None);
        let t0 = Instant::now();
        let router = prepared.fit(kind, &cfg)?;
        let fit_seconds = t0.elapsed().as_secs_f64();
        progress.finish();

        progress.start(&format!("predicting {kind}"), Some(test.len() as u64));
        let mut scores = vec![0.0; test.len() * n_models];
        for (i, row) in scores.chunks_exact_mut(n_models).enumerate() {
            router.predict_scores_keyed(&test_feats[i * dim..(i + 1) * dim], &test[i].id, row);
            if i % 64 == 0 {
                progress.set_position(i as u64);
            }
        }
        progress.finish();
        let route_us_p50 = route_p50(featurizer, &router, catalog, &timing);
        if opts.cascades == Some(kind) {
            cascade_pred = Some(scores.clone());
        }

        let preds = Predictions {
            n_models,
            scores,
            costs: pred_costs.clone(),
            fixed_ranking: router.fixed_ranking(),
        };
        let r = realise(&outcomes, &preds, &lambdas)?;
        let mut curve = r.curve();
        let at_lambda = opts
            .lambda
            .and_then(|l| curve.iter().find(|p| p.lambda == l).copied());
        curve.sort_by(|a, b| a.lambda.total_cmp(&b.lambda));
        let m = router_metrics(&curve, best_point, c_min, c_max);
        let pairwise = pair.and_then(|(s, w)| {
            let wins: Vec<f64> = preds
                .scores
                .chunks_exact(n_models)
                .map(|r| r[s] - r[w])
                .collect();
            pairwise_metrics(&outcomes, &wins, s, w)
        });
        let (quality_first, quality_first_se) = mean_se(r.scores_at(0));
        let cost_ratio = |v: Option<f64>| v.filter(|_| quality_only.is_none());
        routers.push(RouterRow {
            name: kind.to_string(),
            aiq: m.aiq,
            aiq_se: 0.0,
            aiq_within_noise_of_best: false,
            quality_first,
            quality_first_se,
            max_quality: m.max_quality,
            cost_at_max_quality: m.cost_at_max_quality,
            quality_at_best_single_cost: m.quality_at_best_single_cost,
            cost_ratio_at_best_single_quality: cost_ratio(m.cost_ratio_at_best_single_quality),
            cost_ratio_at_best_single_quality_measured: cost_ratio(
                m.cost_ratio_at_best_single_quality_measured,
            ),
            fit_seconds,
            route_us_p50,
            route_timing_prompts: timing.len(),
            pairwise,
            at_lambda,
            curve,
        });
        realised.push(r);
    }

    // AIQ noise: a seeded paired bootstrap over the test prompts.
    let aiqs: Vec<f64> = routers.iter().map(|r| r.aiq).collect();
    if opts.bootstrap > 0 && !routers.is_empty() {
        progress.start(&format!("bootstrap ({} resamples)", opts.bootstrap), None);
        let refs: Vec<&Realised> = realised.iter().collect();
        let noise = bootstrap_aiq(
            &outcomes,
            &eval_coverage,
            &refs,
            &aiqs,
            opts.bootstrap,
            opts.seed,
        );
        for (i, r) in routers.iter_mut().enumerate() {
            r.aiq_se = noise.se[i];
            r.aiq_within_noise_of_best = noise.within_noise_of_best[i];
        }
        progress.finish();
    }

    let cascades = match opts.cascades {
        None => None,
        // A cascade checks the answers it gets; with none recorded in train it has nothing
        // to learn an acceptor from (and on prompts without answers it routes plainly).
        Some(_) if !train.iter().any(|r| r.has_answers()) => {
            warnings.push(
                "--cascades: no train prompt records a model answer (`models.<name>.answer`), \
                 so a cascade has nothing to check and would only route plainly; none is \
                 reported"
                    .to_string(),
            );
            Some(Vec::new())
        }
        Some(kind) => {
            progress.start(&format!("cascades on {kind}"), None);
            // The cascades' router on the eval's featurizer and on TF-IDF (lexical
            // neighbours: near-duplicate questions tell whether a cheap model gets one
            // right), each family keeping the one that does better on train.
            let mut featurized = vec![crate::cascade::Featurized {
                prepared: &prepared,
                test_feats: &test_feats,
                test_pred: cascade_pred.take(),
            }];
            let tfidf = if opts.featurizer == FeaturizerKind::Tfidf {
                None
            } else {
                let p = routewise_router::prepare(&ds.models, &train, FeaturizerKind::Tfidf)?;
                let feats = p.featurizer.featurize_batch(&test_texts);
                Some((p, feats))
            };
            if let Some((p, feats)) = &tfidf {
                featurized.push(crate::cascade::Featurized {
                    prepared: p,
                    test_feats: feats,
                    test_pred: None,
                });
            }
            let rows = crate::cascade::evaluate_cascades(
                featurized,
                &train,
                &test,
                &pred_costs,
                kind,
                &cfg,
                &lambdas,
                best_point,
                (c_min, c_max),
                &ds.models,
            )?;
            progress.finish();
            for family in [Family::Chain, Family::Agreement] {
                if !rows.iter().any(|r| r.family == family) {
                    warnings.push(family.missing_warning());
                }
            }
            Some(rows)
        }
    };

    let single_points: Vec<(f64, f64)> = singles
        .comparable()
        .map(|s| (s.point.cost, s.point.quality))
        .collect();
    let zero_router_aiq = crate::aiq(&single_points, c_min, c_max);
    Ok(Report {
        dataset: ds.name.clone(),
        n_train: train.len(),
        n_test: all_test.len(),
        featurizer: featurizer.name().to_string(),
        featurizer_fit_seconds,
        seed: opts.seed,
        models,
        best_single,
        eval_prompts: test.len(),
        cost_range: [c_min, c_max],
        oracle: outcomes.oracle(),
        zero_router_aiq,
        quality_only: quality_only.is_some(),
        bootstrap: BootstrapInfo {
            resamples: opts.bootstrap,
            seed: opts.seed,
        },
        pair: pair.map(|(s, w)| Pair {
            strong: ds.models[s].clone(),
            weak: ds.models[w].clone(),
        }),
        routers,
        cascades,
        warnings,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// Prints the human-readable summary.
pub fn write_table(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "dataset {}: {} train / {} test prompts, {} models, featurizer {} (fit {:.2} s)",
        r.dataset,
        r.n_train,
        r.n_test,
        r.models.len(),
        r.featurizer,
        r.featurizer_fit_seconds
    )?;
    let w = r
        .models
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "\n{:<w$} {:>8} {:>12} {:>9}",
        "model", "quality", "cost_usd", "coverage"
    )?;
    let mut models = r.models.clone();
    models.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    for m in &models {
        let mark = if m.name == r.best_single.name {
            " (best single)"
        } else if !m.comparable {
            " (not compared: under 95% coverage; quality on its own prompts)"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<w$} {:>8.4} {:>12.6} {:>8.1}%{mark}",
            m.name,
            m.quality,
            m.cost,
            m.coverage * 100.0
        )?;
    }
    let rw = r
        .routers
        .iter()
        .map(|x| x.name.len())
        .chain([11])
        .max()
        .unwrap_or(11);
    let pairwise = r.routers.iter().any(|x| x.pairwise.is_some());
    let best_aiq = r
        .routers
        .iter()
        .map(|x| x.aiq)
        .fold(f64::NEG_INFINITY, f64::max);
    let mark = |x: &RouterRow| {
        if r.bootstrap.resamples == 0 {
            " "
        } else if x.aiq == best_aiq {
            "*"
        } else if x.aiq_within_noise_of_best {
            "~"
        } else {
            " "
        }
    };
    if r.quality_only {
        write!(
            out,
            "\n{:<rw$} {:>9} {:>7} {:>8} {:>10} {:>8} {:>9}",
            "router", "quality", "se", "max_q", "vs_best_1", "fit_s", "route_us"
        )?;
    } else {
        write!(
            out,
            "\n{:<rw$} {:>7} {:>7}  {:>8} {:>12} {:>10} {:>11} {:>8} {:>9}",
            "router",
            "AIQ",
            "se",
            "max_q",
            "cost@max_q",
            "q@best_c",
            "cost_ratio",
            "fit_s",
            "route_us"
        )?;
    }
    if pairwise {
        write!(out, " {:>6} {:>7} {:>7}", "APGR", "CPT50%", "CPT80%")?;
    }
    writeln!(out)?;
    for x in &r.routers {
        if r.quality_only {
            write!(
                out,
                "{:<rw$} {:>9.4} {:>7.4} {:>8.4} {:>+10.4} {:>8.3} {:>9.1}",
                x.name,
                x.quality_first,
                x.quality_first_se,
                x.max_quality,
                x.quality_first - r.best_single.quality,
                x.fit_seconds,
                x.route_us_p50
            )?;
        } else {
            write!(
                out,
                "{:<rw$} {:>7.4} {:>7.4}{} {:>8.4} {:>12.6} {:>10.4} {:>11} {:>8.3} {:>9.1}",
                x.name,
                x.aiq,
                x.aiq_se,
                mark(x),
                x.max_quality,
                x.cost_at_max_quality,
                x.quality_at_best_single_cost,
                opt(x.cost_ratio_at_best_single_quality, 3),
                x.fit_seconds,
                x.route_us_p50
            )?;
        }
        if let Some(p) = &x.pairwise {
            write!(
                out,
                " {:>6.3} {:>7} {:>7}",
                p.apgr,
                opt(p.cpt50, 1),
                opt(p.cpt80, 1)
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{:<rw$} {:>7} {:>7}  {:>8.4} {:>12.6}",
        "oracle", "-", "", r.oracle.quality, r.oracle.cost
    )?;
    match &r.cascades {
        Some(cascades) if !cascades.is_empty() => write_cascades(out, cascades)?,
        Some(_) => writeln!(out, "\ncascades: none (see the warnings)")?,
        None => {}
    }
    if !r.quality_only {
        writeln!(
            out,
            "{:<rw$} {:>7.4}           (hull of the single models, RouterBench's zero router)",
            "zero-router", r.zero_router_aiq
        )?;
    }
    writeln!(out)?;
    if r.quality_only {
        writeln!(
            out,
            "Quality only (cost metrics mean nothing here; see the warning): quality = \
             realised test quality at lambda 0 (se: standard error over prompts); vs_best_1 = quality minus the best single model's \
             ({}, {:.4}).",
            r.best_single.name, r.best_single.quality
        )?;
    } else {
        writeln!(
            out,
            "AIQ over cost range [{:.6}, {:.6}] USD; se = bootstrap standard error ({} resamples \
             of the test prompts); * = highest AIQ, ~ = within noise of it (paired bootstrap, 95%).",
            r.cost_range[0], r.cost_range[1], r.bootstrap.resamples
        )?;
        writeln!(
            out,
            "cost_ratio = lowest cost at which the router's frontier reaches {} ({:.4}), over its \
             cost {:.6}; - = never reaches it.",
            r.best_single.name, r.best_single.quality, r.best_single.cost
        )?;
    }
    writeln!(
        out,
        "Evaluated on the {} of {} test prompts that every model with >= 95% coverage has; \
         best-single and cheapest always route to one model (fixed baselines).",
        r.eval_prompts, r.n_test
    )?;
    Ok(())
}

/// The cascade rows of the table.
fn write_cascades(out: &mut impl Write, rows: &[CascadeRow]) -> std::io::Result<()> {
    writeln!(
        out,
        "\n{:<18} {:>7} {:>8} {:>10} {:>11} {:>11} {:>9} {:>6}  tier",
        "cascade", "AIQ", "max_q", "q@best_c", "cost_ratio", "ratio@95%", "train_AIQ", "plain"
    )?;
    for c in rows {
        writeln!(
            out,
            "{:<18} {:>7.4} {:>8.4} {:>10.4} {:>11} {:>11} {:>9.4} {:>6}  {} (router: {} on {})",
            c.name,
            c.aiq,
            c.max_quality,
            c.quality_at_best_single_cost,
            opt(c.cost_ratio_at_best_single_quality, 3),
            opt(c.cost_ratio_at_95pct, 3),
            c.train_aiq,
            c.prompts_without_answers,
            c.tier.join(" -> "),
            c.router,
            c.featurizer
        )?;
    }
    writeln!(
        out,
        "Cascades: operating points (tier, rule, lambdas) chosen on train's cross-fitted \
         predictions, each run once on test; the router's featurizer (the eval's or tfidf) \
         chosen per family by train AIQ; ratio@95% = cost ratio at 95% of the best single \
         model's quality; plain = test prompts without recorded answers, routed plainly \
         (at their own lambda, chosen on train)."
    )
}

/// The plot's series from a report.
pub fn plot_input(r: &Report) -> PlotInput {
    PlotInput {
        title: format!(
            "{}: test quality vs cost ({} test prompts)",
            r.dataset, r.n_test
        ),
        curves: r
            .routers
            .iter()
            .map(|x| {
                (
                    x.name.clone(),
                    x.curve.iter().map(|p| (p.cost, p.quality)).collect(),
                )
            })
            .chain(r.cascades.iter().flatten().map(|c| {
                (
                    c.name.clone(),
                    c.curve.iter().map(|p| (p[0], p[1])).collect(),
                )
            }))
            .collect(),
        singles: r
            .models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    Point {
                        quality: m.quality,
                        cost: m.cost,
                    },
                )
            })
            .collect(),
        oracle: Some(r.oracle),
    }
}
