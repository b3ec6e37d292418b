//! Distils the `static` model from the installed MiniLM weights into a directory (the
//! library half of `routewise models fetch static`, without the CLI).
//!
//! Run: `cargo run --release -p routewise-features --features minilm --example
//! distill_static -- OUT_DIR`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use routewise_features::distill::{distill_to_dir, DistillConfig};
use routewise_features::MiniLmFeaturizer;

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: distill_static OUT_DIR"),
    );
    let t = Instant::now();
    let minilm = MiniLmFeaturizer::open("minilm").unwrap();
    distill_to_dir(&minilm, &out, DistillConfig::default()).unwrap();
    println!(
        "distilled into {} in {:.1} s",
        out.display(),
        t.elapsed().as_secs_f64()
    );
}
