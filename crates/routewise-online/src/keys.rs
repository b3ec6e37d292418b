//! Virtual API keys: what a key is, how it is made, stored and checked. Pure logic (no
//! I/O); the stores keep [`KeyRecord`]s ([`crate::store::keys`]) and the gateway's auth
//! stage checks presented keys against them.
//!
//! A key reads `rw-<id>-<secret>`: `id` (10 lowercase alphanumerics) is the lookup handle,
//! shown in listings and used to revoke; `secret` (32 alphanumerics, about 190 bits from a
//! CSPRNG) is never stored. The store keeps the SHA-256 of the whole key; a presented key
//! is hashed and compared with the stored hash in constant time (`subtle`). A fast hash is
//! the right one for a random 190-bit secret (a slow password hash protects guessable
//! passwords, which these are not), and it keeps the check at about a microsecond.
//!
//! A key carries who it is (`name`, `team`, `tags`, which the routing rules can read),
//! what it may use (`models`: the configured model names it may call or be routed to;
//! all when absent), its default policy (`lambda=5`, applied when a request sets none),
//! its spend cap (`budget_usd` per `period`, [`crate::budget`]) and its life
//! (`expires_ms`, `revoked_ms`).

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::budget::Period;

/// Every key starts with this.
pub const KEY_PREFIX: &str = "rw-";
const ID_LEN: usize = 10;
const SECRET_LEN: usize = 32;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A stored key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The lookup handle (the part after `rw-`).
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the whole key (empty in a listing, which never shows it; an empty
    /// hash matches no key).
    #[serde(default)]
    pub hash: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// Model names the key may use; `None`: every configured model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// The default policy (`lambda=5`, `budget_usd=0.002`) when a request sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Spend allowed per `period`, USD ([`crate::budget`]); `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// The budget is paced: the key's lambda is steered so that spend follows the budget
    /// across the period (`routewise_router::pacing`); the budget stays a hard cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pace: bool,
    /// Requests per minute ([`crate::budget::Rate`]); `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens (prompt + `max_tokens`) per minute; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

/// What a key is created with (and what an update may change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Seconds from now until the key stops working.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
    /// Spend allowed per period, USD (0 removes the cap).
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The budget's period (default `month`).
    #[serde(default)]
    pub period: Option<Period>,
    /// Pace the budget (needs `budget_usd`); `false` turns pacing off.
    #[serde(default)]
    pub pace: Option<bool>,
    /// Requests per minute (0 removes the limit).
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute (0 removes the limit).
    #[serde(default)]
    pub tpm: Option<u64>,
}

/// Why a presented key is refused (the gateway answers 401 for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no API key was sent; send `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key has expired")]
    Expired,
}

impl AuthFailure {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Revoked => "revoked",
            AuthFailure::Expired => "expired",
        }
    }
}

/// A spec that cannot make a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct KeySpecError {
    pub field: &'static str,
    pub message: String,
}

/// A newly made key: the secret string (shown once) and its record.
pub struct NewKey {
    pub key: String,
    pub record: KeyRecord,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewKey")
            .field("record", &self.record)
            .finish()
    }
}

fn random_string(rng: &mut impl Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

/// Hex SHA-256 of `key`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The lookup id of a presented key, or `None` when it is not shaped like one.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let ok = id.len() == ID_LEN
        && secret.len() == SECRET_LEN
        && id.bytes().all(|b| ID_ALPHABET.contains(&b))
        && secret.bytes().all(|b| SECRET_ALPHABET.contains(&b));
    ok.then_some(id)
}

/// Makes a key from `spec` (a `name` is required) at `now_ms`; `known_models` are the
/// configured model names the key's `models` must come from.
pub fn create(spec: &KeySpec, now_ms: u64, known_models: &[&str]) -> Result<NewKey, KeySpecError> {
    let name = spec.name.clone().unwrap_or_default();
    let mut record = KeyRecord {
        id: String::new(),
        name,
        hash: String::new(),
        created_ms: now_ms,
        expires_ms: None,
        revoked_ms: None,
        models: None,
        policy: None,
        team: None,
        tags: BTreeMap::new(),
        budget_usd: None,
        period: None,
        pace: false,
        rpm: None,
        tpm: None,
    };
    apply(&mut record, spec, now_ms, known_models)?;
    let mut rng = rand::thread_rng();
    record.id = random_string(&mut rng, ID_ALPHABET, ID_LEN);
    let key = format!(
        "{KEY_PREFIX}{}-{}",
        record.id,
        random_string(&mut rng, SECRET_ALPHABET, SECRET_LEN)
    );
    record.hash = hash_key(&key);
    Ok(NewKey { key, record })
}

/// Applies the fields `spec` sets to `record` (create and update), validated.
pub fn apply(
    record: &mut KeyRecord,
    spec: &KeySpec,
    now_ms: u64,
    known_models: &[&str],
) -> Result<(), KeySpecError> {
    let err = |field, message: String| Err(KeySpecError { field, message });
    if let Some(n) = &spec.name {
        record.name = n.clone();
    }
    if record.name.trim().is_empty() {
        return err("name", "a key needs a non-empty name".into());
    }
    if let Some(models) = &spec.models {
        if models.is_empty() {
            return err(
                "models",
                "an empty list allows nothing; leave it out to allow every model".into(),
            );
        }
        if let Some(m) = models.iter().find(|m| !known_models.contains(&m.as_str())) {
            return err(
                "models",
                format!(
                    "`{m}` is not a configured model (known: {})",
                    known_models.join(", ")
                ),
            );
        }
        record.models = Some(models.clone());
    }
    if let Some(p) = &spec.policy {
        if let Err(e) = p.parse::<routewise_router::Policy>() {
            return err("policy", e.to_string());
        }
        record.policy = Some(p.clone());
    }
    if let Some(t) = &spec.team {
        record.team = (!t.is_empty()).then(|| t.clone());
    }
    if let Some(tags) = &spec.tags {
        record.tags = tags.clone();
    }
    if let Some(b) = spec.budget_usd {
        if !(b.is_finite() && b >= 0.0) {
            return err(
                "budget_usd",
                format!("must be a finite amount >= 0, found {b}"),
            );
        }
        record.budget_usd = (b > 0.0).then_some(b);
    }
    if let Some(p) = spec.period {
        record.period = Some(p);
    }
    if record.budget_usd.is_some() && record.period.is_none() {
        record.period = Some(Period::Month);
    }
    if let Some(p) = spec.pace {
        record.pace = p;
    }
    if record.pace && record.budget_usd.is_none() {
        return err(
            "pace",
            "pacing steers spend along a budget: give the key a `budget_usd`".into(),
        );
    }
    if let Some(r) = spec.rpm {
        record.rpm = (r > 0).then_some(r);
    }
    if let Some(t) = spec.tpm {
        record.tpm = (t > 0).then_some(t);
    }
    if let Some(s) = spec.expires_in_s {
        record.expires_ms = Some(now_ms.saturating_add(s.saturating_mul(1000)));
    }
    Ok(())
}

/// Checks `presented` against `record` (found by its [`key_id`]) at `now_ms`: the hash in
/// constant time, then revocation and expiry.
pub fn verify(presented: &str, record: &KeyRecord, now_ms: u64) -> Result<(), AuthFailure> {
    let got = hash_key(presented);
    if !bool::from(got.as_bytes().ct_eq(record.hash.as_bytes())) {
        return Err(AuthFailure::Invalid);
    }
    if record.revoked_ms.is_some_and(|t| t <= now_ms) {
        return Err(AuthFailure::Revoked);
    }
    if record.expires_ms.is_some_and(|t| t <= now_ms) {
        return Err(AuthFailure::Expired);
    }
    Ok(())
}

/// The key from an `Authorization: Bearer <key>` value (`api-key` style bare values too).
pub fn bearer(header: &str) -> &str {
    let h = header.trim();
    match h.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODELS: [&str; 3] = ["a", "b", "c"];

    fn spec(name: &str) -> KeySpec {
        KeySpec {
            name: Some(name.into()),
            ..KeySpec::default()
        }
    }

    #[test]
    fn a_created_key_verifies_and_only_it() {
        let k = create(&spec("search"), 1_000, &MODELS).unwrap();
        assert_eq!(key_id(&k.key), Some(k.record.id.as_str()));
        assert!(!k.record.hash.contains(&k.key[KEY_PREFIX.len()..]));
        assert_eq!(verify(&k.key, &k.record, 2_000), Ok(()));
        let mut wrong = k.key.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(verify(&wrong, &k.record, 2_000), Err(AuthFailure::Invalid));
        let other = create(&spec("x"), 1_000, &MODELS).unwrap();
        assert_ne!(other.key, k.key);
        assert_ne!(other.record.id, k.record.id);
    }

    #[test]
    fn revoked_and_expired_keys_fail() {
        let mut s = spec("t");
        s.expires_in_s = Some(10);
        let mut k = create(&s, 1_000, &MODELS).unwrap();
        assert_eq!(k.record.expires_ms, Some(11_000));
        assert_eq!(verify(&k.key, &k.record, 10_999), Ok(()));
        assert_eq!(verify(&k.key, &k.record, 11_000), Err(AuthFailure::Expired));
        k.record.revoked_ms = Some(5_000);
        assert_eq!(verify(&k.key, &k.record, 6_000), Err(AuthFailure::Revoked));
    }

    #[test]
    fn specs_are_validated_with_their_field() {
        let e = |s: KeySpec| create(&s, 0, &MODELS).unwrap_err().field;
        assert_eq!(e(KeySpec::default()), "name");
        assert_eq!(
            e(KeySpec {
                models: Some(vec!["zz".into()]),
                ..spec("n")
            }),
            "models"
        );
        assert_eq!(
            e(KeySpec {
                models: Some(vec![]),
                ..spec("n")
            }),
            "models"
        );
        assert_eq!(
            e(KeySpec {
                policy: Some("lambda=-1".into()),
                ..spec("n")
            }),
            "policy"
        );
        let ok = create(
            &KeySpec {
                models: Some(vec!["a".into()]),
                policy: Some("lambda=5".into()),
                team: Some("search".into()),
                ..spec("n")
            },
            0,
            &MODELS,
        )
        .unwrap();
        assert_eq!(ok.record.models.as_deref(), Some(&["a".to_string()][..]));
        assert_eq!(ok.record.team.as_deref(), Some("search"));
        // Pacing steers spend along a budget: it needs one.
        assert_eq!(
            e(KeySpec {
                pace: Some(true),
                ..spec("n")
            }),
            "pace"
        );
        let paced = create(
            &KeySpec {
                pace: Some(true),
                budget_usd: Some(10.0),
                ..spec("n")
            },
            0,
            &MODELS,
        )
        .unwrap();
        assert!(paced.record.pace);
        let mut r = paced.record;
        apply(
            &mut r,
            &KeySpec {
                pace: Some(false),
                ..KeySpec::default()
            },
            0,
            &MODELS,
        )
        .unwrap();
        assert!(!r.pace);
    }

    #[test]
    fn key_ids_are_read_only_from_well_formed_keys() {
        let k = create(&spec("n"), 0, &MODELS).unwrap();
        assert!(key_id("sk-abc").is_none());
        assert!(key_id("rw-short-secret").is_none());
        assert!(key_id(&format!("{}x", k.key)).is_none());
        assert_eq!(bearer("Bearer  rw-x "), "rw-x");
        assert_eq!(bearer("bearer rw-x"), "rw-x");
        assert_eq!(bearer("rw-x"), "rw-x");
    }

    #[test]
    fn records_round_trip_through_json_without_the_secret() {
        let k = create(&spec("n"), 0, &MODELS).unwrap();
        let json = serde_json::to_string(&k.record).unwrap();
        assert!(!json.contains(&k.key));
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, k.record);
        assert!(!format!("{k:?}").contains(&k.key));
    }
}
