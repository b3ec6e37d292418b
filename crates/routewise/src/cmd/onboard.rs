//! `routewise onboard`: add a model to a trained router artifact from its outcomes on a
//! few probe prompts, without retraining ([`routewise_router::onboard`]), and write a new
//! artifact for `serve` (with the model added to the gateway's `models:`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use routewise_data::Dataset;
use routewise_router::onboard::{base_models, onboard, recorded_scores, NewModel};
use routewise_router::{Artifact, Catalog, ModelInfo};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The trained router artifact to add the model to.
    #[arg(long)]
    pub model: PathBuf,
    /// The new model's outcomes on probe prompts: canonical routing JSONL with the model
    /// under `models.<name>` (and, where known, the router's other models on the same
    /// prompts). Leave out to add the model from its price alone (it is then routed as
    /// an average model).
    #[arg(long)]
    pub outcomes: Option<PathBuf>,
    /// The new model's name (as the gateway config and the outcomes file name it).
    #[arg(long)]
    pub name: String,
    /// List prices, USD per million input and output tokens (`IN,OUT`); default: fitted
    /// from the outcomes' costs and token counts.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub price: Option<Vec<f64>>,
    /// Where to write the new artifact (may be `--model` itself).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let artifact = Artifact::load(&args.model)?;
    let price = match args.price.as_deref() {
        Some(&[pin, pout]) => {
            if !(pin >= 0.0 && pout >= 0.0 && pin.is_finite() && pout.is_finite()) {
                anyhow::bail!("--price: prices must be finite and >= 0 (got {pin},{pout})");
            }
            Some((pin, pout))
        }
        Some(other) => anyhow::bail!("--price: expected IN,OUT, got {} values", other.len()),
        None => None,
    };
    let ds = match &args.outcomes {
        Some(path) => Some(Dataset::load(path)?),
        None => None,
    };
    let n_base = base_models(&artifact.router, artifact.catalog.len());
    let base_names: Vec<&str> = artifact.catalog.names().take(n_base).collect();
    let (prompts, scores, recorded, info) = match &ds {
        Some(ds) => {
            let m = ds
                .models
                .iter()
                .position(|n| *n == args.name)
                .with_context(|| {
                    format!(
                        "{}: no outcomes of `{}` (models in the file: {})",
                        args.outcomes
                            .as_ref()
                            .map_or(String::new(), |p| p.display().to_string()),
                        args.name,
                        ds.models.join(", ")
                    )
                })?;
            let rows: Vec<(&routewise_data::Record, f64)> = ds
                .records
                .iter()
                .filter_map(|r| Some((r, r.outcomes.get(m)?.as_ref()?.score)))
                .collect();
            // The router's own models, where the file records them on the same prompts.
            let probe_records: Vec<&routewise_data::Record> = rows.iter().map(|r| r.0).collect();
            let recorded = recorded_scores(&probe_records, &ds.models, &base_names);
            let fitted = Catalog::fit(&ds.models, ds.records.iter())
                .models
                .swap_remove(m);
            let info = match price {
                Some((pin, pout)) => ModelInfo {
                    input_per_mtok: pin,
                    output_per_mtok: pout,
                    ..fitted
                },
                None => fitted,
            };
            (
                rows.iter().map(|r| r.0.prompt.as_str()).collect::<Vec<_>>(),
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                recorded,
                info,
            )
        }
        None => {
            let (pin, pout) = price.context(
                "without --outcomes, --price IN,OUT is needed (the router knows nothing else of the model)",
            )?;
            let known = &artifact.catalog.models;
            let mean_out =
                known.iter().map(|m| m.mean_output_tokens).sum::<f64>() / known.len().max(1) as f64;
            (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                ModelInfo {
                    name: args.name.clone(),
                    input_per_mtok: pin,
                    output_per_mtok: pout,
                    mean_output_tokens: mean_out,
                },
            )
        }
    };
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let new = NewModel {
        info,
        prompts: &prompts,
        scores: &scores,
        recorded: &recorded,
    };
    let n_recorded = recorded.iter().filter(|x| !x.is_nan()).count();
    let (artifact, fit) = onboard(artifact, &new, unix)?;
    artifact.save(&args.out)?;
    let mut out = std::io::stdout().lock();
    let head = artifact.meta.onboarded.last();
    writeln!(
        out,
        "wrote {}: added `{}` from {} probes (prior strength {}; ${:.3} in / ${:.3} out per Mtok, {:.0} output tokens) to router {} with {} models, in {:.2} s",
        args.out.display(),
        args.name,
        prompts.len(),
        head.map_or(0.0, |h| h.alpha),
        new.info.input_per_mtok,
        new.info.output_per_mtok,
        new.info.mean_output_tokens,
        artifact.meta.router,
        artifact.meta.models.len(),
        t0.elapsed().as_secs_f64()
    )?;
    if prompts.is_empty() {
        writeln!(
            std::io::stderr().lock(),
            "note: `{}` has no probe outcomes: it is routed as the average model, on every prompt; \
             with the online bandit on it is explored until it has enough feedback",
            args.name
        )?;
    }
    if !recorded.is_empty() {
        writeln!(
            out,
            "the probes are described by the router's models' recorded scores in the file ({n_recorded} of {} cells; predictions fill the rest)",
            recorded.len()
        )?;
    }
    if let (Some(loo), Some(prior)) = (fit.loo_rmse, fit.prior_rmse) {
        writeln!(
            out,
            "score prediction on the probes: leave-one-out RMSE {loo:.4} (the average model: {prior:.4})"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
