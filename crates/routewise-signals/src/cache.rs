//! The response cache's index: an exact lookup and a semantic one, with guards against
//! the semantic cache's known failure (a near-duplicate that asks something different).
//!
//! * **Exact**: a 128-bit hash of the normalised request ([`RequestKeys`]: the requested
//!   model, the scope, every parameter, every message with its whitespace collapsed).
//! * **Semantic**: entries whose *context* (everything but the last user message: the
//!   model, scope, parameters, earlier turns) hashes the same, and whose last user
//!   message's embedding has a cosine at or above the threshold. The candidates come from
//!   a random-hyperplane LSH index (Charikar, "Similarity estimation techniques from
//!   rounding algorithms", STOC 2002): [`TABLES`] tables of [`BITS`]-bit signatures, each
//!   keyed with the context hash, so a lookup computes cosines for a few dozen entries,
//!   not for every entry. For a pair at cosine 0.92 (23 degrees) one table collides with
//!   probability (1 - 23/180)^8 ≈ 0.33, and at least one of 12 does with ≈ 0.99.
//! * **Guards** (GPTCache #694, vLLM Semantic Router #2691 / #3036: negations, changed
//!   numbers, names, units and options embed close together): a semantic hit is vetoed
//!   when the two messages' numbers differ (as multisets), their negation words differ,
//!   their multiple-choice option lines differ, or one's capitalised names or standalone
//!   option letters are missing from the other ([`Guard`]).
//! * **Bounds**: a TTL per entry and a size bound with least-recently-used eviction
//!   (an intrusive list over a slab: O(1) per operation).
//!
//! Pure: the caller hashes, embeds, keeps the clock and stores any value type.

use std::collections::HashMap;

use routewise_features::pooling::dot;
use sha2::{Digest, Sha256};

/// LSH tables.
pub const TABLES: usize = 12;
/// Signature bits per table.
pub const BITS: usize = 8;
/// Most entries a lookup reads from each bucket (newest first; the Redis backend keeps
/// fewer per bucket, its `BUCKET_LEN`), and most candidates it compares (those in the most
/// of the query's buckets first, [`ranked_candidates`]):
/// templated traffic puts thousands of near-duplicates in the same buckets, and a lookup
/// stays bounded whatever the cache holds.
pub const MAX_CANDIDATES: usize = 128;

/// Words that flip a question's meaning.
const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "none",
    "nor",
    "neither",
    "without",
    "except",
    "cannot",
    "can't",
    "don't",
    "doesn't",
    "didn't",
    "isn't",
    "aren't",
    "wasn't",
    "weren't",
    "won't",
    "wouldn't",
    "shouldn't",
    "couldn't",
    "false",
    "incorrect",
    "least",
];

/// A number spelled as a word, in the digits it is compared as ("two" and "2" are one
/// number; "two" and "three" are not): cardinals, their scales, and ordinals (a hyphenated
/// "twenty-one" is read part by part, 20 and 1). The price of reading them: such a word
/// used otherwise ("one" as a pronoun, "second" as a unit, "half", "first") must then be in
/// both messages too, so a paraphrase that drops it misses (0.2 points of paraphrase hits
/// on the cache-quality bench).
fn number_word(word: &str) -> Option<&'static str> {
    Some(match word {
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        "eleven" => "11",
        "twelve" | "dozen" => "12",
        "thirteen" => "13",
        "fourteen" => "14",
        "fifteen" => "15",
        "sixteen" => "16",
        "seventeen" => "17",
        "eighteen" => "18",
        "nineteen" => "19",
        "twenty" => "20",
        "thirty" => "30",
        "forty" => "40",
        "fifty" => "50",
        "sixty" => "60",
        "seventy" => "70",
        "eighty" => "80",
        "ninety" => "90",
        "hundred" => "100",
        "thousand" => "1000",
        "million" => "1000000",
        "billion" => "1000000000",
        "trillion" => "1000000000000",
        "half" => "1/2",
        "quarter" => "1/4",
        "first" => "1st",
        "second" => "2nd",
        "third" => "3rd",
        "fourth" => "4th",
        "fifth" => "5th",
        "sixth" => "6th",
        "seventh" => "7th",
        "eighth" => "8th",
        "ninth" => "9th",
        "tenth" => "10th",
        _ => return None,
    })
}

/// What a semantic hit must agree on exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Guard {
    /// Numbers in the message, normalised (`1,000` = `1000`; number words in digits,
    /// [`number_word`]), sorted.
    numbers: Vec<String>,
    /// Negation words, sorted.
    negations: Vec<String>,
    /// Capitalised words after the first of each sentence and standalone option letters
    /// (`(B)`, `B.`), lowercased, sorted.
    names: Vec<String>,
    /// Every word, lowercased, sorted, deduplicated: a name matches the other message's
    /// word whatever its case (`France` / `france`).
    words: Vec<String>,
    /// The multiple-choice option lines (`A. ...`, `(B) ...`, `c) ...`), whitespace
    /// normalised, in order: the same question with other options is another question.
    options: Vec<String>,
}

/// Whether `line` starts like a multiple-choice option: a letter A-J (or a-j), optionally
/// in brackets, then `.` or `)` and a space.
fn is_option_line(line: &str) -> bool {
    let t = line.trim_start().trim_start_matches('(');
    let b = t.as_bytes();
    b.len() > 2
        && matches!(b[0], b'A'..=b'J' | b'a'..=b'j')
        && matches!(b[1], b'.' | b')')
        && b[2] == b' '
}

impl Guard {
    /// The guard features of a message.
    pub fn of(text: &str) -> Guard {
        Guard::read(text, false)
    }

    /// The guard features of an answer (semantic agreement of cascade answers): a
    /// capitalised word counts as a name at the start of a sentence too, since an answer
    /// often opens with its subject ("Canberra is the capital ..." against "Sydney is the
    /// capital ..."). The cost: a capitalised opening word ("It", "I") must then appear in
    /// the other answer.
    pub fn of_answer(text: &str) -> Guard {
        Guard::read(text, true)
    }

    fn read(text: &str, names_open_sentences: bool) -> Guard {
        let mut g = Guard::default();
        let mut sentence_start = true;
        for raw in text.split(|c: char| c.is_whitespace()) {
            if raw.is_empty() {
                continue;
            }
            let word = raw.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'');
            let ends_sentence = raw.ends_with(['.', '?', '!', ':']);
            if !word.is_empty() {
                g.words.push(word.to_lowercase());
                if word.chars().any(|c| c.is_ascii_digit()) {
                    let n: String = word.chars().filter(|c| *c != ',').collect();
                    g.numbers.push(n);
                } else {
                    let lower = word.to_lowercase();
                    let before = g.numbers.len();
                    g.numbers
                        .extend(lower.split('-').filter_map(number_word).map(str::to_string));
                    let spelled_number = g.numbers.len() > before;
                    if spelled_number {
                        // Read above.
                    } else if NEGATIONS.contains(&lower.as_str()) || lower.ends_with("n't") {
                        g.negations.push(lower);
                    } else if (word.len() == 1 && word.chars().all(|c| c.is_ascii_uppercase()))
                        || ((names_open_sentences || !sentence_start)
                            && word.chars().next().is_some_and(char::is_uppercase))
                    {
                        g.names.push(lower);
                    }
                }
            }
            sentence_start = ends_sentence;
        }
        g.numbers.sort_unstable();
        g.negations.sort_unstable();
        g.names.sort_unstable();
        g.words.sort_unstable();
        g.words.dedup();
        g.options = text
            .lines()
            .filter(|l| is_option_line(l))
            .map(normalise)
            .collect();
        g
    }

    /// Whether two messages may share an answer: the same numbers and negations, and each
    /// one's names among the other's words.
    pub fn agrees(&self, other: &Guard) -> bool {
        self.numbers == other.numbers
            && self.negations == other.negations
            && self.options == other.options
            && self
                .names
                .iter()
                .all(|n| other.words.binary_search(n).is_ok())
            && other
                .names
                .iter()
                .all(|n| self.words.binary_search(n).is_ok())
    }
}

/// How a request is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestKeys {
    /// The hash of the whole normalised request.
    pub exact: u128,
    /// The hash of everything but the last user message.
    pub context: u64,
}

impl RequestKeys {
    /// Keys from the request's parts: `scope` (tenant, route, model), the parameters as
    /// canonical JSON text, the earlier messages (role, text) and the last user message.
    pub fn new(
        scope: &str,
        params: &str,
        earlier: &[(&str, &str)],
        last_user: &str,
    ) -> RequestKeys {
        let mut h = Sha256::new();
        let field = |h: &mut Sha256, s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        field(&mut h, scope);
        field(&mut h, params);
        for (role, text) in earlier {
            field(&mut h, role);
            field(&mut h, &normalise(text));
        }
        let context = h.clone().finalize();
        field(&mut h, &normalise(last_user));
        let exact = h.finalize();
        let mut c = [0u8; 8];
        c.copy_from_slice(&context[..8]);
        let mut e = [0u8; 16];
        e.copy_from_slice(&exact[..16]);
        RequestKeys {
            exact: u128::from_le_bytes(e),
            context: u64::from_le_bytes(c),
        }
    }
}

/// Whitespace runs collapsed to one space, ends trimmed.
pub fn normalise(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HitKind {
    Exact,
    /// With the cosine of the two messages.
    Semantic(f32),
}

/// The semantic part of a lookup or an insertion.
#[derive(Debug, Clone)]
pub struct Semantic<'a> {
    /// The last user message's unit embedding.
    pub embedding: &'a [f32],
    pub guard: &'a Guard,
}

/// Cache settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    /// Whether the exact key answers lookups.
    pub exact: bool,
    /// Cosine at or above which a semantic candidate is a hit (`None`: exact only).
    pub threshold: Option<f32>,
    /// Whether the guards veto semantic hits.
    pub guards: bool,
    pub ttl_ms: u64,
    pub max_entries: usize,
}

const NIL: u32 = u32::MAX;

struct Entry<V> {
    exact: u128,
    context: u64,
    embedding: Box<[f32]>,
    guard: Guard,
    signatures: [u8; TABLES],
    expires_ms: u64,
    value: V,
    prev: u32,
    next: u32,
}

/// The random hyperplanes of the LSH tables (the same on every instance for one seed, so
/// that instances sharing a store compute the same buckets).
#[derive(Debug, Clone)]
pub struct Lsh {
    dim: usize,
    /// `TABLES * BITS` hyperplanes of `dim` floats.
    planes: Vec<f32>,
}

impl Lsh {
    /// Hyperplanes for `dim`-dimensional vectors, drawn (standard normal) from `seed`.
    pub fn new(dim: usize, seed: u64) -> Lsh {
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state = routewise_router::baselines::splitmix64(state);
            // A standard normal from two uniforms (Box-Muller).
            let u1 = ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            state = routewise_router::baselines::splitmix64(state);
            let u2 = (state >> 11) as f64 / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        };
        let planes = (0..TABLES * BITS * dim).map(|_| next()).collect();
        Lsh { dim, planes }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// One `BITS`-bit signature per table (all zero for a vector of another dimension).
    pub fn signatures(&self, e: &[f32]) -> [u8; TABLES] {
        let mut out = [0u8; TABLES];
        if e.len() != self.dim {
            return out;
        }
        for (t, sig) in out.iter_mut().enumerate() {
            for b in 0..BITS {
                let p = &self.planes[(t * BITS + b) * self.dim..(t * BITS + b + 1) * self.dim];
                if dot(p, e) >= 0.0 {
                    *sig |= 1 << b;
                }
            }
        }
        out
    }
}

/// Candidates from the buckets of a lookup (one per LSH table, each newest first and
/// read to at most [`MAX_CANDIDATES`] entries): the entries found in the most of the
/// query's buckets first, ties to the most recent (round-robin order across the buckets),
/// at most [`MAX_CANDIDATES`]. A near neighbour collides with the query in several of the
/// [`TABLES`] tables, an unrelated entry in one at most, so where a context holds thousands
/// of entries (every request under one system prompt) the cap keeps the likely matches
/// rather than the newest. Sorts the ids (the Redis backend's; the in-memory index counts
/// its slots in place, with the same result).
pub fn ranked_candidates<T: Copy + Ord>(buckets: &[&[T]]) -> Vec<T> {
    // (id, round-robin position) of every bucket entry, newest first across the buckets.
    let mut seen: Vec<(T, u32)> = Vec::with_capacity(buckets.iter().map(|b| b.len()).sum());
    round_robin(buckets, false, |x| seen.push((x, seen.len() as u32)));
    seen.sort_unstable();
    // Per id: how many buckets hold it, and its first (most recent) position.
    let mut ranked: Vec<(u32, u32, T)> = Vec::with_capacity(seen.len());
    for (x, pos) in seen {
        match ranked.last_mut() {
            Some(last) if last.2 == x => last.0 += 1,
            _ => ranked.push((1, pos, x)),
        }
    }
    top_candidates(ranked)
}

/// Visits the entries of `buckets` (each newest first, or newest last when `newest_last`;
/// at most [`MAX_CANDIDATES`] read from each), round-robin: every bucket's newest, then
/// every bucket's second, ...
fn round_robin<T: Copy>(buckets: &[&[T]], newest_last: bool, mut visit: impl FnMut(T)) {
    let longest = buckets
        .iter()
        .map(|b| b.len())
        .max()
        .unwrap_or(0)
        .min(MAX_CANDIDATES);
    for k in 0..longest {
        for b in buckets {
            let i = if newest_last {
                b.len().checked_sub(k + 1)
            } else {
                Some(k)
            };
            if let Some(&x) = i.and_then(|i| b.get(i)) {
                visit(x);
            }
        }
    }
}

/// The [`MAX_CANDIDATES`] best of `(buckets holding it, first position, id)`: most
/// buckets first, then the most recent; returned in round-robin order (newest first).
fn top_candidates<T>(mut ranked: Vec<(u32, u32, T)>) -> Vec<T> {
    if ranked.len() > MAX_CANDIDATES {
        ranked.select_nth_unstable_by(MAX_CANDIDATES - 1, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.truncate(MAX_CANDIDATES);
    }
    // Back in round-robin order: of equally close entries, the lookup keeps the newest.
    ranked.sort_unstable_by_key(|r| r.1);
    ranked.into_iter().map(|(_, _, x)| x).collect()
}

/// Whether a candidate (its embedding and guards) answers a semantic lookup, and with what
/// cosine: at or above `threshold`, and agreeing on the guards when they are on.
pub fn judge(
    query: &Semantic<'_>,
    embedding: &[f32],
    guard: &Guard,
    settings: &CacheSettings,
) -> Option<f32> {
    let threshold = settings.threshold?;
    let sim = dot(query.embedding, embedding);
    (sim >= threshold && (!settings.guards || guard.agrees(query.guard))).then_some(sim)
}

/// The index: exact map, LSH tables, LRU list.
pub struct CacheIndex<V> {
    settings: CacheSettings,
    lsh: Lsh,
    slots: Vec<Option<Entry<V>>>,
    free: Vec<u32>,
    exact: HashMap<u128, u32>,
    tables: Vec<HashMap<(u64, u8), Vec<u32>>>,
    /// Per slot, how many of a lookup's buckets hold it (all 0 between lookups).
    hits: Vec<u8>,
    /// Most recently used first.
    head: u32,
    tail: u32,
    len: usize,
}

impl<V> std::fmt::Debug for CacheIndex<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheIndex")
            .field("settings", &self.settings)
            .field("len", &self.len)
            .finish()
    }
}

impl<V: Clone> CacheIndex<V> {
    /// An empty index for `dim`-dimensional embeddings; the hyperplanes are drawn from
    /// `seed` (the same on every instance).
    pub fn new(settings: CacheSettings, dim: usize, seed: u64) -> CacheIndex<V> {
        CacheIndex {
            settings,
            lsh: Lsh::new(dim, seed),
            slots: Vec::new(),
            free: Vec::new(),
            exact: HashMap::new(),
            tables: (0..TABLES).map(|_| HashMap::new()).collect(),
            hits: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// Looks a request up: the exact key first, then (with `semantic`) the closest
    /// guarded candidate at or above the threshold. A hit becomes the most recently used.
    pub fn get(
        &mut self,
        keys: RequestKeys,
        semantic: Option<&Semantic<'_>>,
        now_ms: u64,
    ) -> Option<(HitKind, V)> {
        if let Some(&slot) = self.exact.get(&keys.exact) {
            if !self.live(slot, now_ms) {
                self.remove(slot);
            } else if self.settings.exact {
                self.touch(slot);
                return self.value(slot).map(|v| (HitKind::Exact, v));
            }
        }
        let s = semantic?;
        self.settings.threshold?;
        let sigs = self.lsh.signatures(s.embedding);
        let mut best: Option<(u32, f32)> = None;
        let mut expired = Vec::new();
        for slot in self.ranked_slots(keys.context, &sigs) {
            let Some(e) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if e.expires_ms <= now_ms {
                expired.push(slot);
                continue;
            }
            if let Some(sim) = judge(s, &e.embedding, &e.guard, &self.settings) {
                if best.is_none_or(|(_, b)| sim > b) {
                    best = Some((slot, sim));
                }
            }
        }
        for slot in expired {
            self.remove(slot);
        }
        let (slot, sim) = best?;
        self.touch(slot);
        self.value(slot).map(|v| (HitKind::Semantic(sim), v))
    }

    /// [`ranked_candidates`] of the query's buckets, counted in place (`hits`) rather
    /// than sorted: a lookup of templated traffic reads `TABLES x MAX_CANDIDATES` ids.
    fn ranked_slots(&mut self, context: u64, sigs: &[u8; TABLES]) -> Vec<u32> {
        // Buckets are kept oldest first.
        let views: Vec<&[u32]> = sigs
            .iter()
            .enumerate()
            .filter_map(|(t, sig)| self.tables[t].get(&(context, *sig)))
            .map(Vec::as_slice)
            .collect();
        if self.hits.len() < self.slots.len() {
            self.hits.resize(self.slots.len(), 0);
        }
        let hits = &mut self.hits;
        let mut order: Vec<u32> = Vec::new();
        round_robin(&views, true, |slot| {
            if let Some(h) = hits.get_mut(slot as usize) {
                if *h == 0 {
                    order.push(slot);
                }
                *h = h.saturating_add(1);
            }
        });
        let ranked = order
            .iter()
            .enumerate()
            .map(|(pos, &slot)| {
                let h = hits.get_mut(slot as usize).map_or(0, std::mem::take);
                (u32::from(h), pos as u32, slot)
            })
            .collect();
        top_candidates(ranked)
    }

    /// Stores `value` for a request (replacing an entry with the same exact key); evicts
    /// the least recently used entry beyond `max_entries`.
    pub fn insert(
        &mut self,
        keys: RequestKeys,
        semantic: Option<&Semantic<'_>>,
        value: V,
        now_ms: u64,
    ) {
        if self.settings.max_entries == 0 {
            return;
        }
        if let Some(&slot) = self.exact.get(&keys.exact) {
            self.remove(slot);
        }
        while self.len >= self.settings.max_entries && self.tail != NIL {
            self.remove(self.tail);
        }
        let (embedding, guard) = match semantic {
            Some(s) if s.embedding.len() == self.lsh.dim() && self.settings.threshold.is_some() => {
                (s.embedding.to_vec().into_boxed_slice(), s.guard.clone())
            }
            _ => (Box::default(), Guard::default()),
        };
        let indexed = !embedding.is_empty();
        let signatures = if indexed {
            self.lsh.signatures(&embedding)
        } else {
            [0; TABLES]
        };
        let entry = Entry {
            exact: keys.exact,
            context: keys.context,
            embedding,
            guard,
            signatures,
            expires_ms: now_ms.saturating_add(self.settings.ttl_ms),
            value,
            prev: NIL,
            next: NIL,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(entry);
                s
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.exact.insert(keys.exact, slot);
        if indexed {
            for (t, sig) in signatures.iter().enumerate() {
                self.tables[t]
                    .entry((keys.context, *sig))
                    .or_default()
                    .push(slot);
            }
        }
        self.push_front(slot);
        self.len += 1;
    }

    fn live(&self, slot: u32, now_ms: u64) -> bool {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|e| e.expires_ms > now_ms)
    }

    fn value(&self, slot: u32) -> Option<V> {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|e| e.value.clone())
    }

    fn remove(&mut self, slot: u32) {
        let Some(e) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.unlink(slot, e.prev, e.next);
        if self.exact.get(&e.exact) == Some(&slot) {
            self.exact.remove(&e.exact);
        }
        if !e.embedding.is_empty() {
            for (t, sig) in e.signatures.iter().enumerate() {
                let key = (e.context, *sig);
                if let Some(b) = self.tables[t].get_mut(&key) {
                    b.retain(|&s| s != slot);
                    if b.is_empty() {
                        self.tables[t].remove(&key);
                    }
                }
            }
        }
        self.free.push(slot);
        self.len -= 1;
    }

    fn links(&mut self, slot: u32) -> Option<&mut Entry<V>> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn unlink(&mut self, slot: u32, prev: u32, next: u32) {
        if let Some(p) = self.links(prev) {
            p.next = next;
        } else if self.head == slot {
            self.head = next;
        }
        if let Some(n) = self.links(next) {
            n.prev = prev;
        } else if self.tail == slot {
            self.tail = prev;
        }
    }

    fn push_front(&mut self, slot: u32) {
        let head = self.head;
        if let Some(e) = self.links(slot) {
            e.prev = NIL;
            e.next = head;
        }
        if let Some(h) = self.links(head) {
            h.prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }

    fn touch(&mut self, slot: u32) {
        if self.head == slot {
            return;
        }
        let Some((prev, next)) = self.links(slot).map(|e| (e.prev, e.next)) else {
            return;
        };
        self.unlink(slot, prev, next);
        self.push_front(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Embedder;

    fn settings(max: usize) -> CacheSettings {
        CacheSettings {
            exact: true,
            threshold: Some(0.9),
            guards: true,
            ttl_ms: 1000,
            max_entries: max,
        }
    }

    fn keys(text: &str) -> RequestKeys {
        RequestKeys::new("m", "{}", &[], text)
    }

    #[test]
    fn exact_hits_ignore_whitespace_and_expire() {
        let mut c: CacheIndex<u32> = CacheIndex::new(settings(10), 4, 1);
        c.insert(keys("hello  world "), None, 7, 0);
        assert_eq!(
            c.get(keys("hello world"), None, 10),
            Some((HitKind::Exact, 7))
        );
        assert_eq!(c.get(keys("hello there"), None, 10), None);
        assert_eq!(c.get(keys("hello world"), None, 1000), None, "expired");
        assert!(c.is_empty());
    }

    #[test]
    fn scope_and_params_separate_entries() {
        let mut c: CacheIndex<u32> = CacheIndex::new(settings(10), 4, 1);
        c.insert(RequestKeys::new("tenant-a", "{}", &[], "q"), None, 1, 0);
        assert_eq!(
            c.get(RequestKeys::new("tenant-b", "{}", &[], "q"), None, 1),
            None
        );
        assert_eq!(
            c.get(
                RequestKeys::new("tenant-a", "{\"temperature\":1}", &[], "q"),
                None,
                1
            ),
            None
        );
        assert_eq!(
            c.get(
                RequestKeys::new("tenant-a", "{}", &[("system", "be brief")], "q"),
                None,
                1
            ),
            None
        );
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut c: CacheIndex<u32> = CacheIndex::new(settings(2), 4, 1);
        c.insert(keys("a"), None, 1, 0);
        c.insert(keys("b"), None, 2, 0);
        assert!(c.get(keys("a"), None, 1).is_some()); // a is now the most recent
        c.insert(keys("c"), None, 3, 0);
        assert_eq!(c.len(), 2);
        assert!(
            c.get(keys("b"), None, 1).is_none(),
            "b was the least recently used"
        );
        assert!(c.get(keys("a"), None, 1).is_some() && c.get(keys("c"), None, 1).is_some());
    }

    #[test]
    fn semantic_hits_need_the_threshold_and_the_guards() {
        let e = Embedder::builtin().unwrap();
        let mut c: CacheIndex<u32> = CacheIndex::new(settings(100), e.dim(), 7);
        let put = |c: &mut CacheIndex<u32>, t: &str, v| {
            let emb = e.embed(t);
            let g = Guard::of(t);
            c.insert(
                keys(t),
                Some(&Semantic {
                    embedding: &emb,
                    guard: &g,
                }),
                v,
                0,
            );
        };
        let get = |c: &mut CacheIndex<u32>, t: &str| {
            let emb = e.embed(t);
            let g = Guard::of(t);
            c.get(
                keys(t),
                Some(&Semantic {
                    embedding: &emb,
                    guard: &g,
                }),
                1,
            )
        };
        put(&mut c, "What is the capital city of France?", 1);
        assert!(matches!(
            get(&mut c, "what is the capital city of france"),
            Some((HitKind::Semantic(_), 1))
        ));
        put(&mut c, "Convert 5 miles to kilometers", 2);
        assert_eq!(
            get(&mut c, "Convert 7 miles to kilometers"),
            None,
            "a number changed"
        );
        put(&mut c, "Which of these is a mammal?", 3);
        assert_eq!(
            get(&mut c, "Which of these is not a mammal?"),
            None,
            "a negation"
        );
    }

    #[test]
    fn guards_read_numbers_negations_and_names() {
        assert!(Guard::of("Add 1,000 and 2").agrees(&Guard::of("add 2 and 1000")));
        assert!(!Guard::of("Is it true?").agrees(&Guard::of("Isn't it true?")));
        assert!(!Guard::of("Tell me about Paris and me")
            .agrees(&Guard::of("Tell me about Rome and me")));
        assert!(!Guard::of("Is the answer (B)?").agrees(&Guard::of("Is the answer (C)?")));
        let q = |opt: &str| {
            Guard::of(&format!(
                "Which organelle makes ATP?\nA. the nucleus\nB. {opt}"
            ))
        };
        assert!(q("the  mitochondrion").agrees(&q("the mitochondrion")));
        assert!(!q("the mitochondrion").agrees(&q("the ribosome")));
    }

    /// An id in several buckets outranks newer ids in one; ties go to the newest; at most
    /// the cap.
    #[test]
    fn candidates_in_more_buckets_come_first() {
        // 12 buckets of 20 newer ids each (newest first), and id 0 the oldest of three.
        let mut buckets: Vec<Vec<u32>> = (0..12u32)
            .map(|t| (0..20).map(|k| 1000 + t * 100 + k).collect())
            .collect();
        for b in buckets.iter_mut().take(3) {
            b.push(0);
        }
        let views: Vec<&[u32]> = buckets.iter().map(Vec::as_slice).collect();
        let c = ranked_candidates(&views);
        assert_eq!(c.len(), MAX_CANDIDATES);
        assert!(c.contains(&0), "240 newer single-bucket ids crowded it out");
        // The rest are the newest: the first 10 of every bucket (ranks 0-9) and 7 of
        // rank 10, in round-robin order.
        assert!(c.contains(&1000) && c.contains(&1109) && !c.contains(&1019));
        // Under the cap, every id comes back once.
        let few: Vec<&[u32]> = vec![&[3, 2, 1], &[2, 9]];
        let mut c = ranked_candidates(&few);
        c.sort_unstable();
        assert_eq!(c, [1, 2, 3, 9]);
    }

    /// Regression: a lookup compared the 128 newest entries of the query's buckets, so in
    /// a context holding thousands of entries (every request under one system prompt) an
    /// older near duplicate was never compared: on the cache-quality bench (5,000 entries in
    /// one context) a third of the paraphrase hits were lost. Here 20,000 newer entries put
    /// 34 to 185 in each of the query's buckets (the newest-first cap missed it). The
    /// entries found in the most of the query's buckets are compared first.
    #[test]
    fn an_old_near_duplicate_is_found_among_thousands_of_newer_entries() {
        let dim = 16;
        let mut state = 7u64;
        let mut unit = || {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    state = routewise_router::baselines::splitmix64(state);
                    (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
                })
                .collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let mut c: CacheIndex<u32> = CacheIndex::new(settings(30_000), dim, 3);
        let g = Guard::default();
        let twin = unit();
        let twin_keys = RequestKeys::new("m", "{}", &[], "the first question");
        c.insert(
            twin_keys,
            Some(&Semantic {
                embedding: &twin,
                guard: &g,
            }),
            1,
            0,
        );
        for i in 0..20_000u32 {
            let e = unit();
            let k = RequestKeys::new("m", "{}", &[], &format!("question {i}"));
            c.insert(
                k,
                Some(&Semantic {
                    embedding: &e,
                    guard: &g,
                }),
                i + 2,
                0,
            );
        }
        let query = RequestKeys::new("m", "{}", &[], "the first question, reworded");
        let got = c.get(
            query,
            Some(&Semantic {
                embedding: &twin,
                guard: &g,
            }),
            1,
        );
        assert!(
            matches!(got, Some((HitKind::Semantic(s), 1)) if s > 0.999),
            "{got:?}"
        );
    }

    /// Regression: the guards read digits only, so "What is two plus three?" was served
    /// the cached answer to "What is two plus two?" (and five pills for one, the second
    /// option for the first).
    #[test]
    fn spelled_out_numbers_are_numbers() {
        let agree = |a: &str, b: &str| Guard::of(a).agrees(&Guard::of(b));
        assert!(!agree("What is two plus two?", "What is two plus three?"));
        assert!(!agree("Can I take one pill?", "Can I take five pills?"));
        assert!(!agree(
            "Is a hundred dollars enough?",
            "Is twenty dollars enough?"
        ));
        assert!(!agree("Pick the first option", "Pick the second option"));
        // The same number in digits or in words is one number.
        assert!(agree("What is two plus 2?", "what is 2 plus two"));
        assert!(agree("Name the third planet", "name the 3rd planet"));
        assert!(!agree("Is he twenty-one?", "Is he twenty-two?"));
    }

    proptest::proptest! {
        #[test]
        fn the_index_stays_consistent_under_any_operations(ops in proptest::collection::vec((0u8..3, 0u8..12, 0u64..50), 1..200)) {
            let mut c: CacheIndex<u8> = CacheIndex::new(settings(5), 4, 3);
            let mut now = 0;
            for (op, key, dt) in ops {
                now += dt;
                let k = keys(&key.to_string());
                let emb = [f32::from(key), 1.0, 0.5, -1.0];
                let norm = emb.iter().map(|x| x * x).sum::<f32>().sqrt();
                let emb: Vec<f32> = emb.iter().map(|x| x / norm).collect();
                let g = Guard::default();
                let s = Semantic { embedding: &emb, guard: &g };
                match op {
                    0 => c.insert(k, Some(&s), key, now),
                    1 => { if let Some((_, v)) = c.get(k, Some(&s), now) { proptest::prop_assert!(v <= 11); } }
                    _ => { if let Some((HitKind::Exact, v)) = c.get(k, None, now) { proptest::prop_assert_eq!(v, key); } }
                }
                proptest::prop_assert!(c.len() <= 5);
                // A lookup leaves its bucket counts at 0.
                proptest::prop_assert!(c.hits.iter().all(|h| *h == 0));
                proptest::prop_assert_eq!(c.len(), c.exact.len());
                // The LRU list holds exactly the live entries.
                let mut n = 0;
                let mut at = c.head;
                while at != NIL { n += 1; at = c.slots[at as usize].as_ref().unwrap().next; proptest::prop_assert!(n <= 5); }
                proptest::prop_assert_eq!(n, c.len());
            }
        }
    }
}
