//! The files of a profile run: the output (canonical routing JSONL, one line per probe)
//! and its journal (`<out>.partial`: one line per graded (probe, model) pair whose
//! probe's line is not written yet).
//!
//! Crash safety: a pair's outcome is appended to the journal (one `write` call) as soon
//! as it is graded; a probe's line is appended to the output (one `write` call) once each
//! of its pairs is settled (answered, failed, or given up: a budget stop, a model left
//! out), built from the journal's outcomes. So the output is valid JSONL at every moment,
//! never holds an id twice, and a run killed at any point loses only the calls in flight.
//!
//! `--resume` ([`Output::open`] with `resume`) reads both back. A torn last line (a kill
//! or a full disk mid-write) is cut off, and a last line without its newline gets one. A
//! line holding every requested model is finished. A line lacking one (a failed pair, a
//! model added with `--models`) stays in the output as it is; its outcomes count as done,
//! the missing pairs are run, and once its probe is settled the completed line replaces
//! it when the run ends ([`Output::close`]: the output rewritten through a temporary file
//! and a rename). So a resumed run never leaves the output with fewer lines or outcomes
//! than it found, however it stops. The journal is removed when a run ends with nothing
//! pending in it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
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
    /// Probes with a line holding every requested model (or written this run), and the
    /// models on it.
    finished: HashMap<String, HashSet<String>>,
    /// Outcomes on the output's lines that lack a requested model (by probe id).
    short: HashMap<String, BTreeMap<String, OutcomeJson>>,
    /// Journaled outcomes of probes whose line is not written yet.
    journaled: HashMap<String, BTreeMap<String, OutcomeJson>>,
    /// Completed lines that replace short ones at [`Output::close`].
    replacements: HashMap<String, Value>,
    /// Lines written this run (appended or replacing a short one).
    pub lines_written: u64,
}

/// `<out>.partial`.
pub fn journal_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

impl Output {
    /// Opens `path` for a run profiling `models`. Without `resume` neither the output nor
    /// its journal may exist (or be non-empty); with it, what is there is read back
    /// (module docs).
    pub fn open(path: &Path, resume: bool, models: &[String]) -> Result<Output, ProfileError> {
        let journal_path = journal_path(path);
        let exists = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
        if !resume && (exists(path) || exists(&journal_path)) {
            return Err(ProfileError::Exists(path.to_path_buf()));
        }
        let mut finished: HashMap<String, HashSet<String>> = HashMap::new();
        let mut short: HashMap<String, BTreeMap<String, OutcomeJson>> = HashMap::new();
        let mut journaled: HashMap<String, BTreeMap<String, OutcomeJson>> = HashMap::new();
        if resume {
            let (rows, valid) = read_lines(path)?;
            repair_tail(path, valid).map_err(io(path))?;
            for row in rows {
                let Some(id) = row.get("id").and_then(Value::as_str).map(str::to_string) else {
                    continue;
                };
                let outcomes = outcomes_of(&row);
                if models.iter().all(|m| outcomes.contains_key(m)) {
                    finished.insert(id, outcomes.into_keys().collect());
                } else {
                    short.insert(id, outcomes);
                }
            }
            let (entries, valid) = read_lines(&journal_path)?;
            repair_tail(&journal_path, valid).map_err(io(&journal_path))?;
            for entry in entries {
                let (Some(id), Some(model), Some(outcome)) = (
                    entry.get("id").and_then(Value::as_str),
                    entry.get("model").and_then(Value::as_str),
                    entry.get("outcome").and_then(Value::as_object),
                ) else {
                    continue;
                };
                // Entries already on the output (stale once their line was written).
                let on_line = finished.contains_key(id)
                    || short.get(id).is_some_and(|o| o.contains_key(model));
                if !on_line {
                    journaled
                        .entry(id.to_string())
                        .or_default()
                        .insert(model.to_string(), outcome.clone());
                }
            }
        }
        let out = append(path).map_err(io(path))?;
        let journal = append(&journal_path).map_err(io(&journal_path))?;
        Ok(Output {
            path: path.to_path_buf(),
            journal_path,
            out,
            journal,
            finished,
            short,
            journaled,
            replacements: HashMap::new(),
            lines_written: 0,
        })
    }

    /// Whether `model` has an outcome on probe `id` (in the output or the journal).
    pub fn has(&self, id: &str, model: &str) -> bool {
        self.finished.get(id).is_some_and(|m| m.contains(model))
            || self.short.get(id).is_some_and(|m| m.contains_key(model))
            || self
                .journaled
                .get(id)
                .is_some_and(|m| m.contains_key(model))
    }

    /// Whether probe `id` has its line (with every requested model, or written this run).
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
        .map_err(io(&self.journal_path))?;
        self.journaled
            .entry(probe.id.clone())
            .or_default()
            .insert(model.to_string(), outcome);
        Ok(())
    }

    /// Writes `probe`'s line from its outcomes (a short line's and the journaled ones):
    /// appended, or, for a probe with a short line, kept to replace it at
    /// [`Output::close`]. Nothing new to write: nothing happens.
    pub fn finish(&mut self, probe: &Probe) -> Result<(), ProfileError> {
        let Some(new) = self.journaled.remove(&probe.id) else {
            return Ok(());
        };
        let short = self.short.remove(&probe.id);
        let replaces = short.is_some();
        let mut outcomes = short.unwrap_or_default();
        outcomes.extend(new);
        let names: HashSet<String> = outcomes.keys().cloned().collect();
        let row = probe_row(probe, outcomes);
        if replaces {
            self.replacements.insert(probe.id.clone(), row);
        } else {
            write_line(&mut self.out, &row).map_err(io(&self.path))?;
        }
        self.finished.insert(probe.id.clone(), names);
        self.lines_written += 1;
        Ok(())
    }

    /// Ends the run: completed lines replace the short ones they complete, then the
    /// journal is removed when nothing is pending in it.
    pub fn close(self) -> Result<(), ProfileError> {
        if !self.replacements.is_empty() {
            let (rows, _) = read_lines(&self.path)?;
            let rows: Vec<Value> = rows
                .into_iter()
                .map(|row| {
                    let id = row.get("id").and_then(Value::as_str);
                    match id.and_then(|id| self.replacements.get(id)) {
                        Some(new) => new.clone(),
                        None => row,
                    }
                })
                .collect();
            drop(self.out);
            rewrite(&self.path, &rows).map_err(io(&self.path))?;
        }
        // (An entry is removed whole when its line is written: none is ever empty.)
        if self.journaled.is_empty() {
            drop(self.journal);
            match std::fs::remove_file(&self.journal_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(io(&self.journal_path)(source)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl Output {
    /// Probes with journaled outcomes but no line written yet.
    fn journaled_ids(&self) -> impl Iterator<Item = &str> {
        self.journaled.keys().map(String::as_str)
    }
}

/// The error of an I/O failure on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError {
    let path = path.to_path_buf();
    move |source| ProfileError::Io { path, source }
}

/// A probe's output line.
fn probe_row(probe: &Probe, outcomes: BTreeMap<String, OutcomeJson>) -> Value {
    let mut row = json!({"id": probe.id, "prompt": probe.prompt});
    if let Some(t) = &probe.task {
        row["task"] = json!(t);
    }
    if let Some(r) = &probe.reference {
        row["reference"] = json!(r);
    }
    row["models"] = Value::Object(
        outcomes
            .into_iter()
            .map(|(m, o)| (m, Value::Object(o)))
            .collect(),
    );
    row
}

/// The outcomes on an output line, by model.
fn outcomes_of(row: &Value) -> BTreeMap<String, OutcomeJson> {
    row.get("models")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_object()?.clone())))
                .collect()
        })
        .unwrap_or_default()
}

fn journal_entry(id: &str, model: &str, outcome: &OutcomeJson) -> Value {
    json!({"id": id, "model": model, "outcome": outcome})
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One line in one `write` call (a kill leaves it whole or absent; a full disk can leave
/// it torn, which [`read_lines`] and [`repair_tail`] deal with).
fn write_line(f: &mut File, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    f.write_all(&line)
}

/// Cuts a torn tail off `path` (at `valid`, from [`read_lines`]), and ends a last line
/// that lacks its newline, so that the next line appended starts on a line of its own.
fn repair_tail(path: &Path, valid: Option<u64>) -> std::io::Result<()> {
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(valid) = valid {
        f.set_len(valid)?;
    }
    let len = f.metadata()?.len();
    if len > 0 {
        f.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.seek(SeekFrom::End(0))?;
            f.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// The JSON lines of `path` (none when it does not exist); an unreadable line is skipped
/// only when it is the last and unterminated (a torn write), else it is an error. With a
/// torn tail, also the length of what precedes it.
fn read_lines(path: &Path) -> Result<(Vec<Value>, Option<u64>), ProfileError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(source) => return Err(io(path)(source)),
    };
    let mut rows = Vec::new();
    let mut reader = BufReader::new(file);
    let mut buf = String::new();
    let mut line = 0usize;
    let mut offset = 0u64;
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).map_err(io(path))?;
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

    fn ids(path: &Path) -> Vec<String> {
        routewise_data::jsonl::load(path)
            .unwrap()
            .records
            .iter()
            .map(|r| r.id.clone())
            .collect()
    }

    #[test]
    fn resume_reads_back_pairs_cuts_a_torn_tail_and_completes_short_lines_in_place() {
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
        // p3's line lacks b: its `a` counts, b is to run, the line stays meanwhile.
        assert!(!out.is_finished("p3") && out.has("p3", "a") && !out.has("p3", "b"));
        assert_eq!(ids(&path), vec!["p1", "p3"]);
        let journal = std::fs::read_to_string(journal_path(&path)).unwrap();
        assert!(journal.lines().all(|l| l.ends_with('}')), "{journal}");
        assert_eq!(out.journaled_ids().collect::<Vec<_>>(), vec!["p2"]);
        // A resumed run that stops before finishing p3 leaves the output as it was.
        out.close().unwrap();
        assert_eq!(ids(&path), vec!["p1", "p3"]);

        // Finishing p3 writes it complete, in place, once.
        let mut out = Output::open(&path, true, &models()).unwrap();
        out.record(&probe("p3"), "b", outcome(1.0)).unwrap();
        out.finish(&probe("p3")).unwrap();
        out.record(&probe("p2"), "b", outcome(1.0)).unwrap();
        out.finish(&probe("p2")).unwrap();
        assert_eq!(out.lines_written, 2);
        out.close().unwrap();
        let ds = routewise_data::jsonl::load(&path).unwrap();
        let got: Vec<&str> = ds.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(got, vec!["p1", "p3", "p2"]);
        assert!(ds
            .records
            .iter()
            .all(|r| r.outcomes.iter().all(Option::is_some)));
        assert!(!journal_path(&path).exists(), "nothing pending");
    }

    /// Regression (review of the profile change): a journal whose last line was whole
    /// but lacked its newline (a write cut short by a full disk) got the next entry glued
    /// to it, and every later resume failed on that line.
    #[test]
    fn regression_a_last_line_without_its_newline_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        let entry = journal_entry("p1", "a", &outcome(1.0));
        std::fs::write(journal_path(&path), entry.to_string()).unwrap();
        let mut out = Output::open(&path, true, &models()).unwrap();
        assert!(out.has("p1", "a"));
        out.record(&probe("p1"), "b", outcome(0.0)).unwrap();
        drop(out);
        let out = Output::open(&path, true, &models()).unwrap();
        assert!(out.has("p1", "a") && out.has("p1", "b"));
    }

    #[test]
    fn a_journal_alone_also_needs_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        std::fs::write(journal_path(&path), "{}\n").unwrap();
        let e = Output::open(&path, false, &models())
            .unwrap_err()
            .to_string();
        assert!(e.contains("journal") && e.contains("--resume"), "{e}");
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

    /// One step of a run as the runner drives the files.
    #[derive(Debug, Clone)]
    enum Op {
        /// A pair graded (probe, model).
        Record(usize, usize),
        /// Every pair of the probe settled (some may have failed).
        Finish(usize),
        /// The process killed (optionally mid-write: a torn tail on the journal or the
        /// output), then a `--resume` run opened.
        Crash { torn_journal: bool, torn_out: bool },
        /// The run ends normally, then a `--resume` run opened.
        Close,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..5usize, 0..2usize).prop_map(|(p, m)| Op::Record(p, m)),
            2 => (0..5usize).prop_map(Op::Finish),
            1 => (any::<bool>(), any::<bool>())
                .prop_map(|(torn_journal, torn_out)| Op::Crash { torn_journal, torn_out }),
            1 => Just(Op::Close),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of graded pairs, finished probes, kills (torn writes
        /// included) and resumes: no graded pair is lost, no id is written twice, the
        /// output always loads, and a resume never leaves fewer lines than it found.
        #[test]
        fn runs_killed_and_resumed_lose_nothing_and_write_each_probe_once(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pool.jsonl");
            let names = models();
            let mut out = Output::open(&path, false, &names).unwrap();
            let mut graded: HashSet<(usize, usize)> = HashSet::new();
            // Probes finished in this run (the runner sends them nothing more).
            let mut done_here: HashSet<usize> = HashSet::new();
            let mut lines_before = 0usize;
            for op in ops {
                match op {
                    Op::Record(p, m) => {
                        let id = format!("p{p}");
                        if done_here.contains(&p) || out.has(&id, &names[m]) {
                            continue; // the runner never asks twice
                        }
                        out.record(&probe(&id), &names[m], outcome(1.0)).unwrap();
                        graded.insert((p, m));
                    }
                    Op::Finish(p) => {
                        let id = format!("p{p}");
                        if done_here.insert(p) {
                            out.finish(&probe(&id)).unwrap();
                        }
                    }
                    Op::Crash { .. } | Op::Close => {
                        if matches!(op, Op::Close) {
                            out.close().unwrap();
                        } else {
                            drop(out);
                        }
                        if let Op::Crash { torn_journal, torn_out } = op {
                            for (torn, file) in [(torn_journal, journal_path(&path)), (torn_out, path.clone())] {
                                if torn {
                                    let mut f = append(&file).unwrap();
                                    f.write_all(b"{\"id\":\"p9\",\"mo").unwrap();
                                }
                            }
                        }
                        out = Output::open(&path, true, &names).unwrap();
                        done_here.clear();
                        let ids = if path.exists() && std::fs::metadata(&path).unwrap().len() > 0 {
                            ids(&path)
                        } else {
                            Vec::new()
                        };
                        let unique: HashSet<&String> = ids.iter().collect();
                        proptest::prop_assert_eq!(unique.len(), ids.len(), "an id twice");
                        proptest::prop_assert!(ids.len() >= lines_before, "the output shrank");
                        lines_before = ids.len();
                        for &(p, m) in &graded {
                            proptest::prop_assert!(out.has(&format!("p{p}"), &names[m]), "lost p{} {}", p, names[m]);
                        }
                    }
                }
            }
        }
    }
}
