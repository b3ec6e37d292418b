//! The request body's path through the gateway, without I/O: parse and check the client's
//! chat body, then build the body sent upstream with the routed model in it.
//!
//! `cargo bench -p routewise-gateway --bench body`
//!
//! Two bodies: the one-message request of `bench/gateway.sh` (~120 bytes) and a
//! 20-turn conversation with a tool definition (~17 KB).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::HeaderMap;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use routewise_gateway::request;
use serde_json::json;

fn small() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "auto",
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        "max_tokens": 16
    }))
    .unwrap()
}

fn conversation() -> Vec<u8> {
    let turn = "Here is the stack trace from the failing job, with the surrounding log lines, \
                and the question is why the retry loop never gives up after the third attempt. "
        .repeat(4);
    let mut messages = vec![json!({"role": "system", "content": "You are a careful assistant."})];
    for i in 0..20 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": format!("{i}: {turn}")}));
    }
    serde_json::to_vec(&json!({
        "model": "auto",
        "messages": messages,
        "temperature": 0.2,
        "top_p": 0.95,
        "tools": [{"type": "function", "function": {"name": "search_logs",
            "description": "Search the job logs", "parameters": {"type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}}}}],
        "max_tokens": 512
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for (name, body) in [("small", small()), ("conversation", conversation())] {
        let body = bytes::Bytes::from(body);
        c.bench_function(&format!("parse/{name} ({} B)", body.len()), |b| {
            b.iter(|| request::parse(black_box(&body), &headers, true).unwrap())
        });
        let req = request::parse(&body, &headers, true).unwrap();
        c.bench_function(&format!("upstream_body/{name}"), |b| {
            b.iter(|| {
                req.upstream_body(black_box("gpt-4o-mini-2024-07-18"))
                    .unwrap()
            })
        });
        c.bench_function(&format!("parse+upstream_body/{name}"), |b| {
            b.iter(|| {
                let r = request::parse(black_box(&body), &headers, true).unwrap();
                r.upstream_body("gpt-4o-mini-2024-07-18").unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
