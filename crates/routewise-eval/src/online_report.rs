//! `routewise eval --online`, as a library: replays the test prompts as a stream through
//! the bandit router (`routewise-online`), warm-started from an offline router fitted on
//! the train split, and reports cumulative regret against the oracle and the offline
//! router.
//!
//! Steps of [`evaluate_online`]: prepare the training data and fit the offline router
//! (the one training pipeline, `routewise_router::prepare`); predict every test prompt once
//! (prior scores, expected costs) and project its features to the bandit context; then
//! [`crate::online::replay`] the test split [`PASSES`] times in seeded orders three ways:
//! stationary, with one model's scores dropping by [`SCORE_DROP`] halfway, and with that
//! model's price multiplied by [`PRICE_FACTOR`] halfway. The bandit (LinUCB by default)
//! decides and is rewarded at the policy's lambda; a Thompson-sampling run is reported too.
//! [`write_online_table`] prints the summary, [`regret_svg`] draws the regret curves.

use std::io::Write;

use routewise_data::Dataset;
use routewise_features::{Featurizer, FeaturizerKind};
use routewise_online::{Algorithm, BanditConfig, Projector};
use routewise_router::{Router, RouterConfigs, RouterKind};
use serde::Serialize;

use crate::online::{replay, DriftSpec, ReplayData, ReplayOptions, ReplayResult};
use crate::online_plot::render_regret_svg;
use crate::report::split_records;
use crate::EvalError;

/// Passes over the test split (each in a fresh seeded order): the split alone is a few
/// hundred to a few thousand prompts, short for a bandit; prompts repeat across passes.
pub const PASSES: usize = 4;
/// The drift scenario's score drop.
pub const SCORE_DROP: f64 = 0.3;
/// The price drift scenario's cost factor.
pub const PRICE_FACTOR: f64 = 3.0;

/// One drift scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub kind: &'static str,
    pub model: String,
    pub score_drop: f64,
    pub price_factor: f64,
    pub change_step: usize,
    pub bandit_mean_reward_after: f64,
    pub offline_mean_reward_after: f64,
    pub oracle_mean_reward_after: f64,
    pub bandit_mean_reward: f64,
    pub offline_mean_reward: f64,
    pub regret_per_step_before: f64,
    pub regret_per_step_after: f64,
    pub regret_per_step_last_quarter: f64,
    pub regret_curve: Vec<(usize, f64)>,
    pub regret_vs_offline_curve: Vec<(usize, f64)>,
}

/// The Thompson-sampling run, summarised.
#[derive(Debug, Clone, Serialize)]
pub struct AlgoSummary {
    pub bandit_mean_reward: f64,
    pub offline_mean_reward: f64,
    pub final_regret: f64,
    pub final_regret_vs_offline: f64,
    pub drift_bandit_mean_reward_after: f64,
    pub drift_offline_mean_reward_after: f64,
}

/// The `eval --online` report (the `online` object of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineReport {
    pub dataset: String,
    pub offline_router: String,
    pub featurizer: String,
    pub test_prompts: usize,
    pub passes: usize,
    pub seed: u64,
    pub steps: usize,
    pub lambda: f64,
    pub algorithm: &'static str,
    pub bandit_config: ReplayedBandit,
    pub bandit_mean_reward: f64,
    pub offline_mean_reward: f64,
    pub oracle_mean_reward: f64,
    pub final_regret: f64,
    pub final_regret_vs_offline: f64,
    pub departure_rate: f64,
    pub regret_curve: Vec<(usize, f64)>,
    pub regret_vs_offline_curve: Vec<(usize, f64)>,
    pub drift: DriftReport,
    pub drift_price: DriftReport,
    pub thompson: AlgoSummary,
    /// Table and plot inputs (not part of the JSON report).
    #[serde(skip)]
    pub scenarios: Scenarios,
}

/// The bandit's settings in the report: its config and the lambda it was replayed at
/// (the policy's, which is also the reward's cost weight).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayedBandit {
    #[serde(flatten)]
    pub config: BanditConfig,
    pub lambda: f64,
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct OnlineOptions {
    /// The offline router the bandit starts from (a learned router).
    pub router: RouterKind,
    pub featurizer: FeaturizerKind,
    /// The policy's lambda (decisions and rewards).
    pub lambda: f64,
    /// Seeds the offline router, the bandit and the stream orders.
    pub seed: u64,
    /// Bandit hyper-parameters (`seed` is replaced by [`OnlineOptions::seed`]).
    pub bandit: BanditConfig,
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

/// Runs the online replay evaluation on `ds`.
pub fn evaluate_online(ds: &Dataset, opts: &OnlineOptions) -> Result<OnlineReport, EvalError> {
    let (train, test) = split_records(ds)?;
    let n_models = ds.models.len();
    let lambda = opts.lambda;
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(EvalError::Config(format!(
            "--lambda must be finite and >= 0, got {lambda}"
        )));
    }
    let prepared = routewise_router::prepare(&ds.models, &train, opts.featurizer)?;
    let router_cfg = RouterConfigs {
        seed: opts.seed,
        ..RouterConfigs::default()
    };
    let router = prepared.fit(opts.router, &router_cfg)?;
    let (featurizer, catalog) = (&prepared.featurizer, &prepared.catalog);
    let config = BanditConfig {
        seed: opts.seed,
        ..opts.bandit.clone()
    };
    if let Some(issue) = config.validate().into_iter().next() {
        return Err(EvalError::Config(issue.to_string()));
    }

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

    let replay_opts = |drift| ReplayOptions {
        lambda,
        passes: PASSES,
        seed: opts.seed,
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
    let base = replay(&data, &config, &replay_opts(None));
    let drift = replay(&data, &config, &replay_opts(Some(score_drift)));
    let drift_price = replay(&data, &config, &replay_opts(Some(price_drift)));
    let ts_config = BanditConfig {
        algorithm: Algorithm::Thompson,
        ..config.clone()
    };
    let ts = replay(&data, &ts_config, &replay_opts(None));
    let ts_drift = replay(&data, &ts_config, &replay_opts(Some(score_drift)));

    Ok(OnlineReport {
        dataset: ds.name.clone(),
        offline_router: opts.router.name().to_string(),
        featurizer: featurizer.name().to_string(),
        test_prompts: n,
        passes: PASSES,
        seed: opts.seed,
        steps: base.steps,
        lambda,
        algorithm: "linucb",
        bandit_config: ReplayedBandit { config, lambda },
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
        scenarios: Scenarios {
            stationary_thompson: Row::of(&ts),
            score_drop_after: Row::after(&drift),
            score_drop_after_thompson: Row::after(&ts_drift),
            price_after: Row::after(&drift_price),
            regret_per_step_before: drift.regret_per_step_before,
            regret_per_step_after: drift.regret_per_step_after,
            regret_per_step_last_quarter: drift.regret_per_step_last_quarter,
            offline_curve: offline_curve(&base),
            drift_offline_curve: offline_curve(&drift),
            drift_curve: drift.regret_curve.clone(),
            drift_change_step: drift.change_step,
        },
    })
}

/// Mean rewards of one scenario: bandit, offline router, oracle.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub bandit: f64,
    pub offline: f64,
    pub oracle: f64,
}

impl Row {
    fn of(r: &ReplayResult) -> Row {
        Row {
            bandit: r.bandit_mean_reward,
            offline: r.offline_mean_reward,
            oracle: r.oracle_mean_reward,
        }
    }

    fn after(r: &ReplayResult) -> Row {
        Row {
            bandit: r.bandit_mean_reward_after,
            offline: r.offline_mean_reward_after,
            oracle: r.oracle_mean_reward_after,
        }
    }
}

/// What the table and the plot show beyond the JSON report (not serialised).
#[derive(Debug, Clone)]
pub struct Scenarios {
    pub stationary_thompson: Row,
    pub score_drop_after: Row,
    pub score_drop_after_thompson: Row,
    pub price_after: Row,
    pub regret_per_step_before: f64,
    pub regret_per_step_after: f64,
    pub regret_per_step_last_quarter: f64,
    pub offline_curve: Vec<(usize, f64)>,
    pub drift_offline_curve: Vec<(usize, f64)>,
    pub drift_curve: Vec<(usize, f64)>,
    pub drift_change_step: Option<usize>,
}

/// Prints the human-readable summary of an online replay.
pub fn write_online_table(out: &mut impl Write, report: &OnlineReport) -> std::io::Result<()> {
    let sc = &report.scenarios;
    writeln!(
        out,
        "online replay on {}: {} test prompts x {} passes = {} steps, lambda {}, offline router {} ({}), bandit linucb",
        report.dataset,
        report.test_prompts,
        report.passes,
        report.steps,
        report.lambda,
        report.offline_router,
        report.featurizer
    )?;
    writeln!(
        out,
        "{:<34} {:>10} {:>10} {:>10}",
        "scenario (mean reward)", "bandit", "offline", "oracle"
    )?;
    let mut row = |name: &str, r: Row| {
        writeln!(
            out,
            "{name:<34} {:>10.4} {:>10.4} {:>10.4}",
            r.bandit, r.offline, r.oracle
        )
    };
    row(
        "stationary",
        Row {
            bandit: report.bandit_mean_reward,
            offline: report.offline_mean_reward,
            oracle: report.oracle_mean_reward,
        },
    )?;
    row("stationary (thompson)", sc.stationary_thompson)?;
    row(
        &format!("after score drop 0.3 ({})", report.drift.model),
        sc.score_drop_after,
    )?;
    row("after score drop (thompson)", sc.score_drop_after_thompson)?;
    row(
        &format!("after price x3 ({})", report.drift_price.model),
        sc.price_after,
    )?;
    writeln!(
        out,
        "final regret vs oracle {:.2}, vs offline {:.2}; drift regret/step before {:.4}, after {:.4}, last quarter {:.4}",
        report.final_regret,
        report.final_regret_vs_offline,
        sc.regret_per_step_before,
        sc.regret_per_step_after,
        sc.regret_per_step_last_quarter
    )
}

/// The regret SVG: bandit and offline router, stationary and with the score drift.
pub fn regret_svg(report: &OnlineReport) -> Result<String, EvalError> {
    let sc = &report.scenarios;
    let curves = vec![
        (
            "bandit (stationary)".to_string(),
            report.regret_curve.clone(),
        ),
        (
            format!("offline {} (stationary)", report.offline_router),
            sc.offline_curve.clone(),
        ),
        ("bandit (score drift)".to_string(), sc.drift_curve.clone()),
        (
            format!("offline {} (score drift)", report.offline_router),
            sc.drift_offline_curve.clone(),
        ),
    ];
    let title = format!(
        "{}: cumulative regret, lambda {}, {} steps",
        report.dataset, report.lambda, report.steps
    );
    render_regret_svg(&title, &curves, sc.drift_change_step).map_err(EvalError::Plot)
}
