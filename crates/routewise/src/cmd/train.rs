//! `routewise train`: fit one router on the training prompts of a dataset and write a
//! versioned artifact (featurizer + router + model catalog with prices).
//!
//! By default only the `train` split is used, so an artifact's test-split figures stay
//! honest; `--all-splits` fits on every prompt (for deployment).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use routewise_data::Record;
use routewise_router::{RouterConfigs, RouterKind};

use super::{load_dataset, progress};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Routing dataset: canonical JSONL, or RouterBench wide CSV (by the `.csv` extension).
    #[arg(long)]
    pub data: PathBuf,
    /// Router to fit: knn, linear, mlp, mf, ensemble, best-single, cheapest, random.
    #[arg(long, default_value = "knn")]
    pub router: String,
    /// Where to write the artifact (conventionally `*.rw`).
    #[arg(long)]
    pub out: PathBuf,
    /// Prompt featurizer.
    #[arg(long, value_enum, default_value = "static-mini")]
    pub featurizer: super::FeaturizerArg,
    /// Seed of the randomised routers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep only the first N prompts of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Fit on every prompt, test split included.
    #[arg(long)]
    pub all_splits: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let kind: RouterKind = args.router.parse()?;
    let ds = load_dataset(&args.data, args.limit)?;
    let train: Vec<&Record> = if args.all_splits {
        ds.records.iter().collect()
    } else {
        ds.train().collect()
    };
    if train.is_empty() {
        anyhow::bail!("{}: no training prompts", args.data.display());
    }
    let pb = progress(
        None,
        &format!("training {kind} ({} featurizer)", args.featurizer.0),
    );
    let t0 = Instant::now();
    let cfg = RouterConfigs {
        seed: args.seed,
        ..RouterConfigs::default()
    };
    let artifact =
        routewise_router::train(&ds.name, &ds.models, &train, args.featurizer.0, kind, &cfg)?;
    let seconds = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    artifact.save(&args.out)?;
    writeln!(
        std::io::stdout().lock(),
        "wrote {}: router {kind}, featurizer {}, {} models, {} training prompts, trained in {seconds:.2} s",
        args.out.display(),
        artifact.meta.featurizer,
        artifact.meta.models.len(),
        artifact.meta.n_train
    )?;
    Ok(ExitCode::SUCCESS)
}
