//! Fuzz targets: what an untrusted client or a careless operator can hand the gateway.
//!
//! * [`request`]: a chat request as it arrives: the headers routewise reads (preference
//!   headers, `x-request-id`, `traceparent`, `tracestate`) and the JSON body, through
//!   [`routewise_gateway::request::parse`], the trace context, the upstream body, the
//!   Anthropic translation and the key redactor.
//! * [`config`]: a YAML config file plus `ROUTEWISE_*` overrides, through
//!   [`routewise_gateway::config::parse`].
//!
//! Each target checks invariants, not only the absence of panics: a parsed request
//! forwards a JSON object with the upstream model and without the `routewise` key; an
//! error is a 4xx in OpenAI's shape; ids are well-formed; a config error names the file
//! on every line and never shows the API key; a parsed config keeps its limits in bounds.
//!
//! The targets are driven by libFuzzer through `cargo fuzz` (the `fuzz/` directory,
//! nightly), and replayed then mutated on stable by the `fuzz-smoke` binary (CI).

use std::path::Path;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use routewise_gateway::config;
use routewise_gateway::request;
use routewise_gateway::trace::{parse_traceparent, TraceContext, MAX_REQUEST_ID};
use routewise_gateway::upstream::{anthropic, redact::Redactor};
use routewise_router::Policy;
use serde_json::Value;

/// The key the targets configure; it must never come out.
pub const SECRET: &str = "sk-fuzz-SECRET-0123456789abcdef";

/// A fuzz target: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name (`request`, `config`).
pub const TARGETS: [(&str, Target); 2] = [("request", request), ("config", config)];

/// Splits an input at its first NUL: header lines (`name: value`) before, the body after.
/// Without a NUL the whole input is the body.
fn split_headers(data: &[u8]) -> (HeaderMap, &[u8]) {
    let mut headers = HeaderMap::new();
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        return (headers, data);
    };
    for line in data[..nul].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    (headers, &data[nul + 1..])
}

fn valid_policy(p: &Policy) -> bool {
    match *p {
        Policy::Lambda(l) => l.is_finite() && l >= 0.0,
        Policy::BudgetUsd(b) => b.is_finite() && b >= 0.0,
        // Not expressible in a request (calibrated routers only).
        Policy::Threshold { .. } => false,
    }
}

/// A chat request: headers, then the body (see [`split_headers`]).
pub fn request(data: &[u8]) {
    let (headers, body) = split_headers(data);

    let trace = TraceContext::from_headers(&headers, "decision-id");
    assert!(!trace.request_id.is_empty() && trace.request_id.len() <= MAX_REQUEST_ID);
    assert!(trace.request_id.bytes().all(|b| b.is_ascii_graphic()));
    assert!(trace.trace_id.iter().any(|&b| b != 0));
    let echoed = trace.traceparent(trace.span_id);
    let reparsed = echoed.to_str().ok().and_then(parse_traceparent);
    assert_eq!(reparsed.map(|r| r.0), Some(trace.trace_id));

    let body = bytes::Bytes::copy_from_slice(body);
    for require_model in [true, false] {
        match request::parse(&body, &headers, require_model) {
            Ok(req) => check_request(&req),
            Err(e) => {
                let status = e.status().as_u16();
                assert!(status == 400 || status == 413, "{status}: {e}");
                let b = e.body();
                assert!(b["error"]["message"].is_string(), "{b}");
                assert!(b["error"]["type"].is_string(), "{b}");
            }
        }
    }

    let redactor = Redactor::new(Some(SECRET));
    let text = String::from_utf8_lossy(&body);
    let scrubbed = redactor.message(&text);
    assert!(!scrubbed.contains(SECRET));
}

fn check_request(req: &request::ChatRequest) {
    assert!(!req.model.is_empty());
    assert!(!req.rest().contains_key("routewise") && !req.rest().contains_key("model"));
    if let Some(p) = &req.preference {
        assert!(valid_policy(p), "{p:?}");
    }
    assert!(req.prompt_tokens <= req.prompt.chars().count() as u64 / 4 + 1);
    let Ok(up) = req.upstream_body("up-model") else {
        return;
    };
    let v: Value = match serde_json::from_slice(&up) {
        Ok(v) => v,
        Err(e) => panic!("the upstream body is not JSON: {e}"),
    };
    assert_eq!(v["model"], "up-model");
    assert!(v.get("routewise").is_none());
    if req.forwards_original_bytes() {
        // The client's bytes with the model spliced read as the encoded fields do.
        let mut encoded = req.clone();
        encoded.rest_mut();
        let e = encoded
            .upstream_body("up-model")
            .map(|b| serde_json::from_slice::<Value>(&b));
        assert!(matches!(e, Ok(Ok(ref e)) if *e == v), "{v} vs {e:?}");
    }
    if let Ok(m) = anthropic::to_messages_body(req, "claude", 4096) {
        assert_eq!(m["model"], "claude");
        assert!(m["max_tokens"].as_u64().is_some_and(|t| t > 0), "{m}");
    }
}

/// Input format: YAML text, then optionally a line `%%ENV%%` followed by `KEY=VALUE`
/// lines (environment overrides).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, env) = text.split_once("\n%%ENV%%\n").unwrap_or((text, ""));
    let overrides: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let parsed = config::parse(yaml, "fuzz.yaml", Path::new("/cfg"), overrides, |_| {
        Some(SECRET.to_string())
    });
    match parsed {
        Ok(c) => {
            assert!(!c.models.is_empty());
            let l = &c.limits;
            assert!((1..=64).contains(&l.max_attempts));
            assert!(l.max_body_bytes >= 1 && l.max_body_bytes <= 1 << 30);
            for ms in [
                l.request_timeout_ms,
                l.header_timeout_ms,
                l.body_timeout_ms,
                l.idle_timeout_ms,
                l.connect_timeout_ms,
            ] {
                assert!((1..=86_400_000).contains(&ms), "{ms}");
            }
            assert!(c.cooldown.seconds.is_finite() && c.cooldown.seconds <= 86_400.0);
            assert!(!format!("{c:?}").contains(SECRET));
        }
        Err(e) => {
            assert!(!e.issues.is_empty());
            let shown = e.to_string();
            assert!(!shown.contains(SECRET));
            for line in shown.lines().filter(|l| !l.starts_with(' ')) {
                assert!(line.starts_with("fuzz.yaml"), "{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_corpus_passes_every_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n >= 20, "{}: only {n} inputs", dir.display());
        }
    }

    #[test]
    fn headers_come_before_the_first_nul() {
        let (h, body) = split_headers(b"x-routewise-lambda: 2\nbad header\ntraceparent:x\0{}");
        assert_eq!(h.get("x-routewise-lambda").unwrap(), "2");
        assert_eq!(h.get("traceparent").unwrap(), "x");
        assert_eq!(body, b"{}");
        assert_eq!(split_headers(b"{}").1, b"{}");
    }
}
