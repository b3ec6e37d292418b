//! The decision log off the request path: records queued to a writer thread, the top-k
//! trim, sampling, and a full queue that drops and counts instead of blocking.
#![cfg(test)]

mod common;

use std::time::Duration;

/// Serves `n` routed requests through a gateway with `log` settings; answers the decision
/// lines written and the `routewise_decision_log_dropped_total` value.
async fn decision_lines(log: &str, n: usize, concurrent: bool) -> (Vec<String>, u64) {
    decision_lines_with(|y| y, log, n, concurrent).await
}

/// [`decision_lines`] with the config text passed through `edit`.
async fn decision_lines_with(
    edit: impl Fn(String) -> String,
    log: &str,
    n: usize,
    concurrent: bool,
) -> (Vec<String>, u64) {
    let (capture, _guard) = common::capture_logs(tracing::Level::INFO);
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    let gw = common::start(&edit(common::abc_yaml(&mock.base_url(), log))).await;
    let url = gw.url("/v1/chat/completions");
    let send = |i: usize| {
        let url = url.clone();
        async move {
            let r = common::send_json(&url, &common::chat_body(&format!("question {i}"))).await;
            assert_eq!(r.status(), 200);
        }
    };
    if concurrent {
        futures_util::future::join_all((0..n).map(send)).await;
    } else {
        for i in 0..n {
            send(i).await;
        }
    }
    assert!(gw.state.decision_log.flush(Duration::from_secs(5)));
    let metrics = common::get(&gw.url("/metrics")).await.1;
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("routewise_decision_log_dropped_total "))
        .map(|v| v.trim().parse::<u64>().unwrap())
        .expect("the dropped counter is exported");
    let logs = capture.text();
    let lines = logs
        .lines()
        .filter(|l| l.contains("routewise::decision"))
        .map(str::to_string)
        .collect();
    (lines, dropped)
}

fn predictions(line: &str) -> usize {
    line.split("predictions=")
        .nth(1)
        .unwrap()
        .matches("\"model\"")
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn every_decision_is_logged_with_the_top_k_predictions_and_nothing_dropped() {
    let (lines, dropped) = decision_lines("", 20, false).await;
    assert_eq!(lines.len(), 20);
    assert_eq!(dropped, 0);
    // three models configured, top_k 3 by default: all three
    assert!(lines.iter().all(|l| predictions(l) == 3), "{lines:?}");
    assert!(lines[0].contains("attempt_log=a: ok"), "{}", lines[0]);
    assert!(lines[0].contains("end=\"complete\""), "{}", lines[0]);

    let (lines, _) = decision_lines("log: {decisions: {top_k: 1}}", 5, false).await;
    assert_eq!(lines.len(), 5);
    assert!(
        lines
            .iter()
            .all(|l| predictions(l) == 1 && l.contains("predictions=[{\"model\":\"a\"")),
        "{lines:?}"
    );
}

/// The `propensity=` field of a text decision line.
fn propensity(line: &str) -> f64 {
    line.split("propensity=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no propensity in {line}"))
}

#[tokio::test(flavor = "current_thread")]
async fn every_line_carries_the_propensity_of_its_choice() {
    // A deterministic router: 1.
    let (lines, _) = decision_lines("", 5, false).await;
    assert!(lines.iter().all(|l| propensity(l) == 1.0), "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("explored=false")));
    // Exploration at 0.6 over 3 models: 0.6 / 3 for an explored model, 0.4 + 0.2 for the
    // router's choice.
    let explore = |y: String| {
        y.replace(
            "router: {policy: {lambda: 0}}",
            "router: {policy: {lambda: 0}, exploration: {epsilon: 0.6}}",
        )
    };
    let (lines, _) =
        decision_lines_with(explore, "log: {decisions: {prompt: true}}", 60, false).await;
    let explored = lines.iter().filter(|l| l.contains("explored=true")).count();
    assert!((10..=50).contains(&explored), "{explored} of 60");
    for l in &lines {
        let p = propensity(l);
        let want = if l.contains("explored=true") {
            0.2
        } else {
            0.6
        };
        assert!((p - want).abs() < 1e-9, "{l}");
        assert!(l.contains("prompt=\"question "), "{l}");
    }
    // Thompson sampling leaves it to the writer thread's Monte-Carlo estimate.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let thompson = |y: String| {
        y + &format!(
            "bandit: {{algorithm: thompson, alpha: 0.05}}\nstate: {{path: {}}}\n",
            state.display()
        )
    };
    let (lines, _) = decision_lines_with(thompson, "", 10, false).await;
    assert_eq!(lines.len(), 10);
    for l in &lines {
        let p = propensity(l);
        assert!(p > 0.0 && p <= 1.0, "{l}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sampling_keeps_a_share_of_the_decisions() {
    let (lines, dropped) = decision_lines("log: {decisions: {sample: 0}}", 10, false).await;
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(dropped, 0);
    let (lines, _) = decision_lines("log: {decisions: {sample: 0.5}}", 200, true).await;
    assert!((40..=160).contains(&lines.len()), "{} of 200", lines.len());
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts_instead_of_blocking() {
    // A queue of one record: concurrent requests overflow it while the writer gathers its
    // batch. Every decision is either written or counted as dropped.
    let (lines, dropped) = decision_lines("log: {decisions: {queue: 1}}", 64, true).await;
    assert_eq!(lines.len() as u64 + dropped, 64, "{} written", lines.len());
}

#[test]
fn bad_decision_log_settings_are_config_errors() {
    let yaml = common::abc_yaml(
        "http://127.0.0.1:1/v1",
        "log: {decisions: {sample: 2, queue: 0, top: 3}}",
    );
    let err = routewise_gateway::config::parse(
        &yaml,
        "gw.yaml",
        std::path::Path::new("."),
        Vec::new(),
        |_| Some("k".into()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("log.decisions.top"), "{err}");
    assert!(err.contains("log.decisions.sample"), "{err}");
    assert!(err.contains("log.decisions.queue"), "{err}");
}

/// A cascaded decision (issue 13): its verdict and every tier call with the answer read.
#[tokio::test(flavor = "current_thread")]
async fn the_decision_log_lists_every_tier_call_and_the_verdict() {
    let (capture, _guard) = common::capture_logs(tracing::Level::INFO);
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    let yaml = format!(
        "router: {{policy: {{lambda: 0}}, cascade: {{tier: [c, b]}}}}\nmodels:\n  - {{name: a, base_url: \"{u}\", upstream_model: up-a}}\n  - {{name: b, base_url: \"{u}\", upstream_model: up-b}}\n  - {{name: c, base_url: \"{u}\", upstream_model: up-c}}\n",
        u = mock.base_url()
    );
    let gw = common::start(&yaml).await;
    // Posts `body` and returns the decision line of the `n`-th request (0-based).
    let logged = |body: serde_json::Value, n: usize| {
        let (gw, capture) = (&gw, &capture);
        async move {
            let (status, _, _) = common::post(&gw.url("/v1/chat/completions"), &body).await;
            assert_eq!(status, 200);
            assert!(gw.state.decision_log.flush(Duration::from_secs(5)));
            let logs = capture.text();
            logs.lines()
                .filter(|l| l.contains("routewise::decision"))
                .nth(n)
                .unwrap_or_else(|| panic!("no decision line {n} in: {logs}"))
                .to_string()
        }
    };
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("The answer is (C)."));
    let line = logged(common::chat_body("pick"), 0).await;
    assert!(line.contains("cascade=escalated@a ["), "{line}");
    assert!(line.contains("b: \"B\""), "{line}");
    assert!(line.contains("c: \"C\""), "{line}");
    // A free-text answer (`semantic`) is logged cut to its first 60 characters.
    let long =
        "The capital of France is Paris, and it has been since the Middle Ages, more or less.";
    mock.set_model_answer("up-b", Some(long));
    mock.set_model_answer("up-c", Some(long));
    let mut body = common::chat_body("capital?");
    body["routewise"] = serde_json::json!({"cascade": {"extractor": "semantic"}});
    let line = logged(body, 1).await;
    assert!(line.contains("cascade=accepted@"), "{line}");
    let cut: String = long.chars().take(60).collect();
    assert!(line.contains(&format!("{cut:?}...")), "{line}");
    assert!(!line.contains("more or less"), "{line}");
    // A confidence check logs each answer's token confidence (the mock's default logprob,
    // -0.05 a token: exp(-0.05) = 0.951).
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("The answer is (C)."));
    let mut body = common::chat_body("pick");
    body["routewise"] = serde_json::json!({"cascade": {"min_confidence": 0.9}});
    let line = logged(body, 2).await;
    assert!(line.contains("cascade=accepted@"), "{line}");
    assert!(line.contains(" p=0.951 $"), "{line}");
}

/// Stage 2 in the log: the routes that applied and the kinds of personal data found, never
/// the text.
#[tokio::test]
async fn the_decision_log_names_routes_and_pii_kinds_but_not_the_text() {
    let (capture, _guard) = common::capture_logs(tracing::Level::INFO);
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    let routes = "routes:\n  - {name: code, when: {keywords: [python]}, then: {models: [b, c]}}\npii: {action: tag}";
    let gw = common::start(&common::abc_yaml(&mock.base_url(), routes)).await;
    let (status, _, _) = common::post(
        &gw.url("/v1/chat/completions"),
        &common::chat_body("python help, write to bob@corp.example"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(gw
        .state
        .decision_log
        .flush(std::time::Duration::from_secs(5)));
    let logs = capture.text();
    let line = logs
        .lines()
        .find(|l| l.contains("decision_id"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains("route=\"code\"") || line.contains("route=code"),
        "{line}"
    );
    assert!(
        line.contains("pii=\"email\"") || line.contains("pii=email"),
        "{line}"
    );
    assert!(!logs.contains("bob@corp.example"), "{logs}");
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_route_matched_total{route=\"code\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("routewise_pii_detected_total{kind=\"email\",action=\"tag\"} 1"),
        "{metrics}"
    );
}
