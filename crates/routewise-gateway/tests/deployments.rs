//! Several deployments per model over real HTTP (client -> gateway -> testkit mocks, one
//! mock server per deployment): a burst is spread over a model's deployments and never
//! past their `max_concurrency`, a full model spills to the next in the ranking (or is
//! waited for), a failed deployment falls back to another deployment of the same model,
//! `x-routewise-slo-ms` passes over slow deployments, and affinity keeps a conversation
//! on its model across turns.
#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use routewise_testkit::{Fault, MockUpstream};
use serde_json::{json, Value};

/// A two-deployment model `a` (on `one` and `two`, with the `max_concurrency` of `caps`;
/// `None`: no cap) and the single-deployment models `b` and `c` on `other`, plus `extra`.
fn yaml(one: &str, two: &str, other: &str, caps: [Option<u32>; 2], extra: &str) -> String {
    let cap = |c: Option<u32>| c.map_or_else(String::new, |c| format!(", max_concurrency: {c}"));
    let (c1, c2) = (cap(caps[0]), cap(caps[1]));
    format!(
        r#"
listen: 127.0.0.1:0
router: {{policy: {{lambda: 0}}}}
models:
  - name: a
    upstream_model: up-a
    deployments:
      - {{name: one, base_url: "{one}"{c1}}}
      - {{name: two, base_url: "{two}"{c2}}}
  - {{name: b, base_url: "{other}", upstream_model: up-b}}
  - {{name: c, base_url: "{other}", upstream_model: up-c}}
{extra}
"#
    )
}

struct Pool {
    one: MockUpstream,
    two: MockUpstream,
    other: MockUpstream,
    gw: common::Gateway,
}

async fn pool(cap: u32, extra: &str) -> Pool {
    pool_with([Some(cap); 2], extra).await
}

async fn pool_with(caps: [Option<u32>; 2], extra: &str) -> Pool {
    let (one, two, other) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    let gw = common::start(&yaml(
        &one.base_url(),
        &two.base_url(),
        &other.base_url(),
        caps,
        extra,
    ))
    .await;
    Pool {
        one,
        two,
        other,
        gw,
    }
}

/// Sends `n` requests at once; their statuses, answering models and bodies.
async fn burst(gw: &common::Gateway, n: usize, body: &Value) -> Vec<(u16, String, Value)> {
    let calls = (0..n).map(|_| async {
        let r = common::send_json(&gw.url("/v1/chat/completions"), body).await;
        let status = r.status().as_u16();
        let model = common::header(r.headers(), "x-routewise-model").to_string();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        (status, model, v)
    });
    futures_util::future::join_all(calls).await
}

/// Models a, b, c on one mock (upstream names up-a, up-b, up-c), each with its
/// `max_concurrency` from `caps` (`None`: no cap), calls to the `slow` upstream models
/// delayed by `delay`, plus `extra`.
async fn one_mock(
    caps: [Option<u32>; 3],
    slow: &[&str],
    delay: Duration,
    extra: &str,
) -> (MockUpstream, common::Gateway) {
    let mock = MockUpstream::start().await.unwrap();
    for m in slow {
        mock.set_model_fault(m, Some(Fault::Delay(delay)));
    }
    let u = mock.base_url();
    let model = |name: &str, cap: Option<u32>| {
        let cap = cap.map_or_else(String::new, |c| format!(", max_concurrency: {c}"));
        format!("  - {{name: {name}, base_url: \"{u}\", upstream_model: up-{name}{cap}}}\n")
    };
    let yaml = format!(
        "listen: 127.0.0.1:0\nrouter: {{policy: {{lambda: 0}}}}\nmodels:\n{}{}{}{extra}\n",
        model("a", caps[0]),
        model("b", caps[1]),
        model("c", caps[2]),
    );
    let gw = common::start(&yaml).await;
    (mock, gw)
}

#[tokio::test]
async fn a_burst_is_spread_over_the_deployments_never_past_their_cap_then_spills() {
    let p = pool(4, "").await;
    // Long enough that every request of a burst is in flight together, even on a slow
    // machine.
    for m in [&p.one, &p.two] {
        m.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(1500))));
    }
    // Eight at once: both deployments of a take four each.
    let out = burst(&p.gw, 8, &common::chat_body("hello")).await;
    assert!(out.iter().all(|(s, m, _)| *s == 200 && m == "a"), "{out:?}");
    assert_eq!((p.one.hits("up-a"), p.two.hits("up-a")), (4, 4));
    assert!(p.one.peak_in_flight() <= 4 && p.two.peak_in_flight() <= 4);

    // Twelve at once: a is full at eight, the rest go to the next model in the ranking.
    let out = burst(&p.gw, 12, &common::chat_body("hello")).await;
    assert!(out.iter().all(|(s, _, _)| *s == 200), "{out:?}");
    let on_a = out.iter().filter(|(_, m, _)| m == "a").count();
    assert_eq!(on_a, 8, "{out:?}");
    assert_eq!(p.other.hits("up-b"), 4);
    assert!(p.one.peak_in_flight() <= 4 && p.two.peak_in_flight() <= 4);
    let (_, metrics) = common::get(&p.gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_model_at_capacity_total{model=\"a\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("routewise_deployment_in_flight{model=\"a\",deployment=\"one\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_spill_a_full_model_is_waited_for() {
    let p = pool(2, "dispatch: {spill: false, queue_ms: 10000}").await;
    for m in [&p.one, &p.two] {
        m.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(300))));
    }
    let started = Instant::now();
    let out = burst(&p.gw, 8, &common::chat_body("hello")).await;
    assert!(out.iter().all(|(s, m, _)| *s == 200 && m == "a"), "{out:?}");
    assert_eq!(p.other.total_hits(), 0, "nothing spilled");
    assert!(p.one.peak_in_flight() <= 2 && p.two.peak_in_flight() <= 2);
    // Four slots, eight requests of 300 ms: at least two rounds.
    assert!(started.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn when_every_candidate_stays_full_the_request_gets_503_after_queue_ms() {
    let (one, gw) = one_mock(
        [Some(1), Some(1), Some(1)],
        &["up-a", "up-b"],
        Duration::from_millis(1500),
        "routes: [{name: ab, when: {keywords: [slow]}, then: {models: [a, b]}}]\ndispatch: {queue_ms: 100}",
    )
    .await;
    let out = burst(&gw, 3, &common::chat_body("slow please")).await;
    let mut statuses: Vec<u16> = out.iter().map(|o| o.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 503], "{out:?}");
    let refused = out.iter().find(|o| o.0 == 503).unwrap();
    common::assert_openai_error(&refused.2);
    assert_eq!(refused.2["error"]["code"], "at_capacity");
    assert_eq!(one.hits("up-c"), 0, "c is outside the route's pool");
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_requests_at_capacity_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_deployment_falls_back_to_another_deployment_of_the_same_model() {
    let (capture, _guard) = common::capture_logs(tracing::Level::INFO);
    let p = pool(100, "cooldown: {failures: 1000, seconds: 30}").await;
    p.one.set_model_fault("up-a", Some(Fault::Status(500)));
    let mut retried = 0;
    for i in 0..60 {
        let (status, h, _) = common::post(
            &p.gw.url("/v1/chat/completions"),
            &common::chat_body(&format!("q{i}")),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(common::header(&h, "x-routewise-model"), "a");
        if common::header(&h, "x-routewise-attempts") == "2" {
            retried += 1;
        }
    }
    assert_eq!(p.other.total_hits(), 0, "never moved to another model");
    assert_eq!(
        p.two.hits("up-a"),
        60,
        "every request answered by the healthy one"
    );
    assert_eq!(
        p.one.hits("up-a"),
        retried,
        "each failure was retried on `two`"
    );
    assert!(
        retried >= 1,
        "the failing deployment was tried at least once"
    );
    // Once its error rate is known, it goes first only when the power of two choices
    // draws it twice (a quarter of the time, by weight): well under half of 60 requests
    // (the bound is four standard deviations out).
    assert!(retried < 30, "{retried}");
    // The decision log names the deployments: each attempt's, and the answering one.
    assert!(p.gw.state.decision_log.flush(Duration::from_secs(5)));
    let logs = capture.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("routewise::decision"))
        .collect();
    assert_eq!(lines.len(), 60);
    assert!(
        lines.iter().all(|l| l.contains("deployment=\"two\"")),
        "{logs}"
    );
    let retried_lines = lines
        .iter()
        .filter(|l| l.contains("a@one: http_5xx"))
        .count();
    assert_eq!(retried_lines as u64, retried, "{logs}");
}

/// One callsite, reached from any thread.
fn log_at_one_callsite(tag: &str) {
    tracing::info!(target: "routewise::capture_regression", tag);
}

/// Regression (CI of 2026-11-28: the test above saw no decision line at all): while the
/// capture's subscriber was the only registered dispatcher, a thread without one that
/// reached a callsite first made tracing-core cache "never" for it, for every thread.
#[test]
fn regression_a_capture_sees_a_callsite_that_another_thread_reached_first() {
    let (capture, _guard) = common::capture_logs(tracing::Level::INFO);
    std::thread::spawn(|| log_at_one_callsite("elsewhere"))
        .join()
        .unwrap();
    log_at_one_callsite("here");
    let text = capture.text();
    assert!(text.contains("tag=\"here\""), "{text}");
    assert!(!text.contains("elsewhere"), "{text}");
}

#[tokio::test]
async fn the_slo_header_passes_over_a_deployment_slow_to_its_first_token() {
    let p = pool(100, "").await;
    p.one
        .set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(300))));
    // Streams teach the gateway each deployment's time to first token.
    for i in 0..60 {
        if p.one.hits("up-a") > 0 && p.two.hits("up-a") > 0 {
            break;
        }
        let r = common::post_stream(
            &p.gw.url("/v1/chat/completions"),
            common::chat_body(&format!("learn {i}")),
        )
        .await;
        assert_eq!(r.status(), 200);
        common::read_sse(r).await;
    }
    assert!(p.one.hits("up-a") > 0 && p.two.hits("up-a") > 0);
    let slow_before = p.one.hits("up-a");
    for i in 0..10 {
        let r = common::client()
            .post(p.gw.url("/v1/chat/completions"))
            .header("x-routewise-slo-ms", "150")
            .json(&common::chat_body(&format!("fast {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(common::header(r.headers(), "x-routewise-model"), "a");
    }
    assert_eq!(
        p.one.hits("up-a"),
        slow_before,
        "the slow deployment was passed over"
    );
    // A malformed objective is the client's error.
    let r = common::client()
        .post(p.gw.url("/v1/chat/completions"))
        .header("x-routewise-slo-ms", "soon")
        .json(&common::chat_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The route explanation shows what was learned per deployment.
    let (_, _, v) = common::post(&p.gw.url("/v1/route"), &common::chat_body("x")).await;
    let a = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(a["deployments"][0]["name"], "one");
    assert!(
        a["deployments"][0]["ttft_ms"].as_f64().unwrap() >= 250.0,
        "{a}"
    );
    assert!(
        a["deployments"][1]["ttft_ms"].as_f64().unwrap() < 250.0,
        "{a}"
    );
}

#[tokio::test]
async fn affinity_keeps_a_conversation_on_its_model_across_turns_and_deployments() {
    let p = pool(100, "affinity: {ttl_s: 600, switch_margin: 1e12}").await;
    let turn = |lambda: f64, text: &str| {
        let mut b = common::chat_body(text);
        b["routewise"] = json!({"lambda": lambda});
        b
    };
    for (k, lambda) in [0.0, 1e9, 1e9, 1e9].into_iter().enumerate() {
        let r = common::client()
            .post(p.gw.url("/v1/chat/completions"))
            .header("x-routewise-session", "conv-1")
            .json(&turn(lambda, &format!("turn {k}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            common::header(r.headers(), "x-routewise-model"),
            "a",
            "turn {k}"
        );
    }
    assert_eq!(p.one.hits("up-a") + p.two.hits("up-a"), 4);
    assert_eq!(p.other.total_hits(), 0);
}

#[tokio::test]
async fn a_latency_weight_trades_the_best_model_for_a_faster_one_and_energy_is_counted() {
    let (slow, fast) = (
        MockUpstream::start().await.unwrap(),
        MockUpstream::start().await.unwrap(),
    );
    slow.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(300))));
    let gw = common::start(&format!(
        r#"
listen: 127.0.0.1:0
router: {{policy: {{lambda: 0}}}}
models:
  - {{name: a, base_url: "{s}", upstream_model: up-a, energy_wh_per_mtok: 5000}}
  - {{name: b, base_url: "{f}", upstream_model: up-b, energy_wh_per_mtok: 100}}
  - {{name: c, base_url: "{f}", upstream_model: up-c}}
"#,
        s = slow.base_url(),
        f = fast.base_url()
    ))
    .await;
    let url = gw.url("/v1/chat/completions");
    let ask = |body: Value, header: Option<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            let mut r = common::client().post(url).json(&body);
            if let Some((k, v)) = header {
                r = r.header(k, v);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 200);
            common::header(r.headers(), "x-routewise-model").to_string()
        }
    };
    // Nothing observed yet: latency weighs nothing, a (the best) answers.
    assert_eq!(
        ask(common::chat_body("x"), Some(("x-routewise-mu", "1"))).await,
        "a"
    );
    // b answers once (named), so both latencies are known.
    let mut named = common::chat_body("y");
    named["model"] = json!("b");
    assert_eq!(ask(named, None).await, "b");
    // Without a weight the best model still answers; with one, the faster b does.
    assert_eq!(ask(common::chat_body("z"), None).await, "a");
    assert_eq!(
        ask(common::chat_body("z"), Some(("x-routewise-mu", "1"))).await,
        "b"
    );
    let mut body = common::chat_body("z");
    body["routewise"] = json!({"mu": 1.0});
    assert_eq!(ask(body, None).await, "b");
    // An energy weight alone also moves it: a's 5 Wh per thousand tokens cost it more
    // than its lead (c, with no energy configured, weighs none).
    let mut body = common::chat_body("z");
    body["routewise"] = json!({"nu": 1.0});
    assert_eq!(ask(body, None).await, "b");
    let mut body = common::chat_body("z");
    body["routewise"] = json!({"nu": 1000.0});
    assert_eq!(ask(body, None).await, "c");
    // Bad weights are the client's error.
    let r = common::client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-routewise-mu", "-1")
        .json(&common::chat_body("z"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _, v) = common::post(
        &gw.url("/v1/chat/completions"),
        &json!({"model": "auto", "messages": [{"role": "user", "content": "z"}], "routewise": {"nu": "lots"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "routewise.nu");
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    for model in ["a", "b"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("routewise_energy_wh_total{{model=\"{model}\"}}")))
            .unwrap_or_else(|| panic!("{metrics}"));
        let wh: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(wh > 0.0, "{line}");
    }
}

#[tokio::test]
async fn near_capacity_a_burst_is_assigned_jointly_within_the_free_slots() {
    let (slow, gw) = one_mock(
        [Some(2), Some(2), None],
        &["up-a", "up-b", "up-c"],
        Duration::from_millis(400),
        // No queue places (queue_ms 0): the burst is assigned to the free slots only.
        "dispatch: {queue_ms: 0, balance: {solver: exact, window_ms: 5, near: 0.5}}",
    )
    .await;
    // One at a time: nothing is near capacity, nothing is batched.
    for i in 0..3 {
        let (status, h, _) = common::post(
            &gw.url("/v1/chat/completions"),
            &common::chat_body(&format!("one {i}")),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(common::header(&h, "x-routewise-model"), "a");
    }
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(!metrics.contains("routewise_balanced_total{"), "{metrics}");
    // A burst of eight: once a is half full, arrivals are batched and spread over the
    // free slots of a and b, and c takes the rest; nothing exceeds a cap.
    slow.reset_peak();
    let out = burst(&gw, 8, &common::chat_body("burst")).await;
    assert!(out.iter().all(|(s, _, _)| *s == 200), "{out:?}");
    let count = |m: &str| out.iter().filter(|o| o.1 == m).count();
    assert_eq!(count("a") + count("b") + count("c"), 8);
    assert!(count("a") <= 2 && count("b") <= 2, "{out:?}");
    assert!(slow.peak_in_flight() <= 8);
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    let batched: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("routewise_balanced_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(batched >= 1, "{metrics}");
    assert!(
        metrics.contains("routewise_balanced_total{verdict=\"moved\"}"),
        "{metrics}"
    );
}

/// Model a (one slot, 300 ms answers) is busy with one request when a second arrives;
/// balanced dispatch with queue places priced at `queue_price` places it. Which model
/// answered the second, how long it took, and the balanced verdicts counted.
async fn second_request_while_a_is_busy(
    queue_price: f64,
    slo_ms: Option<u64>,
) -> (String, Duration, String) {
    let (_mock, gw) = one_mock(
        [Some(1), None, None],
        &["up-a"],
        Duration::from_millis(300),
        &format!(
            "dispatch: {{queue_ms: 30000, balance: {{solver: exact, window_ms: 5, near: 0.5, queue_price: {queue_price}}}}}"
        ),
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    // One answer from a first, so its latency (and so its queue's places) is known: the
    // mock's short answers take 300 ms, so a's time per token is high, and the catalog's
    // mean output makes a call several seconds (hence queue_ms 30 s, of which a placed
    // request waits half: a place or more even if the warm call took twice as long).
    let (status, h, _) = common::post(&url, &common::chat_body("warm")).await;
    assert_eq!(
        (status, common::header(&h, "x-routewise-model")),
        (200, "a")
    );
    let busy = {
        let url = url.clone();
        tokio::spawn(async move { common::post(&url, &common::chat_body("first")).await })
    };
    // Until the first holds a's slot.
    let busy_at = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = common::get(&gw.url("/metrics")).await;
        if metrics.lines().any(|l| {
            l.starts_with("routewise_deployment_in_flight{model=\"a\"") && l.ends_with(" 1")
        }) {
            break;
        }
        assert!(Instant::now() < busy_at, "a never got busy: {metrics}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let mut second = common::client()
        .post(url.clone())
        .json(&common::chat_body("second"));
    if let Some(slo) = slo_ms {
        second = second.header("x-routewise-slo-ms", slo.to_string());
    }
    let r = second.send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let model = common::header(r.headers(), "x-routewise-model").to_string();
    let (status, h, _) = busy.await.unwrap();
    assert_eq!(
        (status, common::header(&h, "x-routewise-model")),
        (200, "a")
    );
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    let verdicts = metrics
        .lines()
        .filter(|l| l.starts_with("routewise_balanced_total{"))
        .collect::<Vec<_>>()
        .join("\n");
    (model, took, verdicts)
}

#[tokio::test]
async fn near_capacity_a_cheap_queue_place_holds_the_request_for_the_best_model() {
    // A place in a's queue costs next to nothing: the request waits for a's slot.
    let (model, took, verdicts) = second_request_while_a_is_busy(1e-9, None).await;
    assert_eq!(model, "a", "{verdicts}");
    // It waited for the first to end (300 ms after it started).
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(verdicts.contains("verdict=\"held\"} 1"), "{verdicts}");
}

#[tokio::test]
async fn near_capacity_a_dear_queue_place_sends_the_request_to_a_free_model_at_once() {
    // A place costs more than a's lead: the request takes b's free slot at once.
    let (model, _, verdicts) = second_request_while_a_is_busy(1000.0, None).await;
    assert_eq!(model, "b", "{verdicts}");
    assert!(verdicts.contains("verdict=\"moved\"} 1"), "{verdicts}");
}

#[tokio::test]
async fn a_burst_with_cheap_queue_places_waits_for_the_best_model_never_past_its_caps() {
    // a: two deployments of 2 slots, 300 ms answers; b and c uncapped. Twelve at once:
    // once a is half full the rest are batched; a place in a's queue costs next to
    // nothing, so a's queue takes what its places allow and those requests wait for a
    // (up to half of queue_ms); the rest go to b at once. Nothing is refused, nothing
    // passes a cap.
    let p = pool(
        2,
        "dispatch: {queue_ms: 30000, balance: {solver: exact, window_ms: 5, near: 0.5, queue_price: 0.000000001}}",
    )
    .await;
    for m in [&p.one, &p.two] {
        m.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(300))));
    }
    // One answer from each of a's deployments first, so a's latency is known.
    let url = p.gw.url("/v1/chat/completions");
    while p.one.hits("up-a") == 0 || p.two.hits("up-a") == 0 {
        let (status, _, _) = common::post(&url, &common::chat_body("warm")).await;
        assert_eq!(status, 200);
    }
    p.one.reset_peak();
    p.two.reset_peak();
    let out = burst(&p.gw, 12, &common::chat_body("burst")).await;
    assert!(out.iter().all(|(s, _, _)| *s == 200), "{out:?}");
    assert!(p.one.peak_in_flight() <= 2 && p.two.peak_in_flight() <= 2);
    let on_a = out.iter().filter(|(_, m, _)| m == "a").count();
    let (_, metrics) = common::get(&p.gw.url("/metrics")).await;
    let held: u64 = metrics
        .lines()
        .find(|l| l.starts_with("routewise_balanced_total{verdict=\"held\"}"))
        .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap());
    // More than a's four slots answered from a: the held ones waited for it.
    assert!(held >= 1, "{metrics}");
    assert!(on_a > 4, "{on_a} on a: {out:?}");
    assert!(
        metrics.contains("routewise_deployment_in_flight{model=\"a\",deployment=\"one\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn regression_a_request_with_an_slo_is_not_held_in_a_queue() {
    // An SLO is dropped rather than waited for; a held request with one once waited for a
    // deployment within it. Even a place that costs nothing is not offered to it.
    let (model, _, verdicts) = second_request_while_a_is_busy(1e-9, Some(100_000)).await;
    assert_eq!(model, "b", "{verdicts}");
    assert!(!verdicts.contains("held"), "{verdicts}");
}

#[tokio::test]
async fn regression_a_request_waiting_for_a_slot_does_not_call_a_model_that_cooled_down_meanwhile()
{
    // a's one slot is held by a call that times out and opens a's breaker. The request
    // waiting for that slot once took it and called a anyway (the breaker was asked only
    // before the wait).
    let (mock, gw) = one_mock(
        [Some(1), None, None],
        &["up-a"],
        Duration::from_millis(800),
        "limits: {request_timeout_ms: 300}\ncooldown: {failures: 1, seconds: 30}\ndispatch: {spill: false, queue_ms: 5000}",
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let first = {
        let url = url.clone();
        tokio::spawn(async move { common::post(&url, &common::chat_body("first")).await })
    };
    let busy_at = Instant::now() + Duration::from_secs(10);
    while mock.hits("up-a") == 0 {
        assert!(Instant::now() < busy_at, "a never got the first call");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, h, _) = common::post(&url, &common::chat_body("second")).await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-model"), "b");
    assert_eq!(mock.hits("up-a"), 1, "only the first call reached a");
    let (status, h, _) = first.await.unwrap();
    assert_eq!(
        (status, common::header(&h, "x-routewise-model")),
        (200, "b")
    );
}

#[tokio::test]
async fn regression_a_retry_on_a_full_deployment_moves_on_instead_of_spinning() {
    // spill: false and a long queue: the retry of a failed call on a's other deployment,
    // which is full, once spun on "a has room" (the failed deployment's freed slot) until
    // queue_ms. It now moves on to the next model at once.
    let p = pool(
        1,
        "dispatch: {spill: false, queue_ms: 10000}\ncooldown: {failures: 1000, seconds: 30}",
    )
    .await;
    p.one.set_model_fault("up-a", Some(Fault::Status(500)));
    p.two
        .set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(2000))));
    // The first request ends on `two` (directly, or after `one` failed) and holds it.
    let url = p.gw.url("/v1/chat/completions");
    let holder = tokio::spawn({
        let url = url.clone();
        async move {
            common::send_json(&url, &common::chat_body("hold"))
                .await
                .status()
        }
    });
    for _ in 0..200 {
        if p.two.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(p.two.in_flight(), 1);
    let started = Instant::now();
    let (status, h, _) = common::post(&url, &common::chat_body("next")).await;
    assert_eq!(status, 200);
    assert_eq!(common::header(&h, "x-routewise-model"), "b");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(holder.await.unwrap(), 200);
}

#[tokio::test]
async fn regression_a_request_whose_slo_deployments_are_full_is_served_by_the_others_at_once() {
    // The deployments within the SLO are full and the slow one has room: the request once
    // went round until queue_ms and got 503; the SLO is a preference, so it is dropped.
    slo_full_served_elsewhere("dispatch: {queue_ms: 5000}").await;
}

#[tokio::test]
async fn regression_without_spill_a_request_whose_slo_deployments_are_full_does_not_wait() {
    // Under spill: false the request once waited the whole queue_ms for the fast
    // deployment before the SLO was dropped.
    slo_full_served_elsewhere("dispatch: {queue_ms: 5000, spill: false}").await;
}

async fn slo_full_served_elsewhere(dispatch: &str) {
    let Pool {
        one,
        two,
        other: _other,
        gw,
    } = pool_with([None, Some(1)], dispatch).await;
    one.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(300))));
    let url = gw.url("/v1/chat/completions");
    let mut named = common::chat_body("learn");
    named["model"] = json!("a");
    for _ in 0..60 {
        if one.hits("up-a") > 0 && two.hits("up-a") > 0 {
            break;
        }
        common::read_sse(common::post_stream(&url, named.clone()).await).await;
    }
    assert!(one.hits("up-a") > 0 && two.hits("up-a") > 0);
    // `two` (the fast one) is held by a long call with the same SLO.
    two.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(2500))));
    let slo = |body: Value| {
        common::client()
            .post(url.clone())
            .header("x-routewise-slo-ms", "150")
            .json(&body)
            .send()
    };
    let holder = tokio::spawn(slo(named.clone()));
    for _ in 0..200 {
        if two.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(two.in_flight(), 1);
    let before = one.hits("up-a");
    let started = Instant::now();
    let r = slo(named.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        one.hits("up-a"),
        before + 1,
        "served by the slow deployment"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(holder.await.unwrap().unwrap().status(), 200);
}

#[tokio::test]
async fn regression_a_probe_that_waits_for_a_slot_is_released_when_its_client_leaves() {
    // A half-open breaker's single probe went to a request that then queued for a full
    // model; when its client went away, the probe stayed taken and the model was skipped
    // for good. The probe is now released on every path without a call.
    let (mock, gw) = one_mock(
        [Some(1), None, None],
        &["up-a"],
        Duration::from_millis(3000),
        "cooldown: {failures: 1, seconds: 0.1}\ndispatch: {spill: false, queue_ms: 5000}",
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    // A slow call holds a's only slot.
    let mut named = common::chat_body("hold");
    named["model"] = json!("a");
    let holder = tokio::spawn({
        let url = url.clone();
        async move { common::send_json(&url, &named).await.status() }
    });
    for _ in 0..200 {
        if mock.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // a fails (as another instance of the call would) and cools down; then half-opens.
    let a = gw.state.upstreams.by_name("a").unwrap();
    assert!(gw.state.record_failure(a, None));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // This request takes the probe, waits for a's slot, and its client gives up.
    let impatient = common::client()
        .post(url.clone())
        .timeout(Duration::from_millis(300))
        .json(&common::chat_body("probe"))
        .send()
        .await;
    assert!(impatient.is_err(), "the client gave up");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let breaker = &gw.state.upstreams.get(a).breaker;
    assert!(
        !breaker.is_open(gw.state.now_ms()),
        "the probe was released: a is half-open again"
    );
    assert_eq!(holder.await.unwrap(), 200);
}
