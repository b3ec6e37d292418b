//! Serving a [`Live`] configuration on a TCP listener: the accept loop, HTTP/1 connections with
//! deadlines, and a shutdown that always ends.
//!
//! * Accept: a connection over `limits.max_connections`, or over
//!   `limits.max_connections_per_ip` for its address (trusted proxies exempt), is accepted
//!   and closed at once ([`crate::limits`]). Accepted sockets get `TCP_NODELAY`.
//! * Each connection has a watchdog ([`conn`]): the request head must arrive within
//!   `header_timeout_ms` (a silent connection is closed then too), an idle keep-alive
//!   connection is closed after `idle_timeout_ms`. Bodies are read within
//!   `body_timeout_ms` ([`crate::http::extract`]). An unparsable request head gets a JSON
//!   error ([`conn`]), counted in `routewise_protocol_errors_total`.
//! * Shutdown: stop accepting, let connections finish their requests (keep-alive off) for
//!   up to `shutdown_grace_ms`; past that, streams still running end with an SSE error
//!   event ([`crate::state::ShutdownPhase::Aborting`]), and what remains is closed. A
//!   connection serving nothing is closed at once if idle, within a second if a request
//!   head is part-way in.

pub mod conn;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::http::body::hold_until_body_ends;
use crate::http::extract::PeerAddr;
use crate::limits::{Counter, Permit};
use crate::reload::Live;
use crate::state::ShutdownPhase;
use crate::upstream::client::MAX_SHARDS;

use self::conn::{Activity, Cut, Timeouts, TrackedIo};

/// Milliseconds on a process-wide monotonic clock (connection deadlines).
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Where connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// As tasks on the caller's runtime (tests, embedding).
    #[default]
    Caller,
    /// Spread round-robin over `n` threads, each running its own single-threaded runtime
    /// with its own upstream connection pool: a request never leaves the thread its
    /// connection was given to, so it pays no cross-thread wake-ups. More requests per
    /// second at saturation, a higher tail when the threads' loads differ (no work
    /// stealing; BENCHMARKS.md, section 5). At most
    /// [`MAX_SHARDS`](crate::upstream::client::MAX_SHARDS) threads.
    Shards(usize),
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains connections
/// (see the module docs), with every connection on the caller's runtime.
pub async fn serve(
    listener: TcpListener,
    state: impl Into<Live>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(listener, state, shutdown, Threads::Caller).await
}

/// [`serve`], with the connections served where `threads` says. The stores the config
/// uses (online state, virtual keys) are attached first ([`crate::AppState::attach_stores`]);
/// a failure there is returned as an error naming the config file and field.
pub async fn serve_on(
    listener: TcpListener,
    state: impl Into<Live>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    threads: Threads,
) -> std::io::Result<()> {
    let live: Live = state.into();
    // Only what the accept loop reads is kept: a reload replaces the rest.
    let (limits, metrics, phase) = {
        let state = live.current();
        (
            state.config.limits.clone(),
            state.metrics.clone(),
            std::sync::Arc::clone(&state.shutdown),
        )
    };
    live.current()
        .attach_stores()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if live.current().config.auth.mode == crate::config::AuthMode::Open
        && listener.local_addr().is_ok_and(|a| !a.ip().is_loopback())
    {
        tracing::warn!(
            "auth is open (`auth: {{mode: open}}`) on a non-loopback address: anyone who reaches the port may spend on your models; set `auth: {{mode: keys}}`"
        );
    }
    let (drain_tx, drain_rx) = watch::channel(false);
    let shard = Shard {
        live: live.clone(),
        app: crate::http::app(live.clone()),
        timeouts: Timeouts {
            header: Duration::from_millis(limits.header_timeout_ms),
            idle: Duration::from_millis(limits.idle_timeout_ms),
        },
        drain: drain_rx,
    };
    // Every shard holds a clone of `alive` until it has closed its last connection.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let mut inboxes = match threads {
        Threads::Caller => {
            let (tx, rx) = mpsc::unbounded_channel();
            let alive = alive.clone();
            tokio::spawn(async move {
                shard.run(rx).await;
                drop(alive);
            });
            vec![tx]
        }
        Threads::Shards(n) => start_shards(&shard, n.clamp(1, MAX_SHARDS), &alive)?,
    };
    drop(alive);
    let connections = Arc::new(Counter::default());
    let mut next = 0usize;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let per_ip = (!limits.trusted_proxies.contains(ip)).then_some(ip);
        let permit = match connections.admit(
            per_ip,
            limits.max_connections,
            limits.max_connections_per_ip,
        ) {
            Ok(p) => p,
            Err(why) => {
                metrics.connection_refused(why);
                drop(stream); // closed at once: never left in the backlog
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // A connection served on another thread is detached from this runtime's reactor.
        let stream = match threads {
            Threads::Caller => Socket::Here(stream),
            Threads::Shards(_) => match stream.into_std() {
                Ok(s) => Socket::Moved(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand an accepted connection over");
                    continue;
                }
            },
        };
        let mut conn = Accepted {
            stream,
            peer,
            permit,
        };
        // Round-robin; a shard whose thread has stopped (a panic) is dropped from the
        // rotation and the connection goes to the next one.
        loop {
            next = (next + 1) % inboxes.len();
            match inboxes[next].send(conn) {
                Ok(()) => break,
                Err(back) => {
                    tracing::error!(
                        threads_left = inboxes.len() - 1,
                        "a connection thread has stopped; serving on without it"
                    );
                    inboxes.swap_remove(next);
                    conn = back.0;
                    if inboxes.is_empty() {
                        break;
                    }
                }
            }
        }
        if inboxes.is_empty() {
            tracing::error!("every connection thread has stopped: no longer accepting");
            break;
        }
    }
    drop(listener);
    drop(inboxes);
    tracing::info!(connections = connections.current(), "draining");
    let _ = drain_tx.send(true);
    phase.send_replace(ShutdownPhase::Draining);
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, all_closed.recv()).await.is_ok();
    if !drained {
        tracing::warn!(
            connections = connections.current(),
            grace_ms = limits.shutdown_grace_ms,
            "shutdown grace period over: ending streams and closing connections"
        );
        // Each shard lets its streams write their error event, then closes what remains.
        phase.send_replace(ShutdownPhase::Aborting);
        let _ = all_closed.recv().await;
    }
    Ok(())
}

/// An accepted connection on its way to the thread that serves it.
struct Accepted {
    stream: Socket,
    peer: SocketAddr,
    permit: Permit,
}

/// An accepted socket: still registered with the accepting runtime, or detached for
/// another thread's runtime to register.
enum Socket {
    Here(TcpStream),
    Moved(std::net::TcpStream),
}

/// What a thread (or the caller's runtime) needs to serve connections.
#[derive(Clone)]
struct Shard {
    live: Live,
    app: Router,
    timeouts: Timeouts,
    drain: watch::Receiver<bool>,
}

/// Starts `n` connection threads, each holding a clone of `alive` until it ends;
/// answers their inboxes.
fn start_shards(
    shard: &Shard,
    n: usize,
    alive: &mpsc::Sender<()>,
) -> std::io::Result<Vec<mpsc::UnboundedSender<Accepted>>> {
    let mut inboxes = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (shard, alive) = (shard.clone(), alive.clone());
        std::thread::Builder::new()
            .name(format!("routewise-conn-{i}"))
            .spawn(move || {
                crate::upstream::client::enter_shard(i + 1);
                rt.block_on(shard.run(rx));
                // What is left on this runtime (upstream connections, background work)
                // ends before the server is told this thread is done.
                rt.shutdown_timeout(Duration::from_secs(1));
                drop(alive);
            })?;
        inboxes.push(tx);
    }
    Ok(inboxes)
}

impl Shard {
    /// Serves the connections sent to `inbox` until it closes (shutdown), then drains
    /// them: they finish, or, once the phase is [`ShutdownPhase::Aborting`], get 200 ms
    /// to write their error events and are closed.
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<Accepted>) {
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                conn = inbox.recv() => match conn {
                    Some(c) => self.spawn(&mut tasks, c),
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        let mut phase = self.live.current().shutdown.subscribe();
        tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => return,
            _ = phase.wait_for(|p| *p == ShutdownPhase::Aborting) => {}
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    fn spawn(&self, tasks: &mut JoinSet<()>, conn: Accepted) {
        let Accepted {
            stream,
            peer,
            permit,
        } = conn;
        let stream = match stream {
            Socket::Here(s) => s,
            Socket::Moved(s) => match TcpStream::from_std(s) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register an accepted connection");
                    return;
                }
            },
        };
        let live = self.live.clone();
        let (app, drain, timeouts) = (self.app.clone(), self.drain.clone(), self.timeouts);
        tasks.spawn(async move {
            let activity = Arc::new(Activity::new(clock_ms()));
            let cut =
                serve_connection(stream, peer, app, timeouts, Arc::clone(&activity), drain).await;
            drop(permit);
            let state = live.current();
            if let Some(why) = cut {
                state.metrics.connection_cut(why);
                tracing::debug!(%peer, reason = why.name(), "connection closed by a deadline");
            }
            if let Some(status) = activity.protocol_error() {
                state.metrics.protocol_error(status);
                tracing::debug!(%peer, status, "unparsable request head answered");
            }
        });
    }
}

/// Serves one connection until it ends, its deadline passes, or the drain finishes it;
/// answers which deadline cut it, if one did.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    timeouts: Timeouts,
    activity: Arc<Activity>,
    mut drain: watch::Receiver<bool>,
) -> Option<Cut> {
    let io = TokioIo::new(TrackedIo::new(stream, Arc::clone(&activity), clock_ms));
    let act = Arc::clone(&activity);
    let svc = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        act.request_started();
        let guard = FinishGuard(Arc::clone(&act));
        let app = app.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(app, req.map(Body::new)).await?;
            Ok::<_, std::convert::Infallible>(hold_until_body_ends(resp, guard))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The watchdog below enforces `header_timeout_ms` (hyper's own default is 30 s).
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut drain_at = drain.borrow().then(clock_ms);
    if drain_at.is_some() {
        activity.drain_started();
        conn.as_mut().graceful_shutdown();
    }
    // While draining, a connection serving nothing (idle, or part-way through a head that
    // hyper waits for) gets DRAIN_HEAD_MS more, not the whole header timeout.
    let deadline = |drain_at: Option<u64>| {
        let (at, why) = activity.deadline(timeouts)?;
        Some(match drain_at {
            Some(d) if !activity.serving() && d + DRAIN_HEAD_MS < at => {
                (d + DRAIN_HEAD_MS, Cut::Drain)
            }
            _ => (at, why),
        })
    };
    loop {
        let sleep = match deadline(drain_at) {
            Some((at, _)) => Duration::from_millis(at.saturating_sub(clock_ms())),
            None => timeouts.idle,
        };
        tokio::select! {
            _ = conn.as_mut() => return None,
            _ = tokio::time::sleep(sleep) => {
                if let Some((at, why)) = deadline(drain_at) {
                    if clock_ms() >= at {
                        // dropping the connection closes the socket
                        return Some(why);
                    }
                }
            }
            _ = activity.changed.notified() => {}
            r = drain.changed(), if drain_at.is_none() => {
                drain_at = Some(clock_ms());
                activity.drain_started();
                if r.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// How long a draining connection that serves nothing may take to finish a request head
/// (one already on its way, or pipelined behind a response still being flushed).
const DRAIN_HEAD_MS: u64 = 1_000;

/// Marks the connection idle again when the response body is done (or dropped).
struct FinishGuard(Arc<Activity>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.request_finished(clock_ms());
    }
}
