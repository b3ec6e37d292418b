//! `routewise profile`: sends each probe prompt to each model of a gateway config and
//! writes the graded outcomes as canonical routing JSONL (`routewise_gateway::profile`),
//! for `routewise train` or `routewise onboard`. With no `--config`, the embedded demo's
//! models (replayed RouterBench answers) are profiled.
//!
//! Only JSONL goes to `--out`; the progress bar (a terminal only) and the summary go to
//! stderr. Exit code 0 when every pair has an outcome, 3 when some are missing (a budget
//! stop, an interruption, a failing model or judge: `--resume` runs what is missing),
//! 2 for invalid input (config, probes, an unknown model, an existing `--out`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use routewise_data::probes::ProbeSource;
use routewise_gateway::profile::{self, Options, Output, Pool, ProfileError, Report, Stop};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Gateway config (YAML) whose models are profiled. Without it, the embedded demo.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Probe prompts: `builtin:general-500`, `builtin:quick-100`, or a JSONL file (id,
    /// prompt, optional reference and task).
    #[arg(long)]
    pub probe: String,
    /// Where to write the outcomes (canonical routing JSONL).
    #[arg(long)]
    pub out: PathBuf,
    /// The models to profile, comma-separated (default: every configured model).
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// The configured model that grades answers to probes without a reference (1-10
    /// rubric; see `routewise_router::grade`).
    #[arg(long)]
    pub judge: Option<String>,
    /// Calls in flight per model.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// The most this run may spend, USD (judge calls included; each call reserves its
    /// worst case before it is sent).
    #[arg(long)]
    pub max_usd: Option<f64>,
    /// Continue an interrupted run: skip the (probe, model) pairs `--out` and its
    /// journal (`--out` + `.partial`) already hold.
    #[arg(long)]
    pub resume: bool,
    /// Retries of a call after a 429, 5xx, timeout or connection error.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Output tokens per answer at most.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: u64,
    /// Leave a model out after this many failed probes in a row.
    #[arg(long, default_value_t = 5)]
    pub give_up_after: u32,
    /// Send probes as they are: no system message asking for the answer in the form the
    /// grader reads ("The answer is (X)").
    #[arg(long)]
    pub no_instruction: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 {
        anyhow::bail!(ProfileError::Usage(
            "--concurrency must be at least 1".into()
        ));
    }
    if let Some(cap) = args.max_usd {
        if !(cap.is_finite() && cap > 0.0) {
            anyhow::bail!(ProfileError::Usage(format!(
                "--max-usd must be a positive amount, not {cap}"
            )));
        }
    }
    let config = match &args.config {
        Some(p) => routewise_gateway::config::load(p),
        None => routewise_gateway::demo::config(std::env::vars()),
    }
    .map_err(|e| ProfileError::Load(e.into()))?;
    let source = ProbeSource::parse(&args.probe).map_err(ProfileError::Usage)?;
    let summary = source.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let pool = Arc::new(Pool::build(config)?);
        let names: Vec<String> = if args.models.is_empty() {
            pool.names().to_vec()
        } else {
            let mut seen = Vec::new();
            for m in &args.models {
                if !seen.contains(m) {
                    seen.push(m.clone());
                }
            }
            seen
        };
        let mut opts = Options::new(
            names
                .iter()
                .map(|n| pool.model(n))
                .collect::<Result<_, _>>()?,
        );
        opts.judge = args.judge.as_deref().map(|j| pool.model(j)).transpose()?;
        pool.check_prices(&opts.models)?;
        if let Some(j) = opts.judge {
            pool.check_prices(&[j])?;
        }
        if summary.without_reference > 0 && opts.judge.is_none() {
            anyhow::bail!(ProfileError::Usage(format!(
                "{} of the {} probes have no reference: pass --judge MODEL to grade them",
                summary.without_reference, summary.count
            )));
        }
        opts.concurrency = args.concurrency;
        opts.max_usd = args.max_usd;
        opts.retries = args.retries;
        opts.max_tokens = args.max_tokens;
        opts.give_up_after = args.give_up_after.max(1);
        opts.instruct = !args.no_instruction;
        let mut out = Output::open(&args.out, args.resume, &names)?;
        let bar = super::progress(Some(0), "profiling");
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} pairs {elapsed} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let mut on_progress = |p: &profile::Progress| {
            bar.set_length(p.total);
            bar.set_position(p.settled);
            bar.set_message(format!("${:.4} spent, {} failed", p.spent_usd, p.failed));
        };
        let interrupt = async {
            // No signal handler (a sandbox): never interrupted.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let report = profile::run(
            Arc::clone(&pool),
            opts,
            &source,
            &mut out,
            &mut on_progress,
            interrupt,
        )
        .await?;
        bar.finish_and_clear();
        out.close()?;
        print_summary(&args, summary.count, &report)?;
        Ok(if report.complete() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        })
    })
}

/// The run's account, on stderr.
fn print_summary(args: &Args, probes: usize, r: &Report) -> anyhow::Result<()> {
    let mut e = std::io::stderr().lock();
    writeln!(
        e,
        "profiled {probes} probes x {} models into {}: {} lines written this run, {} pairs \
         already there; spent ${:.4} (judge ${:.4})",
        r.models.len(),
        args.out.display(),
        r.lines_written,
        r.already_done,
        r.spent_usd,
        r.judge_usd,
    )?;
    for m in &r.models {
        let mut line = format!("  {}: {} answered, ${:.4}", m.name, m.answered, m.cost_usd);
        if m.failed > 0 {
            line += &format!(", {} failed", m.failed);
        }
        if m.judge_missing > 0 {
            line += &format!(", {} without a judge rating", m.judge_missing);
        }
        if m.estimated_usage > 0 {
            line += &format!(", {} without usage (tokens estimated)", m.estimated_usage);
        }
        if !m.errors.is_empty() {
            let errors: Vec<String> = m.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            line += &format!("; errors: {}", errors.join(", "));
        }
        if let Some(why) = &m.left_out {
            line += &format!("; LEFT OUT after {why} ({} probes skipped)", m.skipped);
        }
        writeln!(e, "{line}")?;
    }
    if let Some(j) = &r.judge {
        if !j.errors.is_empty() || j.left_out.is_some() {
            let errors: Vec<String> = j.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let mut line = format!("  judge {}: errors: {}", j.name, errors.join(", "));
            if let Some(why) = &j.left_out {
                line += &format!(
                    "; LEFT OUT after {why} (probes without a reference were not sent on)"
                );
            }
            writeln!(e, "{line}")?;
        }
    }
    if r.judge_parse_failures > 0 {
        writeln!(
            e,
            "  judge replies without a rating: {} (asked again)",
            r.judge_parse_failures
        )?;
    }
    match r.stopped {
        Some(Stop::Budget) => writeln!(
            e,
            "stopped: the next call would pass --max-usd {:.4}; {} pairs not run",
            args.max_usd.unwrap_or_default(),
            r.unsettled
        )?,
        Some(Stop::Interrupted) => writeln!(
            e,
            "interrupted: {} pairs not settled (calls in flight were dropped)",
            r.unsettled
        )?,
        None => {}
    }
    if !r.complete() {
        writeln!(
            e,
            "incomplete: rerun the same command with --resume to run the missing pairs"
        )?;
    }
    Ok(())
}
