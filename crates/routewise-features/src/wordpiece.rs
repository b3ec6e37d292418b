//! A fast path for BERT WordPiece tokenization of ASCII text, used by the static
//! featurizer where the `tokenizers` crate's per-call overhead dominates (its
//! alignment-tracking normalisation costs ~100 us for a 128-token prompt).
//!
//! It reproduces exactly what a `tokenizer.json` with `BertNormalizer` (clean_text,
//! lowercase), `BertPreTokenizer` and a `WordPiece` model does, for ASCII input that
//! contains none of the tokenizer's added tokens: drop NUL and control characters, map
//! tab/newline/CR to spaces, lowercase, split on whitespace, isolate each ASCII
//! punctuation character, then greedy longest-match-first WordPiece (Wu et al. 2016,
//! "Google's Neural Machine Translation System", section 4.1; BERT, Devlin et al. 2019)
//! with the `##` continuation prefix and whole-word `[UNK]` when a word cannot be covered
//! or exceeds `max_input_chars_per_word`. Anything else (non-ASCII text, added tokens,
//! other tokenizer types) returns `None` and the caller uses the `tokenizers` crate; a
//! test checks both agree on the shared datasets' prompts.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash (the rustc hasher): fast for short keys; not DoS-resistant, which is fine for a
/// fixed vocabulary built at load time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(FX_K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(FX_K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap = HashMap<Box<[u8]>, u32, BuildHasherDefault<FxHasher>>;

/// WordPiece vocabulary split into word-initial pieces and `##` continuations.
#[derive(Debug, Clone)]
pub struct FastWordPiece {
    start: FxMap,
    cont: FxMap,
    unk: u32,
    max_chars: usize,
    /// Added tokens (e.g. `[CLS]`): text containing one takes the slow path.
    added: Vec<String>,
    longest: usize,
}

impl FastWordPiece {
    /// Builds the fast path from a parsed `tokenizer.json`, or `None` when the tokenizer
    /// is not a lowercasing BERT WordPiece tokenizer.
    pub fn from_tokenizer_json(json: &serde_json::Value) -> Option<FastWordPiece> {
        let norm = &json["normalizer"];
        let ok_norm = norm["type"] == "BertNormalizer"
            && norm["clean_text"] == true
            && norm["lowercase"] == true;
        let ok_pre = json["pre_tokenizer"]["type"] == "BertPreTokenizer";
        let model = &json["model"];
        if !(ok_norm && ok_pre && model["type"] == "WordPiece") {
            return None;
        }
        let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("##");
        let max_chars = model["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize;
        let vocab = model["vocab"].as_object()?;
        let unk = vocab.get(model["unk_token"].as_str()?)?.as_u64()? as u32;
        let mut tokens = Vec::with_capacity(vocab.len());
        for (tok, id) in vocab {
            tokens.push((tok.as_str(), u32::try_from(id.as_u64()?).ok()?));
        }
        let added = json["added_tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["content"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Some(FastWordPiece::from_vocab(
            tokens, prefix, unk, max_chars, added,
        ))
    }

    /// Builds the fast path from `(token, id)` pairs: `prefix` marks continuation pieces,
    /// `unk` is the `[UNK]` id, `added` the added tokens (text holding one takes the slow
    /// path).
    pub fn from_vocab<'a>(
        tokens: impl IntoIterator<Item = (&'a str, u32)>,
        prefix: &str,
        unk: u32,
        max_chars: usize,
        added: Vec<String>,
    ) -> FastWordPiece {
        let mut start = FxMap::default();
        let mut cont = FxMap::default();
        let mut longest = 0;
        for (tok, id) in tokens {
            match tok.strip_prefix(prefix) {
                Some(rest) if !rest.is_empty() => {
                    longest = longest.max(rest.len());
                    cont.insert(rest.as_bytes().into(), id);
                }
                _ => {
                    longest = longest.max(tok.len());
                    start.insert(tok.as_bytes().into(), id);
                }
            }
        }
        FastWordPiece {
            start,
            cont,
            unk,
            max_chars,
            added,
            longest,
        }
    }

    /// Appends the ids of `text` (no special tokens) to `out`, stopping at `max_tokens`;
    /// `None` (and `out` untouched) when the text needs the general tokenizer.
    pub fn encode(&self, text: &str, max_tokens: usize, out: &mut Vec<u32>) -> Option<()> {
        if !text.is_ascii() || self.added.iter().any(|a| text.contains(a.as_str())) {
            return None;
        }
        let base = out.len();
        let mut word = Vec::with_capacity(64);
        let bytes = text.as_bytes();
        let mut i = 0;
        while i <= bytes.len() && out.len() - base < max_tokens {
            let b = if i < bytes.len() { bytes[i] } else { b' ' };
            i += 1;
            match b {
                b'\t' | b'\n' | b'\r' | b' ' => self.flush(&mut word, out),
                0..=0x1f | 0x7f => {} // control characters are removed (clean_text)
                b if b.is_ascii_punctuation() => {
                    self.flush(&mut word, out);
                    word.push(b);
                    self.flush(&mut word, out);
                }
                b => word.push(b.to_ascii_lowercase()),
            }
        }
        out.truncate(base + max_tokens);
        Some(())
    }

    /// WordPiece of one pre-token (already lowercased), then clears `word`.
    fn flush(&self, word: &mut Vec<u8>, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.len() > self.max_chars {
            out.push(self.unk);
            word.clear();
            return;
        }
        let mark = out.len();
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 { &self.start } else { &self.cont };
            let mut end = word.len().min(start + self.longest);
            let mut found = None;
            while end > start {
                if let Some(&id) = table.get(&word[start..end]) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(mark);
                    out.push(self.unk);
                    break;
                }
            }
        }
        word.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> FastWordPiece {
        let json = serde_json::json!({
            "added_tokens": [{"content": "[CLS]"}],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 10,
                      "vocab": {"[UNK]": 0, "[CLS]": 1, "un": 2, "##aff": 3, "##able": 4, "aff": 5,
                                "!": 6, "a": 7, "##ff": 8}}
        });
        FastWordPiece::from_tokenizer_json(&json).unwrap()
    }

    fn ids(t: &FastWordPiece, s: &str, max: usize) -> Option<Vec<u32>> {
        let mut v = Vec::new();
        t.encode(s, max, &mut v).map(|_| v)
    }

    #[test]
    fn greedy_longest_match_with_continuations() {
        let t = tiny();
        assert_eq!(ids(&t, "unaffable", 99).unwrap(), vec![2, 3, 4]);
        assert_eq!(ids(&t, "UnAff!", 99).unwrap(), vec![2, 3, 6]);
        // "aff" is a whole word; "affx" cannot be covered -> one [UNK].
        assert_eq!(ids(&t, "aff affx", 99).unwrap(), vec![5, 0]);
        // Longer than max_input_chars_per_word -> [UNK].
        assert_eq!(ids(&t, "unaffableaff", 99).unwrap(), vec![0]);
    }

    #[test]
    fn control_chars_dropped_and_truncation_applied() {
        let t = tiny();
        assert_eq!(ids(&t, "un\u{7}aff\tun", 99).unwrap(), vec![2, 3, 2]);
        assert_eq!(ids(&t, "un! un! un!", 3).unwrap(), vec![2, 6, 2]);
    }

    #[test]
    fn non_ascii_and_added_tokens_take_the_slow_path() {
        let t = tiny();
        assert!(ids(&t, "café", 99).is_none());
        assert!(ids(&t, "[CLS] un", 99).is_none());
    }

    #[test]
    fn other_tokenizers_are_not_handled() {
        let json = serde_json::json!({"normalizer": null, "pre_tokenizer": {"type": "ByteLevel"},
                                      "model": {"type": "BPE"}});
        assert!(FastWordPiece::from_tokenizer_json(&json).is_none());
    }
}
