//! Where online state lives: [`local`] (redb file, the embedded default) or [`redis`]
//! (shared by several instances). [`StateStore`] picks one from a [`StateConfig`].

pub mod local;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

pub use local::LocalStore;
pub use redis::RedisStore;

use crate::config::StateConfig;

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
}

/// The configured store.
#[derive(Debug, Clone)]
pub enum StateStore {
    Local(Arc<LocalStore>),
    Redis(RedisStore),
}

impl StateStore {
    /// Redis when `redis_url` is set (connected lazily), else the local file.
    pub fn open(cfg: &StateConfig) -> Result<Self, StoreError> {
        match &cfg.redis_url {
            Some(url) => Ok(StateStore::Redis(RedisStore::new(
                url,
                &cfg.redis_prefix,
                Duration::from_millis(cfg.redis_timeout_ms.max(1)),
            )?)),
            None => Ok(StateStore::Local(Arc::new(LocalStore::open(&cfg.path)?))),
        }
    }

    /// `local` or `redis` (for metrics labels).
    pub fn kind(&self) -> &'static str {
        match self {
            StateStore::Local(_) => "local",
            StateStore::Redis(_) => "redis",
        }
    }
}
