//! `routewise simulate`: the discrete-event dispatch simulation
//! ([`routewise_eval::simulate`]): print the table, write the JSON report and the SVG.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_eval::simulate::{simulate, DeploymentsFile, SimOptions, SimReport};
use routewise_router::RouterKind;

use super::{load_dataset_with_left_out, replay_pool, write_json, FeaturizerArg, WithLeftOut};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Routing dataset: canonical JSONL, or RouterBench wide CSV.
    #[arg(long)]
    pub data: PathBuf,
    /// The router (fitted on train) whose choices are dispatched.
    #[arg(long, default_value = "knn")]
    pub router: String,
    /// Offered loads, as multiples of the best model's capacity (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,3")]
    pub loads: Vec<f64>,
    /// Simulated seconds of arrivals per load.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// The latency SLO in ms (default: twice the unloaded greedy p99).
    #[arg(long)]
    pub slo_ms: Option<f64>,
    /// The policy's lambda (default 0: quality first).
    #[arg(long, default_value_t = 0.0)]
    pub lambda: f64,
    /// Weight of the expected latency (seconds) in the balanced utility.
    #[arg(long, default_value_t = 0.0)]
    pub mu: f64,
    /// How long a balanced batch waits for more requests, ms.
    #[arg(long, default_value_t = 20.0)]
    pub window_ms: f64,
    /// A request queued longer than this (ms) is dropped.
    #[arg(long, default_value_t = 60_000.0)]
    pub timeout_ms: f64,
    /// YAML: `deployments: [{model, replicas, max_concurrency, ttft_ms, ms_per_token}]`;
    /// models not listed get one deployment of 8 slots, 300 ms + 20 ms per output token.
    #[arg(long)]
    pub deployments: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Price scale of a queue place in the balanced modes: the k-th of n places costs
    /// this times k / (n - k + 1) in utility (0: queue places are free).
    #[arg(long, default_value_t = routewise_router::dispatch::DEFAULT_QUEUE_PRICE)]
    pub queue_price: f64,
    /// Fit on four fifths of train and simulate on the other fifth, not on test (for
    /// choosing settings).
    #[arg(long)]
    pub validation: bool,
    #[arg(long, value_enum, default_value = "static-mini")]
    pub featurizer: FeaturizerArg,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the SVG (quality and p99 against load, per mode) here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let router: RouterKind = args.router.parse()?;
    if args.loads.is_empty() || args.loads.iter().any(|l| !(*l > 0.0 && l.is_finite())) {
        anyhow::bail!("--loads must be positive numbers");
    }
    if !(args.duration > 0.0 && args.duration <= 86_400.0) {
        anyhow::bail!("--duration must be in (0, 86400] seconds");
    }
    if args.slo_ms.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        anyhow::bail!("--slo-ms must be > 0");
    }
    for (name, v) in [
        ("--lambda", args.lambda),
        ("--mu", args.mu),
        ("--window-ms", args.window_ms),
        ("--timeout-ms", args.timeout_ms),
        ("--queue-price", args.queue_price),
    ] {
        if !(v >= 0.0 && v.is_finite()) {
            anyhow::bail!("{name} must be >= 0");
        }
    }
    let mut deployments = match &args.deployments {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let f: DeploymentsFile = serde_yaml::from_str(&text)
                .with_context(|| format!("{}: not a deployments file", p.display()))?;
            f.deployments
        }
    };
    let (mut ds, mut left) = load_dataset_with_left_out(&args.data, None)?;
    left.extend(replay_pool(&mut ds, 2)?);
    // A left-out model's deployments have nothing to serve (the warning names the model).
    deployments.retain(|d| !left.contains(&d.model));
    let opts = SimOptions {
        router,
        featurizer: args.featurizer.0,
        seed: args.seed,
        loads: args.loads.clone(),
        duration_s: args.duration,
        slo_ms: args.slo_ms,
        lambda: args.lambda,
        mu: args.mu,
        window_ms: args.window_ms,
        timeout_ms: args.timeout_ms,
        queue_price: args.queue_price,
        validation: args.validation,
        deployments,
        ..SimOptions::default()
    };
    let r = simulate(&ds, &opts)?;
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &r)?;
    if let Some(path) = &args.json {
        write_json(
            path,
            &WithLeftOut {
                report: &r,
                models_left_out: &left,
            },
        )?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.plot {
        let svg = routewise_eval::simulate::render_svg(&r).map_err(anyhow::Error::msg)?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl Write, r: &SimReport) -> std::io::Result<()> {
    writeln!(
        out,
        "dispatch simulation{}: router {}, lambda {}, queue price {}, SLO {:.0} ms; best model {} serves {:.2} req/s; unloaded greedy quality {:.4}",
        if r.validation {
            " on a validation fifth of train"
        } else {
            ""
        },
        r.router,
        r.lambda,
        r.queue_price,
        r.slo_ms,
        r.best_model,
        r.best_capacity_per_s,
        r.unloaded_greedy_quality
    )?;
    writeln!(
        out,
        "{:>5} {:>8} {:<18} {:>8} {:>10} {:>9} {:>9} {:>7} {:>6} {:>6}",
        "load",
        "requests",
        "mode",
        "quality",
        "cost_usd",
        "p50_ms",
        "p99_ms",
        "slo_viol",
        "drops",
        "spills"
    )?;
    for l in &r.loads {
        for (name, m) in &l.modes {
            writeln!(
                out,
                "{:>5} {:>8} {:<18} {:>8.4} {:>10.4} {:>9.0} {:>9.0} {:>7} {:>6} {:>6}",
                l.load,
                l.requests,
                name,
                m.quality,
                m.cost_usd,
                m.p50_ms,
                m.p99_ms,
                m.slo_violations,
                m.drops,
                m.spills
            )?;
        }
        writeln!(
            out,
            "{:>5} {:>8} {:<18} {:>8.4}",
            l.load, l.requests, "(unloaded greedy)", l.unloaded_greedy_quality
        )?;
    }
    // Overload is the premise of the balanced modes; say why when it is not there.
    let calm = r
        .loads
        .iter()
        .filter(|l| l.load >= 2.0)
        .filter(|l| l.modes.get("greedy").is_some_and(|m| m.slo_violations == 0))
        .map(|l| l.load.to_string())
        .collect::<Vec<_>>();
    if let (false, Some((busiest, share))) = (calm.is_empty(), r.greedy_shares.first()) {
        // The busiest model's offered rate at load 2 over its capacity.
        let capacity = r
            .deployments
            .iter()
            .filter(|d| &d.model == busiest)
            .map(|d| d.capacity_per_s())
            .sum::<f64>();
        let utilisation = 2.0 * r.best_capacity_per_s * share / capacity;
        let why = if utilisation < 1.0 {
            "so its queues are not overloaded there"
        } else {
            "yet its queue stays within the SLO over the simulated duration (the requests it \
             gets may take less than its mean service time, or the queue has not grown long \
             enough yet)"
        };
        writeln!(
            out,
            "note: greedy routing stays within the SLO at load {}: its busiest model, {busiest}, \
             takes {:.0}% of the requests ({utilisation:.2}x its capacity at load 2), {why}; \
             higher --loads (or a --deployments file with the real capacities) show where it \
             breaks",
            calm.join(", "),
            100.0 * share
        )?;
    }
    Ok(())
}
