//! Keeping a model's API key out of everything an upstream sends back.
//!
//! Upstreams echo keys: a 401 body often quotes the key it refused, in full or masked
//! (`sk-abc***xyz`). routewise never passes an upstream error body through (the client
//! gets an error built from the status and a redacted message, [`Redactor::message`]),
//! and scrubs the key from every body it does pass through, streamed or not
//! ([`Redactor::bytes`], [`Redactor::stream`]).
//!
//! * Bodies: every exact occurrence of the key becomes [`REDACTED`] (a `memmem` search,
//!   precompiled once per model; a stream keeps back a chunk's tail while it could be the
//!   start of the key, so a key split across chunks is caught too).
//! * Error messages: besides exact matches, any word that shares 8 characters in a row
//!   with the key, or that is a masked form of it (a prefix or suffix of at least 4 of
//!   the key's characters around `*`, `.` or `…`), becomes [`REDACTED`].

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use memchr::memmem::Finder;

use super::UpstreamStream;

/// What replaces a key.
pub const REDACTED: &str = "[REDACTED]";

/// Characters shared in a row with the key that make a word count as an echo of it.
const SHARED_RUN: usize = 8;
/// Key characters a masked echo must keep before or after its mask.
const MASKED_KEEP: usize = 4;

/// Scrubs one model's key.
#[derive(Clone, Default)]
pub struct Redactor {
    finder: Option<Finder<'static>>,
}

/// Never shows the key (a `Finder`'s own `Debug` prints its needle).
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.finder.is_some() {
            "Redactor(<redacted>)"
        } else {
            "Redactor(none)"
        })
    }
}

impl Redactor {
    /// A redactor for `key` (`None`: nothing to scrub).
    pub fn new(key: Option<&str>) -> Redactor {
        Redactor {
            finder: key
                .filter(|k| !k.is_empty())
                .map(|k| Finder::new(k.as_bytes()).into_owned()),
        }
    }

    fn key(&self) -> Option<&[u8]> {
        self.finder.as_ref().map(Finder::needle)
    }

    /// `body` with every occurrence of the key replaced (the same bytes when there is
    /// none, without copying).
    pub fn bytes(&self, body: Bytes) -> Bytes {
        match &self.finder {
            Some(f) if f.find(&body).is_some() => Bytes::from(replace_all(f, &body)),
            _ => body,
        }
    }

    /// `stream` with every occurrence of the key replaced, across chunk boundaries too.
    pub fn stream(&self, stream: UpstreamStream) -> UpstreamStream {
        let Some(finder) = self.finder.clone() else {
            return stream;
        };
        let state = (stream, finder, BytesMut::new(), false);
        Box::pin(futures_util::stream::unfold(
            state,
            |(mut stream, finder, mut held, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    match stream.next().await {
                        // The usual case: nothing held, no key, no key prefix at the end.
                        Some(Ok(chunk))
                            if held.is_empty()
                                && finder.find(&chunk).is_none()
                                && partial_key_suffix(&chunk, finder.needle()) == 0 =>
                        {
                            if !chunk.is_empty() {
                                return Some((Ok(chunk), (stream, finder, held, false)));
                            }
                        }
                        Some(Ok(chunk)) => {
                            held.extend_from_slice(&chunk);
                            let scrubbed = replace_all(&finder, &held);
                            let keep = partial_key_suffix(&scrubbed, finder.needle());
                            let out = Bytes::copy_from_slice(&scrubbed[..scrubbed.len() - keep]);
                            held = BytesMut::from(&scrubbed[scrubbed.len() - keep..]);
                            if !out.is_empty() {
                                return Some((Ok(out), (stream, finder, held, false)));
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), (stream, finder, held, true))),
                        None if held.is_empty() => return None,
                        None => {
                            let rest = held.split().freeze();
                            return Some((Ok(rest), (stream, finder, held, true)));
                        }
                    }
                }
            },
        ))
    }

    /// Whether `word` quotes the key, part of it, or a masked form of it.
    pub fn echoes(&self, word: &str) -> bool {
        match self.key().map(std::str::from_utf8) {
            Some(Ok(key)) => echoes_key(word, key),
            _ => false,
        }
    }

    /// An upstream's error message, safe to show a client: the key, any word that shares
    /// a run of its characters, and masked forms of it are replaced.
    pub fn message(&self, message: &str) -> String {
        let Some(key) = self.key() else {
            return message.to_string();
        };
        let Ok(key) = std::str::from_utf8(key) else {
            return message.to_string();
        };
        let mut out = String::with_capacity(message.len());
        let mut word_start: Option<usize> = None;
        let is_word =
            |c: char| !c.is_whitespace() && !matches!(c, '"' | '\'' | ',' | '`' | '(' | ')');
        for (i, c) in message.char_indices().chain([(message.len(), ' ')]) {
            match (is_word(c) && i < message.len(), word_start) {
                (true, None) => word_start = Some(i),
                (false, Some(s)) => {
                    let word = &message[s..i];
                    out.push_str(if echoes_key(word, key) {
                        REDACTED
                    } else {
                        word
                    });
                    word_start = None;
                    if i < message.len() {
                        out.push(c);
                    }
                }
                (false, None) if i < message.len() => out.push(c),
                _ => {}
            }
        }
        out
    }
}

/// `hay` with every match of `finder` replaced by [`REDACTED`].
fn replace_all(finder: &Finder<'_>, hay: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut at = 0;
    for m in finder.find_iter(hay) {
        out.extend_from_slice(&hay[at..m]);
        out.extend_from_slice(REDACTED.as_bytes());
        at = m + finder.needle().len();
    }
    out.extend_from_slice(&hay[at..]);
    out
}

/// The length of the longest suffix of `hay` that is a proper prefix of `key` (what a
/// stream must hold back until the next chunk shows whether the key follows).
fn partial_key_suffix(hay: &[u8], key: &[u8]) -> usize {
    let longest = hay.len().min(key.len().saturating_sub(1));
    (1..=longest)
        .rev()
        .find(|&n| hay[hay.len() - n..] == key[..n])
        .unwrap_or(0)
}

/// Whether `word` quotes `key`, part of it, or a masked form of it.
fn echoes_key(word: &str, key: &str) -> bool {
    if word.contains(key) {
        return true;
    }
    let run = SHARED_RUN.min(key.len());
    if key
        .as_bytes()
        .windows(run)
        .any(|w| word.as_bytes().windows(run).any(|x| x == w))
    {
        return true;
    }
    let is_mask = |c: char| matches!(c, '*' | '.' | '…' | '•');
    let Some(first_mask) = word.find(is_mask) else {
        return false;
    };
    let prefix = &word[..first_mask];
    let suffix = word.trim_end_matches(is_mask);
    let suffix = &suffix[suffix.rfind(is_mask).map_or(suffix.len(), |i| {
        i + suffix[i..].chars().next().map_or(1, char::len_utf8)
    })..];
    (prefix.len() >= MASKED_KEEP.min(key.len()) && key.starts_with(prefix))
        || (suffix.len() >= MASKED_KEEP.min(key.len())
            && key.ends_with(suffix)
            && word.len() > suffix.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-test-0123456789abcdefXYZ";

    #[test]
    fn bodies_lose_every_copy_of_the_key_and_stay_untouched_without_one() {
        let r = Redactor::new(Some(KEY));
        let body = Bytes::from(format!("{{\"a\":\"{KEY}\",\"b\":\"x{KEY}y\"}}"));
        let out = r.bytes(body);
        assert!(!out.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
        assert_eq!(
            out,
            format!("{{\"a\":\"{REDACTED}\",\"b\":\"x{REDACTED}y\"}}")
        );
        let clean = Bytes::from_static(b"{\"ok\":true}");
        assert_eq!(r.bytes(clean.clone()).as_ptr(), clean.as_ptr());
        assert_eq!(Redactor::new(None).bytes(clean.clone()), clean);
    }

    #[test]
    fn messages_lose_full_partial_and_masked_echoes() {
        let r = Redactor::new(Some(KEY));
        for (msg, leaked) in [
            (
                format!("Incorrect API key provided: {KEY}."),
                KEY.to_string(),
            ),
            (
                "Incorrect API key provided: sk-test-01**********fXYZ.".into(),
                "sk-test-01".into(),
            ),
            ("key ****cdefXYZ is revoked".into(), "cdefXYZ".into()),
            ("token 0123456789abcd not valid".into(), "0123456789".into()),
            (format!("bad key \"{KEY}\""), KEY.to_string()),
        ] {
            let out = r.message(&msg);
            assert!(out.contains(REDACTED), "{out}");
            assert!(!out.contains(&leaked), "{out}");
        }
        assert_eq!(
            r.message("The model `gpt-9` does not exist."),
            "The model `gpt-9` does not exist."
        );
        assert_eq!(
            r.message("sk-tes words ... and more"),
            "sk-tes words ... and more"
        );
    }

    fn stream_of(chunks: &[&str]) -> UpstreamStream {
        let items: Vec<Result<Bytes, String>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c.as_bytes())))
            .collect();
        Box::pin(futures_util::stream::iter(items))
    }

    async fn collect(s: UpstreamStream) -> String {
        let chunks: Vec<Result<Bytes, String>> = s.collect().await;
        chunks
            .into_iter()
            .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_stream_loses_the_key_even_split_across_chunks() {
        let r = Redactor::new(Some(KEY));
        let (a, b) = KEY.split_at(9);
        let out =
            collect(r.stream(stream_of(&["data: x", a, b, " y\n\n", "data: [DONE]\n\n"]))).await;
        assert_eq!(out, format!("data: x{REDACTED} y\n\ndata: [DONE]\n\n"));
        // A tail that only looks like the start of the key is released at the end.
        let out = collect(r.stream(stream_of(&["abc", "sk-te"]))).await;
        assert_eq!(out, "abcsk-te");
    }

    #[tokio::test]
    async fn clean_chunks_pass_through_without_a_copy() {
        let chunk = Bytes::from_static(b"data: {\"x\": 1}\n\n");
        let items: Vec<Result<Bytes, String>> = vec![Ok(chunk.clone())];
        let mut s = Redactor::new(Some(KEY)).stream(Box::pin(futures_util::stream::iter(items)));
        let out = s.next().await.unwrap().unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn regression_debug_output_never_shows_the_key() {
        let r = Redactor::new(Some(KEY));
        let shown = format!("{r:?}");
        assert_eq!(shown, "Redactor(<redacted>)");
        assert!(r.echoes(KEY) && !r.echoes("messages"));
    }

    #[test]
    fn sse_event_boundaries_are_never_held_back() {
        assert_eq!(partial_key_suffix(b"data: {}\n\n", KEY.as_bytes()), 0);
        assert_eq!(partial_key_suffix(b"xx sk-t", KEY.as_bytes()), 4);
    }
}
