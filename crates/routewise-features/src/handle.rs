//! The shared part of weights-backed featurizers ([`crate::minilm`], [`crate::static_embed`]):
//! the lazily loaded model state that clones share, and the open/load steps around the
//! models directory ([`crate::weights`]).
//!
//! A featurizer artifact serialises only its configuration (model name, dimension, token
//! budget, file sha256s); the loaded state lives in a [`Loaded`] cell that serde skips.
//! [`open_model`] resolves a model name or directory, checks and hashes its files (against
//! the registry for registered names); [`verified_dir`] re-checks the recorded hashes
//! before a deserialised artifact loads its weights.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::FeatureError;

/// Model state loaded at most once; clones share the loaded state. `Debug` shows only
/// whether it is loaded.
pub struct Loaded<S>(OnceLock<Arc<S>>);

impl<S> Loaded<S> {
    /// A cell holding `state`.
    pub(crate) fn new(state: S) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(Arc::new(state));
        Loaded(cell)
    }

    /// The loaded state, if any.
    pub(crate) fn get(&self) -> Option<&Arc<S>> {
        self.0.get()
    }

    /// Stores `state` unless a state is already loaded (then keeps the first).
    pub(crate) fn set(&self, state: S) {
        let _ = self.0.set(Arc::new(state));
    }

    /// Whether a state is loaded.
    pub(crate) fn is_loaded(&self) -> bool {
        self.0.get().is_some()
    }
}

impl<S> Default for Loaded<S> {
    fn default() -> Self {
        Loaded(OnceLock::new())
    }
}

impl<S> Clone for Loaded<S> {
    fn clone(&self) -> Self {
        let cell = OnceLock::new();
        if let Some(s) = self.0.get() {
            let _ = cell.set(Arc::clone(s));
        }
        Loaded(cell)
    }
}

impl<S> std::fmt::Debug for Loaded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.is_loaded(), f)
    }
}

/// A model directory checked by [`open_model`].
pub(crate) struct Opened {
    /// The directory the files were read from.
    pub dir: PathBuf,
    /// The registry's canonical name for a registered model, else `model` as given.
    pub name: String,
    /// sha256 of each required file (file name -> hex).
    pub sha256: BTreeMap<String, String>,
}

/// Resolves `model` (a registered name or a directory), requires `files` there, hashes
/// them and, for a registered model, verifies them against the registry.
pub(crate) fn open_model(model: &str, files: &[&str]) -> Result<Opened, FeatureError> {
    let dir = crate::weights::model_dir(model);
    crate::weights::require_files(model, &dir, files)?;
    let sha256 = crate::weights::hash_files(&dir, files)?;
    let spec = crate::weights::find_model(model);
    if let Some(spec) = spec {
        let expected = crate::weights::registry_hashes(spec);
        crate::weights::verify_hashes_with(model, &dir, &expected, &sha256)?;
    }
    let name = spec
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| model.to_string());
    Ok(Opened { dir, name, sha256 })
}

/// Resolves the directory of `model` recorded in an artifact and checks every file
/// against the recorded `sha256`.
pub(crate) fn verified_dir(
    model: &str,
    sha256: &BTreeMap<String, String>,
) -> Result<PathBuf, FeatureError> {
    let dir = crate::weights::model_dir(model);
    crate::weights::verify_hashes(model, &dir, sha256)?;
    Ok(dir)
}
