//! One module per command; each parses its arguments into library calls.

mod append;
mod completions;
mod copy;
mod index;
mod inspect;
pub mod job;
mod layer;
mod login;
pub(crate) mod managed;
pub mod prune;
mod rebase;
pub mod run;
pub mod serve;
pub mod token;
pub mod unpack;

use std::io::Read;

use anyhow::{Context, Result, bail};
use ociup_core::layer::{LayerOptions, Owner};
use ociup_core::media_type::Compression;
use ociup_core::reference::PlatformSpec;
use ociup_core::store::ManifestRef;
use ociup_registry::{AnyStore, Client, ClientOptions, Credentials, StoreRef};

use crate::args::{Cli, Command, CompressionArg, GlobalArgs, LayerCommand, LayerOpts};

/// Runs a command; the result is the exit status. `matches` gives the order of repeated flags.
pub async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<u8> {
    if let Some(status) = crate::client::intercept(&cli, matches).await? {
        return Ok(status);
    }
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Register(args) => {
            let sub = matches.subcommand_matches("register").unwrap_or(matches);
            managed::register(&ctx, *args, sub).await.map(|()| 0)
        }
        Command::Resolve(args) => managed::resolve(&ctx, args).await,
        Command::Status(args) => managed::status(&ctx, args).await.map(|()| 0),
        Command::History(args) => managed::history(&ctx, args).await.map(|()| 0),
        Command::Keygen(args) => managed::keygen(args).map(|()| 0),
        Command::Verify(args) => managed::verify(&ctx, args).await.map(|()| 0),
        Command::Replay(args) => managed::replay(&ctx, args).await,
        Command::Edit(args) => {
            let sub = matches.subcommand_matches("edit").unwrap_or(matches);
            managed::edit(&ctx, *args, sub).await.map(|()| 0)
        }
        Command::Upgrade(args) => managed::upgrade(&ctx, args).await,
        Command::Unregister(args) => managed::unregister(&ctx, args).await.map(|()| 0),
        Command::Gc(args) => managed::gc(&ctx, args).await.map(|()| 0),
        Command::Layer(LayerCommand::Create(args)) => layer::create(args).map(|()| 0),
        Command::Append(args) => {
            let sub = matches.subcommand_matches("append").unwrap_or(matches);
            append::run(&ctx, *args, sub).await.map(|()| 0)
        }
        Command::Index(c) => index::run(&ctx, c).await.map(|()| 0),
        Command::Inspect(args) => inspect::run(&ctx, args).await.map(|()| 0),
        Command::Unpack(args) => unpack::run(&ctx, args).await.map(|()| 0),
        Command::Run(args) => run::run(&ctx, *args).await,
        Command::Prune(args) => prune::run(args).map(|()| 0),
        Command::Job(args) => job::run(&ctx, *args).await,
        Command::Copy(args) => copy::run(&ctx, args).await.map(|()| 0),
        Command::Rebase(args) => rebase::run(&ctx, args).await,
        Command::Completions(args) => completions::completions(&args).map(|()| 0),
        Command::Man(args) => completions::man(&args).map(|()| 0),
        Command::Login(args) => login::login(&ctx, &args).await.map(|()| 0),
        Command::Logout(args) => login::logout(&args).map(|()| 0),
        Command::Serve(args) => serve::run(&ctx, *args).await.map(|()| 0),
        Command::Token(c) => token::run(c).map(|()| 0),
    }
}

/// What every command that reaches a store needs: the parsed global options.
pub struct Ctx {
    insecure: Vec<String>,
    ca_file: Option<std::path::PathBuf>,
    check_blobs_first: bool,
    login: Option<(String, String)>,
    /// Whether the password of `login` came from standard input.
    password_from_stdin: bool,
    timeout: std::time::Duration,
}

impl Ctx {
    fn new(g: &GlobalArgs) -> Result<Self> {
        let login = match (&g.username, g.password_stdin) {
            (Some(u), true) => {
                let mut p = String::new();
                std::io::stdin()
                    .read_to_string(&mut p)
                    .context("reading the password from standard input")?;
                Some((u.clone(), p.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (Some(u), false) => match std::env::var("OCIUP_PASSWORD") {
                Ok(p) => Some((u.clone(), p)),
                Err(_) => bail!("--username needs --password-stdin or OCIUP_PASSWORD"),
            },
            (None, _) => None,
        };
        Ok(Ctx {
            insecure: g.insecure.clone(),
            ca_file: g.ca_file.clone(),
            check_blobs_first: g.check_blobs_first,
            login,
            password_from_stdin: g.password_stdin,
            timeout: g.timeout,
        })
    }

    /// A registry client. The login given on the command line goes only to the one registry
    /// named in `refs` (see `login::with_command_line_login`).
    fn client(&self, refs: &[&StoreRef]) -> Result<Client> {
        let credentials =
            login::with_command_line_login(Credentials::from_env(), self.login.as_ref(), refs)?;
        Ok(Client::new(ClientOptions {
            credentials,
            insecure: self.insecure.clone(),
            ca_file: self.ca_file.clone(),
            check_blobs_first: self.check_blobs_first,
            idle_timeout: self.timeout,
            // Which registries check blobs and which blobs repositories hold, kept for a day.
            state_dir: run::data_dir().ok(),
            ..ClientOptions::default()
        })?)
    }
}

fn parse_ref(input: &str) -> Result<StoreRef> {
    // A layout directory named without `oci:` reads as a Docker Hub image (or no image at all):
    // say what to write instead.
    if let Some(dir) = unprefixed_layout(input) {
        let registry = if StoreRef::parse(input).is_ok() {
            format!(", or a registry image docker://{input}")
        } else {
            String::new()
        };
        bail!("{input}: {dir} is an OCI layout directory: name it oci:{input}{registry}");
    }
    StoreRef::parse(input).with_context(|| format!("parsing reference {input:?}"))
}

/// The directory an unprefixed reference names when it holds an OCI layout here: `dir`, or
/// `dir:tag` and `dir@digest` without their suffix.
fn unprefixed_layout(input: &str) -> Option<&str> {
    if input.starts_with("oci:") || input.starts_with("docker://") || input == "scratch" {
        return None;
    }
    let name = input.split('@').next().unwrap_or(input);
    let untagged = match name.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') => dir,
        _ => name,
    };
    [name, untagged]
        .into_iter()
        .find(|d| !d.is_empty() && std::path::Path::new(d).join("oci-layout").is_file())
}

/// Parses a reference that must name a layout or repository only, such as where a nick's
/// versions go (each is tagged with the nick): a tag or digest there would be ignored, so it is
/// refused. A registry reference reads as `:latest` without a tag, so the text itself is checked.
fn parse_repository(flag: &str, input: &str) -> Result<StoreRef> {
    let r = parse_ref(input)?;
    let tagged = match &r {
        StoreRef::Layout(l) => l.image.is_some(),
        StoreRef::Registry(_) => {
            let bare = input.strip_prefix("docker://").unwrap_or(input);
            bare.contains('@')
                || bare
                    .rsplit('/')
                    .next()
                    .is_some_and(|name| name.contains(':'))
        }
    };
    if tagged {
        bail!(
            "{flag} {input}: name a layout (oci:<dir>) or repository without a tag or digest; \
             each version is tagged with the nick and answered pinned to its digest"
        );
    }
    Ok(r)
}

/// Opens the store of a reference for reading, and what in it the reference names.
fn open_for_reading(r: &StoreRef, client: &Client) -> Result<(AnyStore, ManifestRef)> {
    let store = r.open(client)?;
    let image = match r.image() {
        Some(i) => i,
        None => store.default_image()?,
    };
    Ok((store, image))
}

fn parse_platform(p: Option<&str>) -> Result<Option<PlatformSpec>> {
    p.map(|p| p.parse().with_context(|| format!("parsing --platform {p}")))
        .transpose()
}

fn layer_options(o: &LayerOpts) -> Result<LayerOptions> {
    let epoch = ociup_core::time::parse_epoch(&o.source_date_epoch)?;
    let owner = match (&o.owner, o.keep_owner) {
        (_, true) => Owner::Keep,
        (Some(s), false) => {
            let (u, g) = s
                .split_once(':')
                .with_context(|| format!("--owner {s:?}: expected UID:GID"))?;
            Owner::Fixed {
                uid: u
                    .parse()
                    .with_context(|| format!("--owner: bad uid {u:?}"))?,
                gid: g
                    .parse()
                    .with_context(|| format!("--owner: bad gid {g:?}"))?,
            }
        }
        (None, false) => Owner::Root,
    };
    let mut opts = LayerOptions {
        compression: match o.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        },
        level: o.level,
        epoch,
        owner,
        ..LayerOptions::default()
    };
    if let Some(t) = o.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        opts.threads = t;
    }
    match (opts.compression, o.level) {
        (Compression::Gzip, Some(l)) if l > 9 => bail!("--level {l}: gzip levels are 0 to 9"),
        (Compression::Zstd, Some(l)) if !(1..=22).contains(&l) => {
            bail!("--level {l}: zstd levels are 1 to 22")
        }
        _ => {}
    }
    Ok(opts)
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        _ => "none",
    }
}

/// Where documents read from a registry are kept by digest (configs, catalog records, build
/// manifests: see `BlobCache`): `$XDG_CACHE_HOME/ociup/blobs`, else `~/.cache/ociup/blobs`.
pub(crate) fn cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|d| d.join("ociup/blobs"))
}
