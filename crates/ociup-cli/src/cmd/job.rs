//! `ociup job`: a nick's newest version as a Kubernetes Job, printed or submitted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use ociup_core::managed::manager::{BaseUnreachable, Manager, ResolveOptions};
use ociup_kube::{Cluster, ConnectOptions, JobOptions};
use ociup_registry::Opener;

use super::Ctx;
use crate::args::{CatalogArgs, SigningArgs, UnreachableArg};
use crate::output;

/// Exit status of `--wait` when the Job failed (2 is clap's usage error, 3 rebase's "nothing
/// to do").
const JOB_FAILED: u8 = 4;

/// `ociup job` arguments.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The nick to run: its newest version, regenerated first when its base moved (as
    /// `ociup resolve` does).
    pub nick: String,
    /// Arguments for the container, after `--`: they replace the image's Cmd (its Entrypoint
    /// stays), after any --arg.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// An argument for the container (before those after `--`). Repeatable.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub arg: Vec<String>,
    /// The Job's name (default: NICK-vVERSION- and a suffix the API server picks; printed as
    /// generateName, which `kubectl create -f -` takes and `kubectl apply` does not).
    #[arg(long)]
    pub name: Option<String>,
    /// The namespace (default: the kubeconfig context's, else `default`; left out of a
    /// printed Job).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Set an environment variable in the container. Repeatable.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The pod's service account.
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// A secret holding credentials to pull the image. Repeatable.
    #[arg(long, value_name = "SECRET")]
    pub image_pull_secret: Vec<String>,
    /// Retries before the Job is marked failed (Kubernetes' default: 6).
    #[arg(long, value_name = "N")]
    pub backoff_limit: Option<i32>,
    /// Delete the Job this many seconds after it finished.
    #[arg(long, value_name = "SECS")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// A label on the Job and its pods (besides ociup.dev/nick, ociup.dev/version and
    /// app.kubernetes.io/managed-by, which ociup sets). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// A resource request of the container: cpu=500m, memory=256Mi, ephemeral-storage=1Gi.
    /// Repeatable.
    #[arg(long, value_name = "RESOURCE=QUANTITY")]
    pub request: Vec<String>,
    /// A resource limit of the container: cpu=2, memory=1Gi, nvidia.com/gpu=1. Repeatable.
    #[arg(long, value_name = "RESOURCE=QUANTITY")]
    pub limit: Vec<String>,
    /// Submit the Job to the cluster instead of printing it. When an upgrade is due, the Job
    /// is created suspended first, with the digest the new version will have, and released
    /// once that version is written and recorded (deleted if that fails).
    #[arg(long)]
    pub apply: bool,
    /// With --apply: follow the Job until it finishes, print its conditions, and exit 0 when
    /// it completed, 4 when it failed.
    #[arg(long, requires = "apply")]
    pub wait: bool,
    /// With --wait: give up after this many seconds (exit 1, the Job left running). Without
    /// it, --wait follows the Job as long as it runs, resuming its watch when the stream ends
    /// or breaks, and gives up (exit 1) only when the API server cannot be reached or does not
    /// answer 6 times in a row.
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub wait_timeout: Option<u64>,
    /// With --apply: the kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else the in-cluster
    /// service account, as kubectl finds them).
    #[arg(long, value_name = "FILE", requires = "apply")]
    pub kubeconfig: Option<PathBuf>,
    /// With --apply: the kubeconfig context to use (default: its current context).
    #[arg(long, requires = "apply")]
    pub context: Option<String>,
    /// With --apply: the longest one request to the API server may take, connecting, sending
    /// and reading the whole answer (as kubectl's --request-timeout): 30s, 1m, 500ms, a number
    /// of seconds; 0 for no limit. A release whose answer is lost is sent again (3 more times);
    /// deleting a held Job after a failure is always bounded (by 30s when this is 0). While
    /// --wait follows the Job, each request is bounded, and a watch silent for a minute more
    /// than this is resumed.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_timeout,
        requires = "apply"
    )]
    pub request_timeout: Duration,
    /// Print JSON: the Job itself (Kubernetes' own field names); with --apply, what was done:
    /// namespace, name, uid, nick, version, image, digest, base_digest, upgraded, held, stale,
    /// succeeded and conditions (with --wait, else null).
    #[arg(long)]
    pub json: bool,
    /// Run the current version without asking the base.
    #[arg(long)]
    pub offline: bool,
    /// When the base cannot be reached: fail, or run the last good version.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = UnreachableArg::Fail)]
    pub if_unreachable: UnreachableArg,
    /// `created` of a regenerated version, seconds since 1970.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECS",
        default_value = "0"
    )]
    pub source_date_epoch: String,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// A duration as kubectl's --request-timeout takes it: a number with `ms`, `s`, `m` or `h`, or
/// a number of seconds; `0` is no limit.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{text:?}: expected a duration: 30s, 1m, 500ms, 0")),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && number.chars().any(|c| c.is_ascii_digit()) => {
            Duration::try_from_secs_f64(n * scale).map_err(|e| format!("{text:?}: {e}"))
        }
        _ => Err(format!("{text:?}: expected a duration: 30s, 1m, 500ms, 0")),
    }
}

/// The catalog's manager, as `resolve` makes it.
fn manager(ctx: &Ctx, args: &JobArgs) -> Result<Manager<Opener>> {
    let epoch = ociup_core::time::parse_epoch(&args.source_date_epoch)?;
    super::managed::manager(ctx, &args.catalog, Some(&args.signing), epoch, None)
}

/// `KEY=VALUE` pairs of a repeated flag.
fn pairs(flag: &str, values: &[String]) -> Result<Vec<(String, String)>> {
    values
        .iter()
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--{flag} {v:?}: expected KEY=VALUE"))
        })
        .collect()
}

fn job_options(args: &JobArgs) -> Result<JobOptions> {
    let map = |flag: &str, values: &[String]| -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (k, v) in pairs(flag, values)? {
            if out.insert(k.clone(), v).is_some() {
                bail!("--{flag} {k}: given twice");
            }
        }
        Ok(out)
    };
    let options = JobOptions {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        args: args.arg.iter().chain(&args.args).cloned().collect(),
        env: pairs("env", &args.env)?,
        service_account: args.service_account.clone(),
        image_pull_secrets: args.image_pull_secret.clone(),
        backoff_limit: args.backoff_limit,
        ttl_seconds_after_finished: args.ttl_seconds_after_finished,
        labels: map("label", &args.label)?,
        requests: map("request", &args.request)?,
        limits: map("limit", &args.limit)?,
    };
    options.validate()?;
    Ok(options)
}

/// A resolve error, with the hint `resolve` gives for an unreachable base.
fn resolve_error(nick: &str, e: ociup_kube::Error) -> anyhow::Error {
    if let ociup_kube::Error::Resolve(ociup_core::Error::Backend(b)) = &e
        && b.is::<BaseUnreachable>()
    {
        return anyhow::Error::new(e).context(format!(
            "resolving {nick}; to run the last good version instead, pass --if-unreachable stale"
        ));
    }
    anyhow::Error::new(e)
}

/// Exit status: 0 printed or submitted (with --wait: the Job completed); 4 the Job failed;
/// 1 ociup failed.
pub async fn run(ctx: &Ctx, args: JobArgs) -> Result<u8> {
    // Every option is checked before the nick is resolved (which may write a new version).
    let options = job_options(&args)?;
    let resolve = ResolveOptions {
        offline: args.offline,
        unreachable: args.if_unreachable.into(),
        ..ResolveOptions::default()
    };
    let nick = args.nick.as_str();
    if !args.apply {
        let m = manager(ctx, &args)?;
        let (job, r) = ociup_kube::job_for(&m, nick, resolve, &options)
            .await
            .map_err(|e| resolve_error(nick, e))?;
        note_resolution(&r);
        if args.json {
            return output::json(&serde_json::to_value(&job)?).map(|()| 0);
        }
        print!("{}", ociup_kube::to_yaml(&job)?);
        return Ok(0);
    }
    let cluster = Cluster::connect(&ConnectOptions {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
    })
    .await?
    .with_request_timeout(Some(args.request_timeout));
    // --wait follows the Job (list, watch): asked before anything is written, as apply asks
    // for what it needs.
    if args.wait {
        let namespace = options
            .namespace
            .as_deref()
            .unwrap_or_else(|| cluster.default_namespace());
        cluster.check_access(namespace, &["list", "watch"]).await?;
    }
    let m = manager(ctx, &args)?;
    let applied = cluster
        .apply(&m, nick, resolve, &options, stopped())
        .await
        .map_err(|e| resolve_error(nick, e))?;
    note_resolution(&applied.resolution);
    let job = format!("job.batch/{}", applied.name);
    if applied.held && !applied.upgraded {
        eprintln!(
            "ociup: {job} was created suspended in {} while the record of {nick} version {} was \
             written on the base's new digest (the image itself did not change), then released",
            applied.namespace, applied.version
        );
    } else if applied.held {
        eprintln!(
            "ociup: {job} was created suspended in {} while {nick} version {} was written, then \
             released",
            applied.namespace, applied.version
        );
    }
    if !args.json {
        output::line(format!("{job} created ({})", applied.image))?;
    }
    let finished = if args.wait {
        let timeout = args.wait_timeout.map(Duration::from_secs);
        Some(
            cluster
                .wait(&applied.namespace, &applied.name, timeout)
                .await?,
        )
    } else {
        None
    };
    if args.json {
        let mut v = serde_json::to_value(&applied)?;
        v["succeeded"] = serde_json::json!(finished.as_ref().map(|f| f.succeeded));
        v["conditions"] = serde_json::to_value(finished.as_ref().map(|f| &f.conditions))?;
        output::json(&v)?;
    } else if let Some(f) = &finished {
        for c in &f.conditions {
            output::line(format!("  {c}"))?;
        }
        output::line(format!(
            "{job} {}",
            if f.succeeded { "completed" } else { "failed" }
        ))?;
    }
    Ok(match finished {
        Some(f) if !f.succeeded => JOB_FAILED,
        _ => 0,
    })
}

/// Completes on SIGINT or SIGTERM: `apply` then deletes a Job it holds suspended.
async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn note_resolution(r: &ociup_core::managed::manager::Resolution) {
    if r.stale {
        eprintln!(
            "ociup: the base of {} cannot be reached; running the last good version (stale)",
            r.nick
        );
    }
    if r.upgraded {
        eprintln!(
            "ociup: {} upgraded to version {} (base {})",
            r.nick, r.version, r.base_digest
        );
    }
}
