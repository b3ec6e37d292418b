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

use crate::config::StateConfig;
use crate::feedback::{DecisionRecord, FeedbackAck, FeedbackEntry, FeedbackError, FeedbackRequest};
use crate::router::OnlineRouter;
use crate::store::{StateStore, StoreError};

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
    store: StateStore,
    ttl_s: u64,
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl FeedbackService {
    /// Opens the configured store and loads its statistics into `router`. With Redis
    /// unreachable it still returns (the router keeps its prior; [`Self::available`] is
    /// false and [`Self::refresh`] catches up later).
    pub async fn open(router: Arc<OnlineRouter>, cfg: &StateConfig) -> Result<Self, StoreError> {
        let store = match &cfg.redis_url {
            Some(_) => StateStore::open(cfg)?,
            None => {
                let cfg = cfg.clone();
                tokio::task::spawn_blocking(move || StateStore::open(&cfg))
                    .await
                    .map_err(join_err)??
            }
        };
        let svc = FeedbackService {
            router,
            store,
            ttl_s: cfg.decision_ttl_s,
        };
        match svc.refresh().await {
            Ok(()) | Err(StoreError::Unavailable(_)) => Ok(svc),
            Err(e) => Err(e),
        }
    }

    pub fn router(&self) -> &Arc<OnlineRouter> {
        &self.router
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Whether the state store answered its last command (always true for the local
    /// file). Expose as a gauge in `/metrics` and fail `/readyz` on false... or report it.
    pub fn available(&self) -> bool {
        match &self.store {
            StateStore::Local(_) => true,
            StateStore::Redis(r) => r.available(),
        }
    }

    /// Re-checks availability (Redis `PING`).
    pub async fn check(&self) -> bool {
        match &self.store {
            StateStore::Local(_) => true,
            StateStore::Redis(r) => r.ping().await,
        }
    }

    /// Keeps a decision for the feedback window.
    pub async fn record_decision(&self, rec: DecisionRecord) -> Result<(), StoreError> {
        match &self.store {
            StateStore::Local(s) => {
                let s = Arc::clone(s);
                tokio::task::spawn_blocking(move || s.record_decision(&rec))
                    .await
                    .map_err(join_err)?
            }
            StateStore::Redis(r) => r.record_decision(&rec, self.ttl_s).await,
        }
    }

    /// Applies one feedback. `Ok` means it is durably recorded (answer 200); each error
    /// carries its HTTP status ([`FeedbackError::status`]).
    pub async fn submit(&self, req: &FeedbackRequest) -> Result<FeedbackAck, FeedbackError> {
        let fb = req.validate()?;
        let cfg = self.router.config();
        let (gamma, lambda0, lambda) = (cfg.forgetting, cfg.prior_strength, cfg.lambda);
        let now = now_ms();
        let (entry, stats) = match &self.store {
            StateStore::Local(s) => {
                let s = Arc::clone(s);
                let ttl_ms = self.ttl_s.saturating_mul(1000);
                let id = fb.decision_id.clone();
                tokio::task::spawn_blocking(move || {
                    s.apply_feedback(&id, now, ttl_ms, gamma, lambda0, |dec| {
                        FeedbackEntry::new(&fb, dec, lambda, now)
                    })
                })
                .await
                .map_err(|e| FeedbackError::Store(e.to_string()))??
            }
            StateStore::Redis(r) => {
                let dec = r
                    .decision(&fb.decision_id)
                    .await
                    .map_err(|e| FeedbackError::Unavailable(e.to_string()))?
                    .ok_or_else(|| FeedbackError::UnknownDecision(fb.decision_id.clone()))?;
                let entry = FeedbackEntry::new(&fb, &dec, lambda, now);
                let stats = r
                    .apply_feedback(&dec, &entry, self.ttl_s, gamma, lambda0)
                    .await?;
                (entry, stats)
            }
        };
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
        })
    }

    /// Pulls every arm's statistics from the store into the router (other instances'
    /// feedback, with Redis). Call every `refresh_interval_ms`.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let arms = match &self.store {
            StateStore::Local(s) => {
                let s = Arc::clone(s);
                tokio::task::spawn_blocking(move || s.load_arms())
                    .await
                    .map_err(join_err)??
            }
            StateStore::Redis(r) => r.load_arms().await?,
        };
        for (model, stats) in arms {
            if let Err(e) = self.router.set_arm(&model, stats) {
                tracing::warn!(%model, error = %e, "ignoring incompatible arm statistics");
            }
        }
        Ok(())
    }

    /// Drops decisions past the window from the local store (Redis expires them itself).
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        match &self.store {
            StateStore::Local(s) => {
                let s = Arc::clone(s);
                let ttl_ms = self.ttl_s.saturating_mul(1000);
                tokio::task::spawn_blocking(move || s.purge_expired(now_ms(), ttl_ms))
                    .await
                    .map_err(join_err)?
            }
            StateStore::Redis(_) => Ok(0),
        }
    }
}
