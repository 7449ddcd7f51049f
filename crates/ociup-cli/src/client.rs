//! `--server URL`: resolve, status, history, verify, upgrade --all, unregister, edit,
//! register, job --apply and run through an `ociup serve`, printing what they print when run
//! here. `run` runs here, the image read from the service ([`remote_store`]).

mod remote_store;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::args::{
    Cli, Command, EditArgs, HistoryArgs, RegisterArgs, ResolveArgs, StatusArgs, UnreachableArg,
    UnregisterArgs, UpgradeArgs, VerifyArgs,
};
use crate::output;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Go through this ociup service (`ociup serve`) instead of reaching the stores: resolve,
    /// status, history, verify, job --apply (and for an admin token register, edit, upgrade
    /// --all and unregister) ask it, with the token of OCIUP_TOKEN or --token-file; the
    /// registry credentials and signing key are then the service's. `run` runs here, the
    /// nick resolved by the service and its image read from it. Example:
    /// OCIUP_SERVER=http://127.0.0.1:8080 OCIUP_TOKEN=ociup_… ociup resolve trainer
    #[arg(long, global = true, env = "OCIUP_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Read the service's token from this file (default: OCIUP_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Send the token over plain http:// to a host that is not this machine (anyone on the
    /// way can read it). Without it, an http:// --server must be a loopback address.
    #[arg(long, global = true, env = "OCIUP_SERVER_INSECURE")]
    pub insecure_server: bool,
    /// Trust this CA (PEM) for an https:// --server, besides the system's roots.
    #[arg(long, global = true, env = "OCIUP_SERVER_CA", value_name = "PEM")]
    pub server_ca: Option<PathBuf>,
    /// Present this client certificate (PEM) to an https:// --server that verifies them
    /// (`ociup serve --client-ca`); then no token is needed. With --client-key.
    #[arg(long, global = true, env = "OCIUP_CLIENT_CERT", value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, global = true, env = "OCIUP_CLIENT_KEY", value_name = "PEM")]
    pub client_key: Option<PathBuf>,
}

/// Flags (clap ids) that only mean something when the command runs here.
const LOCAL_ONLY: [&str; 8] = [
    "catalog",
    "sign_key",
    "actor",
    "unsigned",
    "source_date_epoch",
    "kubeconfig",
    "context",
    "allow_outside",
];

/// A service and the token to present.
struct Server {
    base: String,
    token: String,
    http: reqwest::Client,
    /// For image reads (`run`): as `http`, and an answer silent for `--timeout` fails.
    blob_http: reqwest::Client,
}

/// Runs the command through the service when `--server` is given and the command goes through
/// it; `None` to run it here.
/// `matches` tells which flags were given on the command line: those that only mean something
/// here (the service has its own catalog, key and epoch, and records the token's name as the
/// actor) are refused rather than ignored.
pub async fn intercept(cli: &Cli, matches: &clap::ArgMatches) -> Result<Option<u8>> {
    match go_through(cli, matches).await {
        // As `ociup run` exits: its own failures (before the run too: no token, a refused
        // flag, a bad nick or URL) said on stderr, 125.
        Err(e) if matches!(cli.command, Command::Run(_)) => {
            crate::cmd::run::finish(Err(e)).map(Some)
        }
        answer => answer,
    }
}

async fn go_through(cli: &Cli, matches: &clap::ArgMatches) -> Result<Option<u8>> {
    let Some(url) = cli
        .global
        .server
        .server
        .as_deref()
        .filter(|u| !u.is_empty())
    else {
        return Ok(None);
    };
    let through = matches!(
        cli.command,
        Command::Resolve(_)
            | Command::Status(_)
            | Command::History(_)
            | Command::Verify(_)
            | Command::Upgrade(_)
            | Command::Unregister(_)
            | Command::Edit(_)
            | Command::Register(_)
            | Command::Run(_)
    ) || matches!(&cli.command, Command::Job(a) if a.apply);
    if let Command::Job(a) = &cli.command
        && !a.apply
    {
        bail!(
            "ociup job without --apply prints a Job with your own credentials, and --server / \
             OCIUP_SERVER ({url}) is set: give --apply to have the service run it, or unset it"
        );
    }
    if let Command::Run(a) = &cli.command
        && a.image.is_some()
    {
        bail!(
            "ociup run --image reads the image with your own credentials, and --server / \
             OCIUP_SERVER ({url}) is set: name a nick to run it through the service, or unset it"
        );
    }
    if !through {
        if matches!(cli.command, Command::Gc(_) | Command::Replay(_)) {
            let name = matches.subcommand_name().unwrap_or("this command");
            bail!(
                "ociup {name} does not go through a service yet, and --server / OCIUP_SERVER \
                 ({url}) is set: unset it to run {name} here, with your own credentials"
            );
        }
        return Ok(None);
    }
    if let Some((name, sub)) = matches.subcommand() {
        for id in sub.ids() {
            let id = id.as_str();
            if LOCAL_ONLY.contains(&id)
                && sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            {
                bail!(
                    "ociup {name} --{}: through a service (--server {url}) the service's own \
                     catalog, signing key, epoch and actor are used; drop the flag, or unset \
                     --server / OCIUP_SERVER to run here",
                    id.replace('_', "-")
                );
            }
        }
    }
    let nick = match &cli.command {
        Command::Resolve(a) => Some(&a.nick),
        Command::History(a) => Some(&a.nick),
        Command::Unregister(a) => Some(&a.nick),
        Command::Job(a) => Some(&a.nick),
        Command::Edit(a) => Some(&a.nick),
        Command::Run(a) => a.nick.as_ref(),
        _ => None,
    };
    if let Some(nick) = nick {
        ociup_core::managed::recipe::validate_nick(nick)
            .with_context(|| format!("the nick {nick:?}"))?;
    }
    let server = Server::new(
        url,
        cli.global.server.token_file.as_deref(),
        cli.global.server.insecure_server,
        &cli.global.server,
        cli.global.timeout,
    )?;
    Ok(Some(match &cli.command {
        Command::Resolve(a) => resolve(&server, a).await?,
        Command::Status(a) => status(&server, a).await.map(|()| 0)?,
        Command::History(a) => history(&server, a).await.map(|()| 0)?,
        Command::Verify(a) => verify(&server, a).await.map(|()| 0)?,
        Command::Upgrade(a) => upgrade(&server, a).await?,
        Command::Unregister(a) => unregister(&server, a).await.map(|()| 0)?,
        Command::Job(a) => job(&server, a).await?,
        Command::Edit(a) => {
            let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(matches);
            edit(&server, a, sub).await.map(|()| 0)?
        }
        Command::Register(a) => {
            let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(matches);
            register(&server, a, sub).await.map(|()| 0)?
        }
        Command::Run(a) => run(&server, a).await?,
        _ => return Ok(None),
    }))
}

impl Server {
    fn new(
        url: &str,
        token_file: Option<&std::path::Path>,
        insecure: bool,
        tls: &ServerArgs,
        silence: std::time::Duration,
    ) -> Result<Server> {
        let parsed =
            reqwest::Url::parse(url).with_context(|| format!("--server {url}: not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--server {url}: give an http:// or https:// URL");
        }
        if parsed.scheme() == "http" && !insecure && !loopback(&parsed) {
            bail!(
                "--server {url}: plain http:// would send the token readable to anyone on the \
                 way; use https://, a loopback address, or --insecure-server \
                 (OCIUP_SERVER_INSECURE=true) to send it anyway"
            );
        }
        if parsed.scheme() == "http" && (tls.client_cert.is_some() || tls.server_ca.is_some()) {
            bail!(
                "--server {url}: --client-cert and --server-ca only mean something over https:// \
                 (plain http:// would send no certificate); use the service's https:// address"
            );
        }
        let token = match token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the token from {}", f.display()))?,
            None if tls.client_cert.is_some() => std::env::var("OCIUP_TOKEN").unwrap_or_default(),
            None => std::env::var("OCIUP_TOKEN")
                .context("--server needs a token: OCIUP_TOKEN or --token-file")?,
        };
        let token = token.trim().to_owned();
        if token.is_empty() && tls.client_cert.is_none() {
            bail!("the service token is empty");
        }
        // The API never redirects: one followed could carry the token elsewhere (to plain
        // http:// on the same host and port, say).
        let builder = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(silence)
        };
        Ok(Server {
            base: url.trim_end_matches('/').to_owned(),
            token,
            http: tls_options(builder(), tls)?
                .build()
                .context("making the HTTP client")?,
            blob_http: tls_options(builder().read_timeout(silence), tls)?
                .build()
                .context("making the HTTP client")?,
        })
    }

    /// Sends a request; the answer's JSON, or the service's error as this command's error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&b)?);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching the service at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the service answered {status} without JSON at {url}"))?;
        if !status.is_success() {
            let message = value["message"].as_str().unwrap_or("(no message)");
            let code = value["code"].as_str().unwrap_or("?");
            bail!("{message} (the service: {code}, HTTP {})", status.as_u16());
        }
        Ok(value)
    }
}

/// --server-ca and --client-cert/--client-key on the HTTP client.
fn tls_options(
    mut builder: reqwest::ClientBuilder,
    tls: &ServerArgs,
) -> Result<reqwest::ClientBuilder> {
    if let Some(ca) = &tls.server_ca {
        let pem = std::fs::read(ca).with_context(|| format!("--server-ca {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--server-ca {}: not PEM certificates", ca.display()))?;
        if certs.is_empty() {
            bail!("--server-ca {}: no PEM certificate in it", ca.display());
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem =
                std::fs::read(cert).with_context(|| format!("--client-cert {}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key).with_context(|| format!("--client-key {}", key.display()))?,
            );
            let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "--client-cert {} with --client-key {}",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => bail!("--client-cert and --client-key go together"),
    }
    Ok(builder)
}

/// Whether the URL's host is this machine (a loopback address, or `localhost`).
fn loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let host = host.to_ascii_lowercase();
            host == "localhost" || host.ends_with(".localhost")
        }
    }
}

/// Path segments are nicks, checked by the service; any other text is escaped.
fn segment(s: &str) -> String {
    use std::fmt::Write as _;
    s.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b',') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// The elements of a JSON array (none when absent: single-platform answers leave it out).
fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<&str> {
    list(v).iter().filter_map(Value::as_str).collect()
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

async fn resolve(s: &Server, args: &ResolveArgs) -> Result<u8> {
    let r = s
        .call(
            reqwest::Method::POST,
            &format!("/v1/nicks/{}/resolve", segment(&args.nick)),
            Some(json!({
                "check": args.check,
                "offline": args.offline,
                "if_unreachable": match args.if_unreachable {
                    UnreachableArg::Fail => "fail",
                    UnreachableArg::Stale => "stale",
                },
            })),
        )
        .await?;
    // As `ociup resolve` prints locally (cmd/managed.rs).
    let nick = text(&r, "nick");
    let flag = |k: &str| r[k].as_bool().unwrap_or(false);
    if flag("stale") {
        eprintln!(
            "ociup: the base of {nick} cannot be reached; answering the last good version (stale)"
        );
        if args.check {
            bail!("cannot tell whether an upgrade is due: the base of {nick} cannot be reached");
        }
    }
    let status = match (args.check, flag("upgrade_due")) {
        (false, _) => 0,
        (true, true) => 0,
        (true, false) => 3,
    };
    let dropped = strings(&r["dropped_platforms"]);
    if !dropped.is_empty() {
        eprintln!(
            "ociup: the base of {nick} no longer has {}: version {} is made without",
            dropped.join(", "),
            r["version"]
        );
    }
    if args.json {
        output::json(&r)?;
        return Ok(status);
    }
    if args.check {
        output::line(if flag("upgrade_due") {
            "upgrade due"
        } else {
            "current"
        })?;
        return Ok(status);
    }
    if flag("upgraded") {
        eprintln!(
            "ociup: {nick} upgraded to version {} (base {})",
            r["version"],
            text(&r, "base_digest")
        );
    }
    output::line(text(&r, "reference"))?;
    Ok(0)
}

async fn status(s: &Server, args: &StatusArgs) -> Result<()> {
    let query = if args.nicks.is_empty() {
        String::new()
    } else {
        format!("?nicks={}", segment(&args.nicks.join(",")))
    };
    let all = s
        .call(reqwest::Method::GET, &format!("/v1/status{query}"), None)
        .await?;
    if args.json {
        return output::json(&all);
    }
    for st in all.as_array().map(Vec::as_slice).unwrap_or_default() {
        output::line(format!(
            "{:<20} {:<8} v{:<4} {:<8} {}",
            text(st, "nick"),
            text(st, "status"),
            st["version"].as_u64().map_or("-".into(), |v| v.to_string()),
            if st["signed"].as_bool().unwrap_or(false) {
                "signed"
            } else {
                "unsigned"
            },
            text(st, "base")
        ))?;
        for p in list(&st["platforms"]) {
            output::line(format!(
                "  {:<18} {}  base {}",
                text(p, "platform"),
                text(p, "digest"),
                text(p, "base_digest")
            ))?;
        }
    }
    Ok(())
}

async fn history(s: &Server, args: &HistoryArgs) -> Result<()> {
    let versions = s
        .call(
            reqwest::Method::GET,
            &format!("/v1/nicks/{}/history", segment(&args.nick)),
            None,
        )
        .await?;
    if args.json {
        return output::json(&versions);
    }
    for v in versions.as_array().map(Vec::as_slice).unwrap_or_default() {
        output::line(format!(
            "v{:<4} {}  {}  base {}  {} by {}",
            v["number"].as_u64().unwrap_or_default(),
            text(v, "digest"),
            text(v, "reason"),
            text(v, "base_digest"),
            text(v, "time"),
            text(v, "actor")
        ))?;
        let number = v["number"].as_u64().unwrap_or_default();
        for p in list(&v["platforms"]) {
            let built_in = p["built_in"].as_u64().unwrap_or(number);
            output::line(format!(
                "      {:<16} {}  base {}{}",
                text(p, "platform"),
                text(p, "digest"),
                text(p, "base_digest"),
                if built_in == number {
                    String::new()
                } else {
                    format!("  (kept from v{built_in})")
                }
            ))?;
        }
        let dropped = strings(&v["dropped_platforms"]);
        if !dropped.is_empty() {
            output::line(format!(
                "      dropped (the base no longer has them): {}",
                dropped.join(", ")
            ))?;
        }
    }
    Ok(())
}

async fn verify(s: &Server, args: &VerifyArgs) -> Result<()> {
    if ociup_core::managed::recipe::validate_nick(&args.target).is_err() {
        bail!(
            "verifying {}: through a service, verify names a nick (an image reference is \
             verified here, without --server)",
            args.target
        );
    }
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let checked = s
        .call(
            reqwest::Method::POST,
            &format!("/v1/nicks/{}/verify", segment(&args.target)),
            Some(json!({"public_key": pem})),
        )
        .await
        .with_context(|| format!("verifying {}", args.target))?;
    if args.json {
        return output::json(&checked);
    }
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    output::line(format!(
        "verified {} ({} version {}): signature good, {} and {} as listed",
        text(&checked, "digest"),
        text(&checked, "nick"),
        checked["version"],
        count(
            checked["layers"].as_u64().unwrap_or_default(),
            "own layer",
            "own layers"
        ),
        count(
            checked["files"].as_u64().unwrap_or_default(),
            "entry",
            "entries"
        ),
    ))?;
    for p in list(&checked["platforms"]) {
        output::line(format!(
            "  {:<16} {}  verified (version {})",
            text(p, "platform"),
            text(p, "digest"),
            p["version"]
        ))?;
    }
    Ok(())
}

/// `upgrade --all` (admin): every nick resolved by the service.
async fn upgrade(s: &Server, args: &UpgradeArgs) -> Result<u8> {
    let results = s
        .call(reqwest::Method::POST, "/v1/upgrade-all", None)
        .await?;
    let mut failed = false;
    for r in results.as_array().map(Vec::as_slice).unwrap_or_default() {
        let nick = text(r, "nick");
        if let Some(e) = r["error"].as_str() {
            failed = true;
            if !args.json {
                eprintln!("ociup: {nick}: {e}");
            }
            continue;
        }
        if !args.json {
            let what = if r["upgraded"].as_bool().unwrap_or(false) {
                format!("upgraded to v{}", r["version"])
            } else {
                format!("current (v{})", r["version"])
            };
            output::line(format!("{nick:<20} {what:<18} {}", text(r, "reference")))?;
        }
    }
    if args.json {
        output::json(&results)?;
    }
    Ok(u8::from(failed))
}

/// `unregister NICK` (admin).
async fn unregister(s: &Server, args: &UnregisterArgs) -> Result<()> {
    s.call(
        reqwest::Method::DELETE,
        &format!("/v1/nicks/{}", segment(&args.nick)),
        None,
    )
    .await
    .with_context(|| format!("unregistering {}", args.nick))?;
    output::line(format!(
        "unregistered {} (its images, history and audit trail stay)",
        args.nick
    ))?;
    Ok(())
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

/// `KEY=VALUE` pairs as a JSON object, each key once.
fn map(flag: &str, values: &[String]) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in pairs(flag, values)? {
        if out.insert(k.clone(), Value::String(v)).is_some() {
            bail!("--{flag} {k}: given twice");
        }
    }
    Ok(Value::Object(out))
}

/// A condition of a Job as `ociup job --wait` prints it: `Type=Status (Reason): message`.
fn condition_line(c: &Value) -> String {
    let mut line = format!("{}={}", text(c, "type"), text(c, "status"));
    if let Some(r) = c["reason"].as_str() {
        line.push_str(&format!(" ({r})"));
    }
    if let Some(m) = c["message"].as_str() {
        line.push_str(&format!(": {m}"));
    }
    line
}

/// How often in a row the service may fail to read a run's Job before `--wait` gives up.
const JOB_READS: u32 = 6;

/// How often in a row the service itself may go unreached (the connection refused or cut, no
/// answer: a replica restarting behind a balancer, say) while a run is followed, a second
/// apart, before `job --apply` gives up.
const SERVICE_TRIES: u32 = 5;

/// How long a followed run may be answered `run_unknown` (not on the replica that answered, no
/// Job of it yet: it may be pending on another one) with no other answer in between before
/// `job --apply` gives up.
const UNKNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// One read of a run being followed.
enum Read {
    /// The run.
    Run(Value),
    /// 404 `run_unknown`: the replica that answered does not hold it and found no Job of it
    /// (yet); the message says so.
    Unknown(String),
    /// The service could not be reached, or its answer read.
    Unreached(anyhow::Error),
}

impl Server {
    /// `GET path` for a run being followed: the run, `run_unknown`, the service unreached, or
    /// any other failure as this command's error (as [`Server::call`] says it).
    async fn read_run(&self, path: &str) -> Result<Read> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Read::Unreached(
                    anyhow::Error::new(e).context(format!("reaching the service at {}", self.base)),
                ));
            }
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Ok(Read::Unreached(
                    anyhow::Error::new(e).context(format!("reading the answer of {url}")),
                ));
            }
        };
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the service answered {status} without JSON at {url}"))?;
        if status.is_success() {
            return Ok(Read::Run(value));
        }
        let message = value["message"].as_str().unwrap_or("(no message)");
        let code = value["code"].as_str().unwrap_or("?");
        if status == reqwest::StatusCode::NOT_FOUND && code == "run_unknown" {
            return Ok(Read::Unknown(message.to_owned()));
        }
        bail!("{message} (the service: {code}, HTTP {})", status.as_u16());
    }

    /// The run at `path` read again: a service unreached is asked again a second later, up to
    /// [`SERVICE_TRIES`] times in a row; `run_unknown` (another replica answered, before the
    /// run's Job exists) asked again every `pause` until [`UNKNOWN_FOR`] has passed since the
    /// first such answer with none other in between (`unknown_since` keeps it across calls).
    async fn follow_run(
        &self,
        path: &str,
        pause: std::time::Duration,
        unknown_since: &mut Option<std::time::Instant>,
    ) -> Result<Value> {
        let mut unreached = 0;
        loop {
            match self.read_run(path).await? {
                Read::Run(v) => {
                    *unknown_since = None;
                    return Ok(v);
                }
                Read::Unknown(message) => {
                    unreached = 0;
                    let since = *unknown_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= UNKNOWN_FOR {
                        bail!(
                            "{message} (the service: run_unknown, HTTP 404, for {}s)",
                            UNKNOWN_FOR.as_secs()
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
                Read::Unreached(e) => {
                    unreached += 1;
                    if unreached >= SERVICE_TRIES {
                        return Err(e.context(format!("{unreached} times in a row")));
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Why a run that ended other than `submitted` (`unreleased`, `failed`) ran nothing, with the
/// Job it left in the cluster, if any.
fn not_submitted(nick: &str, id: &str, run: &Value) -> String {
    let error = run["error"].as_str().unwrap_or("the run failed");
    match (run["state"].as_str(), run["job_left"].as_str()) {
        (Some("unreleased"), job) => format!(
            "run {id} of {nick}: its Job {} is left in the cluster, not released (most likely \
             suspended): {error}",
            job.unwrap_or("(unnamed)")
        ),
        (_, Some(job)) => format!(
            "{error} (run {id}); the Job {job} may be left in the cluster: check with \
             kubectl get job -n {}",
            job.replacen('/', " ", 1)
        ),
        _ => format!("{error} (run {id})"),
    }
}

/// `job NICK --apply`: a run created by the service (`POST /v1/nicks/NICK/runs`), followed
/// (`GET /v1/runs/ID`) until its Job is submitted (and with --wait until it finishes), printed
/// as `ociup job --apply` prints locally.
async fn job(s: &Server, args: &crate::cmd::job::JobArgs) -> Result<u8> {
    let nick = &args.nick;
    let env: Vec<Value> = pairs("env", &args.env)?
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let body = json!({
        "namespace": args.namespace,
        "name": args.name,
        "args": args.arg.iter().chain(&args.args).collect::<Vec<_>>(),
        "env": env,
        "service_account": args.service_account,
        "image_pull_secrets": args.image_pull_secret,
        "backoff_limit": args.backoff_limit,
        "ttl_seconds_after_finished": args.ttl_seconds_after_finished,
        "labels": map("label", &args.label)?,
        "requests": map("request", &args.request)?,
        "limits": map("limit", &args.limit)?,
        "offline": args.offline,
        "if_unreachable": match args.if_unreachable {
            UnreachableArg::Fail => "fail",
            UnreachableArg::Stale => "stale",
        },
    });
    let created = s
        .call(
            reqwest::Method::POST,
            &format!("/v1/nicks/{}/runs", segment(nick)),
            Some(body),
        )
        .await
        .with_context(|| format!("running {nick}"))?;
    let id = text(&created, "id");
    let path = format!("/v1/runs/{}", segment(&id));
    let mut run = created;
    // Behind a balancer another replica may answer: it reads the run from its Job, or says
    // `run_unknown` before the Job exists (asked again, a bounded while).
    let mut unknown_since = None;
    while run["state"] == "pending" {
        let pause = std::time::Duration::from_millis(200);
        tokio::time::sleep(pause).await;
        run = s
            .follow_run(&path, pause, &mut unknown_since)
            .await
            .with_context(|| format!("following run {id} of {nick}"))?;
    }
    if run["state"] != "submitted" {
        bail!("{}", not_submitted(nick, &id, &run));
    }
    let flag = |k: &str| run[k].as_bool().unwrap_or(false);
    let (upgraded, held, stale) = (flag("upgraded"), flag("held"), flag("stale"));
    // As `ociup job --apply` prints locally (cmd/job.rs).
    if stale {
        eprintln!(
            "ociup: the base of {nick} cannot be reached; running the last good version (stale)"
        );
    }
    if upgraded {
        eprintln!(
            "ociup: {nick} upgraded to version {} (base {})",
            run["version"],
            text(&run, "base_digest")
        );
    }
    let name = text(&run, "name");
    let namespace = text(&run, "namespace");
    let job = format!("job.batch/{name}");
    if held && !upgraded {
        eprintln!(
            "ociup: {job} was created suspended in {namespace} while the record of {nick} \
             version {} was written on the base's new digest (the image itself did not \
             change), then released",
            run["version"]
        );
    } else if held {
        eprintln!(
            "ociup: {job} was created suspended in {namespace} while {nick} version {} was \
             written, then released",
            run["version"]
        );
    }
    if !args.json {
        output::line(format!("{job} created ({})", text(&run, "image")))?;
    }
    let finished = if args.wait {
        let started = std::time::Instant::now();
        let mut unread = 0;
        loop {
            if let Some(ok) = run["job"]["finished"].as_bool() {
                break Some((ok, run["job"]["conditions"].clone()));
            }
            // A Job the service could not read (the API server slow, say): asked again, up to
            // JOB_READS times in a row, as `ociup job --wait` does locally.
            if let Some(e) = run["job_error"].as_str() {
                unread += 1;
                if unread >= JOB_READS {
                    bail!(
                        "following Job {namespace}/{name}: the service could not read it \
                         {unread} times in a row, the last time: {e}"
                    );
                }
            } else {
                unread = 0;
            }
            if let Some(limit) = args.wait_timeout
                && started.elapsed().as_secs() >= limit
            {
                bail!("Job {namespace}/{name} had not finished after {limit}s");
            }
            let pause = std::time::Duration::from_secs(1);
            tokio::time::sleep(pause).await;
            run = s
                .follow_run(&path, pause, &mut unknown_since)
                .await
                .with_context(|| format!("following Job {namespace}/{name}"))?;
        }
    } else {
        None
    };
    if args.json {
        output::json(&json!({
            "namespace": namespace,
            "name": name,
            "uid": run["uid"],
            "nick": run["nick"],
            "version": run["version"],
            "image": run["image"],
            "digest": run["digest"],
            "base_digest": run["base_digest"],
            "upgraded": upgraded,
            "held": held,
            "stale": stale,
            "succeeded": finished.as_ref().map(|(ok, _)| *ok),
            "conditions": finished.as_ref().map(|(_, c)| c),
        }))?;
    } else if let Some((ok, conditions)) = &finished {
        for c in list(conditions) {
            output::line(format!("  {}", condition_line(c)))?;
        }
        output::line(format!(
            "{job} {}",
            if *ok { "completed" } else { "failed" }
        ))?;
    }
    Ok(match finished {
        Some((false, _)) => 4,
        _ => 0,
    })
}

impl Server {
    /// Sends `body` as `content_type` (an upload); the answer as [`Server::call`] reads it.
    async fn upload(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reaching the service at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the service answered {status} without JSON at {url}"))?;
        if !status.is_success() {
            let message = value["message"].as_str().unwrap_or("(no message)");
            let code = value["code"].as_str().unwrap_or("?");
            bail!("{message} (the service: {code}, HTTP {})", status.as_u16());
        }
        Ok(value)
    }
}

/// A tar of `files` (names relative to `root`: files, or directories and all under them) beside
/// `extra` (name, bytes) entries, as the service's uploads take it: regular files and
/// directories only, named as `files` names them.
fn upload_tar(root: &Path, extra: &[(&str, &[u8])], files: &[String]) -> Result<Vec<u8>> {
    use std::path::Component;
    let mut b = tar::Builder::new(Vec::new());
    let header = |size: u64, mode: u32, kind: tar::EntryType| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_entry_type(kind);
        h
    };
    for (name, data) in extra {
        let mut h = header(data.len() as u64, 0o644, tar::EntryType::Regular);
        b.append_data(&mut h, name, *data)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    // Files with more than one name, by (device, inode): a layer built here would link them
    // (a hard link entry), an upload cannot say so.
    let mut linked = std::collections::HashMap::new();
    let mut todo: Vec<std::path::PathBuf> = Vec::new();
    for f in files {
        let p = Path::new(f);
        if !p
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            bail!(
                "{f}: through a service, the files a recipe reads are uploaded, so they must \
                 be named relative to {}, without `..`",
                if root == Path::new(".") {
                    "the working directory".to_owned()
                } else {
                    root.display().to_string()
                }
            );
        }
        todo.push(p.components().collect());
    }
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        let on_disk = if root == Path::new(".") {
            p.clone()
        } else {
            root.join(&p)
        };
        let meta = std::fs::symlink_metadata(&on_disk)
            .with_context(|| format!("reading {} to upload it", on_disk.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            let mut h = header(0, mode, tar::EntryType::Directory);
            b.append_data(&mut h, &p, std::io::empty())?;
            let entries = std::fs::read_dir(&on_disk)
                .with_context(|| format!("reading {}", on_disk.display()))?;
            for e in entries {
                todo.push(p.join(e?.file_name()));
            }
        } else if meta.is_file() {
            use std::os::unix::fs::MetadataExt;
            if meta.nlink() > 1
                && let Some(other) = linked.insert((meta.dev(), meta.ino()), on_disk.clone())
            {
                bail!(
                    "{} and {} are the same file (hard links): a service cannot be sent hard \
                     links, and the layer would differ from the one built here; copy one of \
                     them, or register without --server",
                    other.display(),
                    on_disk.display()
                );
            }
            let mut h = header(meta.len(), mode, tar::EntryType::Regular);
            let f = std::fs::File::open(&on_disk)
                .with_context(|| format!("reading {}", on_disk.display()))?;
            b.append_data(&mut h, &p, f)?;
        } else {
            bail!(
                "{}: only regular files and directories can be uploaded to a service (not \
                 symlinks or devices)",
                on_disk.display()
            );
        }
    }
    Ok(b.into_inner()?)
}

/// The files `steps` read (`add`, `replace`).
fn step_sources(steps: &[ociup_core::managed::recipe::Step]) -> Vec<String> {
    use ociup_core::managed::recipe::Step;
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Add { src, .. } | Step::Replace { src, .. } => Some(src.clone()),
            _ => None,
        })
        .collect()
}

/// `edit NICK STEPS` (admin): the steps, and the files the recipe's steps read (those stored
/// and those given, from the working directory), uploaded to the service.
async fn edit(s: &Server, args: &EditArgs, matches: &clap::ArgMatches) -> Result<()> {
    let nick = &args.nick;
    let steps = crate::cmd::managed::ordered_steps(matches)?;
    if steps.is_empty() {
        bail!("no steps given: say what to add, remove or set");
    }
    let stored = s
        .call(
            reqwest::Method::GET,
            &format!("/v1/nicks/{}/recipe", segment(nick)),
            None,
        )
        .await
        .with_context(|| format!("editing {nick}"))?;
    let stored: Vec<ociup_core::managed::recipe::Step> =
        serde_json::from_value(stored["steps"].clone())
            .with_context(|| format!("the recipe of {nick} the service answered"))?;
    let mut sources = step_sources(&stored);
    sources.extend(step_sources(&steps));
    let path = format!("/v1/nicks/{}/edit", segment(nick));
    let body = json!({ "steps": steps });
    let record = if sources.is_empty() {
        s.call(reqwest::Method::POST, &path, Some(body)).await
    } else {
        let tar = upload_tar(
            Path::new("."),
            &[("steps.json", &serde_json::to_vec(&body)?)],
            &sources,
        )?;
        s.upload(reqwest::Method::POST, &path, "application/x-tar", tar)
            .await
    }
    .with_context(|| format!("editing {nick}"))?;
    if args.json {
        return output::json(&record);
    }
    output::line(format!(
        "{} version {} ({}): {}",
        text(&record, "nick"),
        record["number"],
        text(&record, "reason"),
        text(&record, "image")
    ))?;
    Ok(())
}

/// `register` (admin): the recipe made and checked here as `ociup register` makes it (its files
/// read before anything is sent), uploaded with the files it names (`POST /v1/register`), the
/// version record printed as `register` prints it.
async fn register(s: &Server, args: &RegisterArgs, matches: &clap::ArgMatches) -> Result<()> {
    if args.platform.iter().any(|p| p != "all") {
        bail!(
            "ociup register --platform {}: through a service (--server) a nick on a \
             multi-platform base has every platform of it; drop --platform, or unset --server / \
             OCIUP_SERVER to register here",
            args.platform.join(" --platform ")
        );
    }
    let (recipe, dir, _) = crate::cmd::managed::registration_recipe(args, matches)?;
    let nick = recipe.nick.clone();
    // A relative layout would be made absolute against this machine's folder, and the service
    // would read and write that path on its own disk.
    let given = match &args.recipe {
        Some(file) => {
            let r = ociup_core::managed::recipe::Recipe::parse(
                &std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
                &file.display().to_string(),
            )?;
            [r.base, r.target]
        }
        None => [
            args.base.clone().unwrap_or_default(),
            args.to.clone().unwrap_or_default(),
        ],
    };
    for r in &given {
        if r.strip_prefix("oci:").is_some_and(|p| !p.starts_with('/')) {
            bail!(
                "registering {nick}: {r} is a layout relative to this machine's folder; \
                 through a service (--server) it would name a folder on the service's disk: \
                 give its absolute path there (oci:/...) or a registry repository"
            );
        }
    }
    let tar = upload_tar(
        &dir,
        &[("recipe.json", &serde_json::to_vec(&recipe)?)],
        &step_sources(&recipe.steps),
    )
    .with_context(|| format!("registering {nick}"))?;
    let path = if args.replace_recipe {
        "/v1/register?replace_recipe=true"
    } else {
        "/v1/register"
    };
    let record = s
        .upload(reqwest::Method::POST, path, "application/x-tar", tar)
        .await
        .with_context(|| format!("registering {nick}"))?;
    // As `ociup register` prints locally (cmd/managed.rs).
    if args.json {
        return output::json(&record);
    }
    output::line(format!(
        "registered {} version {}\n  {}\n  base {} ({})",
        text(&record, "nick"),
        record["number"],
        text(&record, "image"),
        text(&record, "base"),
        text(&record, "base_digest")
    ))?;
    for p in list(&record["platforms"]) {
        output::line(format!(
            "  {:<16} {}  base {}",
            text(p, "platform"),
            text(p, "digest"),
            text(p, "base_digest")
        ))?;
    }
    Ok(())
}

/// `run NICK`: the nick resolved by the service (upgraded there when its base moved), its image
/// read from the service ([`remote_store::RemoteStore`]) and run here as `ociup run` runs it.
/// With --dry-run nothing is written: the service is asked whether an upgrade is due, and one
/// that is refuses the dry run (the service plans only what it writes).
async fn run(s: &Server, args: &crate::cmd::run::RunArgs) -> Result<u8> {
    let prepared = crate::cmd::run::prepare(args)?;
    let nick = args.nick.as_deref().unwrap_or_default();
    let r = s
        .call(
            reqwest::Method::POST,
            &format!("/v1/nicks/{}/resolve", segment(nick)),
            Some(json!({
                "check": args.dry_run && !args.offline,
                "offline": args.offline,
                "if_unreachable": match args.if_unreachable {
                    UnreachableArg::Fail => "fail",
                    UnreachableArg::Stale => "stale",
                },
            })),
        )
        .await
        .with_context(|| format!("resolving {nick}"))?;
    let flag = |k: &str| r[k].as_bool().unwrap_or(false);
    // As `ociup run` says locally (cmd/run.rs).
    if flag("stale") {
        eprintln!(
            "ociup: the base of {nick} cannot be reached; running the last good version \
             (stale)"
        );
    }
    if args.dry_run && flag("upgrade_due") {
        bail!(
            "a dry run of {nick} through a service: an upgrade is due, and the service makes \
             an upgrade only by writing it; run `ociup resolve {nick}` (it upgrades), then the \
             dry run again"
        );
    }
    if flag("upgraded") {
        eprintln!(
            "ociup: {nick} upgraded to version {} (base {})",
            r["version"],
            text(&r, "base_digest")
        );
    }
    let reference = text(&r, "reference");
    let digest: ociup_core::Digest = text(&r, "digest")
        .parse()
        .with_context(|| format!("the digest the service answered for {nick}"))?;
    let store = remote_store::RemoteStore::new(s, nick, &reference);
    crate::cmd::run::run_image(
        args,
        prepared,
        &reference,
        &store,
        &ociup_core::store::ManifestRef::Digest(digest),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redirect from the service is not followed: the token goes nowhere else.
    #[tokio::test]
    async fn the_service_client_follows_no_redirect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = format!("http://{}/v1/status", elsewhere.local_addr().unwrap());
        let url = format!("http://{}", service.local_addr().unwrap());
        let answering = tokio::spawn(async move {
            let (mut c, _) = service.accept().await.unwrap();
            let mut buf = [0; 4096];
            let _ = c.read(&mut buf).await.unwrap();
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
            );
            c.write_all(answer.as_bytes()).await.unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "ociup_secret").unwrap();
        let args = ServerArgs {
            server: None,
            token_file: None,
            insecure_server: false,
            server_ca: None,
            client_cert: None,
            client_key: None,
        };
        let s = Server::new(
            &url,
            Some(&token),
            false,
            &args,
            std::time::Duration::from_secs(5),
        )
        .unwrap();
        // Followed, the request would wait for `elsewhere`, which never answers.
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.call(reqwest::Method::GET, "/v1/status", None),
        )
        .await
        .expect("answered without following the redirect")
        .unwrap_err();
        assert!(format!("{err:#}").contains("307"), "{err:#}");
        answering.await.unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), elsewhere.accept())
                .await
                .is_err(),
            "the redirect was followed"
        );
    }

    #[test]
    fn a_run_that_left_a_job_names_it() {
        let unreleased = json!({"state": "unreleased", "job_left": "ml/t-v3-x", "version": 3,
            "error": "running t: t version 3 is recorded, but releasing its Job ml/t-v3-x failed"});
        assert_eq!(
            not_submitted("t", "run-1", &unreleased),
            "run run-1 of t: its Job ml/t-v3-x is left in the cluster, not released (most likely \
             suspended): running t: t version 3 is recorded, but releasing its Job ml/t-v3-x \
             failed"
        );
        let left = json!({"state": "failed", "job_left": "ml/t-v3-x", "error": "gone wrong"});
        assert_eq!(
            not_submitted("t", "run-1", &left),
            "gone wrong (run run-1); the Job ml/t-v3-x may be left in the cluster: check with \
             kubectl get job -n ml t-v3-x"
        );
        let clean = json!({"state": "failed", "job_left": null, "error": "gone wrong"});
        assert_eq!(
            not_submitted("t", "run-1", &clean),
            "gone wrong (run run-1)"
        );
    }
}
