//! RouterBench wide CSV (placeholder; the real parser lands with the router-lab work).

use std::path::Path;

use crate::{DataError, Dataset};

pub fn load(path: &Path) -> Result<Dataset, DataError> {
    Err(DataError::Empty {
        path: path.to_path_buf(),
    })
}
