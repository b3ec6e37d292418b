//! Hot reload: the configuration being served ([`Live`]) and how it is replaced.
//!
//! A reload (SIGHUP, `POST /admin/reload`, or `serve --watch-config`) reads the config
//! file again with everything it names (artifacts, demo data) off the async threads
//! ([`crate::load::prepare_file`]), checks that it changes nothing fixed at start
//! ([`fixed_at_start`]), builds the next generation ([`AppState::next`]) and swaps it in
//! atomically (`arc-swap`). Each request loads the current generation once, when it
//! arrives, and keeps it until it ends: in-flight requests finish on the configuration
//! they started on, and the old generation is dropped with its last request.
//!
//! A reload that fails (the file is invalid, an artifact does not load, a setting fixed
//! at start changed) installs nothing: the old configuration keeps serving, every error
//! is logged with its file and field, and `routewise_config_reload_failures_total` counts
//! it. A file whose text and artifacts are unchanged is not rebuilt (a file watcher fires
//! several times for one save). Reloads run one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, Issue};
use crate::load::{self, LoadError};
use crate::state::{AppState, Gateway, StateError};

/// The configuration being served: what the route table and the accept loop hold.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

struct Inner {
    current: ArcSwap<Gateway>,
    /// The config file reloads read (`None`: started from the demo or a built config).
    source: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.0.current.load();
        f.debug_struct("Live")
            .field("source", &self.0.source)
            .field("generation", &current.generation)
            .field("version", &current.version)
            .finish()
    }
}

/// A reload that installed a configuration, or found nothing to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The generation now served.
    pub generation: u64,
    pub version: String,
    /// False when the file and its artifacts were unchanged (nothing was rebuilt).
    pub changed: bool,
}

/// Why a reload installed nothing (the old configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("started without a config file (`serve --config`): there is nothing to reload")]
    NoFile,
    /// The new file, or what it names, is wrong: every problem, with file and field.
    #[error(transparent)]
    Invalid(ConfigError),
    #[error("{0}")]
    Failed(String),
}

impl From<LoadError> for ReloadError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Config(c) => ReloadError::Invalid(c),
            other => ReloadError::Failed(other.to_string()),
        }
    }
}

impl From<StateError> for ReloadError {
    fn from(e: StateError) -> Self {
        LoadError::from(e).into()
    }
}

impl From<AppState> for Live {
    /// Serves `state` without a file to reload from.
    fn from(state: AppState) -> Live {
        Live::new(state, None)
    }
}

impl Live {
    /// Serves `state`; reloads read `source`.
    pub fn new(state: AppState, source: Option<PathBuf>) -> Live {
        Live(Arc::new(Inner {
            current: ArcSwap::new(state.0),
            source,
            reloading: tokio::sync::Mutex::new(()),
        }))
    }

    /// The generation a request arriving now uses.
    pub fn current(&self) -> AppState {
        AppState(self.0.current.load_full())
    }

    /// Reloads the config file (see the module docs). Counted, and logged either way.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.0.reloading.lock().await;
        let current = self.current();
        let result = self.install(&current).await;
        match &result {
            Ok(r) if r.changed => {
                current.metrics.config_reload(true);
                let now = self.current();
                for w in &now.config.warnings {
                    tracing::warn!(config = %now.config.source, field = %w.path, "{}", w.message);
                }
                tracing::info!(
                    generation = r.generation,
                    version = %r.version,
                    models = now.upstreams.len(),
                    router = %now.decider.describe(),
                    "configuration reloaded"
                );
            }
            Ok(r) => {
                tracing::info!(version = %r.version, "configuration unchanged: nothing reloaded")
            }
            Err(e) => {
                current.metrics.config_reload(false);
                match e {
                    ReloadError::Invalid(c) => {
                        for issue in &c.issues {
                            tracing::error!(config = %c.file, field = %issue.path, "{}", issue.message);
                        }
                    }
                    other => tracing::error!(error = %other, "configuration reload failed"),
                }
                tracing::error!(
                    version = %current.version,
                    "configuration reload refused: still serving the previous configuration"
                );
            }
        }
        result
    }

    async fn install(&self, current: &AppState) -> Result<Reloaded, ReloadError> {
        let path = self.0.source.clone().ok_or(ReloadError::NoFile)?;
        let read = tokio::task::spawn_blocking(move || load::read_file(&path))
            .await
            .map_err(|e| ReloadError::Failed(e.to_string()))??;
        if read.version == current.version {
            return Ok(Reloaded {
                generation: current.generation,
                version: current.version.clone(),
                changed: false,
            });
        }
        let fixed = fixed_at_start(current, &read);
        if !fixed.is_empty() {
            return Err(ReloadError::Invalid(ConfigError {
                file: read.config.source.clone(),
                issues: fixed,
            }));
        }
        // Loading and building block (artifacts, the semantic cache's weights, the
        // shadows' thread); a Redis it cannot reach is warned about, as at start.
        let prev = current.clone();
        let next = tokio::task::spawn_blocking(move || {
            let prepared = load::prepare(read)?;
            for w in load::reachability(&prepared.config) {
                tracing::warn!(config = %prepared.config.source, field = %w.path, "{} (reloading anyway)", w.message);
            }
            Ok::<_, ReloadError>(prev.next(prepared)?)
        })
        .await
        .map_err(|e| ReloadError::Failed(e.to_string()))??;
        // The stores (keys, online state) are shared, attached at start: `auth`, `state`
        // and `bandit` are fixed at start.
        let reloaded = Reloaded {
            generation: next.generation,
            version: next.version.clone(),
            changed: true,
        };
        self.0.current.store(Arc::clone(&next.0));
        // Kept shadows execute on the configuration now served.
        if let Some(s) = next.shadows.get() {
            s.target.set(Arc::downgrade(&next.0));
        }
        Ok(reloaded)
    }
}

/// A file change waits this long for more changes before it reloads (an editor's save is
/// several events).
const SETTLE: Duration = Duration::from_millis(250);

/// Reloads on changes to the config file and the artifacts it names (router, shadows),
/// until dropped (`serve --watch-config`).
pub struct Watch {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The files a reload reads: the config file and the artifacts named by the configuration
/// being served and by the file as it now reads (a reload that failed for an artifact
/// not yet written is retried when it appears), each also by its resolved path when it is
/// a symbolic link.
fn watched_files(live: &Live) -> Vec<PathBuf> {
    let current = live.current();
    let mut files: Vec<PathBuf> = live.0.source.iter().cloned().collect();
    let on_disk = live
        .0
        .source
        .as_deref()
        .and_then(|p| crate::config::load(p).ok());
    for config in std::iter::once(&current.config).chain(on_disk.as_ref()) {
        files.extend(config.router.artifact.clone());
        files.extend(config.shadows.iter().map(|s| s.artifact.clone()));
    }
    let mut out = Vec::new();
    for f in files {
        let f = absolute(&f);
        if let Ok(real) = std::fs::canonicalize(&f) {
            if real != f {
                out.push(real);
            }
        }
        out.push(f);
    }
    out
}

/// Whether a file event is one a reload should follow: it names a watched file, or it is
/// an atomic swap of a Kubernetes ConfigMap or Secret volume (`..data`, `..2026_...`).
fn relevant(event: &notify::Event, files: &[PathBuf]) -> bool {
    !event.kind.is_access()
        && event.paths.iter().any(|p| {
            files.contains(p)
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".."))
        })
}

impl Live {
    /// Starts watching the files a reload reads (see [`Watch`]). Their directories are
    /// watched, so a file replaced by a rename (how editors and deployment tools write)
    /// is seen too; after each reload the set follows the new configuration. Must be
    /// called within a tokio runtime.
    pub fn watch(&self) -> Result<Watch, notify::Error> {
        use notify::Watcher;
        if self.0.source.is_none() {
            return Err(notify::Error::generic("started without a config file"));
        }
        let files = Arc::new(std::sync::Mutex::new(watched_files(self)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let seen = Arc::clone(&files);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let files = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if relevant(&event, &files) {
                    let _ = tx.send(());
                }
            })?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut watch_dirs = move |watcher: &mut notify::RecommendedWatcher, list: &[PathBuf]| {
            for dir in list.iter().filter_map(|f| f.parent()) {
                if !dirs.iter().any(|d| d == dir) {
                    match watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                        Ok(()) => dirs.push(dir.to_path_buf()),
                        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch"),
                    }
                }
            }
        };
        let first = files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        watch_dirs(&mut watcher, &first);
        let live = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let the writer finish: reload once the events stop for SETTLE.
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
                tracing::info!("a watched file changed: reloading");
                let _ = live.reload().await;
                let now = watched_files(&live);
                watch_dirs(&mut watcher, &now);
                *files
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
            }
        });
        Ok(Watch { task })
    }
}

/// `path` made absolute against the working directory (watch events carry absolute
/// paths).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What `new` changes that a running gateway cannot: the settings read once at start
/// (the listener and its connection limits, the state store, auth, the decision log's
/// writer) and, with `bandit:`, the bandit with its arms (the served models, their
/// prices) and its prior (the artifact). One issue per setting, by its path.
pub fn fixed_at_start(current: &Gateway, new: &load::Versioned) -> Vec<Issue> {
    let (old, cfg) = (&current.config, &new.config);
    let mut changed: Vec<&str> = Vec::new();
    let mut check = |differs: bool, path: &'static str| {
        if differs {
            changed.push(path);
        }
    };
    check(old.listen != cfg.listen, "listen");
    check(old.state != cfg.state, "state");
    check(old.auth.mode != cfg.auth.mode, "auth.mode");
    check(
        old.auth.cache_ttl_ms != cfg.auth.cache_ttl_ms,
        "auth.cache_ttl_s",
    );
    check(old.decision_log != cfg.decision_log, "log.decisions");
    let (a, b) = (&old.limits, &cfg.limits);
    // The connection limits the accept loop read at start.
    macro_rules! fixed_limits {
        ($($field:ident),*) => {
            $(check(a.$field != b.$field, concat!("limits.", stringify!($field)));)*
        };
    }
    fixed_limits!(
        connect_timeout_ms,
        header_timeout_ms,
        idle_timeout_ms,
        max_connections,
        max_connections_per_ip,
        shutdown_grace_ms,
        trusted_proxies
    );
    check(old.bandit != cfg.bandit, "bandit");
    if old.bandit.is_some() && cfg.bandit.is_some() {
        check(arms(old) != arms(cfg), "models");
        check(old.router.mode != cfg.router.mode, "router.mode");
        check(
            current.artifact_digest != new.artifact_digest,
            "router.artifact",
        );
    }
    changed
        .into_iter()
        .map(|path| Issue {
            path: path.to_string(),
            message: if matches!(path, "models" | "router.artifact" | "router.mode") {
                "with `bandit:`, the served models (names, prices, quality tiers), the router mode and the artifact are the bandit's arms and prior, fixed at start: restart routewise to change them".into()
            } else {
                "read once at start: restart routewise to change it (the reload was refused)".into()
            },
        })
        .collect()
}

/// The bandit's arms as a config names them: model names with prices and quality tiers
/// (the zero-data prior's scores).
type Arm<'a> = (&'a str, Option<(f64, f64)>, Option<u32>);

fn arms(config: &Config) -> Vec<Arm<'_>> {
    config
        .models
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.price.map(|p| (p.input_per_mtok, p.output_per_mtok)),
                m.quality_tier,
            )
        })
        .collect()
}
