use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ociup_core::copy::{CopyEvent, CopyOptions, copy_image};
use ociup_core::store::Store;
use ociup_registry::AnyStore;

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::CopyArgs;
use crate::output;

pub async fn run(ctx: &Ctx, args: CopyArgs) -> Result<()> {
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let src_ref = parse_ref(&args.source)?;
    let dst_ref = parse_ref(&args.destination)?;
    let client = ctx.client(&[&src_ref, &dst_ref])?;
    let (src, reference) = open_for_reading(&src_ref, &client)?;
    let dst = dst_ref
        .open_for_writing(&client)
        .with_context(|| format!("opening {}", args.destination))?;
    let opts = CopyOptions {
        jobs: args.jobs,
        platform: parse_platform(args.platform.as_deref())?,
        verify: args.verify,
    };

    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {wide_bar} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let events = |e: CopyEvent| {
        if let Some(bar) = &bar {
            match e {
                CopyEvent::BlobStarted { size, .. } => bar.inc_length(size),
                CopyEvent::BlobBytes { bytes, .. } => bar.inc(bytes),
                CopyEvent::BlobDone { digest, how } => {
                    bar.set_message(format!("{} {how:?}", short(&digest.to_string())));
                }
                _ => {}
            }
        }
    };
    let report = copy_image(&src, &reference, &dst, dst_ref.tag(), &opts, &events)
        .await
        .with_context(|| format!("copying {} to {}", args.source, args.destination))?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let (AnyStore::Layout(l), None) = (&dst, dst_ref.tag()) {
        // An untagged copy is listed in index.json, so oci:<dir> finds it.
        let digest: ociup_core::Digest = report.digest.parse()?;
        let size = l.blob_size(&digest).await?.unwrap_or(0);
        let desc = oci_spec_descriptor(&report.media_type, size, &digest);
        l.put_tag(desc, None).await?;
    }
    if args.json {
        return output::json(&serde_json::json!({
            "source": args.source,
            "destination": args.destination,
            "report": report,
        }));
    }
    let tag = dst_ref.tag().map(|t| format!(" ({t})")).unwrap_or_default();
    output::line(format!(
        "{} -> {}\n  digest     {}\n  manifests  {} written, {} present\n  tags       {} written{tag}\n  blobs      {} copied ({} bytes), {} mounted, {} present, {} repaired",
        args.source,
        args.destination,
        report.digest,
        report.manifests_written,
        report.manifests_present,
        report.tags_written,
        report.blobs_copied,
        report.bytes_copied,
        report.blobs_mounted,
        report.blobs_present,
        report.blobs_repaired,
    ))?;
    Ok(())
}

fn oci_spec_descriptor(
    media_type: &str,
    size: u64,
    digest: &ociup_core::Digest,
) -> ociup_core::document::Descriptor {
    ociup_core::document::Descriptor::new(media_type.into(), size, digest.to_oci())
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}
