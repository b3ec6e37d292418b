//! One module per subcommand, plus what several commands share: dataset loading,
//! progress bars, the `--featurizer` and `--routers` parsing, JSON output, and the error
//! reporting with its exit codes.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use routewise_data::{Dataset, Split};
use routewise_features::FeaturizerKind;
use routewise_router::RouterKind;

pub mod calibrate;
pub mod check_config;
pub mod eval;
pub mod keys;
pub mod logs;
pub mod models;
pub mod onboard;
pub mod probes;
pub mod profile;
pub mod replay;
pub mod route;
pub mod serve;
pub mod simulate;
pub mod train;

/// A progress bar (`len`) or spinner (`None`) on stderr, hidden when stderr is not a
/// terminal.
pub fn progress(len: Option<u64>, msg: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
        let style = match len {
            Some(_) => ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}")
                .map(|s| s.progress_chars("=> ")),
            None => ProgressStyle::with_template("{spinner} {msg} {elapsed}"),
        };
        if let Ok(style) = style {
            pb.set_style(style);
        }
        if len.is_none() {
            pb.enable_steady_tick(Duration::from_millis(120));
        }
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_message(msg.to_string());
    pb
}

/// [`routewise_eval::Progress`] drawn as indicatif bars on stderr.
#[derive(Default)]
pub struct Bars(RefCell<Option<ProgressBar>>);

impl routewise_eval::Progress for Bars {
    fn start(&self, message: &str, len: Option<u64>) {
        self.finish();
        *self.0.borrow_mut() = Some(progress(len, message));
    }

    fn set_position(&self, pos: u64) {
        if let Some(pb) = self.0.borrow().as_ref() {
            pb.set_position(pos);
        }
    }

    fn finish(&self) {
        if let Some(pb) = self.0.borrow_mut().take() {
            pb.finish_and_clear();
        }
    }
}

/// Loads the dataset, applying `--limit` per split, and prints its warnings on stderr
/// (they also stay in `ds.warnings`, which `eval` reports in its JSON). A model with no
/// outcome in the train split is left out, with a warning: nothing can be learnt about it
/// (a router would predict it a score and a cost of 0, and send cost-bound traffic to it).
pub fn load_dataset(path: &Path, limit: Option<usize>) -> anyhow::Result<Dataset> {
    Ok(load_dataset_with_left_out(path, limit)?.0)
}

/// [`load_dataset`], with the names of the models it left out (for the reports'
/// `models_left_out`, [`WithLeftOut`]).
pub fn load_dataset_with_left_out(
    path: &Path,
    limit: Option<usize>,
) -> anyhow::Result<(Dataset, Vec<String>)> {
    let pb = progress(None, "loading data");
    let mut ds = Dataset::load(path)?;
    if let Some(n) = limit {
        ds.truncate_per_split(n);
    }
    pb.finish_and_clear();
    let left = drop_models_without_train_outcomes(&mut ds);
    if !left.is_empty() {
        let names: Vec<String> = left.iter().map(|m| format!("`{m}`")).collect();
        ds.warnings.push(format!(
            "{} {} no outcome in the train split, so nothing can be learnt about {}; left \
             out: {}",
            left.len(),
            if left.len() == 1 {
                "model has"
            } else {
                "models have"
            },
            if left.len() == 1 { "it" } else { "them" },
            names.join(", ")
        ));
    }
    let mut err = std::io::stderr().lock();
    for w in &ds.warnings {
        writeln!(err, "warning: {w}")?;
    }
    Ok((ds, left))
}

/// `value_parser` of a policy number (lambda, a budget): finite and >= 0. A negative
/// lambda would reward cost, and NaN compares false with everything.
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(v) => Err(format!("must be a finite number >= 0, got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `value_parser` of a probability or share: in [0, 1].
pub fn unit_interval(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("must be in [0, 1], got {v}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Leaves out the models no train prompt has an outcome for (when there is a train
/// split); returns their names.
fn drop_models_without_train_outcomes(ds: &mut Dataset) -> Vec<String> {
    let mut seen = vec![false; ds.models.len()];
    let mut any_train = false;
    for r in ds.train() {
        any_train = true;
        for (s, o) in seen.iter_mut().zip(&r.outcomes) {
            *s |= o.is_some();
        }
    }
    if !any_train || seen.iter().all(|s| *s) {
        return Vec::new();
    }
    let left = ds
        .models
        .iter()
        .zip(&seen)
        .filter(|(_, s)| !**s)
        .map(|(m, _)| m.clone())
        .collect();
    ds.keep_models(&seen);
    left
}

/// The dataset for a lab that replays whole policies (`eval --affinity`, `--pacing`,
/// `--onboarding`, `simulate`, `replay --validate`). These use only the prompts with every
/// model's outcome, so on sparse data they would measure a handful of prompts: the models
/// that keep most test prompts incomplete are left out instead
/// ([`routewise_data::coverage::replay_pool`] on the test split, which these labs report
/// on), with a warning on stderr. Returns the names left out (the JSON reports'
/// `models_left_out`, see [`WithLeftOut`]); at least `min_models` stay.
pub fn replay_pool(ds: &mut Dataset, min_models: usize) -> anyhow::Result<Vec<String>> {
    let nm = ds.models.len();
    let has_test = ds.records.iter().any(|r| r.split == Split::Test);
    let values: Vec<f64> = ds
        .records
        .iter()
        .filter(|r| !has_test || r.split == Split::Test)
        .flat_map(|r| {
            (0..nm).map(move |m| {
                r.outcomes
                    .get(m)
                    .and_then(Option::as_ref)
                    .map_or(f64::NAN, |o| o.score)
            })
        })
        .collect();
    let pool = routewise_data::coverage::replay_pool(&values, nm, min_models);
    let left: Vec<String> = ds
        .models
        .iter()
        .zip(&pool.keep)
        .filter(|(_, &k)| !k)
        .map(|(m, _)| m.clone())
        .collect();
    if left.is_empty() {
        return Ok(left);
    }
    let n = values.len() / nm.max(1);
    ds.keep_models(&pool.keep);
    writeln!(
        std::io::stderr().lock(),
        "warning: only {} of {n} {}prompts have every model's outcome, and this \
         evaluation uses only such prompts; it leaves out {} of {nm} models so that {} do: \
         {}",
        pool.complete_before,
        if has_test { "test " } else { "" },
        left.len(),
        pool.complete_after,
        left.join(", ")
    )?;
    Ok(left)
}

/// A JSON report with the top-level key `models_left_out` after its own keys, when
/// [`replay_pool`] left some models out (the report's bytes are unchanged otherwise).
#[derive(serde::Serialize)]
pub struct WithLeftOut<'a, T> {
    #[serde(flatten)]
    pub report: &'a T,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub models_left_out: &'a [String],
}

/// Parses the `--routers` list, keeping the order and dropping duplicates; the baselines
/// follow.
pub fn parse_routers(names: &[String]) -> anyhow::Result<Vec<RouterKind>> {
    let mut kinds: Vec<RouterKind> = Vec::new();
    for n in names.iter().filter(|n| !n.trim().is_empty()) {
        kinds.push(n.parse()?);
    }
    Ok(routewise_eval::report::with_baselines(&kinds))
}

/// Writes `value` as pretty JSON (with a final newline) to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// `--featurizer`: a [`FeaturizerKind`] whose `--help` lists every featurizer with its
/// description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeaturizerArg(pub FeaturizerKind);

impl clap::ValueEnum for FeaturizerArg {
    fn value_variants<'a>() -> &'a [Self] {
        const ALL: [FeaturizerArg; 4] = [
            FeaturizerArg(FeaturizerKind::ALL[0]),
            FeaturizerArg(FeaturizerKind::ALL[1]),
            FeaturizerArg(FeaturizerKind::ALL[2]),
            FeaturizerArg(FeaturizerKind::ALL[3]),
        ];
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()).help(self.0.description()))
    }
}

/// Prints `err` with its causes to stderr and returns the exit code: 2 when the
/// failure is invalid input (data, config, artifact), else 1.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {err:#}");
    if is_invalid_input(err) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// Invalid input: a dataset, artifact or config the user gave us is wrong.
fn is_invalid_input(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<routewise_data::DataError>()
            || e.is::<routewise_router::RouterError>()
            || matches!(
                e.downcast_ref::<routewise_gateway::profile::ProfileError>(),
                Some(p) if !matches!(
                    p,
                    routewise_gateway::profile::ProfileError::Io { .. }
                        | routewise_gateway::profile::ProfileError::Probes(
                            routewise_data::DataError::Io { .. }
                        )
                )
            )
            || matches!(
                e.downcast_ref::<routewise_eval::EvalError>(),
                Some(routewise_eval::EvalError::Split(_) | routewise_eval::EvalError::Config(_))
            )
    })
}
