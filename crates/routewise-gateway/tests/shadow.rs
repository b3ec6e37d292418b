//! Shadow routers against a real upstream over loopback: decided off the request path,
//! their statistics at `GET /v1/stats/shadow`, and `execute:` sending a sample of their
//! choices upstream within the daily budget (never to the client).
#![cfg(test)]

mod common;

use std::time::Duration;

use routewise_gateway::pipeline::shadow::{Execute, Shadow};

/// A shadow that prefers `c` (the cheapest) where the live a/b/c router picks `a`.
fn prefers_c(execute: Option<Execute>) -> Shadow {
    Shadow {
        name: "cheap-first".into(),
        engine: common::engine(&[("a", 0.5, 30.0), ("b", 0.6, 3.0), ("c", 0.9, 0.3)]),
        policy: None,
        sample: 1.0,
        execute,
    }
}

/// The shadow's statistics once `done` holds (polled up to 5 s).
async fn stats_when(
    gw: &common::Gateway,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..100 {
        let (status, body) = common::get(&gw.url("/v1/stats/shadow")).await;
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if done(&v["data"][0]) {
            return v["data"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the shadow's statistics never got there");
}

#[tokio::test]
async fn a_shadow_decides_every_routed_request_and_executes_within_its_budget() {
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let execute = Execute {
        sample: 1.0,
        max_usd_per_day: 1.0,
    };
    gw.state
        .attach_shadows(vec![prefers_c(Some(execute))])
        .unwrap();
    for i in 0..5 {
        let r = common::send_json(
            &gw.url("/v1/chat/completions"),
            &common::chat_body(&format!("q {i}")),
        )
        .await;
        assert_eq!(r.status(), 200);
        // The client gets the live choice.
        assert_eq!(common::header(r.headers(), "x-routewise-model"), "a");
    }
    let s = stats_when(&gw, |s| s["executed"] == 5).await;
    assert_eq!(s["decisions"], 5);
    assert_eq!(s["agreement"], 0.0);
    assert!(s["predicted_savings_usd"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["executed_usd"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["over_budget"], 0);
    assert_eq!(mock.hits("up-a"), 5);
    assert_eq!(mock.hits("up-c"), 5);
    // The executed copy is capped at the output it reserved.
    for r in mock.requests().iter().filter(|r| r.model == "up-c") {
        assert_eq!(r.body["max_completion_tokens"], 4096, "{}", r.body);
    }
    // A request naming its model is not a routing decision: no shadow.
    let mut body = common::chat_body("direct");
    body["model"] = "b".into();
    assert_eq!(
        common::send_json(&gw.url("/v1/chat/completions"), &body)
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = stats_when(&gw, |s| s["executed"] == 5).await;
    assert_eq!(s["decisions"], 5);
}

#[tokio::test]
async fn a_budget_smaller_than_one_call_executes_nothing() {
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    // One call reserves the body's bytes plus 4,096 output tokens at c's $0.3/Mtok:
    // more than $0.0012.
    let execute = Execute {
        sample: 1.0,
        max_usd_per_day: 0.001,
    };
    gw.state
        .attach_shadows(vec![prefers_c(Some(execute))])
        .unwrap();
    for i in 0..3 {
        let r = common::send_json(
            &gw.url("/v1/chat/completions"),
            &common::chat_body(&format!("q {i}")),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let s = stats_when(&gw, |s| s["decisions"] == 3).await;
    assert_eq!(s["over_budget"], 3);
    assert_eq!(s["executed"], 0);
    assert_eq!(mock.hits("up-c"), 0);
    // Without `execute`, nothing is ever sent.
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    gw.state.attach_shadows(vec![prefers_c(None)]).unwrap();
    for i in 0..3 {
        let r = common::send_json(
            &gw.url("/v1/chat/completions"),
            &common::chat_body(&format!("x {i}")),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let s = stats_when(&gw, |s| s["decisions"] == 3).await;
    // An execution would have been spawned by now; give it the time to reach the mock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s["executed"], 0);
    assert_eq!(mock.hits("up-c"), 0);
    assert_eq!(mock.hits("up-a"), 3);
}
