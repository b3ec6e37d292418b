//! `routewise profile` end to end (the binary, real HTTP on loopback): the embedded demo
//! reproduces the recorded scores; an OpenAI and an Anthropic upstream (the testkit mock)
//! with a judge; resume after a kill; the `--max-usd` cap; a dead upstream left out and
//! reported; bad input refused.
#![cfg(test)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use routewise_testkit::{Fault, MockUpstream};
use serde_json::{json, Value};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_routewise")
}

/// Runs `routewise` off the async threads (the mock serves on them meanwhile).
async fn routewise(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(bin()).args(&args).output().unwrap())
        .await
        .unwrap()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `profile --config CFG --probe PROBES --out OUT`, then `extra`.
fn profile_args(cfg: &Path, probes: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = args(&[
        "profile",
        "--config",
        cfg.to_str().unwrap(),
        "--probe",
        probes.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    v.extend(args(extra));
    v
}

/// The complete JSON lines of `path` (a line being appended is not one yet).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_probes(path: &Path, probes: &[Value]) {
    let text: String = probes.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// `n` closed-form probes (reference B) and `open` without a reference.
fn probes(n: usize, open: usize) -> Vec<Value> {
    let mut v: Vec<Value> = (0..n)
        .map(|i| {
            json!({"id": format!("q{i}"), "prompt": format!("Question {i}: which option?\nA) x\nB) y"),
                   "task": "quiz", "reference": "B"})
        })
        .collect();
    v.extend(
        (0..open).map(
            |i| json!({"id": format!("open{i}"), "prompt": format!("Write a haiku number {i}")}),
        ),
    );
    v
}

/// A config with an OpenAI model `oa`, an Anthropic model `an` and a judge, all on `mock`.
fn config(dir: &Path, mock: &MockUpstream, extra_models: &str) -> PathBuf {
    let url = mock.base_url();
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listen: 127.0.0.1:0
models:
  - {{name: oa, base_url: "{url}", upstream_model: oa-up, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
  - {{name: an, provider: anthropic, base_url: "{url}", upstream_model: an-up, price: {{input_per_mtok: 3, output_per_mtok: 4}}}}
  - {{name: judge, base_url: "{url}", upstream_model: judge-up, price: {{input_per_mtok: 1, output_per_mtok: 1}}}}
{extra_models}
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn profiling_the_demo_reproduces_the_recorded_scores() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../routewise-gateway/fixtures/routerbench-demo.jsonl");
    let recorded: Vec<Value> = lines(&fixture)
        .into_iter()
        .filter(|r| r.get("reference").is_some_and(Value::is_string))
        .take(30)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let probe_file = dir.path().join("probes.jsonl");
    let probes: Vec<Value> = recorded
        .iter()
        .map(|r| json!({"id": r["id"], "prompt": r["prompt"], "task": r["task"], "reference": r["reference"]}))
        .collect();
    write_probes(&probe_file, &probes);
    let out = dir.path().join("pool.jsonl");
    let (_, stderr) = common::ok_out(&[
        "profile",
        "--probe",
        probe_file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stderr.contains("30 lines written"), "{stderr}");
    let got: HashMap<String, Value> = lines(&out)
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(got.len(), 30);
    let mut pairs = 0;
    for r in &recorded {
        let g = &got[r["id"].as_str().unwrap()];
        assert_eq!(g["reference"], r["reference"]);
        assert_eq!(g["prompt"], r["prompt"]);
        let models = r["models"].as_object().unwrap();
        assert_eq!(g["models"].as_object().unwrap().len(), models.len());
        for (m, o) in models {
            assert_eq!(g["models"][m]["score"], o["score"], "{} {m}", r["id"]);
            assert_eq!(g["models"][m]["answer"], o["answer"], "{} {m}", r["id"]);
            pairs += 1;
        }
    }
    assert_eq!(pairs, 30 * 11);
    // The output is canonical routing JSONL: the lab reads it unchanged.
    let ds = routewise_data::Dataset::load(&out).unwrap();
    assert_eq!((ds.records.len(), ds.models.len()), (30, 11));

    // A built-in probe set, on two of the demo's models.
    let out = dir.path().join("quick.jsonl");
    common::ok(&[
        "profile",
        "--probe",
        "builtin:quick-100",
        "--models",
        "gpt-4-1106-preview,mistralai/mistral-7b-chat",
        "--out",
        out.to_str().unwrap(),
    ]);
    let ds = routewise_data::Dataset::load(&out).unwrap();
    assert_eq!(ds.records.len(), 100);
    assert_eq!(ds.models.len(), 2);
    assert!(ds.records.iter().all(|r| r.reference.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_upstreams_graded_by_reference_and_by_a_judge() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("Thinking... The answer is (B)"));
    mock.set_model_answer("an-up", Some("It must be C.\nThe answer is (C)"));
    mock.set_model_answer("judge-up", Some("Clear and correct.\nRating: 8"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(6, 2));
    let out = dir.path().join("pool.jsonl");
    let o = routewise(profile_args(
        &cfg,
        &probe_file,
        &out,
        &["--models", "oa,an", "--judge", "judge"],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(o.stdout.is_empty(), "only the file gets the JSONL");
    let rows = lines(&out);
    assert_eq!(rows.len(), 8);
    for r in &rows {
        let closed = r.get("reference").is_some_and(Value::is_string);
        let (oa, an) = (&r["models"]["oa"], &r["models"]["an"]);
        if closed {
            assert_eq!(
                (oa["score"].as_f64(), an["score"].as_f64()),
                (Some(1.0), Some(0.0)),
                "{r}"
            );
            assert_eq!(
                (oa["answer"].as_str(), an["answer"].as_str()),
                (Some("B"), Some("C"))
            );
        } else {
            // The judge's 8 of 1..10, for both; no `answer` on an open item.
            for o in [oa, an] {
                assert!(
                    (o["score"].as_f64().unwrap() - 7.0 / 9.0).abs() < 1e-9,
                    "{r}"
                );
                assert!(o.get("answer").is_none(), "{r}");
            }
        }
        // Cost: the upstream's usage times the configured prices.
        for (o, (pi, po)) in [(oa, (1.0, 2.0)), (an, (3.0, 4.0))] {
            let (i, c) = (
                o["input_tokens"].as_f64().unwrap(),
                o["output_tokens"].as_f64().unwrap(),
            );
            assert!(i > 0.0 && c > 0.0);
            assert!((o["cost_usd"].as_f64().unwrap() - (i * pi + c * po) / 1e6).abs() < 1e-12);
        }
    }
    // What went upstream: the format instruction for closed items, max_tokens, no fallback.
    assert_eq!(
        (
            mock.hits("oa-up"),
            mock.hits("an-up"),
            mock.hits("judge-up")
        ),
        (8, 8, 4)
    );
    let reqs = mock.requests();
    let to_oa = reqs
        .iter()
        .find(|r| r.model == "oa-up" && r.body.to_string().contains("Question"))
        .unwrap();
    assert_eq!(to_oa.body["messages"][0]["role"], "system");
    assert!(to_oa.body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("The answer is (X)"));
    assert_eq!(to_oa.body["max_tokens"], 1024);
    let to_an = reqs.iter().find(|r| r.model == "an-up").unwrap();
    assert_eq!(to_an.body["max_tokens"], 1024);
    let to_judge = reqs.iter().find(|r| r.model == "judge-up").unwrap();
    assert!(to_judge.body.to_string().contains("Rating: N"));
    assert!(
        stderr.contains("oa: 8 answered") && stderr.contains("an: 8 answered"),
        "{stderr}"
    );

    // A judge that never rates: its pairs are missing (retried twice), never scored 0.
    mock.set_model_answer("judge-up", Some("Hard to say."));
    let out2 = dir.path().join("pool2.jsonl");
    let o = routewise(profile_args(
        &cfg,
        &probe_file,
        &out2,
        &["--models", "oa", "--judge", "judge"],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("2 without a judge rating"), "{stderr}");
    assert!(
        stderr.contains("judge replies without a rating: 6"),
        "{stderr}"
    );
    let rows = lines(&out2);
    assert_eq!(
        rows.len(),
        6,
        "the open probes have no line: no model has a score"
    );
    assert!(rows.iter().all(|r| r["reference"] == "B"));
}

/// Regression (bench/profile.sh, 20,000 probes: one line too many): a fast model's pair
/// settling while the run waited to start the same probe's pair on a slow model wrote
/// the probe's line early, and a second line later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_probe_is_written_once_when_one_model_is_much_slower() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("The answer is (B)"));
    mock.set_model_answer("an-up", Some("The answer is (B)"));
    mock.set_model_fault("an-up", Some(Fault::Delay(Duration::from_millis(30))));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(12, 0));
    let out = dir.path().join("pool.jsonl");
    let o = routewise(profile_args(
        &cfg,
        &probe_file,
        &out,
        &["--models", "oa,an", "--concurrency", "1"],
    ))
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = lines(&out);
    assert_eq!(rows.len(), 12);
    assert!(
        rows.iter()
            .all(|r| r["models"].as_object().unwrap().len() == 2),
        "{rows:?}"
    );
    assert_eq!(
        routewise_data::Dataset::load(&out).unwrap().records.len(),
        12
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_with_nothing_lost_or_duplicated() {
    let mock = MockUpstream::start().await.unwrap();
    for m in ["oa-up", "an-up"] {
        mock.set_model_fault(m, Some(Fault::Delay(Duration::from_millis(60))));
        mock.set_model_answer(m, Some("The answer is (B)"));
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(40, 0));
    let out = dir.path().join("pool.jsonl");
    let run_args = profile_args(
        &cfg,
        &probe_file,
        &out,
        &["--models", "oa,an", "--concurrency", "2"],
    );
    let mut child = Command::new(bin())
        .args(&run_args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no chance to tidy up) once some lines are out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&out).len() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = lines(&out).len();
    assert!((8..40).contains(&before), "{before}");
    let hits_before = mock.total_hits();
    // Without --resume the file is not clobbered.
    let o = routewise(run_args.clone()).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));

    let mut resume = run_args.clone();
    resume.push("--resume".into());
    let o = routewise(resume).await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let rows = lines(&out);
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((rows.len(), ids.len()), (40, 40), "every probe once");
    assert!(rows
        .iter()
        .all(|r| r["models"].as_object().unwrap().len() == 2));
    assert!(
        !dir.path().join("pool.jsonl.partial").exists(),
        "journal removed"
    );
    // The resumed run called only the pairs not already settled: the kill lost at most
    // the calls in flight (2 per model).
    let resumed_calls = mock.total_hits() - hits_before;
    assert!(
        resumed_calls <= 80 - 2 * before as u64,
        "{resumed_calls} after {before} lines"
    );
    assert!(mock.total_hits() <= 80 + 4, "{}", mock.total_hits());
    assert!(stderr.contains("pairs already there"), "{stderr}");
}

/// Runs `routewise`, failing the test after `secs` (a run that hangs is a bug).
async fn routewise_within(secs: u64, args: Vec<String>) -> Output {
    tokio::time::timeout(Duration::from_secs(secs), routewise(args))
        .await
        .expect("routewise profile hung")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_usd_is_never_exceeded_and_a_resume_finishes_the_run() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("The answer is (B)"));
    mock.set_model_answer("an-up", Some("The answer is (B)"));
    let dir = tempfile::tempdir().unwrap();
    // Two dear models: 100 and 150/50 USD per million tokens.
    let cfg = config(
        dir.path(),
        &mock,
        "  - {name: dear, base_url: \"URL\", upstream_model: oa-up, price: {input_per_mtok: 100, output_per_mtok: 100}}\n  \
         - {name: dear2, base_url: \"URL\", upstream_model: an-up, price: {input_per_mtok: 150, output_per_mtok: 50}}",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("URL", &mock.base_url());
    std::fs::write(&cfg, text).unwrap();
    // Prompts of many lengths: reservations of many sizes, whose float sum need not come
    // back to exactly 0 (regression: the run then waited forever at the cap).
    let many: Vec<Value> = (0..30)
        .map(|i| {
            json!({"id": format!("q{i}"), "prompt": format!("Question {i} {}\nA) x\nB) y", "word ".repeat(i * 7 % 23)),
                   "reference": "B"})
        })
        .collect();
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &many);
    let out = dir.path().join("pool.jsonl");
    let base = profile_args(
        &cfg,
        &probe_file,
        &out,
        &[
            "--models",
            "dear,dear2",
            "--max-tokens",
            "100",
            "--concurrency",
            "4",
        ],
    );
    for cap in ["0.1", "0.137"] {
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(dir.path().join("pool.jsonl.partial"));
        let hits_before = mock.total_hits();
        let mut capped = base.clone();
        capped.extend(args(&["--max-usd", cap]));
        let o = routewise_within(60, capped).await;
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains("stopped: the next call would pass --max-usd"),
            "{stderr}"
        );
        let rows = lines(&out);
        let journal =
            std::fs::read_to_string(dir.path().join("pool.jsonl.partial")).unwrap_or_default();
        let journaled: Vec<Value> = journal
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // What was paid: every outcome on a line, and journaled ones not on a line.
        let on_lines: f64 = rows
            .iter()
            .flat_map(|r| r["models"].as_object().unwrap().values())
            .map(|o| o["cost_usd"].as_f64().unwrap())
            .sum();
        let line_ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
        let off_lines: f64 = journaled
            .iter()
            .filter(|e| !line_ids.contains(e["id"].as_str().unwrap()))
            .map(|e| e["outcome"]["cost_usd"].as_f64().unwrap())
            .sum();
        let cap: f64 = cap.parse().unwrap();
        assert!(!rows.is_empty() && rows.len() < 30, "{}", rows.len());
        assert!(
            on_lines + off_lines <= cap,
            "{on_lines} + {off_lines} > {cap}"
        );
        // Every call the upstream saw has its outcome kept: nothing paid for and dropped.
        let kept = rows
            .iter()
            .map(|r| r["models"].as_object().unwrap().len())
            .sum::<usize>()
            + journaled
                .iter()
                .filter(|e| !line_ids.contains(e["id"].as_str().unwrap()))
                .count();
        assert_eq!(mock.total_hits() - hits_before, kept as u64);
    }

    let mut resume = base.clone();
    resume.push("--resume".into());
    let o = routewise_within(60, resume).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = lines(&out);
    assert_eq!(rows.len(), 30);
    assert!(rows
        .iter()
        .all(|r| r["models"].as_object().unwrap().len() == 2));
}

/// A resumed run that adds a model and stops early (the budget) keeps every line it
/// found; the next resume completes them in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_adding_a_model_never_shrinks_the_output() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("The answer is (B)"));
    mock.set_model_answer("an-up", Some("The answer is (C)"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(20, 0));
    let out = dir.path().join("pool.jsonl");
    let run = |models: &str, extra: &[&str]| {
        let mut v = profile_args(
            &cfg,
            &probe_file,
            &out,
            &["--models", models, "--concurrency", "1"],
        );
        v.extend(args(extra));
        v
    };
    let o = routewise_within(60, run("oa", &[])).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&out).len(), 20);
    // `an` costs 3 + 4 USD per Mtok: a call reserves about 1.2e-3 USD (its body's bytes
    // and 100 output tokens) and costs about 1.6e-4; a cap of 2e-3 stops it early.
    let o = routewise_within(
        60,
        run(
            "oa,an",
            &["--resume", "--max-usd", "0.002", "--max-tokens", "100"],
        ),
    )
    .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    let rows = lines(&out);
    assert_eq!(rows.len(), 20, "no line lost");
    let both = rows
        .iter()
        .filter(|r| r["models"].get("an").is_some())
        .count();
    assert!((1..20).contains(&both), "{both}");
    assert!(rows.iter().all(|r| r["models"]["oa"]["score"] == 1.0));
    let o = routewise_within(60, run("oa,an", &["--resume"])).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = lines(&out);
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((rows.len(), ids.len()), (20, 20));
    assert!(rows.iter().all(|r| r["models"]["an"]["score"] == 0.0));
    assert_eq!(mock.hits("oa-up"), 20, "oa was never asked again");
    assert_eq!(mock.hits("an-up"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_left_out_and_reported_with_its_errors() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("The answer is (B)"));
    mock.set_model_fault("an-up", Some(Fault::Status(500)));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(20, 0));
    let out = dir.path().join("pool.jsonl");
    let o = routewise(profile_args(
        &cfg,
        &probe_file,
        &out,
        &[
            "--models",
            "oa,an",
            "--concurrency",
            "1",
            "--retries",
            "1",
            "--give-up-after",
            "3",
        ],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("LEFT OUT after 3 failed pairs in a row"),
        "{stderr}"
    );
    assert!(stderr.contains("an: 0 answered"), "{stderr}");
    // Pairs already started when it was left out still ran (at most one more here).
    let calls = mock.hits("an-up");
    assert!((6..=8).contains(&calls), "{calls}");
    assert!(
        stderr.contains(&format!("errors: http_5xx {calls}")),
        "{stderr}"
    );
    // Never scored 0: `an` is on no line; `oa` on all.
    let rows = lines(&out);
    assert_eq!(rows.len(), 20);
    assert!(rows
        .iter()
        .all(|r| r["models"].get("an").is_none() && r["models"]["oa"]["score"] == 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let cfg = cfg.to_str().unwrap();
    let good = dir.path().join("good.jsonl");
    write_probes(&good, &probes(2, 1));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"b\"}\n").unwrap();
    let out = dir.path().join("o.jsonl");
    let out = out.to_str().unwrap();
    for (a, needle) in [
        (
            vec!["--probe", bad.to_str().unwrap()],
            "bad.jsonl:2: field `prompt`",
        ),
        (
            vec![
                "--probe",
                good.to_str().unwrap(),
                "--models",
                "oa,nope",
                "--judge",
                "judge",
            ],
            "no model `nope` in the config (its models: oa, an, judge)",
        ),
        (
            vec!["--probe", good.to_str().unwrap(), "--models", "oa"],
            "1 of the 3 probes have no reference: pass --judge MODEL",
        ),
        (
            vec!["--probe", "builtin:huge-9000"],
            "unknown probe set `builtin:huge-9000`",
        ),
    ] {
        let mut v = vec!["profile", "--config", cfg, "--out", out];
        v.extend(a);
        let o = routewise(args(&v)).await;
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{v:?}: {stderr}");
        assert!(stderr.contains(needle), "{v:?}: {stderr}");
    }
    assert_eq!(mock.total_hits(), 0, "nothing was sent");
    // A model without a price (nothing else costs it) names the field.
    std::fs::write(
        dir.path().join("noprice.yaml"),
        format!(
            "listen: 127.0.0.1:0\nmodels:\n  - {{name: x, base_url: \"{}\"}}\n",
            mock.base_url()
        ),
    )
    .unwrap();
    let noprice = dir.path().join("noprice.yaml");
    let o = routewise(profile_args(&noprice, &good, Path::new(out), &[])).await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("models[0].price"), "{stderr}");
}

/// Zero data to a router that knows a new model: a router trained without `NEW`, probes
/// chosen for it, the demo pool profiled on them (`NEW` included), then `onboard`; and
/// the same from a profile of `NEW` alone (one model per line).
#[test]
fn profile_then_onboard_a_model_the_router_lacks() {
    const NEW: &str = "mistralai/mixtral-8x7b-chat";
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../routewise-gateway/fixtures/routerbench-demo.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // The closed-form prompts (graded without a judge).
    let without: String = lines(&fixture)
        .into_iter()
        .filter(|v| v.get("reference").is_some_and(Value::is_string))
        .map(|mut v| {
            v["models"].as_object_mut().unwrap().remove(NEW);
            format!("{v}\n")
        })
        .collect();
    std::fs::write(p("without.jsonl"), without).unwrap();
    common::ok(&[
        "train",
        "--data",
        &p("without.jsonl"),
        "--router",
        "knn",
        "--featurizer",
        "static-mini",
        "--out",
        &p("knn.rw"),
    ]);
    common::ok(&[
        "probes",
        "select",
        "--model",
        &p("knn.rw"),
        "--data",
        &p("without.jsonl"),
        "--n",
        "25",
        "--out",
        &p("probes.jsonl"),
    ]);
    common::ok(&[
        "profile",
        "--probe",
        &p("probes.jsonl"),
        "--out",
        &p("pool.jsonl"),
    ]);
    let msg = common::ok(&[
        "onboard",
        "--model",
        &p("knn.rw"),
        "--outcomes",
        &p("pool.jsonl"),
        "--name",
        NEW,
        "--out",
        &p("knn2.rw"),
    ]);
    assert!(
        msg.contains("from 25 probes") && msg.contains("recorded scores"),
        "{msg}"
    );

    common::ok(&[
        "profile",
        "--probe",
        &p("probes.jsonl"),
        "--models",
        NEW,
        "--out",
        &p("new.jsonl"),
    ]);
    assert!(lines(Path::new(&p("new.jsonl"))).iter().all(|r| r["models"]
        .as_object()
        .unwrap()
        .len()
        == 1));
    let msg = common::ok(&[
        "onboard",
        "--model",
        &p("knn.rw"),
        "--outcomes",
        &p("new.jsonl"),
        "--name",
        NEW,
        "--out",
        &p("knn3.rw"),
    ]);
    assert!(msg.contains("from 25 probes"), "{msg}");
    let d: Value =
        serde_json::from_str(&common::ok(&["route", "--model", &p("knn3.rw"), "hello"])).unwrap();
    assert!(d.to_string().contains(NEW), "{d}");
}

/// Ctrl-C (SIGINT) stops the run at once with its account, and `--resume` finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_run_and_resume_finishes_it() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("The answer is (B)"));
    mock.set_model_fault("oa-up", Some(Fault::Delay(Duration::from_millis(100))));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(30, 0));
    let out = dir.path().join("pool.jsonl");
    let run_args = profile_args(
        &cfg,
        &probe_file,
        &out,
        &["--models", "oa", "--concurrency", "2"],
    );
    let child = Command::new(bin())
        .args(&run_args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines(&out).len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The shell's own `kill` (a fresh machine need not have /bin/kill).
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(sent.success());
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("interrupted:"), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    let before = lines(&out).len();
    assert!((4..30).contains(&before), "{before}");

    let mut resume = run_args.clone();
    resume.push("--resume".into());
    let o = routewise(resume).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = lines(&out);
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((rows.len(), ids.len()), (30, 30));
    // At most the two calls in flight at the interruption were made twice.
    assert!(mock.hits("oa-up") <= 32, "{}", mock.hits("oa-up"));
}

/// A judge that keeps failing is left out: its errors are reported, and the open probes
/// are not sent to the models any more (their answers could not be graded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_judge_is_left_out_and_the_open_probes_are_not_sent_on() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_model_answer("oa-up", Some("The answer is (B)"));
    mock.set_model_fault("judge-up", Some(Fault::Status(500)));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, "");
    let probe_file = dir.path().join("p.jsonl");
    write_probes(&probe_file, &probes(2, 8));
    let out = dir.path().join("pool.jsonl");
    let o = routewise_within(
        60,
        profile_args(
            &cfg,
            &probe_file,
            &out,
            &[
                "--models",
                "oa",
                "--judge",
                "judge",
                "--concurrency",
                "1",
                "--retries",
                "0",
                "--give-up-after",
                "2",
            ],
        ),
    )
    .await;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("judge judge: errors: http_5xx 2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("LEFT OUT after 2 failed calls in a row"),
        "{stderr}"
    );
    assert_eq!(mock.hits("judge-up"), 2);
    // The two closed probes and the two open ones judged before it was left out.
    assert_eq!(mock.hits("oa-up"), 4);
    assert_eq!(lines(&out).len(), 2);
}
