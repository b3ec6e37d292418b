//! `routewise route`: route one prompt with a trained artifact and print the decision
//! as JSON: the chosen model, the full fallback ranking, and every model's predicted
//! score and cost.
//!
//! Policy: `--lambda X` (CARROT, default 0 = quality first), `--budget USD` (best
//! predicted score within a per-request budget), or `--threshold T --strong A --weak B`
//! (RouteLLM). The prompt's length is `--input-tokens`, else estimated as chars / 4.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_data::estimate_tokens;
use routewise_router::{Artifact, Policy};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trained artifact (`routewise train --out`).
    #[arg(long)]
    pub model: PathBuf,
    /// CARROT trade-off: maximise score - lambda * cost_usd.
    #[arg(long, conflicts_with_all = ["budget", "threshold"], value_parser = super::non_negative)]
    pub lambda: Option<f64>,
    /// Per-request budget in USD: best predicted score among models that fit.
    #[arg(long, conflicts_with = "threshold", value_parser = super::non_negative)]
    pub budget: Option<f64>,
    /// RouteLLM threshold on the strong model's predicted win (needs --strong, --weak).
    #[arg(long, requires_all = ["strong", "weak"], value_parser = super::unit_interval)]
    pub threshold: Option<f64>,
    /// Strong model name for --threshold.
    #[arg(long)]
    pub strong: Option<String>,
    /// Weak model name for --threshold.
    #[arg(long)]
    pub weak: Option<String>,
    /// Prompt length in tokens (default: chars / 4).
    #[arg(long)]
    pub input_tokens: Option<u32>,
    /// The prompt to route.
    pub prompt: String,
}

#[derive(Serialize)]
struct ModelOut<'a> {
    name: &'a str,
    predicted_score: f64,
    predicted_cost_usd: f64,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum PolicyOut<'a> {
    Lambda {
        lambda: f64,
    },
    Budget {
        budget_usd: f64,
    },
    Threshold {
        strong: &'a str,
        weak: &'a str,
        threshold: f64,
    },
}

#[derive(Serialize)]
struct DecisionOut<'a> {
    chosen: &'a str,
    policy: PolicyOut<'a>,
    router: &'a str,
    featurizer: &'a str,
    input_tokens: u32,
    ranking: Vec<&'a str>,
    models: Vec<ModelOut<'a>>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let artifact = Artifact::load(&args.model)?;
    let meta = artifact.meta.clone();
    let engine = artifact.into_engine();
    let names: Vec<&str> = engine.catalog.names().collect();
    let find = |name: &Option<String>, flag: &str| -> anyhow::Result<usize> {
        let name = name
            .as_deref()
            .with_context(|| format!("--threshold needs --{flag}"))?;
        engine.catalog.index(name).with_context(|| {
            format!(
                "--{flag}: unknown model `{name}` (artifact models: {})",
                names.join(", ")
            )
        })
    };
    let policy = match (args.lambda, args.budget, args.threshold) {
        (_, Some(b), _) => Policy::BudgetUsd(b),
        (_, _, Some(t)) => Policy::Threshold {
            strong: find(&args.strong, "strong")?,
            weak: find(&args.weak, "weak")?,
            threshold: t,
        },
        (l, None, None) => Policy::Lambda(l.unwrap_or(0.0)),
    };
    let tokens = args
        .input_tokens
        .unwrap_or_else(|| estimate_tokens(&args.prompt));
    let d = engine.decide(&args.prompt, tokens, policy);
    let name = |i: usize| names.get(i).copied().unwrap_or("?");
    let out = DecisionOut {
        chosen: name(d.chosen),
        policy: match policy {
            Policy::Lambda(lambda) => PolicyOut::Lambda { lambda },
            Policy::BudgetUsd(budget_usd) => PolicyOut::Budget { budget_usd },
            Policy::Threshold {
                strong,
                weak,
                threshold,
            } => PolicyOut::Threshold {
                strong: name(strong),
                weak: name(weak),
                threshold,
            },
        },
        router: &meta.router,
        featurizer: &meta.featurizer,
        input_tokens: tokens,
        ranking: d.ranking.iter().map(|&i| name(i)).collect(),
        models: names
            .iter()
            .enumerate()
            .map(|(i, n)| ModelOut {
                name: n,
                predicted_score: d.scores[i],
                predicted_cost_usd: d.costs[i],
            })
            .collect(),
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &out)?;
    writeln!(stdout)?;
    Ok(ExitCode::SUCCESS)
}
