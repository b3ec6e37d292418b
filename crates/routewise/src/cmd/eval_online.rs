//! `routewise eval --online`: replays the test prompts as a stream through the bandit
//! router (routewise-online), warm-started from an offline router fitted on the train
//! split, and reports cumulative regret against the oracle and the offline router.
//!
//! Steps: fit the featurizer, the catalog and the offline router (the first learned
//! router of `--routers`, default `knn`) on train; predict every test prompt once (prior
//! scores, expected costs) and project its features to the bandit context; then
//! [`routewise_online::replay::replay`] the test split [`PASSES`] times in seeded orders
//! (`--seed`) three ways: stationary, with one model's scores dropping by 0.3 halfway,
//! and with that model's price tripling halfway. The bandit uses LinUCB with the default
//! [`BanditConfig`] (overridable as JSON in the `ROUTEWISE_BANDIT` environment variable)
//! at `--lambda` (default 0); a Thompson-sampling run is reported too.
//! Output: a table on stdout, `--json` (the `online` object), `--plot` (regret SVG).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use routewise_features::Featurizer;
use routewise_online::plot::render_regret_svg;
use routewise_online::replay::{replay, DriftSpec, ReplayData, ReplayOptions, ReplayResult};
use routewise_online::{Algorithm, BanditConfig, Projector};
use routewise_router::{fit_router, Catalog, Router, RouterConfigs, RouterKind, TrainSet};
use serde::Serialize;

/// Passes over the test split (each in a fresh seeded order): the split alone is a few
/// hundred to a few thousand prompts, short for a bandit; prompts repeat across passes.
pub const PASSES: usize = 4;
/// The drift scenario's score drop.
pub const SCORE_DROP: f64 = 0.3;
/// The price drift scenario's cost factor.
pub const PRICE_FACTOR: f64 = 3.0;

#[derive(Serialize)]
struct DriftReport {
    kind: &'static str,
    model: String,
    score_drop: f64,
    price_factor: f64,
    change_step: usize,
    bandit_mean_reward_after: f64,
    offline_mean_reward_after: f64,
    oracle_mean_reward_after: f64,
    bandit_mean_reward: f64,
    offline_mean_reward: f64,
    regret_per_step_before: f64,
    regret_per_step_after: f64,
    regret_per_step_last_quarter: f64,
    regret_curve: Vec<(usize, f64)>,
    regret_vs_offline_curve: Vec<(usize, f64)>,
}

#[derive(Serialize)]
struct AlgoSummary {
    bandit_mean_reward: f64,
    offline_mean_reward: f64,
    final_regret: f64,
    final_regret_vs_offline: f64,
    drift_bandit_mean_reward_after: f64,
    drift_offline_mean_reward_after: f64,
}

#[derive(Serialize)]
struct OnlineReport {
    dataset: String,
    offline_router: String,
    featurizer: String,
    test_prompts: usize,
    passes: usize,
    seed: u64,
    steps: usize,
    lambda: f64,
    algorithm: &'static str,
    bandit_config: BanditConfig,
    bandit_mean_reward: f64,
    offline_mean_reward: f64,
    oracle_mean_reward: f64,
    final_regret: f64,
    final_regret_vs_offline: f64,
    departure_rate: f64,
    regret_curve: Vec<(usize, f64)>,
    regret_vs_offline_curve: Vec<(usize, f64)>,
    drift: DriftReport,
    drift_price: DriftReport,
    thompson: AlgoSummary,
}

fn drift_report(
    kind: &'static str,
    spec: DriftSpec,
    r: &ReplayResult,
    models: &[String],
) -> DriftReport {
    DriftReport {
        kind,
        model: r
            .drifted_model
            .and_then(|m| models.get(m).cloned())
            .unwrap_or_default(),
        score_drop: spec.score_drop,
        price_factor: spec.price_factor,
        change_step: r.change_step.unwrap_or(0),
        bandit_mean_reward_after: r.bandit_mean_reward_after,
        offline_mean_reward_after: r.offline_mean_reward_after,
        oracle_mean_reward_after: r.oracle_mean_reward_after,
        bandit_mean_reward: r.bandit_mean_reward,
        offline_mean_reward: r.offline_mean_reward,
        regret_per_step_before: r.regret_per_step_before,
        regret_per_step_after: r.regret_per_step_after,
        regret_per_step_last_quarter: r.regret_per_step_last_quarter,
        regret_curve: r.regret_curve.clone(),
        regret_vs_offline_curve: r.regret_vs_offline_curve.clone(),
    }
}

/// Offline regret vs the oracle: `(oracle - bandit) - (offline - bandit)`.
fn offline_curve(r: &ReplayResult) -> Vec<(usize, f64)> {
    r.regret_curve
        .iter()
        .zip(&r.regret_vs_offline_curve)
        .map(|(&(s, a), &(_, b))| (s, a - b))
        .collect()
}

/// Runs the online replay evaluation for `routewise eval --online`.
pub fn run(args: &super::eval::Args) -> anyhow::Result<ExitCode> {
    let ds = super::eval::load_dataset(&args.data, args.limit)?;
    let (train, test) = super::eval::split_records(&ds, &args.data)?;
    let kind = super::eval::parse_routers(&args.routers)?
        .into_iter()
        .find(|k| RouterKind::ALL_LEARNED.contains(k))
        .unwrap_or(RouterKind::Knn);
    let n_models = ds.models.len();
    let train_texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
    let featurizer = args.featurizer.0.fit(&train_texts)?;
    let train_set = TrainSet::from_records(&train, n_models, &featurizer);
    let catalog = Catalog::fit(&ds.models, train.iter().copied());
    let router_cfg = RouterConfigs {
        seed: args.seed,
        ..RouterConfigs::default()
    };
    let router = fit_router(kind, &train_set, &catalog, &router_cfg)?;

    let lambda = args.lambda.unwrap_or(0.0);
    if !(lambda.is_finite() && lambda >= 0.0) {
        anyhow::bail!("--lambda must be finite and >= 0, got {lambda}");
    }
    // Bandit hyper-parameters: the defaults, or a JSON object of `BanditConfig` fields in
    // ROUTEWISE_BANDIT (e.g. '{"alpha": 0.1, "forgetting": 0.99}'); lambda and seed come
    // from the command line.
    let base_cfg: BanditConfig = match std::env::var("ROUTEWISE_BANDIT") {
        Ok(s) if !s.trim().is_empty() => {
            serde_json::from_str(&s).context("ROUTEWISE_BANDIT is not a valid bandit config")?
        }
        _ => BanditConfig::default(),
    };
    let config = BanditConfig {
        lambda,
        seed: args.seed,
        ..base_cfg
    };
    config.validate().map_err(anyhow::Error::msg)?;

    // Predict every test prompt once: prior scores, expected costs, bandit context.
    let projector = Projector::new(featurizer.dim(), config.dim, config.projection_seed);
    let k = n_models;
    let n = test.len();
    let mut data = ReplayData {
        n_models: k,
        contexts: Vec::with_capacity(n),
        prior_scores: vec![0.0; n * k],
        expected_costs: vec![0.0; n * k],
        scores: vec![f64::NAN; n * k],
        costs: vec![f64::NAN; n * k],
    };
    let mut feats = vec![0.0f32; featurizer.dim()];
    for (i, r) in test.iter().enumerate() {
        featurizer.featurize_into(&r.prompt, &mut feats);
        router.predict_scores(&feats, &mut data.prior_scores[i * k..(i + 1) * k]);
        catalog.expected_costs(
            r.input_tokens(),
            &mut data.expected_costs[i * k..(i + 1) * k],
        );
        data.contexts.push(projector.context(&feats));
        for (m, o) in r.outcomes.iter().take(k).enumerate() {
            if let Some(o) = o {
                data.scores[i * k + m] = o.score;
                data.costs[i * k + m] = o.cost_usd;
            }
        }
    }

    let opts = |drift| ReplayOptions {
        passes: PASSES,
        seed: args.seed,
        drift,
        curve_points: 200,
    };
    let score_drift = DriftSpec {
        score_drop: SCORE_DROP,
        price_factor: 1.0,
    };
    let price_drift = DriftSpec {
        score_drop: 0.0,
        price_factor: PRICE_FACTOR,
    };
    let base = replay(&data, &config, &opts(None));
    let drift = replay(&data, &config, &opts(Some(score_drift)));
    let drift_price = replay(&data, &config, &opts(Some(price_drift)));
    let ts_config = BanditConfig {
        algorithm: Algorithm::Thompson,
        ..config.clone()
    };
    let ts = replay(&data, &ts_config, &opts(None));
    let ts_drift = replay(&data, &ts_config, &opts(Some(score_drift)));

    let report = OnlineReport {
        dataset: ds.name.clone(),
        offline_router: kind.name().to_string(),
        featurizer: featurizer.name().to_string(),
        test_prompts: n,
        passes: PASSES,
        seed: args.seed,
        steps: base.steps,
        lambda,
        algorithm: "linucb",
        bandit_config: config.clone(),
        bandit_mean_reward: base.bandit_mean_reward,
        offline_mean_reward: base.offline_mean_reward,
        oracle_mean_reward: base.oracle_mean_reward,
        final_regret: base.final_regret,
        final_regret_vs_offline: base.final_regret_vs_offline,
        departure_rate: base.departure_rate,
        regret_curve: base.regret_curve.clone(),
        regret_vs_offline_curve: base.regret_vs_offline_curve.clone(),
        drift: drift_report("score_drop", score_drift, &drift, &ds.models),
        drift_price: drift_report("price_factor", price_drift, &drift_price, &ds.models),
        thompson: AlgoSummary {
            bandit_mean_reward: ts.bandit_mean_reward,
            offline_mean_reward: ts.offline_mean_reward,
            final_regret: ts.final_regret,
            final_regret_vs_offline: ts.final_regret_vs_offline,
            drift_bandit_mean_reward_after: ts_drift.bandit_mean_reward_after,
            drift_offline_mean_reward_after: ts_drift.offline_mean_reward_after,
        },
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "online replay on {}: {} test prompts x {} passes = {} steps, lambda {}, offline router {} ({}), bandit linucb",
        report.dataset, n, PASSES, report.steps, lambda, report.offline_router, report.featurizer
    )?;
    writeln!(
        out,
        "{:<34} {:>10} {:>10} {:>10}",
        "scenario (mean reward)", "bandit", "offline", "oracle"
    )?;
    let row = |out: &mut std::io::StdoutLock, name: &str, b: f64, o: f64, x: f64| {
        writeln!(out, "{name:<34} {b:>10.4} {o:>10.4} {x:>10.4}")
    };
    row(
        &mut out,
        "stationary",
        base.bandit_mean_reward,
        base.offline_mean_reward,
        base.oracle_mean_reward,
    )?;
    row(
        &mut out,
        "stationary (thompson)",
        ts.bandit_mean_reward,
        ts.offline_mean_reward,
        ts.oracle_mean_reward,
    )?;
    let dname = &report.drift.model;
    row(
        &mut out,
        &format!("after score drop 0.3 ({dname})"),
        drift.bandit_mean_reward_after,
        drift.offline_mean_reward_after,
        drift.oracle_mean_reward_after,
    )?;
    row(
        &mut out,
        "after score drop (thompson)",
        ts_drift.bandit_mean_reward_after,
        ts_drift.offline_mean_reward_after,
        ts_drift.oracle_mean_reward_after,
    )?;
    row(
        &mut out,
        &format!("after price x3 ({})", report.drift_price.model),
        drift_price.bandit_mean_reward_after,
        drift_price.offline_mean_reward_after,
        drift_price.oracle_mean_reward_after,
    )?;
    writeln!(
        out,
        "final regret vs oracle {:.2}, vs offline {:.2}; drift regret/step before {:.4}, after {:.4}, last quarter {:.4}",
        base.final_regret,
        base.final_regret_vs_offline,
        drift.regret_per_step_before,
        drift.regret_per_step_after,
        drift.regret_per_step_last_quarter
    )?;

    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&serde_json::json!({ "online": report }))?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.plot {
        let curves = vec![
            ("bandit (stationary)".to_string(), base.regret_curve.clone()),
            (
                format!("offline {} (stationary)", report.offline_router),
                offline_curve(&base),
            ),
            (
                "bandit (score drift)".to_string(),
                drift.regret_curve.clone(),
            ),
            (
                format!("offline {} (score drift)", report.offline_router),
                offline_curve(&drift),
            ),
        ];
        let title = format!(
            "{}: cumulative regret, lambda {lambda}, {} steps",
            report.dataset, report.steps
        );
        let svg =
            render_regret_svg(&title, &curves, drift.change_step).map_err(anyhow::Error::msg)?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
