//! Hot reload over real HTTP (client -> gateway -> testkit mock): a config file on disk
//! is changed and reloaded (`POST /admin/reload`, the file watch) while requests run;
//! none fails, a bad file keeps the old configuration serving, settings fixed at start
//! are refused, and what a kept model or key carries survives the swap.
#![cfg(test)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use routewise_gateway::{load, Live};
use routewise_router::Artifact;
use routewise_testkit::MockUpstream;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const ADMIN: &str = "admin-secret-for-tests";

/// `gw.yaml` for models a, b, c (the a/b/c router in `r.rw`) with `lambda`, plus `extra`.
fn yaml(base_url: &str, lambda: f64, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
router: {{artifact: r.rw, policy: {{lambda: {lambda}}}}}
models:
  - {{name: a, base_url: "{base_url}", upstream_model: up-a}}
  - {{name: b, base_url: "{base_url}", upstream_model: up-b}}
  - {{name: c, base_url: "{base_url}", upstream_model: up-c}}
{extra}
"#
    )
}

struct Served {
    live: Live,
    addr: SocketAddr,
    path: PathBuf,
    _dir: tempfile::TempDir,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn write(&self, text: &str) {
        write_atomically(&self.path, text);
    }

    async fn reload(&self) -> (u16, Value) {
        let r = common::client()
            .post(self.url("/admin/reload"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn version(&self) -> Value {
        let (_, body) = common::get(&self.url("/readyz")).await;
        serde_json::from_str::<Value>(&body).unwrap()["config"].clone()
    }
}

/// Replaces `path` by a rename, as deployment tools do (a reader never sees half a file).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn serve(first: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let e = common::abc();
    Artifact::new("test", e.featurizer, e.router, e.catalog, 3)
        .save(&dir.path().join("r.rw"))
        .unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, first).unwrap();
    let state = load::from_file(&path).unwrap();
    state.set_admin_key(ADMIN);
    let live = Live::new(state, Some(path.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let l = live.clone();
    let task = tokio::spawn(async move {
        let _ = routewise_gateway::serve(listener, l, std::future::pending()).await;
    });
    Served {
        live,
        addr,
        path,
        _dir: dir,
        task,
    }
}

/// The model that answers a chat request, and the status.
async fn answered_by(url: &str, client: &reqwest::Client) -> (u16, String) {
    let r = client
        .post(url)
        .json(&common::chat_body("hello world"))
        .send()
        .await
        .unwrap();
    let model = common::header(r.headers(), "x-routewise-model").to_string();
    (r.status().as_u16(), model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request_and_bad_files_keep_serving() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let gw = serve(&yaml(&base, 0.0, "")).await;
    let first = gw.version().await;
    assert_eq!(first["generation"], 0);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, url) = (Arc::clone(&stop), gw.url("/v1/chat/completions"));
        clients.push(tokio::spawn(async move {
            let client = common::client();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                statuses.push(answered_by(&url, &client).await.0);
            }
            statuses
        }));
    }
    let mut generation = 0;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if i % 2 == 0 {
            // lambda 0 takes the best model (a); a huge lambda the cheapest (c).
            let lambda = if i % 4 == 0 { 1e9 } else { 0.0 };
            gw.write(&yaml(&base, lambda, ""));
            let (status, body) = gw.reload().await;
            assert_eq!(status, 200, "{body}");
            generation += 1;
            assert_eq!(body["reloaded"], true, "{body}");
            assert_eq!(body["generation"], generation, "{body}");
            assert_eq!(gw.version().await["version"], body["version"]);
        } else {
            let before = gw.version().await;
            // An unknown field and a model the router does not know: both reported.
            gw.write(&yaml(&base, 0.0, "nonsense: 1\n").replace("name: c,", "name: d,"));
            let (status, body) = gw.reload().await;
            assert_eq!(status, 400, "{body}");
            common::assert_openai_error(&body);
            assert_eq!(body["error"]["code"], "invalid_config");
            let fields: Vec<&str> = body["error"]["issues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["field"].as_str().unwrap())
                .collect();
            assert!(fields.contains(&"nonsense"), "{body}");
            assert_eq!(gw.version().await, before, "a bad file installs nothing");
        }
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for c in clients {
        let statuses = c.await.unwrap();
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
        answered += statuses.len();
    }
    assert!(
        answered >= 100,
        "only {answered} requests ran during the reloads"
    );

    // The last valid file (i = 18: lambda 0) is what serves: the best model answers.
    let client = common::client();
    assert_eq!(
        answered_by(&gw.url("/v1/chat/completions"), &client).await,
        (200, "a".to_string())
    );
    gw.write(&yaml(&base, 1e9, ""));
    assert_eq!(gw.reload().await.0, 200);
    assert_eq!(
        answered_by(&gw.url("/v1/chat/completions"), &client).await,
        (200, "c".to_string())
    );
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(
        metrics.contains("routewise_config_reload_failures_total 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"routewise_config_reloads_total{result="ok"} 11"#),
        "{metrics}"
    );
    // Counters carried on across the generations: every request is counted once.
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("routewise_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted as usize, answered + 2);
}

#[tokio::test]
async fn a_file_unchanged_is_not_rebuilt_and_a_setting_fixed_at_start_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let gw = serve(&yaml(&base, 0.0, "")).await;
    let (status, body) = gw.reload().await;
    assert_eq!((status, &body["reloaded"]), (200, &json!(false)), "{body}");
    assert_eq!(body["generation"], 0);

    gw.write(
        &yaml(&base, 0.0, "limits: {idle_timeout_ms: 1000}\n")
            .replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:9"),
    );
    let (status, body) = gw.reload().await;
    assert_eq!(status, 400, "{body}");
    let issues = body["error"]["issues"].as_array().unwrap();
    let fields: Vec<&str> = issues
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["listen", "limits.idle_timeout_ms"], "{body}");
    assert!(issues[0]["message"]
        .as_str()
        .unwrap()
        .contains("restart routewise"));
    assert_eq!(gw.version().await["generation"], 0);

    // The admin key guards it; a gateway started without a file has nothing to reload.
    let r = common::client()
        .post(gw.url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let state = gw.live.current();
    let bare = Live::from(state);
    assert!(matches!(
        bare.reload().await,
        Err(routewise_gateway::reload::ReloadError::NoFile)
    ));
}

#[tokio::test]
async fn a_kept_deployment_keeps_its_calls_in_flight_so_a_reload_never_lifts_its_cap() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let capped = yaml(&base, 0.0, "").replace(
        "upstream_model: up-a}",
        "upstream_model: up-a, max_concurrency: 1}",
    );
    let gw = serve(&capped).await;
    let old = gw.live.current();
    let a = old.upstreams.by_name("a").unwrap();
    // A call in flight at a's only deployment, held across the reload.
    let slot = old.upstreams.get(a).try_slot(0).expect("a free slot");
    assert!(old.upstreams.get(a).try_slot(0).is_none(), "capped at one");
    gw.write(&capped.replace("lambda: 0", "lambda: 0.001"));
    assert_eq!(gw.reload().await.0, 200);
    let new = gw.live.current();
    assert_eq!(new.generation, 1);
    let a = new.upstreams.by_name("a").unwrap();
    assert!(
        new.upstreams.get(a).try_slot(0).is_none(),
        "the old generation's call still counts"
    );
    drop(slot);
    assert!(new.upstreams.get(a).try_slot(0).is_some());
    // A deployment moved elsewhere starts afresh.
    let moved = capped.replace(
        &format!("{{name: a, base_url: \"{base}\""),
        &format!("{{name: a, base_url: \"{base}x\""),
    );
    assert_ne!(moved, capped);
    let _held = new.upstreams.get(a).try_slot(0).unwrap();
    gw.write(&moved);
    assert_eq!(gw.reload().await.0, 200);
    let newer = gw.live.current();
    let a = newer.upstreams.by_name("a").unwrap();
    assert!(newer.upstreams.get(a).try_slot(0).is_some());
}

#[tokio::test]
async fn a_kept_model_keeps_its_breaker_and_quota_and_a_new_price_applies() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let extra = "cooldown: {failures: 1, seconds: 600}\n";
    let with_limits = yaml(&base, 0.0, extra).replace(
        "upstream_model: up-b}",
        "upstream_model: up-b, limits: {rpm: 5}}",
    );
    let gw = serve(&with_limits).await;
    let old = gw.live.current();
    let a = old.upstreams.by_name("a").unwrap();
    assert!(
        old.record_failure(a, Some(0)),
        "one failure opens a's breaker"
    );
    let b = old.upstreams.by_name("b").unwrap();
    let quota = old.upstreams.get(b).deployments[0].quota.as_ref().unwrap();
    for _ in 0..5 {
        quota.take(1, old.now_ms()).unwrap();
    }

    // A new price for c, and the models listed in another order.
    let reordered = with_limits
        .replace(
            "upstream_model: up-c}",
            "upstream_model: up-c, price: {input_per_mtok: 9, output_per_mtok: 9}}",
        )
        .replace(
            &format!("  - {{name: a, base_url: \"{base}\", upstream_model: up-a}}\n"),
            "",
        )
        .replace(
            "models:\n",
            &format!("models:\n  - {{name: a, base_url: \"{base}\", upstream_model: up-a}}\n"),
        );
    gw.write(&reordered);
    assert_eq!(gw.reload().await.0, 200);
    let new = gw.live.current();
    assert_eq!(new.generation, 1);
    let a = new.upstreams.by_name("a").unwrap();
    assert!(new.upstreams.get(a).breaker.is_open(new.now_ms()));
    let b = new.upstreams.by_name("b").unwrap();
    let quota = new.upstreams.get(b).deployments[0].quota.as_ref().unwrap();
    assert!(quota.take(1, new.now_ms()).is_err(), "b's quota is spent");
    let c = new.upstreams.by_name("c").unwrap();
    assert_eq!(new.upstreams.get(c).price.input_per_mtok, 9.0);
    // The old generation is gone once nothing holds it.
    let weak = Arc::downgrade(&old.0);
    drop(old);
    assert!(weak.upgrade().is_none());
}

#[tokio::test]
async fn regression_a_keys_allowed_models_follow_a_reload_that_renumbers_them() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let dir = tempfile::tempdir().unwrap();
    let state = format!(
        "auth: {{mode: keys}}\nstate: {{path: \"{}\"}}\n",
        dir.path().join("state.redb").display()
    );
    let gw = serve(&yaml(&base, 0.0, &state)).await;
    let r = common::client()
        .post(gw.url("/admin/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "only-b", "models": ["b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let chat = || async {
        let r = common::client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&common::chat_body("hello world"))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            common::header(r.headers(), "x-routewise-model").to_string(),
        )
    };
    assert_eq!(chat().await, (200, "b".to_string()));
    // Drop model a: b and c move up one place in the model table.
    let without_a = yaml(&base, 0.0, &state)
        .replace(
            &format!("  - {{name: a, base_url: \"{base}\", upstream_model: up-a}}\n"),
            "",
        )
        .replace("artifact: r.rw", "artifact: bc.rw");
    let e = common::engine(&[("b", 0.8, 3.0), ("c", 0.7, 0.3)]);
    Artifact::new("test", e.featurizer, e.router, e.catalog, 2)
        .save(&gw.path.with_file_name("bc.rw"))
        .unwrap();
    gw.write(&without_a);
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(chat().await, (200, "b".to_string()));
    assert_eq!(mock.hits("up-c"), 0);
}

#[tokio::test]
async fn watching_the_file_reloads_a_saved_change() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let gw = serve(&yaml(&base, 0.0, "")).await;
    let _watch = gw.live.watch().unwrap();
    gw.write(&yaml(&base, 1e9, ""));
    let mut generation = 0;
    for _ in 0..100 {
        generation = gw.live.current().generation;
        if generation > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(generation, 1, "the saved file was reloaded");
    let client = common::client();
    assert_eq!(
        answered_by(&gw.url("/v1/chat/completions"), &client).await,
        (200, "c".to_string())
    );
}

#[tokio::test]
async fn regression_a_cached_answer_keeps_its_model_when_a_reload_reorders_the_models() {
    // Review finding: the in-memory cache names an answer's model by its position; kept
    // across a reload that reorders the models, it served a's answer as c's.
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let cache = "cache: {exact: true}\n";
    let gw = serve(&yaml(&base, 0.0, cache)).await;
    let client = common::client();
    let url = gw.url("/v1/chat/completions");
    assert_eq!(answered_by(&url, &client).await, (200, "a".to_string()));
    let reordered = yaml(&base, 0.0, cache)
        .replace(
            &format!("  - {{name: a, base_url: \"{base}\", upstream_model: up-a}}\n"),
            "",
        )
        .replace(
            "models:\n",
            &format!("models:\n  - {{name: c, base_url: \"{base}\", upstream_model: up-c}}\n"),
        )
        .replacen(
            &format!("  - {{name: c, base_url: \"{base}\", upstream_model: up-c}}\n{cache}"),
            &format!("  - {{name: a, base_url: \"{base}\", upstream_model: up-a}}\n{cache}"),
            1,
        );
    assert!(reordered.find("name: c").unwrap() < reordered.find("name: a").unwrap());
    gw.write(&reordered);
    assert_eq!(gw.reload().await.0, 200);
    assert_eq!(answered_by(&url, &client).await, (200, "a".to_string()));
}

#[tokio::test]
async fn a_request_keeps_the_generation_it_was_given_and_shadows_survive_a_reload() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let shadow = "shadow: [{name: next, artifact: r.rw, policy: {lambda: 5}, sample: 1.0}]\n";
    let gw = serve(&yaml(&base, 0.0, shadow)).await;
    let mut extensions = axum::http::Extensions::new();
    let first = routewise_gateway::http::extract::Current::of(&gw.live, &mut extensions);
    let shadows = Arc::clone(first.shadows.get().unwrap());
    gw.write(&yaml(&base, 1e9, shadow));
    assert_eq!(gw.reload().await.0, 200);
    // The auth middleware and the handler of one request see one configuration.
    let again = routewise_gateway::http::extract::Current::of(&gw.live, &mut extensions);
    assert_eq!(again.generation, 0);
    let now = gw.live.current();
    assert_eq!(now.generation, 1);
    // Unchanged shadows keep their worker, statistics and budgets.
    assert!(Arc::ptr_eq(now.shadows.get().unwrap(), &shadows));
    // Changed ones start afresh.
    gw.write(&yaml(
        &base,
        1e9,
        &shadow.replace("lambda: 5", "lambda: 50"),
    ));
    assert_eq!(gw.reload().await.0, 200);
    assert!(!Arc::ptr_eq(
        gw.live.current().shadows.get().unwrap(),
        &shadows
    ));
}

#[tokio::test]
async fn regression_the_cooldown_gauge_follows_the_breakers_a_reload_installs() {
    // Review finding: a model cooling down when a reload replaced its breaker (a new
    // `cooldown:`), or dropped it, kept `routewise_model_cooldown` at 1 for good.
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let gw = serve(&yaml(&base, 0.0, "cooldown: {failures: 1, seconds: 600}\n")).await;
    let old = gw.live.current();
    for name in ["a", "b"] {
        assert!(old.record_failure(old.upstreams.by_name(name).unwrap(), Some(0)));
    }
    drop(old);
    let gauge = |metrics: &str, model: &str| {
        metrics.contains(&format!("routewise_model_cooldown{{model=\"{model}\"}} 1"))
    };
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(gauge(&metrics, "a") && gauge(&metrics, "b"));
    // A new cooldown (fresh breakers) and b dropped (with a b-less artifact).
    let e = common::engine(&[("a", 0.9, 30.0), ("c", 0.7, 0.3)]);
    Artifact::new("test", e.featurizer, e.router, e.catalog, 2)
        .save(&gw.path.with_file_name("ac.rw"))
        .unwrap();
    let next = yaml(&base, 0.0, "cooldown: {failures: 2, seconds: 600}\n")
        .replace(
            &format!("  - {{name: b, base_url: \"{base}\", upstream_model: up-b}}\n"),
            "",
        )
        .replace("artifact: r.rw", "artifact: ac.rw");
    gw.write(&next);
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = common::get(&gw.url("/metrics")).await;
    assert!(!gauge(&metrics, "a") && !gauge(&metrics, "b"), "{metrics}");
}
