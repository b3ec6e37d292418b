//! `routewise route` (placeholder until the router-lab work lands it).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`route` is not implemented yet")
}
