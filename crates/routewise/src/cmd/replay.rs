//! `routewise replay`: off-policy evaluation. `--validate` checks the estimators in
//! simulation on a routing dataset, where every policy's true value is known
//! ([`routewise_eval::ope_validate`]): it prints the table and writes the JSON report.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use routewise_eval::ope_validate::{validate, write_validation_table, ValidateOptions};
use routewise_router::RouterKind;

use super::{load_dataset, write_json, Bars, FeaturizerArg};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Validate the estimators in simulation on `--data` (logs drawn from the test split
    /// through an epsilon-greedy logger; the truth comes from the data).
    #[arg(long, required = true)]
    pub validate: bool,
    /// Routing dataset (canonical JSONL or RouterBench CSV).
    #[arg(long)]
    pub data: PathBuf,
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
    /// The reward's cost weight (`score - lambda * cost_usd`), also the logger's policy.
    #[arg(long, default_value_t = 0.0)]
    pub lambda: f64,
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
    let logger: RouterKind = args.logger.parse()?;
    let ds = load_dataset(&args.data, args.limit)?;
    let opts = ValidateOptions {
        featurizer: args.featurizer.0,
        logger,
        lambda: args.lambda,
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
        write_json(path, &report)?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}
