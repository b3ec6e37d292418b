//! Embedded default state store: one redb file.
//!
//! Why redb rather than SQLite/WAL: it is pure Rust (no C toolchain, no bundled SQLite
//! build in CI), its copy-on-write B-trees with checksummed double-buffered commit slots
//! make every committed transaction crash-safe without a separate WAL, and our access
//! pattern is key-value only (decision id -> record, model -> statistics). It takes an
//! exclusive file lock, so one process owns a file; several instances share state
//! through Redis instead.
//!
//! Durability policy:
//! * feedback (log entry + arm statistics, in one transaction) commits with
//!   `Durability::Immediate`: the commit fsyncs before returning, and the gateway answers
//!   200 only after it returns, so an acknowledged feedback survives `kill -9` and power
//!   loss;
//! * decisions commit with `Durability::Eventual` (written, not fsynced): a process crash
//!   keeps them (the OS has the pages), a power loss may lose the last ones, whose
//!   feedback then gets 404. The next Immediate commit makes them durable too.
//!
//! Tables: `decisions` (id -> JSON [`DecisionRecord`]), `feedback` (id -> JSON
//! [`FeedbackEntry`], the log and the idempotency key), `arms` (model -> JSON
//! [`ArmStats`]; serde_json round-trips f64 exactly).
//!
//! The inherent methods are blocking (redb commits fsync); the [`StateStore`]
//! implementation runs them on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::bandit::ArmStats;
use crate::feedback::{DecisionRecord, FeedbackEntry, FeedbackError, ValidFeedback};
use crate::store::state_store::{FeedbackParams, StateStore, StoreError};

const DECISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("decisions");
const FEEDBACK: TableDefinition<&str, &[u8]> = TableDefinition::new("feedback");
const ARMS: TableDefinition<&str, &[u8]> = TableDefinition::new("arms");
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

/// The redb-backed store (cheap to clone: clones share the open database).
#[derive(Debug, Clone)]
pub struct LocalStore {
    db: Arc<Database>,
}

fn se<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn fe<E: std::fmt::Display>(e: E) -> FeedbackError {
    FeedbackError::Store(e.to_string())
}

impl LocalStore {
    /// Opens (or creates) the store at `path`, repairing it after an unclean shutdown.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::Locked(path.display().to_string())
            }
            other => se(other),
        })?;
        let tx = db.begin_write().map_err(se)?;
        {
            tx.open_table(DECISIONS).map_err(se)?;
            tx.open_table(FEEDBACK).map_err(se)?;
            tx.open_table(ARMS).map_err(se)?;
            tx.open_table(KEYS).map_err(se)?;
        }
        tx.commit().map_err(se)?;
        Ok(LocalStore { db: Arc::new(db) })
    }

    /// Opens the store at `path`, or shares the database this process already has open
    /// there (the online router's feedback and the virtual keys live in one file, which
    /// redb lets one handle own).
    pub fn open_shared(path: &Path) -> Result<Self, StoreError> {
        type Open = Vec<(std::path::PathBuf, std::sync::Weak<Database>)>;
        static OPEN: std::sync::Mutex<Open> = std::sync::Mutex::new(Vec::new());
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, w)| w.strong_count() > 0);
        if let Some(db) = open
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(LocalStore { db });
        }
        let s = LocalStore::open(path)?;
        open.push((key, Arc::downgrade(&s.db)));
        Ok(s)
    }

    /// The open database (the budget ledger's table lives in it too).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// Writes a key record (fsynced before returning).
    pub(crate) fn put_raw_key(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(se)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(KEYS).map_err(se)?;
            t.insert(id, bytes).map_err(se)?;
        }
        tx.commit().map_err(se)
    }

    pub(crate) fn get_raw_key(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let t = tx.open_table(KEYS).map_err(se)?;
        Ok(t.get(id).map_err(se)?.map(|v| v.value().to_vec()))
    }

    /// Every key record, by id.
    pub(crate) fn raw_keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let t = tx.open_table(KEYS).map_err(se)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(se)? {
            let (_, v) = row.map_err(se)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// Keeps a decision for the feedback window.
    pub fn record_decision(&self, rec: &DecisionRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(se)?;
        let mut tx = self.db.begin_write().map_err(se)?;
        tx.set_durability(Durability::Eventual);
        {
            let mut t = tx.open_table(DECISIONS).map_err(se)?;
            t.insert(rec.id.as_str(), bytes.as_slice()).map_err(se)?;
        }
        tx.commit().map_err(se)
    }

    /// Atomically: looks the decision up (unknown / expired), refuses a duplicate,
    /// builds the entry with `make`, appends it to the log and updates the chosen arm's
    /// statistics (`ArmStats::update` with `gamma`, `lambda0`, starting from the prior
    /// `A = lambda0 I` for an arm never seen). Durable (fsynced) when it returns `Ok`.
    pub fn apply_feedback(
        &self,
        decision_id: &str,
        now_ms: u64,
        ttl_ms: u64,
        gamma: f64,
        lambda0: f64,
        make: impl FnOnce(&DecisionRecord) -> FeedbackEntry,
    ) -> Result<(FeedbackEntry, ArmStats), FeedbackError> {
        let mut tx = self.db.begin_write().map_err(fe)?;
        tx.set_durability(Durability::Immediate);
        let out = {
            let decisions = tx.open_table(DECISIONS).map_err(fe)?;
            let dec: DecisionRecord = match decisions.get(decision_id).map_err(fe)? {
                None => return Err(FeedbackError::UnknownDecision(decision_id.into())),
                Some(v) => serde_json::from_slice(v.value()).map_err(fe)?,
            };
            if now_ms.saturating_sub(dec.created_ms) > ttl_ms {
                return Err(FeedbackError::Expired(decision_id.into()));
            }
            let mut feedback = tx.open_table(FEEDBACK).map_err(fe)?;
            if feedback.get(decision_id).map_err(fe)?.is_some() {
                return Err(FeedbackError::Duplicate(decision_id.into()));
            }
            let entry = make(&dec);
            let d = dec.x.len();
            let mut arms = tx.open_table(ARMS).map_err(fe)?;
            let mut stats = match arms.get(dec.model.as_str()).map_err(fe)? {
                Some(v) => serde_json::from_slice::<ArmStats>(v.value()).map_err(fe)?,
                None => ArmStats::prior(d, lambda0),
            };
            if stats.dim() != d {
                return Err(FeedbackError::Store(format!(
                    "arm `{}` has dimension {}, decision has {d} (bandit.dim changed?)",
                    dec.model,
                    stats.dim()
                )));
            }
            stats.update(&dec.x, entry.residual, gamma, lambda0);
            let sbytes = serde_json::to_vec(&stats).map_err(fe)?;
            arms.insert(dec.model.as_str(), sbytes.as_slice())
                .map_err(fe)?;
            let ebytes = serde_json::to_vec(&entry).map_err(fe)?;
            feedback
                .insert(decision_id, ebytes.as_slice())
                .map_err(fe)?;
            (entry, stats)
        };
        tx.commit().map_err(fe)?;
        Ok(out)
    }

    /// Every arm's statistics.
    pub fn load_arms(&self) -> Result<Vec<(String, ArmStats)>, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let t = tx.open_table(ARMS).map_err(se)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(se)? {
            let (k, v) = row.map_err(se)?;
            out.push((
                k.value().to_string(),
                serde_json::from_slice(v.value()).map_err(se)?,
            ));
        }
        Ok(out)
    }

    /// The feedback log, ordered by decision id.
    pub fn feedback_log(&self) -> Result<Vec<FeedbackEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let t = tx.open_table(FEEDBACK).map_err(se)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(se)? {
            let (_, v) = row.map_err(se)?;
            out.push(serde_json::from_slice(v.value()).map_err(se)?);
        }
        Ok(out)
    }

    /// Deletes decisions older than `ttl_ms` (their feedback then gets 404, not 410) and
    /// their log entries' idempotency keys are kept. Returns how many were removed.
    pub fn purge_expired(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        let mut tx = self.db.begin_write().map_err(se)?;
        tx.set_durability(Durability::Eventual);
        let n = {
            let mut t = tx.open_table(DECISIONS).map_err(se)?;
            let mut removed = 0usize;
            t.retain(|_, v| {
                let expired = serde_json::from_slice::<DecisionRecord>(v)
                    .map(|d| now_ms.saturating_sub(d.created_ms) > ttl_ms)
                    .unwrap_or(true);
                removed += usize::from(expired);
                !expired
            })
            .map_err(se)?;
            removed
        };
        tx.commit().map_err(se)?;
        Ok(n)
    }

    /// Entries in the feedback log.
    pub fn feedback_log_len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(se)?;
        let t = tx.open_table(FEEDBACK).map_err(se)?;
        t.len().map_err(se)
    }

    /// Runs a blocking store call on tokio's blocking pool.
    pub(crate) async fn blocking<T: Send + 'static, E: From<StoreError> + Send + 'static>(
        &self,
        f: impl FnOnce(LocalStore) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| E::from(StoreError::Backend(e.to_string())))?
    }
}

impl From<StoreError> for FeedbackError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => FeedbackError::Unavailable(m),
            other => FeedbackError::Store(other.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn ping(&self) -> bool {
        true
    }

    async fn record_decision(&self, rec: &DecisionRecord, _ttl_s: u64) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.blocking(move |s| LocalStore::record_decision(&s, &rec))
            .await
    }

    async fn apply_feedback(
        &self,
        fb: &ValidFeedback,
        p: &FeedbackParams,
    ) -> Result<(FeedbackEntry, ArmStats), FeedbackError> {
        let (fb, p) = (fb.clone(), *p);
        self.blocking(move |s| {
            let id = fb.decision_id.clone();
            LocalStore::apply_feedback(
                &s,
                &id,
                p.now_ms,
                p.ttl_s.saturating_mul(1000),
                p.gamma,
                p.lambda0,
                |dec| FeedbackEntry::new(&fb, dec, p.fallback_lambda, p.now_ms),
            )
        })
        .await
    }

    async fn load_arms(&self) -> Result<Vec<(String, ArmStats)>, StoreError> {
        self.blocking(|s| LocalStore::load_arms(&s)).await
    }

    async fn purge_expired(&self, now_ms: u64, ttl_s: u64) -> Result<usize, StoreError> {
        self.blocking(move |s| LocalStore::purge_expired(&s, now_ms, ttl_s.saturating_mul(1000)))
            .await
    }

    async fn feedback_log_len(&self) -> Result<u64, StoreError> {
        self.blocking(|s| LocalStore::feedback_log_len(&s)).await
    }

    async fn feedback_entries(&self, since_ms: u64) -> Result<Vec<FeedbackEntry>, StoreError> {
        let mut log = self.blocking(|s| LocalStore::feedback_log(&s)).await?;
        log.retain(|e| e.received_ms >= since_ms);
        log.sort_by_key(|e| e.received_ms);
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(id: &str, created_ms: u64) -> DecisionRecord {
        DecisionRecord {
            id: id.into(),
            model: "m".into(),
            x: vec![1.0, 0.5],
            prior_reward: 0.25,
            lambda: None,
            cost_usd: 0.0,
            latency_ms: None,
            created_ms,
            cascade: None,
            replay: None,
        }
    }

    fn entry(d: &DecisionRecord) -> FeedbackEntry {
        FeedbackEntry {
            decision_id: d.id.clone(),
            model: d.model.clone(),
            score: 1.0,
            cost_usd: 0.0,
            latency_ms: None,
            reward: 1.0,
            residual: 1.0 - d.prior_reward,
            received_ms: 0,
            replay: None,
            cascade: None,
        }
    }

    #[test]
    fn feedback_is_checked_logged_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&dir.path().join("s.redb")).unwrap();
        s.record_decision(&dec("a", 1_000)).unwrap();
        s.record_decision(&dec("old", 0)).unwrap();
        let (_, stats) = s
            .apply_feedback("a", 1_500, 1_000, 1.0, 2.0, entry)
            .unwrap();
        // A = 2 I + x x^T with x = (1, 0.5); b = 0.75 x.
        assert_eq!(stats.a, vec![3.0, 0.5, 0.5, 2.25]);
        assert_eq!(stats.b, vec![0.75, 0.375]);
        assert_eq!(stats.n, 1);
        assert_eq!(
            s.apply_feedback("a", 1_500, 1_000, 1.0, 2.0, entry),
            Err(FeedbackError::Duplicate("a".into()))
        );
        assert_eq!(
            s.apply_feedback("zz", 1_500, 1_000, 1.0, 2.0, entry),
            Err(FeedbackError::UnknownDecision("zz".into()))
        );
        assert_eq!(
            s.apply_feedback("old", 1_500, 1_000, 1.0, 2.0, entry),
            Err(FeedbackError::Expired("old".into()))
        );
        assert_eq!(s.load_arms().unwrap(), vec![("m".to_string(), stats)]);
        assert_eq!(s.feedback_log().unwrap().len(), 1);
        assert_eq!(s.purge_expired(1_500, 1_000).unwrap(), 1);
        assert_eq!(
            s.apply_feedback("old", 1_500, 1_000, 1.0, 2.0, entry),
            Err(FeedbackError::UnknownDecision("old".into()))
        );
    }

    #[tokio::test]
    async fn the_feedback_log_exports_from_a_time_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&dir.path().join("s.redb")).unwrap();
        for (id, at) in [("late", 3_000u64), ("early", 1_000), ("mid", 2_000)] {
            s.record_decision(&dec(id, 0)).unwrap();
            s.apply_feedback(id, 0, 1_000_000, 1.0, 2.0, |d| FeedbackEntry {
                received_ms: at,
                ..entry(d)
            })
            .unwrap();
        }
        let store: &dyn StateStore = &s;
        let ids = |v: Vec<FeedbackEntry>| v.into_iter().map(|e| e.decision_id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.feedback_entries(0).await.unwrap()),
            ["early", "mid", "late"]
        );
        assert_eq!(
            ids(store.feedback_entries(2_000).await.unwrap()),
            ["mid", "late"]
        );
    }
}
