//! `routewise serve`: runs the OpenAI-compatible routing gateway.
//!
//! With `--config FILE` (or `ROUTEWISE_CONFIG`) it serves that config; with none it runs
//! the embedded DEMO (RouterBench replay models, no keys needed). Logs go to stderr,
//! filtered by `ROUTEWISE_LOG` (default `info`; e.g. `warn` hides the per-decision lines),
//! as text or JSON (`--log-format json`). Stops on Ctrl-C / SIGTERM after draining.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use routewise_gateway::{load, LoadError};

#[derive(clap::Args)]
pub struct Args {
    /// Gateway config (YAML). Without it the embedded demo runs.
    #[arg(long, env = "ROUTEWISE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (overrides the config's `listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines queued for the writer thread at most.
const LOG_QUEUE_LINES: usize = 4096;

/// Installs the subscriber. Log lines are formatted on the request's thread but written to
/// stderr by a dedicated thread (tracing-appender), so a slow terminal or pipe never stalls a
/// worker between two requests. The queue holds [`LOG_QUEUE_LINES`] lines (a bounded, small
/// memory cost); it is not lossy: when it is full, logging waits rather than dropping
/// decision lines. The returned guard flushes the queue when dropped.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROUTEWISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("routewise-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}

/// Writes config errors to stderr; exit code 2.
pub fn config_errors(e: &routewise_gateway::ConfigError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{e}");
    ExitCode::from(2)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _log_guard = init_logging(args.log_format);
    let demo = args.config.is_none();
    let state = match &args.config {
        Some(path) => load::from_file(path),
        None => load::demo(),
    };
    let state = match state {
        Ok(s) => s,
        Err(LoadError::Config(e)) => return Ok(config_errors(&e)),
        Err(e) => return Err(e.into()),
    };
    let addr = args.listen.unwrap_or(state.config.listen);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().unwrap_or(addr);
        if demo {
            tracing::warn!(
                "DEMO MODE: no --config given; serving the embedded demo. Every model is answered \
                 by the `replay` provider from recorded RouterBench outcomes: no real model is called."
            );
        }
        for w in &state.config.warnings {
            tracing::warn!(config = %state.config.source, field = %w.path, "{}", w.message);
        }
        tracing::info!(
            listen = %local,
            config = %state.config.source,
            models = state.upstreams.len(),
            router = %state.decider.describe(),
            "routewise gateway listening on http://{local}"
        );
        routewise_gateway::serve(listener, state, shutdown_signal())
            .await
            .context("server error")?;
        tracing::info!("routewise gateway stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
