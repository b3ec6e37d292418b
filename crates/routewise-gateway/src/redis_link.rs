//! One lazily made, multiplexed Redis connection for the gateway's optional shared state
//! (the response cache's Redis backend, conversation affinity's), with the rules that keep
//! Redis an optimisation rather than a dependency of a request: one task connects while the
//! others go on without Redis at once ([`LinkError::Connecting`]); a connect that fails or
//! takes longer than [`OP_TIMEOUT`], or a read on the request path ([`RedisLink::within`])
//! that fails or overruns its budget, starts a back-off ([`RedisLink::back_off`],
//! [`BACKOFF`]) during which Redis is not tried. A command's own timeout is
//! [`WRITE_TIMEOUT`], the budget of the background writes; reads are cut sooner by
//! `within`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Time a connect, or a request's command, may take before the request goes on without it.
pub const OP_TIMEOUT: Duration = Duration::from_millis(100);
/// How long Redis is skipped after a failure.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// Time a background write may take (and any one command, reads being cut sooner by
/// their own budget).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis command did not answer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis skipped after a recent failure")]
    BackingOff,
    #[error("another task is connecting to redis")]
    Connecting,
}

/// Clears a flag when dropped.
struct Flag<'a>(&'a AtomicBool);

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A Redis connection made on first use and shared (it multiplexes).
pub struct RedisLink {
    client: redis::Client,
    /// The connection once made (a clone per command).
    conn: std::sync::RwLock<Option<ConnectionManager>>,
    /// Set while one task connects; the others go on without Redis meanwhile.
    pub(crate) connecting: AtomicBool,
    /// Milliseconds since `started` before which Redis is not tried again.
    skip_until_ms: AtomicU64,
    started: std::time::Instant,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").finish_non_exhaustive()
    }
}

impl RedisLink {
    /// Parses the URL; the connection is made on first use.
    pub fn new(url: &str) -> Result<RedisLink, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisLink {
            client,
            conn: std::sync::RwLock::new(None),
            connecting: AtomicBool::new(false),
            skip_until_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
        })
    }

    /// Whether Redis answers `PING` within `timeout` (blocking: for `check-config` and the
    /// start-up warning).
    pub fn ping_blocking(url: &str, timeout: Duration) -> Result<(), String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut c = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query::<String>(&mut c)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection: made by one task at a time (the others get
    /// [`LinkError::Connecting`] at once), never during the back-off.
    pub async fn connection(&self) -> Result<ConnectionManager, LinkError> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err(LinkError::BackingOff);
        }
        if let Some(c) = self.conn.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        if self
            .connecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(LinkError::Connecting);
        }
        // Cleared however this ends, a lookup cancelled mid-connect (its client went away,
        // its deadline passed) included.
        let _connecting = Flag(&self.connecting);
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(OP_TIMEOUT)
            .set_response_timeout(WRITE_TIMEOUT)
            .set_number_of_retries(0);
        let made = match tokio::time::timeout(
            OP_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), cfg),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(LinkError::Redis(e)),
            Err(_) => Err(LinkError::Timeout(OP_TIMEOUT)),
        };
        if let Ok(c) = &made {
            if let Ok(mut slot) = self.conn.write() {
                *slot = Some(c.clone());
            }
        } else {
            self.back_off();
        }
        made
    }

    /// Skips Redis for [`BACKOFF`].
    pub fn back_off(&self) {
        self.skip_until_ms.store(
            self.now_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000),
            Ordering::Relaxed,
        );
    }

    /// Runs `op` within `budget`; a Redis error or a timeout starts the back-off.
    pub async fn within<T>(
        &self,
        budget: Duration,
        op: impl std::future::Future<Output = Result<T, LinkError>>,
    ) -> Result<T, LinkError> {
        let r = match tokio::time::timeout(budget, op).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::Timeout(budget)),
        };
        if matches!(r, Err(LinkError::Redis(_) | LinkError::Timeout(_))) {
            self.back_off();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn regression_a_connect_cancelled_midway_lets_the_next_lookup_connect() {
        // A "Redis" that accepts and never answers: connecting hangs until cancelled.
        let port = routewise_testkit::silent_listener().await.unwrap();
        let link = RedisLink::new(&format!("redis://127.0.0.1:{port}")).unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(10), link.connection()).await;
        assert!(cancelled.is_err(), "the connect should still be pending");
        assert!(
            !link.connecting.load(Ordering::Acquire),
            "a cancelled connect must not leave the flag set"
        );
    }
}
