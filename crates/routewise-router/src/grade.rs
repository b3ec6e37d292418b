//! Grading a model's answer to a probe prompt (`routewise profile`), without I/O.
//!
//! * **Against a reference** (closed-form items): the extractor is chosen by the
//!   reference's form ([`extractor_for`]): an option letter (A-J) is read with `choice`,
//!   a number with `number`, anything else with `exact`. Answer and reference are
//!   normalised by the same extractor and compared with `==`: score 1 or 0, the
//!   extracted answer kept (`None`: nothing could be read, which is wrong).
//!   [`format_instruction`] is the system message that asks a model for an answer in
//!   the form that extractor reads (MMLU-Pro's "the answer is (X)" convention).
//! * **By a judge** (items without a reference): a single-answer rubric in the manner of
//!   MT-Bench's single-answer grading (Zheng et al., 2023, "Judging LLM-as-a-judge"):
//!   the judge sees the question and the answer, rates helpfulness, correctness and
//!   completeness on 1-10, and ends with `Rating: N` ([`JUDGE_RUBRIC`],
//!   [`judge_prompt`]). [`parse_rating`] reads the last such rating (also MT-Bench's
//!   `[[N]]`) and maps 1..10 onto [0, 1] as (N - 1) / 9; anything else is a parse
//!   failure, which the caller retries and then records as missing, never as 0.

use crate::extract::Extractor;

/// The extractor a reference calls for: `choice` for one option letter (A-J), `number`
/// for a number, else `exact`.
pub fn extractor_for(reference: &str) -> Extractor {
    let r = reference.trim();
    if r.len() == 1 && r.chars().all(|c| ('A'..='J').contains(&c)) {
        Extractor::Choice
    } else if is_number(r) {
        Extractor::Number
    } else {
        Extractor::Exact
    }
}

/// Whether `s` is a number and nothing else (`-1,200.5`, `.5`).
fn is_number(s: &str) -> bool {
    let t = s.strip_prefix('-').unwrap_or(s);
    t.chars().any(|c| c.is_ascii_digit())
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
        && t.replace(',', "").parse::<f64>().is_ok()
}

/// A graded answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Graded {
    /// 1 when the extracted answer equals the reference, else 0.
    pub score: f64,
    /// The extracted answer (`None`: nothing could be read).
    pub answer: Option<String>,
}

/// Grades `text` against `reference` (see the module docs).
pub fn grade(reference: &str, text: &str) -> Graded {
    let extractor = extractor_for(reference);
    let want = extractor
        .extract(reference)
        .unwrap_or_else(|| reference.trim().to_string());
    let answer = extractor.extract(text);
    Graded {
        score: if answer.as_deref() == Some(want.as_str()) {
            1.0
        } else {
            0.0
        },
        answer,
    }
}

/// The system message asking for an answer in the form [`grade`] reads for `reference`.
pub fn format_instruction(reference: &str) -> &'static str {
    match extractor_for(reference) {
        Extractor::Choice => {
            "Answer the question. End your reply with a final line of the form \
             \"The answer is (X)\", where X is the letter of the correct option."
        }
        Extractor::Number => {
            "Answer the question. End your reply with a final line of the form \
             \"The answer is N\", where N is the number."
        }
        _ => "Answer the question. Reply with the final answer only.",
    }
}

/// The judge's instructions (the system message of a judge call).
pub const JUDGE_RUBRIC: &str = "You are an impartial judge. You will see a user's question \
and an AI assistant's answer. Rate the answer for correctness, helpfulness, relevance and \
completeness, as an expert in the question's subject would. Be strict: an answer with a \
factual or logical error cannot score above 4; an answer that does not address the \
question scores 1. Explain your judgement in at most three sentences, then end with a \
final line of exactly this form: \"Rating: N\", where N is an integer from 1 (useless) \
to 10 (perfect).";

/// The judge's user message for `question` answered by `answer`.
pub fn judge_prompt(question: &str, answer: &str) -> String {
    format!(
        "[Question]\n{question}\n\n[The start of the assistant's answer]\n{answer}\n\
         [The end of the assistant's answer]"
    )
}

/// The judge's rating in [0, 1]: the last word `rating` followed by N in 1..=10
/// (`Rating: N`, `**Rating:** [[N]]`, `Rating (1-10): N`), else the last `[[N]]`, mapped
/// as (N - 1) / 9; `None` when there is none.
pub fn parse_rating(text: &str) -> Option<f64> {
    let t = text.as_bytes();
    let key = b"rating";
    let word_at = |i: usize| {
        t[i..].len() >= key.len()
            && t[i..i + key.len()].eq_ignore_ascii_case(key)
            && (i == 0 || !t[i - 1].is_ascii_alphanumeric())
            && t.get(i + key.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric())
    };
    let after_key = (0..t.len()).rev().filter(|&i| word_at(i)).find_map(|i| {
        let mut rest = text[i + key.len()..].trim_start();
        // A scale in parentheses ("(1-10)", "(out of 10)") is not the rating.
        if let Some(r) = rest.strip_prefix('(') {
            if let Some(end) = r.find(')') {
                rest = &r[end + 1..];
            }
        }
        let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || ":=*[".contains(c));
        leading_int(rest).filter(|n| (1..=10).contains(n))
    });
    let bracketed = || {
        let at = text.rfind("[[")?;
        leading_int(&text[at + 2..]).filter(|n| (1..=10).contains(n))
    };
    let n = after_key.or_else(bracketed)?;
    Some(f64::from(n - 1) / 9.0)
}

/// The integer `s` starts with, when it is not the integer part of a fraction
/// (`7/10` is read as 7, `7.5` is refused).
fn leading_int(s: &str) -> Option<u32> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > 2 {
        return None;
    }
    let next = s[digits.len()..].chars().next();
    if matches!(next, Some('.')) && s[digits.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_chooses_the_extractor() {
        assert_eq!(extractor_for("B"), Extractor::Choice);
        assert_eq!(extractor_for(" J "), Extractor::Choice);
        assert_eq!(extractor_for("42"), Extractor::Number);
        assert_eq!(extractor_for("-1,200.5"), Extractor::Number);
        assert_eq!(extractor_for("Paris"), Extractor::Exact);
        assert_eq!(extractor_for("K"), Extractor::Exact);
        assert_eq!(extractor_for("3 apples"), Extractor::Exact);
        assert_eq!(extractor_for(".5"), Extractor::Number);
        assert_eq!(extractor_for("1.2.3"), Extractor::Exact);
    }

    #[test]
    fn grading_compares_normalised_answers() {
        let g = grade("C", "Let me think. The answer is (C).");
        assert_eq!((g.score, g.answer.as_deref()), (1.0, Some("C")));
        let g = grade("C", "The answer is (D).");
        assert_eq!((g.score, g.answer.as_deref()), (0.0, Some("D")));
        let g = grade("C", "I cannot tell.");
        assert_eq!((g.score, g.answer), (0.0, None));
        assert_eq!(grade("1200", "so it costs 1,200.00").score, 1.0);
        assert_eq!(grade("1200", "so it costs 1,300").score, 0.0);
        assert_eq!(grade(".5", "so p = 0.5").score, 1.0);
        assert_eq!(grade("1.2.3", "version 1.2.3").score, 0.0);
        assert_eq!(grade("1.2.3", "1.2.3").score, 1.0);
        assert_eq!(grade("Paris", "  paris. ").score, 1.0);
        assert_eq!(grade("Paris", "Paris is the capital").score, 0.0);
        // The demo replay's closing phrase is read like a model's.
        assert_eq!(grade("B", "[replay] ... Recorded answer: B").score, 1.0);
    }

    #[test]
    fn the_format_instruction_matches_the_extractor() {
        assert!(format_instruction("B").contains("(X)"));
        assert!(format_instruction("7").contains("number"));
        assert!(format_instruction("yes").contains("final answer only"));
        // What the instruction asks for is what grading reads.
        assert_eq!(grade("B", "blah\nThe answer is (B)").score, 1.0);
        assert_eq!(grade("7", "blah\nThe answer is 7").score, 1.0);
    }

    #[test]
    fn ratings_parse_into_the_unit_interval() {
        for (text, want) in [
            ("Good answer.\nRating: 10", Some(1.0)),
            ("Rating: 1", Some(0.0)),
            ("The answer is fine. Rating: 7/10", Some(6.0 / 9.0)),
            ("**Rating:** [[4]]", Some(3.0 / 9.0)),
            ("Rating = 5", Some(4.0 / 9.0)),
            ("I'd say [[8]]", Some(7.0 / 9.0)),
            // The last rating wins (a judge restating the scale first).
            ("Scale 1-10. Rating: 3", Some(2.0 / 9.0)),
            (
                "Rating: 8. This rating reflects the answer's accuracy.",
                Some(7.0 / 9.0),
            ),
            (
                "Rating: 7 (demonstrating good understanding)",
                Some(6.0 / 9.0),
            ),
            ("Rating (1-10): 7", Some(6.0 / 9.0)),
            ("Ratings vary. Overall rating: 2", Some(1.0 / 9.0)),
            ("Rating: 0", None),
            ("Rating: 11", None),
            ("Rating: 7.5", None),
            ("no verdict", None),
            ("", None),
        ] {
            assert_eq!(parse_rating(text), want, "{text:?}");
        }
    }

    #[test]
    fn the_judge_prompt_holds_question_and_answer() {
        let p = judge_prompt("What is 2+2?", "4");
        assert!(p.contains("What is 2+2?") && p.contains("\n4\n"));
        assert!(JUDGE_RUBRIC.contains("Rating: N"));
    }
}
