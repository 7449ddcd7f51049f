//! `ociup run`: resolve a nick (or take an image), assemble its root file system from the
//! layer cache, write a bundle and run it with runc.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ociup_core::managed::manager::{self, Manager, ResolveOptions};
use ociup_core::ops;
use ociup_core::reference::PlatformSpec;
use ociup_core::store::{ManifestRef, Store};
use ociup_registry::Opener;
use ociup_run::runtime::{find_runtime, running_as_root};
use ociup_run::{
    BindMount, LayerCache, Network, Rootless, RuntimeOptions, Seccomp, SpecOptions, run_bundle,
    runtime_spec,
};

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::{CatalogArgs, SigningArgs, UnreachableArg};
use crate::output;

/// `ociup run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The nick to run: its newest version, regenerated first when its base moved (as
    /// `ociup resolve` does).
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    pub nick: Option<String>,
    /// Run this image (a layout or registry reference) instead of a nick.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// The command's arguments, after `--`: they replace the image's Cmd (the Entrypoint stays).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Replace the image's Entrypoint (a JSON array, or one program); the image's Cmd is then
    /// dropped.
    #[arg(long, value_name = "JSON|PATH")]
    pub entrypoint: Option<String>,
    /// Set an environment variable over the image's Env. Repeatable.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory (default: the image's WorkingDir, else /).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user: name, uid, name:group or uid:gid, names looked up in the image's /etc/passwd
    /// and /etc/group (default: the image's User, else root).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Bind a host path into the container, read-write or (`:ro`) read-only. Repeatable.
    #[arg(long, value_name = "SRC:DEST[:ro]")]
    pub mount: Vec<String>,
    /// The network: none (the default: a network namespace of its own with only a loopback
    /// device) or host (the machine's network, its /etc/resolv.conf and /etc/hosts bound).
    #[arg(long, value_enum, default_value_t = NetworkArg::None)]
    pub network: NetworkArg,
    /// Give the container a root file system it may write to: a copy of the image's files
    /// (reflinked where the file system can), removed with the bundle. Without it the root file
    /// system is the layer cache's, mounted read-only, with tmpfs at /tmp, /var/tmp and /run.
    #[arg(long)]
    pub writable: bool,
    /// The platform to run from a multi-platform image (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// The seccomp filter: `default` (the profile containerd and Docker apply: every system call
    /// not on its allow list fails with EPERM, among them mount, unshare, setns, keyctl, bpf,
    /// reboot, module loading and clock setting), `unconfined` (no filter), or the path of a
    /// JSON file holding the `linux.seccomp` object of an OCI runtime spec.
    #[arg(long, value_name = "default|unconfined|PATH")]
    pub seccomp: Option<String>,
    /// Docker's spelling of --seccomp: `seccomp=unconfined`, `seccomp=PATH`. Only `seccomp=`
    /// is known.
    #[arg(long, value_name = "seccomp=PROFILE")]
    pub security_opt: Vec<String>,
    /// The OCI runtime to run the bundle with (default: runc on PATH).
    #[arg(long, env = "OCIUP_RUNTIME", value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// Keep the bundle (config.json, and the root file system when the run has its own)
    /// afterwards, and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Print the reference that would run and the runtime spec, as JSON (reference, digest,
    /// rootfs, private_copy, read_only, layers, unpacked, assembled, spec), and run nothing.
    /// The layers are still unpacked into the cache. For a nick whose base moved, the upgrade
    /// is planned, not written: only its reference, digest, version and base_digest are
    /// printed, with upgrade_due: true.
    #[arg(long)]
    pub dry_run: bool,
    /// For a nick: run the current version without asking the base.
    #[arg(long)]
    pub offline: bool,
    /// For a nick whose base cannot be reached: fail, or run the last good version.
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NetworkArg {
    None,
    Host,
}

/// ociup's data directory: `$XDG_DATA_HOME/ociup`, else `~/.local/share/ociup`.
pub(super) fn data_dir() -> Result<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("ociup"))
        .context("no XDG_DATA_HOME or HOME to place ociup's data directory")
}

/// The layer cache: `DATA/rootfs-cache`.
pub(super) fn layer_cache() -> Result<LayerCache> {
    Ok(LayerCache::new(data_dir()?.join("rootfs-cache")))
}

/// This machine's platform, as image indexes name it.
fn host_platform() -> PlatformSpec {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7".to_owned())),
        "powerpc64" => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    };
    PlatformSpec {
        os: "linux".into(),
        architecture: architecture.into(),
        variant,
    }
}

/// The catalog's manager, as `resolve` makes it.
fn manager(ctx: &Ctx, args: &RunArgs) -> Result<Manager<Opener>> {
    let epoch = ociup_core::time::parse_epoch(&args.source_date_epoch)?;
    super::managed::manager(ctx, &args.catalog, Some(&args.signing), epoch, None)
}

/// What to run: a reference, or (in a dry run of a nick whose upgrade is due) the version the
/// upgrade would write, which does not exist yet.
enum Target {
    Ready(String),
    Planned(manager::Planned),
}

/// The reference to run: the nick resolved (upgraded when due), or `--image`. In a dry run an
/// upgrade is planned, never written: its plan is answered instead.
async fn reference(ctx: &Ctx, args: &RunArgs) -> Result<Target> {
    if let Some(image) = &args.image {
        return Ok(Target::Ready(image.clone()));
    }
    let nick = args.nick.as_deref().unwrap_or_default();
    let m = manager(ctx, args)?;
    let planned: std::sync::Arc<std::sync::Mutex<Option<manager::Planned>>> = Default::default();
    let before_write: Option<manager::BeforeWrite> = args.dry_run.then(|| {
        let slot = std::sync::Arc::clone(&planned);
        let hook: manager::BeforeWrite = std::sync::Arc::new(move |p: &manager::Planned| {
            if let Ok(mut s) = slot.lock() {
                *s = Some(p.clone());
            }
            Box::pin(async {
                Err(ociup_core::Error::InvalidChange {
                    reason: "dry run: nothing is written".into(),
                })
            })
        });
        hook
    });
    let resolved = m
        .resolve(
            nick,
            ResolveOptions {
                check: false,
                offline: args.offline,
                unreachable: args.if_unreachable.into(),
                before_write,
            },
        )
        .await;
    if let Some(p) = planned.lock().ok().and_then(|mut s| s.take()) {
        return Ok(Target::Planned(p));
    }
    let r = match resolved {
        Ok(r) => r,
        Err(ociup_core::Error::Backend(e)) if e.is::<manager::BaseUnreachable>() => bail!(
            "resolving {nick}: {:#}; to run the last good version instead, pass \
             --if-unreachable stale",
            anyhow::Error::from_boxed(e)
        ),
        Err(e) => return Err(e).with_context(|| format!("resolving {nick}")),
    };
    if r.stale {
        eprintln!(
            "ociup: the base of {nick} cannot be reached; running the last good version \
             (stale)"
        );
    }
    if r.upgraded {
        eprintln!(
            "ociup: {nick} upgraded to version {} (base {})",
            r.version, r.base_digest
        );
    }
    Ok(Target::Ready(r.reference))
}

fn split_env(e: &str) -> Result<(String, String)> {
    let (k, v) = e
        .split_once('=')
        .with_context(|| format!("--env {e:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        bail!("--env {e:?}: the name is empty");
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// The caller's user namespace mappings, from /etc/subuid and /etc/subgid.
fn rootless_mappings() -> Rootless {
    use std::os::unix::fs::MetadataExt;
    let (uid, gid) = std::fs::metadata("/proc/self").map_or((0, 0), |m| (m.uid(), m.gid()));
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let name = std::env::var("USER").ok();
    Rootless::for_caller(
        uid,
        gid,
        name.as_deref(),
        &read("/etc/subuid"),
        &read("/etc/subgid"),
    )
}

/// The seccomp filter `--seccomp` and `--security-opt seccomp=` ask for.
fn seccomp(args: &RunArgs) -> Result<Seccomp> {
    let mut given: Vec<&str> = args.seccomp.iter().map(String::as_str).collect();
    for o in &args.security_opt {
        match o.split_once(['=', ':']) {
            Some(("seccomp", v)) => given.push(v),
            _ => bail!("--security-opt {o:?}: only seccomp=unconfined|default|PATH is known"),
        }
    }
    let value = match given.as_slice() {
        [] => return Ok(Seccomp::Default),
        [one] => *one,
        _ => bail!("the seccomp filter is given more than once (--seccomp, --security-opt)"),
    };
    Ok(match value {
        "default" => Seccomp::Default,
        "unconfined" => Seccomp::Unconfined,
        "" => bail!("--seccomp: empty; give default, unconfined or a file"),
        path => Seccomp::from_file(std::path::Path::new(path))?,
    })
}

/// ociup's own failures exit with this status, as `docker run`'s do: a container's own statuses
/// stay its own.
const OCIUP_FAILED: u8 = 125;

/// `ociup run`: the container's exit status; 125 when ociup (or the runtime, before the command
/// ran) fails, the error said on stderr; 126 and 127 when the command cannot be executed or
/// found.
pub async fn run(ctx: &Ctx, args: RunArgs) -> Result<u8> {
    finish(run_container(ctx, args).await)
}

/// A run's outcome as `ociup run` exits: ociup's own failures said on stderr, exit 125.
pub(crate) fn finish(run: Result<u8>) -> Result<u8> {
    match run {
        Ok(status) => Ok(status),
        // A closed stdout (of --dry-run) is no failure: main answers success.
        Err(e) if output::is_broken_pipe(&e) => Err(e),
        Err(e) => {
            eprintln!("ociup: {e:#}");
            Ok(OCIUP_FAILED)
        }
    }
}

/// What is taken from the arguments, checked before anything is resolved.
pub(crate) struct Prepared {
    seccomp: Seccomp,
    mounts: Vec<BindMount>,
    env: Vec<(String, String)>,
    entrypoint: Option<Vec<String>>,
    runtime: Option<PathBuf>,
}

async fn run_container(ctx: &Ctx, args: RunArgs) -> Result<u8> {
    let prepared = prepare(&args)?;
    let reference = match reference(ctx, &args).await? {
        Target::Ready(r) => r,
        Target::Planned(p) => {
            // A dry run: the upgrade is due, and nothing was written.
            output::json(&serde_json::json!({
                "reference": p.reference,
                "digest": p.digest,
                "upgrade_due": true,
                "version": p.version,
                "base_digest": p.base_digest,
            }))?;
            return Ok(0);
        }
    };
    let r = parse_ref(&reference)?;
    let client = ctx.client(&[&r])?;
    let (store, image_ref) = open_for_reading(&r, &client)?;
    run_image(&args, prepared, &reference, &store, &image_ref).await
}

/// The arguments checked, and the runtime found (none for a dry run).
pub(crate) fn prepare(args: &RunArgs) -> Result<Prepared> {
    let seccomp = seccomp(args)?;
    let mounts = args
        .mount
        .iter()
        .map(|m| m.parse::<BindMount>())
        .collect::<Result<Vec<_>, _>>()?;
    for m in &mounts {
        if let Err(e) = std::fs::metadata(&m.source) {
            bail!(
                "--mount {}:{}: the source cannot be used: {e}",
                m.source.display(),
                m.destination
            );
        }
    }
    let env = args
        .env
        .iter()
        .map(|e| split_env(e))
        .collect::<Result<Vec<_>>>()?;
    let entrypoint = match &args.entrypoint {
        Some(e) if e.trim_start().starts_with('[') => Some(
            serde_json::from_str::<Vec<String>>(e)
                .with_context(|| format!("--entrypoint {e:?}: not a JSON array of strings"))?,
        ),
        Some(e) => Some(vec![e.clone()]),
        None => None,
    };
    let runtime = if args.dry_run {
        None
    } else {
        Some(find_runtime(args.runtime.as_deref())?)
    };
    Ok(Prepared {
        seccomp,
        mounts,
        env,
        entrypoint,
        runtime,
    })
}

/// Runs `image_ref` of `store` (`reference` names it in messages and --dry-run): its root file
/// system from the layer cache, its bundle, runc. The store may be any: the stores reached
/// with the caller's credentials, or a service's (`--server`, client.rs).
pub(crate) async fn run_image<S: Store>(
    args: &RunArgs,
    prepared: Prepared,
    reference: &str,
    store: &S,
    image_ref: &ManifestRef,
) -> Result<u8> {
    let Prepared {
        seccomp,
        mounts,
        env,
        entrypoint,
        runtime,
    } = prepared;
    let platform = parse_platform(args.platform.as_deref())?.unwrap_or_else(host_platform);
    let image = ops::load_image(store, image_ref, Some(&platform))
        .await
        .with_context(|| format!("reading {reference}"))?;
    let digest = image.manifest.raw().digest().to_string();

    let root = running_as_root();
    let cache = layer_cache()?;
    let snapshot = cache
        .snapshot(store, &image, root)
        .await
        .with_context(|| format!("preparing the root file system of {reference}"))?;
    let rep = &snapshot.report;
    tracing::info!(
        "root file system {}: {} layers, {} unpacked now ({} bytes), {}",
        snapshot.rootfs.display(),
        rep.layers,
        rep.unpacked.len(),
        rep.bytes_unpacked,
        if rep.assembled {
            "assembled now"
        } else {
            "cached"
        }
    );
    for note in &rep.skipped {
        eprintln!("ociup: skipped {note}");
    }

    let id = format!(
        "ociup-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let workdir_needed = args.workdir.clone().or_else(|| {
        image
            .config
            .value()
            .get("config")
            .and_then(|c| c.get("WorkingDir"))
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
    });
    let network = match args.network {
        NetworkArg::None => Network::None,
        NetworkArg::Host => Network::Host,
    };
    // Mount points the image lacks would have to be made in the shared snapshot: such a run,
    // and a writable one, gets its own copy.
    let mut needed: Vec<String> = mounts.iter().map(|m| m.destination.clone()).collect();
    needed.extend(workdir_needed);
    if network == Network::Host {
        needed.extend(["/etc/resolv.conf".to_owned(), "/etc/hosts".to_owned()]);
    }
    let own_rootfs = args.writable || needed.iter().any(|p| !snapshot.has(p));
    let terminal =
        !args.dry_run && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let options = SpecOptions {
        args: args.args.clone(),
        entrypoint,
        env,
        workdir: args.workdir.clone(),
        user: args.user.clone(),
        terminal,
        mounts,
        network,
        readonly_rootfs: !args.writable,
        hostname: "ociup".into(),
        rootless: (!root).then(rootless_mappings),
        seccomp,
    };
    if args.dry_run {
        // Nothing is copied nor written: the spec names the snapshot, and `private_copy` says
        // whether a run would get its own copy of it.
        let rootfs = snapshot.rootfs.clone();
        let spec = runtime_spec(
            &image.config,
            &rootfs,
            &rootfs.display().to_string(),
            &options,
        )?;
        output::json(&serde_json::json!({
            "reference": reference,
            "digest": digest,
            "rootfs": rootfs.display().to_string(),
            "private_copy": own_rootfs,
            "read_only": !args.writable,
            "layers": rep.layers,
            "unpacked": rep.unpacked,
            "assembled": rep.assembled,
            "spec": spec,
        }))?;
        return Ok(0);
    }
    let data = data_dir()?;
    let bundles = data.join("bundles");
    // Private to this user: as root a bundle holds a copy of the image's setuid files.
    ociup_run::cache::private_dir(&bundles)?;
    let bundle = Bundle {
        path: bundles.join(&id),
        keep: args.keep,
    };
    std::fs::create_dir(&bundle.path)
        .with_context(|| format!("creating {}", bundle.path.display()))?;

    let rootfs = if own_rootfs {
        let dest = bundle.path.join("rootfs");
        let (snap, dest2, copy) = (snapshot.rootfs.clone(), dest.clone(), args.writable);
        tokio::task::spawn_blocking(move || ociup_run::cache::clone_rootfs(&snap, &dest2, copy))
            .await??;
        dest
    } else {
        snapshot.rootfs.clone()
    };
    let spec = runtime_spec(
        &image.config,
        &rootfs,
        &rootfs.display().to_string(),
        &options,
    )?;
    let config = bundle.path.join("config.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let state_root = data.join("runc");
    ociup_run::cache::private_dir(&state_root)?;
    let status = run_bundle(&RuntimeOptions {
        runtime: runtime.unwrap_or_default(),
        state_root,
        id,
        bundle: bundle.path.clone(),
        own_process_group: !terminal,
    })
    .await?;
    if args.keep {
        eprintln!("ociup: bundle kept at {}", bundle.path.display());
    }
    drop(snapshot);
    if !matches!(status, ociup_run::Exit::Container(_)) {
        // The runtime said why on stderr already.
        tracing::debug!("the runtime failed: {status:?}");
    }
    Ok(u8::try_from(status.code() & 0xff).unwrap_or(OCIUP_FAILED))
}

/// A run's bundle directory: removed when dropped, unless kept.
struct Bundle {
    path: PathBuf,
    keep: bool,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = ociup_run::cache::remove_tree(&self.path)
        {
            eprintln!("ociup: removing {}: {e}", self.path.display());
        }
    }
}
