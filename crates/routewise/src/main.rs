//! The `routewise` binary: parses the command line and hands each subcommand to a
//! library crate. Each subcommand lives in its own module under `cmd/`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 invalid input (data, config, artifact);
//! `profile` exits 3 when it ends with pairs missing (resume to finish).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
#[cfg(feature = "otel")]
mod otel;

#[derive(Parser)]
#[command(
    name = "routewise",
    version,
    about = "An LLM router: gateway and router lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Learn a router from routing data and write an artifact.
    Train(cmd::train::Args),
    /// Route one prompt with a trained artifact and print the decision as JSON.
    Route(cmd::route::Args),
    /// Fit routers on the train split, evaluate them on the test split.
    Eval(cmd::eval::Args),
    /// Add a model to a trained router from its outcomes on a few probes (no retraining).
    Onboard(cmd::onboard::Args),
    /// Outcome data from live models: send probe prompts to a config's models, grade the
    /// answers, write canonical routing JSONL.
    Profile(cmd::profile::Args),
    /// Probe sets for onboarding: choose the prompts that best identify a new model.
    #[command(subcommand)]
    Probes(cmd::probes::Command),
    /// Find the strong/weak threshold that sends a target share of calls to the strong model.
    Calibrate(cmd::calibrate::Args),
    /// Off-policy evaluation of routing policies (`--validate`: the estimators checked in
    /// simulation on a dataset).
    Replay(cmd::replay::Args),
    /// The gateway's records: export the decisions with feedback from its state store.
    #[command(subcommand)]
    Logs(cmd::logs::Command),
    /// Run the OpenAI-compatible routing gateway.
    Serve(cmd::serve::Args),
    /// Simulate dispatch under load: greedy, greedy with spill, and balanced assignment
    /// of bursts, on the same arrival trace.
    Simulate(cmd::simulate::Args),
    /// Validate a gateway config file and print the errors, or "ok".
    CheckConfig(cmd::check_config::Args),
    /// Virtual API keys (`auth: {mode: keys}`): create, list, revoke, update.
    Keys(cmd::keys::Args),
    /// Manage embedding model weights (fetch, list).
    #[command(subcommand)]
    Models(cmd::models::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => cmd::train::run(a),
        Command::Route(a) => cmd::route::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::Onboard(a) => cmd::onboard::run(a),
        Command::Probes(c) => cmd::probes::run(c),
        Command::Profile(a) => cmd::profile::run(a),
        Command::Replay(a) => cmd::replay::run(a),
        Command::Logs(c) => cmd::logs::run(c),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::CheckConfig(a) => cmd::check_config::run(a),
        Command::Models(c) => cmd::models::run(c),
        Command::Keys(a) => cmd::keys::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => cmd::report_error(&err),
    }
}
