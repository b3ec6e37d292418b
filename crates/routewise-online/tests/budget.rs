//! Key budgets under concurrency: 1,000 calls racing for a budget of 10 calls' worth never
//! spend past it, in the local ledger and in Redis shared by two store handles (two
//! instances); local spend survives a restart up to the last flush.
#![cfg(test)]

use std::sync::Arc;

use routewise_online::budget::Period;
use routewise_online::store::budget::{BudgetStore, LocalBudgets, Scope};
use routewise_online::{LocalStore, RedisStore};

const BUDGET: f64 = 10.0;
/// The tests' clock: now (the ledger drops accounts of periods long past when it opens).
fn now() -> u64 {
    routewise_online::service::now_ms()
}

fn scope(key: &str) -> Scope<'_> {
    Scope {
        key,
        period: Period::Month,
        budget_usd: BUDGET,
        now_ms: now(),
    }
}

/// 1,000 concurrent calls, each reserving 1.0 and costing 0.6..1.0, spread over `stores`.
async fn race(stores: Vec<Arc<dyn BudgetStore>>, key: &'static str) -> (usize, f64) {
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let s = Arc::clone(&stores[i as usize % stores.len()]);
        tasks.push(tokio::spawn(async move {
            let sc = scope(key);
            match s.reserve(&sc, i, 1.0, None).await.unwrap() {
                Ok(()) => {
                    tokio::task::yield_now().await;
                    let cost = 0.6 + (i % 5) as f64 * 0.1;
                    s.settle(&sc, i, 1.0, Some(cost)).await.unwrap();
                    true
                }
                Err(_) => false,
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    let u = stores[0].usage(&scope(key)).await.unwrap();
    assert_eq!(u.reserved, 0.0);
    (admitted, u.spent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_spend_stays_within_the_budget_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(
        LocalBudgets::open(LocalStore::open(&dir.path().join("s.redb")).unwrap()).unwrap(),
    );
    let (admitted, spent) = race(vec![local], "k").await;
    assert!(spent <= BUDGET + 1e-9, "spent {spent}");
    assert!(admitted >= 10, "admitted {admitted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_spend_stays_within_the_budget_across_two_instances() {
    let Some(redis) = routewise_testkit::redis::RedisServer::start() else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let timeout = std::time::Duration::from_secs(2);
    let a: Arc<dyn BudgetStore> = Arc::new(RedisStore::new(&url, "b", timeout).unwrap());
    let b: Arc<dyn BudgetStore> = Arc::new(RedisStore::new(&url, "b", timeout).unwrap());
    let (admitted, spent) = race(vec![a, b], "k").await;
    assert!(spent <= BUDGET + 1e-9, "spent {spent}");
    assert!(admitted >= 10, "admitted {admitted}");
}

#[tokio::test]
async fn local_spend_survives_a_restart_up_to_the_last_flush_and_reservations_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let l = LocalBudgets::open(LocalStore::open(&path).unwrap()).unwrap();
        let s = scope("k");
        l.reserve(&s, 1, 2.0, None).await.unwrap().unwrap();
        l.settle(&s, 1, 2.0, Some(1.5)).await.unwrap();
        // An account of a period 500 days ago, flushed: dropped at the next open.
        let old = Scope {
            now_ms: now() - 500 * 86_400_000,
            ..scope("k")
        };
        l.reserve(&old, 4, 1.0, None).await.unwrap().unwrap();
        l.settle(&old, 4, 1.0, Some(0.5)).await.unwrap();
        assert_eq!(l.flush().unwrap(), 2);
        l.reserve(&s, 2, 3.0, None).await.unwrap().unwrap(); // open at the crash
        l.reserve(&s, 3, 1.0, None).await.unwrap().unwrap();
        l.settle(&s, 3, 1.0, Some(1.0)).await.unwrap(); // settled, never flushed
    }
    let l = LocalBudgets::open(LocalStore::open(&path).unwrap()).unwrap();
    let u = l.usage(&scope("k")).await.unwrap();
    assert_eq!((u.spent, u.reserved), (1.5, 0.0));
    let old = Scope {
        now_ms: now() - 500 * 86_400_000,
        ..scope("k")
    };
    assert_eq!(l.usage(&old).await.unwrap().spent, 0.0);
    // A new period starts from zero.
    let next = Scope {
        now_ms: now() + 40 * 86_400_000,
        ..scope("k")
    };
    assert_eq!(l.usage(&next).await.unwrap().spent, 0.0);
}
