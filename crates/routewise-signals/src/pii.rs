//! Personal data and secrets in prompts: detection, redaction with placeholders, and the
//! restoring of placeholders in an answer.
//!
//! Detectors (each a candidate pattern, then a check that removes most false positives):
//! * `email` — a pattern after the HTML standard's "valid e-mail address", with a
//!   top-level domain of letters;
//! * `card` — 13 to 19 digits, optionally grouped by spaces or dashes, starting 2-6 (the
//!   major networks' issuer ranges), passing the Luhn checksum (ISO/IEC 7812-1);
//! * `iban` — a country code, two check digits and up to 30 characters, optionally in
//!   groups of four, accepted only when the `iban_validate` crate validates it (the
//!   ISO 13616 mod-97 checksum and the country's registered length and format);
//! * `phone` — international (`+` or `00`, 8-15 digits, E.164's bound) or national numbers
//!   with separators (`(555) 123-4567`, `030 1234 5678`, 9-15 digits, not a date);
//! * `ssn` — US social security numbers `AAA-GG-SSSS` outside the never-issued ranges (SSA);
//! * `ip` — IPv4 and IPv6 addresses, accepted when `std::net` parses them;
//! * `secret` — API-key shapes with well-known prefixes (AWS `AKIA`, OpenAI and Anthropic
//!   `sk-`, GitHub `ghp_` / `github_pat_`, Slack `xox?-`, Google `AIza`, GitLab `glpat-`,
//!   Stripe `sk_live_`, PEM private keys) and long high-entropy tokens (at least 32
//!   characters, letters and digits mixed, Shannon entropy above 4.2 bits per character:
//!   above what hex digests reach).
//!
//! Findings never overlap: when two detectors claim the same bytes, the earlier in
//! [`PiiKind::PRIORITY`] keeps them. Nothing here logs or returns matched text except
//! [`Redactions`], which the gateway keeps in memory for one request only.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A kind of personal data or secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiKind {
    Email,
    Card,
    Iban,
    Phone,
    Ssn,
    Ip,
    Secret,
}

impl PiiKind {
    /// Every kind.
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Card,
        PiiKind::Iban,
        PiiKind::Phone,
        PiiKind::Ssn,
        PiiKind::Ip,
        PiiKind::Secret,
    ];

    /// Which detector keeps bytes two detectors claim (most specific first).
    pub const PRIORITY: [PiiKind; 7] = [
        PiiKind::Secret,
        PiiKind::Email,
        PiiKind::Iban,
        PiiKind::Card,
        PiiKind::Ssn,
        PiiKind::Ip,
        PiiKind::Phone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::Phone => "phone",
            PiiKind::Ssn => "ssn",
            PiiKind::Ip => "ip",
            PiiKind::Secret => "secret",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for PiiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the gateway does with a request in which PII was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiAction {
    /// Refuse the request (400 `pii_blocked`, naming the kinds found, never the text).
    Block,
    /// Replace each finding by a placeholder before any upstream sees it.
    Redact,
    /// Send the request only to models marked `private: true`.
    Restrict,
    /// Only record which kinds were found.
    Tag,
}

impl PiiAction {
    pub fn name(self) -> &'static str {
        match self {
            PiiAction::Block => "block",
            PiiAction::Redact => "redact",
            PiiAction::Restrict => "restrict",
            PiiAction::Tag => "tag",
        }
    }
}

/// A set of kinds (a bit per kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u8);

impl KindSet {
    pub fn insert(&mut self, k: PiiKind) {
        self.0 |= k.bit();
    }

    pub fn contains(self, k: PiiKind) -> bool {
        self.0 & k.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds, in [`PiiKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = PiiKind> {
        PiiKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }

    /// The kinds' names joined by commas (`email,card`).
    pub fn names(self) -> String {
        self.iter().map(PiiKind::name).collect::<Vec<_>>().join(",")
    }
}

impl FromIterator<PiiKind> for KindSet {
    fn from_iter<I: IntoIterator<Item = PiiKind>>(iter: I) -> Self {
        let mut s = KindSet::default();
        for k in iter {
            s.insert(k);
        }
        s
    }
}

/// One detected span (byte offsets into the scanned text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

/// The compiled detectors for a set of kinds.
#[derive(Debug, Clone)]
pub struct Detector {
    kinds: KindSet,
    email: Regex,
    card: Regex,
    iban: Regex,
    phone: Regex,
    ssn: Regex,
    ipv4: Regex,
    ipv6: Regex,
    secret: Regex,
}

/// A pattern compiled once; the patterns are constants, tested below. Digits are written
/// `[0-9]`: the `regex` crate's `\d` is any Unicode digit, which the checks (Luhn, SSN
/// ranges) do not read.
fn re(pattern: &str) -> Regex {
    match Regex::new(pattern) {
        Ok(r) => r,
        // Unreachable: every pattern is a literal covered by the unit tests.
        Err(_) => Regex::new("$^").unwrap_or_else(|_| unreachable!()),
    }
}

impl Detector {
    /// Detectors for `kinds`.
    pub fn new(kinds: impl IntoIterator<Item = PiiKind>) -> Detector {
        Detector {
            kinds: kinds.into_iter().collect(),
            email: re(
                r"(?i)\b[a-z0-9][a-z0-9._%+\-]{0,63}@[a-z0-9](?:[a-z0-9\-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,62}[a-z0-9])?)*\.[a-z]{2,24}\b",
            ),
            card: re(r"\b[0-9](?:[ \-]?[0-9]){11,18}\b"),
            iban: re(r"(?i)\b[a-z]{2}[0-9]{2}(?:[ \-]?[a-z0-9]){11,30}\b"),
            phone: re(
                r"(?:\+|\b00|\(|\b)[0-9][[0-9] \-.()/]{5,22}[0-9](?:\s?(?:x|ext\.?)\s?[0-9]{1,5})?\b",
            ),
            ssn: re(r"\b[0-9]{3}([\- ])[0-9]{2}([\- ])[0-9]{4}\b"),
            ipv4: re(r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b"),
            ipv6: re(r"(?i)(?:\b[0-9a-f]{1,4}|:)(?::[0-9a-f]{0,4}){2,7}(?:%[0-9a-z]+)?"),
            secret: re(concat!(
                r"\bAKIA[0-9A-Z]{16}\b",
                r"|\bsk-(?:proj-|ant-(?:api[0-9][0-9]-)?)?[A-Za-z0-9_\-]{20,}",
                r"|\bgh[pousr]_[A-Za-z0-9]{30,}",
                r"|\bgithub_pat_[A-Za-z0-9_]{22,}",
                r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}",
                r"|\bAIza[0-9A-Za-z_\-]{35}",
                r"|\bglpat-[A-Za-z0-9_\-]{20,}",
                r"|\b[rs]k_live_[0-9A-Za-z]{20,}",
                r"|-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----",
            )),
        }
    }

    /// The kinds this detector looks for.
    pub fn kinds(&self) -> KindSet {
        self.kinds
    }

    /// Every finding in `text`, by start offset, none overlapping.
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut out: Vec<Finding> = Vec::new();
        if text.is_empty() || self.kinds.is_empty() {
            return out;
        }
        // Accepted spans by start (disjoint): the one starting last before a candidate's
        // end is the only one that can overlap it, so each check is a range query.
        let mut claimed: std::collections::BTreeMap<usize, usize> = Default::default();
        let has_digit = text.bytes().any(|b| b.is_ascii_digit());
        for kind in PiiKind::PRIORITY {
            if !self.kinds.contains(kind) {
                continue;
            }
            let mut add = |start: usize, end: usize| {
                let overlaps = claimed
                    .range(..end)
                    .next_back()
                    .is_some_and(|(_, &e)| e > start);
                if !overlaps {
                    claimed.insert(start, end);
                    out.push(Finding { kind, start, end });
                }
            };
            match kind {
                PiiKind::Email if text.contains('@') => {
                    for m in self.email.find_iter(text) {
                        add(m.start(), m.end());
                    }
                }
                PiiKind::Card if has_digit => {
                    for m in self.card.find_iter(text) {
                        // `+44...` is a phone number, never a card.
                        let after_plus = text[..m.start()].ends_with('+');
                        if !after_plus && is_card(m.as_str()) {
                            add(m.start(), m.end());
                        }
                    }
                }
                PiiKind::Iban if has_digit => {
                    for m in self.iban.find_iter(text) {
                        if let Some(len) = iban_prefix(m.as_str()) {
                            add(m.start(), m.start() + len);
                        }
                    }
                }
                PiiKind::Phone if has_digit => {
                    for m in self.phone.find_iter(text) {
                        if let Some((s, e)) = phone_span(m.as_str()) {
                            add(m.start() + s, m.start() + e);
                        }
                    }
                }
                PiiKind::Ssn if has_digit => {
                    for c in self.ssn.captures_iter(text) {
                        let (Some(m), Some(a), Some(b)) = (c.get(0), c.get(1), c.get(2)) else {
                            continue;
                        };
                        if a.as_str() == b.as_str() && is_ssn(m.as_str()) {
                            add(m.start(), m.end());
                        }
                    }
                }
                PiiKind::Ip => {
                    if has_digit {
                        for m in self.ipv4.find_iter(text) {
                            if Ipv4Addr::from_str(m.as_str()).is_ok() {
                                add(m.start(), m.end());
                            }
                        }
                    }
                    if text.contains("::") || text.matches(':').nth(2).is_some() {
                        for m in self.ipv6.find_iter(text) {
                            let s = m.as_str();
                            let addr = s.split('%').next().unwrap_or(s);
                            if addr.matches(':').count() >= 2 && Ipv6Addr::from_str(addr).is_ok() {
                                add(m.start(), m.end());
                            }
                        }
                    }
                }
                PiiKind::Secret => {
                    for m in self.secret.find_iter(text) {
                        add(m.start(), m.end());
                    }
                    for (start, end) in long_tokens(text) {
                        if is_high_entropy(&text[start..end]) {
                            add(start, end);
                        }
                    }
                }
                _ => {}
            }
        }
        out.sort_by_key(|f| f.start);
        out
    }

    /// The kinds found in `text`.
    pub fn kinds_in(&self, text: &str) -> KindSet {
        self.scan(text).into_iter().map(|f| f.kind).collect()
    }
}

/// Luhn's checksum over the digits of `s` (separators skipped).
pub fn luhn(s: &str) -> bool {
    let mut sum = 0u32;
    let mut n = 0;
    for (i, d) in s
        .bytes()
        .rev()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .enumerate()
    {
        let d = if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
        sum += d;
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

fn is_card(s: &str) -> bool {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    // Issuer ranges: 2-6 (Mastercard 2-series, Amex, JCB, Diners, Visa, Mastercard,
    // Maestro, Discover, UnionPay), and JCB's older 1800 / 2131 15-digit ranges.
    let Some(first) = digits.first() else {
        return false;
    };
    let issuer = (b'2'..=b'6').contains(first) || digits.starts_with(b"1800");
    if !(12..=19).contains(&digits.len()) || !issuer {
        return false;
    }
    // Groups, when there are separators, look like a card's (4-6 digits, no lone digit).
    if s.len() != digits.len() && s.split([' ', '-']).any(|g| g.len() < 3 || g.len() > 6) {
        return false;
    }
    luhn(s)
}

/// The length of the longest prefix of `s` (ending at a group boundary) that is a valid
/// IBAN.
fn iban_prefix(s: &str) -> Option<usize> {
    let mut ends: Vec<usize> = s
        .char_indices()
        .filter(|&(_, c)| c == ' ' || c == '-')
        .map(|(i, _)| i)
        .collect();
    ends.push(s.len());
    ends.into_iter().rev().find(|&end| {
        let compact: String = s[..end]
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        compact.len() >= 15 && iban::Iban::from_str(&compact).is_ok()
    })
}

/// The span of a phone number within a candidate, if it is one.
fn phone_span(s: &str) -> Option<(usize, usize)> {
    // Trim an unbalanced trailing or leading bracket left by the candidate pattern.
    let mut start = 0;
    let mut end = s.len();
    let opens = s.matches('(').count();
    let closes = s.matches(')').count();
    if s.starts_with('(') && opens > closes {
        start = 1;
    }
    if s.ends_with(')') && closes > opens {
        end -= 1;
    }
    let t = &s[start..end];
    // The number without an extension (`x123`, `ext. 123`).
    let number = t.find(['x', 'e']).map_or(t, |i| t[..i].trim_end());
    let groups: Vec<&str> = number
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let digits: usize = groups.iter().map(|g| g.len()).sum();
    let international = number.starts_with('+') || number.starts_with("00");
    // Not a date or a date and time (2024-01-31 12, 31.01.2024).
    let date_like = |a: &str, b: &str, c: &str| {
        (a.len() == 4 && b.len() <= 2 && c.len() <= 2)
            || (a.len() <= 2 && b.len() <= 2 && c.len() == 4)
    };
    if groups.len() >= 3 && date_like(groups[0], groups[1], groups[2]) && !international {
        let seps: Vec<char> = number
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(2)
            .collect();
        if seps.len() == 2 && seps[0] == seps[1] && matches!(seps[0], '-' | '/' | '.') {
            return None;
        }
    }
    if international {
        let national = digits - if number.starts_with("00") { 2 } else { 0 };
        return (8..=15).contains(&national).then_some((start, end));
    }
    let separated = groups.len() > 1;
    match digits {
        // Local numbers in three or more groups, or with an area code in brackets
        // ((37) 788-063, 60-56-85-91). Two bare groups (467 3395) are not told apart from
        // a house number and a postcode without context, so they are not taken.
        7 | 8 => {
            let shaped = groups.iter().all(|g| (2..=6).contains(&g.len()))
                && (groups.len() >= 3 || number.starts_with('('));
            shaped.then_some((start, end))
        }
        9..=15 => {
            // A bare run is a phone only at 10 digits (a North American number); a ZIP+4
            // code or a decimal number is not one.
            let zip4 = groups.len() == 2 && groups[0].len() == 5 && groups[1].len() == 4;
            // 3-2-4 is the SSN's shape (the SSN detector decides those).
            let ssn_shape = groups.iter().map(|g| g.len()).eq([3, 2, 4]);
            if ssn_shape {
                return None;
            }
            let decimal = groups.len() == 2 && number.contains('.') && !number.contains(' ');
            ((separated || digits == 10) && !zip4 && !decimal).then_some((start, end))
        }
        _ => None,
    }
}

fn is_ssn(s: &str) -> bool {
    let d: Vec<u32> = s
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .collect();
    if d.len() != 9 {
        return false;
    }
    let area = d[0] * 100 + d[1] * 10 + d[2];
    let group = d[3] * 10 + d[4];
    let serial = d[5] * 1000 + d[6] * 100 + d[7] * 10 + d[8];
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Runs of at least 32 token characters (letters, digits, `+/_-`, then up to two `=`):
/// the shapes of base64 and of API keys. A byte scan, not a regex: it runs on every text.
fn long_tokens(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = text.as_bytes();
    let token = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'_' | b'-');
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            if !token(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && token(b[i]) {
                i += 1;
            }
            let mut end = i;
            while end < b.len() && end - i < 2 && b[end] == b'=' {
                end += 1;
            }
            if i - start >= 32 {
                i = end;
                return Some((start, end));
            }
        }
        None
    })
}

/// Shannon entropy (bits per character) above 4.2 with letters and digits mixed.
fn is_high_entropy(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    if digits == 0 || lower + upper == 0 || (lower == 0 || upper == 0) && digits < 4 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &c in b {
        counts[usize::from(c)] += 1;
    }
    let n = b.len() as f64;
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    h > 4.2
}

/// Placeholders put in place of findings, to restore them in an answer. Its `Debug`
/// shows the placeholders only, never the originals.
#[derive(Clone, Default)]
pub struct Redactions {
    /// (placeholder, original), in order of appearance; the same value gets the same
    /// placeholder.
    pub entries: Vec<(String, String)>,
    /// Original -> its index in `entries`.
    index: std::collections::HashMap<String, usize>,
    counts: [u32; 7],
}

impl fmt::Debug for Redactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(p, _)| p))
            .finish()
    }
}

impl Redactions {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `text` with each finding replaced by a placeholder such as `[EMAIL_1]`.
    pub fn redact(&mut self, text: &str, findings: &[Finding]) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            if f.start < at || f.end > text.len() {
                continue;
            }
            out.push_str(&text[at..f.start]);
            let original = &text[f.start..f.end];
            match self.index.get(original) {
                Some(&i) => out.push_str(&self.entries[i].0),
                None => {
                    let n = &mut self.counts[f.kind as usize];
                    *n += 1;
                    let p = format!("[{}_{}]", f.kind.name().to_ascii_uppercase(), n);
                    out.push_str(&p);
                    self.index.insert(original.to_string(), self.entries.len());
                    self.entries.push((p, original.to_string()));
                }
            }
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// `text` with the placeholders put back (`json`: the originals escaped for the inside
    /// of a JSON string). One pass from left to right: a restored value is never scanned
    /// again, whatever it contains.
    pub fn restore(&self, text: &str, json: bool) -> String {
        if self.entries.is_empty() || !text.contains('[') {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('[') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            match self
                .entries
                .iter()
                .find(|(p, _)| rest.starts_with(p.as_str()))
            {
                Some((p, o)) => {
                    if json {
                        let quoted = serde_json::to_string(o).unwrap_or_default();
                        out.push_str(
                            quoted
                                .get(1..quoted.len().saturating_sub(1))
                                .unwrap_or_default(),
                        );
                    } else {
                        out.push_str(o);
                    }
                    rest = &rest[p.len()..];
                }
                None => {
                    out.push('[');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Whether `tail` (which starts with `[`) could still grow into a placeholder.
    fn could_become_placeholder(&self, tail: &str) -> bool {
        self.entries
            .iter()
            .any(|(p, _)| p.len() > tail.len() && p.starts_with(tail))
    }
}

/// Restores placeholders in a text that arrives in pieces, such as the deltas of a
/// streamed answer, where a placeholder may be cut in two (`[EMA` then `IL_1]`). Each
/// piece is passed on at once except a tail that could still become a placeholder, which
/// is held until the next piece decides it (at most one placeholder's length). The
/// pieces passed on, followed by [`StreamRestore::flush`], are the restored whole.
#[derive(Debug, Clone, Default)]
pub struct StreamRestore {
    held: String,
}

impl StreamRestore {
    /// The restored text that can be passed on after `piece`.
    pub fn push(&mut self, r: &Redactions, piece: &str) -> String {
        self.held.push_str(piece);
        let cut = match self.held.rfind('[') {
            Some(i) if r.could_become_placeholder(&self.held[i..]) => i,
            _ => self.held.len(),
        };
        let out = r.restore(&self.held[..cut], false);
        self.held.drain(..cut);
        out
    }

    /// What is held, restored: the end of the text.
    pub fn flush(&mut self, r: &Redactions) -> String {
        let out = r.restore(&self.held, false);
        self.held.clear();
        out
    }

    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(PiiKind, &str)> {
        Detector::new(PiiKind::ALL)
            .scan(text)
            .into_iter()
            .map(|f| (f.kind, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(
            found("mail jane.doe+x@mail.example.co.uk now"),
            [(PiiKind::Email, "jane.doe+x@mail.example.co.uk")]
        );
        assert_eq!(
            found("card 4111 1111 1111 1111, ok"),
            [(PiiKind::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(
            found("card 4111-1111-1111-1111"),
            [(PiiKind::Card, "4111-1111-1111-1111")]
        );
        assert_eq!(
            found("pay to DE89 3704 0044 0532 0130 00 today"),
            [(PiiKind::Iban, "DE89 3704 0044 0532 0130 00")]
        );
        assert_eq!(
            found("IBAN GB82WEST12345698765432."),
            [(PiiKind::Iban, "GB82WEST12345698765432")]
        );
        assert_eq!(
            found("call +44 20 7946 0958"),
            [(PiiKind::Phone, "+44 20 7946 0958")]
        );
        assert_eq!(
            found("call (555) 123-4567 now"),
            [(PiiKind::Phone, "(555) 123-4567")]
        );
        assert_eq!(found("ssn 123-45-6789"), [(PiiKind::Ssn, "123-45-6789")]);
        assert_eq!(
            found("host 192.168.1.20 up"),
            [(PiiKind::Ip, "192.168.1.20")]
        );
        assert_eq!(
            found("v6 2001:db8::8a2e:370:7334 up"),
            [(PiiKind::Ip, "2001:db8::8a2e:370:7334")]
        );
        assert_eq!(
            found("key AKIAIOSFODNN7EXAMPLE here"),
            [(PiiKind::Secret, "AKIAIOSFODNN7EXAMPLE")]
        );
        assert_eq!(
            found("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 x"),
            [(PiiKind::Secret, "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789")]
        );
        assert_eq!(
            found("s=Zx8Qp2LmN7vR4tY1uW9kJ3hG6fD5sA0eB"),
            [(PiiKind::Secret, "Zx8Qp2LmN7vR4tY1uW9kJ3hG6fD5sA0eB")]
        );
    }

    #[test]
    fn checksums_and_shapes_reject_lookalikes() {
        // Luhn fails.
        assert!(found("order 4111 1111 1111 1112")
            .iter()
            .all(|(k, _)| *k != PiiKind::Card));
        // Mod-97 fails.
        assert!(found("DE89 3704 0044 0532 0130 01")
            .iter()
            .all(|(k, _)| *k != PiiKind::Iban));
        // Never-issued SSN areas, an impossible IPv4, dates, versions, hex digests.
        assert!(found("id 666-12-3456 or 900-12-3456").is_empty());
        assert!(found("999.10.10.10").iter().all(|(k, _)| *k != PiiKind::Ip));
        assert!(found("on 2024-01-31 at 12:30:45").is_empty());
        assert!(found("version 1.2.3 and 3.14159").is_empty());
        assert!(
            found("sha e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .is_empty()
        );
        assert!(found("The answer is 42 and the year 1969.").is_empty());
    }

    #[test]
    fn only_the_configured_kinds() {
        let d = Detector::new([PiiKind::Email]);
        let text = "a@b.io and 4111 1111 1111 1111";
        assert_eq!(d.kinds_in(text), [PiiKind::Email].into_iter().collect());
    }

    #[test]
    fn redaction_round_trips_and_reuses_placeholders() {
        let d = Detector::new(PiiKind::ALL);
        let text = "write to ann@x.org, again ann@x.org, card 4111 1111 1111 1111";
        let mut r = Redactions::default();
        let red = r.redact(text, &d.scan(text));
        assert_eq!(red, "write to [EMAIL_1], again [EMAIL_1], card [CARD_1]");
        assert!(!red.contains("ann@"));
        assert_eq!(r.restore(&red, false), text);
        assert_eq!(r.restore("Dear [EMAIL_1]", true), "Dear ann@x.org");
    }

    fn redactions(pairs: &[(&str, &str)]) -> Redactions {
        let mut r = Redactions::default();
        for (p, o) in pairs {
            r.index.insert(o.to_string(), r.entries.len());
            r.entries.push((p.to_string(), o.to_string()));
        }
        r
    }

    #[test]
    fn restore_does_not_rescan_a_restored_value() {
        let r = redactions(&[("[EMAIL_1]", "x[IP_1]@y.org"), ("[IP_1]", "10.0.0.1")]);
        assert_eq!(
            r.restore("[EMAIL_1] [IP_1] [NOPE_1] [", false),
            "x[IP_1]@y.org 10.0.0.1 [NOPE_1] ["
        );
    }

    #[test]
    fn stream_restore_holds_a_cut_placeholder_until_it_is_decided() {
        let r = redactions(&[("[EMAIL_1]", "ann@x.org")]);
        let mut s = StreamRestore::default();
        assert_eq!(s.push(&r, "write to [EM"), "write to ");
        assert!(s.is_holding());
        assert_eq!(s.push(&r, "AIL_1"), "");
        assert_eq!(s.push(&r, "] now ["), "ann@x.org now ");
        // `[` then something that is no placeholder: passed on as it is.
        assert_eq!(s.push(&r, "x] done"), "[x] done");
        assert_eq!(s.push(&r, " [EMAIL"), " ");
        assert_eq!(s.flush(&r), "[EMAIL");
        assert!(!s.is_holding());
    }

    #[test]
    fn regression_non_ascii_digits_neither_panic_nor_match() {
        // Arabic-Indic digits: `\d` would have matched them and the card check indexed an
        // empty digit list.
        assert!(found("order 1: \u{661}\u{662}\u{663}\u{664}\u{665}\u{666}\u{667}\u{668}\u{669}\u{660}\u{661}\u{662}\u{663}").is_empty());
    }

    #[test]
    fn many_findings_scan_in_linear_time() {
        let text = "1.1.1.1 ".repeat(50_000);
        let f = Detector::new(PiiKind::ALL).scan(&text);
        assert_eq!(f.len(), 50_000);
        let mut r = Redactions::default();
        assert_eq!(r.redact(&text, &f).matches("[IP_1]").count(), 50_000);
    }

    #[test]
    fn luhn_known_values() {
        assert!(luhn("79927398713"));
        assert!(!luhn("79927398710"));
        assert!(luhn("4111111111111111"));
    }

    proptest::proptest! {
        #[test]
        fn findings_are_in_bounds_ordered_and_disjoint(text in "\\PC{0,200}") {
            let f = Detector::new(PiiKind::ALL).scan(&text);
            for w in f.windows(2) {
                proptest::prop_assert!(w[0].end <= w[1].start);
            }
            for x in &f {
                proptest::prop_assert!(x.start < x.end && x.end <= text.len());
                proptest::prop_assert!(text.is_char_boundary(x.start) && text.is_char_boundary(x.end));
            }
        }

        #[test]
        fn redacted_text_has_no_finding_of_a_valid_card(prefix in "[a-z ]{0,20}", suffix in "[a-z ]{0,20}") {
            let text = format!("{prefix} 4111 1111 1111 1111 {suffix}");
            let d = Detector::new(PiiKind::ALL);
            let mut r = Redactions::default();
            let red = r.redact(&text, &d.scan(&text));
            proptest::prop_assert!(!red.contains("4111"));
            proptest::prop_assert_eq!(r.restore(&red, false), text);
        }

        #[test]
        fn stream_restore_of_any_split_is_the_whole_restored(
            parts in proptest::collection::vec("(\\[|\\]|\\[EMAIL_1\\]|\\[CARD_12\\]|EMAIL|_1|[a-z ]|é){0,8}", 0..12),
        ) {
            let r = redactions(&[("[EMAIL_1]", "ann@x.org"), ("[CARD_12]", "4111 1111 1111 1111"), ("[CARD_1]", "5500 0000 0000 0004")]);
            let mut s = StreamRestore::default();
            let mut got = String::new();
            for p in &parts {
                got.push_str(&s.push(&r, p));
            }
            got.push_str(&s.flush(&r));
            proptest::prop_assert_eq!(got, r.restore(&parts.concat(), false));
        }
    }
}
