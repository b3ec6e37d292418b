//! `routewise serve`: runs the OpenAI-compatible routing gateway.
//!
//! With `--config FILE` (or `ROUTEWISE_CONFIG`) it serves that config; with none it runs
//! the embedded DEMO (RouterBench replay models, no keys needed). Logs go to stderr,
//! filtered by `ROUTEWISE_LOG` (default `info`; e.g. `warn` hides the per-decision lines),
//! as text or JSON (`--log-format json`). Stops on Ctrl-C / SIGTERM after draining (for
//! at most `limits.shutdown_grace_ms`). SIGHUP reloads the config file, as do `POST
//! /admin/reload` and, with `--watch-config`, a change to the file or to the router
//! artifact it names (`routewise_gateway::reload`); a reload that fails keeps the old
//! configuration serving.
//!
//! Start-up order: config, then the open-file limit raised to fit `limits.max_connections`,
//! then the online state store opened (a locked or unreadable store fails here), and only
//! then the socket bound and "listening" logged.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use routewise_gateway::server::Threads;
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
    /// Threads serving connections (default: one per core; thread-per-core: at most 256).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How connections are spread over the threads.
    #[arg(long, value_enum, default_value_t = RuntimeKind::WorkStealing)]
    pub runtime: RuntimeKind,
    /// Reload when the config file or the router artifact it names changes on disk
    /// (as SIGHUP does).
    #[arg(long, requires = "config")]
    pub watch_config: bool,
}

/// The two ways of serving connections (BENCHMARKS.md, section 5, compares them).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RuntimeKind {
    /// One tokio runtime whose threads steal work from each other: the lowest latency
    /// and the steadiest tail while the machine is shared or unevenly loaded.
    WorkStealing,
    /// Each thread serves its own connections on its own single-threaded runtime with
    /// its own upstream pool: no cross-thread wake-ups, so more requests per second at
    /// saturation (+30% in the closed loop at 64 connections), at the cost of a higher
    /// tail when one thread's connections are busier than another's.
    ThreadPerCore,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log lines queued for the writer thread at most.
const LOG_QUEUE_LINES: usize = 4096;

/// What must live as long as the server: the log writer (flushes when dropped) and, with
/// the `otel` feature, the span exporter.
struct TelemetryGuard {
    _log: tracing_appender::non_blocking::WorkerGuard,
    #[cfg(feature = "otel")]
    _otel: Option<crate::otel::OtelGuard>,
}

/// Installs the subscriber. Log lines are formatted on the request's thread but written to
/// stderr by a dedicated thread (tracing-appender), so a slow terminal or pipe never stalls a
/// worker between two requests. The queue holds [`LOG_QUEUE_LINES`] lines (a bounded, small
/// memory cost); it is not lossy: when it is full, logging waits rather than dropping
/// decision lines. The log filter (`ROUTEWISE_LOG`) applies to the log output only, so the
/// span exporter (the `otel` feature) sees the debug-level pipeline spans that the log
/// never pays for.
fn init_logging(
    format: LogFormat,
    #[allow(unused_variables)] runtime: &tokio::runtime::Handle,
) -> anyhow::Result<TelemetryGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROUTEWISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The writer thread flushes after each batch it takes from the queue: one write(2)
    // per batch of lines, not per line.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("routewise-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    // Colours only for a terminal (escape codes in a log file or a pipe are noise).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Text => Box::new(fmt.with_filter(filter)),
        LogFormat::Json => Box::new(fmt.json().with_filter(filter)),
    };
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    {
        let (otel, otel_guard) = if crate::otel::enabled() {
            let (layer, g) = crate::otel::layer(runtime.clone())?;
            (Some(layer), Some(g))
        } else {
            (None, None)
        };
        let _ = registry.with(otel).try_init();
        Ok(TelemetryGuard {
            _log: guard,
            _otel: otel_guard,
        })
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = registry.try_init();
        Ok(TelemetryGuard { _log: guard })
    }
}

/// Writes config errors to stderr; exit code 2.
pub fn config_errors(e: &routewise_gateway::ConfigError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{e}");
    ExitCode::from(2)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let (workers, served_on) = match args.runtime {
        RuntimeKind::WorkStealing => (threads, Threads::Caller),
        // This runtime then only accepts connections and runs the background work
        // (signals, the online router's upkeep, exporters).
        RuntimeKind::ThreadPerCore => (1, Threads::Shards(threads)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let _telemetry = init_logging(args.log_format, rt.handle())?;
    // SIGHUP is caught from here on, before the config loads (its default action would
    // kill the process); one that arrives during start-up is acted on once reloads can
    // start.
    let hup = {
        let _in_runtime = rt.enter();
        catch_sighup()?
    };
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
    rt.block_on(async move {
        raise_open_file_limit(state.config.limits.max_connections);
        if let Ok(k) = std::env::var(routewise_gateway::http::auth::ADMIN_KEY_ENV) {
            if !k.is_empty() {
                state.set_admin_key(&k);
            }
        }
        if let Err(e) = state.attach_stores().await {
            return Ok(config_errors(&e));
        }
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
        for w in load::reachability(&state.config) {
            tracing::warn!(config = %state.config.source, field = %w.path, "{} (serving anyway; the cache misses until it answers)", w.message);
        }
        tracing::info!(
            listen = %local,
            config = %state.config.source,
            models = state.upstreams.len(),
            router = %state.decider.describe(),
            "routewise gateway listening on http://{local}"
        );
        // What the end of the process needs; the first configuration itself is dropped
        // once a reload replaces it.
        let (keys, decision_log) = (Arc::clone(&state.keys), Arc::clone(&state.decision_log));
        // Reloads start once the stores are attached (a reload shares them).
        let live = routewise_gateway::Live::new(state, args.config.clone());
        reload_on_sighup(&live, hup);
        // Watching stops when this guard drops, with the server.
        let _watch = if args.watch_config {
            Some(live.watch().context("cannot watch the config file")?)
        } else {
            None
        };
        let served =
            routewise_gateway::server::serve_on(listener, live, shutdown_signal(), served_on)
                .await;
        // Key spend settled by the last requests is written before the process ends.
        if let Some(keys) = keys.get() {
            if !keys.drain(Duration::from_secs(2)).await {
                tracing::warn!("key spend still settling after 2 s was not written");
            }
        }
        // The decisions still queued are written before the log is flushed.
        if !decision_log.flush(Duration::from_secs(2)) {
            tracing::warn!("the decision log did not drain within 2 s");
        }
        served.context("server error")?;
        tracing::info!("routewise gateway stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// File descriptors kept for everything but client connections (upstream connections,
/// the state store, logs).
const SPARE_FDS: u64 = 1024;

/// Raises the soft open-file limit (up to the hard limit) so that `max_connections`
/// client connections fit; warns when the hard limit is too low.
fn raise_open_file_limit(max_connections: usize) {
    let wanted = max_connections as u64 + SPARE_FDS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            open_file_limit = got,
            max_connections,
            "the open-file limit is below limits.max_connections + {SPARE_FDS}: connections past it are refused by the OS; raise `ulimit -Hn` or lower limits.max_connections"
        ),
        Ok(got) => tracing::debug!(open_file_limit = got, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Reloads the config file on SIGHUP (whose default action would kill the process).
/// SIGHUP, caught (not yet acted on).
#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

fn catch_sighup() -> anyhow::Result<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).context("cannot handle SIGHUP")
    }
    #[cfg(not(unix))]
    Ok(())
}

/// Reloads the config file on each SIGHUP caught by `hup`.
fn reload_on_sighup(live: &routewise_gateway::Live, hup: Hangup) {
    #[cfg(unix)]
    {
        let mut hup = hup;
        let live = live.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                // The outcome is logged and counted by the reload itself.
                let _ = live.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (live, hup);
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
