//! Train/test split.
//!
//! The canonical JSONL carries a fixed `split` per prompt; we use it when present. When a
//! source has none (RouterBench CSV, or JSONL without the field), a prompt goes to `test`
//! when `fnv1a64(seed_le_bytes ++ id) % 100 < 20`, i.e. about 20% of prompts, chosen by a
//! hash of the id so the split is stable across runs, machines and file orderings.

use serde::{Deserialize, Serialize};

/// Which side of the fixed split a prompt is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

/// Seed of the documented default hash split.
pub const DEFAULT_SPLIT_SEED: u64 = 0;
/// Percentage of prompts that the hash split sends to `test`.
pub const TEST_PERCENT: u64 = 20;

/// The hash split for a prompt without a `split` field.
pub fn hash_split(id: &str, seed: u64) -> Split {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    if h % 100 < TEST_PERCENT {
        Split::Test
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_split_is_stable_and_about_twenty_percent() {
        let n = 10_000;
        let test = (0..n)
            .filter(|i| hash_split(&format!("p{i}"), DEFAULT_SPLIT_SEED) == Split::Test)
            .count();
        assert!((1_800..2_200).contains(&test), "{test}");
        assert_eq!(hash_split("abc", 0), hash_split("abc", 0));
    }
}
