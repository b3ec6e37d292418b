//! Choosing and opening the configured backend.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Backend, StateConfig};
use crate::store::budget::{BudgetStore, LocalBudgets};
use crate::store::keys::KeyStore;
use crate::store::local::LocalStore;
use crate::store::redis::RedisStore;
use crate::store::state_store::{StateStore, StoreError};

/// One opened backend.
enum Opened {
    Local(LocalStore),
    Redis(RedisStore),
}

fn open_backend(cfg: &StateConfig) -> Result<Opened, StoreError> {
    match (cfg.backend(), &cfg.redis_url) {
        (Backend::Redis, Some(url)) => Ok(Opened::Redis(RedisStore::new(
            url,
            &cfg.redis_prefix,
            Duration::from_millis(cfg.redis_timeout_ms.max(1)),
        )?)),
        (Backend::Redis, None) => Err(StoreError::Config(
            "the redis backend needs a redis_url".into(),
        )),
        (Backend::Local, _) => Ok(Opened::Local(LocalStore::open_shared(&cfg.path)?)),
    }
}

/// Opens the configured store (a local file is opened and locked now, or shared with
/// this process's other handle on it; Redis connects lazily, so an instance starts while
/// Redis is down). Blocking for the local file.
pub fn open(cfg: &StateConfig) -> Result<Arc<dyn StateStore>, StoreError> {
    Ok(match open_backend(cfg)? {
        Opened::Local(s) => Arc::new(s),
        Opened::Redis(s) => Arc::new(s),
    })
}

/// Opens the configured store for virtual keys: the same file as the online state (one
/// handle, shared, when both are on) or the same Redis.
pub fn open_keys(cfg: &StateConfig) -> Result<Arc<dyn KeyStore>, StoreError> {
    Ok(match open_backend(cfg)? {
        Opened::Local(s) => Arc::new(s),
        Opened::Redis(s) => Arc::new(s),
    })
}

/// The key budgets on the configured backend.
#[derive(Debug, Clone)]
pub enum Budgets {
    /// In memory, flushed to the state file ([`LocalBudgets::flush`]).
    Local(Arc<LocalBudgets>),
    /// In Redis, shared by every instance.
    Redis(Arc<RedisStore>),
}

impl Budgets {
    pub fn store(&self) -> Arc<dyn BudgetStore> {
        match self {
            Budgets::Local(l) => Arc::clone(l) as Arc<dyn BudgetStore>,
            Budgets::Redis(r) => Arc::clone(r) as Arc<dyn BudgetStore>,
        }
    }
}

/// Opens the key budgets (blocking for the local file: its spend is loaded).
pub fn open_budgets(cfg: &StateConfig) -> Result<Budgets, StoreError> {
    Ok(match open_backend(cfg)? {
        Opened::Local(s) => Budgets::Local(Arc::new(LocalBudgets::open(s)?)),
        Opened::Redis(s) => Budgets::Redis(Arc::new(s)),
    })
}
