//! Choosing and opening the configured backend.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Backend, StateConfig};
use crate::store::local::LocalStore;
use crate::store::redis::RedisStore;
use crate::store::state_store::{StateStore, StoreError};

/// Opens the configured store (a local file is opened and locked now; Redis connects
/// lazily, so an instance starts while Redis is down). Blocking for the local file.
pub fn open(cfg: &StateConfig) -> Result<Arc<dyn StateStore>, StoreError> {
    match (cfg.backend(), &cfg.redis_url) {
        (Backend::Redis, Some(url)) => Ok(Arc::new(RedisStore::new(
            url,
            &cfg.redis_prefix,
            Duration::from_millis(cfg.redis_timeout_ms.max(1)),
        )?)),
        (Backend::Redis, None) => Err(StoreError::Config(
            "the redis backend needs a redis_url".into(),
        )),
        (Backend::Local, _) => Ok(Arc::new(LocalStore::open(&cfg.path)?)),
    }
}
