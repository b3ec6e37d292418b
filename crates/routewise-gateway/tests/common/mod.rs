//! Shared helpers: a gateway on loopback in front of the testkit mock, with a
//! deterministic router (constant predicted scores: a > b > c in quality, a most expensive;
//! the policy trades them against cost).
#![allow(dead_code)]
#![cfg(test)]

use std::net::SocketAddr;
use std::path::Path;

use routewise_features::Featurizer;
use routewise_features::{AnyFeaturizer, TfidfConfig, TfidfFeaturizer};
use routewise_gateway::{config, AppState};
use routewise_router::{AnyRouter, Catalog, Engine, LinearRouter, ModelInfo};
use tokio::task::JoinHandle;

/// The API key the tests configure; it must never show up in responses or logs.
pub const SECRET: &str = "sk-test-SECRET-do-not-leak-1234";

/// A test engine over `names` with fixed mean scores and prices.
pub fn engine(models: &[(&str, f64, f64)]) -> Engine {
    let featurizer = AnyFeaturizer::Tfidf(TfidfFeaturizer::fit(
        &["hello world", "some text"],
        TfidfConfig::default(),
    ));
    Engine {
        featurizer: featurizer.clone(),
        router: AnyRouter::Linear(LinearRouter::constant(
            featurizer.dim(),
            models.iter().map(|m| m.1).collect(),
        )),
        catalog: Catalog {
            models: models
                .iter()
                .map(|&(name, _, price)| ModelInfo {
                    name: name.to_string(),
                    input_per_mtok: price,
                    output_per_mtok: price,
                    mean_output_tokens: 100.0,
                })
                .collect(),
        },
    }
}

/// Models a (best, $30/Mtok), b ($3), c (cheapest, $0.3).
pub fn abc() -> Engine {
    engine(&[("a", 0.9, 30.0), ("b", 0.8, 3.0), ("c", 0.7, 0.3)])
}

/// Parses YAML config text for tests (`TEST_KEY` holds [`SECRET`]).
pub fn config(yaml: &str) -> routewise_gateway::Config {
    config::parse(yaml, "test.yaml", Path::new("."), std::iter::empty(), |k| {
        (k == "TEST_KEY").then(|| SECRET.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The error text of config `yaml` (named `gw.yaml`, no environment), which must not parse.
pub fn config_error(yaml: &str) -> String {
    config::parse(yaml, "gw.yaml", Path::new("."), std::iter::empty(), |_| {
        None
    })
    .unwrap_err()
    .to_string()
}

/// YAML for models a, b, c on `base_url` (upstream names up-a, up-b, up-c), plus `extra`.
pub fn abc_yaml(base_url: &str, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
router: {{policy: {{lambda: 0}}}}
models:
  - {{name: a, base_url: "{base_url}", upstream_model: up-a, api_key_env: TEST_KEY, context_window: 1000}}
  - {{name: b, base_url: "{base_url}", upstream_model: up-b, api_key_env: TEST_KEY}}
  - {{name: c, base_url: "{base_url}", upstream_model: up-c, price: {{input_per_mtok: 0.3, output_per_mtok: 0.3}}}}
{extra}
"#
    )
}

/// A gateway serving on an ephemeral loopback port.
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: AppState,
    task: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    pub async fn start(state: AppState) -> Gateway {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = state.clone();
        let task = tokio::spawn(async move {
            let _ = routewise_gateway::serve(listener, s, std::future::pending()).await;
        });
        Gateway { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Starts a gateway for `yaml` with the a/b/c engine.
pub async fn start(yaml: &str) -> Gateway {
    let state = AppState::new(config(yaml), abc(), None).unwrap();
    Gateway::start(state).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn chat_body(content: &str) -> serde_json::Value {
    serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": content}]})
}

/// POSTs `body` as JSON; returns the raw response.
pub async fn send_json(url: &str, body: &serde_json::Value) -> reqwest::Response {
    client().post(url).json(body).send().await.unwrap()
}

/// POSTs `body` as JSON; returns the status, the headers and the JSON response.
pub async fn post(
    url: &str,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client().post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, v)
}

/// GETs `url`; returns the status and the body text.
pub async fn get(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// POSTs `body` with `"stream": true` and returns the response unread.
pub async fn post_stream(url: &str, mut body: serde_json::Value) -> reqwest::Response {
    body["stream"] = serde_json::json!(true);
    client().post(url).json(&body).send().await.unwrap()
}

/// Reads a whole event stream (bounded by 10 s).
pub async fn read_sse(resp: reqwest::Response) -> String {
    let fut = async {
        let mut out = String::new();
        let mut s = resp;
        while let Some(chunk) = s.chunk().await.unwrap_or(None) {
            out.push_str(&String::from_utf8_lossy(&chunk));
        }
        out
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), fut)
        .await
        .expect("the stream hung")
}

/// The text of a chat completion stream: its chunks' `delta.content`, concatenated.
pub fn streamed_text(sse: &str) -> String {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// The header's value, or "" when absent or not text.
pub fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Asserts the OpenAI error shape: `error.message`, `error.type`, `error.param` and
/// `error.code` present.
pub fn assert_openai_error(v: &serde_json::Value) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

/// A testkit mock with `faults` set per upstream model, and a gateway for models a, b, c
/// on it (plus `extra` YAML).
pub async fn mock_gateway(
    faults: &[(&str, routewise_testkit::Fault)],
    extra: &str,
) -> (routewise_testkit::MockUpstream, Gateway) {
    let mock = routewise_testkit::MockUpstream::start().await.unwrap();
    for (model, fault) in faults {
        mock.set_model_fault(model, Some(fault.clone()));
    }
    let gw = start(&abc_yaml(&mock.base_url(), extra)).await;
    (mock, gw)
}

/// A writer capturing log output for one test ([`capture_logs`]).
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Captures this thread's log output (plain text, up to `level`) while the guard lives.
///
/// tracing-core caches each callsite's interest globally. While at most one dispatcher
/// is registered it computes that interest from the *registering thread's* default
/// dispatcher: a test running in parallel, without a subscriber, that reaches a callsite
/// first (say `routewise::decision`) would then cache "never" for everybody, and this
/// capture would miss every such line. A second dispatcher kept alive for the whole
/// process makes tracing-core ask every registered dispatcher instead.
pub fn capture_logs(level: tracing::Level) -> (Capture, tracing::subscriber::DefaultGuard) {
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}
