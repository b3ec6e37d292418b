//! The mock itself: answers, faults and bookkeeping, over real HTTP.

#![cfg(test)]

use std::time::Duration;

use routewise_testkit::{Fault, MockUpstream};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello mock"}]})
}

#[test]
fn model_name_directives_parse() {
    assert_eq!(Fault::from_model_name("mock-500"), Some(Fault::Status(500)));
    assert_eq!(Fault::from_model_name("mock-reset"), Some(Fault::Reset));
    assert_eq!(
        Fault::from_model_name("mock-delay-20"),
        Some(Fault::Delay(Duration::from_millis(20)))
    );
    assert_eq!(
        Fault::from_model_name("mock-break-2"),
        Some(Fault::BreakStream(2))
    );
    assert_eq!(
        Fault::from_model_name("mock-stall-0"),
        Some(Fault::StallStream(0))
    );
    assert_eq!(Fault::from_model_name("mock-999"), None);
    assert_eq!(Fault::from_model_name("gpt-4"), None);
}

#[tokio::test]
async fn answers_records_and_injects_faults() {
    let mock = MockUpstream::start().await.unwrap();
    let url = format!("{}/chat/completions", mock.base_url());
    let v: Value = client()
        .post(&url)
        .json(&body("m1", false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mock answer from m1 to: hello mock"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(mock.hits("m1"), 1);
    assert_eq!(
        mock.requests()[0].body["messages"][0]["content"],
        "hello mock"
    );

    mock.push_faults([Fault::Status(429)]);
    let r = client()
        .post(&url)
        .json(&body("m1", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = client()
        .post(&url)
        .json(&body("mock-503", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(client()
        .post(&url)
        .json(&body("mock-reset", false))
        .send()
        .await
        .is_err());

    let text = client()
        .post(&url)
        .json(&body("m2", true))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.starts_with("data: {") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    let broken = client()
        .post(&url)
        .json(&body("mock-break-1", true))
        .send()
        .await
        .unwrap();
    assert!(
        broken.text().await.is_err(),
        "a broken stream is an incomplete body"
    );
    assert_eq!(mock.total_hits(), 6);
    assert!(mock.completed() >= 4);
}
