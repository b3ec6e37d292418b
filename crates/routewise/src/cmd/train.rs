//! `routewise train` (placeholder until the router-lab work lands it).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`train` is not implemented yet")
}
