//! Artifact round trip and the errors for newer, corrupt, truncated and foreign files.
#![cfg(test)]

mod common;

use routewise_data::Record;
use routewise_router::{Artifact, Policy, RouterError, RouterKind, ARTIFACT_FORMAT_VERSION};

fn artifact(kind: RouterKind) -> (Artifact, Vec<Record>) {
    let ds = common::dataset(300, 2);
    (common::trained(&ds, kind), ds.test().cloned().collect())
}

#[test]
fn every_router_round_trips_with_identical_decisions() {
    let dir = tempfile::tempdir().unwrap();
    for kind in RouterKind::ALL {
        let (a, test) = artifact(kind);
        let path = dir.path().join(format!("{kind}.rw"));
        a.save(&path).unwrap();
        let b = Artifact::load(&path).unwrap();
        assert_eq!(b.meta, a.meta);
        assert_eq!(b.meta.router, kind.name());
        assert_eq!(b.meta.featurizer, "tfidf");
        assert_eq!(b.meta.models, ["a", "b", "c"]);
        // Without onboarded models, the oldest layout (readable by older builds).
        assert_eq!(b.meta.format_version, 1);
        assert_eq!(b.catalog, a.catalog);
        let (ea, eb) = (a.into_engine(), b.into_engine());
        for r in &test {
            for p in [
                Policy::Lambda(0.0),
                Policy::Lambda(50.0),
                Policy::BudgetUsd(1e-4),
            ] {
                let (x, y) = (
                    ea.decide(&r.prompt, r.input_tokens(), p),
                    eb.decide(&r.prompt, r.input_tokens(), p),
                );
                assert_eq!(x.ranking, y.ranking, "{kind}");
                assert_eq!(x.scores, y.scores, "{kind}");
                assert_eq!(x.costs, y.costs, "{kind}");
            }
        }
    }
}

#[test]
fn the_header_is_human_readable() {
    let (a, _) = artifact(RouterKind::Knn);
    let bytes = a.to_bytes().unwrap();
    let head = String::from_utf8_lossy(&bytes[..600.min(bytes.len())]);
    assert!(head.starts_with("ROUTEWISE-ARTIFACT format=1 "), "{head}");
    assert!(head.contains("\"router\": \"knn\""), "{head}");
    assert!(head.contains("\"dataset\": \"synthetic.jsonl\""), "{head}");
}

fn artifact_err(r: Result<Artifact, RouterError>) -> String {
    match r {
        Err(e @ RouterError::Artifact(_)) => e.to_string(),
        Err(other) => panic!("not an artifact error: {other}"),
        Ok(_) => panic!("loaded"),
    }
}

#[test]
fn a_newer_format_is_refused_naming_both_versions() {
    let (a, _) = artifact(RouterKind::BestSingle);
    let bytes = a.to_bytes().unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let line_end = bytes.iter().position(|&b| b == b'\n').unwrap();
    let newer = ARTIFACT_FORMAT_VERSION + 1;
    let mut b = text[..line_end]
        .replace("format=1", &format!("format={newer}"))
        .into_bytes();
    b.extend_from_slice(&bytes[line_end..]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.rw");
    std::fs::write(&path, &b).unwrap();
    let e = artifact_err(Artifact::load(&path));
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(
        e.contains(&format!("format version {newer}"))
            && e.contains(&format!("format version {ARTIFACT_FORMAT_VERSION}")),
        "{e}"
    );
}

#[test]
fn corrupt_truncated_and_foreign_files_are_refused() {
    let (a, _) = artifact(RouterKind::Knn);
    let bytes = a.to_bytes().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped.rw",
            {
                let mut b = bytes.clone();
                let i = b.len() / 2;
                b[i] ^= 0x55;
                b
            },
            "checksum",
        ),
        (
            "truncated.rw",
            bytes[..bytes.len() - 100].to_vec(),
            "checksum",
        ),
        ("tiny.rw", bytes[..40].to_vec(), "not a routewise artifact"),
        (
            "text.rw",
            b"{\"hello\": \"world\"}\n".to_vec(),
            "not a routewise artifact",
        ),
        ("empty.rw", Vec::new(), "not a routewise artifact"),
    ];
    for (name, b, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &b).unwrap();
        let e = artifact_err(Artifact::load(&path));
        assert!(e.contains(want), "{name}: {e}");
        assert!(e.starts_with(&path.display().to_string()), "{name}: {e}");
    }
    let missing = dir.path().join("missing.rw");
    let e = artifact_err(Artifact::load(&missing));
    assert!(e.contains("missing.rw") && e.contains("cannot read"), "{e}");
}

/// A calibrated cascade travels in the header (format 3) and is checked on load.
#[test]
fn a_calibrated_cascade_round_trips_at_format_3_and_a_bad_one_is_refused() {
    use routewise_router::artifact::CalibratedCascade;
    use routewise_router::cascade::{Acceptor, Cascade, CascadeRule};
    let (mut a, _) = artifact(RouterKind::Knn);
    let cascade = |tier: Vec<usize>, threshold: f64| CalibratedCascade {
        cascade: Cascade {
            tier,
            rule: CascadeRule::Chain {
                threshold,
                step_discount: 0.0,
            },
            acceptor: Some(Acceptor {
                weights: vec![[0.5, 1.0, 2.0, 0.0, -1.0, -0.5]],
                escalate: vec![],
            }),
        },
        alpha: 0.02,
        delta: 0.1,
        lambda: 0.0,
        n_calibration: 90,
    };
    a.meta.cascade = Some(cascade(vec![2, 0], 0.8));
    let bytes = a.to_bytes().unwrap();
    assert!(bytes.starts_with(b"ROUTEWISE-ARTIFACT format=3 "));
    let b = Artifact::from_bytes(&bytes).unwrap();
    assert_eq!(b.meta.cascade, a.meta.cascade);
    assert_eq!(b.meta.format_version, 3);
    for (tier, threshold, want) in [
        (vec![3], 0.8, "tier names model 3 of 3"),
        (vec![1, 1], 0.8, "lists model 1 twice"),
        (vec![], 0.8, "tier is empty"),
        (vec![1], 1.5, "threshold in [0, 1]"),
    ] {
        a.meta.cascade = Some(cascade(tier, threshold));
        let e = artifact_err(Artifact::from_bytes(&a.to_bytes().unwrap()));
        assert!(e.contains(want), "{want} not in {e}");
    }
    let refused = |c: CalibratedCascade, want: &str| {
        let mut b = a.clone();
        b.meta.cascade = Some(c);
        let e = artifact_err(Artifact::from_bytes(&b.to_bytes().unwrap()));
        assert!(e.contains(want), "{want} not in {e}");
    };
    let mut c = cascade(vec![1], 0.8);
    c.cascade.acceptor = None;
    refused(c, "has no acceptor");
    // (A non-finite weight cannot even be written as JSON; the check refuses it in memory.)
    let mut c = cascade(vec![1], 0.8);
    c.cascade.acceptor.as_mut().unwrap().weights[0][2] = f64::NAN;
    assert!(c.check(3).unwrap_err().contains("not finite"));
    let mut c = cascade(vec![1], 0.8);
    c.cascade.rule = CascadeRule::Agreement { min_agree: 1 };
    refused(c, "not a chain");
}
