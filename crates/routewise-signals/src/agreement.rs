//! Semantic agreement of free-text answers: the cascade's check when there is no option
//! letter, number or field to compare (the `semantic` extractor of
//! `routewise_router::extract`, issue 13).
//!
//! Two answers agree when they are the same text, or when the cosine of their embeddings
//! (the built-in static model, as for route descriptions and the semantic cache) is at
//! least a threshold **and** they pass the semantic cache's guards ([`Guard::agrees`],
//! read by [`Guard::of_answer`]: the same numbers and negation words, each one's
//! capitalised words among the other's words). The guards are not optional here: a static
//! embedding is a weighted bag of words, so "Canberra is the capital of Australia" and
//! "Sydney is the capital of Australia" sit at cosine 0.94 and "water boils at 100
//! degrees" and "water freezes at 0 degrees" at 0.88, near or above two true paraphrases
//! (0.85); the guards veto both. What the guards do not see (a changed common noun or
//! verb, "boils" for "freezes" without a number) still agrees; BENCHMARKS.md measures the
//! rates on STS-B.
//!
//! [`Groups`] sorts the answers of one cascaded request into groups of agreeing answers
//! as they arrive: an answer joins the first group whose first answer it agrees with,
//! else starts its own, so each group has one key for the plurality rule. Pure apart from
//! computing embeddings.

use crate::cache::Guard;
use crate::describe::Embedder;

/// Whether two different texts agree: their unit embeddings' cosine is at least
/// `threshold` and their guards ([`Guard::of_answer`]) agree. (Equal texts always agree:
/// [`Groups`] checks that first, since in `f32` a vector's cosine with itself can fall a
/// hair below 1.)
pub fn agree(a: (&[f32], &Guard), b: (&[f32], &Guard), threshold: f32) -> bool {
    let cosine: f32 = a.0.iter().zip(b.0).map(|(x, y)| x * y).sum();
    cosine >= threshold && a.1.agrees(b.1)
}

/// The groups of agreeing answers of one request, in order of first arrival.
#[derive(Debug)]
pub struct Groups<'e> {
    embedder: &'e Embedder,
    threshold: f32,
    /// Each group's first answer: its text, embedding and guards.
    heads: Vec<(String, Vec<f32>, Guard)>,
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
        if let Some(k) = self.heads.iter().position(|(t, _, _)| t == answer) {
            return k;
        }
        let v = self.embedder.embed(answer);
        let g = Guard::of_answer(answer);
        if let Some(k) = self
            .heads
            .iter()
            .position(|(_, hv, hg)| agree((hv, hg), (&v, &g), self.threshold))
        {
            return k;
        }
        self.heads.push((answer.to_string(), v, g));
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

    /// Regression (review of the change): the cache's guards skip a capitalised word that
    /// opens a sentence (a prompt's first word is rarely a name), but an answer often opens
    /// with its subject: these pairs embed at 0.91-0.96 and agreed at the default 0.9.
    #[test]
    fn regression_answers_that_differ_in_their_opening_name_do_not_agree() {
        let e = embedder();
        for (a, b) in [
            (
                "Canberra is the capital of Australia.",
                "Sydney is the capital of Australia.",
            ),
            (
                "Jupiter is the largest planet in the solar system.",
                "Saturn is the largest planet in the solar system.",
            ),
            (
                "Einstein developed the theory of general relativity.",
                "Newton developed the theory of general relativity.",
            ),
        ] {
            let mut g = Groups::new(&e, 0.9);
            assert_ne!(g.key(a), g.key(b), "{a} / {b}");
        }
        // The same subject, reworded, still agrees.
        let mut g = Groups::new(&e, 0.9);
        assert_eq!(
            g.key("Canberra is the capital of Australia."),
            g.key("The capital of Australia is Canberra.")
        );
    }

    #[test]
    fn equal_texts_agree_at_any_threshold_even_without_an_embedding() {
        let e = embedder();
        let mut g = Groups::new(&e, 1.0);
        let a = g.key("Use a hash map to count the words.");
        assert_eq!(g.key("Use a hash map to count the words."), a);
        // Symbols the model has no rows for embed to nothing, yet equal texts agree.
        let b = g.key("\u{2603}\u{2603}");
        assert_eq!(g.key("\u{2603}\u{2603}"), b);
        assert_ne!(a, b);
    }

    #[test]
    fn the_threshold_decides_near_paraphrases() {
        let e = embedder();
        // (Lower-case openings: a capitalised opening word must appear in the other.)
        let a = "use a hash map to count the words, then sort by count.";
        let b = "count words with a dictionary and sort the entries by frequency.";
        let (va, vb) = (e.embed(a), e.embed(b));
        let (ga, gb) = (Guard::of_answer(a), Guard::of_answer(b));
        let cosine: f32 = va.iter().zip(&vb).map(|(x, y)| x * y).sum();
        assert!(agree((&va, &ga), (&vb, &gb), cosine - 1e-4));
        assert!(!agree((&va, &ga), (&vb, &gb), cosine + 1e-4));
        let mut strict = Groups::new(&e, 0.99);
        assert_ne!(strict.key(a), strict.key(b));
    }
}
