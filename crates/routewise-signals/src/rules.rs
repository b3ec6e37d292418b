//! Routing rules (`routes:` in the gateway config): an ordered list of named routes, each a
//! condition (`when`) and actions (`then`). The first route whose condition holds applies;
//! a route with `continue: true` applies and lets the next ones be tried too. The learned
//! router then ranks within what the matched routes leave.
//!
//! What belongs here: the raw (serde) form of a route, its validation into a compiled
//! [`RuleSet`] (every problem collected with its field path, regexes and keyword
//! automata built once, model names resolved to catalog indices), and the evaluation of
//! a request's [`Signals`] into an [`Outcome`] with the reason each route matched. No I/O:
//! the gateway builds the signals from a request and applies the outcome.
//!
//! Conditions (one key each; combine with `all` / `any` / `not`):
//! * `keywords: [..]` — any of the words or phrases, case-insensitive, at word boundaries;
//!   `regex: ".."` (Rust `regex` syntax). All keyword lists share one Aho-Corasick
//!   automaton and all regexes one `RegexSet` per scope, run once per request on first
//!   use, whatever the number of routes. Both read
//!   the last user message, or every message with `scope: all`.
//! * `tokens: {min, max}` — the estimated prompt tokens, bounds inclusive.
//! * `tools: true`, `images: true`, `json: true` — the request has tools (or functions),
//!   an image part, or asks for JSON / structured output.
//! * `user: [..]`, `tag: "key=value"` (or `"key"`), `header: {name, equals | regex}` —
//!   request metadata: the `user` field, the `x-routewise-tags` header
//!   (`team=search,env=prod`, followed by the API key's own tags), any header.
//! * `team: [..]` — the team of the request's API key (`auth: {mode: keys}`).
//! * `language: [eng, deu, ..]` — the language of the last user message detected by
//!   `whatlang` (ISO 639-3 codes or English names).
//! * `description: ".."`, with `threshold` (default [`DEFAULT_THRESHOLD`]) and optional
//!   `examples: [..]` — the idea of Arch-Router (Tran et al., 2025, "Arch-Router: aligning
//!   LLM routing with human preferences"): routes are described in natural language and a
//!   request goes to the route whose description fits it. Here the fit is the cosine of
//!   static embeddings (the built-in model2vec-style model, [`crate::describe`]), not a
//!   1.5B generative model: the route's vector (the description's embedding, averaged with
//!   its examples') against the last user message's. A description condition holds when
//!   its similarity reaches the threshold and no other route's description is closer
//!   (descriptions compete, so a broad route listed first does not take every request).
//!
//! Actions: `models: [..]` (the pool), `exclude: [..]`, `min_context`, `min_tier` (models
//! with `quality_tier` at least this), `model: m` (forced first; the pool is the fallback),
//! `policy: {lambda: 5}` (or a budget), `cascade: false|true`, `tags: {k: v}`, `pii:
//! block|redact|restrict|tag` (this route's PII action), `block: "message"` with
//! `status: 400|403`.

use std::collections::{BTreeMap, HashSet};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexSet};
use routewise_router::Policy;
use serde::Deserialize;

use crate::describe::{cosines, Embedder};
use crate::pii::PiiAction;
use crate::Issue;

/// Similarity a description condition needs when it gives no `threshold`.
pub const DEFAULT_THRESHOLD: f32 = 0.35;

/// Most routes a config may list (each is checked in order on every request).
pub const MAX_ROUTES: usize = 1024;

/// The compiled size a route's regex may take (a pathological pattern is a config error).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Raw (serde) form

/// One `routes:` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    /// Absent: the route always matches (a catch-all).
    #[serde(default)]
    pub when: Option<RawCondition>,
    #[serde(default)]
    pub then: RawAction,
    #[serde(default, rename = "continue")]
    pub continue_: bool,
}

/// A condition as written: exactly one kind key, plus its modifiers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    #[serde(default)]
    pub all: Option<Vec<RawCondition>>,
    #[serde(default)]
    pub any: Option<Vec<RawCondition>>,
    #[serde(default)]
    pub not: Option<Box<RawCondition>>,
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub tokens: Option<RawRange>,
    #[serde(default)]
    pub tools: Option<bool>,
    #[serde(default)]
    pub images: Option<bool>,
    #[serde(default)]
    pub json: Option<bool>,
    #[serde(default)]
    pub user: Option<OneOrMany>,
    #[serde(default)]
    pub team: Option<OneOrMany>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub header: Option<RawHeader>,
    #[serde(default)]
    pub language: Option<OneOrMany>,
    #[serde(default)]
    pub description: Option<String>,
    /// Modifiers.
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub examples: Option<Vec<String>>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRange {
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeader {
    pub name: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// Which text a keyword, regex or description condition reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The last user message.
    #[default]
    Last,
    /// Every message's text.
    All,
}

/// The actions of a route as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub exclude: Option<Vec<String>>,
    #[serde(default)]
    pub min_context: Option<u64>,
    #[serde(default)]
    pub min_tier: Option<u32>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub policy: Option<Policy>,
    #[serde(default)]
    pub cascade: Option<bool>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub pii: Option<PiiAction>,
    #[serde(default)]
    pub block: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
}

// ---------------------------------------------------------------------------------------
// Compiled form

/// What the rules need to know about one configured model.
#[derive(Debug, Clone)]
pub struct ModelFacts<'a> {
    pub name: &'a str,
    pub context_window: Option<u64>,
    pub quality_tier: Option<u32>,
}

/// A compiled condition.
#[derive(Debug, Clone)]
enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    /// Index into the rule set's keyword conditions.
    Keywords {
        id: usize,
        scope: Scope,
    },
    /// Index into the rule set's regex conditions (`pattern` for the explanation).
    Regex {
        id: usize,
        scope: Scope,
        pattern: String,
    },
    Tokens {
        min: u64,
        max: u64,
    },
    Tools(bool),
    Images(bool),
    Json(bool),
    User(Vec<String>),
    Team(Vec<String>),
    Tag {
        key: String,
        value: Option<String>,
    },
    Header {
        name: String,
        equals: Option<String>,
        regex: Option<Regex>,
    },
    Language(Vec<whatlang::Lang>),
    Description {
        /// Row in the rule set's description vectors.
        row: usize,
        threshold: f32,
        scope: Scope,
    },
}

/// How a matched request is blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub message: String,
    /// 400 or 403.
    pub status: u16,
}

/// The compiled actions of one route.
#[derive(Debug, Clone, Default)]
pub struct Action {
    /// Models the route allows (by index), when it restricts the pool.
    pub allow: Option<Vec<bool>>,
    pub force: Option<usize>,
    pub policy: Option<Policy>,
    pub cascade: Option<bool>,
    pub tags: Vec<(String, String)>,
    pub pii: Option<PiiAction>,
    pub block: Option<Block>,
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    when: Option<Cond>,
    pub action: Action,
    pub continue_: bool,
}

/// The compiled `routes:` list.
#[derive(Debug, Clone)]
pub struct RuleSet {
    routes: Vec<Route>,
    n_models: usize,
    /// One unit vector per description condition, row-major.
    descriptions: Vec<f32>,
    /// The embedder of description conditions (set when there is at least one).
    embedder: Option<Embedder>,
    needs_language: bool,
    headers: Vec<String>,
    /// Whether a description condition reads the last user message.
    last_scoped_descriptions: bool,
    /// Keyword and regex conditions, united per scope (`Scope as usize`).
    keywords: [KeywordUnion; 2],
    regexes: [RegexUnion; 2],
}

/// What a request looks like to the rules (built by the gateway from the parsed body
/// and the headers, borrowing them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals<'a> {
    /// The last user message's text.
    pub last_user: &'a str,
    /// Every message's text, joined by newlines.
    pub all_text: &'a str,
    /// The estimated prompt tokens.
    pub tokens: u64,
    pub tools: bool,
    pub images: bool,
    pub json: bool,
    pub user: Option<&'a str>,
    /// The API key's team (`auth: {mode: keys}`).
    pub team: Option<&'a str>,
    /// `x-routewise-tags` entries, then the API key's tags (`key`, `value`; value empty for a bare key).
    pub tags: &'a [(&'a str, &'a str)],
    /// The headers named in `header:` conditions ([`RuleSet::header_names`]), name
    /// lowercase.
    pub headers: &'a [(&'a str, &'a str)],
    /// `last_user`'s embedding when the caller already has it ([`RuleSet::embed`]).
    pub last_user_embedding: Option<&'a [f32]>,
}

/// One route that matched, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    pub route: usize,
    pub why: String,
}

/// What the rules decided for one request.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The routes that applied, in order.
    pub matched: Vec<Matched>,
    /// Allowed models (by index): the intersection of the matched routes' pools.
    pub allow: Option<Vec<bool>>,
    /// A forced model (the last matched route's).
    pub force: Option<usize>,
    pub policy: Option<Policy>,
    pub cascade: Option<bool>,
    pub tags: Vec<(String, String)>,
    pub pii: Option<PiiAction>,
    pub block: Option<Block>,
}

impl Outcome {
    /// Whether model `m` may be tried.
    pub fn allows(&self, m: usize) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|a| a.get(m).copied().unwrap_or(false))
    }
}

impl RuleSet {
    /// Compiles `routes` against the configured models. `embedder` opens the description
    /// model (called once, only when a route has a description condition). Every problem is
    /// returned with its path under `routes`.
    pub fn compile(
        raw: &[RawRoute],
        models: &[ModelFacts<'_>],
        embedder: impl FnOnce() -> Result<Embedder, String>,
    ) -> Result<RuleSet, Vec<Issue>> {
        let mut c = Compiler {
            models,
            issues: Vec::new(),
            texts: Vec::new(),
            needs_language: false,
            headers: Vec::new(),
            last_scoped_descriptions: false,
            keyword_conds: Vec::new(),
            regex_conds: Vec::new(),
        };
        if raw.len() > MAX_ROUTES {
            c.issue(
                "routes",
                format!("at most {MAX_ROUTES} routes, found {}", raw.len()),
            );
        }
        let mut names = HashSet::new();
        let mut routes = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let path = format!("routes[{i}]");
            if r.name.trim().is_empty() {
                c.issue(&format!("{path}.name"), "must not be empty".into());
            } else if !names.insert(r.name.as_str()) {
                c.issue(
                    &format!("{path}.name"),
                    format!("duplicate route name `{}`", r.name),
                );
            } else if !r.name.bytes().all(|b| b.is_ascii_graphic()) {
                c.issue(
                    &format!("{path}.name"),
                    "must be printable ASCII without spaces (it is sent in the x-routewise-route header)"
                        .into(),
                );
            }
            let when = r
                .when
                .as_ref()
                .and_then(|w| c.condition(w, &format!("{path}.when")));
            let action = c.action(&r.then, &format!("{path}.then"));
            routes.push(Route {
                name: r.name.clone(),
                when,
                action,
                continue_: r.continue_,
            });
        }
        let keywords = [Scope::Last, Scope::All].map(|scope| {
            let mut u = KeywordUnion {
                n_conditions: c.keyword_conds.len(),
                ..KeywordUnion::default()
            };
            for (id, (s, words)) in c.keyword_conds.iter().enumerate() {
                if *s != scope {
                    continue;
                }
                for w in words {
                    u.owners.push((id, u.words.len()));
                    u.words.push(w.clone());
                }
            }
            if !u.words.is_empty() {
                u.automaton = AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&u.words)
                    .ok();
            }
            u
        });
        let regexes = [Scope::Last, Scope::All].map(|scope| {
            let mut u = RegexUnion {
                n_conditions: c.regex_conds.len(),
                ..RegexUnion::default()
            };
            let mut patterns = Vec::new();
            for (id, (s, p)) in c.regex_conds.iter().enumerate() {
                if *s == scope {
                    u.owners.push(id);
                    patterns.push(p.as_str());
                }
            }
            if !patterns.is_empty() {
                u.set = regex::RegexSetBuilder::new(patterns)
                    .size_limit(REGEX_SIZE_LIMIT * 16)
                    .build()
                    .ok();
            }
            u
        });
        let mut descriptions = Vec::new();
        let mut emb = None;
        if !c.texts.is_empty() {
            match embedder() {
                Ok(e) => {
                    for (text, examples) in &c.texts {
                        descriptions.extend(e.route_vector(text, examples));
                    }
                    emb = Some(e);
                }
                Err(e) => c.issue(
                    "routes",
                    format!("description conditions need the embedding model: {e}"),
                ),
            }
        }
        if !c.issues.is_empty() {
            return Err(c.issues);
        }
        Ok(RuleSet {
            routes,
            n_models: models.len(),
            descriptions,
            embedder: emb,
            needs_language: c.needs_language,
            headers: c.headers,
            last_scoped_descriptions: c.last_scoped_descriptions,
            keywords,
            regexes,
        })
    }

    /// The rule set with its model indices (pools, forced models) moved to another order:
    /// `to[i]` is the new index of model `i` (`None`: not served), `n` the new number of
    /// models. Compiled in config order, a gateway reorders it once to its catalog's.
    pub fn reordered(&self, to: &[Option<usize>], n: usize) -> RuleSet {
        let mut out = self.clone();
        out.n_models = n;
        for route in &mut out.routes {
            let a = &mut route.action;
            if let Some(allow) = &a.allow {
                let mut moved = vec![false; n];
                for (i, &ok) in allow.iter().enumerate() {
                    if let Some(slot) = to.get(i).copied().flatten().and_then(|j| moved.get_mut(j))
                    {
                        *slot = ok;
                    }
                }
                a.allow = Some(moved);
            }
            a.force = a.force.and_then(|f| to.get(f).copied().flatten());
        }
        out
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Header names (lowercase) that `header:` conditions read.
    pub fn header_names(&self) -> &[String] {
        &self.headers
    }

    /// Evaluates the routes in order on a request.
    pub fn evaluate(&self, s: &Signals<'_>) -> Outcome {
        let mut lazy = Lazy {
            last_embedding: s.last_user_embedding,
            ..Lazy::default()
        };
        let mut out = Outcome::default();
        for (i, route) in self.routes.iter().enumerate() {
            let why = match &route.when {
                None => Some("always".to_string()),
                Some(c) => self.eval(c, s, &mut lazy),
            };
            let Some(why) = why else { continue };
            out.matched.push(Matched { route: i, why });
            let a = &route.action;
            if let Some(b) = &a.block {
                out.block = Some(b.clone());
                return out;
            }
            if let Some(allow) = &a.allow {
                match &mut out.allow {
                    None => out.allow = Some(allow.clone()),
                    Some(cur) => cur.iter_mut().zip(allow).for_each(|(c, a)| *c &= *a),
                }
            }
            if a.force.is_some() {
                out.force = a.force;
            }
            if a.policy.is_some() {
                out.policy = a.policy;
            }
            if a.cascade.is_some() {
                out.cascade = a.cascade;
            }
            if a.pii.is_some() {
                out.pii = a.pii;
            }
            out.tags.extend(a.tags.iter().cloned());
            if !route.continue_ {
                break;
            }
        }
        if let Some(a) = &mut out.allow {
            a.resize(self.n_models, false);
        }
        out
    }

    fn eval(&self, c: &Cond, s: &Signals<'_>, lazy: &mut Lazy<'_>) -> Option<String> {
        let text = |scope: Scope| match scope {
            Scope::Last => s.last_user,
            Scope::All => s.all_text,
        };
        match c {
            Cond::All(cs) => {
                let mut whys = Vec::with_capacity(cs.len());
                for c in cs {
                    whys.push(self.eval(c, s, lazy)?);
                }
                Some(whys.join(" and "))
            }
            Cond::Any(cs) => cs.iter().find_map(|c| self.eval(c, s, lazy)),
            Cond::Not(c) => match self.eval(c, s, lazy) {
                Some(_) => None,
                None => Some(format!("not ({})", c.kind())),
            },
            Cond::Keywords { id, scope } => {
                let found = lazy.keywords[*scope as usize]
                    .get_or_insert_with(|| self.keywords[*scope as usize].matches(text(*scope)));
                let word = (*found.get(*id)?)?;
                Some(format!(
                    "keyword \"{}\"",
                    self.keywords[*scope as usize].words[word]
                ))
            }
            Cond::Regex { id, scope, pattern } => {
                let found = lazy.regexes[*scope as usize]
                    .get_or_insert_with(|| self.regexes[*scope as usize].matches(text(*scope)));
                found
                    .get(*id)
                    .copied()
                    .unwrap_or(false)
                    .then(|| format!("regex /{pattern}/"))
            }
            Cond::Tokens { min, max } => (s.tokens >= *min && s.tokens <= *max)
                .then(|| format!("tokens {} in {min}..={max}", s.tokens)),
            Cond::Tools(want) => (s.tools == *want).then(|| format!("tools: {want}")),
            Cond::Images(want) => (s.images == *want).then(|| format!("images: {want}")),
            Cond::Json(want) => (s.json == *want).then(|| format!("json: {want}")),
            Cond::User(users) => s
                .user
                .filter(|u| users.iter().any(|x| x == u))
                .map(|u| format!("user {u}")),
            Cond::Team(teams) => s
                .team
                .filter(|t| teams.iter().any(|x| x == t))
                .map(|t| format!("team {t}")),
            Cond::Tag { key, value } => s
                .tags
                .iter()
                .find(|(k, v)| k == key && value.as_deref().is_none_or(|want| want == *v))
                .map(|(k, v)| {
                    if v.is_empty() {
                        format!("tag {k}")
                    } else {
                        format!("tag {k}={v}")
                    }
                }),
            Cond::Header {
                name,
                equals,
                regex,
            } => {
                let v = s.headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v)?;
                let ok = equals.as_deref().is_none_or(|e| e == v)
                    && regex.as_ref().is_none_or(|r| r.is_match(v));
                ok.then(|| format!("header {name}"))
            }
            Cond::Language(langs) => {
                let detected = *lazy
                    .language
                    .get_or_insert_with(|| detect_language(s.last_user));
                detected
                    .filter(|l| langs.contains(l))
                    .map(|l| format!("language {}", l.code()))
            }
            Cond::Description {
                row,
                threshold,
                scope,
            } => {
                let sims = self.similarities(lazy, text(*scope), *scope);
                let sim = *sims.get(*row)?;
                let best = sims.iter().copied().fold(f32::MIN, f32::max);
                (sim >= *threshold && sim >= best)
                    .then(|| format!("description similarity {sim:.2} >= {threshold:.2}"))
            }
        }
    }

    /// Every description's cosine to the text (computed once per request and scope).
    fn similarities<'l>(&self, lazy: &'l mut Lazy<'_>, text: &str, scope: Scope) -> &'l [f32] {
        let slot = match scope {
            Scope::Last => &mut lazy.sims_last,
            Scope::All => &mut lazy.sims_all,
        };
        slot.get_or_insert_with(|| match (&self.embedder, scope, lazy.last_embedding) {
            (Some(e), Scope::Last, Some(q)) if q.len() == e.dim() => cosines(q, &self.descriptions),
            (Some(e), _, _) => e.similarities(text, &self.descriptions),
            (None, _, _) => Vec::new(),
        })
    }

    /// Whether a description condition reads the last user message (whose embedding the
    /// caller may then compute once with [`RuleSet::embed`] and share).
    pub fn needs_embedding(&self) -> bool {
        self.embedder.is_some() && self.last_scoped_descriptions
    }

    /// `text`'s embedding by the description model (`None` without description conditions).
    pub fn embed(&self, text: &str) -> Option<Vec<f32>> {
        self.embedder.as_ref().map(|e| e.embed(text))
    }

    /// Whether any condition reads the detected language.
    pub fn needs_language(&self) -> bool {
        self.needs_language
    }
}

impl Cond {
    fn kind(&self) -> &'static str {
        match self {
            Cond::All(_) => "all",
            Cond::Any(_) => "any",
            Cond::Not(_) => "not",
            Cond::Keywords { .. } => "keywords",
            Cond::Regex { .. } => "regex",
            Cond::Tokens { .. } => "tokens",
            Cond::Tools(_) => "tools",
            Cond::Images(_) => "images",
            Cond::Json(_) => "json",
            Cond::User(_) => "user",
            Cond::Team(_) => "team",
            Cond::Tag { .. } => "tag",
            Cond::Header { .. } => "header",
            Cond::Language(_) => "language",
            Cond::Description { .. } => "description",
        }
    }
}

/// Per-request values computed on first use.
#[derive(Default)]
struct Lazy<'a> {
    last_embedding: Option<&'a [f32]>,
    /// Per scope: each keyword condition's first matching word.
    keywords: [Option<Vec<Option<usize>>>; 2],
    /// Per scope: whether each regex condition matches.
    regexes: [Option<Vec<bool>>; 2],
    language: Option<Option<whatlang::Lang>>,
    sims_last: Option<Vec<f32>>,
    sims_all: Option<Vec<f32>>,
}

/// Every keyword condition of one scope in one Aho-Corasick automaton: one pass over the
/// text answers them all.
#[derive(Debug, Clone, Default)]
struct KeywordUnion {
    automaton: Option<AhoCorasick>,
    /// Per pattern: (keyword condition, word).
    owners: Vec<(usize, usize)>,
    /// Every word, by global word index.
    words: Vec<String>,
    /// Keyword conditions in this scope (ids are global across scopes).
    n_conditions: usize,
}

impl KeywordUnion {
    /// For each keyword condition id: its first word found at word boundaries.
    fn matches(&self, text: &str) -> Vec<Option<usize>> {
        let mut out = vec![None; self.n_conditions];
        let Some(a) = &self.automaton else {
            return out;
        };
        for m in a.find_overlapping_iter(text) {
            if !at_word_boundaries(text, m.start(), m.end()) {
                continue;
            }
            let (cond, word) = self.owners[m.pattern().as_usize()];
            if out[cond].is_none() {
                out[cond] = Some(word);
            }
        }
        out
    }
}

/// Every regex condition of one scope in one `RegexSet` (one pass).
#[derive(Debug, Clone, Default)]
struct RegexUnion {
    set: Option<RegexSet>,
    /// Per pattern: its regex condition id.
    owners: Vec<usize>,
    n_conditions: usize,
}

impl RegexUnion {
    fn matches(&self, text: &str) -> Vec<bool> {
        let mut out = vec![false; self.n_conditions];
        if let Some(set) = &self.set {
            for i in set.matches(text).iter() {
                out[self.owners[i]] = true;
            }
        }
        out
    }
}

/// Bytes of a message the language detector reads (its accuracy saturates well before).
const LANGUAGE_PREFIX: usize = 1024;

fn detect_language(text: &str) -> Option<whatlang::Lang> {
    let t = routewise_features::static_embed::prefix(text, LANGUAGE_PREFIX);
    whatlang::detect(t)
        .filter(whatlang::Info::is_reliable)
        .map(|i| i.lang())
}

/// Whether `text[start..end]` is not glued to a letter or digit on either side.
fn at_word_boundaries(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    let first = text[start..end].chars().next();
    let last = text[start..end].chars().next_back();
    let glued = |outer: Option<char>, inner: Option<char>| matches!((outer, inner), (Some(o), Some(i)) if o.is_alphanumeric() && i.is_alphanumeric());
    !glued(before, first) && !glued(after, last)
}

struct Compiler<'m> {
    models: &'m [ModelFacts<'m>],
    issues: Vec<Issue>,
    /// Description conditions' texts and examples, in row order.
    texts: Vec<(String, Vec<String>)>,
    needs_language: bool,
    headers: Vec<String>,
    last_scoped_descriptions: bool,
    /// Keyword conditions (scope, words) and regex conditions (scope, pattern), by id.
    keyword_conds: Vec<(Scope, Vec<String>)>,
    regex_conds: Vec<(Scope, String)>,
}

impl Compiler<'_> {
    fn issue(&mut self, path: &str, message: String) {
        self.issues.push(Issue {
            path: path.to_string(),
            message,
        });
    }

    fn model(&mut self, name: &str, path: &str) -> Option<usize> {
        let i = self.models.iter().position(|m| m.name == name);
        if i.is_none() {
            let known: Vec<&str> = self.models.iter().map(|m| m.name).collect();
            self.issue(
                path,
                format!(
                    "unknown model `{name}`; configured models: {}",
                    known.join(", ")
                ),
            );
        }
        i
    }

    fn condition(&mut self, raw: &RawCondition, path: &str) -> Option<Cond> {
        let mut kinds = Vec::new();
        macro_rules! kind {
            ($($field:ident),*) => { $( if raw.$field.is_some() { kinds.push(stringify!($field)); } )* };
        }
        kind!(
            all,
            any,
            not,
            keywords,
            regex,
            tokens,
            tools,
            images,
            json,
            user,
            team,
            tag,
            header,
            language,
            description
        );
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                "a condition needs one of all, any, not, keywords, regex, tokens, tools, images, json, user, team, tag, header, language, description".to_string()
            } else {
                format!(
                    "a condition has exactly one kind; found {} (combine them with `all` or `any`)",
                    kinds.join(", ")
                )
            };
            self.issue(path, msg);
            return None;
        }
        let scoped = raw.keywords.is_some() || raw.regex.is_some() || raw.description.is_some();
        if raw.scope.is_some() && !scoped {
            self.issue(
                &format!("{path}.scope"),
                "only keywords, regex and description conditions take a scope".into(),
            );
        }
        if raw.description.is_none() && (raw.threshold.is_some() || raw.examples.is_some()) {
            self.issue(
                path,
                "`threshold` and `examples` belong to a description condition".into(),
            );
        }
        let scope = raw.scope.unwrap_or_default();
        let list = |c: &mut Self, items: &[RawCondition], key: &str| -> Option<Vec<Cond>> {
            if items.is_empty() {
                c.issue(
                    &format!("{path}.{key}"),
                    "must list at least one condition".into(),
                );
                return None;
            }
            let out: Vec<Option<Cond>> = items
                .iter()
                .enumerate()
                .map(|(i, r)| c.condition(r, &format!("{path}.{key}[{i}]")))
                .collect();
            out.into_iter().collect()
        };
        if let Some(items) = &raw.all {
            return list(self, items, "all").map(Cond::All);
        }
        if let Some(items) = &raw.any {
            return list(self, items, "any").map(Cond::Any);
        }
        if let Some(inner) = &raw.not {
            return self
                .condition(inner, &format!("{path}.not"))
                .map(|c| Cond::Not(Box::new(c)));
        }
        if let Some(words) = &raw.keywords {
            let words: Vec<String> = words.iter().map(|w| w.trim().to_string()).collect();
            if words.is_empty() || words.iter().any(String::is_empty) {
                self.issue(
                    &format!("{path}.keywords"),
                    "must list at least one non-empty keyword".into(),
                );
                return None;
            }
            if let Err(e) = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .build(&words)
            {
                self.issue(&format!("{path}.keywords"), e.to_string());
                return None;
            }
            let id = self.keyword_conds.len();
            self.keyword_conds.push((scope, words));
            return Some(Cond::Keywords { id, scope });
        }
        if let Some(re) = &raw.regex {
            let pattern = self
                .regex(re, &format!("{path}.regex"))?
                .as_str()
                .to_string();
            let id = self.regex_conds.len();
            self.regex_conds.push((scope, pattern.clone()));
            return Some(Cond::Regex { id, scope, pattern });
        }
        if let Some(r) = raw.tokens {
            let (min, max) = (r.min.unwrap_or(0), r.max.unwrap_or(u64::MAX));
            if r.min.is_none() && r.max.is_none() {
                self.issue(
                    &format!("{path}.tokens"),
                    "give `min`, `max` or both".into(),
                );
            } else if min > max {
                self.issue(
                    &format!("{path}.tokens"),
                    format!("`min` ({min}) is above `max` ({max})"),
                );
            }
            return Some(Cond::Tokens { min, max });
        }
        if let Some(b) = raw.tools {
            return Some(Cond::Tools(b));
        }
        if let Some(b) = raw.images {
            return Some(Cond::Images(b));
        }
        if let Some(b) = raw.json {
            return Some(Cond::Json(b));
        }
        if let Some(u) = &raw.user {
            return self
                .non_empty(u.clone().into_vec(), &format!("{path}.user"))
                .map(Cond::User);
        }
        if let Some(t) = &raw.team {
            return self
                .non_empty(t.clone().into_vec(), &format!("{path}.team"))
                .map(Cond::Team);
        }
        if let Some(tag) = &raw.tag {
            let (key, value) = match tag.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (tag.trim().to_string(), None),
            };
            if key.is_empty() {
                self.issue(
                    &format!("{path}.tag"),
                    "must be `key` or `key=value`".into(),
                );
            }
            return Some(Cond::Tag { key, value });
        }
        if let Some(h) = &raw.header {
            let name = h.name.trim().to_ascii_lowercase();
            if axum_free_header_name_ok(&name) {
                if !self.headers.contains(&name) {
                    self.headers.push(name.clone());
                }
            } else {
                self.issue(
                    &format!("{path}.header.name"),
                    format!("`{}` is not a valid header name", h.name),
                );
            }
            let regex = match &h.regex {
                Some(r) => Some(self.regex(r, &format!("{path}.header.regex"))?),
                None => None,
            };
            return Some(Cond::Header {
                name,
                equals: h.equals.clone(),
                regex,
            });
        }
        if let Some(langs) = &raw.language {
            let mut out = Vec::new();
            for l in langs.clone().into_vec() {
                let found = whatlang::Lang::from_code(l.to_ascii_lowercase()).or_else(|| {
                    whatlang::Lang::all()
                        .iter()
                        .copied()
                        .find(|x| x.eng_name().eq_ignore_ascii_case(&l))
                });
                match found {
                    Some(x) => out.push(x),
                    None => self.issue(
                        &format!("{path}.language"),
                        format!("unknown language `{l}`: use an ISO 639-3 code (eng, deu, fra, cmn, ...) or its English name"),
                    ),
                }
            }
            self.needs_language = true;
            return (!out.is_empty()).then_some(Cond::Language(out));
        }
        if let Some(d) = &raw.description {
            let threshold = raw.threshold.unwrap_or(DEFAULT_THRESHOLD);
            if !(-1.0..=1.0).contains(&threshold) {
                self.issue(
                    &format!("{path}.threshold"),
                    format!("must be a cosine similarity in -1..=1, found {threshold}"),
                );
            }
            if d.trim().is_empty() {
                self.issue(&format!("{path}.description"), "must not be empty".into());
            }
            let examples = raw.examples.clone().unwrap_or_default();
            self.last_scoped_descriptions |= scope == Scope::Last;
            let row = self.texts.len();
            self.texts.push((d.clone(), examples));
            return Some(Cond::Description {
                row,
                threshold,
                scope,
            });
        }
        None
    }

    fn regex(&mut self, re: &str, path: &str) -> Option<Regex> {
        match regex::RegexBuilder::new(re)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                self.issue(path, format!("invalid regex: {e}"));
                None
            }
        }
    }

    fn non_empty(&mut self, v: Vec<String>, path: &str) -> Option<Vec<String>> {
        if v.is_empty() {
            self.issue(path, "must list at least one value".into());
            return None;
        }
        Some(v)
    }

    fn action(&mut self, raw: &RawAction, path: &str) -> Action {
        let n = self.models.len();
        let mut allow: Option<Vec<bool>> = None;
        let restrict = |allow: &mut Option<Vec<bool>>, keep: &dyn Fn(usize) -> bool| {
            let a = allow.get_or_insert_with(|| vec![true; n]);
            for (i, x) in a.iter_mut().enumerate() {
                *x &= keep(i);
            }
        };
        if let Some(models) = &raw.models {
            if models.is_empty() {
                self.issue(
                    &format!("{path}.models"),
                    "must list at least one model".into(),
                );
            }
            let idx: Vec<usize> = models
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.model(m, &format!("{path}.models[{i}]")))
                .collect();
            restrict(&mut allow, &|i| idx.contains(&i));
        }
        if let Some(models) = &raw.exclude {
            let idx: Vec<usize> = models
                .iter()
                .enumerate()
                .filter_map(|(i, m)| self.model(m, &format!("{path}.exclude[{i}]")))
                .collect();
            restrict(&mut allow, &|i| !idx.contains(&i));
        }
        if let Some(min) = raw.min_context {
            let models = self.models;
            restrict(&mut allow, &|i| {
                models[i].context_window.is_none_or(|w| w >= min)
            });
        }
        if let Some(min) = raw.min_tier {
            let models = self.models;
            if !models.iter().any(|m| m.quality_tier.is_some()) {
                self.issue(
                    &format!("{path}.min_tier"),
                    "no model has a `quality_tier`".into(),
                );
            }
            restrict(&mut allow, &|i| {
                models[i].quality_tier.is_some_and(|t| t >= min)
            });
        }
        if let Some(a) = &allow {
            if !a.iter().any(|&x| x) {
                self.issue(path, "the route leaves no model to try".into());
            }
        }
        let force = raw
            .model
            .as_ref()
            .and_then(|m| self.model(m, &format!("{path}.model")));
        if let (Some(f), Some(a)) = (force, &allow) {
            if !a[f] {
                self.issue(
                    &format!("{path}.model"),
                    "the forced model is outside the route's own pool".into(),
                );
            }
        }
        let status = raw.status.unwrap_or(403);
        if raw.status.is_some() && raw.block.is_none() {
            self.issue(
                &format!("{path}.status"),
                "`status` belongs to `block`".into(),
            );
        }
        if !matches!(status, 400 | 403) {
            self.issue(
                &format!("{path}.status"),
                format!("a blocked request is answered 400 or 403, found {status}"),
            );
        }
        let block = raw.block.as_ref().map(|m| Block {
            message: m.clone(),
            status,
        });
        if block.is_some()
            && (allow.is_some() || force.is_some() || raw.policy.is_some() || raw.pii.is_some())
        {
            self.issue(
                &format!("{path}.block"),
                "a blocking route takes no other action".into(),
            );
        }
        Action {
            allow,
            force,
            policy: raw.policy,
            cascade: raw.cascade,
            tags: raw
                .tags
                .as_ref()
                .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            pii: raw.pii,
            block,
        }
    }
}

/// RFC 9110 token characters (a header name), without depending on `http`.
fn axum_free_header_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Vec<ModelFacts<'static>> {
        vec![
            ModelFacts {
                name: "small",
                context_window: Some(8_000),
                quality_tier: Some(1),
            },
            ModelFacts {
                name: "mid",
                context_window: Some(32_000),
                quality_tier: Some(2),
            },
            ModelFacts {
                name: "big",
                context_window: Some(128_000),
                quality_tier: Some(3),
            },
        ]
    }

    fn compile(yaml: &str) -> Result<RuleSet, Vec<Issue>> {
        let raw: Vec<RawRoute> = serde_yaml::from_str(yaml).unwrap();
        RuleSet::compile(&raw, &facts(), || {
            Embedder::builtin().map_err(|e| e.to_string())
        })
    }

    fn names(rs: &RuleSet, o: &Outcome) -> Vec<String> {
        o.matched
            .iter()
            .map(|m| rs.routes()[m.route].name.clone())
            .collect()
    }

    #[test]
    fn first_match_wins_and_continue_goes_on() {
        let rs = compile(
            r#"
- name: tag-search
  when: {tag: "team=search"}
  then: {tags: {billing: search}}
  continue: true
- name: code
  when: {any: [{keywords: [python, "stack trace"]}, {regex: "(?i)traceback|segfault"}]}
  then: {models: [mid, big]}
- name: never
  when: {keywords: [python]}
  then: {model: small}
"#,
        )
        .unwrap();
        let tags = [("team", "search")];
        let s = Signals {
            last_user: "Why does my Python script print this Stack Trace?",
            tags: &tags,
            ..Signals::default()
        };
        let o = rs.evaluate(&s);
        assert_eq!(names(&rs, &o), ["tag-search", "code"]);
        assert_eq!(o.matched[1].why, "keyword \"python\"");
        assert!(!o.allows(0) && o.allows(1) && o.allows(2));
        assert_eq!(o.tags, [("billing".to_string(), "search".to_string())]);
        assert_eq!(o.force, None);
        let s = Signals {
            last_user: "Segfault in my C code",
            ..Signals::default()
        };
        let o = rs.evaluate(&s);
        assert_eq!(names(&rs, &o), ["code"]);
        assert!(o.matched[0].why.starts_with("regex"));
    }

    #[test]
    fn keywords_need_word_boundaries() {
        let rs = compile("- {name: r, when: {keywords: [rust]}, then: {model: big}}").unwrap();
        let m = |t: &str| {
            !rs.evaluate(&Signals {
                last_user: t,
                ..Signals::default()
            })
            .matched
            .is_empty()
        };
        assert!(m("write it in Rust please"));
        assert!(m("rust"));
        assert!(m("(rust)"));
        assert!(!m("the trustworthy one"));
        assert!(!m("rusty nails"));
    }

    #[test]
    fn scope_all_reads_every_message() {
        let rs = compile(
            "- {name: r, when: {keywords: [invoice], scope: all}, then: {model: big}}\n- {name: l, when: {keywords: [invoice]}, then: {model: small}}",
        )
        .unwrap();
        let s = Signals {
            last_user: "summarise it",
            all_text: "system: you read invoices\nan invoice\nsummarise it",
            ..Signals::default()
        };
        assert_eq!(names(&rs, &rs.evaluate(&s)), ["r"]);
    }

    #[test]
    fn metadata_conditions() {
        let rs = compile(
            r#"
- name: t
  when: {all: [{tools: true}, {tokens: {max: 100}}, {not: {images: true}}, {user: [alice, bob]}, {header: {name: X-Env, equals: prod}}]}
  then: {exclude: [small]}
"#,
        )
        .unwrap();
        assert_eq!(rs.header_names(), ["x-env"]);
        let headers = [("x-env", "prod")];
        let mut s = Signals {
            tools: true,
            tokens: 50,
            user: Some("alice"),
            headers: &headers,
            ..Signals::default()
        };
        let o = rs.evaluate(&s);
        assert_eq!(o.matched.len(), 1);
        assert!(!o.allows(0) && o.allows(1));
        s.images = true;
        assert!(rs.evaluate(&s).matched.is_empty());
        s.images = false;
        s.tokens = 101;
        assert!(rs.evaluate(&s).matched.is_empty());
    }

    #[test]
    fn team_condition_reads_the_keys_team() {
        let rs = compile("- {name: t, when: {team: [search, ads]}, then: {model: big}}").unwrap();
        let team = |t: Option<&'static str>| {
            rs.evaluate(&Signals {
                team: t,
                ..Signals::default()
            })
            .matched
            .first()
            .map(|m| m.why.clone())
        };
        assert_eq!(team(Some("ads")).as_deref(), Some("team ads"));
        assert_eq!(team(Some("infra")), None);
        assert_eq!(team(None), None);
    }

    #[test]
    fn language_condition() {
        let rs =
            compile("- {name: de, when: {language: [deu, French]}, then: {model: big}}").unwrap();
        let m = |t: &str| {
            !rs.evaluate(&Signals {
                last_user: t,
                ..Signals::default()
            })
            .matched
            .is_empty()
        };
        assert!(m(
            "Wie kann ich meine Steuererklärung rechtzeitig beim Finanzamt einreichen?"
        ));
        assert!(m(
            "Comment puis-je déclarer mes impôts en ligne avant la date limite ?"
        ));
        assert!(!m("How do I file my taxes online before the deadline?"));
    }

    #[test]
    fn description_conditions_compete() {
        let rs = compile(
            r#"
- name: cooking
  when: {description: "recipes, cooking and baking food in the kitchen", threshold: 0.1}
  then: {model: small}
- name: code
  when: {description: "writing or debugging computer programs and source code", threshold: 0.1}
  then: {model: big}
"#,
        )
        .unwrap();
        let pick = |t: &str| {
            let o = rs.evaluate(&Signals {
                last_user: t,
                ..Signals::default()
            });
            names(&rs, &o)
        };
        assert_eq!(
            pick("my rust program crashes with a null pointer in this function"),
            ["code"]
        );
        assert_eq!(
            pick("how long should I bake bread dough in the oven"),
            ["cooking"]
        );
    }

    #[test]
    fn block_stops_and_keeps_its_status() {
        let rs = compile(
            "- {name: no-secrets, when: {regex: 'BEGIN RSA'}, then: {block: 'no keys here', status: 400}}",
        )
        .unwrap();
        let o = rs.evaluate(&Signals {
            last_user: "-----BEGIN RSA PRIVATE KEY-----",
            ..Signals::default()
        });
        assert_eq!(
            o.block,
            Some(Block {
                message: "no keys here".into(),
                status: 400
            })
        );
    }

    #[test]
    fn bad_routes_are_all_reported_with_their_paths() {
        let issues = compile(
            r#"
- name: a
  when: {regex: "(unclosed"}
  then: {models: [nope]}
- name: a
  when: {keywords: [x], tools: true}
  then: {block: hi, status: 500}
- name: c
  when: {all: []}
  then: {min_context: 1000000}
"#,
        )
        .unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for want in [
            "routes[0].when.regex",
            "routes[0].then.models[0]",
            "routes[1].name",
            "routes[1].when",
            "routes[1].then.status",
            "routes[2].when.all",
            "routes[2].then",
        ] {
            assert!(paths.contains(&want), "{want} missing from {issues:?}");
        }
        let unknown = issues
            .iter()
            .find(|i| i.path == "routes[0].then.models[0]")
            .unwrap();
        assert!(
            unknown.message.contains("unknown model `nope`"),
            "{unknown:?}"
        );
    }

    #[test]
    fn pools_intersect_and_tier_restricts() {
        let rs = compile(
            r#"
- {name: a, when: {tools: true}, then: {min_tier: 2}, continue: true}
- {name: b, then: {exclude: [big], policy: {lambda: 5}}}
"#,
        )
        .unwrap();
        let o = rs.evaluate(&Signals {
            tools: true,
            ..Signals::default()
        });
        assert_eq!(o.allow, Some(vec![false, true, false]));
        assert_eq!(o.policy, Some(Policy::Lambda(5.0)));
        assert_eq!(o.matched[1].why, "always");
    }
}
