use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use ociup_core::config::ConfigChange;
use ociup_core::layer::LayerBuilder;
use ociup_core::ops::{self, AppendBase, AppendRequest};
use ociup_core::reference::PlatformSpec;
use ociup_core::store::ManifestRef;
use ociup_registry::{AnyStore, StoreRef};

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::AppendArgs;
use crate::output;

fn key_value(flag: &str, s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("--{flag} {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        bail!("--{flag} {s:?}: the key is empty");
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// A JSON array of strings, or one string.
fn string_list(flag: &str, s: &str) -> Result<Vec<String>> {
    if s.trim_start().starts_with('[') {
        serde_json::from_str(s).with_context(|| format!("--{flag}: not a JSON array of strings"))
    } else {
        Ok(vec![s.to_owned()])
    }
}

fn host_platform() -> PlatformSpec {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    PlatformSpec {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}

fn changes(args: &AppendArgs) -> Result<Vec<ConfigChange>> {
    let mut c = Vec::new();
    for e in &args.env {
        let (k, v) = key_value("env", e)?;
        c.push(ConfigChange::Env(k, v));
    }
    if let Some(e) = &args.entrypoint {
        c.push(ConfigChange::Entrypoint(string_list("entrypoint", e)?));
    }
    if let Some(e) = &args.cmd {
        c.push(ConfigChange::Cmd(string_list("cmd", e)?));
    }
    if let Some(w) = &args.workdir {
        c.push(ConfigChange::WorkingDir(w.clone()));
    }
    if let Some(u) = &args.user {
        c.push(ConfigChange::User(u.clone()));
    }
    for l in &args.label {
        let (k, v) = key_value("label", l)?;
        c.push(ConfigChange::Label(k, v));
    }
    for p in &args.expose {
        c.push(ConfigChange::ExposePort(p.clone()));
    }
    for v in &args.volume {
        c.push(ConfigChange::Volume(v.clone()));
    }
    if let Some(s) = &args.stop_signal {
        c.push(ConfigChange::StopSignal(s.clone()));
    }
    Ok(c)
}

pub async fn run(ctx: &Ctx, args: AppendArgs) -> Result<()> {
    let opts = super::layer_options(&args.layer)?;
    let created = opts.epoch;
    let platform = parse_platform(args.platform.as_deref())?;

    // Check everything the user gave before anything is written.
    let mut builder = LayerBuilder::new(opts);
    let mut steps = Vec::new();
    for add in &args.add {
        let (src, dest) = add
            .rsplit_once(':')
            .with_context(|| format!("--add {add:?}: expected SRC:DEST"))?;
        builder
            .add(src, dest)
            .with_context(|| format!("--add {add}"))?;
        steps.push(format!("ADD {dest}"));
    }
    for r in &args.remove {
        builder.remove(r).with_context(|| format!("--remove {r}"))?;
        steps.push(format!("REMOVE {r}"));
    }
    for d in &args.clear_dir {
        builder
            .clear_dir(d)
            .with_context(|| format!("--clear-dir {d}"))?;
        steps.push(format!("CLEAR {d}"));
    }
    let mut annotations = BTreeMap::new();
    for a in &args.annotation {
        let (k, v) = key_value("annotation", a)?;
        annotations.insert(k, v);
    }
    let request = AppendRequest {
        layers: if steps.is_empty() {
            Vec::new()
        } else {
            vec![(builder, format!("ociup append: {}", steps.join("; ")))]
        },
        changes: changes(&args)?,
        annotations,
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
    // Layers are built into a temporary file next to the blobs of a layout (one rename away),
    // or in the system's temporary directory on the way to a registry.
    let staging = match &dest {
        AnyStore::Layout(l) => l.root().join("blobs"),
        AnyStore::Registry(_) => std::env::temp_dir(),
    };

    let outcome = match &base_ref {
        None => {
            let p = platform.unwrap_or_else(host_platform);
            ops::append_image::<AnyStore, _>(
                AppendBase::Scratch(&p),
                &dest,
                dest_ref.tag(),
                request,
                &staging,
            )
            .await
        }
        Some(base_ref) => {
            let (store, reference) = open_for_reading(base_ref, &client)?;
            let image = ops::load_image(&store, &reference, platform.as_ref())
                .await
                .with_context(|| format!("reading base {}", args.base))?;
            ops::append_image(
                AppendBase::Image {
                    store: &store,
                    image: &image,
                    name: &args.base,
                },
                &dest,
                dest_ref.tag(),
                request,
                &staging,
            )
            .await
        }
    }
    .with_context(|| format!("appending to {}", args.base))?;
    if let (AnyStore::Layout(l), None) = (&dest, dest_ref.tag()) {
        // An untagged result is listed in index.json, so oci:<dir> finds it.
        l.set_tag(&outcome.manifest.descriptor(), None)?;
    }

    let digest = outcome.manifest.digest();
    let written = pinned(&dest_ref, digest);
    if args.json {
        output::json(&serde_json::json!({
            "reference": written,
            "digest": digest.to_string(),
            "mediaType": outcome.manifest.media_type(),
            "size": outcome.manifest.size(),
            "config": outcome.config.digest().to_string(),
            "layers": outcome.layers,
        }))
    } else {
        output::line(format!("{written}\n  digest  {digest}"))?;
        for l in &outcome.layers {
            output::line(format!("  layer   {} ({} bytes)", l.digest, l.size))?;
        }
        Ok(())
    }
}

/// The reference of what was written, pinned to its digest.
fn pinned(r: &StoreRef, digest: &ociup_core::Digest) -> String {
    match r {
        StoreRef::Layout(l) => match l.tag() {
            Some(t) => format!("oci:{}:{t}@{digest}", l.dir.display()),
            None => format!("oci:{}@{digest}", l.dir.display()),
        },
        StoreRef::Registry(reg) => format!("docker://{}", reg.with_digest(digest.clone())),
    }
}
