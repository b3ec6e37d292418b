//! `routewise eval --online` (placeholder until the online-learning issue lands it).

use std::process::ExitCode;

/// Runs the online replay evaluation for `routewise eval --online`.
pub fn run(_args: &super::eval::Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`eval --online` is not implemented yet")
}
