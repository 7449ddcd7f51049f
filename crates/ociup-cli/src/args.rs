//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps custom container images on the newest version of their base image, without Docker,
/// without a daemon and without rebuilding.
///
/// Images are named by store references, in the forms skopeo uses: an OCI image layout directory
/// is oci:<dir>[:<tag>|@<digest>] (created when written to); a registry image is
/// docker://host[:port]/name[:tag][@digest], or the same without docker:// (Docker Hub when no
/// host is given).
///
/// Registry credentials come from --username with --password-stdin (or OCIUP_USERNAME and
/// OCIUP_PASSWORD), which go only to the one registry the command names (a command naming two,
/// such as a copy between registries, is refused: use `ociup login` for each; a command naming
/// none, only layouts, applies them to the registries it reaches), else from
/// $REGISTRY_AUTH_FILE, Docker's config.json (auths, credsStore, credHelpers; `ociup login`
/// writes there) and the auth.json of skopeo and podman ($XDG_RUNTIME_DIR/containers/auth.json,
/// /run/containers/$UID/auth.json, ~/.config/containers/auth.json).
#[derive(Debug, Parser)]
#[command(
    name = "ociup",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Reach this registry (host[:port]) over plain HTTP. Repeatable, or comma-separated in the
    /// environment. Loopback registries fall back to HTTP by themselves.
    #[arg(
        long = "insecure-registry",
        global = true,
        value_name = "HOST[:PORT]",
        env = "OCIUP_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure: Vec<String>,
    /// Trust the CA certificates in this PEM file, beside the system roots.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Check each blob of a manifest (a HEAD per blob) before pushing the manifest. By default a
    /// manifest is pushed first and only the blobs the registry says it lacks are sent, which
    /// relies on the registry refusing a manifest with missing blobs (MANIFEST_BLOB_UNKNOWN), as
    /// Distribution does. Use this for a registry that stores such a manifest.
    #[arg(long, global = true, env = "OCIUP_CHECK_BLOBS_FIRST")]
    pub check_blobs_first: bool,
    /// User name for the registry this command names, and no other (several registries named
    /// is refused: log in to each with `ociup login`; with only layouts named, for the
    /// registries the command reaches). Example: ociup inspect reg.example/app:v1 --username ci
    /// --password-stdin
    #[arg(long, global = true, env = "OCIUP_USERNAME")]
    pub username: Option<String>,
    /// Read the password (or token) for --username from standard input.
    #[arg(long, global = true, requires = "username")]
    pub password_stdin: bool,
    /// Show debug logs (requests retried, uploads resumed) on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// The longest a registry may stay silent, in seconds (fractions allowed): for an answer to
    /// start (plus a second per 16 KiB sent with the request), and within an answer, where less
    /// than 1 KiB in that time counts as silence; and for a registry to take more of an upload.
    /// A timed-out request is retried, a blob download or upload resumed, then the command fails.
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        env = "OCIUP_TIMEOUT",
        default_value = "60",
        value_parser = parse_timeout
    )]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub server: crate::client::ServerArgs,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("{s}: give more than 0 and at most 86400 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build layers.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Append files, removals and config changes to an image, as one new layer.
    ///
    /// On a multi-platform index base, every platform is built by default (or those named
    /// with repeated --platform, or --platform all): the layer is built once and put on each
    /// platform's manifest, each config derived from that platform's own base config, under a
    /// new index that keeps the base index's platforms and order. Attestation manifests of the
    /// base index (platform unknown/unknown, or annotated as attestations) are not carried into
    /// the new index: they attest the base, not this image. A single --platform gives that
    /// platform's image alone.
    ///
    /// Example: ociup append --base oci:fixtures/base:v1 --add ./app:/opt/app
    /// --env APP_HOME=/opt/app --entrypoint /opt/app/run --to oci:out:app
    Append(Box<AppendArgs>),
    /// Assemble a multi-platform index from manifests in one store, or change one.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Show an image or index: digest, platform, config, layers.
    Inspect(InspectArgs),
    /// Unpack an image into a directory (absent or empty): its layers applied in order, every
    /// blob checked against its digest, nothing written outside the directory.
    ///
    /// As root, files get the owners the layers give, and device nodes and FIFOs are made;
    /// otherwise files stay yours (as umoci's --rootless does) and device nodes and FIFOs are
    /// not made: each is listed. The image is unpacked beside DIR and renamed into place, so a
    /// failure leaves DIR as it was.
    ///
    /// Example: ociup unpack oci:fixtures/multi:v1 ./rootfs --platform linux/amd64
    Unpack(UnpackArgs),
    /// Run a nick's newest version (regenerated first when its base moved, as `resolve` does)
    /// or an image, with runc: no daemon. The root file system comes from a layer cache under
    /// the data directory (each layer unpacked once; `ociup prune` cleans it) and is mounted
    /// read-only, with tmpfs at /tmp, /var/tmp and /run (--writable for a copy the container
    /// may write to). The network is none by default (--network host for the machine's).
    /// Rootless when not run as root (user namespace mapped from /etc/subuid and /etc/subgid).
    /// SIGINT and SIGTERM are forwarded to the container; the bundle is removed afterwards.
    ///
    /// The default seccomp profile of containerd and Docker applies (--seccomp unconfined to
    /// turn it off, or a profile file).
    ///
    /// Exit status: the container's (128 + N when signal N ended it); 125 when ociup or the
    /// runtime fails before the command runs (2 for a usage error); 126 when the command cannot
    /// be executed; 127 when it is not found.
    ///
    /// With --server URL (OCIUP_SERVER) a nick is resolved by that ociup service (upgraded
    /// there, with its credentials, when its base moved) and its image read from it, by digest;
    /// the container still runs here, and prints and exits as it would locally. Flags that
    /// need the local catalog or key (--catalog, --sign-key, --actor, --unsigned,
    /// --source-date-epoch) and --image are refused then; --dry-run is refused when an upgrade
    /// is due.
    ///
    /// Example: ociup run trainer -- python3 /opt/train.py --epochs 3
    ///
    /// Example: OCIUP_SERVER=https://ociup.internal:8443 OCIUP_TOKEN=ociup_… ociup run trainer
    /// -- python3 /opt/train.py
    Run(Box<crate::cmd::run::RunArgs>),
    /// Print a nick's newest version as a Kubernetes batch/v1 Job (YAML, or --json), or
    /// submit it (--apply) and follow it (--wait). The nick is resolved as `resolve` does
    /// (regenerated first when its base moved); the container's image is that version pinned
    /// by digest, never a tag, and labels and annotations (ociup.dev/nick, ociup.dev/version,
    /// ociup.dev/digest, ociup.dev/base-digest) record what runs. The version must live in a
    /// registry repository (a layout cannot be pulled by a cluster).
    ///
    /// With --apply and an upgrade due, the Job is created at once with spec.suspend: true and
    /// the digest the new version will have; the version is then written and recorded, and
    /// the Job released. If the regeneration fails, the Job is deleted and the error says why.
    /// The rights to create, get, patch and delete Jobs (and list, watch with --wait) are
    /// asked first: a request the API server refuses (forbidden, a name taken) or cannot take
    /// (down, or silent past --request-timeout) writes nothing and leaves no Job (a creation
    /// left unanswered is looked for, twice, and deleted; the error says what was found, or
    /// gives the ociup.dev/request label that finds it). A release whose answer is lost is
    /// sent again; if it still fails, the version stays recorded and the Job is left,
    /// suspended: the error names it and the kubectl patch that releases it. Stopped (Ctrl-C, SIGTERM) while held, the Job is deleted; one left by a killed
    /// ociup is labelled ociup.dev/held=true (kubectl delete jobs -l ociup.dev/held=true).
    ///
    /// Exit status: 0 printed or submitted (with --wait: the Job completed), 4 the Job failed
    /// (--wait), 1 ociup failed (with --wait: also the Job deleted, --wait-timeout reached, or
    /// the API server lost), 2 a usage error.
    ///
    /// Example: ociup job trainer --namespace ml --request cpu=500m --limit memory=2Gi
    /// --apply --wait -- --epochs 3
    Job(Box<crate::cmd::job::JobArgs>),
    /// Remove cached layers and root file systems of `ociup run` that no run used lately
    /// (--older-than, default 7 days) or all of them (--all); a run holding them is never
    /// disturbed. Bundles left by a killed `ociup run` (its process gone, its container no
    /// longer known to runc) older than that are removed too.
    ///
    /// Example: ociup prune --older-than 30d
    Prune(crate::cmd::prune::PruneArgs),
    /// Copy an image or a whole index between layouts and registries, moving only what the
    /// destination lacks (blobs are mounted within one registry).
    ///
    /// Example: ociup copy oci:fixtures/multi:v1 docker://localhost:5000/base:v1
    Copy(CopyArgs),
    /// Put an image's own layers on another (usually newer) version of its base, rewriting only
    /// its config and manifest: no layer is rebuilt, and within one registry no layer byte
    /// moves (base blobs are mounted).
    ///
    /// The old and new base default to what the image records (its
    /// org.opencontainers.image.base.name and .base.digest annotations): the recorded name is
    /// looked up again for the new base. When the old base is gone, the layer boundary recorded
    /// by ociup (dev.ociup.base.layers) is used instead. An index is rebased platform by
    /// platform; attestation manifests of rebased platforms are dropped. Configs read from a
    /// registry are kept by digest in $XDG_CACHE_HOME/ociup/blobs, so a rebase of an image
    /// whose configs were read before asks only for the manifests.
    ///
    /// Exit status: 0 rebased (or, with --dry-run, planned), 3 already on the new base (nothing
    /// written), 1 failed.
    Rebase(RebaseArgs),
    /// Register a managed image under a nick and build its first version.
    ///
    /// The steps are the flags of `ociup append`, applied in the order given, or a recipe file
    /// (JSON; see the README). Every step's values and the files it names are checked before
    /// anything is written; a recipe file reads only under its own folder. The
    /// catalog (recipes, versions, audit trail) lives in a store: --catalog, OCIUP_CATALOG, or
    /// a layout under the user's data directory.
    ///
    /// Example: ociup register trainer --base oci:fixtures/base:latest --to oci:images
    /// --add ./train.py:/opt/train.py --env MODE=train
    ///
    /// On a multi-platform base (an index), every platform is built (or those named with
    /// --platform) and each version is an index: a resolve after the base index moved rebuilds
    /// only the platforms whose base manifest changed (the others keep their manifests byte for
    /// byte), and a platform the base dropped is left out of the new version (the record and
    /// `resolve --json` name it in dropped_platforms).
    ///
    /// Example: ociup register app --base oci:fixtures/multi:v1 --to oci:images --add
    /// ./app.conf:/etc/app.conf --platform linux/amd64 --platform linux/arm64
    ///
    /// With --server URL (OCIUP_SERVER) and an admin token, the recipe is made and checked here
    /// as above (a missing file fails before anything is sent), then uploaded with the files it
    /// names (relative names, no `..`, no symlinks) and registered by the service, with its
    /// catalog, credentials and key; the output is the same. --platform and the flags of the
    /// local catalog and key (--catalog, --sign-key, --actor, --unsigned, --source-date-epoch)
    /// are refused then.
    ///
    /// Example: OCIUP_SERVER=https://ociup.internal:8443 OCIUP_TOKEN=ociup_… ociup register
    /// trainer --base registry.example/base/python:3 --to registry.example/apps/trainer --add
    /// train.py:/opt/train.py
    Register(Box<RegisterArgs>),
    /// The request to run: print the digest-pinned reference of a nick's newest version,
    /// regenerating it on the spot when its base has moved.
    ///
    /// The catalog entry is checked against its version record first, and, with a signing key
    /// at hand, the version against its signed build manifest; an entry changed outside ociup is
    /// refused. A nick whose current version is signed is regenerated only with its key (or
    /// --unsigned).
    ///
    /// Exit status: 0 answered; with --check, as rebase's (0 something to do, 3 nothing to
    /// do): 0 upgrade due, 3 current; 1 failed.
    Resolve(ResolveArgs),
    /// Every nick (or those named): current, stale (base moved), pending or failed, signed or
    /// unsigned, with one base lookup per distinct base.
    Status(StatusArgs),
    /// Every version of a nick: number, digest, base digest, reason, time, actor.
    History(HistoryArgs),
    /// Write a new signing key pair, ed25519 (the default) or ECDSA P-256: PREFIX.key (PKCS#8
    /// PEM, private) and PREFIX.pub (SPKI PEM, public).
    ///
    /// Example: ociup keygen --out signer --algorithm p256
    Keygen(KeygenArgs),
    /// Check an image (or a nick's current version) against its signed build manifest: the
    /// signature, and that its own layers hold exactly the listed files and hashes.
    ///
    /// The build manifest must be an ociup one (predicate type
    /// https://ociup.dev/build-manifest/v1) for this image and list its own layers, all of them;
    /// for a nick, it must also name the nick, the version the catalog records and the recipe
    /// the catalog holds, once the catalog entry is found consistent.
    Verify(VerifyArgs),
    /// Rebuild a version from its recipe on the base digest it recorded and say whether the
    /// same digest comes out. Source files are read relative to --dir, and only under it
    /// (symlinks resolved) unless --allow-outside.
    ///
    /// Exit status 0 when the digests match, 1 otherwise.
    Replay(ReplayArgs),
    /// Add steps to a nick's recipe (the flags of `ociup append`, in order), record the edit in
    /// its audit trail, and build a new version from the whole recipe on the current base. Run it
    /// where the recipe's source files are: the earlier steps read only under it (symlinks
    /// resolved) unless --allow-outside.
    Edit(Box<EditArgs>),
    /// Resolve every nick now (the eager path), printing each answer.
    Upgrade(UpgradeArgs),
    /// Unregister a nick (a failed registration, or one no longer wanted): it is no longer
    /// listed, resolved or upgraded. The removal is recorded in its audit trail; its images,
    /// history and audit trail stay, and registering the nick again goes on from them.
    ///
    /// Example: ociup unregister trainer
    Unregister(UnregisterArgs),
    /// Delete the images of old versions beyond the newest N, where the store allows deletion
    /// (a registry with deletes enabled; a layout drops their index entries). The version records
    /// stay, so the history keeps every version. Then sweep every layout involved (the targets
    /// and the catalog): blobs nothing listed in its index.json reaches any more are removed,
    /// while catalog records, recipes, audit entries and build manifests are kept. A registry
    /// removes blobs with its own garbage collector.
    Gc(GcArgs),
    /// Print a shell completion script.
    ///
    /// bash: ociup completions bash > ~/.local/share/bash-completion/completions/ociup;
    /// zsh: ociup completions zsh > "${fpath[1]}/_ociup"; fish: ociup completions fish >
    /// ~/.config/fish/completions/ociup.fish.
    Completions(CompletionsArgs),
    /// Log in to a registry: check the user name and password (read from standard input) with
    /// the registry, then save them where Docker keeps logins: the credential helper
    /// config.json names for the registry (credHelpers, else credsStore), else config.json's
    /// auths ($DOCKER_CONFIG/config.json or ~/.docker/config.json, mode 0600).
    ///
    /// Example: printf '%s' "$TOKEN" | ociup login registry.example --username ci --password-stdin
    Login(LoginArgs),
    /// Remove a registry's login from Docker's config.json and from the credential helper it
    /// names. Logging out of a registry without a login is not an error.
    Logout(LogoutArgs),
    /// Print the man page (roff), or write one page per command into a directory.
    ///
    /// Example: ociup man --out /usr/local/share/man/man1
    Man(ManArgs),
    /// Serve the managed-image API over HTTP (/v1/, JSON; see docs/serve.md): requesters with
    /// a token resolve, show status and history, and verify, while the service holds the
    /// registry credentials and the signing key, bounded by --allow-read and --allow-write.
    ///
    /// Example: ociup serve --listen 127.0.0.1:8080 --tokens tokens.json --catalog
    /// localhost:5000/ociup/catalog --allow-read 'localhost:5000/base/*' --allow-write
    /// 'localhost:5000/apps/*' --allow-write localhost:5000/ociup/catalog
    Serve(Box<crate::cmd::serve::ServeArgs>),
    /// Make, list and revoke the bearer tokens `ociup serve` accepts.
    #[command(subcommand)]
    Token(crate::cmd::token::TokenCommand),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry: host[:port] (docker.io for Docker Hub). Give --username (or
    /// OCIUP_USERNAME) and --password-stdin: the password is read from standard input only.
    pub registry: String,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry: host[:port] (docker.io for Docker Hub).
    pub registry: String,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ociup.1 and ociup-<command>.1 into this directory instead of printing ociup.1.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Nicks (default: all).
    pub nicks: Vec<String>,
    /// Versions to keep per nick, the current one included (without it no version is
    /// deleted; layouts are still swept).
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Keep unreached blobs written less than this many seconds ago: a writer stores blobs
    /// before the manifest that names them. Sweep a layout nothing else is writing to.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub min_age: u64,
    /// Print JSON: nicks (each: nick, deleted) and layouts (each: layout, removed, bytes,
    /// kept_recent).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

#[derive(Debug, Args)]
pub struct UnregisterArgs {
    /// The nick.
    pub nick: String,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The nick.
    pub nick: String,
    #[command(flatten)]
    pub steps: StepArgs,
    /// Let the stored recipe's earlier steps read files outside the working directory
    /// (absolute paths given to `register` on its command line, `..`, symlinks out). Without
    /// it they read only under it, so that a recipe someone else put in the catalog cannot
    /// read this machine's other files.
    #[arg(long)]
    pub allow_outside: bool,
    /// Upper bound of timestamps in what is built, seconds since 1970.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECS",
        default_value = "0"
    )]
    pub source_date_epoch: String,
    /// Print the version record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Every registered nick (required: nothing is upgraded unless asked).
    #[arg(long, required = true)]
    pub all: bool,
    /// Print a JSON array, one resolve answer per nick ({nick, error} for one that failed); see
    /// docs/json.md.
    #[arg(long)]
    pub json: bool,
    /// `created` of regenerated versions, seconds since 1970.
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

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// NICK@VERSION (a version number), or NICK for the current version.
    pub target: String,
    /// Where the recipe's source files are.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Let the recipe read files outside --dir (absolute paths given to `register` on its
    /// command line, `..`, symlinks out). Without it, it reads only under --dir.
    #[arg(long)]
    pub allow_outside: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Where the catalog lives: a layout (oci:<dir>) or a registry repository.
    #[arg(long, env = "OCIUP_CATALOG", value_name = "REF")]
    pub catalog: Option<String>,
}

#[derive(Debug, Args)]
pub struct SigningArgs {
    /// Sign build manifests with this private key, ed25519 or ECDSA P-256 (PKCS#8 PEM, from
    /// `ociup keygen` or `openssl pkcs8 -topk8 -nocrypt`); its algorithm is read from the file.
    #[arg(long, env = "OCIUP_SIGNING_KEY", value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// When a nick whose current version is signed needs a new version (its base moved, an
    /// edit) and no --sign-key is given, or the key given is not the one that signed it: make
    /// the new version without vouching for the old one (unsigned, or signed with the key
    /// given), recorded in the nick's audit trail. Without it, that is refused. A version that
    /// the given key signed must still check out against its build manifest.
    #[arg(long)]
    pub unsigned: bool,
    /// Who is recorded with the command (default: $USER).
    #[arg(long, env = "OCIUP_ACTOR")]
    pub actor: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The nick: 1 to 64 of [a-z0-9_-].
    #[arg(required_unless_present = "recipe")]
    pub nick: Option<String>,
    /// A recipe file instead of the flags. Its source paths are relative to the file, and it
    /// reads only under the file's folder (symlinks resolved). A relative oci: base or target
    /// in it is relative to the file too.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["nick", "base", "to"])]
    pub recipe: Option<PathBuf>,
    /// Replace the recipe of a nick registered already: its next version is built from the
    /// new recipe (the nick answers its current version until then, and still does if the
    /// build fails); history and audit trail go on. (`--replace SRC:DEST` is a step.)
    #[arg(long)]
    pub replace_recipe: bool,
    /// The base image, usually a moving tag.
    #[arg(long, value_name = "REF", required_unless_present = "recipe")]
    pub base: Option<String>,
    /// Where versions go: a repository or a layout (oci:<dir>), without tag. A relative
    /// oci:<dir> (here or in --base) is recorded as an absolute path.
    #[arg(long, value_name = "REPO", required_unless_present = "recipe")]
    pub to: Option<String>,
    /// Platforms of a multi-platform base the nick has (repeatable; "all", the default, for
    /// every one): the nick is then an index of them, its layer built once, and a resolve
    /// rebuilds only the platforms whose base manifest moved. Attestation manifests of the base
    /// index are not carried over (they attest the base). A single --platform gives a nick of
    /// that platform's image alone.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]|all")]
    pub platform: Vec<String>,
    #[command(flatten)]
    pub steps: StepArgs,
    /// Upper bound of timestamps in what is built, seconds since 1970.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECS",
        default_value = "0"
    )]
    pub source_date_epoch: String,
    /// Print the version record as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The nick.
    pub nick: String,
    /// Say whether an upgrade is due ("upgrade due", exit status 0) or not ("current", exit
    /// status 3); change nothing.
    #[arg(long, conflicts_with = "offline")]
    pub check: bool,
    /// Answer the current version without asking the base.
    #[arg(long)]
    pub offline: bool,
    /// When the base cannot be reached: fail, or answer the last good version marked stale.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = UnreachableArg::Fail)]
    pub if_unreachable: UnreachableArg,
    /// Print JSON: reference, digest, version, upgraded, upgrade_due, stale, base_digest,
    /// previous_base_digest.
    #[arg(long)]
    pub json: bool,
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
pub enum UnreachableArg {
    Fail,
    Stale,
}

impl From<UnreachableArg> for ociup_core::managed::manager::Unreachable {
    fn from(arg: UnreachableArg) -> Self {
        match arg {
            UnreachableArg::Fail => Self::Fail,
            UnreachableArg::Stale => Self::Stale,
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Nicks to show (default: all).
    pub nicks: Vec<String>,
    /// Print a JSON array, one object per nick: nick; status (current, stale, pending, failed,
    /// removed, or unknown when the base cannot be reached); base; version, digest and
    /// base_digest of the current version (null while pending); current_base_digest (what the
    /// base points to now, null when unknown); signed (true or false) and signer (the signing
    /// key's id, when recorded); error (why it failed or is unknown, else null).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The nick.
    pub nick: String,
    /// Print a JSON array of the version records, newest first; see docs/json.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key and PREFIX.pub; refuses to overwrite.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
    /// The key's algorithm. Both sign the same DSSE envelope; `--sign-key` and `ociup verify
    /// --key` read the algorithm from the PEM, so it is chosen only here.
    #[arg(
        long,
        value_name = "ALGORITHM",
        default_value = "ed25519",
        value_parser = clap::builder::TypedValueParser::try_map(
            clap::builder::PossibleValuesParser::new([
                clap::builder::PossibleValue::new("ed25519")
                    .help("Ed25519: short keys and signatures"),
                clap::builder::PossibleValue::new("p256").help(
                    "ECDSA on NIST P-256 with SHA-256, signatures in ASN.1 DER as cosign writes them; \
                     for policies that ask for a NIST curve"
                ),
            ]),
            |s| s.parse::<ociup_core::managed::build_manifest::Algorithm>(),
        ),
    )]
    pub algorithm: ociup_core::managed::build_manifest::Algorithm,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A nick (its current version) or an image reference.
    pub target: String,
    /// The public key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Print what was checked as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub catalog: CatalogArgs,
}

#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// The image to rebase (a layout or registry reference).
    pub image: String,
    /// The base the image was built on (default: recorded in the image).
    #[arg(long, value_name = "REF")]
    pub old_base: Option<String>,
    /// The base to put it on (default: the recorded base name, looked up again).
    #[arg(long, value_name = "REF")]
    pub new_base: Option<String>,
    /// Write the result under this tag of the image's repository (default: the image's tag).
    #[arg(long, conflicts_with = "to")]
    pub tag: Option<String>,
    /// Write the result here instead (a layout or registry reference with a tag).
    #[arg(long, value_name = "REF")]
    pub to: Option<String>,
    /// Rebase and write only this platform of an index. Repeatable.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Vec<String>,
    /// How the config is derived: three-way keeps what the image changed and takes the rest
    /// (PATH, JAVA_HOME, ...) from the new base; keep copies the image's config as is.
    #[arg(long, value_enum, default_value_t = ConfigModeArg::ThreeWay)]
    pub config: ConfigModeArg,
    /// Show the plan (layers, config changes, blobs to mount or copy, the result's digest) and
    /// write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result or plan as JSON, snake_case keys: reference, new_base, dry_run, digest,
    /// media_type, already_current, written, platforms (each: platform, digest, plan with
    /// already_current, removed_layers, added_layers, own_layers (digest, diff_id, size) and
    /// config_changes (field, old, new)), blobs (digest, size, action: present, mount, copy,
    /// mounted, copied), dropped_attestations.
    #[arg(long)]
    pub json: bool,
    /// `created` of the new config, in seconds since 1970 (default: the image's).
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECS")]
    pub source_date_epoch: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConfigModeArg {
    ThreeWay,
    Keep,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// What to copy.
    pub source: String,
    /// Where to: a layout or registry reference. With a tag, the copy is tagged; oci:<dir>
    /// without one lists it untagged in the layout, and a repository without one means :latest.
    pub destination: String,
    /// Copy only this platform of an index; the destination gets that platform's manifest.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Blobs moved at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Into a layout: read every blob it already holds and check its digest, writing again
    /// those that do not match (without it, a blob of the right size counts as present).
    #[arg(long)]
    pub verify: bool,
    /// Print JSON instead of text, and no progress bar: source, destination, report (digest,
    /// media_type, manifests_written, manifests_present, tags_written, blobs_copied,
    /// blobs_mounted, blobs_present, blobs_repaired, bytes_copied).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Write a new index over manifests of one store, in the order given, each entry's platform
    /// (os, architecture, variant, os.version, os.features) read from the manifest's config.
    /// The manifests must all be Docker's or all OCI's, one per platform.
    ///
    /// Example: ociup index create --to oci:out:app oci:out:app-amd64 oci:out:app-arm64
    Create(IndexCreateArgs),
    /// Add manifests of the index's store to the index --to names, after its entries; a
    /// platform it has already is refused (remove it first).
    ///
    /// Example: ociup index add --to oci:out:app oci:out:app-s390x
    Add(IndexCreateArgs),
    /// Remove the entries of a platform, or of a manifest digest, from the index --to names.
    /// The manifests stay in the store.
    ///
    /// Example: ociup index remove --to oci:out:app --platform linux/arm64
    Remove(IndexRemoveArgs),
}

#[derive(Debug, Args)]
pub struct IndexCreateArgs {
    /// The index to write (create) or change (add), with its tag.
    #[arg(long, value_name = "REF")]
    pub to: String,
    /// The manifests, each a reference in the same layout or repository as --to.
    #[arg(value_name = "MANIFEST_REF", required = true)]
    pub manifests: Vec<String>,
    /// Print JSON: reference, tag, digest, media_type, size, manifests (each: platform, digest).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["platform", "digest"])))]
pub struct IndexRemoveArgs {
    /// The index to change, with its tag.
    #[arg(long, value_name = "REF")]
    pub to: String,
    /// Remove this platform's entries (without variant: of every variant).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Remove the entry of this manifest.
    #[arg(long, value_name = "DIGEST")]
    pub digest: Option<String>,
    /// Print JSON: reference, tag, digest, media_type, size, manifests (each: platform,
    /// digest), removed (digests).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Build one deterministic layer from files and directories and print its descriptor.
    ///
    /// A file goes in as <to>/<its name>; a directory's contents go under <to>. The same inputs
    /// give the same bytes on every run and machine: entries sorted, mtimes clamped to
    /// SOURCE_DATE_EPOCH (0 when unset), owner 0:0, permission bits (setuid, setgid, sticky),
    /// symlinks and hardlinks kept.
    Create(LayerCreateArgs),
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Layer options")]
pub struct LayerOpts {
    /// Layer compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,
    /// Compression level (gzip 0-9, default 6; zstd 1-22, default 3).
    #[arg(long)]
    pub level: Option<u32>,
    /// Compression threads (gzip). The bytes are the same whatever the number; default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Owner of every entry as UID:GID (default 0:0).
    #[arg(long, value_name = "UID:GID", conflicts_with = "keep_owner")]
    pub owner: Option<String>,
    /// Keep the owners files have on disk instead of 0:0: for a base built from a root file
    /// system (read as root), where /etc/shadow and home directories keep their owners.
    #[arg(long)]
    pub keep_owner: bool,
    /// Upper bound of every timestamp written, in seconds since 1970.
    #[arg(
        long,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECS",
        default_value = "0"
    )]
    pub source_date_epoch: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Args)]
pub struct LayerCreateArgs {
    /// Files and directories to put in the layer.
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<PathBuf>,
    /// Directory inside the image to put them in (such as /opt/app; a directory of the layer,
    /// not an image: `ociup append --to` writes images).
    #[arg(long, default_value = "/", value_name = "PATH")]
    pub to: String,
    /// Where to write the layer blob.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print the descriptor as JSON: media_type, digest, size, diff_id, compression, path.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layer: LayerOpts,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The image to start from (a layout or registry reference), or "scratch" for none.
    #[arg(long, value_name = "REF")]
    pub base: String,
    /// Where to write the result: a layout or registry reference with a tag (oci:<dir> without
    /// one lists it untagged; a repository without one means :latest).
    #[arg(long, value_name = "REF")]
    pub to: String,
    /// Platform to build from a multi-platform base (repeatable; "all", the default, for every
    /// one): one gives that platform's image, several an index of them. Of a scratch image: its
    /// platform (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]|all")]
    pub platform: Vec<String>,
    #[command(flatten)]
    pub steps: StepArgs,
    /// Print JSON: reference (pinned to the digest), tag, digest, media_type, size, config (its
    /// digest), layers (each: compression, digest, diff_id, size). For an index: digest,
    /// media_type and size are the index's, config is null, and platforms lists each platform
    /// (platform, digest, config, base_digest); dropped_attestations lists the base's
    /// attestation manifests left out.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layer: LayerOpts,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The image or index (a layout or registry reference).
    pub reference: String,
    /// The directory to unpack into: absent or empty.
    pub dir: PathBuf,
    /// The platform to unpack when the reference is an index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Whose owner the files get: auto (the layers' as root, yours otherwise), layers (needs
    /// root or CAP_CHOWN), or caller (yours, as umoci --rootless; no device nodes then).
    #[arg(long, value_enum, default_value_t = crate::cmd::unpack::OwnersArg::Auto)]
    pub owners: crate::cmd::unpack::OwnersArg,
    /// Print JSON: reference, digest, dir, layers, files, directories, symlinks, hardlinks,
    /// devices, whiteouts, bytes, owners_from_layers, xattrs_skipped, skipped.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image or index (a layout or registry reference).
    pub reference: String,
    /// Show this platform's manifest when the reference is an index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print JSON: reference, digest, media_type, and the manifest and config of an image, or
    /// the index, as stored (with their OCI field names).
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Print the manifest's exact bytes.
    #[arg(long)]
    pub raw: bool,
}

/// The steps of `register` and `edit`: the flags of `ociup append`, kept in the order given.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// Add a file or tree at DEST.
    #[arg(long, value_name = "SRC:DEST")]
    pub add: Vec<String>,
    /// Replace a file of the base.
    #[arg(long, value_name = "SRC:DEST")]
    pub replace: Vec<String>,
    /// Remove a path of the base.
    #[arg(long, value_name = "PATH")]
    pub remove: Vec<String>,
    /// Hide the base's contents of a directory.
    #[arg(long, value_name = "DIR")]
    pub clear_dir: Vec<String>,
    /// Set an environment variable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Set the entrypoint (JSON array or one program).
    #[arg(long, value_name = "JSON|PATH")]
    pub entrypoint: Vec<String>,
    /// Set the default arguments (JSON array or one word).
    #[arg(long, value_name = "JSON|WORD")]
    pub cmd: Vec<String>,
    /// Set the working directory.
    #[arg(long, value_name = "DIR")]
    pub workdir: Vec<String>,
    /// Set the user.
    #[arg(long)]
    pub user: Vec<String>,
    /// Set a label.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Expose a port.
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub expose: Vec<String>,
    /// Declare a volume.
    #[arg(long, value_name = "PATH")]
    pub volume: Vec<String>,
    /// Set the stop signal.
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Vec<String>,
    /// Set a manifest annotation.
    #[arg(long, value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
}
