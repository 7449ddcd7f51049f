//! One module per command; each parses its arguments into library calls.

mod append;
mod inspect;
mod layer;

use anyhow::{Context, Result, bail};
use ociup_core::layer::{LayerOptions, Owner};
use ociup_core::layout::OciLayout;
use ociup_core::media_type::Compression;
use ociup_core::reference::{LayoutRef, PlatformSpec};
use ociup_core::store::ManifestRef;

use crate::args::{Cli, Command, CompressionArg, LayerCommand, LayerOpts};

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Layer(LayerCommand::Create(args)) => layer::create(args),
        Command::Append(args) => append::run(*args).await,
        Command::Inspect(args) => inspect::run(args).await,
    }
}

/// Parses a store reference. Only layouts exist so far; registry references come with
/// `ociup-registry`.
fn parse_ref(input: &str) -> Result<LayoutRef> {
    if !input.starts_with("oci:") {
        bail!(
            "unsupported reference {input:?}: this version reads and writes OCI layout \
             directories, written oci:<dir>[:<tag>|@<digest>]"
        );
    }
    Ok(LayoutRef::parse(input)?)
}

/// Opens the layout of a reference for reading, and what in it the reference names.
fn open_for_reading(input: &str) -> Result<(OciLayout, ManifestRef, LayoutRef)> {
    let r = parse_ref(input)?;
    let layout = OciLayout::open(&r.dir)?;
    let image = match &r.image {
        Some(i) => i.clone(),
        None => layout.sole_image()?,
    };
    Ok((layout, image, r))
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
