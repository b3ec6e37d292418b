//! Two routewise instances (two `FeedbackService`s with their own `RedisStore`
//! connections) share one real `redis-server` on loopback: concurrent feedback through
//! both must lose no increment, duplicates across instances are refused, and an
//! unreachable Redis shows as unavailable while routing keeps its statistics.
//! Skips (with a printed reason) when `redis-server` is not installed.
#![cfg(test)]

use std::sync::Arc;
use std::time::Duration;

use routewise_online::{
    ArmStats, BanditConfig, DecisionRecord, FeedbackError, FeedbackRequest, FeedbackService,
    OnlineRouter, ScoreValue, StateConfig, StateStore,
};
use routewise_router::{Catalog, Engine, ModelInfo};
use routewise_testkit::redis::RedisServer;

fn catalog() -> Catalog {
    let m = |n: &str| ModelInfo {
        name: n.into(),
        input_per_mtok: 1.0,
        output_per_mtok: 2.0,
        mean_output_tokens: 10.0,
    };
    Catalog {
        models: vec![m("alpha"), m("beta")],
    }
}

fn bandit_cfg() -> BanditConfig {
    BanditConfig {
        dim: 3,
        forgetting: 1.0,
        prior_strength: 1.0,
        ..BanditConfig::default()
    }
}

fn decision(i: usize) -> DecisionRecord {
    // Small dyadic values so sums are exact in f64 whatever the order.
    let q = |k: usize| ((i * 7 + k * 3) % 8) as f64 / 8.0;
    DecisionRecord {
        id: format!("d{i}"),
        model: if i.is_multiple_of(2) {
            "alpha".into()
        } else {
            "beta".into()
        },
        x: vec![1.0, q(1), q(2), q(3)],
        prior_reward: 0.5,
        lambda: Some(0.0),
        cost_usd: 0.0,
        latency_ms: None,
        created_ms: routewise_online::service::now_ms(),
        cascade: None,
        replay: Some(routewise_online::ReplayContext {
            chosen: "alpha".into(),
            propensity: Some(0.5),
            explored: i.is_multiple_of(3),
            policy: r#"{"lambda":0.0}"#.into(),
            prompt: Some(format!("prompt {i}")),
            prompt_tokens: 3,
        }),
    }
}

fn score(i: usize) -> f64 {
    if i.is_multiple_of(3) {
        1.0
    } else {
        0.25
    }
}

async fn instance(port: u16, prefix: &str) -> FeedbackService {
    let engine = Arc::new(Engine::constant(catalog(), vec![0.5, 0.5]));
    let router = Arc::new(OnlineRouter::new(bandit_cfg(), engine, catalog()).unwrap());
    let cfg = StateConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}")),
        redis_prefix: prefix.into(),
        redis_timeout_ms: 2_000,
        ..StateConfig::default()
    };
    FeedbackService::open(router, &cfg).await.unwrap()
}

fn req(i: usize) -> FeedbackRequest {
    FeedbackRequest {
        decision_id: format!("d{i}"),
        score: Some(ScoreValue::Number(score(i))),
        thumbs: None,
        cost_usd: None,
        latency_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_feedback_to_two_instances_loses_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = instance(redis.port, "t1").await;
    let b = instance(redis.port, "t1").await;
    assert!(a.check().await && b.check().await);

    const N: usize = 400;
    // Decisions recorded by either instance are visible to both.
    for i in 0..N {
        let svc = if i.is_multiple_of(2) { &a } else { &b };
        svc.record_decision(decision(i)).await.unwrap();
    }
    // Every feedback is sent to BOTH instances concurrently: exactly one must win.
    let mut tasks = Vec::new();
    for i in 0..N {
        for svc in [a.clone(), b.clone()] {
            tasks.push(tokio::spawn(async move { (i, svc.submit(&req(i)).await) }));
        }
    }
    let mut ok = vec![0usize; N];
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r {
            Ok(_) => ok[i] += 1,
            Err(FeedbackError::Duplicate(_)) => {}
            Err(e) => panic!("feedback {i}: {e}"),
        }
    }
    assert!(
        ok.iter().all(|&c| c == 1),
        "each feedback applied exactly once"
    );

    // Totals: replay every feedback once, in any order (dyadic values: order-exact).
    let mut want = std::collections::BTreeMap::<String, ArmStats>::new();
    for i in 0..N {
        let d = decision(i);
        let residual = score(i) - d.prior_reward;
        want.entry(d.model.clone())
            .or_insert_with(|| ArmStats::prior(4, 1.0))
            .update(&d.x, residual, 1.0, 1.0);
    }
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    for model in ["alpha", "beta"] {
        let sa = a.router().arm_stats(model).unwrap();
        let sb = b.router().arm_stats(model).unwrap();
        assert_eq!(sa, want[model], "instance a, {model}");
        assert_eq!(sb, want[model], "instance b, {model}");
        assert_eq!(sa.n, (N / 2) as u64);
    }
    assert_eq!(a.store().kind(), "redis");
    assert_eq!(a.store().feedback_log_len().await.unwrap(), N as u64);
    // The log exports with each decision's replay context, in append order.
    let all = b.store().feedback_entries(0).await.unwrap();
    assert_eq!(all.len(), N);
    let ids: std::collections::HashSet<&str> = all.iter().map(|e| e.decision_id.as_str()).collect();
    assert_eq!(ids.len(), N);
    for e in &all {
        let i: usize = e.decision_id[1..].parse().unwrap();
        let r = e.replay.as_ref().unwrap();
        assert_eq!(r.prompt.as_deref(), Some(format!("prompt {i}").as_str()));
        assert_eq!(r.explored, i.is_multiple_of(3));
    }
    let later = a.store().feedback_entries(u64::MAX / 2).await.unwrap();
    assert!(later.is_empty());
    // Unknown decision and out-of-range score through the service.
    assert_eq!(a.submit(&req(N + 5)).await.unwrap_err().status(), 404);
    let mut bad = req(1);
    bad.score = Some(ScoreValue::Number(-0.5));
    assert_eq!(a.submit(&bad).await.unwrap_err().status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_last_statistics_and_reports_unavailable() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = instance(redis.port, "t2").await;
    a.record_decision(decision(0)).await.unwrap();
    a.submit(&req(0)).await.unwrap();
    let before = a.router().arm_stats("alpha").unwrap();
    assert_eq!(before.n, 1);
    assert!(a.available());

    redis.kill().unwrap();
    assert!(!a.check().await, "outage must show");
    assert!(!a.available());
    assert!(a.refresh().await.is_err());
    let e = a.submit(&req(2)).await.unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    // Serving goes on with the last statistics.
    assert_eq!(a.router().arm_stats("alpha").unwrap(), before);
    // A new instance starts despite the outage, from the prior.
    let c = instance(redis.port, "t2").await;
    assert!(!c.available());
    assert_eq!(c.router().arm_stats("alpha").unwrap().n, 0);
}

#[tokio::test]
async fn the_feedback_log_exports_in_pages_from_a_time() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 2,500 entries written straight into the stream, with explicit ids (ms 1..=2500):
    // more than two export pages.
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    for i in 1..=2500u64 {
        let e = routewise_online::FeedbackEntry {
            decision_id: format!("d{i}"),
            model: "alpha".into(),
            score: 1.0,
            cost_usd: 0.0,
            latency_ms: None,
            reward: 1.0,
            residual: 0.5,
            received_ms: i,
            replay: None,
            cascade: None,
        };
        pipe.cmd("XADD")
            .arg("p2:feedback_log")
            .arg(format!("{i}-0"))
            .arg("entry")
            .arg(serde_json::to_string(&e).unwrap())
            .ignore();
    }
    let _: () = pipe.query_async(&mut c).await.unwrap();
    let store = routewise_online::RedisStore::new(
        &format!("redis://127.0.0.1:{}", redis.port),
        "p2",
        Duration::from_secs(2),
    )
    .unwrap();
    let all = store.feedback_entries(0).await.unwrap();
    assert_eq!(all.len(), 2500);
    assert!(all
        .iter()
        .enumerate()
        .all(|(k, e)| e.decision_id == format!("d{}", k + 1)));
    let tail = store.feedback_entries(2001).await.unwrap();
    assert_eq!(tail.len(), 500);
    assert_eq!(tail[0].decision_id, "d2001");
}
