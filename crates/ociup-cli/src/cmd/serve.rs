//! `ociup serve`: the service mode (see docs/serve.md).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use ociup_serve::{Allowlist, Config, Service};

use super::Ctx;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen (a port of 0 picks a free one; the address is printed on stdout).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Listen on an address other machines can reach although the service speaks plain HTTP
    /// (no --tls-cert): tokens then cross the network readable. Without it or TLS, --listen
    /// must be a loopback address.
    #[arg(long)]
    pub insecure_listen: bool,
    /// Serve HTTPS with this certificate chain (PEM, the service's certificate first), with
    /// --tls-key. Both files are read again when they change (checked at each new
    /// connection). Example: --tls-cert /etc/ociup/tls.crt --tls-key /etc/ociup/tls.key
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against these CAs (PEM): a verified certificate's subject
    /// CN is the caller, in the role --cert-role gives it. Clients without a certificate may
    /// still present a bearer token.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// The role of client certificates whose subject CN is NAME (repeatable). Example:
    /// --cert-role ci-runner=requester --cert-role ops=admin
    #[arg(long, value_name = "NAME=ROLE", requires = "client_ca")]
    pub cert_role: Vec<String>,
    /// Serve the Kubernetes mutating admission webhook at /v1/admission (needs TLS, and
    /// --admission-caller or --admission-unauthenticated): images `ociup.dev/<nick>` are
    /// rewritten to the nick's pinned reference (docs/serve.md).
    #[arg(long, requires = "tls_cert")]
    pub admission: bool,
    /// A token name or client-certificate CN (with --cert-role) that may call the admission
    /// webhook: the API server's identity (repeatable). Other callers get 403, whatever their
    /// role. Example: --admission-caller kube-apiserver
    #[arg(long, value_name = "NAME", requires = "admission")]
    pub admission_caller: Vec<String>,
    /// The longest an admission review may take resolving, in seconds (at least 1); beyond,
    /// --admission-failure decides. Set the webhook's timeoutSeconds (10 by default) to at
    /// least this + 2: the stale policy may read the last version for one more second.
    #[arg(long, value_name = "SECS", default_value_t = 8, requires = "admission",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub admission_timeout: u64,
    /// What an admission review does when a nick cannot be resolved in time: refuse the
    /// object, or admit it with the last recorded version and the annotation
    /// `ociup.dev/stale: <reason>`.
    #[arg(long, value_enum, default_value_t = AdmissionFailure::Refuse, requires = "admission")]
    pub admission_failure: AdmissionFailure,
    /// Take admission reviews from callers with no token or client certificate (an API
    /// server not configured to authenticate to its webhooks). Only with a loopback --listen.
    #[arg(long, requires = "admission")]
    pub admission_unauthenticated: bool,
    /// The tokens file (`ociup token create`), read again whenever it changes.
    #[arg(long, env = "OCIUP_TOKENS", value_name = "TOKENS")]
    pub tokens: PathBuf,
    /// The catalog: a layout (oci:<dir>) or a registry repository. It must match an
    /// --allow-write pattern.
    #[arg(long, env = "OCIUP_CATALOG", value_name = "REF")]
    pub catalog: String,
    /// Repositories the service may read (bases): registry/repo patterns, `*` within a path
    /// segment, `**` across them, or oci:/absolute/dir. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub allow_read: Vec<String>,
    /// Repositories the service may write (targets, the catalog), and read. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub allow_write: Vec<String>,
    /// Sign build manifests with this private key (PKCS#8 PEM); requesters never see it.
    #[arg(long, env = "OCIUP_SIGNING_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Let a signed nick get an unsigned version when no key is given (as `resolve --unsigned`).
    #[arg(long)]
    pub unsigned: bool,
    /// At most this many regenerations at once; beyond, 503 with Retry-After. 0 answers only
    /// current versions.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_regenerations: usize,
    /// The Retry-After of that 503, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub retry_after: u64,
    /// The largest JSON body taken, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// The largest registration upload (a tar of recipe.json and its files), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_upload: usize,
    /// The longest a request may take, in seconds (504 beyond; a regeneration it started goes
    /// on).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub request_timeout: u64,
    /// The longest a client may take to send a request's head, in seconds (the connection is
    /// closed beyond: a client that trickles it holds nothing for long).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub header_timeout: u64,
    /// A resolve with nothing due may be answered from reads of the nick's catalog tag and
    /// its base's tag that began up to this many milliseconds before the request arrived: a
    /// version recorded elsewhere or a base moved within the window may be answered as the
    /// version before it. A tag asked for is read again in the background before its window
    /// ends (a little more than once per window, whatever the load; what this service writes
    /// is read again at once). 0: only reads that began after the request arrived (concurrent
    /// requests still share them), as `ociup resolve` run locally. Example: --fresh-within
    /// 1000 for a busy service whose registry is the bound.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub fresh_within: u64,
    /// Namespaces runs (Kubernetes Jobs, POST /v1/nicks/NICK/runs) may use: a name, or a
    /// pattern with `*` (team-*). Repeatable; none given: every run is refused.
    #[arg(long, value_name = "PATTERN")]
    pub allow_namespace: Vec<String>,
    /// The longest a run's work may take, in seconds (1 to 86400): resolving and regenerating
    /// its nick (copying the new version's layers between registries), creating its Job held
    /// and releasing it, from the moment the nick's lock is taken. Beyond, the work is stopped,
    /// the held Job deleted and the run `failed`. The deadline is written on the Job
    /// (`ociup.dev/deadline`), so other replicas answer the run by it whatever their own value.
    /// Raise it when regenerations copy large layers over slow links. Example: --work-limit
    /// 3600
    #[arg(long, value_name = "SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64)
              .range(1..=ociup_serve::runs::MAX_WORK_LIMIT.as_secs()))]
    pub work_limit: u64,
    /// The kubeconfig runs are created with (default: KUBECONFIG, else ~/.kube/config, else the
    /// in-cluster service account, as kubectl finds them; none found: runs answer 503
    /// no_cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context runs are created with (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Requests each token may make: N/s (or N/m), in bursts of up to N; beyond, 429
    /// rate_limited with Retry-After. Default: no limit. Example: --rate-limit 20/s
    #[arg(long, value_name = "N/s")]
    pub rate_limit: Option<ociup_serve::ratelimit::Rate>,
    /// The service's own name, recorded as `via` beside the requester in the audit trail and
    /// version records (default: ociup-serve@HOSTNAME).
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// Log lines as text or as JSON objects (one per line), on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// `created` of what is built, seconds since 1970.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECS",
        default_value = "0"
    )]
    pub source_date_epoch: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AdmissionFailure {
    Refuse,
    Stale,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub async fn run(ctx: &Ctx, args: ServeArgs) -> Result<()> {
    // The CLI's -v sets a subscriber first; the service logs at info level otherwise.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false);
    let _ = match args.log_format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let catalog = ociup_registry::absolute_reference(&args.catalog, &cwd)?;
    let absolute = |patterns: &[String]| -> Vec<String> {
        patterns
            .iter()
            .map(|p| match p.strip_prefix("oci:") {
                Some(dir) if !dir.starts_with('/') => format!("oci:{}", cwd.join(dir).display()),
                _ => p.clone(),
            })
            .collect()
    };
    let allow = Allowlist::new(absolute(&args.allow_read), absolute(&args.allow_write))?;
    let https = args.tls_cert.is_some();
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(ociup_serve::TlsFiles {
            cert: cwd.join(cert),
            key: cwd.join(key),
            client_ca: args.client_ca.map(|c| cwd.join(c)),
        }),
        _ => None,
    };
    let cert_roles = cert_roles(&args.cert_role)?;
    if args.admission && args.admission_caller.is_empty() && !args.admission_unauthenticated {
        anyhow::bail!(
            "--admission: name the API server's identity with --admission-caller NAME (its \
             token's name, or its client certificate's CN given a --cert-role), or give \
             --admission-unauthenticated on a loopback --listen"
        );
    }
    let admission = args.admission.then(|| {
        ociup_serve::admission::Admission::new(
            std::time::Duration::from_secs(args.admission_timeout),
            match args.admission_failure {
                AdmissionFailure::Refuse => ociup_serve::admission::Failure::Refuse,
                AdmissionFailure::Stale => ociup_serve::admission::Failure::Stale,
            },
            args.admission_unauthenticated,
            args.admission_caller,
        )
    });
    let config = Config {
        catalog,
        client: ctx.client(&[])?,
        key: args.sign_key,
        unsigned: args.unsigned,
        epoch: ociup_core::time::parse_epoch(&args.source_date_epoch)?,
        cache: super::cache_dir(),
        tokens: args.tokens,
        allow,
        body_limit: args.max_body,
        upload_limit: args.max_upload,
        timeout: std::time::Duration::from_secs(args.request_timeout.max(1)),
        max_regenerations: args.max_regenerations,
        retry_after: args.retry_after,
        header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
        fresh_within: std::time::Duration::from_millis(args.fresh_within),
        runs: ociup_serve::runs::RunsConfig {
            cluster: Some(cluster(args.kubeconfig, args.context).await?),
            allow_namespaces: args.allow_namespace,
            work_limit: std::time::Duration::from_secs(args.work_limit),
        },
        rate_limit: args.rate_limit,
        identity: args.identity.unwrap_or_else(identity),
        tls,
        cert_roles,
        admission,
    };
    let service = Service::new(config).context("starting the service")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !https && !args.insecure_listen {
        anyhow::bail!(
            "--listen {}: without --tls-cert the service speaks plain HTTP, so tokens would \
             cross the network readable; give --tls-cert and --tls-key, listen on a loopback \
             address behind a TLS-terminating proxy, or give --insecure-listen",
            args.listen
        );
    }
    if !addr.ip().is_loopback() && args.admission_unauthenticated {
        anyhow::bail!(
            "--listen {}: --admission-unauthenticated would let anyone who reaches this address \
             have images pinned and regenerated; listen on loopback, or have the API server \
             authenticate to the webhook (a token, or a client certificate with --client-ca and \
             --cert-role) and drop the flag",
            args.listen
        );
    }
    {
        let mut out = std::io::stdout().lock();
        let scheme = if https { "https" } else { "http" };
        writeln!(out, "ociup serve: listening on {scheme}://{addr}")?;
        out.flush()?;
    }
    ociup_serve::serve(listener, service, shutdown_signal()).await?;
    tracing::info!("stopped: every request in flight answered");
    Ok(())
}

/// The cluster runs go to: as `ociup job --apply` finds it. A --kubeconfig or --context that
/// fails is an error at start; no configuration at all leaves the service without runs (said
/// in the log, and to whoever asks for a run).
async fn cluster(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> Result<Result<ociup_kube::Cluster, String>> {
    let given = kubeconfig.is_some() || context.is_some();
    match ociup_kube::Cluster::connect(&ociup_kube::ConnectOptions {
        kubeconfig,
        context,
    })
    .await
    {
        Ok(c) => Ok(Ok(c)),
        Err(e) if given => Err(e).context("the cluster for runs"),
        Err(e) => {
            tracing::warn!("runs are refused: {e}");
            Ok(Err(e.to_string()))
        }
    }
}

/// `ociup-serve@<hostname>`.
fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("ociup-serve@{host}")
}

/// `--cert-role NAME=ROLE` flags as a map; a name given twice is refused.
fn cert_roles(flags: &[String]) -> Result<std::collections::BTreeMap<String, ociup_serve::Role>> {
    let mut roles = std::collections::BTreeMap::new();
    for flag in flags {
        let (name, role) = flag
            .split_once('=')
            .with_context(|| format!("--cert-role {flag}: give NAME=ROLE (ops=admin)"))?;
        ociup_serve::tokens::validate_name(name).map_err(|_| {
            anyhow::anyhow!(
                "--cert-role {flag}: the certificate name {name:?}: give 1 to 64 of letters, \
                 digits, '.', '_', '@', '-' (the CN the certificates carry)"
            )
        })?;
        let role: ociup_serve::Role = role
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--cert-role {flag}: {e}"))?;
        if roles.insert(name.to_owned(), role).is_some() {
            anyhow::bail!("--cert-role {name}: given twice");
        }
    }
    Ok(roles)
}

/// SIGTERM or SIGINT: stop taking connections, finish what is in flight.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}
