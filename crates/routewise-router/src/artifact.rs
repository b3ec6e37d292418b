//! The router artifact: a trained featurizer + router + model catalog in one file.
//!
//! Layout (all integers in decimal ASCII, so `head -c 600 x.rw` shows what a file is):
//!
//! ```text
//! ROUTEWISE-ARTIFACT format=<N> header_bytes=<H>\n    magic line
//! <H bytes: the ArtifactMeta as pretty JSON>\n         human-readable header
//! <bincode payload: featurizer, router, catalog>
//! <32 bytes: SHA-256 of everything before>
//! ```
//!
//! Loading checks, in order: the magic (else "not a routewise artifact"), the format
//! version (a newer one is refused with both versions named, before anything else is
//! read, so future layouts can change freely), the checksum (a truncated or corrupted
//! file is refused), then the header and the payload. The featurizer and the router are
//! stored as their config enums ([`AnyFeaturizer`], [`AnyRouter`]), so adding variants
//! (new featurizers, new routers) keeps old artifacts loadable; a neural featurizer's
//! weights are resolved ([`AnyFeaturizer::load`]) while the artifact is read.
//!
//! An artifact may also carry a calibrated confidence chain ([`CalibratedCascade`],
//! written by `routewise calibrate --cascade --artifact`) in its header: the tier, the
//! acceptor's weights and the threshold, which `serve` runs with `router.cascade:
//! {learned: true}`. Such a file is written at format 3, so builds that cannot serve it
//! refuse it as newer.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use routewise_features::AnyFeaturizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cascade::{Cascade, CascadeRule};
use crate::{AnyRouter, Catalog, Engine, RouterError};

/// The newest on-disk layout this build reads and writes. A file is written at the
/// oldest version that can hold it ([`Artifact::format_needed`]), so artifacts without
/// onboarded models stay readable by builds that predate onboarding.
pub const ARTIFACT_FORMAT_VERSION: u32 = 3;

/// The layout of artifacts with onboarded models and no cascade.
const ONBOARDED_FORMAT_VERSION: u32 = 2;

/// The layout of artifacts without onboarded models.
const PLAIN_FORMAT_VERSION: u32 = 1;

const MAGIC: &str = "ROUTEWISE-ARTIFACT";
const CHECKSUM_BYTES: usize = 32;
/// The magic line is short; anything longer is not an artifact.
const MAX_MAGIC_LINE: usize = 128;

/// What an artifact holds, readable without deserialising the payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ArtifactMeta {
    pub format_version: u32,
    /// `routewise-router` crate version that wrote the file.
    pub routewise_version: String,
    /// Dataset the router was trained on (file name).
    pub dataset: String,
    /// Router name (`knn`, `linear`, ...).
    pub router: String,
    /// Featurizer name (`tfidf`, ...).
    pub featurizer: String,
    /// Model names in router order.
    pub models: Vec<String>,
    /// Training prompts.
    pub n_train: usize,
    /// Seconds since the Unix epoch when the artifact was created.
    pub created_unix: u64,
    /// Models added after training (`routewise onboard`), oldest first; absent in
    /// artifacts written before onboarding existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub onboarded: Vec<OnboardedModel>,
    /// A confidence chain calibrated on held-out train prompts for this router, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cascade: Option<CalibratedCascade>,
}

/// A confidence chain ([`crate::cascade`], FrugalGPT's family) calibrated with a
/// guarantee for serving: the tier (catalog indices, called in order), the acceptor and
/// its threshold, chosen by Learn then Test so that the quality lost against always
/// escalating is at most `alpha` with probability at least `1 - delta`, on prompts like
/// the calibration ones and with escalation at `lambda` (`routewise_eval::calibrate`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CalibratedCascade {
    pub cascade: Cascade,
    pub alpha: f64,
    pub delta: f64,
    /// The escalation policy's lambda the guarantee was calibrated at.
    pub lambda: f64,
    /// Calibration prompts the threshold was chosen on.
    pub n_calibration: usize,
}

impl CalibratedCascade {
    /// Checks it against a catalog of `n_models`: a non-empty tier of distinct known
    /// models, an acceptor with finite weights, and a chain rule with a threshold in
    /// [0, 1].
    pub fn check(&self, n_models: usize) -> Result<(), String> {
        let c = &self.cascade;
        if c.tier.is_empty() {
            return Err("the cascade's tier is empty".into());
        }
        for (i, &m) in c.tier.iter().enumerate() {
            if m >= n_models {
                return Err(format!("the cascade's tier names model {m} of {n_models}"));
            }
            if c.tier[..i].contains(&m) {
                return Err(format!("the cascade's tier lists model {m} twice"));
            }
        }
        let Some(acceptor) = &c.acceptor else {
            return Err("the cascade has no acceptor".into());
        };
        let weights = acceptor.weights.iter().chain(&acceptor.escalate);
        if acceptor.weights.is_empty() || weights.flatten().any(|w| !w.is_finite()) {
            return Err("the cascade's acceptor has no weights or a weight is not finite".into());
        }
        match c.rule {
            CascadeRule::Chain {
                threshold,
                step_discount,
            } if (0.0..=1.0).contains(&threshold) && step_discount.is_finite() => Ok(()),
            _ => Err("the cascade's rule is not a chain with a threshold in [0, 1]".into()),
        }
    }
}

/// A model added to a trained router without retraining (see [`crate::onboard`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OnboardedModel {
    pub name: String,
    /// Probe outcomes it was fitted on (0: price only, the mean-model prior).
    pub probes: usize,
    /// The prior strength chosen by leave-one-out.
    pub alpha: f64,
    /// Seconds since the Unix epoch when it was added.
    pub created_unix: u64,
}

/// A trained router with everything needed to serve it.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub meta: ArtifactMeta,
    pub featurizer: AnyFeaturizer,
    pub router: AnyRouter,
    pub catalog: Catalog,
}

#[derive(Serialize)]
struct PayloadRef<'a> {
    featurizer: &'a AnyFeaturizer,
    router: &'a AnyRouter,
    catalog: &'a Catalog,
}

#[derive(Deserialize)]
struct Payload {
    featurizer: AnyFeaturizer,
    router: AnyRouter,
    catalog: Catalog,
}

fn format_for(router: &AnyRouter) -> u32 {
    match router {
        AnyRouter::Onboarded(_) => ONBOARDED_FORMAT_VERSION,
        _ => PLAIN_FORMAT_VERSION,
    }
}

fn err(msg: impl Into<String>) -> RouterError {
    RouterError::Artifact(msg.into())
}

impl Artifact {
    /// Bundles a trained router, filling the metadata (current format and crate
    /// version, names, model list, creation time).
    pub fn new(
        dataset: impl Into<String>,
        featurizer: AnyFeaturizer,
        router: AnyRouter,
        catalog: Catalog,
        n_train: usize,
    ) -> Artifact {
        let created_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Artifact {
            meta: ArtifactMeta {
                format_version: format_for(&router),
                routewise_version: env!("CARGO_PKG_VERSION").to_string(),
                dataset: dataset.into(),
                router: router.name().to_string(),
                featurizer: featurizer.name().to_string(),
                models: catalog.names().map(str::to_string).collect(),
                n_train,
                created_unix,
                onboarded: Vec::new(),
                cascade: None,
            },
            featurizer,
            router,
            catalog,
        }
    }

    /// The format version this artifact is written at: 3 when it carries a cascade, 2
    /// when it holds onboarded models (a router variant older builds cannot read, so they
    /// say "newer" instead of "corrupt"), else 1.
    pub fn format_needed(&self) -> u32 {
        if self.meta.cascade.is_some() {
            ARTIFACT_FORMAT_VERSION
        } else {
            format_for(&self.router)
        }
    }

    /// Serialises the artifact (see the module docs for the layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>, RouterError> {
        let mut meta = self.meta.clone();
        let format = self.format_needed();
        meta.format_version = format;
        let header = serde_json::to_string_pretty(&meta)
            .map_err(|e| err(format!("cannot encode the header: {e}")))?;
        let payload = bincode::serialize(&PayloadRef {
            featurizer: &self.featurizer,
            router: &self.router,
            catalog: &self.catalog,
        })
        .map_err(|e| err(format!("cannot encode the payload: {e}")))?;
        let mut out =
            format!("{MAGIC} format={format} header_bytes={}\n", header.len()).into_bytes();
        out.reserve(header.len() + 1 + payload.len() + CHECKSUM_BYTES);
        out.extend_from_slice(header.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&payload);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    /// Parses an artifact; refuses foreign, newer, truncated or corrupted input.
    pub fn from_bytes(b: &[u8]) -> Result<Artifact, RouterError> {
        let line_end = b
            .iter()
            .take(MAX_MAGIC_LINE)
            .position(|&c| c == b'\n')
            .ok_or_else(|| err("not a routewise artifact (no magic line)"))?;
        let line = std::str::from_utf8(&b[..line_end])
            .map_err(|_| err("not a routewise artifact (bad magic line)"))?;
        let mut parts = line.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err(err(format!(
                "not a routewise artifact (it does not start with `{MAGIC}`)"
            )));
        }
        let mut version = None;
        let mut header_len = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("format=") {
                version = v.parse::<u32>().ok();
            } else if let Some(v) = p.strip_prefix("header_bytes=") {
                header_len = v.parse::<usize>().ok();
            }
        }
        let version = version.ok_or_else(|| err("malformed magic line: no format version"))?;
        if version > ARTIFACT_FORMAT_VERSION {
            return Err(err(format!(
                "artifact format version {version} is newer than this routewise supports \
                 (format version {ARTIFACT_FORMAT_VERSION}, routewise {}); upgrade routewise \
                 or retrain the router",
                env!("CARGO_PKG_VERSION")
            )));
        }
        if version == 0 {
            return Err(err("artifact format version 0 is not a valid version"));
        }
        let header_len = header_len.ok_or_else(|| err("malformed magic line: no header size"))?;
        if b.len() < line_end + 1 + CHECKSUM_BYTES {
            return Err(err("corrupt artifact: truncated"));
        }
        let (body, sum) = b.split_at(b.len() - CHECKSUM_BYTES);
        if Sha256::digest(body).as_slice() != sum {
            return Err(err(
                "corrupt artifact: checksum mismatch (the file is truncated or damaged)",
            ));
        }
        let header_start = line_end + 1;
        let header_end = header_start
            .checked_add(header_len)
            .filter(|&e| e < body.len() && body[e] == b'\n')
            .ok_or_else(|| err("corrupt artifact: header size does not match"))?;
        let meta: ArtifactMeta = serde_json::from_slice(&body[header_start..header_end])
            .map_err(|e| err(format!("corrupt artifact header: {e}")))?;
        if meta.format_version != version {
            return Err(err(format!(
                "corrupt artifact: header says format {} but the magic line {version}",
                meta.format_version
            )));
        }
        let payload: Payload = bincode::deserialize(&body[header_end + 1..])
            .map_err(|e| err(format!("corrupt artifact payload: {e}")))?;
        let names: Vec<&str> = payload.catalog.names().collect();
        if names != meta.models.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(err(
                "corrupt artifact: the header's models differ from the catalog's",
            ));
        }
        if let Some(c) = &meta.cascade {
            c.check(names.len())
                .map_err(|e| err(format!("corrupt artifact: {e}")))?;
        }
        // Neural featurizers resolve their weights now, so a missing download is a clear
        // error at load time rather than zero vectors at routing time (no-op for tfidf).
        payload.featurizer.load().map_err(|e| {
            err(format!(
                "cannot load the `{}` featurizer: {e}",
                meta.featurizer
            ))
        })?;
        Ok(Artifact {
            meta,
            featurizer: payload.featurizer,
            router: payload.router,
            catalog: payload.catalog,
        })
    }

    /// Writes the artifact to `path` (through a temporary file, renamed into place, so a
    /// crash never leaves a half-written artifact under the final name).
    pub fn save(&self, path: &Path) -> Result<(), RouterError> {
        let bytes = self.to_bytes()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| err(format!("{}: cannot write artifact: {e}", path.display())))
    }

    /// Reads an artifact from `path`; every error names the path.
    pub fn load(path: &Path) -> Result<Artifact, RouterError> {
        let bytes = std::fs::read(path)
            .map_err(|e| err(format!("{}: cannot read artifact: {e}", path.display())))?;
        Artifact::from_bytes(&bytes).map_err(|e| match e {
            RouterError::Artifact(m) => err(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// The routing engine for this artifact.
    pub fn into_engine(self) -> Engine {
        Engine {
            featurizer: self.featurizer,
            router: self.router,
            catalog: self.catalog,
        }
    }
}
