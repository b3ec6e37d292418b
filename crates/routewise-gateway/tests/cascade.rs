//! The cascade stage over real HTTP (client -> gateway -> testkit mock): the tier (c, b)
//! asked first, its agreed answer accepted, disagreement, failures and unreadable answers
//! escalated to the router's choice (a), streams replayed, per-request switches and the
//! `/metrics` counter (the decision log's cascade field: `tests/decision_log.rs`).
#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use common::{chat_body, header, post, post_stream, read_sse};
use routewise_testkit::{Fault, MockUpstream};
use serde_json::{json, Value};

/// Models a (the router's choice at lambda 0), b, c, with `cascade` under `router`.
fn yaml(base_url: &str, cascade: &str) -> String {
    yaml_with(base_url, cascade, "", "")
}

/// [`yaml`] with `c_extra` in model c's entry and `extra` top-level YAML.
fn yaml_with(base_url: &str, cascade: &str, c_extra: &str, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
router: {{policy: {{lambda: 0}}, cascade: {cascade}}}
models:
  - {{name: a, base_url: "{base_url}", upstream_model: up-a}}
  - {{name: b, base_url: "{base_url}", upstream_model: up-b}}
  - {{name: c, base_url: "{base_url}", upstream_model: up-c{c_extra}}}
{extra}
"#
    )
}

async fn setup(cascade: &str) -> (MockUpstream, common::Gateway) {
    setup_with(cascade, "", "").await
}

async fn setup_with(cascade: &str, c_extra: &str, extra: &str) -> (MockUpstream, common::Gateway) {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&yaml_with(&mock.base_url(), cascade, c_extra, extra)).await;
    (mock, gw)
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

#[tokio::test]
async fn an_agreed_tier_answer_is_accepted_without_calling_the_router_choice() {
    let (mock, gw) = setup("{tier: [c, b], min_agree: 2, extractor: choice}").await;
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("B) because of the second law"));
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("pick one")).await;
    assert_eq!(status, 200, "{v}");
    let verdict = header(&h, "x-routewise-cascade");
    assert!(
        verdict == "accepted@b" || verdict == "accepted@c",
        "{verdict}"
    );
    assert_eq!(
        header(&h, "x-routewise-model"),
        &verdict["accepted@".len()..]
    );
    assert_eq!(header(&h, "x-routewise-cascade-calls"), "2");
    assert!(
        content(&v) == "The answer is (B)." || content(&v).starts_with("B)"),
        "{v}"
    );
    assert_eq!(mock.hits("up-a"), 0, "the strong model must not be asked");
    assert_eq!((mock.hits("up-b"), mock.hits("up-c")), (1, 1));
    let metrics = common::get(&gw.url("/metrics")).await.1;
    assert!(
        metrics.contains("routewise_cascades_total{verdict=\"accepted\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn disagreement_escalates_to_the_router_choice() {
    let (mock, gw) = setup("{tier: [c, b]}").await;
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("The answer is (C)."));
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("pick one")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    assert_eq!(header(&h, "x-routewise-model"), "a");
    assert_eq!(header(&h, "x-routewise-cascade-calls"), "3");
    assert_eq!(mock.hits("up-a"), 1);
}

#[tokio::test]
async fn unreadable_answers_escalate() {
    let (mock, gw) = setup("{tier: [c, b], extractor: number}").await;
    mock.set_model_answer("up-b", Some("It depends."));
    mock.set_model_answer("up-c", Some("It depends."));
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("how many?")).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    // The same text read as exact text agrees.
    let mut body = chat_body("how many?");
    body["routewise"] = json!({"cascade": {"extractor": "exact"}});
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert!(header(&h, "x-routewise-cascade").starts_with("accepted@"));
}

#[tokio::test]
async fn semantic_agreement_accepts_paraphrased_free_text_and_escalates_other_answers() {
    let (mock, gw) = setup("{tier: [c, b], min_agree: 2, extractor: semantic}").await;
    mock.set_model_answer("up-b", Some("The capital of France is Paris."));
    mock.set_model_answer("up-c", Some("Paris is the capital of  France."));
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("capital?")).await;
    assert_eq!(status, 200, "{v}");
    assert!(header(&h, "x-routewise-cascade").starts_with("accepted@"));
    assert_eq!(mock.hits("up-a"), 0, "the strong model must not be asked");
    // Exact text does not agree where meaning does.
    let mut body = chat_body("capital?");
    body["routewise"] = json!({"cascade": {"extractor": "exact"}});
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    // Another name: 0.94 in the embedding, above the threshold, vetoed by the guards.
    mock.set_model_answer("up-b", Some("Canberra is the capital of Australia."));
    mock.set_model_answer("up-c", Some("Sydney is the capital of Australia."));
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("capital?")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    // A near paraphrase agrees at the default threshold, not at a stricter one per request.
    mock.set_model_answer("up-b", Some("The capital of Australia is Canberra."));
    mock.set_model_answer(
        "up-c",
        Some("The capital of Australia is Canberra, of course."),
    );
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("capital?")).await;
    assert!(header(&h, "x-routewise-cascade").starts_with("accepted@"));
    let mut body = chat_body("capital?");
    body["routewise"] = json!({"cascade": {"extractor": "semantic:0.999"}});
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    assert_eq!(mock.hits("up-a"), 3);
}

#[tokio::test]
async fn a_failing_tier_model_gives_no_vote_and_loses_no_request() {
    let (mock, gw) = setup("{tier: [c, b], min_agree: 2}").await;
    mock.set_model_fault("up-c", Some(Fault::Status(500)));
    mock.set_model_answer("up-b", Some("B"));
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("pick")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    // With one vote enough, b's answer is accepted despite c failing.
    let mut body = chat_body("pick");
    body["routewise"] = json!({"cascade": {"min_agree": 1}});
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
}

/// Review finding: a tier model's 4xx answer on its half-open probe left the probe taken,
/// so the model was skipped (by the cascade and by fallback) until restart.
#[tokio::test]
async fn regression_a_4xx_tier_answer_releases_the_half_open_probe() {
    let (mock, gw) = setup_with(
        "{tier: [c, b], min_agree: 1}",
        "",
        "cooldown: {failures: 1, seconds: 1}",
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    mock.set_model_fault("up-c", Some(Fault::Status(500)));
    mock.set_model_fault("up-b", Some(Fault::Status(500)));
    let (status, _, _) = post(&url, &chat_body("pick")).await;
    assert_eq!(status, 200, "escalated to a");
    // c is cooled down; after the cooldown its next call is the half-open probe, and
    // it answers 400.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mock.set_model_fault("up-c", Some(Fault::Status(400)));
    let _ = post(&url, &chat_body("pick")).await;
    let asked = mock.hits("up-c");
    mock.set_model_fault("up-c", None);
    mock.set_model_fault("up-b", None);
    mock.set_model_answer("up-c", Some("B"));
    let (status, h, _) = post(&url, &chat_body("pick")).await;
    assert_eq!(status, 200);
    assert_eq!(mock.hits("up-c"), asked + 1, "c must be asked again");
    assert!(header(&h, "x-routewise-cascade").starts_with("accepted@"));
}

/// Review finding: tier models were called for prompts over their context window.
#[tokio::test]
async fn regression_a_tier_model_the_prompt_does_not_fit_is_not_called() {
    let (mock, gw) = setup_with("{tier: [c, b], min_agree: 1}", ", context_window: 50", "").await;
    mock.set_model_answer("up-b", Some("B"));
    let long = "word ".repeat(200);
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body(&long)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    assert_eq!(mock.hits("up-c"), 0);
}

/// Review finding: with fewer askable tier models than `min_agree`, the cascade still
/// called (and paid for) the others before escalating.
#[tokio::test]
async fn regression_a_tier_that_cannot_agree_is_not_called() {
    let (mock, gw) = setup_with("{tier: [c, b], min_agree: 2}", ", context_window: 50", "").await;
    let long = "word ".repeat(200);
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body(&long)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    assert_eq!(header(&h, "x-routewise-cascade-calls"), "1");
    assert_eq!((mock.hits("up-b"), mock.hits("up-c")), (0, 0));
}

#[tokio::test]
async fn once_the_verdict_is_in_the_slow_tier_calls_are_cancelled() {
    let (mock, gw) = setup("{tier: [c, b], min_agree: 1}").await;
    mock.set_model_fault("up-c", Some(Fault::Delay(Duration::from_secs(5))));
    mock.set_model_answer("up-b", Some("B"));
    let t = Instant::now();
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body("pick")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        mock.wait_cancelled(1, Duration::from_secs(3)).await,
        "the slow call must be dropped"
    );
}

#[tokio::test]
async fn a_stream_is_answered_from_the_accepted_buffer() {
    let (mock, gw) = setup("{tier: [c, b]}").await;
    mock.set_model_answer("up-b", Some("Answer: D"));
    mock.set_model_answer("up-c", Some("Answer: D"));
    let mut body = chat_body("pick");
    body["stream_options"] = json!({"include_usage": true});
    let resp = post_stream(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(resp.status(), 200);
    let verdict = resp
        .headers()
        .get("x-routewise-cascade")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(verdict.starts_with("accepted@"), "{verdict}");
    let sse = read_sse(resp).await;
    assert!(sse.contains("\"content\":\"Answer: D\""), "{sse}");
    assert!(sse.contains("\"usage\""), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    // The tier was asked without streaming.
    assert_eq!(mock.hits("up-a"), 0);
}

#[tokio::test]
async fn the_cascade_is_skipped_when_turned_off_or_for_a_named_model() {
    let (mock, gw) = setup("{tier: [c, b]}").await;
    let mut off = chat_body("pick");
    off["routewise"] = json!({"cascade": false});
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &off).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "");
    assert_eq!(header(&h, "x-routewise-model"), "a");
    let mut named = chat_body("pick");
    named["model"] = json!("a");
    let (_, h, _) = post(&gw.url("/v1/chat/completions"), &named).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "");
    assert_eq!((mock.hits("up-b"), mock.hits("up-c")), (0, 0));
}

/// The README's setup: free-form traffic (no option letters) matched by a route that turns
/// the cascade off and sets its own policy; multiple-choice prompts keep the cascade.
#[tokio::test]
async fn a_route_serves_free_form_traffic_without_the_cascade() {
    let routes = r#"routes:
  - name: free-form
    when: {not: {regex: '(?m)^\(?[A-J][.)] '}}
    then: {cascade: false, policy: {lambda: 200}}"#;
    let (mock, gw) = setup_with(
        "{tier: [c, b], min_agree: 2, extractor: choice}",
        "",
        routes,
    )
    .await;
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("B) because"));
    let (status, h, v) = post(
        &gw.url("/v1/chat/completions"),
        &chat_body("Which is prime?\nA. 4\nB. 7\nC. 9"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        header(&h, "x-routewise-cascade").starts_with("accepted@"),
        "{h:?}"
    );
    assert_eq!(header(&h, "x-routewise-route"), "");
    assert_eq!((mock.hits("up-b"), mock.hits("up-c")), (1, 1));
    let (status, h, v) = post(&gw.url("/v1/chat/completions"), &chat_body("write a haiku")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-routewise-cascade"), "");
    assert_eq!(header(&h, "x-routewise-route"), "free-form");
    // The tier was not asked again; exactly one upstream call answered the request.
    let hits = mock.hits("up-a") + mock.hits("up-b") + mock.hits("up-c");
    assert_eq!(hits, 3, "two tier calls, then one plain call");
}

#[tokio::test]
async fn asking_for_a_cascade_that_is_not_there_is_a_400() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = common::start(&common::abc_yaml(&mock.base_url(), "")).await;
    let mut body = chat_body("pick");
    body["routewise"] = json!({"cascade": true});
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "routewise.cascade");
    let (_, gw) = setup("{tier: [c, b]}").await;
    body["routewise"] = json!({"cascade": {"min_agree": 3}});
    let (status, _, v) = post(&gw.url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "routewise.cascade.min_agree");
}

/// Token logprobs as a check: a tier answer confident enough is accepted alone, whatever
/// the other tier model says; an unsure tier escalates. The tier is asked for logprobs,
/// and the client gets them only when it asked.
#[tokio::test]
async fn a_confident_tier_answer_is_accepted_alone_and_an_unsure_tier_escalates() {
    let (mock, gw) = setup("{tier: [c, b], min_agree: 2, min_confidence: 0.9}").await;
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("The answer is (C)."));
    mock.set_model_logprob("up-b", Some(-0.01)); // confidence 0.990
    mock.set_model_logprob("up-c", Some(-1.0)); // 0.368
    let url = gw.url("/v1/chat/completions");
    let (status, h, v) = post(&url, &chat_body("pick one")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    assert_eq!(content(&v), "The answer is (B).");
    assert_eq!(mock.hits("up-a"), 0, "the strong model must not be asked");
    assert!(v["choices"][0]["logprobs"].is_null(), "not asked for: {v}");
    let tier_asked: Vec<Value> = mock
        .requests()
        .iter()
        .filter(|r| r.body["model"] != "up-a")
        .map(|r| r.body["logprobs"].clone())
        .collect();
    assert!(
        !tier_asked.is_empty() && tier_asked.iter().all(|l| l == &json!(true)),
        "{tier_asked:?}"
    );
    // The client asked for logprobs: the accepted answer keeps them.
    let mut body = chat_body("pick one");
    body["logprobs"] = json!(true);
    let (_, h, v) = post(&url, &body).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    let tokens = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(tokens.len(), 4, "{v}");
    // A per-request bar above b's confidence: nobody is sure and they disagree.
    let mut body = chat_body("pick one");
    body["routewise"] = json!({"cascade": {"min_confidence": 0.995}});
    let (_, h, _) = post(&url, &body).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    // Both unsure: escalated; both unsure but agreeing: accepted by agreement.
    mock.set_model_logprob("up-b", Some(-1.0));
    let (_, h, _) = post(&url, &chat_body("pick one")).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    mock.set_model_answer("up-c", Some("B) because of the second law"));
    let (_, h, _) = post(&url, &chat_body("pick one")).await;
    assert!(header(&h, "x-routewise-cascade").starts_with("accepted@"));
    assert_eq!(mock.hits("up-a"), 2);
}

/// An upstream that refuses the `logprobs` parameter (a 400) is asked once more without it
/// and takes part by agreement; a client that asked for logprobs itself gets no retry.
#[tokio::test]
async fn a_tier_model_that_refuses_logprobs_is_asked_again_without_them() {
    let (mock, gw) = setup("{tier: [c, b], min_agree: 2, min_confidence: 0.9}").await;
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("B) because of the second law"));
    mock.set_model_logprob("up-c", Some(-1.0)); // unsure: agreement must decide
    mock.set_model_refuses_logprobs("up-b", true);
    let url = gw.url("/v1/chat/completions");
    let (status, h, v) = post(&url, &chat_body("pick one")).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        header(&h, "x-routewise-cascade").starts_with("accepted@"),
        "{h:?}"
    );
    assert_eq!(mock.hits("up-a"), 0);
    assert_eq!(mock.hits("up-b"), 2, "refused, then asked without logprobs");
    let b_asked: Vec<Value> = mock
        .requests()
        .iter()
        .filter(|r| r.body["model"] == "up-b")
        .map(|r| r.body.get("logprobs").cloned().unwrap_or(Value::Null))
        .collect();
    assert_eq!(b_asked, [json!(true), Value::Null]);
    // The client asked for logprobs: b's refusal stands, no vote, escalated.
    let mut body = chat_body("pick one");
    body["logprobs"] = json!(true);
    let (_, h, _) = post(&url, &body).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    assert_eq!(mock.hits("up-b"), 3);
}

/// With a confidence check, one askable tier model is enough: its answer may be confident.
#[tokio::test]
async fn a_confidence_check_asks_a_tier_too_small_to_agree() {
    let (mock, gw) = setup_with(
        "{tier: [c, b], min_agree: 2, min_confidence: 0.9}",
        ", context_window: 50",
        "",
    )
    .await;
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    let prompt = "word ".repeat(200); // over c's context window: only b can be asked
    let (status, h, _) = post(&gw.url("/v1/chat/completions"), &chat_body(&prompt)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    assert_eq!((mock.hits("up-a"), mock.hits("up-c")), (0, 0));
}

#[test]
fn cascade_config_errors_name_their_fields() {
    let errors = |cascade: &str| {
        routewise_gateway::config::parse(
            &yaml("http://127.0.0.1:1/v1", cascade),
            "gw.yaml",
            std::path::Path::new("."),
            std::iter::empty(),
            |_| None,
        )
        .unwrap_err()
        .to_string()
    };
    let e = errors("{tier: [c, zz, c], min_agree: 5, extractor: regex}");
    for want in [
        "router.cascade.tier[1]: `zz` is not a configured model",
        "router.cascade.tier[2]: `c` is listed twice",
        "router.cascade.min_agree",
        "router.cascade.extractor: unknown answer extractor `regex`",
    ] {
        assert!(e.contains(want), "{want} not in {e}");
    }
    let e = errors("{tier: [c, b], min_confidence: 1.5}");
    assert!(
        e.contains("router.cascade.min_confidence: must lie in (0, 1]"),
        "{e}"
    );
    let e = errors("{tier: [c, b], extractor: \"semantic:1.2\"}");
    let want = "router.cascade.extractor: `semantic:1.2`: the semantic threshold must be a cosine";
    assert!(e.contains(want), "{want} not in {e}");
}

/// An artifact for models a, b, c (predicted 0.9, 0.8, 0.7) carrying a calibrated chain
/// c -> b whose acceptor weighs the predicted score of the answer's model and agreement:
/// after c alone `sigmoid(-8 + 10 * 0.7) = 0.27`, after b alone 0.5, after c and b
/// agreeing 0.98.
fn chain_artifact(dir: &std::path::Path, threshold: f64) -> std::path::PathBuf {
    use routewise_router::artifact::CalibratedCascade;
    use routewise_router::cascade::{Acceptor, Cascade, CascadeRule};
    let e = common::abc();
    let mut a = routewise_router::Artifact::new("test", e.featurizer, e.router, e.catalog, 3);
    a.meta.cascade = Some(CalibratedCascade {
        cascade: Cascade {
            tier: vec![2, 1],
            rule: CascadeRule::Chain {
                threshold,
                step_discount: 0.0,
            },
            acceptor: Some(Acceptor {
                weights: vec![[-8.0, 10.0, 4.0, 0.0, -10.0, 0.0]],
                escalate: vec![],
            }),
        },
        alpha: 0.02,
        delta: 0.1,
        lambda: 0.0,
        n_calibration: 100,
    });
    let path = dir.join(format!("chain-{threshold}.rw"));
    a.save(&path).unwrap();
    path
}

async fn serve_learned(mock: &MockUpstream, artifact: &std::path::Path) -> common::Gateway {
    let dir = artifact.parent().unwrap();
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
router: {{artifact: {}, policy: {{lambda: 0}}, cascade: {{learned: true}}}}
models:
  - {{name: a, base_url: "{u}", upstream_model: up-a}}
  - {{name: b, base_url: "{u}", upstream_model: up-b}}
  - {{name: c, base_url: "{u}", upstream_model: up-c}}
"#,
        artifact.file_name().unwrap().to_str().unwrap(),
        u = mock.base_url()
    );
    let path = dir.join("gw.yaml");
    std::fs::write(&path, yaml).unwrap();
    common::Gateway::start(routewise_gateway::load::from_file(&path).unwrap()).await
}

/// The learned confidence chain (`learned: true`) served: the artifact's tier is asked one
/// model at a time, in its order, and its acceptor decides after each answer.
#[tokio::test]
async fn the_learned_chain_asks_one_model_at_a_time_and_its_acceptor_decides() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let gw = serve_learned(&mock, &chain_artifact(dir.path(), 0.9)).await;
    let url = gw.url("/v1/chat/completions");
    // c alone is not enough (0.27); c and b agreeing are (0.98): b's answer is returned.
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    mock.set_model_answer("up-c", Some("B) because of the second law"));
    let (status, h, v) = post(&url, &chat_body("pick one")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    assert_eq!(header(&h, "x-routewise-cascade-calls"), "2");
    let order: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["up-c", "up-b"], "the chain's order, one at a time");
    // Disagreement after the whole tier (0.5): escalated to the router's choice.
    mock.set_model_answer("up-b", Some("The answer is (C)."));
    let (_, h, _) = post(&url, &chat_body("pick one")).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "escalated@a");
    assert_eq!(mock.hits("up-a"), 1);
    // The learned chain takes no agreement or confidence settings per request.
    for cascade in [json!({"min_agree": 1}), json!({"min_confidence": 0.5})] {
        let mut body = chat_body("pick one");
        body["routewise"] = json!({ "cascade": cascade });
        let (status, _, v) = post(&url, &body).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["param"], "routewise.cascade");
    }
}

/// A lower threshold accepts c's answer alone; a failing tier model is passed over.
#[tokio::test]
async fn the_learned_chain_stops_at_the_first_accepted_answer_and_passes_over_failures() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await.unwrap();
    let gw = serve_learned(&mock, &chain_artifact(dir.path(), 0.2)).await;
    let url = gw.url("/v1/chat/completions");
    mock.set_model_answer("up-c", Some("The answer is (C)."));
    let (_, h, v) = post(&url, &chat_body("pick one")).await;
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@c");
    assert_eq!(content(&v), "The answer is (C).");
    assert_eq!((mock.hits("up-a"), mock.hits("up-b")), (0, 0));
    // c fails: b is asked, and its answer alone (0.5) passes 0.2.
    mock.set_model_fault("up-c", Some(Fault::Status(500)));
    mock.set_model_answer("up-b", Some("The answer is (B)."));
    let (status, h, _) = post(&url, &chat_body("pick one")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "x-routewise-cascade"), "accepted@b");
    assert_eq!(mock.hits("up-a"), 0);
}

#[test]
fn a_learned_chain_needs_an_artifact_that_carries_one() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::abc();
    routewise_router::Artifact::new("test", e.featurizer, e.router, e.catalog, 3)
        .save(&dir.path().join("plain.rw"))
        .unwrap();
    let models = "models:\n  - {name: a, base_url: 'http://127.0.0.1:9/v1'}\n  - {name: b, base_url: 'http://127.0.0.1:9/v1'}\n  - {name: c, base_url: 'http://127.0.0.1:9/v1'}\n";
    let load = |router: &str| {
        let path = dir.path().join("gw.yaml");
        std::fs::write(&path, format!("router: {router}\n{models}")).unwrap();
        match routewise_gateway::load::from_file(&path) {
            Ok(_) => panic!("{router} loaded"),
            Err(e) => e.to_string(),
        }
    };
    let e = load("{artifact: plain.rw, cascade: {learned: true}}");
    assert!(
        e.contains("router.cascade.learned: the router artifact carries no calibrated cascade"),
        "{e}"
    );
    let e = load("{cascade: {learned: true, tier: [c], min_agree: 1}}");
    for want in [
        "router.cascade.learned: needs `router.artifact`",
        "router.cascade.tier: does not apply with `learned: true`",
        "router.cascade.min_agree: does not apply",
    ] {
        assert!(e.contains(want), "{want} not in {e}");
    }
}
