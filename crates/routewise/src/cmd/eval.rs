//! `routewise eval`: fit routers on the train split, evaluate them on the test split
//! ([`routewise_eval::evaluate`]), print the table, write the JSON report and the SVG.
//! `--online` replays the test split through the bandit router instead
//! ([`routewise_eval::evaluate_online`]). `--routes ROUTES.yaml` measures description
//! routing as a classifier instead ([`routewise_eval::describe`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_eval::online_report::{regret_svg, write_online_table};
use routewise_eval::plot::render_svg;
use routewise_eval::report::{plot_input, write_table};
use routewise_eval::{EvalOptions, OnlineOptions};
use routewise_online::BanditConfig;
use routewise_router::RouterKind;

use super::{
    load_dataset, load_dataset_with_left_out, parse_routers, replay_pool, write_json, Bars,
    FeaturizerArg, WithLeftOut,
};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Routing dataset: canonical JSONL, or RouterBench wide CSV (by the `.csv` extension).
    #[arg(long)]
    pub data: PathBuf,
    /// Routers to fit, comma-separated (knn, linear, mlp, mf, ensemble); the baselines best-single,
    /// cheapest and random are always evaluated too.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "knn,linear,mlp,mf,ensemble"
    )]
    pub routers: Vec<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the quality-vs-cost SVG plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Keep only the first N prompts of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also report each router's realised (quality, cost) at this lambda.
    #[arg(long, value_parser = super::non_negative)]
    pub lambda: Option<f64>,
    /// Seed of the randomised routers and baselines.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt featurizer.
    #[arg(long, value_enum, default_value = "static-mini")]
    pub featurizer: FeaturizerArg,
    /// Number of log-spaced lambda values in the sweep (0 is always added).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(50..))]
    pub n_lambdas: u64,
    /// Bootstrap resamples of the test prompts for the AIQ standard errors (seeded by
    /// `--seed`; 0 turns the bootstrap off).
    #[arg(long, default_value_t = routewise_eval::bootstrap::DEFAULT_RESAMPLES)]
    pub bootstrap: usize,
    /// Replay the test split as an online stream instead (bandit learning). The offline
    /// router is the first learned router of `--routers`; bandit settings: the defaults, or
    /// a JSON object in the `ROUTEWISE_BANDIT` environment variable.
    #[arg(long)]
    pub online: bool,
    /// Also evaluate cascades (a confidence chain and an agreement tier of cheap models,
    /// escalating to the router's choice), using the data's recorded answers; their tiers
    /// are chosen on train.
    #[arg(long)]
    pub cascades: bool,
    /// The router whose predictions feed the cascades' acceptor and escalation.
    #[arg(long, default_value = "knn")]
    pub cascade_router: String,
    /// Measure description routing instead: a YAML file whose `routes:` are named after the
    /// data's tasks, each with `when: {description: ...}`; reports zero-shot, ten-shot,
    /// TF-IDF centroid and supervised kNN accuracy and macro-F1 on the test split.
    #[arg(long)]
    pub routes: Option<PathBuf>,
    /// Budget pacing instead: the test split replayed as one period of traffic, a key's
    /// budget spent by the pacing controller, against a hard cap and the best fixed lambda
    /// in hindsight. The router is the first learned router of `--routers` (default knn).
    #[arg(long)]
    pub pacing: bool,
    /// With `--pacing`: the budget as a share of what always using the best single model
    /// costs on the period.
    #[arg(long, default_value_t = 0.3)]
    pub budget_fraction: f64,
    /// With `--pacing`: the period's length in days.
    #[arg(long, default_value_t = 30.0)]
    pub days: f64,
    /// Conversation affinity instead: multi-turn conversations synthesised from the test
    /// prompts (same task), routed every turn afresh and with affinity, over a lambda grid;
    /// affinity's cost against routing afresh at the same quality. The router is the first
    /// learned router of `--routers` (default knn).
    #[arg(long)]
    pub affinity: bool,
    /// With `--affinity`: turns per conversation.
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// With `--affinity`: the share of the input price a cached history saves.
    #[arg(long, default_value_t = 0.5)]
    pub cached_discount: f64,
    /// With `--affinity`: the utility a switch must gain beyond the cache it loses (the
    /// gateway's `affinity.switch_margin`), at every lambda; default: chosen per lambda on
    /// a train trace, among 0, 0.01, 0.02, 0.05, 0.1 and affinity off.
    #[arg(long)]
    pub switch_margin: Option<f64>,
    /// Onboarding instead: leave each model out, train without it, add it back from N of
    /// its train outcomes (selected and random probes) with `routewise onboard`'s method,
    /// and compare the pool's AIQ on test with the full retrain. The router is the first
    /// learned router of `--routers` (default knn).
    #[arg(long)]
    pub onboarding: bool,
    /// With `--onboarding`: the probe counts (the "all probes" point is always added).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,25,50,100,200",
        requires = "onboarding"
    )]
    pub probes: Vec<usize>,
    /// With `--onboarding`: leave out at most this many models (a seeded sample); default
    /// every model.
    #[arg(long, requires = "onboarding", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_models: Option<u64>,
    /// With `--onboarding`: evaluate on a held-out fifth of train instead of test (for
    /// choosing settings without the test split).
    #[arg(long, requires = "onboarding")]
    pub validation: bool,
}

/// Runs `routewise eval`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(routes) = &args.routes {
        return describe(&args, routes);
    }
    let kinds = parse_routers(&args.routers)?;
    let (ds, dropped) = load_dataset_with_left_out(&args.data, args.limit)?;
    if args.online {
        return online(&args, &kinds, &ds);
    }
    if args.pacing || args.affinity || args.onboarding {
        let mut ds = ds;
        // Onboarding (when it is the lab that runs) leaves one model out and routes among
        // the others.
        let onboards = !args.pacing && !args.affinity;
        let mut left = dropped;
        left.extend(replay_pool(&mut ds, if onboards { 3 } else { 2 })?);
        if args.pacing {
            return pacing(&args, &kinds, &ds, &left);
        }
        if args.affinity {
            return affinity(&args, &kinds, &ds, &left);
        }
        return onboarding(&args, &kinds, &ds, &left);
    }
    let cascades = if args.cascades {
        let kind: RouterKind = args
            .cascade_router
            .parse()
            .with_context(|| format!("--cascade-router `{}`", args.cascade_router))?;
        Some(kind)
    } else {
        None
    };
    let opts = EvalOptions {
        routers: kinds,
        featurizer: args.featurizer.0,
        n_lambdas: args.n_lambdas as usize,
        lambda: args.lambda,
        seed: args.seed,
        bootstrap: args.bootstrap,
        cascades,
    };
    let report = routewise_eval::evaluate(&ds, &opts, &Bars::default())?;
    {
        let mut err = std::io::stderr().lock();
        for w in report.warnings.iter().filter(|w| !ds.warnings.contains(w)) {
            writeln!(err, "warning: {w}")?;
        }
    }
    let mut out = std::io::stdout().lock();
    write_table(&mut out, &report)?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.plot {
        let svg = render_svg(&plot_input(&report))?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval --online`.
fn online(
    args: &Args,
    kinds: &[RouterKind],
    ds: &routewise_data::Dataset,
) -> anyhow::Result<ExitCode> {
    let router = first_learned(kinds);
    let bandit: BanditConfig = match std::env::var("ROUTEWISE_BANDIT") {
        Ok(s) if !s.trim().is_empty() => {
            serde_json::from_str(&s).context("ROUTEWISE_BANDIT is not a valid bandit config")?
        }
        _ => BanditConfig::default(),
    };
    let opts = OnlineOptions {
        router,
        featurizer: args.featurizer.0,
        lambda: args.lambda.unwrap_or(0.0),
        seed: args.seed,
        bandit,
    };
    let report = routewise_eval::evaluate_online(ds, &opts)?;
    let mut out = std::io::stdout().lock();
    write_online_table(&mut out, &report)?;
    if let Some(path) = &args.json {
        write_json(path, &serde_json::json!({ "online": report }))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, regret_svg(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The first learned router of `--routers` (default knn): the one the stream replays use.
fn first_learned(kinds: &[RouterKind]) -> RouterKind {
    kinds
        .iter()
        .copied()
        .find(|k| RouterKind::ALL_LEARNED.contains(k))
        .unwrap_or(RouterKind::Knn)
}

/// `eval --pacing`.
fn pacing(
    args: &Args,
    kinds: &[RouterKind],
    ds: &routewise_data::Dataset,
    left: &[String],
) -> anyhow::Result<ExitCode> {
    if !(args.budget_fraction > 0.0 && args.budget_fraction.is_finite()) {
        anyhow::bail!("--budget-fraction must be > 0");
    }
    if !(args.days > 0.0 && args.days <= 3660.0) {
        anyhow::bail!("--days must be in (0, 3660]");
    }
    let router = first_learned(kinds);
    let opts = routewise_eval::pacing::PacingOptions {
        router,
        featurizer: args.featurizer.0,
        seed: args.seed,
        budget_fraction: args.budget_fraction,
        days: args.days,
    };
    let r = routewise_eval::pacing::evaluate_pacing(ds, &opts)?;
    for w in &r.warnings {
        writeln!(std::io::stderr(), "warning: {w}")?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "budget pacing: {} requests over {} days, router {}; budget ${:.4} = {:.0}% of always {} (${:.4}, quality {:.4})",
        r.requests,
        r.days,
        r.router,
        r.budget_usd,
        100.0 * r.budget_fraction,
        r.best_single.model,
        r.best_single.spend_usd,
        r.best_single.quality
    )?;
    writeln!(
        out,
        "{:<44} {:>12} {:>9} {:>9}",
        "policy", "spend_usd", "of budget", "quality"
    )?;
    let line = |name: &str, spend: f64, q: f64| {
        format!(
            "{name:<44} {spend:>12.4} {:>8.1}% {q:>9.4}",
            100.0 * spend / r.budget_usd
        )
    };
    writeln!(
        out,
        "{}",
        line(
            &format!(
                "paced: re-solving (window {}, lambda0 {:.3e})",
                r.pacer.window, r.pacer.lambda0
            ),
            r.paced.spend_usd,
            r.paced.quality
        )
    )?;
    for (name, run) in [
        ("  the same from half lambda0", &r.pacer.from_half_lambda0),
        ("  the same from twice lambda0", &r.pacer.from_twice_lambda0),
    ] {
        writeln!(out, "{}", line(name, run.spend_usd, run.quality))?;
    }
    let d = &r.dual_descent;
    writeln!(
        out,
        "{}",
        line(
            &format!("dual descent (step {}, ewma {})", d.step, d.smoothing),
            d.run.spend_usd,
            d.run.quality
        )
    )?;
    writeln!(
        out,
        "{}",
        line("hard cap", r.hard_cap.spend_usd, r.hard_cap.quality)
    )?;
    let h = &r.hindsight_lambda;
    writeln!(
        out,
        "{}",
        line(
            &format!("hindsight lambda {:.4e}", h.lambda),
            h.spend_usd,
            h.quality
        )
    )?;
    if let Some(path) = &args.json {
        write_json(
            path,
            &WithLeftOut {
                report: &r,
                models_left_out: left,
            },
        )?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval --onboarding`.
fn onboarding(
    args: &Args,
    kinds: &[RouterKind],
    ds: &routewise_data::Dataset,
    left: &[String],
) -> anyhow::Result<ExitCode> {
    let opts = routewise_eval::onboarding::OnboardingOptions {
        router: first_learned(kinds),
        featurizer: args.featurizer.0,
        seed: args.seed,
        ns: args.probes.clone(),
        max_models: args.max_models.map(|k| k as usize),
        n_lambdas: args.n_lambdas as usize,
        validation: args.validation,
    };
    let r = routewise_eval::onboarding::evaluate_onboarding(ds, &opts, &Bars::default())?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "onboarding: {} models left out one at a time, router {}, {} {} prompts; full retrain AIQ {:.4}{}",
        r.models_left_out.len(),
        r.router,
        r.n_test,
        if r.validation { "validation" } else { "test" },
        r.full_retrain_aiq,
        if r.validation { " (validation: a held-out fifth of train)" } else { "" }
    )?;
    writeln!(
        out,
        "{:>6} {:>9}  {:>8} {:>8} {:>8}  {:>7} {:>8} {:>6}  {:>9} {:>9} {:>9}",
        "probes",
        "selection",
        "AIQ",
        "AIQ min",
        "gap",
        "Brier",
        "Spearman",
        "AUC",
        "pick rate",
        "vs full",
        "vs oracle"
    )?;
    for p in &r.points {
        writeln!(
            out,
            "{:>6} {:>9}  {:>8.4} {:>8.4} {:>8.4}  {:>7.4} {:>8.3} {:>6}  {:>9.4} {:>9.4} {:>9.4}",
            p.n,
            p.selection,
            p.aiq_mean,
            p.aiq_min,
            p.aiq_gap_mean,
            p.brier_mean,
            p.spearman_mean,
            p.auc_mean.map_or("-".to_string(), |a| format!("{a:.3}")),
            p.pick_rate_mean,
            p.pick_rate_diff_full_mean,
            p.pick_rate_diff_oracle_mean
        )?;
    }
    writeln!(
        out,
        "full retrain: Brier {:.4}, Spearman {:.3}, |pick rate - oracle's| {:.4} (means over the left-out models); pick rates: share of (prompt, lambda) choices; {:.0} s",
        r.full_retrain_brier_mean,
        r.full_retrain_spearman_mean,
        r.full_retrain_pick_rate_diff_oracle_mean,
        r.seconds
    )?;
    if let Some(path) = &args.json {
        write_json(
            path,
            &WithLeftOut {
                report: &serde_json::json!({ "onboarding": r }),
                models_left_out: left,
            },
        )?;
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, routewise_eval::onboarding::onboarding_svg(&r)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval --affinity`.
fn affinity(
    args: &Args,
    kinds: &[RouterKind],
    ds: &routewise_data::Dataset,
    left: &[String],
) -> anyhow::Result<ExitCode> {
    if args
        .switch_margin
        .is_some_and(|m| !(m >= 0.0 && m.is_finite()))
    {
        anyhow::bail!("--switch-margin must be >= 0");
    }
    let router = first_learned(kinds);
    let opts = routewise_eval::affinity::AffinityOptions {
        router,
        featurizer: args.featurizer.0,
        seed: args.seed,
        turns: args.turns,
        cached_discount: args.cached_discount,
        switch_margin: args.switch_margin,
    };
    let r = routewise_eval::affinity::evaluate_affinity(ds, &opts)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "conversation affinity: {} conversations of {} turns, router {}; cached history billed at {:.0}% of the input price; switch margin {}",
        r.conversations,
        r.turns,
        r.router,
        100.0 * (1.0 - r.cached_discount),
        match r.switch_margin {
            Some(m) => m.to_string(),
            None => "chosen per lambda on train (the highest utility, mean score - lambda x cost per turn; off: affinity off)".into(),
        }
    )?;
    writeln!(
        out,
        "{:>10}  {:>8} {:>10} {:>8}  {:>6}  {:>8} {:>10} {:>8}",
        "lambda", "afresh q", "cost_usd", "switches", "margin", "affin. q", "cost_usd", "switches"
    )?;
    for p in &r.points {
        writeln!(
            out,
            "{:>10.3e}  {:>8.4} {:>10.4} {:>8}  {:>6}  {:>8.4} {:>10.4} {:>8}",
            p.lambda,
            p.without.quality,
            p.without.cost_usd,
            p.without.switches,
            p.switch_margin.map_or("off".into(), |m| m.to_string()),
            p.with.quality,
            p.with.cost_usd,
            p.with.switches
        )?;
    }
    match (
        r.mean_cost_ratio_at_equal_quality,
        r.min_cost_ratio,
        r.max_cost_ratio,
    ) {
        (Some(mean), Some(lo), Some(hi)) => writeln!(
            out,
            "affinity's cost / routing afresh's at the same quality (frontiers, {} qualities): mean {mean:.3}, from {lo:.3} to {hi:.3}",
            r.matched.len()
        )?,
        _ => writeln!(out, "the two frontiers share no quality range")?,
    }
    if let Some(path) = &args.json {
        write_json(
            path,
            &WithLeftOut {
                report: &serde_json::json!({ "affinity": r }),
                models_left_out: left,
            },
        )?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval --routes`: description routing as a classifier.
fn describe(args: &Args, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    #[derive(serde::Deserialize)]
    struct File {
        routes: Vec<routewise_signals::RawRoute>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: not a routes file", path.display()))?;
    let mut specs = Vec::with_capacity(file.routes.len());
    for (i, r) in file.routes.into_iter().enumerate() {
        let description = r.when.and_then(|w| w.description).with_context(|| {
            format!("{}: routes[{i}].when.description: missing", path.display())
        })?;
        specs.push(routewise_eval::describe::RouteSpec {
            name: r.name,
            description,
        });
    }
    let ds = &load_dataset(&args.data, args.limit)?;
    let train: Vec<&str> = ds.train().map(|r| r.prompt.as_str()).collect();
    let featurizer = args.featurizer.0.fit(&train)?;
    let embedder = routewise_signals::Embedder::new(std::sync::Arc::new(featurizer));
    let report = routewise_eval::describe::evaluate_descriptions(ds, &specs, &embedder, args.seed)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "description routing on {} ({} routes, {} train / {} test prompts, {} embeddings)",
        ds.name,
        report.routes.len(),
        report.n_train,
        report.n_test,
        args.featurizer.0.name()
    )?;
    writeln!(
        out,
        "{:<28} {:>9} {:>9}",
        "classifier", "accuracy", "macro-F1"
    )?;
    let supervised = format!("supervised kNN (k={})", report.supervised_k);
    for (name, s) in [
        ("zero-shot (description)", report.zero_shot),
        ("ten-shot (description+10)", report.ten_shot),
        ("tf-idf centroid (all train)", report.centroid),
        (supervised.as_str(), report.supervised),
    ] {
        writeln!(out, "{name:<28} {:>9.3} {:>9.3}", s.accuracy, s.macro_f1)?;
    }
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}
