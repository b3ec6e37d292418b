//! Stage 2 on the request path, without I/O: the `routes:` rules (20 routes: keywords,
//! regexes, metadata and 5 descriptions), the PII guard (every detector) and a response
//! cache lookup (exact + semantic, 10,000 entries of the same context), on a parsed chat
//! request, against parsing alone. And stage 0, `auth: {mode: keys}`: a valid key checked
//! (lookup in the instance's cache, SHA-256, constant-time compare, expiry) and applied
//! (its models narrowing the pool), and a budget reservation settled on the local ledger.
//!
//! `cargo bench -p routewise-gateway --bench stage2`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::{HeaderMap, HeaderValue};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use routewise_gateway::pipeline::{auth, budget, cache, rules};
use routewise_gateway::{config, request, AppState};
use routewise_router::{Catalog, Engine, ModelInfo};
use serde_json::json;

const ROUTES: &str = r#"
routes:
  - {name: k1, when: {keywords: [kubernetes, helm, kubectl]}, then: {models: [a, b]}}
  - {name: k2, when: {keywords: [invoice, receipt, "purchase order"]}, then: {models: [b, c]}}
  - {name: k3, when: {keywords: [poem, sonnet, haiku, limerick]}, then: {model: c}}
  - {name: k4, when: {keywords: [sql, postgres, mysql, sqlite]}, then: {models: [a, b]}}
  - {name: k5, when: {keywords: [translate, translation], scope: all}, then: {model: b}}
  - {name: k6, when: {keywords: [diagnosis, symptom, prescription]}, then: {model: a}}
  - {name: k7, when: {keywords: [lawsuit, plaintiff, defendant]}, then: {model: a}}
  - {name: k8, when: {keywords: [recipe, bake, oven]}, then: {model: c}}
  - {name: r1, when: {regex: "(?i)traceback|segfault|panicked at"}, then: {models: [a, b]}}
  - {name: r2, when: {regex: "(?i)\\bCVE-\\d{4}-\\d+"}, then: {block: "no exploit help"}}
  - {name: r3, when: {regex: "```[a-z]*\\n"}, then: {models: [a, b]}}
  - {name: r4, when: {regex: "(?i)^(hi|hello|hey)\\b"}, then: {model: c}}
  - {name: m1, when: {tools: true}, then: {model: a}}
  - {name: m2, when: {tokens: {min: 4000}}, then: {min_context: 100000}}
  - {name: m3, when: {tag: "team=search"}, then: {tags: {billing: search}}, continue: true}
  - {name: d1, when: {description: "writing or debugging computer programs and source code", threshold: 0.5}, then: {models: [a, b]}}
  - {name: d2, when: {description: "medical questions about symptoms, diseases and treatments", threshold: 0.5}, then: {model: a}}
  - {name: d3, when: {description: "legal questions about contracts, courts and rights", threshold: 0.5}, then: {model: a}}
  - {name: d4, when: {description: "small talk, greetings and casual conversation", threshold: 0.5}, then: {model: c}}
  - {name: d5, when: {description: "mathematics problems, equations and proofs", threshold: 0.5}, then: {models: [a, b]}}
pii: {action: tag}
cache: {exact: true, semantic: {threshold: 0.92}, ttl_s: 3600, max_entries: 10000}
"#;

fn state(extra: &str) -> AppState {
    let yaml = format!(
        r#"
models:
  - {{name: a, base_url: "http://127.0.0.1:9/v1", price: {{input_per_mtok: 10, output_per_mtok: 30}}, context_window: 128000}}
  - {{name: b, base_url: "http://127.0.0.1:9/v1", price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  - {{name: c, base_url: "http://127.0.0.1:9/v1", price: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}}}
{extra}"#
    );
    let cfg = config::parse(
        &yaml,
        "bench.yaml",
        std::path::Path::new("."),
        std::iter::empty(),
        |_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let catalog = Catalog {
        models: vec![
            ModelInfo::flat("a", 20.0),
            ModelInfo::flat("b", 1.5),
            ModelInfo::flat("c", 0.15),
        ],
    };
    AppState::new(cfg, Engine::constant(catalog, vec![0.9, 0.8, 0.7]), None).unwrap()
}

const WORDS: &[&str] = &[
    "river",
    "engine",
    "theory",
    "market",
    "protein",
    "planet",
    "contract",
    "melody",
    "glacier",
    "algorithm",
    "harvest",
    "circuit",
    "volcano",
    "senate",
    "enzyme",
    "galaxy",
    "bridge",
    "novel",
    "climate",
    "harbor",
];

/// A ~500-character question, distinct for each `i`.
fn body(i: usize) -> bytes::Bytes {
    body_with(i, "")
}

/// [`body`] with `extra` appended to the question.
fn body_with(i: usize, extra: &str) -> bytes::Bytes {
    let w = |k: usize| WORDS[(i / WORDS.len().pow(k as u32)) % WORDS.len()];
    let q = format!(
        "I am preparing a short briefing about the {} and the {} near the {} {}. Could you explain \
         in a few paragraphs how they are usually related, which factors matter most, what \
         the common misconceptions are, and give two concrete examples that a general audience \
         would understand without any background? Please keep it under three hundred words.{}",
        w(0),
        w(1),
        w(2),
        w(3),
        extra
    );
    bytes::Bytes::from(
        serde_json::to_vec(&json!({"model": "auto", "max_tokens": 400,
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": q}]}))
        .unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let st = state(ROUTES);
    let gw = &*st;
    // The memory backend's lookup is async only in name: it never yields.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-routewise-tags", HeaderValue::from_static("team=ads"));
    // 10,000 cached answers.
    for i in 0..10_000 {
        let mut req = request::parse(&body(i), &headers, true).unwrap();
        let sig = rules::run(gw, &mut req, &headers, None, true).unwrap();
        let mut probe = cache::probe(gw, &req, &headers, sig.as_ref()).unwrap();
        cache::store(
            &st,
            &mut probe,
            cache::Cached {
                model: gw.upstreams.by_name("c").unwrap(),
                content_type: None,
                body: bytes::Bytes::from_static(b"{}"),
            },
        );
    }
    assert_eq!(gw.cache.as_ref().unwrap().memory_entries(), Some(10_000));
    // A near-duplicate of a cached question that the guards veto (a number was added):
    // the lookup finds candidates, computes their cosines and refuses them.
    let miss = body_with(17, " Use 2 examples.");
    let hit = body(4321);
    c.bench_function("parse (baseline)", |b| {
        b.iter(|| request::parse(black_box(&miss), &headers, true).unwrap())
    });
    let stage2 = |body: &bytes::Bytes| {
        let mut req = request::parse(body, &headers, true).unwrap();
        let sig = rules::run(gw, &mut req, &headers, None, true).unwrap();
        let mut probe = cache::probe(gw, &req, &headers, sig.as_ref()).unwrap();
        rt.block_on(cache::answer(gw, &mut probe, &req, None))
            .is_some()
    };
    assert!(!stage2(&miss) && stage2(&hit));
    c.bench_function(
        "parse + rules + pii + cache lookup (miss, 10k entries)",
        |b| b.iter(|| stage2(black_box(&miss))),
    );
    c.bench_function("parse + rules + pii + cache lookup (exact hit)", |b| {
        b.iter(|| stage2(black_box(&hit)))
    });
    let parsed = request::parse(&miss, &headers, true).unwrap();
    c.bench_function("rules + pii only (20 routes)", |b| {
        b.iter(|| {
            let mut req = parsed.clone();
            rules::run(gw, &mut req, &headers, None, true).unwrap()
        })
    });
    c.bench_function("cache probe + lookup only (miss)", |b| {
        b.iter(|| {
            let mut probe = cache::probe(gw, &parsed, &headers, None).unwrap();
            rt.block_on(cache::answer(gw, &mut probe, &parsed, None))
                .is_some()
        })
    });
}

fn bench_auth(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let st = state(&format!(
        "auth: {{mode: keys}}\nstate: {{path: \"{}\"}}",
        dir.path().join("state.redb").display()
    ));
    let gw = &*st;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(st.attach_keys()).unwrap();
    let spec = routewise_online::keys::KeySpec {
        name: Some("bench".into()),
        models: Some(vec!["b".into(), "c".into()]),
        budget_usd: Some(1e9),
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
        ..Default::default()
    };
    let key = rt
        .block_on(gw.keys.get().unwrap().create(gw, &spec))
        .unwrap()
        .key;
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    let parsed = request::parse(&body(1), &headers, true).unwrap();
    c.bench_function("auth: check a key (stage 0)", |b| {
        b.iter(|| {
            rt.block_on(auth::authenticate(gw, black_box(&headers)))
                .unwrap()
                .is_some()
        })
    });
    c.bench_function(
        "auth: check a key + apply its pool to a parsed request",
        |b| {
            b.iter(|| {
                let caller = rt
                    .block_on(auth::authenticate(gw, black_box(&headers)))
                    .unwrap();
                let mut req = parsed.clone();
                auth::apply(gw, caller.as_deref().unwrap(), &mut req).unwrap();
                rules::run(gw, &mut req, &headers, caller.as_deref(), true).unwrap()
            })
        },
    );
    c.bench_function("parsed request clone (baseline of the line above)", |b| {
        b.iter(|| black_box(parsed.clone()))
    });
    let caller = rt
        .block_on(auth::authenticate(gw, &headers))
        .unwrap()
        .unwrap();
    let m = gw.upstreams.by_name("c").unwrap();
    c.bench_function(
        "budget: rate buckets + reserve + settle on the local ledger",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let hold = budget::reserve(gw, Some(&caller), m, &parsed, true, false)
                        .await
                        .unwrap()
                        .unwrap();
                    hold.settle(Some(1e-6));
                    // The settle runs as a task: let it.
                    tokio::task::yield_now().await;
                })
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = bench, bench_auth
}
criterion_main!(benches);
