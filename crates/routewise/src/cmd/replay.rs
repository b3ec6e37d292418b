//! `routewise replay`: off-policy evaluation.
//! * `--log decisions.jsonl --router candidate.rw [--policy lambda=50]`: estimates what the
//!   candidate router would have earned on the gateway's logged traffic
//!   ([`routewise_eval::ope_log`]); `--shadow NAME` instead of `--router` evaluates a
//!   shadow router from its own logged decisions.
//! * `--validate --data D`: checks the estimators in simulation on a routing dataset,
//!   where every policy's true value is known ([`routewise_eval::ope_validate`]).
//!
//! Both print a table and write the JSON report to `--json`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_eval::ope_log::{
    parse_log, replay_log, write_replay_table, Candidate, ReplayOptions,
};
use routewise_eval::ope_validate::{validate, write_validation_table, ValidateOptions};
use routewise_router::{Artifact, Policy, RouterKind};

use super::{
    load_dataset_with_left_out, replay_pool, write_json, Bars, FeaturizerArg, WithLeftOut,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The gateway's JSON log (`serve --log-format json`): decision and feedback lines.
    #[arg(long, required_unless_present = "validate")]
    pub log: Option<PathBuf>,
    /// The candidate router artifact to evaluate on `--log`.
    #[arg(long, requires = "log", required_unless_present_any = ["validate", "shadow"])]
    pub router: Option<PathBuf>,
    /// Evaluate the gateway's shadow router of this name instead, from its
    /// `routewise::shadow` lines in `--log` (no artifact, no prompts needed).
    #[arg(long, requires = "log", conflicts_with_all = ["router", "policy"])]
    pub shadow: Option<String>,
    /// The candidate's policy (`lambda=50`, `budget_usd=0.002`); default: each logged
    /// decision's own.
    #[arg(long, requires = "log")]
    pub policy: Option<String>,
    /// Validate the estimators in simulation on `--data` (logs drawn from the test split
    /// through an epsilon-greedy logger; the truth comes from the data).
    #[arg(long, conflicts_with = "log", requires = "data")]
    pub validate: bool,
    /// Routing dataset (canonical JSONL or RouterBench CSV), for `--validate`.
    #[arg(long, requires = "validate")]
    pub data: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The logger's exploration rate.
    #[arg(long, default_value_t = 0.05)]
    pub epsilon: f64,
    /// Simulated logs per log size.
    #[arg(long, default_value_t = 500)]
    pub runs: usize,
    /// Logged decisions per simulated log, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
    pub sizes: Vec<usize>,
    /// The reward's cost weight (`score - lambda * cost_usd`). `--validate`: also the
    /// logger's policy (default 0); `--log`: default the policy's own lambda.
    #[arg(long, value_parser = super::non_negative)]
    pub lambda: Option<f64>,
    /// The logging router.
    #[arg(long, default_value = "knn")]
    pub logger: String,
    /// Bootstrap resamples per estimate.
    #[arg(long, default_value_t = routewise_eval::ope::DEFAULT_RESAMPLES)]
    pub bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt featurizer.
    #[arg(long, value_enum, default_value = "static-mini")]
    pub featurizer: FeaturizerArg,
    /// Keep only the first N prompts of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Worker threads (default: the available cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs `routewise replay`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(log) = &args.log {
        return replay(&args, log);
    }
    let Some(data) = &args.data else {
        anyhow::bail!("give --log and --router, or --validate --data");
    };
    let logger: RouterKind = args.logger.parse()?;
    let (mut ds, mut left) = load_dataset_with_left_out(data, args.limit)?;
    left.extend(replay_pool(&mut ds, 2)?);
    let opts = ValidateOptions {
        featurizer: args.featurizer.0,
        logger,
        lambda: args.lambda.unwrap_or(0.0),
        epsilon: args.epsilon,
        runs: args.runs,
        sizes: args.sizes.clone(),
        resamples: args.bootstrap,
        seed: args.seed,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let report = validate(&ds, &opts, &Bars::default())?;
    let mut out = std::io::stdout().lock();
    write_validation_table(&mut out, &report)?;
    if let Some(path) = &args.json {
        write_json(
            path,
            &WithLeftOut {
                report: &report,
                models_left_out: &left,
            },
        )?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `replay --log`.
fn replay(args: &Args, log: &std::path::Path) -> anyhow::Result<ExitCode> {
    let policy: Option<Policy> = args
        .policy
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let file = log.display().to_string();
    let (decisions, counts, shadows) = parse_log(&file, &text)?;
    let opts = ReplayOptions {
        policy,
        lambda: args.lambda,
        resamples: args.bootstrap,
        seed: args.seed,
    };
    let engine;
    let candidate = match (&args.shadow, &args.router) {
        (Some(name), _) => {
            let lines = shadows.get(name).ok_or_else(|| {
                let mut known: Vec<&str> = shadows.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                routewise_eval::EvalError::Config(format!(
                    "{file}: no `routewise::shadow` line of a shadow named `{name}` (shadows in the log: {known})"
                ))
            })?;
            Candidate::Shadow(lines)
        }
        (None, Some(router)) => {
            engine = Artifact::load(router)?.into_engine();
            Candidate::Router(&engine)
        }
        (None, None) => anyhow::bail!("give --router or --shadow with --log"),
    };
    let report = replay_log(&file, &decisions, counts, candidate, &opts)?;
    let mut out = std::io::stdout().lock();
    write_replay_table(&mut out, &report)?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
