//! One module per subcommand, plus the shared error reporting.

use std::io::Write;
use std::process::ExitCode;

pub mod calibrate;
pub mod check_config;
pub mod eval;
pub mod eval_online;
pub mod featurize;
pub mod models;
pub mod route;
pub mod serve;
pub mod train;

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
