//! `routewise keys --config FILE create | list | revoke | update`: virtual keys in the
//! config's state store (`state:`). With Redis, or a local file no gateway holds, the
//! command opens the store itself. A running gateway holds its local file (redb allows one
//! process), so then the command goes through that gateway's admin API
//! (`http://<listen>/admin/keys`) with the admin key from `ROUTEWISE_ADMIN_KEY`; the
//! gateway's own cache then sees the change at once.
//!
//! `create` prints the new key, and nothing else, on stdout (the only time it exists);
//! `list` prints a table (or JSON with `--json`); `revoke` and `update` print the record.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use routewise_gateway::http::auth::{public, ADMIN_KEY_ENV};
use routewise_online::budget::Period;
use routewise_online::keys::{KeyRecord, KeySpec};
use routewise_online::service::now_ms;
use routewise_online::store::keys::{create_key, revoke_key, update_key};
use routewise_online::{KeyStore, StoreError};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's config file (its `state:` says where keys are kept).
    #[arg(long)]
    pub config: PathBuf,
    /// The running gateway's address for its admin API, when it is not the config's
    /// `listen` (`serve --listen` overrode it), e.g. `http://127.0.0.1:9000`.
    #[arg(long)]
    pub url: Option<String>,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Make a key; prints it (only this once) on stdout.
    Create(SpecArgs),
    /// Every key (never the secrets).
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (the part after `rw-`); it is refused from then on.
    Revoke { id: String },
    /// Change a key's name, models, policy, team, tags, expiry, budget, rate limits or pacing.
    Update {
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
}

#[derive(clap::Args)]
pub struct SpecArgs {
    /// Who the key is for (required by `create`).
    #[arg(long)]
    pub name: Option<String>,
    /// The configured models the key may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// The key's default policy, like `lambda=5` or `budget_usd=0.002`.
    #[arg(long)]
    pub policy: Option<String>,
    /// The key's team (what `team:` routing rules read).
    #[arg(long)]
    pub team: Option<String>,
    /// A tag `key=value` for `tag:` routing rules (repeatable; replaces the key's tags).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Days until the key stops working.
    #[arg(long)]
    pub expires_in_days: Option<f64>,
    /// Spend allowed per period, USD (0 removes the cap).
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// The budget's period (default month).
    #[arg(long, value_enum)]
    pub period: Option<PeriodArg>,
    /// Pace the budget: steer the key's lambda so that spend follows the budget across the
    /// period (the budget stays a hard cap); `--pace false` turns it off.
    /// (Put it after the key id in `update`: `update ID --pace`.)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub pace: Option<bool>,
    /// Requests per minute (0 removes the limit).
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute, prompt plus max_tokens (0 removes the limit).
    #[arg(long)]
    pub tpm: Option<u64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PeriodArg {
    Day,
    Week,
    Month,
}

impl From<PeriodArg> for Period {
    fn from(p: PeriodArg) -> Period {
        match p {
            PeriodArg::Day => Period::Day,
            PeriodArg::Week => Period::Week,
            PeriodArg::Month => Period::Month,
        }
    }
}

impl SpecArgs {
    fn spec(&self) -> anyhow::Result<KeySpec> {
        let tags = if self.tags.is_empty() {
            None
        } else {
            let mut map = BTreeMap::new();
            for t in &self.tags {
                let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
                if k.trim().is_empty() {
                    bail!("--tag `{t}`: expected key=value");
                }
                map.insert(k.trim().to_string(), v.trim().to_string());
            }
            Some(map)
        };
        let expires_in_s = match self.expires_in_days {
            Some(d) if !(d > 0.0 && d <= 36_500.0) => {
                bail!("--expires-in-days must be in (0, 36500]")
            }
            Some(d) => Some((d * 86_400.0) as u64),
            None => None,
        };
        Ok(KeySpec {
            name: self.name.clone(),
            models: self.models.clone(),
            policy: self.policy.clone(),
            team: self.team.clone(),
            tags,
            expires_in_s,
            budget_usd: self.budget_usd,
            period: self.period.map(Period::from),
            pace: self.pace,
            rpm: self.rpm,
            tpm: self.tpm,
        })
    }
}

/// Where the command reads and writes keys.
enum Via {
    Store(Arc<dyn KeyStore>),
    Admin { url: String, key: String },
}

/// Runs `routewise keys`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = routewise_gateway::config::load(&args.config)?;
    let file = args.config.display().to_string();
    let models: Vec<&str> = config.models.iter().map(|m| m.name.as_str()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let via = match routewise_online::store::open::open_keys(&config.state) {
        Ok(s) => Via::Store(s),
        Err(StoreError::Locked(path)) => {
            let key = std::env::var(ADMIN_KEY_ENV).unwrap_or_default();
            if key.is_empty() {
                bail!(
                    "{file}: state.path: {path} is held by a running gateway; set {ADMIN_KEY_ENV} to its admin key to manage keys through it"
                );
            }
            let base = match &args.url {
                Some(u) => u.trim_end_matches('/').to_string(),
                None => {
                    let mut addr = config.listen;
                    if addr.ip().is_unspecified() {
                        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    format!("http://{addr}")
                }
            };
            Via::Admin {
                url: format!("{base}/admin/keys"),
                key,
            }
        }
        Err(e) => return Err(e).with_context(|| format!("{file}: cannot open the key store")),
    };
    let mut out = std::io::stdout().lock();
    rt.block_on(act(&via, args.action, &models, &mut out))
}

async fn act(
    via: &Via,
    action: Action,
    models: &[&str],
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    match action {
        Action::Create(spec) => {
            let spec = spec.spec()?;
            if spec.name.is_none() {
                bail!("create needs --name");
            }
            let key = match via {
                Via::Store(s) => create_key(&**s, &spec, now_ms(), models).await?.key,
                Via::Admin { .. } => {
                    let v = admin(via, reqwest::Method::POST, "", Some(&spec)).await?;
                    v["key"]
                        .as_str()
                        .context("the admin API sent no key")?
                        .to_string()
                }
            };
            writeln!(out, "{key}")?;
        }
        Action::List { json } => {
            let records: Vec<Value> = match via {
                Via::Store(s) => s.list_keys().await?.iter().map(public).collect(),
                Via::Admin { .. } => admin(via, reqwest::Method::GET, "", None).await?["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            };
            print_list(out, &records, json)?;
        }
        Action::Revoke { id } => {
            let r = match via {
                Via::Store(s) => public(&revoke_key(&**s, &id, now_ms()).await?),
                Via::Admin { .. } => admin(via, reqwest::Method::DELETE, &id, None).await?,
            };
            writeln!(out, "{r}")?;
        }
        Action::Update { id, spec } => {
            let spec = spec.spec()?;
            let r = match via {
                Via::Store(s) => public(&update_key(&**s, &id, &spec, now_ms(), models).await?),
                Via::Admin { .. } => admin(via, reqwest::Method::PATCH, &id, Some(&spec)).await?,
            };
            writeln!(out, "{r}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One admin API call; its JSON, or the API's error message.
async fn admin(
    via: &Via,
    method: reqwest::Method,
    id: &str,
    body: Option<&KeySpec>,
) -> anyhow::Result<Value> {
    let Via::Admin { url, key } = via else {
        bail!("not through the admin API");
    };
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("`{id}` is not a key id (the letters and digits after `rw-`)");
    }
    let url = if id.is_empty() {
        url.clone()
    } else {
        format!("{url}/{id}")
    };
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway's admin API at {url}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        bail!("the admin API answered {status}: {msg}");
    }
    Ok(v)
}

fn print_list(out: &mut impl Write, records: &[Value], json: bool) -> std::io::Result<()> {
    if json {
        for r in records {
            writeln!(out, "{r}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<20} {:<12} {:<9} {:<24} {:<14} {:<16} created",
        "id", "name", "team", "status", "models", "policy", "budget"
    )?;
    let now = now_ms();
    for r in records {
        let Ok(rec) = serde_json::from_value::<KeyRecord>(r.clone()) else {
            continue;
        };
        let status = if rec.revoked_ms.is_some() {
            "revoked"
        } else if rec.expires_ms.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        };
        writeln!(
            out,
            "{:<12} {:<20} {:<12} {:<9} {:<24} {:<14} {:<16} {}",
            rec.id,
            rec.name,
            rec.team.as_deref().unwrap_or("-"),
            status,
            rec.models
                .as_ref()
                .map_or("all".to_string(), |m| m.join(",")),
            rec.policy.as_deref().unwrap_or("-"),
            rec.budget_usd.map_or("-".to_string(), |b| format!(
                "${b}/{}{}",
                rec.period.unwrap_or(Period::Month).name(),
                if rec.pace { " paced" } else { "" }
            )),
            routewise_online::budget::rfc3339(rec.created_ms),
        )?;
    }
    Ok(())
}
