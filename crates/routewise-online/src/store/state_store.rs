//! The [`StateStore`] trait every backend implements, and its types.

use crate::bandit::ArmStats;
use crate::feedback::{DecisionRecord, FeedbackEntry, FeedbackError, ValidFeedback};

/// Errors of the state stores (feedback has its own typed errors,
/// [`crate::FeedbackError`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("invalid state config: {0}")]
    Config(String),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store: {0}")]
    Backend(String),
    /// The local file is open in another process (a running gateway).
    #[error("the state file {0} is in use by another process")]
    Locked(String),
}

/// What applying a feedback needs besides the feedback itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackParams {
    /// Unix time now, in milliseconds.
    pub now_ms: u64,
    /// The feedback window (`state.decision_ttl_s`).
    pub ttl_s: u64,
    /// Forgetting factor and prior strength of the bandit ([`crate::BanditConfig`]).
    pub gamma: f64,
    pub lambda0: f64,
    /// The reward's cost weight for decision records that predate recording it.
    pub fallback_lambda: f64,
}

/// A store of decisions, feedback and bandit statistics.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// `local` or `redis` (metrics labels, messages).
    fn kind(&self) -> &'static str;

    /// Whether the last command reached the store (a local file always does).
    fn available(&self) -> bool {
        true
    }

    /// Re-checks availability.
    async fn ping(&self) -> bool;

    /// Keeps a decision for `ttl_s` seconds.
    async fn record_decision(&self, rec: &DecisionRecord, ttl_s: u64) -> Result<(), StoreError>;

    /// Atomically: looks the decision up (unknown or expired), refuses a duplicate, logs
    /// the entry and updates the answering model's statistics. `Ok` means durable.
    async fn apply_feedback(
        &self,
        fb: &ValidFeedback,
        params: &FeedbackParams,
    ) -> Result<(FeedbackEntry, ArmStats), FeedbackError>;

    /// Every arm's statistics.
    async fn load_arms(&self) -> Result<Vec<(String, ArmStats)>, StoreError>;

    /// Drops decisions older than `ttl_s` (a store with native expiry does nothing);
    /// returns how many were removed.
    async fn purge_expired(&self, now_ms: u64, ttl_s: u64) -> Result<usize, StoreError>;

    /// Entries in the feedback log.
    async fn feedback_log_len(&self) -> Result<u64, StoreError>;

    /// The feedback log's entries from `since_ms` (Unix ms) on, in log order
    /// (`routewise logs export`): by `received_ms` in the local store, by Redis's append
    /// time (its stream ids) in Redis.
    async fn feedback_entries(&self, since_ms: u64) -> Result<Vec<FeedbackEntry>, StoreError>;
}
