//! `routewise models ...` (placeholder until the embeddings issue lands it).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// List known embedding models and whether their weights are present.
    List,
}

pub fn run(_cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`models` is not implemented yet")
}
