//! `routewise logs export`: the decisions that received feedback, read from the gateway's
//! state store (its feedback log, which keeps each decision's replay context), written as
//! the gateway's JSON log lines (a `routewise::decision` and a `routewise::feedback` line
//! per decision), so that `routewise replay --log` reads an export like a log
//! ([`routewise_eval::ope_log::entry_lines`]).
//!
//! The local store (a redb file) is locked by a running gateway: export from it while the
//! gateway is stopped, or use Redis, which any number of readers share.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use routewise_online::Backend;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the decisions with feedback (and their replay context) as JSON log lines.
    Export(ExportArgs),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The gateway's config file (its `state:` says where the store is).
    #[arg(long)]
    pub config: PathBuf,
    /// Only feedback from this point on: a duration back from now (`90s`, `30m`, `24h`,
    /// `7d`) or a Unix time in milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Output file (JSON lines).
    #[arg(long)]
    pub out: PathBuf,
}

/// `--since` as Unix milliseconds.
fn since_ms(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    let s = s.trim();
    let unit = |c: char| match c {
        's' => Some(1_000u64),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    match s.chars().last().and_then(unit) {
        Some(ms) => {
            let n: u64 = s[..s.len() - 1]
                .parse()
                .with_context(|| format!("--since `{s}`: expected a number before the unit"))?;
            Ok(now_ms.saturating_sub(n.saturating_mul(ms)))
        }
        None => s.parse().with_context(|| {
            format!("--since `{s}`: expected a duration (90s, 30m, 24h, 7d) or Unix milliseconds")
        }),
    }
}

/// Runs `routewise logs`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Export(args) = cmd;
    let config = routewise_gateway::config::load(&args.config)?;
    let now_ms = routewise_online::service::now_ms();
    let since = match &args.since {
        Some(s) => since_ms(s, now_ms)?,
        None => 0,
    };
    let state = &config.state;
    if state.backend() == Backend::Local && !state.path.exists() {
        bail!(
            "{}: state.path: no state store at {} (feedback is kept only with `bandit:` configured)",
            args.config.display(),
            state.path.display()
        );
    }
    let store = routewise_online::store::open::open(state)
        .with_context(|| format!("{}: cannot open the state store", args.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let entries = rt.block_on(store.feedback_entries(since))?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| format!("cannot write {}", args.out.display()))?,
    );
    let (mut written, mut without) = (0usize, 0usize);
    for e in &entries {
        match routewise_eval::ope_log::entry_lines(e) {
            Some(lines) => {
                for l in lines {
                    writeln!(out, "{l}")?;
                }
                written += 1;
            }
            None => without += 1,
        }
    }
    out.flush()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "wrote {written} decisions with feedback to {}{}",
        args.out.display(),
        if without > 0 {
            format!(" ({without} older entries have no replay context and were left out)")
        } else {
            String::new()
        }
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_durations_and_unix_milliseconds() {
        let now = 10 * 86_400_000;
        assert_eq!(since_ms("90s", now).unwrap(), now - 90_000);
        assert_eq!(since_ms("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(since_ms("24h", now).unwrap(), now - 86_400_000);
        assert_eq!(since_ms("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(since_ms("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(since_ms("99999d", now).unwrap(), 0);
        assert!(since_ms("xh", now).is_err());
        assert!(since_ms("yesterday", now).is_err());
    }
}
