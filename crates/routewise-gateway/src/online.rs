//! The online learner at run time (the config's `bandit:` and `state:` blocks): the
//! bandit router is built with the state ([`crate::state`]; it is the decider), and
//! [`Online`] holds what is opened when the server starts: the state store behind the
//! [`FeedbackService`] and a background task that pulls shared statistics every
//! `state.refresh_interval_ms` (Redis: other instances' feedback) and purges expired
//! decisions hourly. The learning itself lives in [`routewise_online`]; feedback records
//! are written by the pipeline's record stage ([`crate::pipeline::record`]) and
//! `POST /v1/feedback` is served by [`crate::http::feedback`].

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
    loop {
        tokio::time::sleep(every).await;
        let Some(svc) = svc.upgrade() else { return };
        if let Err(e) = svc.refresh().await {
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
