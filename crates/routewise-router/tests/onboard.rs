//! Onboarding a model onto a trained artifact (`routewise_router::onboard`): a model the
//! router never saw is routed to where it is good after a few probes, the artifact
//! round-trips, a second model stacks on the same base, and bad requests are refused.
#![cfg(test)]

mod common;

use routewise_data::Record;
use routewise_router::onboard::{onboard, NewModel};
use routewise_router::{AnyRouter, Artifact, ModelInfo, Policy, RouterError, RouterKind};

/// An artifact of `kind` trained on models `a` and `c` only (the synthetic data's `b`,
/// right exactly where `a` is wrong, is left out), and the data.
fn without_b(kind: RouterKind) -> (Artifact, routewise_data::Dataset) {
    let mut ds = common::dataset(300, 3);
    let full = ds.clone();
    ds.models = vec!["a".into(), "c".into()];
    for r in &mut ds.records {
        r.outcomes.remove(1);
    }
    (common::trained(&ds, kind), full)
}

fn b_info() -> ModelInfo {
    ModelInfo::flat("b", 8.0)
}

#[test]
fn a_model_onboarded_from_probes_is_routed_where_it_is_good() {
    let (mut art, full) = without_b(RouterKind::Knn);
    // A calibrated cascade, which onboarding must drop (its calibration no longer holds).
    art.meta.cascade = Some(routewise_router::artifact::CalibratedCascade {
        cascade: routewise_router::cascade::Cascade {
            tier: vec![1],
            rule: routewise_router::cascade::CascadeRule::Chain {
                threshold: 0.5,
                step_discount: 0.0,
            },
            acceptor: Some(routewise_router::cascade::Acceptor {
                weights: vec![[0.0; 6]],
                escalate: vec![],
            }),
        },
        alpha: 0.02,
        delta: 0.1,
        lambda: 0.0,
        n_calibration: 10,
    });
    // 30 train prompts as probes, with b's outcomes and the known models' recorded ones.
    let probes: Vec<&Record> = full
        .train()
        .filter(|r| r.outcomes[1].is_some())
        .take(30)
        .collect();
    let prompts: Vec<&str> = probes.iter().map(|r| r.prompt.as_str()).collect();
    let scores: Vec<f64> = probes
        .iter()
        .map(|r| r.outcomes[1].as_ref().unwrap().score)
        .collect();
    let recorded: Vec<f64> = probes
        .iter()
        .flat_map(|r| [0, 2].map(|m| r.outcomes[m].as_ref().unwrap().score))
        .collect();
    let new = NewModel {
        info: b_info(),
        prompts: &prompts,
        scores: &scores,
        recorded: &recorded,
    };
    let (art, fit) = onboard(art, &new, 7).unwrap();
    assert_eq!(art.meta.models, ["a", "c", "b"]);
    assert_eq!(
        art.meta.cascade, None,
        "a calibrated cascade does not survive onboarding"
    );
    // Format 2: a build that predates onboarding says "newer", not "corrupt".
    assert_eq!(art.format_needed(), 2);
    assert_eq!(art.meta.format_version, 2);
    assert!(art
        .to_bytes()
        .unwrap()
        .starts_with(b"ROUTEWISE-ARTIFACT format=2 "));
    assert_eq!(art.meta.router, "knn", "an onboarded router keeps its kind");
    let rec = &art.meta.onboarded[0];
    assert_eq!(
        (rec.name.as_str(), rec.probes, rec.created_unix),
        ("b", 30, 7)
    );
    let (loo, prior) = (fit.loo_rmse.unwrap(), fit.prior_rmse.unwrap());
    assert!(loo < prior / 2.0, "the head beats the mean model: {fit:?}");

    // Round trip, then route the test prompts quality first: b takes the cooking
    // prompts (cluster 1), a the arithmetic ones.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("onboarded.rw");
    art.save(&path).unwrap();
    let back = Artifact::load(&path).unwrap();
    assert_eq!(back.meta, art.meta);
    let engine = back.into_engine();
    let mut right = 0;
    let test: Vec<&Record> = full.test().collect();
    for r in &test {
        let d = engine.decide(&r.prompt, r.input_tokens(), Policy::Lambda(0.0));
        let want = if r.task == "cluster1" { 2 } else { 0 };
        right += usize::from(d.ranking[0] == want);
    }
    assert!(
        right * 10 >= test.len() * 9,
        "{right} of {} routed to the right model",
        test.len()
    );
}

#[test]
fn a_second_model_stacks_on_the_same_base_and_bad_requests_are_refused() {
    let (art, _) = without_b(RouterKind::Linear);
    let none = NewModel {
        info: b_info(),
        prompts: &[],
        scores: &[],
        recorded: &[],
    };
    let (art, fit) = onboard(art, &none, 0).unwrap();
    assert_eq!(fit.loo_rmse, None);
    assert_eq!(art.meta.onboarded[0].probes, 0);
    // The same name again is refused; another name stacks.
    let again = onboard(art.clone(), &none, 0);
    assert!(
        matches!(&again, Err(RouterError::Fit { message, .. }) if message.contains("already has a model named `b`")),
        "{again:?}"
    );
    let d = NewModel {
        info: ModelInfo::flat("d", 1.0),
        ..none.clone()
    };
    let (art, _) = onboard(art, &d, 0).unwrap();
    assert_eq!(art.meta.models, ["a", "c", "b", "d"]);
    match &art.router {
        AnyRouter::Onboarded(o) => {
            assert_eq!(o.n_base(), 2);
            assert_eq!(o.heads().len(), 2);
        }
        other => panic!("{other:?}"),
    }
    // Price-only models predict the mean of the known models.
    let e = art.into_engine();
    let dec = e.decide("please solve the integral", 5, Policy::Lambda(0.0));
    let mean = (dec.scores[0] + dec.scores[1]) / 2.0;
    assert!((dec.scores[2] - mean).abs() < 1e-9 && (dec.scores[3] - mean).abs() < 1e-9);

    // A score outside [0, 1], a length mismatch, and a baseline router are refused.
    let (art, _) = without_b(RouterKind::Knn);
    let bad = NewModel {
        prompts: &["x"],
        scores: &[1.5],
        ..none.clone()
    };
    assert!(onboard(art.clone(), &bad, 0).is_err());
    let short = NewModel {
        prompts: &["x", "y"],
        scores: &[1.0],
        ..none.clone()
    };
    assert!(onboard(art, &short, 0).is_err());
    let (base, _) = without_b(RouterKind::BestSingle);
    let r = onboard(base, &none, 0);
    assert!(
        matches!(&r, Err(RouterError::Fit { message, .. }) if message.contains("baseline")),
        "{r:?}"
    );
}
