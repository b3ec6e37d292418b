//! The gateway's edge under hostile clients and misbehaving upstreams, over real HTTP on
//! loopback (client -> gateway -> testkit mock). One named regression test per defect
//! found by the production probe (issue 11).
#![cfg(test)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    abc_yaml, assert_openai_error, chat_body, client, config, get, header, mock_gateway, post,
    post_stream, read_sse, send_json, SECRET,
};
use routewise_gateway::server::Threads;
use routewise_gateway::AppState;
use routewise_testkit::{Fault, MockUpstream, MOCK_RETRY_AFTER};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or `limit` passes); what was read and when it closed.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The JSON body of a raw HTTP/1.1 response.
fn body_json(raw: &str) -> Value {
    let (_, body) = raw.split_once("\r\n\r\n").unwrap_or(("", ""));
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON body: {raw}"))
}

async fn limits_gateway(limits: &str) -> (MockUpstream, common::Gateway) {
    mock_gateway(&[], &format!("limits: {{{limits}}}")).await
}

#[tokio::test]
async fn regression_a_silent_connection_is_closed_at_the_header_timeout() {
    let (_mock, gw) = limits_gateway("header_timeout_ms: 300").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("a connection that sends nothing must be closed");
    assert!(closed >= Duration::from_millis(250), "{closed:?}");
}

#[tokio::test]
async fn regression_a_slowloris_head_is_cut_at_the_header_timeout() {
    let (_mock, gw) = limits_gateway("header_timeout_ms: 400").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One header byte every 50 ms: the head never completes; the deadline does not move.
    let mut closed_at = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if s.write_all(b"x").await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        let mut b = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
            closed_at = Some(started.elapsed());
            break;
        }
    }
    let closed = closed_at.expect("a dribbled head must be cut");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    // The cut is counted by its reason (the soak test reads this).
    let metrics = get(&gw.url("/metrics")).await.1;
    assert!(
        metrics.contains(r#"routewise_connections_cut_total{reason="header_timeout"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn regression_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let (_mock, gw) = limits_gateway("idle_timeout_ms: 300").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (raw, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let closed = closed.expect("an idle keep-alive connection must be closed");
    assert!(closed >= Duration::from_millis(250), "{closed:?}");
    let metrics = get(&gw.url("/metrics")).await.1;
    assert!(
        metrics.contains(r#"routewise_connections_cut_total{reason="idle_timeout"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn regression_a_body_that_never_arrives_gets_408() {
    let (mock, gw) = limits_gateway("body_timeout_ms: 300").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"",
    )
    .await
    .unwrap();
    let (raw, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(
        closed.is_some(),
        "the connection must be closed after a 408"
    );
    assert_eq!(body_json(&raw)["error"]["code"], "body_timeout");
    assert_eq!(mock.total_hits(), 0);
}

#[tokio::test]
async fn regression_connections_over_the_per_ip_cap_are_closed_at_once() {
    let (_mock, gw) = limits_gateway("max_connections_per_ip: 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        // A request on each proves it is being served.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 512];
        let n = s.read(&mut b).await.unwrap();
        assert!(b[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut over = TcpStream::connect(gw.addr).await.unwrap();
    let (_, closed) = read_to_close(&mut over, Duration::from_secs(2)).await;
    assert!(closed.expect("over the cap: closed at once") < Duration::from_secs(1));
    drop(held);
    // Once they are gone, a new connection is served again.
    let mut ok = false;
    for _ in 0..50 {
        if client()
            .get(gw.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    let metrics = get(&gw.url("/metrics")).await.1;
    assert!(
        metrics.contains(r#"routewise_connections_refused_total{reason="per_ip"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn connections_over_the_total_cap_are_closed_and_health_answers_again_after() {
    let (_mock, gw) = limits_gateway("max_connections: 4, max_connections_per_ip: 0").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = TcpStream::connect(gw.addr).await.unwrap();
    let (_, closed) = read_to_close(&mut over, Duration::from_secs(2)).await;
    assert!(closed.is_some());
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&gw.url("/healthz")).await.0, 200);
}

#[tokio::test]
async fn regression_load_past_max_in_flight_is_shed_with_503_and_retry_after() {
    let (_mock, gw) = mock_gateway(
        &[("up-a", Fault::Delay(Duration::from_millis(600)))],
        "limits: {max_in_flight: 2}",
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let sends = (0..5).map(|i| {
        let url = url.clone();
        async move {
            let r = client()
                .post(&url)
                .json(&chat_body(&format!("q{i}")))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = header(r.headers(), "retry-after").to_string();
            let v: Value = r.json().await.unwrap();
            (status, retry, v)
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!((ok, shed.len()), (2, 3), "{results:?}");
    for (_, retry, v) in shed {
        assert_eq!(retry, "1");
        assert_openai_error(v);
        assert_eq!(v["error"]["code"], "overloaded");
    }
    // Health is never shed.
    assert_eq!(get(&gw.url("/healthz")).await.0, 200);
}

#[tokio::test]
async fn regression_upstream_auth_failures_fall_back_and_cool_the_model_down() {
    for code in [401, 403, 404] {
        let (mock, gw) = mock_gateway(
            &[("up-a", Fault::Status(code))],
            "cooldown: {failures: 2, seconds: 30}",
        )
        .await;
        for i in 0..4 {
            let r = client()
                .post(gw.url("/v1/chat/completions"))
                .json(&chat_body(&format!("hello {i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "HTTP {code}");
            assert_eq!(header(r.headers(), "x-routewise-model"), "b");
            let text = r.text().await.unwrap();
            assert!(!text.contains(SECRET), "the key leaked: {text}");
        }
        // Two failures opened the breaker: a is skipped after that.
        assert_eq!(mock.hits("up-a"), 2, "HTTP {code}");
        let metrics = get(&gw.url("/metrics")).await.1;
        assert!(
            metrics.contains(
                r#"routewise_upstream_attempts_total{model="a",outcome="upstream_auth"} 2"#
            ),
            "{metrics}"
        );
        assert!(metrics.contains(r#"routewise_model_cooldown{model="a"} 1"#));
    }
}

#[tokio::test]
async fn regression_an_upstream_error_body_is_rebuilt_without_the_key() {
    // A direct request to a model whose upstream refuses it with a 400 quoting the key.
    let (_mock, gw) = mock_gateway(&[("up-a", Fault::Status(400))], "").await;
    let mut body = chat_body("hello");
    body["model"] = json!("a");
    let r = send_json(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(!text.contains(SECRET), "the key leaked: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_openai_error(&v);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("model `a` answered HTTP 400: "), "{msg}");
    assert!(msg.contains("[REDACTED]"), "{msg}");

    // Every attempt refused with 401 (a direct request): the client gets a 502 naming
    // the outcome, never the upstream body.
    let (_mock, gw) = mock_gateway(&[("up-a", Fault::Status(401))], "").await;
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 502, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("a: upstream_auth (HTTP 401)"), "{msg}");
    assert!(!v.to_string().contains(SECRET));
}

#[tokio::test]
async fn regression_a_key_echoed_in_a_successful_answer_is_scrubbed() {
    let (_mock, gw) = mock_gateway(&[], "").await;
    let mut body = chat_body("tell me your key");
    body["model"] = json!("a");
    body["mock_leak_key"] = json!(true);
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, "the key I was called with is [REDACTED]");
    let sse = read_sse(post_stream(&gw.url("/v1/chat/completions"), body).await).await;
    assert!(!sse.contains(SECRET), "{sse}");
    assert!(sse.contains("[REDACTED]"), "{sse}");
}

#[tokio::test]
async fn regression_a_direct_429_reaches_the_client_with_retry_after() {
    let (_mock, gw) = mock_gateway(&[("up-a", Fault::Status(429))], "").await;
    let mut body = chat_body("hello");
    body["model"] = json!("a");
    let r = send_json(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(r.headers(), "retry-after"), MOCK_RETRY_AFTER);
    assert_eq!(header(r.headers(), "x-ratelimit-remaining-requests"), "0");
    let v: Value = r.json().await.unwrap();
    assert_openai_error(&v);
    assert_eq!(v["error"]["code"], "rate_limited");
    // Routed requests still fall back.
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("hi")).await;
    assert_eq!((status, header(&h, "x-routewise-model")), (200, "b"));
    assert_eq!(header(&h, "retry-after"), "");
}

#[tokio::test]
async fn rate_limit_headers_of_a_direct_answer_are_passed_on() {
    // The mock sends x-ratelimit-* only with its 429; a 200 has none to pass on, and a
    // routed 200 never carries another model's.
    let (_mock, gw) = mock_gateway(&[], "").await;
    let mut body = chat_body("hello");
    body["model"] = json!("b");
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    assert!(h.keys().all(|k| !k.as_str().starts_with("x-ratelimit-")));
}

#[tokio::test]
async fn regression_a_client_that_goes_away_is_logged_and_counted() {
    let (mock, gw) = mock_gateway(&[("up-a", Fault::Delay(Duration::from_millis(1500)))], "").await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .timeout(Duration::from_millis(200))
        .json(&chat_body("hello"))
        .send()
        .await;
    assert!(r.is_err(), "the client gives up first");
    let mut counted = false;
    for _ in 0..50 {
        let metrics = get(&gw.url("/metrics")).await.1;
        if metrics.contains(r#"routewise_requests_total{endpoint="chat",model="-",status="499"} 1"#)
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted, "a cancelled request must be counted as 499");
    assert_eq!(mock.hits("up-a"), 1);
}

#[tokio::test]
async fn regression_protocol_errors_get_an_openai_shaped_body() {
    let (_mock, gw) = limits_gateway("").await;
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: abc\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let (resp, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert!(closed.is_some());
        let v = body_json(&resp);
        assert_openai_error(&v);
        assert_eq!(v["error"]["code"], "invalid_http");
    }
    // Requests on a healthy keep-alive connection are untouched by the rewrite.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = vec![0u8; 4096];
    let n = s.read(&mut b).await.unwrap();
    let resp = String::from_utf8_lossy(&b[..n]);
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("unknown_url"), "{resp}");
    let metrics = get(&gw.url("/metrics")).await.1;
    assert!(
        metrics.contains(r#"routewise_protocol_errors_total{status="400"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_ids_and_trace_context_reach_the_upstream_and_come_back() {
    let (mock, gw) = mock_gateway(&[], "").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "client-req-42")
        .header("traceparent", parent)
        .json(&chat_body("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "x-request-id"), "client-req-42");
    let echoed = header(r.headers(), "traceparent").to_string();
    assert!(
        echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{echoed}"
    );
    assert_ne!(echoed, parent);
    let got = &mock.requests()[0];
    assert_eq!(got.request_id.as_deref(), Some("client-req-42"));
    let up = got.traceparent.clone().unwrap();
    assert!(
        up.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{up}"
    );
    assert_ne!(up, parent, "each attempt is its own span");

    // Without ids: the decision id is the request id, and a new trace starts.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("hello"))
        .send()
        .await
        .unwrap();
    let decision = header(r.headers(), "x-routewise-decision-id").to_string();
    assert_eq!(header(r.headers(), "x-request-id"), decision);
    let tp = header(r.headers(), "traceparent").to_string();
    assert_eq!(tp.len(), 55, "{tp}");
    let got = &mock.requests()[1];
    assert_eq!(got.request_id.as_deref(), Some(decision.as_str()));
    assert_eq!(
        got.traceparent.as_deref().map(|t| &t[..35]),
        Some(&tp[..35])
    );
}

/// A gateway whose shutdown the test triggers; resolves to how long serving took to end.
async fn stoppable(
    yaml: &str,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Instant>,
) {
    stoppable_on(yaml, Threads::Caller).await
}

/// [`stoppable`], serving its connections where `threads` says.
async fn stoppable_on(
    yaml: &str,
    threads: Threads,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Instant>,
) {
    let state = AppState::new(config(yaml), common::abc(), None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = routewise_gateway::server::serve_on(
            listener,
            state,
            async {
                let _ = rx.await;
            },
            threads,
        )
        .await;
        assert!(served.is_ok(), "{served:?}");
        Instant::now()
    });
    (addr, tx, task)
}

#[tokio::test]
async fn thread_per_core_answers_every_connection_and_drains_the_one_in_flight() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_fault("up-b", Some(Fault::Delay(Duration::from_millis(300))));
    let yaml = abc_yaml(&mock.base_url(), "limits: {shutdown_grace_ms: 5000}");
    let (addr, stop, done) = stoppable_on(&yaml, Threads::Shards(3)).await;
    let url = format!("http://{addr}/v1/chat/completions");
    // One client per connection: the connections go round-robin over the three threads,
    // and each thread opens its own upstream connections.
    for round in 0..2 {
        for i in 0..6 {
            let c = client();
            let resp = c
                .post(&url)
                .json(&chat_body(&format!("round {round} connection {i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["object"], "chat.completion", "{v}");
        }
    }
    let mut slow = chat_body("finish me");
    slow["model"] = "b".into();
    let pending = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &slow).await.0 }
    });
    stop_while_in_flight(pending, stop, done).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener must be closed after the drain"
    );
}

#[tokio::test]
async fn thread_per_core_ends_a_long_stream_at_the_grace_deadline() {
    long_stream_ends_at_the_grace_deadline(Threads::Shards(2)).await;
}

#[tokio::test]
async fn regression_shutdown_ends_within_the_grace_despite_a_half_open_request() {
    let mock = MockUpstream::start().await.unwrap();
    // A long grace: the half-open request must not hold the drain for it (nor for the
    // header timeout): a head part-way in gets a second once the drain starts.
    let yaml = abc_yaml(&mock.base_url(), "limits: {shutdown_grace_ms: 30000}");
    let (addr, stop, done) = stoppable(&yaml).await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("shutdown must end")
        .unwrap();
    assert!(
        ended - asked < Duration::from_millis(1500),
        "{:?}",
        ended - asked
    );
}

#[tokio::test]
async fn regression_a_long_stream_ends_with_an_error_event_at_the_grace_deadline() {
    long_stream_ends_at_the_grace_deadline(Threads::Caller).await;
}

/// A stream still running at shutdown ends with an error event once `shutdown_grace_ms`
/// (400 ms) is over, and serving ends soon after, with connections served per `threads`.
async fn long_stream_ends_at_the_grace_deadline(threads: Threads) {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_fault("up-a", Some(Fault::SlowStream(Duration::from_millis(100))));
    let yaml = abc_yaml(&mock.base_url(), "limits: {shutdown_grace_ms: 400}");
    let (addr, stop, done) = stoppable_on(&yaml, threads).await;
    let resp = post_stream(
        &format!("http://{addr}/v1/chat/completions"),
        chat_body("a long story"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let asked = Instant::now();
    stop.send(()).unwrap();
    let sse = read_sse(resp).await;
    assert!(sse.contains("the gateway is shutting down"), "{sse}");
    let ended = tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("shutdown must end")
        .unwrap();
    let took = ended - asked;
    assert!(took >= Duration::from_millis(350), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn a_request_in_flight_finishes_during_the_drain() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_fault("up-a", Some(Fault::Delay(Duration::from_millis(300))));
    let yaml = abc_yaml(&mock.base_url(), "limits: {shutdown_grace_ms: 5000}");
    let (addr, stop, done) = stoppable(&yaml).await;
    let url = format!("http://{addr}/v1/chat/completions");
    let pending = tokio::spawn(async move { post(&url, &chat_body("finish me")).await.0 });
    stop_while_in_flight(pending, stop, done).await;
}

/// Stops the gateway 100 ms into the `pending` request: it must still answer 200, and
/// serving must end within 3 s.
async fn stop_while_in_flight(
    pending: tokio::task::JoinHandle<u16>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Instant>,
) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    assert_eq!(pending.await.unwrap(), 200);
    tokio::time::timeout(Duration::from_secs(3), done)
        .await
        .expect("drained")
        .unwrap();
}

#[tokio::test]
async fn trusted_proxies_cap_the_client_behind_them_not_the_proxy() {
    let (_mock, gw) = mock_gateway(
        &[("up-a", Fault::Delay(Duration::from_millis(500)))],
        "limits: {max_connections_per_ip: 1, trusted_proxies: [127.0.0.1/32]}",
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let send = |client_ip: &'static str| {
        let url = url.clone();
        async move {
            client()
                .post(&url)
                .header("x-forwarded-for", client_ip)
                .json(&chat_body("hi"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Two clients behind the same proxy address: one request each is fine; a second
    // concurrent one from the same client is refused.
    let (a, b, a2) = tokio::join!(send("10.0.0.1"), send("10.0.0.2"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send("10.0.0.1").await
    });
    assert_eq!((a, b, a2), (200, 200, 429));
}

#[tokio::test]
async fn regression_debug_output_of_the_state_never_shows_a_key() {
    // Review finding: the redactor's search needle printed the key in `{:?}`.
    let (_mock, gw) = mock_gateway(&[], "").await;
    let shown = format!("{:?}", gw.state);
    assert!(!shown.contains(SECRET), "the key shows in Debug output");
    assert!(!shown.contains(&format!("{:?}", SECRET.as_bytes())[1..20]));
}
