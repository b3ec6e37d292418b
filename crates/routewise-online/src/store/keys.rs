//! Where virtual keys ([`crate::keys::KeyRecord`]) live: the same backends as the online
//! state, behind [`KeyStore`]. In the local store a `keys` table of the redb file (id ->
//! JSON record, committed with `Durability::Immediate`: a key printed to its owner
//! survives a crash); in Redis a hash `P:keys` (id -> JSON record) that every instance
//! reads. A revocation or an update is a new version of the record (`put_key`); records
//! are never deleted, so a revoked id stays refused.

use crate::keys::{self, KeyRecord, KeySpec, KeySpecError, NewKey};
use crate::store::local::LocalStore;
use crate::store::redis::RedisStore;
use crate::store::state_store::StoreError;

/// A store of virtual keys.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// `local` or `redis`.
    fn kind(&self) -> &'static str;

    /// Writes (creates or replaces) a key's record durably.
    async fn put_key(&self, rec: &KeyRecord) -> Result<(), StoreError>;

    /// The record with this id, if any.
    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Every record, by id.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyOpError {
    #[error("no key with id `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Spec(#[from] KeySpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a key from `spec` (`known_models`: the configured model names) and stores it;
/// returns the key (the only time its secret exists) and its record.
pub async fn create_key(
    store: &dyn KeyStore,
    spec: &KeySpec,
    now_ms: u64,
    known_models: &[&str],
) -> Result<NewKey, KeyOpError> {
    let new = keys::create(spec, now_ms, known_models)?;
    store.put_key(&new.record).await?;
    Ok(new)
}

async fn read(store: &dyn KeyStore, id: &str) -> Result<KeyRecord, KeyOpError> {
    store
        .get_key(id)
        .await?
        .ok_or_else(|| KeyOpError::NotFound(id.to_string()))
}

/// Applies `spec`'s fields to key `id` and stores it.
pub async fn update_key(
    store: &dyn KeyStore,
    id: &str,
    spec: &KeySpec,
    now_ms: u64,
    known_models: &[&str],
) -> Result<KeyRecord, KeyOpError> {
    let mut r = read(store, id).await?;
    keys::apply(&mut r, spec, now_ms, known_models)?;
    // A revocation written since the read is kept (the window is the read-to-write gap,
    // not the whole update; an update never un-revokes).
    if let Some(now) = store.get_key(id).await? {
        r.revoked_ms = r.revoked_ms.or(now.revoked_ms);
    }
    store.put_key(&r).await?;
    Ok(r)
}

/// Revokes key `id` (kept, refused from now on; revoking twice keeps the first time).
pub async fn revoke_key(
    store: &dyn KeyStore,
    id: &str,
    now_ms: u64,
) -> Result<KeyRecord, KeyOpError> {
    let mut r = read(store, id).await?;
    r.revoked_ms.get_or_insert(now_ms);
    store.put_key(&r).await?;
    Ok(r)
}

fn decode(bytes: &[u8]) -> Result<KeyRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("a key record: {e}")))
}

#[async_trait::async_trait]
impl KeyStore for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn put_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Backend(e.to_string()))?;
        let id = rec.id.clone();
        self.blocking(move |s| s.put_raw_key(&id, &bytes)).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_string();
        let raw = self.blocking(move |s| s.get_raw_key(&id)).await?;
        raw.as_deref().map(decode).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let raw = self.blocking(|s| s.raw_keys()).await?;
        raw.iter().map(|b| decode(b)).collect()
    }
}

#[async_trait::async_trait]
impl KeyStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn put_key(&self, rec: &KeyRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.hset_key(&rec.id, json).await
    }

    async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let raw = self.hget_key(id).await?;
        raw.as_deref().map(str::as_bytes).map(decode).transpose()
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut all: Vec<KeyRecord> = self
            .hvals_keys()
            .await?
            .iter()
            .map(|s| decode(s.as_bytes()))
            .collect::<Result<_, _>>()?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{create, KeySpec};

    #[tokio::test]
    async fn local_keys_survive_reopening_and_list_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let spec = KeySpec {
            name: Some("search".into()),
            ..KeySpec::default()
        };
        let (a, b) = (
            create(&spec, 1, &[]).unwrap(),
            create(&spec, 2, &[]).unwrap(),
        );
        {
            let s = LocalStore::open(&path).unwrap();
            s.put_key(&a.record).await.unwrap();
            s.put_key(&b.record).await.unwrap();
            let mut revoked = a.record.clone();
            revoked.revoked_ms = Some(9);
            s.put_key(&revoked).await.unwrap();
        }
        let s = LocalStore::open(&path).unwrap();
        let got = s.get_key(&a.record.id).await.unwrap().unwrap();
        assert_eq!(got.revoked_ms, Some(9));
        assert!(s.get_key("nope").await.unwrap().is_none());
        let ids: Vec<String> = s
            .list_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        let mut want = vec![a.record.id.clone(), b.record.id.clone()];
        want.sort();
        assert_eq!(ids, want);
    }
}
