//! Online learning through the gateway over real HTTP on loopback (client -> gateway ->
//! testkit mock): `model: auto` routed by the bandit, `POST /v1/feedback` and its typed
//! errors, statistics that move with feedback and survive a restart (redb), state in
//! `/metrics` and `/readyz`, and two instances sharing a real Redis (skipped with a
//! printed reason when `redis-server` is absent).
#![cfg(test)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{abc, abc_yaml, chat_body, client, config, get, post, post_stream, Gateway};
use routewise_gateway::{online, AppState};
use routewise_testkit::redis::RedisServer;
use routewise_testkit::MockUpstream;
use serde_json::{json, Value};

fn assert_openai_error(v: &Value, code: &str) {
    common::assert_openai_error(v);
    assert_eq!(v["error"]["code"], code, "{v}");
}

fn bandit_yaml(base_url: &str, state: &str) -> String {
    abc_yaml(
        base_url,
        &format!("bandit: {{alpha: 0.1, forgetting: 1.0}}\nstate: {state}\n"),
    )
}

fn local_state(dir: &Path) -> String {
    format!("{{path: \"{}\"}}", dir.join("state.redb").display())
}

/// Builds and attaches a gateway; retries while a previous instance still holds the
/// redb file (its connection tasks end asynchronously).
async fn start_online(yaml: &str) -> Gateway {
    let mut last = String::new();
    for _ in 0..100 {
        let state = AppState::new(config(yaml), abc(), None).unwrap();
        match state.attach_online().await {
            Ok(()) => return Gateway::start(state).await,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot attach the online state: {last}");
}

/// Routes one `auto` request; returns (decision id, answering model).
async fn route_one(gw: &Gateway, prompt: &str) -> (String, String) {
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body(prompt)).await;
    assert_eq!(status, 200, "{v}");
    let id = h["x-routewise-decision-id"].to_str().unwrap().to_string();
    let model = h["x-routewise-model"].to_str().unwrap().to_string();
    (id, model)
}

fn online_of(gw: &Gateway) -> &online::Online {
    gw.state.online.get().expect("online attached")
}

#[tokio::test]
async fn feedback_is_acknowledged_once_and_errors_are_typed() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start_online(&bandit_yaml(&mock.base_url(), &local_state(dir.path()))).await;
    let fb_url = gw.url("/v1/feedback");
    let (id, model) = route_one(&gw, "hello world, what is two plus two?").await;
    assert_eq!(
        model, "a",
        "the warm start follows the offline router's best model"
    );
    let before = online_of(&gw).router.arm_stats("a").unwrap();
    assert_eq!(before.n, 0);

    let (status, _, v) = post(&fb_url, &json!({"decision_id": id, "score": 0.2})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["decision_id"], id.as_str());
    assert_eq!(v["model"], "a");
    assert_eq!(v["model_feedback_count"], 1);
    assert!((v["reward"].as_f64().unwrap() - 0.2).abs() < 1e-12, "{v}"); // lambda 0
    let after = online_of(&gw).router.arm_stats("a").unwrap();
    assert_eq!(after.n, 1);
    assert_ne!(after.a, before.a, "A gains x x^T");
    assert_ne!(after.b, before.b, "b gains the residual times x");
    // other arms untouched
    assert_eq!(online_of(&gw).router.arm_stats("b").unwrap().n, 0);

    let (status, _, v) = post(&fb_url, &json!({"decision_id": id, "score": 1.0})).await;
    assert_eq!(status, 409, "{v}");
    assert_openai_error(&v, "duplicate_feedback");
    assert_eq!(online_of(&gw).router.arm_stats("a").unwrap(), after);

    let (status, _, v) = post(&fb_url, &json!({"decision_id": "nope", "score": 1.0})).await;
    assert_eq!(status, 404, "{v}");
    assert_openai_error(&v, "unknown_decision");

    let (id2, _) = route_one(&gw, "some text about the weather").await;
    let (status, _, v) = post(&fb_url, &json!({"decision_id": id2, "score": 1.5})).await;
    assert_eq!(status, 422, "{v}");
    assert_openai_error(&v, "score_out_of_range");
    let (status, _, v) = post(&fb_url, &json!({"decision_id": id2, "score": "great"})).await;
    assert_eq!(status, 400, "{v}");
    assert_openai_error(&v, "invalid_request");
    let r = client()
        .post(&fb_url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // the refused attempts left the decision open: a thumbs-up is accepted
    let (status, _, v) = post(&fb_url, &json!({"decision_id": id2, "score": true})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model_feedback_count"], 2);
    assert!((v["reward"].as_f64().unwrap() - 1.0).abs() < 1e-12, "{v}");

    let (status, text) = get(&gw.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"routewise_feedback_total{result="ok"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"routewise_feedback_total{result="duplicate_feedback"} 1"#));
    assert!(text.contains(r#"routewise_feedback_total{result="unknown_decision"} 1"#));
    assert!(text.contains(r#"routewise_feedback_total{result="score_out_of_range"} 1"#));
    assert!(text.contains(r#"routewise_state_available{store="local"} 1"#));
    assert!(text.contains(r#"routewise_online_decisions_recorded_total{result="ok"} 2"#));
    let (status, text) = get(&gw.url("/readyz")).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["state"],
        json!({"store": "local", "available": true, "required": false})
    );
}

/// Regression: feedback on a decision answered from the cache (whose response carries a
/// decision id like any other) was refused as "never issued", which it was not; the 404
/// now says that such decisions take no feedback.
#[tokio::test]
async fn feedback_on_a_cache_hit_says_why_it_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}cache: {{exact: true}}\n",
        bandit_yaml(&mock.base_url(), &local_state(dir.path()))
    );
    let gw = start_online(&yaml).await;
    route_one(&gw, "name three prime numbers").await;
    let (status, h, v) = post(
        &gw.url("/v1/chat/completions"),
        &chat_body("name three prime numbers"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(h["x-routewise-cache"], "hit-exact");
    let id = h["x-routewise-decision-id"].to_str().unwrap();
    let (status, _, v) = post(
        &gw.url("/v1/feedback"),
        &json!({"decision_id": id, "score": 1.0}),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_openai_error(&v, "unknown_decision");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("a cache hit"), "{message}");
}

#[tokio::test]
async fn bad_feedback_moves_traffic_away_from_the_model() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start_online(&bandit_yaml(&mock.base_url(), &local_state(dir.path()))).await;
    let fb_url = gw.url("/v1/feedback");
    // a (prior 0.9) keeps scoring 0, b (prior 0.8) is next: after enough zeros, b leads.
    let mut moved = None;
    for i in 0..200 {
        let (id, model) = route_one(&gw, &format!("question number {i}")).await;
        if model != "a" {
            moved = Some((i, model));
            break;
        }
        let (status, _, v) = post(&fb_url, &json!({"decision_id": id, "thumbs": "down"})).await;
        assert_eq!(status, 200, "{v}");
    }
    let (after, model) = moved.expect("the bandit never moved off a model that always fails");
    assert!(
        after >= 1,
        "the warm start must begin with the offline choice"
    );
    assert_eq!(model, "b");
}

#[tokio::test]
async fn statistics_survive_a_restart_with_the_local_store() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = bandit_yaml(&mock.base_url(), &local_state(dir.path()));
    let (stats, first_id) = {
        let gw = start_online(&yaml).await;
        let mut first = None;
        for (i, score) in [0.0, 0.5, 1.0, 0.25].into_iter().enumerate() {
            let (id, _) = route_one(&gw, &format!("hello {i} world")).await;
            let (status, _, v) = post(
                &gw.url("/v1/feedback"),
                &json!({"decision_id": id, "score": score}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            first.get_or_insert(id);
        }
        let stats = online_of(&gw).router.arm_stats("a").unwrap();
        assert_eq!(stats.n, 4);
        (stats, first.unwrap())
    };
    let gw = start_online(&yaml).await;
    assert_eq!(online_of(&gw).router.arm_stats("a").unwrap(), stats);
    let (status, _, v) = post(
        &gw.url("/v1/feedback"),
        &json!({"decision_id": first_id, "score": 1.0}),
    )
    .await;
    assert_eq!(
        status, 409,
        "duplicates are refused after a restart too: {v}"
    );
}

#[tokio::test]
async fn without_bandit_routing_is_unchanged_and_feedback_is_off() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&abc_yaml(&mock.base_url(), "")).await;
    assert!(gw.state.online.get().is_none());
    let (id, model) = route_one(&gw, "hello").await;
    assert_eq!(model, "a");
    let (status, _, v) = post(
        &gw.url("/v1/feedback"),
        &json!({"decision_id": id, "score": 1}),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    assert_openai_error(&v, "feedback_disabled");
    let (_, text) = get(&gw.url("/readyz")).await;
    assert!(!text.contains("state"), "{text}");
}

#[test]
fn bandit_and_state_config_errors_name_the_field() {
    let parse = |extra: &str| {
        routewise_gateway::config::parse(
            &abc_yaml("http://127.0.0.1:1/v1", extra),
            "gw.yaml",
            Path::new("/etc/rw"),
            std::iter::empty(),
            |_| Some("k".into()),
        )
    };
    let c = parse("").unwrap();
    assert!(c.bandit.is_none());
    assert_eq!(c.state.path, Path::new("/etc/rw/routewise-state.redb"));
    let c = parse("bandit: {}\nstate: {redis_url: \"redis://127.0.0.1:6379\"}").unwrap();
    assert_eq!(c.bandit, Some(routewise_online::BanditConfig::default()));
    assert_eq!(c.state.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    let e = parse("bandit: {alpha: -1, forgetting: 0.5}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gw.yaml: bandit.alpha"), "{e}");
    let e = parse("bandit: {forgetting: 2}").unwrap_err().to_string();
    assert!(e.contains("gw.yaml: bandit.forgetting"), "{e}");
    let e = parse("bandit: {alpah: 1}").unwrap_err().to_string();
    assert!(e.contains("gw.yaml: bandit") && e.contains("alpah"), "{e}");
    let e = parse("state: {redis_url: \"http://x\", decision_ttl_s: 0}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gw.yaml: state.redis_url"), "{e}");
    assert!(e.contains("gw.yaml: state.decision_ttl_s"), "{e}");
    let e = parse("state: {file: x}").unwrap_err().to_string();
    assert!(e.contains("gw.yaml: state") && e.contains("file"), "{e}");
}

#[tokio::test]
async fn two_instances_share_decisions_and_statistics_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let state = format!(
        "{{redis_url: \"redis://127.0.0.1:{}\", refresh_interval_ms: 50, redis_timeout_ms: 300}}",
        redis.port
    );
    let yaml = bandit_yaml(&mock.base_url(), &state);
    let gw1 = start_online(&yaml).await;
    let gw2 = start_online(&yaml).await;
    // decided on one instance, feedback through the other, concurrently
    let mut ids = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        ids.push(route_one(gw, &format!("shared prompt {i}")).await.0);
    }
    let sends = ids.iter().enumerate().map(|(i, id)| {
        let url = if i % 2 == 0 {
            gw2.url("/v1/feedback")
        } else {
            gw1.url("/v1/feedback")
        };
        let body = json!({"decision_id": id, "score": 0.5});
        async move { post(&url, &body).await.0 }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // a duplicate through the other instance is refused
    let (status, _, v) = post(
        &gw1.url("/v1/feedback"),
        &json!({"decision_id": ids[0], "score": 0.5}),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    // both instances converge on the shared totals
    let mut ok = false;
    for _ in 0..100 {
        let s1 = online_of(&gw1).router.arm_stats("a").unwrap();
        let s2 = online_of(&gw2).router.arm_stats("a").unwrap();
        if s1.n == 20 && s1 == s2 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "instances did not converge on 20 shared feedbacks");

    // outage: serving continues, readiness and metrics show it, feedback is refused
    let (id, _) = route_one(&gw1, "before the outage").await;
    drop(redis);
    // Readiness answers from cached state: degraded, still ready (the store is optional).
    let mut seen = None;
    for _ in 0..100 {
        let (status, text) = get(&gw1.url("/readyz")).await;
        if text.contains("unreachable") {
            seen = Some((status, text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, text) = seen.expect("the outage shows in /readyz within 2 s");
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "degraded", "{text}");
    assert_eq!(v["state"]["available"], false, "{text}");
    let (status, _, v) = post(
        &gw1.url("/v1/feedback"),
        &json!({"decision_id": id, "score": 1}),
    )
    .await;
    assert_eq!(status, 503, "{v}");
    assert_openai_error(&v, "state_unavailable");
    let (_, model) = route_one(&gw1, "during the outage").await;
    assert!(!model.is_empty());
    let (_, text) = get(&gw1.url("/metrics")).await;
    assert!(
        text.contains(r#"routewise_state_available{store="redis"} 0"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_streamed_decision_takes_feedback_once_the_stream_ended() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = start_online(&bandit_yaml(&mock.base_url(), &local_state(dir.path()))).await;
    let r = post_stream(
        &gw.url("/v1/chat/completions"),
        chat_body("stream me a story"),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let id = r.headers()["x-routewise-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    // the stream's record is written in the background when the stream ends
    let mut last = 0;
    for _ in 0..100 {
        let (status, _, _) = post(
            &gw.url("/v1/feedback"),
            &json!({"decision_id": id, "score": 0.7}),
        )
        .await;
        last = status;
        if status != 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, 200);
}

#[test]
fn the_demo_keeps_its_state_in_the_temp_directory() {
    let vars = [("ROUTEWISE_BANDIT__ALPHA".to_string(), "0.2".to_string())];
    let c = routewise_gateway::demo::config(vars).unwrap();
    assert_eq!(c.bandit.as_ref().map(|b| b.alpha), Some(0.2));
    assert_eq!(
        c.state.path,
        std::env::temp_dir().join("routewise-demo-state.redb")
    );
    let c = routewise_gateway::demo::config(std::iter::empty()).unwrap();
    assert!(
        c.bandit.is_none(),
        "the demo runs without the bandit by default"
    );
}

#[tokio::test]
async fn a_new_model_is_force_explored_until_it_has_enough_feedback() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = mock.base_url();
    let d = format!(
        "  - {{name: d, base_url: \"{base}\", upstream_model: up-d, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}"
    );
    let yaml = abc_yaml(
        &base,
        &format!(
            "{d}\nbandit: {{optimistic_score: 0.85, forced_exploration_rate: 1.0, forced_exploration_pulls: 2}}\nstate: {}\n",
            local_state(dir.path())
        ),
    );
    // `extra` follows the models list, so `d` is the list's fourth entry
    let gw = start_online(&yaml).await;
    assert_eq!(gw.state.new_models().len(), 1);
    for _ in 0..2 {
        let (id, model) = route_one(&gw, "try the new one").await;
        assert_eq!(model, "d", "forced exploration of the new model");
        let (status, _, v) = post(
            &gw.url("/v1/feedback"),
            &json!({"decision_id": id, "thumbs": "down"}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["model"], "d");
    }
    assert_eq!(
        mock.requests().iter().filter(|r| r.model == "up-d").count(),
        2
    );
    let (_, model) = route_one(&gw, "try the new one").await;
    assert_eq!(
        model, "a",
        "exploration over, its prior 0.85 < a's 0.9 minus what it learned"
    );
    // without a price the bandit cannot onboard it; without a bandit it is unknown
    let no_price = yaml.replace(", price: {input_per_mtok: 1, output_per_mtok: 1}", "");
    let e = AppState::new(config(&no_price), abc(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("models[3].price"), "{e}");
    let no_bandit = abc_yaml(&base, &d);
    let e = AppState::new(config(&no_bandit), abc(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("models[3].name"), "{e}");
}

#[tokio::test]
async fn regression_readiness_during_a_redis_outage_is_cached_and_fails_only_when_required() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await.unwrap();
    let state = |required: bool| {
        format!(
            "{{redis_url: \"redis://127.0.0.1:{}\", refresh_interval_ms: 50, redis_timeout_ms: 300, required: {required}}}",
            redis.port
        )
    };
    let optional = start_online(&bandit_yaml(&mock.base_url(), &state(false))).await;
    let required = start_online(&bandit_yaml(&mock.base_url(), &state(true))).await;
    assert_eq!(get(&optional.url("/readyz")).await.0, 200);
    assert_eq!(get(&required.url("/readyz")).await.0, 200);
    drop(redis);
    // Within a few refresh intervals both see the outage; every probe is answered from
    // cached state (no probe waits for Redis's timeouts).
    let mut slowest = Duration::ZERO;
    let mut states = (0, 0);
    for _ in 0..100 {
        let t = std::time::Instant::now();
        let a = get(&optional.url("/readyz")).await.0;
        let b = get(&required.url("/readyz")).await.0;
        slowest = slowest.max(t.elapsed() / 2);
        states = (a, b);
        if b == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(states, (200, 503));
    assert!(slowest < Duration::from_millis(250), "{slowest:?}");
    // Routing goes on.
    let (_, model) = route_one(&optional, "during the outage").await;
    assert!(!model.is_empty());
}

/// Feedback on a cascaded decision carries its verdict: the ack names it, and the
/// accepted and escalated answers' scores add up separately in `/metrics` (issue 13: the
/// cascade's online statistics).
#[tokio::test]
async fn feedback_on_cascaded_decisions_is_counted_by_verdict() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml = bandit_yaml(&mock.base_url(), &local_state(dir.path())).replace(
        "router: {policy: {lambda: 0}}",
        "router: {policy: {lambda: 0}, cascade: {tier: [c, b], min_agree: 2}}",
    );
    let gw = start_online(&yaml).await;
    let fb_url = gw.url("/v1/feedback");
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("B) because of the second law"));
    let (accepted, model) = route_one(&gw, "pick one").await;
    assert!(model == "b" || model == "c", "{model}");
    mock.set_model_answer("up-c", Some("The answer is (C)."));
    let (escalated, model) = route_one(&gw, "pick one").await;
    assert_eq!(model, "a");
    let (status, _, v) = post(&fb_url, &json!({"decision_id": accepted, "score": 0.75})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cascade"], "accepted", "{v}");
    let (status, _, v) = post(&fb_url, &json!({"decision_id": escalated, "score": 0.5})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cascade"], "escalated", "{v}");
    // A decision without a cascade says nothing about one.
    let mut body = chat_body("pick one");
    body["routewise"] = json!({"cascade": false});
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    let plain = h["x-routewise-decision-id"].to_str().unwrap().to_string();
    let (_, _, v) = post(&fb_url, &json!({"decision_id": plain, "score": 1.0})).await;
    assert!(v.get("cascade").is_none(), "{v}");
    let metrics = get(&gw.url("/metrics")).await.1;
    for want in [
        "routewise_cascade_feedback_total{verdict=\"accepted\"} 1",
        "routewise_cascade_feedback_total{verdict=\"escalated\"} 1",
        "routewise_cascade_feedback_score_total{verdict=\"accepted\"} 0.75",
        "routewise_cascade_feedback_score_total{verdict=\"escalated\"} 0.5",
    ] {
        assert!(metrics.contains(want), "{want} not in {metrics}");
    }
}
