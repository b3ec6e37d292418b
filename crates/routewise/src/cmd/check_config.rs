//! `routewise check-config FILE`: validates a gateway config the way `serve` would (the
//! file, environment overrides, API-key variables, the router artifact and its agreement
//! with the `models` list) and prints every problem, or `ok`. Exit code 2 on errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use routewise_gateway::{load, LoadError};

#[derive(clap::Args)]
pub struct Args {
    /// The gateway config file (YAML).
    pub file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match load::from_file(&args.file) {
        Ok(state) => {
            let unreachable = load::reachability(&state.config);
            if !unreachable.is_empty() {
                return Ok(super::serve::config_errors(
                    &routewise_gateway::ConfigError {
                        file: state.config.source.clone(),
                        issues: unreachable,
                    },
                ));
            }
            let _ = writeln!(
                std::io::stdout(),
                "ok ({} models, router {})",
                state.upstreams.len(),
                state.engine.router.name()
            );
            let mut err = std::io::stderr().lock();
            for w in &state.config.warnings {
                let _ = writeln!(
                    err,
                    "warning: {}: {}: {}",
                    state.config.source, w.path, w.message
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Config(e)) => Ok(super::serve::config_errors(&e)),
        Err(e) => Err(e.into()),
    }
}
