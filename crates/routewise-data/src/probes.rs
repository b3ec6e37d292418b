//! Probe sets: the prompts `routewise profile` sends to every model of a pool (and
//! `routewise probes select` writes). One JSON object per line: `id` and `prompt`
//! (required), `task` and `reference` (optional; `reference` a non-empty string or
//! `null`). Other keys are ignored, so a canonical routing JSONL file is a probe file too
//! (its `models` and `split` are not read). Blank lines are skipped; a bad line is an
//! error naming `file:line` and the field; ids must be unique.
//!
//! Two sets are compiled in ([`BUILTIN`], named `builtin:<name>`), drawn from the shared
//! data's **train** split only (never its test split) by `scripts/make_probe_sets.py`,
//! stratified over task and category, every item with a reference:
//! * `general-500`: 25 MMLU-Pro prompts from each of its 14 categories (Apache-2.0,
//!   TIGER-AI-Lab) and 75 each of RouterBench's arc-challenge and winogrande prompts
//!   (published by the RouterBench authors for research on routing);
//! * `quick-100`: a stratified subset of `general-500` (5 per MMLU-Pro category, 15 per
//!   RouterBench task), for a first look at a model in a minute.
//!
//! Reading streams: [`ProbeSource::probes`] yields one probe at a time, so a run holds
//! the probes in flight, not the file.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::DataError;

/// One probe prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub id: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default)]
    pub reference: Option<String>,
}

/// The compiled-in probe sets: (name, JSONL text).
pub const BUILTIN: [(&str, &str); 2] = [
    ("general-500", include_str!("../probes/general-500.jsonl")),
    ("quick-100", include_str!("../probes/quick-100.jsonl")),
];

/// Where probes come from.
#[derive(Debug, Clone)]
pub enum ProbeSource {
    /// A compiled-in set.
    Builtin {
        name: &'static str,
        text: &'static str,
    },
    /// A probe file.
    File(PathBuf),
}

/// What a full read of a probe source found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSummary {
    /// Probes.
    pub count: usize,
    /// Probes without a reference (graded by a judge).
    pub without_reference: usize,
}

impl ProbeSource {
    /// `builtin:<name>` or a file path.
    pub fn parse(spec: &str) -> Result<ProbeSource, String> {
        match spec.strip_prefix("builtin:") {
            Some(name) => BUILTIN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(name, text)| ProbeSource::Builtin { name, text })
                .ok_or_else(|| {
                    let known: Vec<String> = BUILTIN
                        .iter()
                        .map(|(n, _)| format!("builtin:{n}"))
                        .collect();
                    format!(
                        "unknown probe set `{spec}` (built in: {})",
                        known.join(", ")
                    )
                }),
            None => Ok(ProbeSource::File(PathBuf::from(spec))),
        }
    }

    /// How the source is named in messages.
    pub fn display_path(&self) -> PathBuf {
        match self {
            ProbeSource::Builtin { name, .. } => PathBuf::from(format!("builtin:{name}")),
            ProbeSource::File(p) => p.clone(),
        }
    }

    /// The probes, one at a time, each with its line number; stops at the first error.
    pub fn probes(&self) -> Result<Probes, DataError> {
        let path = self.display_path();
        let reader: Box<dyn BufRead> = match self {
            ProbeSource::Builtin { text, .. } => Box::new(text.as_bytes()),
            ProbeSource::File(p) => Box::new(BufReader::new(std::fs::File::open(p).map_err(
                |source| DataError::Io {
                    path: p.clone(),
                    source,
                },
            )?)),
        };
        Ok(Probes {
            lines: reader.lines(),
            path,
            line: 0,
        })
    }

    /// Reads the whole source once: counts, and refuses a bad line, a duplicate id or an
    /// empty source.
    pub fn check(&self) -> Result<ProbeSummary, DataError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut summary = ProbeSummary {
            count: 0,
            without_reference: 0,
        };
        for item in self.probes()? {
            let (line, probe) = item?;
            if probe.reference.is_none() {
                summary.without_reference += 1;
            }
            if !seen.insert(probe.id.clone()) {
                return Err(DataError::invalid(
                    &self.display_path(),
                    line,
                    "id",
                    format!("duplicate id `{}`", probe.id),
                ));
            }
            summary.count += 1;
        }
        if summary.count == 0 {
            return Err(DataError::Empty {
                path: self.display_path(),
            });
        }
        Ok(summary)
    }
}

/// The probes of a source, in order (see [`ProbeSource::probes`]).
pub struct Probes {
    lines: std::io::Lines<Box<dyn BufRead>>,
    path: PathBuf,
    line: usize,
}

impl Iterator for Probes {
    type Item = Result<(usize, Probe), DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(source) => {
                    return Some(Err(DataError::Io {
                        path: self.path.clone(),
                        source,
                    }))
                }
            };
            self.line += 1;
            if text.trim().is_empty() {
                continue;
            }
            return Some(parse_line(&text, &self.path, self.line).map(|p| (self.line, p)));
        }
    }
}

/// One probe line.
fn parse_line(text: &str, path: &Path, line: usize) -> Result<Probe, DataError> {
    let probe: Probe = serde_json::from_str(text).map_err(|e| {
        let field = ["id", "prompt", "task", "reference"]
            .into_iter()
            .find(|f| e.to_string().contains(&format!("`{f}`")))
            .unwrap_or("<probe>");
        DataError::invalid(path, line, field, format!("malformed probe: {e}"))
    })?;
    if probe.id.trim().is_empty() {
        return Err(DataError::invalid(path, line, "id", "empty id"));
    }
    if probe.prompt.trim().is_empty() {
        return Err(DataError::invalid(path, line, "prompt", "empty prompt"));
    }
    if probe
        .reference
        .as_deref()
        .is_some_and(|r| r.trim().is_empty())
    {
        return Err(DataError::invalid(
            path,
            line,
            "reference",
            "empty reference (write null for none)",
        ));
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, ProbeSource) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.jsonl");
        std::fs::write(&p, text).unwrap();
        (dir, ProbeSource::File(p))
    }

    #[test]
    fn a_probe_file_streams_and_ignores_other_keys() {
        let (_d, src) = file(
            "{\"id\":\"a\",\"prompt\":\"2+2?\",\"reference\":\"4\",\"models\":{}}\n\n\
             {\"id\":\"b\",\"prompt\":\"Write a poem\",\"task\":\"creative\"}\n",
        );
        let all: Vec<(usize, Probe)> = src.probes().unwrap().map(Result::unwrap).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1.reference.as_deref(), Some("4"));
        assert_eq!(all[1].0, 3, "line numbers count blank lines");
        assert_eq!(all[1].1.task.as_deref(), Some("creative"));
        let s = src.check().unwrap();
        assert_eq!((s.count, s.without_reference), (2, 1));
    }

    #[test]
    fn bad_lines_are_refused_with_file_and_line() {
        for (text, want) in [
            (
                "{\"id\":\"a\",\"prompt\":\"x\"}\n{oops\n",
                "p.jsonl:2: field `<probe>`",
            ),
            ("{\"id\":\"a\"}\n", "p.jsonl:1: field `prompt`"),
            (
                "{\"id\":\"a\",\"prompt\":\" \"}\n",
                "p.jsonl:1: field `prompt`",
            ),
            (
                "{\"id\":\"a\",\"prompt\":\"x\",\"reference\":\"\"}\n",
                "p.jsonl:1: field `reference`",
            ),
            (
                "{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"a\",\"prompt\":\"y\"}\n",
                "p.jsonl:2: field `id`: duplicate id `a`",
            ),
        ] {
            let (_d, src) = file(text);
            let e = src.check().unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let (_d, src) = file("\n");
        assert!(matches!(src.check(), Err(DataError::Empty { .. })));
    }

    #[test]
    fn builtin_sets_parse_and_quick_is_a_subset_of_general() {
        assert!(ProbeSource::parse("builtin:nope")
            .unwrap_err()
            .contains("builtin:general-500"));
        let ids = |name: &str| -> Vec<Probe> {
            ProbeSource::parse(&format!("builtin:{name}"))
                .unwrap()
                .probes()
                .unwrap()
                .map(|p| p.unwrap().1)
                .collect()
        };
        let general = ids("general-500");
        let quick = ids("quick-100");
        assert_eq!((general.len(), quick.len()), (500, 100));
        assert!(general.iter().chain(&quick).all(|p| p.reference.is_some()));
        let all: HashSet<&str> = general.iter().map(|p| p.id.as_str()).collect();
        assert!(quick.iter().all(|p| all.contains(p.id.as_str())));
        for name in ["general-500", "quick-100"] {
            let src = ProbeSource::parse(&format!("builtin:{name}")).unwrap();
            assert_eq!(src.check().unwrap().without_reference, 0);
        }
    }
}
