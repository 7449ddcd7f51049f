use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use ociup_core::managed::recipe::{Recipe, Step};
use ociup_core::ops::{
    self, AppendBase, AppendOptions, AppendRequest, AppendResult, BaseDocument, IndexAppendOutcome,
    PlatformChoice,
};
use ociup_core::reference::PlatformSpec;
use ociup_core::store::ManifestRef;
use ociup_registry::{AnyStore, StoreRef};

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::AppendArgs;
use crate::output;

fn host_platform() -> PlatformSpec {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    };
    PlatformSpec {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}

pub async fn run(ctx: &Ctx, args: AppendArgs, matches: &ArgMatches) -> Result<()> {
    let opts = super::layer_options(&args.layer)?;
    let created = opts.epoch;
    let platforms = platform_choice(&args.platform)?;

    // The steps, in the order given, checked before anything is written: the same code builds a
    // recipe's layer and config changes.
    let recipe = Recipe {
        nick: String::new(),
        base: args.base.clone(),
        target: args.to.clone(),
        steps: super::managed::ordered_steps(matches)?,
    };
    let lines: Vec<String> = recipe
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Add { dest, .. } => Some(format!("ADD {dest}")),
            Step::Replace { dest, .. } => Some(format!("REPLACE {dest}")),
            Step::Remove { path } => Some(format!("REMOVE {path}")),
            Step::ClearDir { path } => Some(format!("CLEAR {path}")),
            _ => None,
        })
        .collect();
    let layer = recipe.layer(Path::new(""), opts)?;
    let request = AppendRequest {
        layers: layer
            .map(|b| vec![(b, format!("ociup append: {}", lines.join("; ")))])
            .unwrap_or_default(),
        changes: recipe.config_changes(),
        annotations: recipe.annotations(),
        created,
    };

    let dest_ref = parse_ref(&args.to)?;
    if dest_ref.tag().is_none() && matches!(dest_ref.image(), Some(ManifestRef::Digest(_))) {
        bail!("--to {}: write to a tag, not a digest", args.to);
    }
    let base_ref = (args.base != "scratch")
        .then(|| parse_ref(&args.base))
        .transpose()?;
    let client = ctx.client(&[&dest_ref, base_ref.as_ref().unwrap_or(&dest_ref)])?;
    let dest = dest_ref
        .open_for_writing(&client)
        .with_context(|| format!("opening {}", args.to))?;
    // Layers are built into a temporary file next to the blobs of a layout (same filesystem),
    // or in the system's temporary directory on the way to a registry.
    let staging = match &dest {
        AnyStore::Layout(l) => l.root().join("blobs"),
        AnyStore::Registry(_) => std::env::temp_dir(),
    };

    let outcome = match &base_ref {
        None => {
            let p = match platforms {
                PlatformChoice::All => host_platform(),
                PlatformChoice::One(p) => p,
                PlatformChoice::Several(_) => bail!("--base scratch: give one --platform"),
            };
            ops::append_image::<AnyStore, _>(
                AppendBase::Scratch(&p),
                &dest,
                dest_ref.tag(),
                request,
                &staging,
            )
            .await
            .map(AppendResult::Image)
        }
        Some(base_ref) => {
            let (store, reference) = open_for_reading(base_ref, &client)?;
            let document = ops::load_document(&store, &reference)
                .await
                .with_context(|| format!("reading base {}", args.base))?;
            ops::append_to_base(
                BaseDocument {
                    store: &store,
                    document,
                    name: &args.base,
                },
                &dest,
                request,
                AppendOptions {
                    tag: dest_ref.tag(),
                    staging: &staging,
                    platforms,
                },
            )
            .await
        }
    }
    .with_context(|| format!("appending to {}", args.base))?;
    if let (AnyStore::Layout(l), None) = (&dest, dest_ref.tag()) {
        // An untagged result is listed in index.json, so oci:<dir> finds it.
        l.put_tag(outcome.document().descriptor(), None).await?;
    }
    let outcome = match outcome {
        AppendResult::Image(o) => o,
        AppendResult::Index(o) => return print_index(&dest_ref, &o, args.json),
    };

    let digest = outcome.manifest.digest();
    let written = pinned(&dest_ref, digest);
    if args.json {
        output::json(&serde_json::json!({
            "reference": written,
            "tag": dest_ref.tag(),
            "digest": digest.to_string(),
            "media_type": outcome.manifest.media_type(),
            "size": outcome.manifest.size(),
            "config": outcome.config.digest().to_string(),
            "layers": outcome.layers,
        }))
    } else {
        output::line(format!("{written}\n  digest  {digest}"))?;
        if let Some(tag) = dest_ref.tag() {
            output::line(format!("  tag     {tag}"))?;
        }
        for l in &outcome.layers {
            output::line(format!("  layer   {} ({} bytes)", l.digest, l.size))?;
        }
        Ok(())
    }
}

/// `--platform`, repeated: none or `all` for every platform of an index, one for that
/// platform's image, several for an index of them.
fn platform_choice(given: &[String]) -> Result<PlatformChoice> {
    if given.iter().any(|p| p == "all") {
        if given.len() > 1 {
            bail!("--platform all names every platform: give it alone");
        }
        return Ok(PlatformChoice::All);
    }
    let mut parsed = Vec::with_capacity(given.len());
    for p in given {
        if let Some(p) = parse_platform(Some(p))? {
            parsed.push(p);
        }
    }
    Ok(match parsed.len() {
        0 => PlatformChoice::All,
        1 => PlatformChoice::One(parsed.remove(0)),
        _ => PlatformChoice::Several(parsed),
    })
}

/// Prints what an append on an index base wrote.
fn print_index(dest_ref: &StoreRef, o: &IndexAppendOutcome, json: bool) -> Result<()> {
    let digest = o.index.digest();
    let written = pinned(dest_ref, digest);
    if json {
        return output::json(&serde_json::json!({
            "reference": written,
            "tag": dest_ref.tag(),
            "digest": digest.to_string(),
            "media_type": o.index.media_type(),
            "size": o.index.size(),
            "config": null,
            "layers": o.layers,
            "platforms": o.platforms.iter().map(|p| serde_json::json!({
                "platform": p.name(),
                "digest": p.manifest.digest().to_string(),
                "config": p.config.digest().to_string(),
                "base_digest": p.base.to_string(),
            })).collect::<Vec<_>>(),
            "dropped_attestations": o.dropped_attestations.iter().map(ToString::to_string)
                .collect::<Vec<_>>(),
        }));
    }
    output::line(format!("{written}\n  digest  {digest} (index)"))?;
    if let Some(tag) = dest_ref.tag() {
        output::line(format!("  tag     {tag}"))?;
    }
    for p in &o.platforms {
        output::line(format!("  {:<8}{}", p.name(), p.manifest.digest()))?;
    }
    for l in &o.layers {
        output::line(format!("  layer   {} ({} bytes)", l.digest, l.size))?;
    }
    for a in &o.dropped_attestations {
        output::line(format!("  dropped attestation {a}"))?;
    }
    Ok(())
}

/// The reference of what was written, pinned to its digest.
pub(super) fn pinned(r: &StoreRef, digest: &ociup_core::Digest) -> String {
    match r {
        // `oci:<dir>@<digest>`: the form that parses back (a layout reference names a tag or a
        // digest, not both).
        StoreRef::Layout(l) => format!("oci:{}@{digest}", l.dir.display()),
        StoreRef::Registry(reg) => format!("docker://{}", reg.with_digest(digest.clone())),
    }
}
