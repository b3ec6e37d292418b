//! The online learner at run time (the config's `bandit:` and `state:` blocks): the
//! bandit router is built with the state ([`crate::state`]; it is the decider), and
//! [`Online`] holds what is opened when the server starts: the state store behind the
//! [`FeedbackService`] and a background task that pulls shared statistics every
//! `state.refresh_interval_ms` (Redis: other instances' feedback) and purges expired
//! decisions hourly. The learning itself lives in [`routewise_online`]; feedback records
//! are written by the pipeline's record stage ([`crate::pipeline::record`]) and
//! `POST /v1/feedback` is served by [`crate::http::feedback`].
//!
//! Store health: the store remembers whether its last command succeeded (Redis; the
//! local file is always available); the maintenance task exercises it every refresh, so
//! `/readyz` reads a state at most one refresh interval old without waiting on the store.
//! An outage and its end are logged once each, by the maintenance task; the requests that
//! meet the outage log at debug level only (and are counted in the metrics).

use std::sync::{Arc, Weak};
use std::time::Duration;

use routewise_online::{FeedbackService, OnlineRouter, StateConfig, StoreError};
use tokio::task::JoinHandle;

/// The online router with its opened state.
#[derive(Debug)]
pub struct Online {
    pub router: Arc<OnlineRouter>,
    pub feedback: Arc<FeedbackService>,
    task: JoinHandle<()>,
}

impl Drop for Online {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Online {
    /// Opens `state`'s store, loads its statistics into `router` and starts the
    /// maintenance task.
    pub async fn open(
        router: Arc<OnlineRouter>,
        state: &StateConfig,
    ) -> Result<Online, StoreError> {
        let feedback = Arc::new(FeedbackService::open(Arc::clone(&router), state).await?);
        if !feedback.available() {
            log_store_change(feedback.store().kind(), false, "unreachable at start-up");
        }
        let task = tokio::spawn(maintain(
            Arc::downgrade(&feedback),
            Duration::from_millis(state.refresh_interval_ms),
        ));
        Ok(Online {
            router,
            feedback,
            task,
        })
    }
}

/// Periodic refresh of shared statistics and purge of expired decisions; ends when the
/// service is dropped.
async fn maintain(svc: Weak<FeedbackService>, every: Duration) {
    const PURGE_EVERY: Duration = Duration::from_secs(3600);
    let mut since_purge = Duration::ZERO;
    let mut was_up = svc.upgrade().is_some_and(|s| s.available());
    loop {
        tokio::time::sleep(every).await;
        let Some(svc) = svc.upgrade() else { return };
        let refreshed = svc.refresh().await;
        let up = refreshed.is_ok() && svc.available();
        if up != was_up {
            let why = match &refreshed {
                Err(e) => e.to_string(),
                Ok(()) => "reachable again".to_string(),
            };
            log_store_change(svc.store().kind(), up, &why);
            was_up = up;
        }
        if let Err(e) = refreshed {
            tracing::debug!(error = %e, "online state refresh failed");
        }
        since_purge += every;
        if since_purge >= PURGE_EVERY {
            since_purge = Duration::ZERO;
            match svc.purge_expired().await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "expired decisions purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot purge expired decisions"),
            }
        }
    }
}

/// Logs a change of the store's health (once per change, not per request).
fn log_store_change(store: &'static str, up: bool, detail: &str) {
    if up {
        tracing::info!(store, "the online state store is reachable again");
    } else {
        tracing::warn!(
            store,
            error = detail,
            "the online state store is unreachable: routing goes on with the last known statistics; feedback is refused until it is back"
        );
    }
}
