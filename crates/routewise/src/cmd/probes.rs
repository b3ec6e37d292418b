//! `routewise probes select`: the prompts that best identify a new model for a trained
//! router ([`routewise_router::onboard::select_probes`]), written as a probe file
//! (id, prompt, task, reference): the prompts to collect a new model's outcomes on
//! before `routewise onboard`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_data::Record;
use routewise_features::Featurizer;
use routewise_router::onboard::{
    base_models, check_learned, random_probes, recorded_scores, select_probes,
};
use routewise_router::{Artifact, Router};

use super::load_dataset;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Choose N probe prompts from a dataset's train split for onboarding a model onto
    /// a trained router.
    Select(SelectArgs),
}

#[derive(clap::Args, Debug)]
pub struct SelectArgs {
    /// The trained router artifact.
    #[arg(long)]
    pub model: PathBuf,
    /// The dataset to choose from (its train split): canonical JSONL or RouterBench CSV.
    #[arg(long)]
    pub data: PathBuf,
    /// How many probes.
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    /// Where to write the probes (JSONL).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed (of the candidate sample, and of `--random`).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Choose at random instead (the baseline the selection is measured against).
    #[arg(long)]
    pub random: bool,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Select(a) => select(a),
    }
}

fn select(args: SelectArgs) -> anyhow::Result<ExitCode> {
    let artifact = Artifact::load(&args.model)?;
    check_learned(&artifact.router).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ds = load_dataset(&args.data, None)?;
    let train: Vec<&Record> = ds.train().collect();
    if train.is_empty() {
        anyhow::bail!("{}: no train prompts to choose from", args.data.display());
    }
    let picked = if args.random {
        random_probes(train.len(), args.n, args.seed)
    } else {
        // The base router's models: the ones a new model's head is fitted on.
        let n_all = artifact.catalog.len();
        let k = base_models(&artifact.router, n_all);
        let texts: Vec<&str> = train.iter().map(|r| r.prompt.as_str()).collect();
        let feats = artifact.featurizer.featurize_batch(&texts);
        let dim = artifact.featurizer.dim();
        let mut xs = Vec::with_capacity(train.len() * k);
        let mut row = vec![0.0; n_all];
        for (i, r) in train.iter().enumerate() {
            artifact.router.predict_scores_keyed(
                &feats[i * dim..(i + 1) * dim],
                &r.prompt,
                &mut row,
            );
            xs.extend_from_slice(&row[..k]);
        }
        // The router's models' recorded scores where the data has them (the rows a head
        // is fitted on); predictions elsewhere.
        let names: Vec<&str> = artifact.catalog.names().take(k).collect();
        let mut design = recorded_scores(&train, &ds.models, &names);
        for (d, &x) in design.iter_mut().zip(&xs) {
            if d.is_nan() {
                *d = x;
            }
        }
        let design = (!design.is_empty()).then_some(design);
        select_probes(&xs, design.as_deref(), k, args.n, args.seed)
    };
    let mut text = String::new();
    for &i in &picked {
        let r = train[i];
        let line = serde_json::json!({
            "id": r.id,
            "prompt": r.prompt,
            "task": r.task,
            "reference": r.reference,
        });
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    std::fs::write(&args.out, text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    writeln!(
        std::io::stdout().lock(),
        "wrote {}: {} probes {} from {} train prompts of {}",
        args.out.display(),
        picked.len(),
        if args.random {
            "at random"
        } else {
            "selected for router"
        },
        train.len(),
        ds.name
    )?;
    Ok(ExitCode::SUCCESS)
}
