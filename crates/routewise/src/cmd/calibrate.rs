//! `routewise calibrate`: RouteLLM's threshold calibration (Ong et al., 2024). Predicts
//! every prompt of a dataset (all splits) with a trained artifact, takes the strong
//! model's predicted win `score[strong] - score[weak]`, and finds the threshold that
//! sends `--strong-share` of those prompts to the strong model
//! ([`routewise_router::policy::calibrate_threshold`]). Prints the result as JSON and,
//! with `--out`, also writes it there.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_features::Featurizer;
use routewise_router::policy::calibrate_threshold;
use routewise_router::{Artifact, Router};
use serde::Serialize;

use super::{load_dataset, progress};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trained artifact (`routewise train --out`).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompts to calibrate on (canonical JSONL or RouterBench CSV).
    #[arg(long)]
    pub data: PathBuf,
    /// Strong (expensive) model name.
    #[arg(long)]
    pub strong: String,
    /// Weak (cheap) model name.
    #[arg(long)]
    pub weak: String,
    /// Target share of calls to the strong model, in [0, 1].
    #[arg(long)]
    pub strong_share: f64,
    /// Keep only the first N prompts of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the calibration JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Calibration<'a> {
    strong: &'a str,
    weak: &'a str,
    strong_share: f64,
    threshold: f64,
    n_prompts: usize,
    /// Share of the prompts that the threshold actually sends strong (ties can move it).
    realised_strong_share: f64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.strong_share) {
        anyhow::bail!(
            "--strong-share must lie in [0, 1], got {}",
            args.strong_share
        );
    }
    let artifact = Artifact::load(&args.model)?;
    let idx = |name: &str, flag: &str| {
        artifact.catalog.index(name).with_context(|| {
            let known: Vec<&str> = artifact.catalog.names().collect();
            format!(
                "--{flag}: unknown model `{name}` (artifact models: {})",
                known.join(", ")
            )
        })
    };
    let (strong, weak) = (idx(&args.strong, "strong")?, idx(&args.weak, "weak")?);
    if strong == weak {
        anyhow::bail!("--strong and --weak name the same model");
    }
    let ds = load_dataset(&args.data, args.limit)?;
    let texts: Vec<&str> = ds.records.iter().map(|r| r.prompt.as_str()).collect();
    let pb = progress(None, "featurizing prompts");
    let feats = artifact.featurizer.featurize_batch(&texts);
    pb.finish_and_clear();
    let dim = artifact.featurizer.dim();
    let mut scores = vec![0.0; artifact.catalog.len()];
    let wins: Vec<f64> = (0..texts.len())
        .map(|i| {
            artifact
                .router
                .predict_scores(&feats[i * dim..(i + 1) * dim], &mut scores);
            scores[strong] - scores[weak]
        })
        .collect();
    let threshold = calibrate_threshold(&wins, args.strong_share)
        .context("cannot calibrate: no prompts or non-finite predictions")?;
    let n_strong = wins.iter().filter(|&&w| w > threshold).count();
    let cal = Calibration {
        strong: &args.strong,
        weak: &args.weak,
        strong_share: args.strong_share,
        threshold,
        n_prompts: wins.len(),
        realised_strong_share: n_strong as f64 / wins.len() as f64,
    };
    let json = serde_json::to_string_pretty(&cal)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    writeln!(std::io::stdout().lock(), "{json}")?;
    Ok(ExitCode::SUCCESS)
}
