//! Stage 5 for a streamed answer under `pii: {action: redact, restore: true}`: the
//! placeholders the request was redacted with (`[EMAIL_1]`) are put back in the text the
//! model streams. Pure logic on bytes, no I/O; [`super::stream`] feeds it each upstream
//! chunk.
//!
//! The upstream's chunks are cut into SSE events (a blank line ends one). In each
//! `chat.completion.chunk`, the text of every choice's `delta.content` and of every tool
//! call's `function.arguments` goes through a [`StreamRestore`] of its own, which holds
//! back a tail that may be the start of a placeholder cut between two deltas. What is
//! held is released into the delta that carries the choice's `finish_reason`, or, when
//! none comes, in one extra chunk before `data: [DONE]` (or at the end of the stream). An
//! event with nothing to restore (or strip) is passed on byte for byte. The response cache stores
//! the stream as the model sent it (redacted); a replay is restored with the requester's
//! own values.
//!
//! The same rewriter removes the usage that the gateway asked the upstream for on behalf
//! of a key's budget (`stream_options.include_usage`, [`super::budget`]) when the client
//! did not ask for it: the `usage` field of each chunk, and the usage chunk itself.

use std::collections::BTreeMap;

use routewise_signals::{Redactions, StreamRestore};
use serde_json::{Map, Value};

/// An event that grows past this without ending is passed on as it is, unrestored.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Which text of a choice: its content, or a tool call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Content,
    Tool(u64),
}

/// Rewrites a streamed answer's SSE bytes, restoring placeholders.
#[derive(Debug)]
pub struct SseRestore {
    redactions: Redactions,
    /// Drop the usage the gateway asked for and the client did not.
    strip_usage: bool,
    /// Bytes of an event not yet ended.
    pending: Vec<u8>,
    /// The holding restorer of each (choice index, slot) seen.
    texts: BTreeMap<(u64, Slot), StreamRestore>,
    /// `id`, `object`, `created` and `model` of the last chunk, for the extra chunk.
    envelope: Map<String, Value>,
}

impl SseRestore {
    /// A rewriter restoring `redactions` (none: nothing to restore) and, with
    /// `strip_usage`, removing `usage` from every chunk (a chunk with no choices and a
    /// usage, the usage chunk, is dropped whole).
    pub fn new(redactions: Redactions, strip_usage: bool) -> SseRestore {
        SseRestore {
            redactions,
            strip_usage,
            pending: Vec::new(),
            texts: BTreeMap::new(),
            envelope: Map::new(),
        }
    }

    /// The bytes to send for the upstream's next `chunk` (possibly none yet).
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(self.pending.len());
        let mut from = 0;
        while let Some(end) = event_end(&self.pending[from..]) {
            let event = self.pending[from..from + end].to_vec();
            self.rewrite(&event, &mut out);
            from += end;
        }
        self.pending.drain(..from);
        if self.pending.len() > MAX_EVENT_BYTES {
            out.append(&mut self.pending);
        }
        out
    }

    /// The bytes to send when the upstream's stream has ended: whatever is held, then an
    /// unfinished event as it came.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.release_held();
        out.append(&mut self.pending);
        out
    }

    fn rewrite(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let Some(data) = single_data_line(event) else {
            out.extend_from_slice(event);
            return;
        };
        if data.trim_ascii() == b"[DONE]" {
            out.append(&mut self.release_held());
            out.extend_from_slice(event);
            return;
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(data) else {
            out.extend_from_slice(event);
            return;
        };
        let mut changed = false;
        if self.strip_usage {
            if let Some(usage) = chunk.remove("usage") {
                let no_choices = match chunk.get("choices") {
                    None | Some(Value::Null) => true,
                    Some(Value::Array(c)) => c.is_empty(),
                    Some(_) => false,
                };
                if !usage.is_null() && no_choices {
                    return; // the usage chunk, which the client did not ask for
                }
                changed = true;
            }
        }
        if !self.redactions.is_empty() {
            changed |= self.restore_chunk(&mut chunk);
        }
        for key in ["id", "object", "created", "model"] {
            if let Some(v) = chunk.get(key) {
                self.envelope.insert(key.to_string(), v.clone());
            }
        }
        if changed {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(Value::Object(chunk).to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        } else {
            out.extend_from_slice(event);
        }
    }

    /// Restores the texts of one chunk in place; whether anything changed.
    fn restore_chunk(&mut self, chunk: &mut Map<String, Value>) -> bool {
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
            return false;
        };
        let mut changed = false;
        for (pos, choice) in choices.iter_mut().enumerate() {
            let Value::Object(choice) = choice else {
                continue;
            };
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let Some(Value::Object(delta)) = choice.get_mut("delta") else {
                continue;
            };
            if let Some(Value::String(text)) = delta.get_mut("content") {
                changed |= self.restore_text(index, Slot::Content, text);
            }
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (tpos, call) in calls.iter_mut().enumerate() {
                    let t = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(tpos as u64);
                    if let Some(Value::String(args)) = call
                        .get_mut("function")
                        .and_then(|f| f.get_mut("arguments"))
                    {
                        changed |= self.restore_text(index, Slot::Tool(t), args);
                    }
                }
            }
            if finished {
                changed |= self.release_choice(index, delta);
            }
        }
        changed
    }

    /// Passes `text` through its slot's restorer; whether it changed.
    fn restore_text(&mut self, index: u64, slot: Slot, text: &mut String) -> bool {
        let r = self.texts.entry((index, slot)).or_default();
        let restored = r.push(&self.redactions, text);
        if restored == *text {
            return false;
        }
        *text = restored;
        true
    }

    /// Appends what choice `index` holds to its finishing `delta`; whether anything was.
    fn release_choice(&mut self, index: u64, delta: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for (&(_, slot), r) in self
            .texts
            .range_mut((index, Slot::Content)..=(index, Slot::Tool(u64::MAX)))
        {
            if !r.is_holding() {
                continue;
            }
            let rest = r.flush(&self.redactions);
            changed = true;
            match slot {
                Slot::Content => append(delta, "content", &rest),
                Slot::Tool(t) => {
                    let calls = delta
                        .entry("tool_calls")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(calls) = calls {
                        calls
                            .push(serde_json::json!({"index": t, "function": {"arguments": rest}}));
                    }
                }
            }
        }
        changed
    }

    /// One extra chunk carrying everything still held (no bytes when nothing is).
    fn release_held(&mut self) -> Vec<u8> {
        let mut by_choice: BTreeMap<u64, Map<String, Value>> = BTreeMap::new();
        let indices: Vec<u64> = self
            .texts
            .iter()
            .filter(|(_, r)| r.is_holding())
            .map(|(&(i, _), _)| i)
            .collect();
        for i in indices {
            let delta = by_choice.entry(i).or_default();
            self.release_choice(i, delta);
        }
        if by_choice.is_empty() {
            return Vec::new();
        }
        let mut chunk = self.envelope.clone();
        let choices = by_choice
            .into_iter()
            .map(
                |(i, delta)| serde_json::json!({"index": i, "delta": delta, "finish_reason": null}),
            )
            .collect();
        chunk.insert("choices".to_string(), Value::Array(choices));
        format!("data: {}\n\n", Value::Object(chunk)).into_bytes()
    }
}

fn append(delta: &mut Map<String, Value>, key: &str, rest: &str) {
    match delta.get_mut(key) {
        Some(Value::String(s)) => s.push_str(rest),
        _ => {
            delta.insert(key.to_string(), Value::String(rest.to_string()));
        }
    }
}

/// The length of the first complete event in `b` (through its blank line), if any.
fn event_end(b: &[u8]) -> Option<usize> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// The payload of an event made of one `data:` line (comments and other fields make it
/// pass through unchanged).
fn single_data_line(event: &[u8]) -> Option<&[u8]> {
    let mut lines = event
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty());
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let data = line.strip_prefix(b"data:")?;
    Some(data.strip_prefix(b" ").unwrap_or(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use routewise_signals::{Detector, PiiKind};
    use serde_json::json;

    fn redactions() -> (Redactions, String) {
        let d = Detector::new(PiiKind::ALL);
        let text = "mail ann@x.org or bob@y.org, card 4111 1111 1111 1111";
        let mut r = Redactions::default();
        let red = r.redact(text, &d.scan(text));
        (r, red)
    }

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    }

    /// The text of every content delta, in order.
    fn contents(sse: &[u8]) -> String {
        let text = String::from_utf8(sse.to_vec()).unwrap();
        let mut out = String::new();
        for ev in text.split("\n\n") {
            let Some(data) = ev.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            for c in v["choices"].as_array().unwrap() {
                if let Some(s) = c["delta"]["content"].as_str() {
                    out.push_str(s);
                }
            }
        }
        out
    }

    fn stream_of(pieces: &[&str], finish: bool) -> String {
        let mut s = chunk(json!({"role": "assistant", "content": ""}), None);
        for p in pieces {
            s.push_str(&chunk(json!({"content": p}), None));
        }
        if finish {
            s.push_str(&chunk(json!({}), Some("stop")));
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    #[test]
    fn restores_placeholders_cut_across_deltas_and_across_network_chunks() {
        let (r, red) = redactions();
        assert_eq!(red, "mail [EMAIL_1] or [EMAIL_2], card [CARD_1]");
        let sse = stream_of(
            &["Hi [EM", "AIL_1] and [", "EMAIL_2", "], [CARD_1", "]."],
            true,
        );
        // Any cut of the bytes into network chunks gives the same answer.
        for size in [1, 7, 64, sse.len()] {
            let mut s = SseRestore::new(r.clone(), false);
            let mut out = Vec::new();
            for piece in sse.as_bytes().chunks(size) {
                out.extend(s.feed(piece));
            }
            out.extend(s.finish());
            assert_eq!(
                contents(&out),
                "Hi ann@x.org and bob@y.org, 4111 1111 1111 1111.",
                "chunks of {size}"
            );
            assert!(String::from_utf8(out)
                .unwrap()
                .ends_with("data: [DONE]\n\n"));
        }
    }

    #[test]
    fn a_held_tail_is_released_before_done_when_no_finish_reason_comes() {
        let (r, _) = redactions();
        let mut s = SseRestore::new(r, false);
        let mut out = s.feed(stream_of(&["see [EMAIL_1", "] [EMA"], false).as_bytes());
        out.extend(s.finish());
        assert_eq!(contents(&out), "see ann@x.org [EMA");
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").collect();
        let extra = events[events.len() - 3];
        let v: Value = serde_json::from_str(extra.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["model"].as_str()),
            (Some("c1"), Some("m"))
        );
    }

    #[test]
    fn events_without_placeholders_pass_byte_for_byte() {
        let (r, _) = redactions();
        let sse = stream_of(&["nothing ", "[here]", " at all"], true) + ": comment\n\n";
        let mut s = SseRestore::new(r, false);
        let mut out = s.feed(sse.as_bytes());
        out.extend(s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), sse);
    }

    #[test]
    fn tool_call_arguments_are_restored() {
        let (r, _) = redactions();
        let call =
            |args: &str| json!({"tool_calls": [{"index": 0, "function": {"arguments": args}}]});
        let sse = chunk(call("{\"to\": \"[EMAIL"), None)
            + &chunk(call("_2]\"}"), None)
            + &chunk(json!({}), Some("tool_calls"));
        let mut s = SseRestore::new(r, false);
        let mut out = s.feed(sse.as_bytes());
        out.extend(s.finish());
        let text = String::from_utf8(out).unwrap();
        let args: String = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert_eq!(args, "{\"to\": \"bob@y.org\"}");
    }

    #[test]
    fn usage_the_client_did_not_ask_for_is_removed() {
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
        let sse = chunk(json!({"content": "hi"}), None).replace("}]}", "}],\"usage\":null}")
            + &format!(
                "data: {}\n\n",
                json!({"id": "c1", "choices": [], "usage": usage})
            )
            + "data: [DONE]\n\n";
        let mut s = SseRestore::new(Redactions::default(), true);
        let mut out = s.feed(sse.as_bytes());
        out.extend(s.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("usage"), "{text}");
        assert_eq!(contents(text.as_bytes()), "hi");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn an_unended_event_is_passed_on_at_the_end() {
        let (r, _) = redactions();
        let mut s = SseRestore::new(r, false);
        assert!(s.feed(b"data: {\"choices\"").is_empty());
        assert_eq!(s.finish(), b"data: {\"choices\"");
    }
}
