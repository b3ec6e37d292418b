//! The `replay` provider: answers a model's requests in-process from recorded outcomes,
//! so the demo runs on a fresh machine with no keys and no upstream. [`Replay`] holds the
//! recorded outcomes; [`ReplayProvider`] is the [`Provider`] that answers from them.
//!
//! The routing data has no response text, so a replay answer says that it is a routewise
//! demo replay, which model answered, and what that model scored and cost on the nearest
//! recorded prompt; where the data records that model's extracted answer (an option
//! letter), the reply ends with `Recorded answer: B`, so grading replayed answers with the
//! answer extractors reproduces the recorded scores. The nearest prompt is the one with the highest cosine similarity of
//! hashed word sets (exact matches come first); usage tokens are the request's estimated
//! prompt tokens and the answer's chars / 4.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use routewise_data::{Dataset, Outcome};
use serde_json::json;

use super::{unix_now, Answer, AttemptInfo, AttemptOutcome, Call, Failure, Provider, ProviderKind};

/// The provider answering from a [`Replay`].
#[derive(Debug, Clone)]
pub struct ReplayProvider {
    replay: Arc<Replay>,
}

impl ReplayProvider {
    pub fn new(replay: Arc<Replay>) -> Self {
        ReplayProvider { replay }
    }
}

#[async_trait::async_trait]
impl Provider for ReplayProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Replay
    }

    async fn call(&self, call: Call<'_>, _info: &mut AttemptInfo) -> Result<Answer, Failure> {
        let req = call.request;
        let answer = self
            .replay
            .answer(call.model, &req.prompt, req.prompt_tokens)
            .ok_or_else(|| {
                Failure::new(AttemptOutcome::Connect, "replay has no data for this model")
            })?;
        if !req.stream {
            return Ok(Answer::Full {
                status: StatusCode::OK,
                content_type: Some(HeaderValue::from_static("application/json")),
                body: answer.completion(call.id, call.model, unix_now()),
            });
        }
        let mut events = answer
            .events(
                call.id,
                call.model,
                unix_now(),
                req.include_usage || req.strip_usage,
            )
            .into_iter();
        let first = events.next().unwrap_or_default();
        Ok(Answer::Stream {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("text/event-stream")),
            first,
            rest: Box::pin(futures_util::stream::iter(events.map(Ok))),
        })
    }
}

/// One recorded prompt.
#[derive(Debug, Clone)]
struct Recorded {
    id: String,
    task: String,
    words: Vec<u64>,
    outcomes: Vec<Option<Outcome>>,
    /// Each model's recorded final answer (the data's `answer` field), where there is one.
    answers: Vec<Option<String>>,
}

/// Recorded outcomes of every model on a set of prompts.
#[derive(Debug, Clone)]
pub struct Replay {
    models: HashMap<String, usize>,
    records: Vec<Recorded>,
}

/// What the replay answers for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayAnswer {
    pub content: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

fn word_hashes(text: &str) -> Vec<u64> {
    let mut v: Vec<u64> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            // FNV-1a over the lower-cased word.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for c in w.chars().flat_map(char::to_lowercase) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
            h
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn overlap(a: &[u64], b: &[u64]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

impl Replay {
    /// Indexes every record of `data`.
    pub fn from_dataset(data: &Dataset) -> Replay {
        Replay {
            models: data
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| (m.clone(), i))
                .collect(),
            records: data
                .records
                .iter()
                .map(|r| Recorded {
                    id: r.id.clone(),
                    task: r.task.clone(),
                    words: word_hashes(&r.prompt),
                    outcomes: r.outcomes.clone(),
                    answers: r
                        .outcomes
                        .iter()
                        .map(|o| {
                            o.as_ref()
                                .and_then(|o| data.answer_text(o.answer))
                                .map(str::to_string)
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Whether the replay has outcomes for `model`.
    pub fn knows(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    fn nearest(&self, prompt: &str, model: usize) -> Option<&Recorded> {
        let q = word_hashes(prompt);
        let qn = (q.len().max(1)) as f64;
        self.records
            .iter()
            .filter(|r| r.outcomes.get(model).copied().flatten().is_some())
            .map(|r| {
                let sim = overlap(&q, &r.words) as f64 / (qn * r.words.len().max(1) as f64).sqrt();
                (sim, r)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, r)| r)
    }

    /// The replayed answer of `model` to `prompt` (`None` for an unknown model).
    pub fn answer(&self, model: &str, prompt: &str, prompt_tokens: u64) -> Option<ReplayAnswer> {
        let &m = self.models.get(model)?;
        let content = match self.nearest(prompt, m) {
            Some(r) => {
                let o = r.outcomes[m]?;
                // The recorded answer last, in the form answer extractors read ("answer:
                // B"), so grading the replay reproduces the recorded score.
                let answer = match r.answers.get(m).cloned().flatten() {
                    Some(a) => format!(" Recorded answer: {a}"),
                    None => String::new(),
                };
                format!(
                    "[routewise demo replay] {model} answered. No real model was called: this reply is \
                     replayed from RouterBench. On the nearest recorded prompt ({id}, task {task}) \
                     {model} scored {score} at a cost of ${cost:.6} ({inp} prompt + {out} completion \
                     tokens).{answer}",
                    id = r.id,
                    task = r.task,
                    score = o.score,
                    cost = o.cost_usd,
                    inp = o.input_tokens,
                    out = o.output_tokens,
                )
            }
            None => format!("[routewise demo replay] {model} answered (no recorded outcome)."),
        };
        let completion_tokens = (content.chars().count() as u64).div_ceil(4);
        Some(ReplayAnswer {
            content,
            prompt_tokens,
            completion_tokens,
        })
    }
}

impl ReplayAnswer {
    fn usage(&self) -> serde_json::Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.prompt_tokens + self.completion_tokens})
    }

    /// A `chat.completion` body.
    pub fn completion(&self, id: &str, model: &str, created: u64) -> Bytes {
        let v = json!({
            "id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": self.usage(),
        });
        Bytes::from(v.to_string())
    }

    /// The SSE events of a streamed answer, `[DONE]` included.
    pub fn events(&self, id: &str, model: &str, created: u64, include_usage: bool) -> Vec<Bytes> {
        let id = format!("chatcmpl-{id}");
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model,
                           "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            Bytes::from(format!("data: {v}\n\n"))
        };
        let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        let words: Vec<&str> = self.content.split_inclusive(' ').collect();
        for piece in words.chunks(8) {
            out.push(chunk(json!({"content": piece.concat()}), None));
        }
        out.push(chunk(json!({}), Some("stop")));
        if include_usage {
            let v = json!({"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [], "usage": self.usage()});
            out.push(Bytes::from(format!("data: {v}\n\n")));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn data() -> Dataset {
        let text = concat!(
            r#"{"id":"p1","task":"t","prompt":"the capital of france","split":"train","models":{"a":{"score":1,"cost_usd":0.002,"input_tokens":5,"output_tokens":2},"b":{"score":0,"cost_usd":0.0001,"input_tokens":5,"output_tokens":3}}}"#,
            "\n",
            r#"{"id":"p2","task":"t","prompt":"write python code to sort","split":"train","reference":"B","models":{"a":{"score":0,"cost_usd":0.003,"input_tokens":6,"output_tokens":9,"answer":"C"},"b":{"score":1,"cost_usd":0.0002,"input_tokens":6,"output_tokens":9,"answer":"B"}}}"#,
        );
        routewise_data::jsonl::parse(text.as_bytes(), Path::new("x.jsonl")).unwrap()
    }

    #[test]
    fn answers_from_the_nearest_recorded_prompt() {
        let r = Replay::from_dataset(&data());
        assert!(r.knows("a") && !r.knows("zzz"));
        let a = r.answer("b", "please write some Python code", 7).unwrap();
        assert!(a.content.contains("routewise demo replay"));
        assert!(a.content.contains("(p2, task t)"), "{}", a.content);
        assert!(a.content.contains("b scored 1"));
        assert_eq!(a.prompt_tokens, 7);
        assert!(a.completion_tokens > 10);
        let body: serde_json::Value = serde_json::from_slice(&a.completion("x", "b", 1)).unwrap();
        assert_eq!(body["usage"]["total_tokens"], 7 + a.completion_tokens);
        let ev = a.events("x", "b", 1, true);
        assert_eq!(ev.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        assert!(String::from_utf8_lossy(&ev[ev.len() - 2]).contains("\"usage\""));
        assert!(r.answer("nope", "x", 1).is_none());
    }

    #[test]
    fn the_recorded_answer_is_replayed_so_grading_reproduces_the_score() {
        use routewise_router::extract::Extractor;
        let r = Replay::from_dataset(&data());
        for (model, want) in [("a", "C"), ("b", "B")] {
            let a = r.answer(model, "please write some Python code", 7).unwrap();
            assert!(
                a.content.ends_with(&format!("Recorded answer: {want}")),
                "{}",
                a.content
            );
            assert_eq!(Extractor::Choice.extract(&a.content).as_deref(), Some(want));
        }
        // No recorded answer: no answer line.
        let a = r.answer("a", "the capital of france", 7).unwrap();
        assert!(!a.content.contains("Recorded answer"), "{}", a.content);
    }
}
