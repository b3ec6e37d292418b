//! Acknowledged feedback survives `kill -9`: a child process (this test binary re-run
//! as `child_writer`) records decisions and applies feedback to a redb store, printing
//! `ACK <id>` after each acknowledged feedback; the parent SIGKILLs it, reopens the
//! store, and checks that the statistics equal a replay of exactly the acknowledged
//! feedback and that idempotency survived the restart.
#![cfg(test)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use routewise_online::feedback::ValidFeedback;
use routewise_online::{ArmStats, DecisionRecord, FeedbackEntry, FeedbackError, LocalStore};

const GAMMA: f64 = 0.99;
const LAMBDA0: f64 = 2.0;
const TTL_MS: u64 = 3_600_000;
const N_ACK: usize = 40;

fn decision(i: usize) -> DecisionRecord {
    let t = i as f64;
    DecisionRecord {
        id: format!("dec-{i:04}"),
        model: if i.is_multiple_of(3) {
            "small".into()
        } else {
            "large".into()
        },
        x: vec![
            1.0,
            (t * 0.37).sin(),
            (t * 0.11).cos(),
            0.5 - (i % 5) as f64 * 0.2,
        ],
        prior_reward: 0.4 + (i % 7) as f64 * 0.05,
        lambda: None,
        cost_usd: 0.001 * (i % 4) as f64,
        latency_ms: Some(100.0 + t),
        created_ms: 1_000,
        cascade: None,
        replay: None,
    }
}

fn feedback(i: usize) -> ValidFeedback {
    ValidFeedback {
        decision_id: format!("dec-{i:04}"),
        score: if i.is_multiple_of(2) { 1.0 } else { 0.25 },
        cost_usd: None,
        latency_ms: None,
    }
}

fn apply(store: &LocalStore, i: usize) -> Result<(FeedbackEntry, ArmStats), FeedbackError> {
    let fb = feedback(i);
    store.apply_feedback(
        &fb.decision_id.clone(),
        2_000,
        TTL_MS,
        GAMMA,
        LAMBDA0,
        |d| FeedbackEntry::new(&fb, d, 10.0, 2_000),
    )
}

/// Child body: only does something when run by `acknowledged_feedback_survives_kill_9`.
#[test]
#[ignore = "child process of acknowledged_feedback_survives_kill_9"]
fn child_writer() {
    let Ok(path) = std::env::var("ROUTEWISE_ONLINE_CHILD_STORE") else {
        return;
    };
    let store = LocalStore::open(Path::new(&path)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..N_ACK {
        store.record_decision(&decision(i)).unwrap();
        apply(&store, i).unwrap();
        writeln!(out, "ACK {i}").unwrap();
        out.flush().unwrap();
    }
    // Keep writing unacknowledged decisions until killed (bounded, so a broken parent
    // still sees EOF).
    for i in N_ACK..200_000 {
        store.record_decision(&decision(i)).unwrap();
    }
}

#[test]
fn acknowledged_feedback_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ROUTEWISE_ONLINE_CHILD_STORE", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // The harness prints `test child_writer ... ` before the first line.
        if let Some(pos) = line.find("ACK ") {
            acked.push(line[pos + 4..].trim().parse::<usize>().unwrap());
            if acked.len() == N_ACK {
                break;
            }
        }
    }
    assert_eq!(acked.len(), N_ACK, "child stopped early");
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    // Expected statistics: replay the acknowledged feedback in memory.
    let mut want: std::collections::BTreeMap<String, ArmStats> = Default::default();
    for &i in &acked {
        let d = decision(i);
        let e = FeedbackEntry::new(&feedback(i), &d, 10.0, 2_000);
        want.entry(d.model.clone())
            .or_insert_with(|| ArmStats::prior(d.x.len(), LAMBDA0))
            .update(&d.x, e.residual, GAMMA, LAMBDA0);
    }

    let store = LocalStore::open(&path).unwrap();
    let got: std::collections::BTreeMap<String, ArmStats> =
        store.load_arms().unwrap().into_iter().collect();
    assert_eq!(got, want);
    assert_eq!(store.feedback_log().unwrap().len(), N_ACK);
    // Idempotency survived: a replayed feedback is a duplicate, stats unchanged.
    assert_eq!(
        apply(&store, 0).unwrap_err(),
        FeedbackError::Duplicate("dec-0000".into())
    );
    // And the store keeps working after the restart.
    store.record_decision(&decision(9_999)).unwrap();
    let (_, s) = apply(&store, 9_999).unwrap();
    assert_eq!(s.n, want["small"].n + 1);
}
