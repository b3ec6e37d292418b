//! [`FeedbackService`]: the gateway-facing core of online learning. It records decisions,
//! applies `POST /v1/feedback` (validation, idempotency, durable store update) and keeps
//! the [`OnlineRouter`]'s in-memory statistics in step with the store.
//!
//! Order of a feedback: validate -> store transaction (decision lookup, duplicate check,
//! log append, arm statistics update; fsynced or Redis-acknowledged) -> the router's copy
//! of that arm is replaced by the store's result -> the caller answers 200. A failure
//! anywhere before the store commit leaves nothing behind, so a retried request is safe.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use routewise_router::Decision;

use crate::config::StateConfig;
use crate::feedback::{DecisionRecord, FeedbackAck, FeedbackError, FeedbackRequest};
use crate::router::OnlineRouter;
use crate::store::open::open;
use crate::store::state_store::{FeedbackParams, StateStore, StoreError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Feedback intake and state synchronisation for one gateway instance.
#[derive(Debug, Clone)]
pub struct FeedbackService {
    router: Arc<OnlineRouter>,
    store: Arc<dyn StateStore>,
    ttl_s: u64,
}

impl FeedbackService {
    /// Opens the configured store and loads its statistics into `router`. With Redis
    /// unreachable it still returns (the router keeps its prior; [`Self::available`] is
    /// false and [`Self::refresh`] catches up later).
    pub async fn open(router: Arc<OnlineRouter>, cfg: &StateConfig) -> Result<Self, StoreError> {
        let opened = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || open(&cfg))
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))??
        };
        Self::with_store(router, opened, cfg.decision_ttl_s).await
    }

    /// A service over an already opened store; loads its statistics as [`Self::open`].
    pub async fn with_store(
        router: Arc<OnlineRouter>,
        store: Arc<dyn StateStore>,
        ttl_s: u64,
    ) -> Result<Self, StoreError> {
        let svc = FeedbackService {
            router,
            store,
            ttl_s,
        };
        match svc.refresh().await {
            Ok(()) | Err(StoreError::Unavailable(_)) => Ok(svc),
            Err(e) => Err(e),
        }
    }

    pub fn router(&self) -> &Arc<OnlineRouter> {
        &self.router
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Whether the state store answered its last command (always true for the local
    /// file).
    pub fn available(&self) -> bool {
        self.store.available()
    }

    /// Re-checks availability (Redis `PING`).
    pub async fn check(&self) -> bool {
        self.store.ping().await
    }

    /// The record of `decision` answered by catalog model `served` (`None` for a decision
    /// the online router did not make).
    pub fn record_for(
        &self,
        decision: &Decision,
        id: &str,
        served: usize,
        cost_usd: f64,
        latency_ms: f64,
    ) -> Option<DecisionRecord> {
        self.router.record(
            decision,
            id.to_string(),
            served,
            cost_usd,
            Some(latency_ms),
            now_ms(),
        )
    }

    /// Keeps a decision for the feedback window.
    pub async fn record_decision(&self, rec: DecisionRecord) -> Result<(), StoreError> {
        self.store.record_decision(&rec, self.ttl_s).await
    }

    /// Applies one feedback. `Ok` means it is durably recorded (answer 200); each error
    /// carries its HTTP status ([`FeedbackError::status`]).
    pub async fn submit(&self, req: &FeedbackRequest) -> Result<FeedbackAck, FeedbackError> {
        let fb = req.validate()?;
        let cfg = self.router.config();
        let params = FeedbackParams {
            now_ms: now_ms(),
            ttl_s: self.ttl_s,
            gamma: cfg.forgetting,
            lambda0: cfg.prior_strength,
            fallback_lambda: cfg.lambda.unwrap_or(0.0),
        };
        let (entry, stats) = self.store.apply_feedback(&fb, &params).await?;
        let n = stats.n;
        // The store committed; a statistics shape mismatch only affects this instance's
        // copy (it is logged, and the next refresh retries).
        if let Err(e) = self.router.set_arm(&entry.model, stats) {
            tracing::warn!(model = %entry.model, error = %e, "cannot load updated arm statistics");
        }
        Ok(FeedbackAck {
            decision_id: entry.decision_id,
            model: entry.model,
            reward: entry.reward,
            model_feedback_count: n,
            cascade: entry.cascade,
        })
    }

    /// Pulls every arm's statistics from the store into the router (other instances'
    /// feedback, with Redis). Call every `refresh_interval_ms`.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        for (model, stats) in self.store.load_arms().await? {
            if let Err(e) = self.router.set_arm(&model, stats) {
                tracing::warn!(%model, error = %e, "ignoring incompatible arm statistics");
            }
        }
        Ok(())
    }

    /// Drops decisions past the window (a no-op where the store expires them itself).
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.store.purge_expired(now_ms(), self.ttl_s).await
    }
}
