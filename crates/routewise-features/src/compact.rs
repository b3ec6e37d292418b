//! The compact static-embedding file format: a WordPiece vocabulary plus an int8 token
//! table with one scale per row, small enough to compile into the binary (the built-in
//! `static-mini` featurizer, [`crate::static_embed::BuiltinStaticFeaturizer`]).
//!
//! How the built-in file is derived (`scripts/make-static-mini.sh`, the example
//! `make_static_mini`): start from the full static table distilled from all-MiniLM-L6-v2
//! ([`crate::distill`]: PCA-ordered columns, Zipf row weights); keep the first `dim`
//! columns (a truncated PCA); keep only the rows of tokens that a training corpus and a
//! general English word list use (the others are skipped at inference, which after the
//! final L2 normalisation is the same as a zero row); quantise each row to int8 with a
//! per-row scale (`scale = max |x| / 127`, `q = round(x / scale)`; the absolute error of
//! each value is at most `scale / 2`). The vocabulary is kept whole, so tokenisation is
//! exactly the full model's.
//!
//! Layout (little-endian):
//!
//! ```text
//! "RWSTATIC"  u32 version=1
//! u32 dim  u32 vocab_len  u32 n_rows  u32 max_input_chars_per_word  u32 unk_id
//! u32 vocab_bytes, then the vocabulary: tokens in id order, each followed by '\n'
//! ceil(vocab_len / 8) bytes: bit `id` set when the token has a row (rows in id order)
//! n_rows x f32: the row scales
//! n_rows x dim x i8: the quantised rows
//! ```
//!
//! Parsing borrows the table from the input bytes (the built-in file is `'static`), so
//! the model costs no heap beyond the vocabulary index.

/// First bytes of a compact model file.
pub const MAGIC: &[u8; 8] = b"RWSTATIC";
/// Layout version written by [`encode`].
pub const VERSION: u32 = 1;

/// A parsed compact model (the table borrowed from the file's bytes).
#[derive(Debug, Clone)]
pub struct CompactModel<'a> {
    dim: usize,
    vocab: Vec<&'a str>,
    max_input_chars_per_word: usize,
    unk: u32,
    /// Row of each vocabulary id, `u32::MAX` where the token has none.
    row_of: Vec<u32>,
    scales: Vec<f32>,
    /// `n_rows * dim` int8 values stored as bytes.
    q: &'a [u8],
}

/// Cursor over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated in the {what}"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl<'a> CompactModel<'a> {
    /// Parses and checks a compact model file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(MAGIC.len(), "magic")? != MAGIC {
            return Err("not a compact static model (bad magic)".into());
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(format!(
                "compact model version {version}; this build reads {VERSION}"
            ));
        }
        let dim = r.u32("header")? as usize;
        let vocab_len = r.u32("header")? as usize;
        let n_rows = r.u32("header")? as usize;
        let max_input_chars_per_word = r.u32("header")? as usize;
        let unk = r.u32("header")?;
        if dim == 0 || vocab_len == 0 || n_rows > vocab_len || unk as usize >= vocab_len {
            return Err(format!(
                "bad header: dim {dim}, vocab {vocab_len}, rows {n_rows}, unk {unk}"
            ));
        }
        let vocab_bytes = r.u32("header")? as usize;
        let text = std::str::from_utf8(r.take(vocab_bytes, "vocabulary")?)
            .map_err(|e| format!("vocabulary is not UTF-8: {e}"))?;
        let vocab: Vec<&str> = text.split_terminator('\n').collect();
        if vocab.len() != vocab_len {
            return Err(format!(
                "the vocabulary holds {} tokens, the header says {vocab_len}",
                vocab.len()
            ));
        }
        let bitmap = r.take(vocab_len.div_ceil(8), "row bitmap")?;
        let mut row_of = vec![u32::MAX; vocab_len];
        let mut next = 0u32;
        for (id, slot) in row_of.iter_mut().enumerate() {
            if bitmap[id / 8] & (1 << (id % 8)) != 0 {
                *slot = next;
                next += 1;
            }
        }
        if next as usize != n_rows {
            return Err(format!(
                "the row bitmap marks {next} rows, the header says {n_rows}"
            ));
        }
        let scales: Vec<f32> = r
            .take(n_rows * 4, "scales")?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return Err("a row scale is negative or not finite".into());
        }
        let q = r.take(n_rows * dim, "table")?;
        if r.at != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - r.at));
        }
        Ok(CompactModel {
            dim,
            vocab,
            max_input_chars_per_word,
            unk,
            row_of,
            scales,
            q,
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The vocabulary, in id order.
    pub fn vocab(&self) -> &[&'a str] {
        &self.vocab
    }

    /// The `[UNK]` token id.
    pub fn unk(&self) -> u32 {
        self.unk
    }

    /// WordPiece's longest word (longer words become `[UNK]`).
    pub fn max_input_chars_per_word(&self) -> usize {
        self.max_input_chars_per_word
    }

    /// Tokens that have a row.
    pub fn n_rows(&self) -> usize {
        self.scales.len()
    }

    /// Adds token `id`'s dequantised row to `acc` (`acc.len() == dim`); false (and `acc`
    /// untouched) when the token has no row.
    pub fn add_row(&self, id: u32, acc: &mut [f32]) -> bool {
        let Some(&row) = self.row_of.get(id as usize) else {
            return false;
        };
        if row == u32::MAX {
            return false;
        }
        let row = row as usize;
        let scale = self.scales[row];
        let q = &self.q[row * self.dim..(row + 1) * self.dim];
        for (a, &b) in acc.iter_mut().zip(q) {
            *a += scale * f32::from(b as i8);
        }
        true
    }
}

/// Quantises one row: `(scale, values)` with `values[j] = round(row[j] / scale)`.
pub fn quantize_row(row: &[f32]) -> (f32, Vec<i8>) {
    let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return (0.0, vec![0; row.len()]);
    }
    let scale = max / 127.0;
    let q = row
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (scale, q)
}

/// Writes a compact model: `vocab` in id order, `rows` as `(token id, row of dim
/// values)` (any order, each id at most once).
pub fn encode(
    vocab: &[String],
    unk: u32,
    max_input_chars_per_word: u32,
    dim: usize,
    rows: &[(u32, &[f32])],
) -> Result<Vec<u8>, String> {
    if let Some(bad) = vocab.iter().find(|t| t.is_empty() || t.contains('\n')) {
        return Err(format!("token {bad:?} cannot be stored"));
    }
    let mut sorted: Vec<(u32, &[f32])> = rows.to_vec();
    sorted.sort_by_key(|r| r.0);
    if sorted.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a token has two rows".into());
    }
    if sorted
        .iter()
        .any(|(id, row)| *id as usize >= vocab.len() || row.len() != dim)
    {
        return Err("a row has a bad token id or length".into());
    }
    let text: String = vocab.iter().map(|t| format!("{t}\n")).collect();
    let u32_of = |n: usize| u32::try_from(n).map_err(|_| format!("{n} does not fit a u32"));
    let mut out = Vec::with_capacity(64 + text.len() + sorted.len() * (dim + 4));
    out.extend_from_slice(MAGIC);
    for v in [
        VERSION,
        u32_of(dim)?,
        u32_of(vocab.len())?,
        u32_of(sorted.len())?,
        max_input_chars_per_word,
        unk,
        u32_of(text.len())?,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    let mut bitmap = vec![0u8; vocab.len().div_ceil(8)];
    for (id, _) in &sorted {
        bitmap[*id as usize / 8] |= 1 << (id % 8);
    }
    out.extend_from_slice(&bitmap);
    let quantized: Vec<(f32, Vec<i8>)> = sorted.iter().map(|(_, r)| quantize_row(r)).collect();
    for (scale, _) in &quantized {
        out.extend_from_slice(&scale.to_le_bytes());
    }
    for (_, q) in &quantized {
        out.extend(q.iter().map(|&v| v as u8));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vec<String> {
        ["[UNK]", "hello", "world", "##s"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn round_trips_rows_within_half_a_quantisation_step() {
        let a = [0.5f32, -1.0, 0.25];
        let c = [0.0f32, 0.1, -0.3];
        let bytes = encode(&vocab(), 0, 100, 3, &[(3, &c), (1, &a)]).unwrap();
        let m = CompactModel::parse(&bytes).unwrap();
        assert_eq!((m.dim(), m.n_rows(), m.unk()), (3, 2, 0));
        assert_eq!(m.vocab(), ["[UNK]", "hello", "world", "##s"]);
        for (id, row) in [(1u32, a), (3, c)] {
            let mut acc = [0.0f32; 3];
            assert!(m.add_row(id, &mut acc));
            let step = row.iter().fold(0.0f32, |x, v| x.max(v.abs())) / 127.0;
            for (x, y) in acc.iter().zip(row) {
                assert!((x - y).abs() <= step / 2.0 + 1e-7, "{acc:?} vs {row:?}");
            }
        }
        let mut acc = [1.0f32; 3];
        assert!(!m.add_row(2, &mut acc), "pruned token has no row");
        assert!(!m.add_row(99, &mut acc), "out-of-vocabulary id");
        assert_eq!(acc, [1.0; 3]);
    }

    #[test]
    fn refuses_corrupt_files() {
        let row = [1.0f32, 2.0];
        let bytes = encode(&vocab(), 0, 100, 2, &[(1, &row)]).unwrap();
        assert!(CompactModel::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(CompactModel::parse(&extra).is_err());
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(CompactModel::parse(&magic).unwrap_err().contains("magic"));
        assert!(encode(&vocab(), 0, 100, 2, &[(1, &row), (1, &row)]).is_err());
        assert!(encode(&vocab(), 0, 100, 3, &[(1, &row)]).is_err());
    }

    #[test]
    fn zero_rows_quantise_to_zero_scale() {
        let (s, q) = quantize_row(&[0.0, 0.0]);
        assert_eq!((s, q), (0.0, vec![0, 0]));
    }
}
