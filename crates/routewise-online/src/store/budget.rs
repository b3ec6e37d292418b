//! Where key budgets are kept ([`crate::budget`]), behind [`BudgetStore`]: each call
//! reserves, then settles or releases, atomically against every other call on the key.
//!
//! * [`LocalBudgets`] (one instance): the accounts in memory behind one mutex, so reserve
//!   and settle are atomic and cost a lock, not a disk write. Settled spend is written to
//!   the redb file's `spend` table in the background ([`LocalBudgets::flush`], every
//!   [`FLUSH_EVERY_MS`] by the gateway): a group commit. **Crash bound:** a `kill -9`
//!   forgets the spend settled since the last flush (at most `FLUSH_EVERY_MS` of it);
//!   reservations are not written at all, so none is left dangling after a restart.
//! * Redis (several instances): `P:spend:{key}:{period start}` holds the settled spend
//!   (`INCRBYFLOAT`), `P:resv:{key}:{period start}` the open reservations (a sorted set of
//!   `id:amount` scored by expiry). Reserve is one Lua script (drop expired, sum, check,
//!   add), settle another (remove, add the cost): one round trip each, atomic in Redis.
//!   A request's first reservation also takes from the key's rate buckets
//!   (`P:rate:{key}`, a hash of the two levels and their time) in the same script, so
//!   auth (cached), the rate limit and the budget cost one round trip together.
//!   Both keys expire a day after their period ends.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};

use redb::{Durability, ReadableTable, TableDefinition};
use redis::Script;

use crate::budget::{Account, Buckets, Exceeded, Period, Rate, RateLimited, Refusal};
use crate::store::local::LocalStore;
use crate::store::redis::RedisStore;
use crate::store::state_store::StoreError;

/// How often the gateway flushes local spend to disk.
pub const FLUSH_EVERY_MS: u64 = 100;

/// Accounts of periods that started longer ago than this (400 days: a month's and a
/// year's reports stay) are dropped when the ledger is opened.
pub const KEEP_PERIODS_MS: u64 = 400 * 86_400_000;

const SPEND: TableDefinition<&str, f64> = TableDefinition::new("spend");

/// One key's budget in one period: what a store call is about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scope<'a> {
    pub key: &'a str,
    pub period: Period,
    pub budget_usd: f64,
    pub now_ms: u64,
}

impl Scope<'_> {
    fn account_key(&self) -> String {
        format!("{}:{}", self.key, self.period.bounds(self.now_ms).0)
    }

    /// Seconds until a day after the period ends (Redis expiry).
    fn ttl_s(&self) -> u64 {
        let end = self.period.bounds(self.now_ms).1;
        end.saturating_sub(self.now_ms) / 1000 + 86_400
    }
}

/// A key's spend in the current period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub spent: f64,
    pub reserved: f64,
}

/// A store of key budgets.
#[async_trait::async_trait]
pub trait BudgetStore: Send + Sync + std::fmt::Debug {
    /// Takes one request from the key's `rate` buckets when given (the request's first
    /// call), then reserves `amount` as reservation `id`, atomically: `Ok(Err)` when either
    /// refuses (and then nothing is taken).
    async fn reserve(
        &self,
        scope: &Scope<'_>,
        id: u64,
        amount: f64,
        rate: Option<&Rate>,
    ) -> Result<Result<(), Refusal>, StoreError>;

    /// Closes reservation `id` (of `amount`), adding `cost` (`None`: released, nothing
    /// spent).
    async fn settle(
        &self,
        scope: &Scope<'_>,
        id: u64,
        amount: f64,
        cost: Option<f64>,
    ) -> Result<(), StoreError>;

    /// The spend and open reservations of the period.
    async fn usage(&self, scope: &Scope<'_>) -> Result<Usage, StoreError>;
}

/// Budgets of one instance, in memory, flushed to the redb file.
#[derive(Debug)]
pub struct LocalBudgets {
    store: LocalStore,
    accounts: Mutex<Ledger>,
    dirty: Mutex<HashSet<String>>,
}

/// The accounts (by key and period) and the rate buckets (by key), under one lock.
#[derive(Debug, Default)]
struct Ledger {
    accounts: HashMap<String, Account>,
    buckets: HashMap<String, Buckets>,
}

fn se<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl LocalBudgets {
    /// Loads the settled spend from the file, dropping accounts of periods that started
    /// more than [`KEEP_PERIODS_MS`] ago.
    pub fn open(store: LocalStore) -> Result<LocalBudgets, StoreError> {
        let mut accounts = HashMap::new();
        let db = store.database();
        let horizon = crate::service::now_ms().saturating_sub(KEEP_PERIODS_MS);
        let tx = db.begin_write().map_err(se)?;
        {
            let mut t = tx.open_table(SPEND).map_err(se)?;
            let mut old = Vec::new();
            for row in t.iter().map_err(se)? {
                let (k, v) = row.map_err(se)?;
                let k = k.value().to_string();
                let start = k.rsplit(':').next().and_then(|s| s.parse::<u64>().ok());
                if start.is_some_and(|s| s < horizon) {
                    old.push(k);
                    continue;
                }
                accounts.insert(
                    k,
                    Account {
                        spent: v.value(),
                        open: Vec::new(),
                    },
                );
            }
            for k in old {
                t.remove(k.as_str()).map_err(se)?;
            }
        }
        tx.commit().map_err(se)?;
        Ok(LocalBudgets {
            store,
            accounts: Mutex::new(Ledger {
                accounts,
                buckets: HashMap::new(),
            }),
            dirty: Mutex::new(HashSet::new()),
        })
    }

    fn with<T>(&self, k: String, f: impl FnOnce(&mut Account) -> T) -> T {
        let mut all = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        f(all.accounts.entry(k).or_default())
    }

    /// Writes the spend settled since the last flush (blocking: one redb commit).
    pub fn flush(&self) -> Result<usize, StoreError> {
        let keys: Vec<String> = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let values: Vec<(String, f64)> = {
            let all = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            keys.into_iter()
                .filter_map(|k| Some((k.clone(), all.accounts.get(&k)?.spent)))
                .collect()
        };
        let mut tx = self.store.database().begin_write().map_err(se)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(SPEND).map_err(se)?;
            for (k, v) in &values {
                t.insert(k.as_str(), *v).map_err(se)?;
            }
        }
        tx.commit().map_err(se)?;
        Ok(values.len())
    }
}

#[async_trait::async_trait]
impl BudgetStore for LocalBudgets {
    async fn reserve(
        &self,
        s: &Scope<'_>,
        id: u64,
        amount: f64,
        rate: Option<&Rate>,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let mut all = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let Ledger { accounts, buckets } = &mut *all;
        let account = accounts.entry(s.account_key()).or_default();
        // Both or neither: the buckets are taken from a copy, kept if the budget agrees.
        let mut taken = None;
        if let Some(r) = rate {
            let mut b = buckets.get(s.key).copied().unwrap_or_default();
            if let Err(e) = b.take(r, s.now_ms) {
                return Ok(Err(e.into()));
            }
            taken = Some(b);
        }
        if let Err(e) = account.reserve(id, amount, s.budget_usd, s.period, s.now_ms) {
            return Ok(Err(e.into()));
        }
        if let Some(b) = taken {
            buckets.insert(s.key.to_string(), b);
        }
        Ok(Ok(()))
    }

    async fn settle(
        &self,
        s: &Scope<'_>,
        id: u64,
        _amount: f64,
        cost: Option<f64>,
    ) -> Result<(), StoreError> {
        let k = s.account_key();
        self.with(k.clone(), |a| a.settle(id, cost));
        if cost.is_some() {
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(k);
        }
        Ok(())
    }

    async fn usage(&self, s: &Scope<'_>) -> Result<Usage, StoreError> {
        Ok(self.with(s.account_key(), |a| {
            a.expire(s.now_ms);
            Usage {
                spent: a.spent,
                reserved: a.reserved(),
            }
        }))
    }
}

const RESERVE_LUA: &str = r#"
local now = tonumber(ARGV[1])
local rpm = tonumber(ARGV[7])
local tpm = tonumber(ARGV[8])
local need = tonumber(ARGV[9])
local req, tok
if rpm > 0 or tpm > 0 then
  local b = redis.call('HMGET', KEYS[3], 'r', 't', 'at')
  local at = tonumber(b[3])
  local function fill(level, per_minute)
    if not at then return per_minute end
    return math.min(per_minute, tonumber(level) + per_minute * math.max(0, now - at) / 60000)
  end
  if rpm > 0 then
    req = fill(b[1], rpm)
    if req < 1 then return {2, 'rpm', tostring(math.ceil((1 - req) * 60000 / rpm))} end
  end
  if tpm > 0 then
    tok = fill(b[2], tpm)
    if tok < need then
      local wait = 60000
      if need <= tpm then wait = math.ceil((need - tok) * 60000 / tpm) end
      return {2, 'tpm', tostring(wait)}
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local reserved = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  reserved = reserved + tonumber(string.match(m, ':(.*)$'))
end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if req or tok then
  redis.call('HSET', KEYS[3], 'r', tostring((req or 1) - 1), 't', tostring((tok or need) - need), 'at', ARGV[1])
  redis.call('EXPIRE', KEYS[3], 120)
end
return {1, tostring(spent), tostring(reserved)}
"#;

const SETTLE_LUA: &str = r#"
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"#;

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE_LUA));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE_LUA));

impl RedisStore {
    fn budget_keys(&self, s: &Scope<'_>) -> (String, String) {
        let k = s.account_key();
        (
            self.prefixed(&format!("spend:{k}")),
            self.prefixed(&format!("resv:{k}")),
        )
    }
}

fn member(id: u64, amount: f64) -> String {
    format!("{id}:{amount:?}")
}

#[async_trait::async_trait]
impl BudgetStore for RedisStore {
    async fn reserve(
        &self,
        s: &Scope<'_>,
        id: u64,
        amount: f64,
        rate: Option<&Rate>,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let (spend, resv) = self.budget_keys(s);
        let r = rate.copied().unwrap_or_default();
        let mut inv = RESERVE.prepare_invoke();
        inv.key(spend)
            .key(resv)
            .key(self.prefixed(&format!("rate:{}", s.key)))
            .arg(s.now_ms)
            .arg(format!("{amount:?}"))
            .arg(format!("{:?}", s.budget_usd))
            .arg(member(id, amount))
            .arg(s.now_ms + crate::budget::RESERVATION_TTL_MS)
            .arg(s.ttl_s())
            .arg(r.rpm.unwrap_or(0))
            .arg(r.tpm.unwrap_or(0))
            .arg(r.tokens);
        let (code, a, b): (i64, String, String) = self.invoke(inv).await?;
        Ok(match code {
            1 => Ok(()),
            2 => {
                let (limit, per_minute) = if a == "rpm" {
                    ("rpm", r.rpm.unwrap_or(0))
                } else {
                    ("tpm", r.tpm.unwrap_or(0))
                };
                Err(Refusal::Rate(RateLimited {
                    limit,
                    per_minute,
                    retry_after_ms: b.parse().unwrap_or(1000),
                    // The script waits a full minute only for a request over the whole tpm.
                    never: limit == "tpm" && r.tokens > per_minute,
                }))
            }
            _ => Err(Refusal::Budget(Exceeded {
                budget: s.budget_usd,
                spent: a.parse().unwrap_or(0.0),
                reserved: b.parse().unwrap_or(0.0),
                amount,
                period: s.period,
            })),
        })
    }

    async fn settle(
        &self,
        s: &Scope<'_>,
        id: u64,
        amount: f64,
        cost: Option<f64>,
    ) -> Result<(), StoreError> {
        let (spend, resv) = self.budget_keys(s);
        let mut inv = SETTLE.prepare_invoke();
        inv.key(spend)
            .key(resv)
            .arg(member(id, amount))
            .arg(format!(
                "{:?}",
                cost.filter(|c| c.is_finite() && *c > 0.0).unwrap_or(0.0)
            ))
            .arg(s.ttl_s());
        let _: i64 = self.invoke(inv).await?;
        Ok(())
    }

    async fn usage(&self, s: &Scope<'_>) -> Result<Usage, StoreError> {
        let (spend, resv) = self.budget_keys(s);
        let (spent, open) = self.spend_and_open(&spend, &resv, s.now_ms).await?;
        let reserved = open
            .iter()
            .filter_map(|m| m.split_once(':')?.1.parse::<f64>().ok())
            .sum();
        Ok(Usage {
            spent: spent.and_then(|x| x.parse().ok()).unwrap_or(0.0),
            reserved,
        })
    }
}
