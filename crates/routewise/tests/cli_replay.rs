//! CLI integration test of `routewise replay --validate` on a slice of the shared
//! RouterBench data: the JSON report's shape, and what the estimators must show whatever
//! the seed (unbiased on the logger's own policy, DR no worse than IPS, errors shrinking
//! with the log size).
#![cfg(test)]

mod common;
use common::{data_file, ok, routewise};

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn validate_reports_the_estimators_accuracy_against_the_truth() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("slice.jsonl");
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().take(1200).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("ope.json");
    let table = ok(&[
        "replay",
        "--validate",
        "--data",
        data.to_str().unwrap(),
        "--runs",
        "60",
        "--sizes",
        "300,3000",
        "--bootstrap",
        "100",
        "--epsilon",
        "0.2",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(table.contains("identification"), "{table}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(r["runs"], 60);
    assert_eq!(f(&r["epsilon"]), 0.2);
    assert_eq!(r["log_sizes"], serde_json::json!([300, 3000]));
    assert_eq!(r["reference_size"], 3000);
    for e in ["ips", "snips", "dr"] {
        for k in ["bias", "rmse", "coverage"] {
            assert!(r["estimators"][e][k].is_number(), "{e}.{k}");
        }
    }
    // The first candidate is the logger's own policy.
    let c = &r["candidates"][0];
    assert_eq!(f(&c["agreement"]), 1.0);
    let by = r["by_size"].as_array().unwrap();
    let (small, large) = (&by[0]["estimators"], &by[1]["estimators"]);
    let logger_dr = &large["dr"]["by_candidate"][0];
    assert!(f(&logger_dr["bias"]).abs() < 0.01, "{logger_dr}");
    assert!(f(&logger_dr["coverage"]) >= 0.8, "{logger_dr}");
    // DR's direct model can only reduce the variance the weights bring.
    assert!(
        f(&large["dr"]["rmse"]) <= f(&large["ips"]["rmse"]),
        "{large}"
    );
    // Ten times the decisions, about a third of the error.
    for e in ["ips", "snips", "dr"] {
        assert!(
            f(&large[e]["rmse"]) < 0.6 * f(&small[e]["rmse"]),
            "{e}: {} vs {}",
            large[e]["rmse"],
            small[e]["rmse"]
        );
    }
    // Pairs far apart are told apart, and never the wrong way round.
    let ident = by[1]["identification"].as_array().unwrap();
    let far: Vec<&Value> = ident.iter().filter(|p| f(&p["true_gap"]) > 0.2).collect();
    assert!(!far.is_empty(), "{ident:?}");
    for p in far {
        assert!(f(&p["identified"]) > 0.75 && f(&p["wrong"]) == 0.0, "{p}");
    }
}

#[test]
fn validate_refuses_bad_settings() {
    let Some(src) = data_file() else { return };
    let src = src.to_str().unwrap();
    for bad in [
        &["--epsilon", "0"][..],
        &["--epsilon", "1.5"],
        &["--runs", "0"],
        &["--lambda=-1"],
    ] {
        let mut args = vec!["replay", "--validate", "--data", src];
        args.extend_from_slice(bad);
        let o = routewise(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        let flag = bad[0].split('=').next().unwrap();
        assert!(err.contains(flag), "{bad:?}: {err}");
    }
}

/// One HTTP/1.1 exchange over a fresh loopback connection: (status, head, body).
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The gateway with exploration, prompt logging, feedback and a shadow router, a few
/// hundred requests and their feedback, the shadow's live statistics, then `replay --log`
/// with the same artifact on the gateway's own log.
#[test]
#[cfg(unix)]
fn replay_estimates_a_candidate_on_the_gateways_own_log() {
    let Some(src) = data_file() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let models = [
        "gpt-4-1106-preview",
        "gpt-3.5-turbo-1106",
        "claude-v2",
        "claude-v1",
        "claude-instant-v1",
        "meta/llama-2-70b-chat",
        "mistralai/mixtral-8x7b-chat",
        "mistralai/mistral-7b-chat",
        "zero-one-ai/Yi-34B-Chat",
        "meta/code-llama-instruct-34b-chat",
        "WizardLM/WizardLM-13B-V1.2",
    ];
    // The candidate: kNN trained on a slice of the shared data; it also runs as a shadow.
    let data = d.join("slice.jsonl");
    let text = std::fs::read_to_string(src).unwrap();
    std::fs::write(
        &data,
        text.lines().take(400).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let cand = d.join("cand.rw");
    ok(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--router",
        "knn",
        "--out",
        cand.to_str().unwrap(),
    ]);
    let mut cfg = format!(
        "listen: 127.0.0.1:{port}\nrouter: {{policy: {{lambda: 100}}, exploration: {{epsilon: 0.3}}}}\n\
         bandit: {{}}\nstate: {{path: {}}}\nlog: {{decisions: {{prompt: true}}}}\n\
         shadow: [{{name: next, artifact: {}, policy: {{lambda: 0}}}}]\nmodels:\n",
        d.join("state.redb").display(),
        cand.display()
    );
    for m in models {
        cfg.push_str(&format!("  - {{name: {m}, provider: replay}}\n"));
    }
    std::fs::write(d.join("gw.yaml"), cfg).unwrap();
    let log_path = d.join("gw.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_routewise"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(d.join("gw.yaml"))
        .env("ROUTEWISE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the gateway did not start");
    let topics = [
        "a sorting algorithm in rust",
        "the causes of the first world war",
        "integrate x^2 sin x",
        "a haiku about autumn",
        "the capital of australia",
    ];
    let (mut sent, mut explored) = (0, 0);
    for i in 0..240 {
        let prompt = format!("Explain {} (variant {i}).", topics[i % topics.len()]);
        let body =
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": prompt}]});
        let (status, head, _) = http(port, "POST", "/v1/chat/completions", &body.to_string());
        assert_eq!(status, 200, "{head}");
        let id = header(&head, "x-routewise-decision-id")
            .unwrap()
            .to_string();
        let model = header(&head, "x-routewise-model").unwrap().to_string();
        // A made-up judge: the dear models answer better.
        let score = if model.starts_with("gpt-4") || model.starts_with("claude-v") {
            0.9
        } else {
            0.4
        };
        let fb = serde_json::json!({"decision_id": id, "score": score});
        let (status, _, ack) = http(port, "POST", "/v1/feedback", &fb.to_string());
        assert_eq!(status, 200, "{ack}");
        sent += 1;
    }
    // The shadow saw every routed request, and the feedback.
    let stats = (0..100).find_map(|_| {
        let (_, _, body) = http(port, "GET", "/v1/stats/shadow", "");
        let v: Value = serde_json::from_str(&body).unwrap();
        let s = v["data"][0].clone();
        if s["feedback"].as_u64() == Some(sent as u64) {
            Some(s)
        } else {
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        }
    });
    let stats = stats.expect("the shadow's statistics did not reach every feedback");
    assert_eq!(stats["name"], "next");
    assert_eq!(stats["decisions"].as_u64(), Some(sent as u64));
    let agreement = f(&stats["agreement"]);
    assert!((0.0..=1.0).contains(&agreement), "{stats}");
    let q = f(&stats["quality_dr"]);
    let (lo, hi) = (f(&stats["quality_dr_ci"][0]), f(&stats["quality_dr_ci"][1]));
    assert!(lo <= q && q <= hi, "{stats}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    for line in log.lines().filter(|l| l.contains("routewise::decision")) {
        let v: Value = serde_json::from_str(line).unwrap();
        let f = &v["fields"];
        assert!(
            f["prompt"].as_str().unwrap().starts_with("Explain"),
            "{line}"
        );
        let p = f["propensity"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{line}");
        if f["explored"] == true {
            explored += 1;
            assert!(p < 0.1, "{line}");
        }
    }
    assert!(
        explored > 20 && explored < 120,
        "{explored} of {sent} explored"
    );
    assert_eq!(log.matches("routewise::feedback").count(), sent);
    assert_eq!(log.matches("routewise::shadow").count(), sent);

    let out = d.join("replay.json");
    let table = ok(&[
        "replay",
        "--log",
        log_path.to_str().unwrap(),
        "--router",
        cand.to_str().unwrap(),
        "--policy",
        "lambda=0",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(table.contains("decisions used"), "{table}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let n = r["n"].as_u64().unwrap() as usize;
    // Every answered decision had feedback; none fell back (the replay models do not fail).
    assert_eq!(n, sent, "{r}");
    assert_eq!(r["explored"].as_u64().unwrap() as usize, explored);
    let agreement = f(&r["agreement"]);
    assert!((0.0..=1.0).contains(&agreement));
    assert!(f(&r["ess"]) > 0.0);
    for e in ["ips", "snips", "dr"] {
        let est = &r["estimates"][e];
        let (v, lo, hi) = (f(&est["reward"]), f(&est["ci"][0]), f(&est["ci"][1]));
        assert!(lo <= v && v <= hi, "{e}: {est}");
        assert!(est["quality"]["value"].is_number() && est["cost"]["value"].is_number());
    }
    // At lambda 0 the reward is the score: the logged policy's mean is the mean feedback.
    assert!((f(&r["logged"]["reward"]) - f(&r["logged"]["quality"])).abs() < 1e-12);

    // The shadow evaluated from its own log lines (no artifact, no prompts): the same
    // point estimate of its quality as the gateway's running statistics.
    let out3 = d.join("replay-shadow.json");
    ok(&[
        "replay",
        "--log",
        log_path.to_str().unwrap(),
        "--shadow",
        "next",
        "--json",
        out3.to_str().unwrap(),
    ]);
    let r3: Value = serde_json::from_str(&std::fs::read_to_string(&out3).unwrap()).unwrap();
    assert_eq!(r3["n"].as_u64().unwrap() as usize, sent);
    assert!(
        (f(&r3["agreement"]) - f(&stats["agreement"])).abs() < 1e-9,
        "{r3}"
    );
    let (batch, running) = (
        f(&r3["estimates"]["dr"]["quality"]["value"]),
        f(&stats["quality_dr"]),
    );
    assert!((batch - running).abs() < 1e-9, "{batch} vs {running}");
    let o = routewise(&[
        "replay",
        "--log",
        log_path.to_str().unwrap(),
        "--shadow",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`nope`") && err.contains("next"), "{err}");

    // The same decisions exported from the state store (the gateway is stopped, so its
    // redb file is free) replay to the same point estimates.
    let export = d.join("export.jsonl");
    let msg = ok(&[
        "logs",
        "export",
        "--config",
        d.join("gw.yaml").to_str().unwrap(),
        "--since",
        "1h",
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(msg.contains(&format!("wrote {sent} decisions")), "{msg}");
    let out2 = d.join("replay-export.json");
    ok(&[
        "replay",
        "--log",
        export.to_str().unwrap(),
        "--router",
        cand.to_str().unwrap(),
        "--policy",
        "lambda=0",
        "--json",
        out2.to_str().unwrap(),
    ]);
    let r2: Value = serde_json::from_str(&std::fs::read_to_string(&out2).unwrap()).unwrap();
    assert_eq!(r2["n"], r["n"]);
    assert_eq!(r2["agreement"], r["agreement"]);
    for e in ["ips", "snips", "dr"] {
        let (a, b) = (
            f(&r["estimates"][e]["reward"]),
            f(&r2["estimates"][e]["reward"]),
        );
        assert!((a - b).abs() < 1e-9, "{e}: {a} vs {b}");
    }

    // Bad input is refused with the line: no propensity, no prompt.
    let first = log
        .lines()
        .position(|l| l.contains("routewise::decision"))
        .unwrap();
    for (key, needle) in [
        ("propensity", "propensity"),
        ("prompt", "log.decisions.prompt"),
    ] {
        let edited: Vec<String> = log
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == first {
                    let mut v: Value = serde_json::from_str(l).unwrap();
                    v["fields"].as_object_mut().unwrap().remove(key);
                    v.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        let bad = d.join(format!("no-{key}.log"));
        std::fs::write(&bad, edited.join("\n")).unwrap();
        let o = routewise(&[
            "replay",
            "--log",
            bad.to_str().unwrap(),
            "--router",
            cand.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(":{}:", first + 1)) && err.contains(needle),
            "{err}"
        );
    }
}
