//! One module per subcommand, plus the shared error reporting.

use std::io::Write;
use std::process::ExitCode;

use routewise_features::FeaturizerKind;

pub mod calibrate;
pub mod check_config;
pub mod eval;
pub mod eval_online;
pub mod models;
pub mod route;
pub mod serve;
pub mod train;

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
    err.chain()
        .any(|e| e.is::<routewise_data::DataError>() || e.is::<routewise_router::RouterError>())
}
