use anyhow::{Context, Result};
use ociup_core::ops;
use ociup_run::{Owners, UnpackOptions, unpack};

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::UnpackArgs;
use crate::output;

/// `--owners`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OwnersArg {
    Auto,
    Layers,
    Caller,
}

pub async fn run(ctx: &Ctx, args: UnpackArgs) -> Result<()> {
    let r = parse_ref(&args.reference)?;
    let client = ctx.client(&[&r])?;
    let (store, reference) = open_for_reading(&r, &client)?;
    let platform = parse_platform(args.platform.as_deref())?;
    let image = ops::load_image(&store, &reference, platform.as_ref())
        .await
        .with_context(|| format!("reading {}", args.reference))?;
    let options = UnpackOptions {
        owners: match args.owners {
            OwnersArg::Auto => Owners::Auto,
            OwnersArg::Layers => Owners::FromLayers,
            OwnersArg::Caller => Owners::Caller,
        },
    };
    let report = unpack(&store, &image, &args.dir, &options)
        .await
        .with_context(|| format!("unpacking {} into {}", args.reference, args.dir.display()))?;
    let digest = image.manifest.raw().digest().to_string();
    if args.json {
        return output::json(&serde_json::json!({
            "reference": args.reference,
            "digest": digest,
            "dir": args.dir.display().to_string(),
            "layers": report.layers,
            "files": report.files,
            "directories": report.directories,
            "symlinks": report.symlinks,
            "hardlinks": report.hardlinks,
            "devices": report.devices,
            "whiteouts": report.whiteouts,
            "bytes": report.bytes,
            "owners_from_layers": report.owners_from_layers,
            "xattrs_skipped": report.xattrs_skipped,
            "skipped": report.skipped,
        }));
    }
    output::line(format!(
        "unpacked {} ({digest}) into {}: {} layers, {} files ({} bytes), {} directories, \
         {} symlinks, {} hardlinks, {} devices, {} whiteouts; owners {}",
        args.reference,
        args.dir.display(),
        report.layers,
        report.files,
        report.bytes,
        report.directories,
        report.symlinks,
        report.hardlinks,
        report.devices,
        report.whiteouts,
        if report.owners_from_layers {
            "from the layers"
        } else {
            "yours (not root)"
        }
    ))?;
    for note in &report.skipped {
        output::line(format!("  skipped {note}"))?;
    }
    Ok(())
}
