//! `routewise eval`: fit routers on the train split, evaluate them on the test split.
//!
//! Steps: load and validate the data; fit the featurizer and the model catalog (prices)
//! on the train prompts; fit each requested router plus the baselines (best-single,
//! cheapest, random); predict every test prompt; sweep CARROT's lambda over the grid of
//! [`routewise_eval::lambda_grid`] and charge each decision the chosen model's real test
//! outcome ([`routewise_eval::sweep`]); summarise each curve (AIQ and friends, and APGR /
//! CPT on 2-model data); print a table, and optionally write the JSON report and the SVG.
//!
//! Timings: `fit_seconds` is the router's fit alone (the featurizer's fit is reported
//! once, as `featurizer_fit_seconds`); `route_us_p50` is the median wall time of the
//! full routing path for one prompt (featurize + predict + expected costs + lambda
//! ranking), measured per prompt over up to [`TIMING_PROMPTS`] test prompts spread evenly
//! over the split.
//!
//! `--online` hands over to [`super::eval_online`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use routewise_data::{Dataset, Record};
use routewise_eval::metrics::router_metrics;
use routewise_eval::pairwise::pairwise_metrics;
use routewise_eval::plot::{render_svg, PlotInput};
use routewise_eval::{
    lambda_grid, sweep_lambda, CurvePoint, Outcomes, PairwiseMetrics, Point, Predictions,
};
use routewise_features::{AnyFeaturizer, Featurizer};
use routewise_router::{
    fit_router, AnyRouter, Catalog, Policy, Router, RouterConfigs, RouterKind, TrainSet,
};
use serde::Serialize;

/// Most test prompts timed per router for `route_us_p50`.
pub const TIMING_PROMPTS: usize = 500;

/// Baselines that every evaluation reports.
const BASELINES: [RouterKind; 3] = [
    RouterKind::BestSingle,
    RouterKind::Cheapest,
    RouterKind::Random,
];

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Routing dataset: canonical JSONL, or RouterBench wide CSV (by the `.csv` extension).
    #[arg(long)]
    pub data: PathBuf,
    /// Routers to fit, comma-separated (knn, linear, mlp, mf, ensemble); the baselines best-single,
    /// cheapest and random are always evaluated too.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "knn,linear,mlp,mf,ensemble"
    )]
    pub routers: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the quality-vs-cost SVG plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Keep only the first N prompts of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also report each router's realised (quality, cost) at this lambda.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Seed of the randomised routers and baselines.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt featurizer.
    #[arg(long, default_value = "tfidf")]
    pub featurizer: String,
    /// Number of log-spaced lambda values in the sweep (0 is always added).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(50..))]
    pub n_lambdas: u64,
    /// Replay the test split as an online stream instead (bandit learning).
    #[arg(long)]
    pub online: bool,
}

/// One single model on the test split.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub name: String,
    pub quality: f64,
    pub cost: f64,
}

/// One router's results (the shape, plus extra keys).
#[derive(Debug, Clone, Serialize)]
pub struct RouterRow {
    pub name: String,
    pub aiq: f64,
    pub max_quality: f64,
    pub cost_at_max_quality: f64,
    pub quality_at_best_single_cost: f64,
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
    /// Highest test quality among single models.
    pub best_single: ModelRow,
    /// `[c_min, c_max]`: the AIQ cost range (cheapest and most expensive single model).
    pub cost_range: [f64; 2],
    pub oracle: Point,
    /// AIQ of RouterBench's zero router: the non-decreasing convex hull of the single
    /// models' points (what mixing models at random, ignoring the prompt, achieves).
    pub zero_router_aiq: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<Pair>,
    pub routers: Vec<RouterRow>,
}

/// A progress bar (`len`) or spinner (`None`) on stderr, hidden when stderr is not a
/// terminal.
pub(crate) fn progress(len: Option<u64>, msg: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        let style = match len {
            Some(_) => ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
                .map(|s| s.progress_chars("=> ")),
            None => ProgressStyle::with_template("{spinner} {msg} {elapsed}"),
        };
        if let Ok(style) = style {
            pb.set_style(style);
        }
        if len.is_none() {
            pb.enable_steady_tick(Duration::from_millis(120));
        }
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_message(msg.to_string());
    pb
}

/// Loads the dataset, applying `--limit` per split.
pub(crate) fn load_dataset(
    path: &std::path::Path,
    limit: Option<usize>,
) -> anyhow::Result<Dataset> {
    let pb = progress(None, "loading data");
    let mut ds = Dataset::load(path)?;
    if let Some(n) = limit {
        ds.truncate_per_split(n);
    }
    pb.finish_and_clear();
    Ok(ds)
}

/// Parses the `--routers` list, keeping the order and dropping duplicates.
pub(crate) fn parse_routers(names: &[String]) -> anyhow::Result<Vec<RouterKind>> {
    let mut kinds: Vec<RouterKind> = Vec::new();
    for n in names.iter().filter(|n| !n.trim().is_empty()) {
        let k: RouterKind = n.parse()?;
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    for b in BASELINES {
        if !kinds.contains(&b) {
            kinds.push(b);
        }
    }
    Ok(kinds)
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

/// Runs `routewise eval`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.online {
        return super::eval_online::run(&args);
    }
    let kinds = parse_routers(&args.routers)?;
    let ds = load_dataset(&args.data, args.limit)?;
    let report = evaluate(&ds, &args, &kinds)?;

    let mut out = std::io::stdout().lock();
    write_table(&mut out, &report)?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.plot {
        let svg = render_svg(&plot_input(&report))?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The train and test records of `ds`; an error (naming `data`) when either split is empty.
pub fn split_records<'a>(
    ds: &'a Dataset,
    data: &std::path::Path,
) -> anyhow::Result<(Vec<&'a Record>, Vec<&'a Record>)> {
    let train: Vec<&Record> = ds.train().collect();
    let test: Vec<&Record> = ds.test().collect();
    if train.is_empty() || test.is_empty() {
        anyhow::bail!(
            "{}: need prompts in both splits (train {}, test {})",
            data.display(),
            train.len(),
            test.len()
        );
    }
    Ok((train, test))
}

/// Fits and evaluates every router in `kinds` on `ds`.
pub fn evaluate(ds: &Dataset, args: &Args, kinds: &[RouterKind]) -> anyhow::Result<Report> {
    let (train, test) = split_records(ds, &args.data)?;
    let n_models = ds.models.len();

    // Featurizer, training set, catalog.
    let pb = progress(None, &format!("fitting {} featurizer", args.featurizer));
    let t0 = Instant::now();
    let train_texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let featurizer = super::featurize::fit_featurizer(&args.featurizer, &train_texts)?;
    let featurizer_fit_seconds = t0.elapsed().as_secs_f64();
    pb.set_message("featurizing prompts");
    let train_set = TrainSet::from_records(&train, n_models, &featurizer);
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    let test_texts: Vec<&str> = test.iter().map(|r| r.prompt.as_str()).collect();
    let test_feats = featurizer.featurize_batch(&test_texts);
    let dim = featurizer.dim();
    let test_tokens: Vec<u32> = test.iter().map(|r| r.input_tokens()).collect();
    pb.finish_and_clear();

    // Test outcomes, singles, oracle, cost range, lambda grid.
    let outcomes = Outcomes::from_records(&test, n_models)?;
    let models: Vec<ModelRow> = outcomes
        .singles()
        .into_iter()
        .zip(&ds.models)
        .filter_map(|(p, name)| {
            p.map(|p| ModelRow {
                name: name.clone(),
                quality: p.quality,
                cost: p.cost,
            })
        })
        .collect();
    let best_single = models
        .iter()
        .max_by(|a, b| {
            a.quality
                .total_cmp(&b.quality)
                .then(b.cost.total_cmp(&a.cost))
        })
        .cloned()
        .context("no model has a test outcome")?;
    let c_min = models.iter().map(|m| m.cost).fold(f64::INFINITY, f64::min);
    let c_max = models
        .iter()
        .map(|m| m.cost)
        .fold(f64::NEG_INFINITY, f64::max);
    let model_costs: Vec<f64> = models.iter().map(|m| m.cost).collect();
    let mut lambdas = lambda_grid(&model_costs, args.n_lambdas as usize);
    if let Some(l) = args.lambda {
        if !lambdas.contains(&l) {
            lambdas.push(l);
        }
    }
    let best_point = Point {
        quality: best_single.quality,
        cost: best_single.cost,
    };

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
        seed: args.seed,
        ..RouterConfigs::default()
    };
    let mut routers = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        let pb = progress(None, &format!("fitting {kind}"));
        let t0 = Instant::now();
        let router = fit_router(kind, &train_set, &catalog, &cfg)?;
        let fit_seconds = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();

        let pb = progress(Some(test.len() as u64), &format!("predicting {kind}"));
        let mut scores = vec![0.0; test.len() * n_models];
        for (i, row) in scores.chunks_exact_mut(n_models).enumerate() {
            router.predict_scores(&test_feats[i * dim..(i + 1) * dim], row);
            if i % 64 == 0 {
                pb.set_position(i as u64);
            }
        }
        pb.finish_and_clear();
        let route_us_p50 = route_p50(&featurizer, &router, &catalog, &timing);

        let preds = Predictions {
            n_models,
            scores,
            costs: pred_costs.clone(),
        };
        let mut curve = sweep_lambda(&outcomes, &preds, &lambdas)?;
        let at_lambda = args
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
        routers.push(RouterRow {
            name: kind.to_string(),
            aiq: m.aiq,
            max_quality: m.max_quality,
            cost_at_max_quality: m.cost_at_max_quality,
            quality_at_best_single_cost: m.quality_at_best_single_cost,
            cost_ratio_at_best_single_quality: m.cost_ratio_at_best_single_quality,
            cost_ratio_at_best_single_quality_measured: m
                .cost_ratio_at_best_single_quality_measured,
            fit_seconds,
            route_us_p50,
            route_timing_prompts: timing.len(),
            pairwise,
            at_lambda,
            curve,
        });
    }

    let single_points: Vec<(f64, f64)> = models.iter().map(|m| (m.cost, m.quality)).collect();
    let zero_router_aiq = routewise_eval::aiq(&single_points, c_min, c_max);
    Ok(Report {
        dataset: ds.name.clone(),
        n_train: train.len(),
        n_test: test.len(),
        featurizer: featurizer.name().to_string(),
        featurizer_fit_seconds,
        seed: args.seed,
        models,
        best_single,
        cost_range: [c_min, c_max],
        oracle: outcomes.oracle(),
        zero_router_aiq,
        pair: pair.map(|(s, w)| Pair {
            strong: ds.models[s].clone(),
            weak: ds.models[w].clone(),
        }),
        routers,
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
    writeln!(out, "\n{:<34} {:>8} {:>12}", "model", "quality", "cost_usd")?;
    let mut models = r.models.clone();
    models.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    for m in &models {
        let mark = if m.name == r.best_single.name {
            " (best single)"
        } else {
            ""
        };
        writeln!(
            out,
            "{:<34} {:>8.4} {:>12.6}{mark}",
            m.name, m.quality, m.cost
        )?;
    }
    let pairwise = r.routers.iter().any(|x| x.pairwise.is_some());
    write!(
        out,
        "\n{:<12} {:>7} {:>8} {:>12} {:>10} {:>11} {:>8} {:>9}",
        "router", "AIQ", "max_q", "cost@max_q", "q@best_c", "cost_ratio", "fit_s", "route_us"
    )?;
    if pairwise {
        write!(out, " {:>6} {:>7} {:>7}", "APGR", "CPT50%", "CPT80%")?;
    }
    writeln!(out)?;
    for x in &r.routers {
        write!(
            out,
            "{:<12} {:>7.4} {:>8.4} {:>12.6} {:>10.4} {:>11} {:>8.3} {:>9.1}",
            x.name,
            x.aiq,
            x.max_quality,
            x.cost_at_max_quality,
            x.quality_at_best_single_cost,
            opt(x.cost_ratio_at_best_single_quality, 3),
            x.fit_seconds,
            x.route_us_p50
        )?;
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
        "{:<12} {:>7} {:>8.4} {:>12.6}",
        "oracle", "-", r.oracle.quality, r.oracle.cost
    )?;
    writeln!(
        out,
        "{:<12} {:>7.4}   (hull of the single models, RouterBench's zero router)",
        "zero-router", r.zero_router_aiq
    )?;
    writeln!(
        out,
        "\nAIQ over cost range [{:.6}, {:.6}] USD; cost_ratio = lowest cost reaching {} ({:.4}) / its cost {:.6}.",
        r.cost_range[0], r.cost_range[1], r.best_single.name, r.best_single.quality, r.best_single.cost
    )?;
    Ok(())
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
