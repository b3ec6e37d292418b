//! `routewise calibrate`: two calibrations, printed as JSON (and written to `--out` /
//! `--json` when given).
//! * RouteLLM's threshold calibration (Ong et al., 2024): predicts every prompt of a
//!   dataset (all splits) with a trained artifact, takes the strong model's predicted win
//!   `score[strong] - score[weak]`, and finds the threshold that sends `--strong-share` of
//!   those prompts to the strong model ([`routewise_router::policy::calibrate_threshold`]).
//! * `--cascade --alpha A`: a cascade's acceptance threshold such that the quality it
//!   loses against always escalating is at most A with probability at least 1 - delta
//!   (Learn then Test; [`routewise_eval::calibrate`]), checked over random splits;
//!   `--artifact` also writes the router with the calibrated chain, for `serve`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_eval::calibrate::CalibrateOptions;
use routewise_features::Featurizer;
use routewise_router::policy::calibrate_threshold;
use routewise_router::{Artifact, Router, RouterKind};
use serde::Serialize;

use super::{load_dataset, progress, Bars};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trained artifact (`routewise train --out`).
    #[arg(long, required_unless_present = "cascade")]
    pub model: Option<PathBuf>,
    /// Prompts to calibrate on (canonical JSONL or RouterBench CSV).
    #[arg(long)]
    pub data: PathBuf,
    /// Strong (expensive) model name.
    #[arg(long, required_unless_present = "cascade")]
    pub strong: Option<String>,
    /// Weak (cheap) model name.
    #[arg(long, required_unless_present = "cascade")]
    pub weak: Option<String>,
    /// Target share of calls to the strong model, in [0, 1].
    #[arg(long, required_unless_present = "cascade")]
    pub strong_share: Option<f64>,
    /// Keep only the first N prompts of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the calibration JSON to this file.
    #[arg(long, visible_alias = "json")]
    pub out: Option<PathBuf>,
    /// Calibrate a cascade's acceptance threshold instead (fits on the data's `train`
    /// split, reports on `test`).
    #[arg(long, conflicts_with_all = ["model", "strong", "weak", "strong_share"])]
    pub cascade: bool,
    /// Cascade: the largest quality loss against always escalating, in (0, 1).
    #[arg(long, requires = "cascade")]
    pub alpha: Option<f64>,
    /// Cascade: the guarantee holds with probability at least 1 - delta.
    #[arg(long, default_value_t = routewise_eval::calibrate::DEFAULT_DELTA)]
    pub delta: f64,
    /// Cascade: random calibration/test splits of the empirical check.
    #[arg(long, default_value_t = routewise_eval::calibrate::DEFAULT_SPLITS)]
    pub splits: usize,
    /// Cascade: the escalation policy's lambda (0: quality first).
    #[arg(long, default_value_t = 0.0, value_parser = super::non_negative)]
    pub lambda: f64,
    /// Cascade: the router feeding the acceptor and the escalation.
    #[arg(long, default_value = "knn")]
    pub router: String,
    /// Cascade: prompt featurizer (default: static-mini or tfidf, whichever saves more on
    /// train's fitting part).
    #[arg(long, value_enum)]
    pub featurizer: Option<super::FeaturizerArg>,
    /// Cascade: seed of the train split and the random splits.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cascade: also write a router artifact that carries the calibrated chain (the
    /// router fitted on train's fitting part, the tier, its acceptor and the threshold),
    /// for `serve` with `router.cascade: {learned: true}`. Nothing is written (and the
    /// command fails) when the cascade is off at this alpha.
    #[arg(long, requires = "cascade")]
    pub artifact: Option<PathBuf>,
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
    if args.cascade {
        return cascade(&args);
    }
    let (Some(model), Some(strong_name), Some(weak_name), Some(strong_share)) = (
        args.model.as_ref(),
        args.strong.as_deref(),
        args.weak.as_deref(),
        args.strong_share,
    ) else {
        anyhow::bail!("--model, --strong, --weak and --strong-share are required (or --cascade)");
    };
    if !(0.0..=1.0).contains(&strong_share) {
        anyhow::bail!("--strong-share must lie in [0, 1], got {strong_share}");
    }
    let artifact = Artifact::load(model)?;
    let idx = |name: &str, flag: &str| {
        artifact.catalog.index(name).with_context(|| {
            let known: Vec<&str> = artifact.catalog.names().collect();
            format!(
                "--{flag}: unknown model `{name}` (artifact models: {})",
                known.join(", ")
            )
        })
    };
    let (strong, weak) = (idx(strong_name, "strong")?, idx(weak_name, "weak")?);
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
    let threshold = calibrate_threshold(&wins, strong_share)
        .context("cannot calibrate: no prompts or non-finite predictions")?;
    let n_strong = wins.iter().filter(|&&w| w > threshold).count();
    let cal = Calibration {
        strong: strong_name,
        weak: weak_name,
        strong_share,
        threshold,
        n_prompts: wins.len(),
        realised_strong_share: n_strong as f64 / wins.len() as f64,
    };
    emit(&args, &cal)
}

/// Prints `value` as JSON, and writes it to `--out` when given.
fn emit(args: &Args, value: &impl Serialize) -> anyhow::Result<ExitCode> {
    let json = serde_json::to_string_pretty(value)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    writeln!(std::io::stdout().lock(), "{json}")?;
    Ok(ExitCode::SUCCESS)
}

/// `calibrate --cascade`.
fn cascade(args: &Args) -> anyhow::Result<ExitCode> {
    let Some(alpha) = args.alpha else {
        anyhow::bail!("--cascade needs --alpha (the largest quality loss, e.g. 0.02)");
    };
    let router: RouterKind = args
        .router
        .parse()
        .with_context(|| format!("--router `{}`", args.router))?;
    let ds = load_dataset(&args.data, args.limit)?;
    let opts = CalibrateOptions {
        alpha,
        delta: args.delta,
        splits: args.splits,
        lambda: args.lambda,
        router,
        featurizer: args.featurizer.as_ref().map(|f| f.0),
        seed: args.seed,
    };
    let cal = routewise_eval::calibrate::calibrate_cascade(&ds, &opts, &Bars::default())?;
    let code = emit(args, &cal.report)?;
    if let Some(reason) = &cal.report.off_reason {
        writeln!(std::io::stderr(), "note: the cascade is off: {reason}")?;
    }
    if let Some(path) = &args.artifact {
        let Some(artifact) = &cal.artifact else {
            anyhow::bail!(
                "no artifact written to {}: the cascade is off at alpha {alpha} ({})",
                path.display(),
                cal.report
                    .off_reason
                    .as_deref()
                    .unwrap_or("no threshold passed on the calibration part")
            );
        };
        artifact.save(path)?;
        tracing::info!(path = %path.display(), "wrote the router artifact with its calibrated cascade");
    }
    Ok(code)
}
