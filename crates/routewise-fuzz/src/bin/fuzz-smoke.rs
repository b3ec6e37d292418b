//! `fuzz-smoke TARGET CORPUS_DIR [SECONDS] [SEED]`: a short fuzz run on the stable
//! toolchain (CI). Replays every corpus input through the target, then mutates corpus
//! inputs (bit flips, byte edits, range deletes and copies, splices, dictionary tokens)
//! for SECONDS (default 30), seeded by SEED. A failing input is written to
//! `fuzz-smoke-crash-TARGET` in the current directory and the process exits 1.
//!
//! This is no substitute for the coverage-guided runs of `cargo fuzz` (fuzz/README.md):
//! it keeps the targets honest on every commit.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use routewise_fuzz::TARGETS;

/// Tokens the inputs are made of (JSON, YAML, headers, the fields routewise reads).
const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1e309",
    "-0",
    "18446744073709551616",
    "\"model\"",
    "\"auto\"",
    "\"messages\"",
    "\"role\"",
    "\"content\"",
    "\"type\"",
    "\"text\"",
    "\"image_url\"",
    "\"stream\"",
    "\"stream_options\"",
    "\"include_usage\"",
    "\"max_tokens\"",
    "\"routewise\"",
    "\"lambda\"",
    "\"budget_usd\"",
    "\"tools\"",
    "\"tool_calls\"",
    "\\u0000",
    "\\ud800",
    "x-routewise-lambda: ",
    "x-routewise-budget-usd: ",
    "x-request-id: ",
    "traceparent: ",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "\0",
    "\n",
    "  ",
    "models:",
    "- name: ",
    "provider: ",
    "base_url: ",
    "limits:",
    "max_attempts: ",
    "request_timeout_ms: ",
    "cooldown:",
    "seconds: ",
    "bandit:",
    "state:",
    "router:",
    "policy:",
    "&a",
    "*a",
    "<<: *a",
    "!!binary",
    "~",
    ".inf",
    ".nan",
    "\n%%ENV%%\n",
    "ROUTEWISE_LIMITS__MAX_ATTEMPTS=",
    "ROUTEWISE_MODELS__0__BASE_URL=",
];

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let piece = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
        }
    }
    input.truncate(64 * 1024);
}

fn run_one(target: fn(&[u8]), input: &[u8], name: &str) -> Result<(), ExitCode> {
    if std::panic::catch_unwind(|| target(input)).is_ok() {
        return Ok(());
    }
    let file = format!("fuzz-smoke-crash-{name}");
    let _ = std::fs::write(&file, input);
    let _ = writeln!(
        std::io::stderr(),
        "fuzz-smoke: target `{name}` failed; input written to {file}"
    );
    Err(ExitCode::FAILURE)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let mut err = std::io::stderr();
    let (Some(name), Some(dir)) = (args.get(1), args.get(2)) else {
        let _ = writeln!(err, "usage: fuzz-smoke TARGET CORPUS_DIR [SECONDS] [SEED]");
        return ExitCode::from(2);
    };
    let Some(&(_, target)) = TARGETS.iter().find(|(n, _)| n == name) else {
        let _ = writeln!(err, "unknown target `{name}`");
        return ExitCode::from(2);
    };
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(30);
    let seed: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let corpus: Vec<Vec<u8>> = match std::fs::read_dir(Path::new(dir)) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect(),
        Err(e) => {
            let _ = writeln!(err, "cannot read {dir}: {e}");
            return ExitCode::from(2);
        }
    };
    if corpus.is_empty() {
        let _ = writeln!(err, "{dir} holds no inputs");
        return ExitCode::from(2);
    }
    // Expected panics are caught and reported once, not printed per input.
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(std::io::stderr(), "fuzz-smoke: {info}");
    }));
    for input in &corpus {
        if let Err(code) = run_one(target, input, name) {
            return code;
        }
    }
    let started = Instant::now();
    let budget = Duration::from_secs(seconds);
    let mut rng = Rng(seed | 1);
    let mut executions = corpus.len() as u64;
    while started.elapsed() < budget {
        for _ in 0..256 {
            let mut input = corpus[rng.below(corpus.len())].clone();
            mutate(&mut input, &corpus, &mut rng);
            if let Err(code) = run_one(target, &input, name) {
                return code;
            }
            executions += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let _ = writeln!(
        err,
        "fuzz-smoke {name}: {} corpus inputs replayed, {executions} executions in {secs:.0} s ({:.0}/s), no failure",
        corpus.len(),
        executions as f64 / secs
    );
    ExitCode::SUCCESS
}
