//! Semantic agreement of free-text answers: the cascade's check when there is no option
//! letter, number or field to compare (the `semantic` extractor of
//! `routewise_router::extract`, issue 13).
//!
//! Two answers agree when the cosine of their embeddings (the built-in static model, as
//! for route descriptions and the semantic cache) is at least a threshold **and** they
//! pass the semantic cache's guards ([`Guard::agrees`]: the same numbers and negation
//! words, each one's capitalised names among the other's words). The guards are not
//! optional here: a static embedding is a weighted bag of words, so "The capital is
//! Paris" and "The capital is Lyon" sit at cosine 0.89 and "water boils at 100 degrees" and
//! "water freezes at 0 degrees" at 0.88, above the 0.85 of two true paraphrases; the
//! guards veto both. What the guards do not see (a changed common noun or verb, "boils"
//! for "freezes" without a number) still agrees; BENCHMARKS.md measures the rates on STS-B.
//!
//! [`Groups`] sorts the answers of one cascaded request into groups of agreeing answers
//! as they arrive: an answer joins the first group whose first answer it agrees with,
//! else starts its own, so each group has one key for the plurality rule. Pure apart from
//! computing embeddings.

use crate::cache::Guard;
use crate::describe::Embedder;

/// Whether two answers agree: their unit embeddings' cosine is at least `threshold` and
/// their guards agree.
pub fn agree(a: (&[f32], &Guard), b: (&[f32], &Guard), threshold: f32) -> bool {
    let cosine: f32 = a.0.iter().zip(b.0).map(|(x, y)| x * y).sum();
    cosine >= threshold && a.1.agrees(b.1)
}

/// The groups of agreeing answers of one request, in order of first arrival.
#[derive(Debug)]
pub struct Groups<'e> {
    embedder: &'e Embedder,
    threshold: f32,
    /// Each group's first answer: its embedding and guards.
    heads: Vec<(Vec<f32>, Guard)>,
}

impl<'e> Groups<'e> {
    pub fn new(embedder: &'e Embedder, threshold: f32) -> Groups<'e> {
        Groups {
            embedder,
            threshold,
            heads: Vec::new(),
        }
    }

    /// The group of `answer` (an index, stable for the request): the first group whose
    /// first answer it agrees with, else a new one.
    pub fn key(&mut self, answer: &str) -> usize {
        let v = self.embedder.embed(answer);
        let g = Guard::of(answer);
        if let Some(k) = self
            .heads
            .iter()
            .position(|(hv, hg)| agree((hv, hg), (&v, &g), self.threshold))
        {
            return k;
        }
        self.heads.push((v, g));
        self.heads.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedder() -> Embedder {
        Embedder::builtin().expect("the built-in model")
    }

    #[test]
    fn paraphrases_share_a_group_and_other_answers_do_not() {
        let e = embedder();
        let mut g = Groups::new(&e, 0.85);
        let paris = g.key("The capital of France is Paris.");
        assert_eq!(g.key("Paris is the capital of France."), paris);
        // Close in the embedding (a bag of words), vetoed by the guards: another name.
        assert_ne!(g.key("The capital of France is Lyon."), paris);
        // Another number.
        let boils = g.key("Water boils at 100 degrees Celsius at sea level.");
        assert_ne!(boils, paris);
        assert_ne!(
            g.key("Water boils at 90 degrees Celsius at sea level."),
            boils
        );
        // A negation.
        let safe = g.key("Raw eggs are safe to eat when pasteurised.");
        assert_ne!(
            g.key("Raw eggs are not safe to eat when pasteurised."),
            safe
        );
        // Unrelated text is its own group.
        let other = g.key("Reverse the string and compare it with the original.");
        assert!(![paris, boils, safe].contains(&other));
    }

    #[test]
    fn the_threshold_decides_near_paraphrases() {
        let e = embedder();
        let a = "Use a hash map to count the words, then sort by count.";
        let b = "Count words with a dictionary and sort the entries by frequency.";
        let (va, vb) = (e.embed(a), e.embed(b));
        let (ga, gb) = (Guard::of(a), Guard::of(b));
        let cosine: f32 = va.iter().zip(&vb).map(|(x, y)| x * y).sum();
        assert!(agree((&va, &ga), (&vb, &gb), cosine - 1e-4));
        assert!(!agree((&va, &ga), (&vb, &gb), cosine + 1e-4));
        let mut strict = Groups::new(&e, 0.99);
        assert_ne!(strict.key(a), strict.key(b));
    }
}
