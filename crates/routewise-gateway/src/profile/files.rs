//! The files of a profile run: the output (canonical routing JSONL, one line per finished
//! probe) and its journal (`<out>.partial`: one line per finished (probe, model) pair
//! whose probe is not finished yet).
//!
//! Crash safety: a pair's outcome is appended to the journal (one `write` call) as soon
//! as it is graded; a probe's line is appended to the output (one `write` call) once all
//! its pairs are settled, built from the journal's outcomes. So the output is valid JSONL
//! at every moment, and a run killed at any point loses only the calls in flight.
//! `--resume` ([`Output::open`] with `resume`) reads both back: a torn last line (a kill
//! mid-write) is cut off; a probe whose output line lacks a requested model goes back
//! into the journal (the output rewritten through a temporary file and a rename) so that
//! the missing pairs are run and the line is written once, complete. The journal is
//! removed when a run leaves nothing pending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use routewise_data::probes::Probe;
use serde_json::{json, Map, Value};

use super::ProfileError;

/// A model's outcome on a probe, as written (`{score, cost_usd, input_tokens,
/// output_tokens, answer?}`).
pub type OutcomeJson = Map<String, Value>;

/// The output file and its journal.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    journal_path: PathBuf,
    out: File,
    journal: File,
    /// Probes with an output line, and the models on it.
    finished: HashMap<String, HashSet<String>>,
    /// Journaled outcomes of probes without an output line.
    journaled: HashMap<String, BTreeMap<String, OutcomeJson>>,
    /// Lines appended this run.
    pub lines_written: u64,
}

/// `<out>.partial`.
pub fn journal_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

impl Output {
    /// Opens `path` for a run profiling `models`. Without `resume` the output must not
    /// exist yet (or be empty); with it, what is there is read back (module docs).
    pub fn open(path: &Path, resume: bool, models: &[String]) -> Result<Output, ProfileError> {
        let journal_path = journal_path(path);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ProfileError::Io { path: p, source }
        };
        let exists = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
        if !resume && (exists(path) || exists(&journal_path)) {
            return Err(ProfileError::Exists(path.to_path_buf()));
        }
        let mut finished: HashMap<String, HashSet<String>> = HashMap::new();
        let mut journaled: HashMap<String, BTreeMap<String, OutcomeJson>> = HashMap::new();
        let mut reopened: Vec<Value> = Vec::new();
        if resume {
            let mut kept = Vec::new();
            for row in read_lines(path)?.0 {
                let Some(id) = row.get("id").and_then(Value::as_str).map(str::to_string) else {
                    continue;
                };
                let present: HashSet<String> = row
                    .get("models")
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                if models.iter().all(|m| present.contains(m)) {
                    finished.insert(id, present);
                    kept.push(row);
                } else {
                    reopened.push(row);
                }
            }
            let (entries, valid) = read_lines(&journal_path)?;
            if let Some(valid) = valid {
                // Cut a torn tail off, so the next entry starts on a line of its own.
                OpenOptions::new()
                    .write(true)
                    .open(&journal_path)
                    .and_then(|f| f.set_len(valid))
                    .map_err(io(&journal_path))?;
            }
            for entry in entries {
                let (Some(id), Some(model), Some(outcome)) = (
                    entry.get("id").and_then(Value::as_str),
                    entry.get("model").and_then(Value::as_str),
                    entry.get("outcome").and_then(Value::as_object),
                ) else {
                    continue;
                };
                if !finished.contains_key(id) {
                    journaled
                        .entry(id.to_string())
                        .or_default()
                        .insert(model.to_string(), outcome.clone());
                }
            }
            // Lines missing a requested model go back into the journal, then out of the
            // output (in this order: a kill in between duplicates nothing).
            if !reopened.is_empty() {
                let mut journal = append(&journal_path).map_err(io(&journal_path))?;
                for row in &reopened {
                    let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
                    if let Some(ms) = row.get("models").and_then(Value::as_object) {
                        for (model, outcome) in ms {
                            let Some(outcome) = outcome.as_object() else {
                                continue;
                            };
                            write_line(&mut journal, &journal_entry(id, model, outcome))
                                .map_err(io(&journal_path))?;
                            journaled
                                .entry(id.to_string())
                                .or_default()
                                .insert(model.clone(), outcome.clone());
                        }
                    }
                }
            }
            // The output as it should be: every kept line, no torn tail.
            rewrite(path, &kept).map_err(io(path))?;
        }
        let out = append(path).map_err(io(path))?;
        let journal = append(&journal_path).map_err(io(&journal_path))?;
        Ok(Output {
            path: path.to_path_buf(),
            journal_path,
            out,
            journal,
            finished,
            journaled,
            lines_written: 0,
        })
    }

    /// Whether `model` has an outcome on probe `id` (in the output or the journal).
    pub fn has(&self, id: &str, model: &str) -> bool {
        self.finished.get(id).is_some_and(|m| m.contains(model))
            || self
                .journaled
                .get(id)
                .is_some_and(|m| m.contains_key(model))
    }

    /// Whether probe `id` has its output line.
    pub fn is_finished(&self, id: &str) -> bool {
        self.finished.contains_key(id)
    }

    /// Journals `model`'s outcome on `probe`.
    pub fn record(
        &mut self,
        probe: &Probe,
        model: &str,
        outcome: OutcomeJson,
    ) -> Result<(), ProfileError> {
        write_line(
            &mut self.journal,
            &journal_entry(&probe.id, model, &outcome),
        )
        .map_err(|source| ProfileError::Io {
            path: self.journal_path.clone(),
            source,
        })?;
        self.journaled
            .entry(probe.id.clone())
            .or_default()
            .insert(model.to_string(), outcome);
        Ok(())
    }

    /// Writes `probe`'s output line from its journaled outcomes (none: nothing to write).
    pub fn finish(&mut self, probe: &Probe) -> Result<(), ProfileError> {
        let Some(outcomes) = self.journaled.remove(&probe.id) else {
            return Ok(());
        };
        let mut row = json!({"id": probe.id, "prompt": probe.prompt});
        if let Some(t) = &probe.task {
            row["task"] = json!(t);
        }
        if let Some(r) = &probe.reference {
            row["reference"] = json!(r);
        }
        let names: HashSet<String> = outcomes.keys().cloned().collect();
        row["models"] = Value::Object(
            outcomes
                .into_iter()
                .map(|(m, o)| (m, Value::Object(o)))
                .collect(),
        );
        write_line(&mut self.out, &row).map_err(|source| ProfileError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.finished.insert(probe.id.clone(), names);
        self.lines_written += 1;
        Ok(())
    }

    /// Ends the run: the journal is removed when nothing is pending in it.
    pub fn close(self) -> Result<(), ProfileError> {
        if self.journaled.values().all(BTreeMap::is_empty) {
            drop(self.journal);
            match std::fs::remove_file(&self.journal_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ProfileError::Io {
                        path: self.journal_path,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Probes with journaled outcomes but no output line (a resumed run finishes them).
    pub fn journaled_ids(&self) -> impl Iterator<Item = &str> {
        self.journaled.keys().map(String::as_str)
    }
}

fn journal_entry(id: &str, model: &str, outcome: &OutcomeJson) -> Value {
    json!({"id": id, "model": model, "outcome": outcome})
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One line in one `write` call (a kill leaves it whole or absent, but for a torn tail
/// on a full disk, which [`read_lines`] cuts off).
fn write_line(f: &mut File, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)
}

/// The JSON lines of `path` (none when it does not exist); an unreadable line is skipped
/// only when it is the last and unterminated (a torn write), else it is an error. With a
/// torn tail, also the length of what precedes it.
fn read_lines(path: &Path) -> Result<(Vec<Value>, Option<u64>), ProfileError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(source) => {
            return Err(ProfileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut rows = Vec::new();
    let mut reader = BufReader::new(file);
    let mut buf = String::new();
    let mut line = 0usize;
    let mut offset = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|source| ProfileError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line += 1;
        let start = offset;
        offset += n as u64;
        if buf.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&buf) {
            Ok(v) => rows.push(v),
            Err(_) if !buf.ends_with('\n') => return Ok((rows, Some(start))),
            Err(e) => {
                return Err(ProfileError::Resume {
                    path: path.to_path_buf(),
                    line,
                    message: e.to_string(),
                })
            }
        }
    }
    Ok((rows, None))
}

/// Replaces `path` with `rows` (a temporary file renamed over it).
fn rewrite(path: &Path, rows: &[Value]) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".rewrite");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        for r in rows {
            write_line(&mut f, r)?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(id: &str) -> Probe {
        Probe {
            id: id.into(),
            prompt: format!("prompt {id}"),
            task: Some("t".into()),
            reference: Some("A".into()),
        }
    }

    fn outcome(score: f64) -> OutcomeJson {
        let Value::Object(m) = json!({"score": score, "cost_usd": 0.001, "input_tokens": 3,
            "output_tokens": 4, "answer": "A"})
        else {
            unreachable!()
        };
        m
    }

    fn models() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn lines_are_written_once_a_probe_is_finished_and_the_journal_goes_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        let mut out = Output::open(&path, false, &models()).unwrap();
        out.record(&probe("p1"), "a", outcome(1.0)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        out.record(&probe("p1"), "b", outcome(0.0)).unwrap();
        out.finish(&probe("p1")).unwrap();
        out.close().unwrap();
        assert!(!journal_path(&path).exists());
        let ds = routewise_data::jsonl::load(&path).unwrap();
        assert_eq!(ds.models, vec!["a", "b"]);
        assert_eq!(ds.records[0].reference.as_deref(), Some("A"));
        // An existing output is not clobbered.
        let e = Output::open(&path, false, &models()).unwrap_err();
        assert!(e.to_string().contains("--resume"), "{e}");
    }

    #[test]
    fn resume_reads_back_pairs_cuts_a_torn_tail_and_reopens_incomplete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        let mut out = Output::open(&path, false, &models()).unwrap();
        out.record(&probe("p1"), "a", outcome(1.0)).unwrap();
        out.record(&probe("p1"), "b", outcome(1.0)).unwrap();
        out.finish(&probe("p1")).unwrap();
        out.record(&probe("p2"), "a", outcome(0.0)).unwrap();
        out.record(&probe("p3"), "a", outcome(0.0)).unwrap();
        out.finish(&probe("p3")).unwrap(); // b failed on p3: a line with `a` alone
        drop(out);
        // A kill mid-write of the journal.
        let mut j = append(&journal_path(&path)).unwrap();
        j.write_all(b"{\"id\":\"p4\",\"mod").unwrap();
        drop(j);

        let out = Output::open(&path, true, &models()).unwrap();
        assert!(out.is_finished("p1") && out.has("p1", "b"));
        assert!(out.has("p2", "a") && !out.has("p2", "b"));
        // p3's line lacked b: reopened, its `a` kept, its line gone from the output.
        assert!(!out.is_finished("p3") && out.has("p3", "a") && !out.has("p3", "b"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let journal = std::fs::read_to_string(journal_path(&path)).unwrap();
        assert!(journal.lines().all(|l| l.ends_with('}')), "{journal}");
        let mut ids: Vec<&str> = out.journaled_ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, vec!["p2", "p3"]);
        drop(out);

        // Resuming twice changes nothing more; finishing p3 writes it once, complete.
        let mut out = Output::open(&path, true, &models()).unwrap();
        out.record(&probe("p3"), "b", outcome(1.0)).unwrap();
        out.finish(&probe("p3")).unwrap();
        drop(out);
        let ds = routewise_data::jsonl::load(&path).unwrap();
        let ids: Vec<&str> = ds.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, vec!["p1", "p3"]);
        assert!(ds.records[1].outcomes.iter().all(Option::is_some));
    }

    #[test]
    fn a_corrupt_line_that_is_not_a_torn_tail_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        std::fs::write(&path, "{oops\n{\"id\":\"x\"}\n").unwrap();
        let e = Output::open(&path, true, &models())
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool.jsonl:1"), "{e}");
    }
}
