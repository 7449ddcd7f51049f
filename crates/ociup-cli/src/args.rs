//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps custom container images on the newest version of their base image, without Docker,
/// without a daemon and without rebuilding.
///
/// Images are named by store references. An OCI image layout directory is written
/// oci:<dir>[:<tag>|@<digest>], as skopeo writes it; a layout is created when it is written to
/// and does not exist yet.
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build layers.
    #[command(subcommand)]
    Layer(LayerCommand),
    /// Append files, removals and config changes to an image, as one new layer.
    ///
    /// Example: ociup append --base oci:fixtures/base:v1 --add ./app:/opt/app
    /// --env APP_HOME=/opt/app --entrypoint /opt/app/run --to oci:out:app
    Append(Box<AppendArgs>),
    /// Show an image or index: digest, platform, config, layers.
    Inspect(InspectArgs),
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
    /// Keep the owners files have on disk instead of 0:0.
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
    /// Directory inside the image to put them in.
    #[arg(long, default_value = "/", value_name = "PATH")]
    pub to: String,
    /// Where to write the layer blob.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print the descriptor as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layer: LayerOpts,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The image to start from (oci:<dir>[:<tag>|@<digest>]), or "scratch" for none.
    #[arg(long, value_name = "REF")]
    pub base: String,
    /// Where to write the result (oci:<dir>[:<tag>]).
    #[arg(long, value_name = "REF")]
    pub to: String,
    /// Platform to pick from a multi-platform base, or of a scratch image (default: this
    /// machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Add a file or directory at DEST (a directory's contents go under DEST). Repeatable.
    #[arg(long, value_name = "SRC:DEST")]
    pub add: Vec<String>,
    /// Remove a path of the base (a whiteout). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub remove: Vec<String>,
    /// Hide everything the base has under a directory, keeping the directory (an opaque
    /// whiteout). Repeatable.
    #[arg(long, value_name = "DIR")]
    pub clear_dir: Vec<String>,
    /// Set an environment variable (replaces the base's value of KEY in place). Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Set the entrypoint: a JSON array (["/app","--serve"]) or one program path. Clears the
    /// base's cmd unless --cmd is given too, as a Dockerfile does.
    #[arg(long, value_name = "JSON|PATH")]
    pub entrypoint: Option<String>,
    /// Set the default arguments: a JSON array or one word.
    #[arg(long, value_name = "JSON|WORD")]
    pub cmd: Option<String>,
    /// Set the working directory.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set the user (name, UID or UID:GID).
    #[arg(long)]
    pub user: Option<String>,
    /// Set a label. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Expose a port (8080, 53/udp). Repeatable.
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub expose: Vec<String>,
    /// Declare a volume. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub volume: Vec<String>,
    /// Set the stop signal (SIGTERM, 15).
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Set an annotation on the new manifest. Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layer: LayerOpts,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image or index (oci:<dir>[:<tag>|@<digest>]).
    pub reference: String,
    /// Show this platform's manifest when the reference is an index.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print JSON: the manifest or index and, for an image, its config.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Print the manifest's exact bytes.
    #[arg(long)]
    pub raw: bool,
}
