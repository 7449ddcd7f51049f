use anyhow::{Context, Result, bail};
use ociup_core::cache::BlobCache;
use ociup_core::mutate::{ConfigMode, annotations};
use ociup_core::ops::load_document;
use ociup_core::ops::rebase::{
    OldBaseSource, RebaseOptions, RebaseOutcome, RebaseRequest, rebase_image, recorded_base,
};
use ociup_core::reference::LayoutRef;
use ociup_core::store::ManifestRef;
use ociup_core::{Digest, Error};
use ociup_registry::{AnyStore, StoreRef};

use super::{Ctx, open_for_reading, parse_ref};
use crate::args::{ConfigModeArg, RebaseArgs};
use crate::output;

/// Exit status when the image already sits on the new base.
pub const ALREADY_CURRENT: u8 = 3;

/// `name` pinned to `digest`, in the same store.
fn pinned_ref(name: &str, digest: &Digest) -> Result<StoreRef> {
    let d = digest.clone();
    Ok(match parse_ref(name)? {
        StoreRef::Layout(l) => StoreRef::Layout(LayoutRef {
            dir: l.dir,
            image: Some(ManifestRef::Digest(d)),
        }),
        StoreRef::Registry(r) => StoreRef::Registry(r.with_digest(d)),
    })
}

pub async fn run(ctx: &Ctx, args: RebaseArgs) -> Result<u8> {
    let image_ref = parse_ref(&args.image)?;
    // Each reference parsed once (a parse looks for a layout directory of that name).
    let explicit_old = args.old_base.as_deref().map(parse_ref).transpose()?;
    let explicit_new_ref = args.new_base.as_deref().map(parse_ref).transpose()?;
    let explicit_to = args.to.as_deref().map(parse_ref).transpose()?;
    // One client for the whole rebase (its connections and tokens are shared); a login given
    // on the command line applies to every reference named there.
    let client = ctx.client(
        &std::iter::once(&image_ref)
            .chain(&explicit_old)
            .chain(&explicit_new_ref)
            .chain(&explicit_to)
            .collect::<Vec<_>>(),
    )?;
    let (image_store, image) = open_for_reading(&image_ref, &client)?;
    let load_old = |r: StoreRef| {
        let client = &client;
        async move {
            let s = r.open(client)?;
            let m = match r.image() {
                Some(m) => m,
                None => s.default_image()?,
            };
            let doc = load_document(&s, &m).await?;
            Ok::<_, Error>((s, doc))
        }
    };
    // Bases named on the command line are read beside the image.
    let explicit_new = match &explicit_new_ref {
        Some(r) => Some(open_for_reading(r, &client)?),
        None => None,
    };
    let (doc, early_old, early_new) = tokio::join!(
        load_document(&image_store, &image),
        async {
            match &explicit_old {
                Some(r) => Some(load_old(r.clone()).await),
                None => None,
            }
        },
        async {
            match &explicit_new {
                Some((s, m)) => Some(load_document(s, m).await),
                None => None,
            }
        }
    );
    let doc = doc.with_context(|| format!("reading {}", args.image))?;
    let recorded = recorded_base(&image_store, &doc).await?;
    let (recorded_name, recorded_digest) = (recorded.name, recorded.digest);

    let new_name = match (&args.new_base, &recorded_name) {
        (Some(n), _) | (None, Some(n)) => n.clone(),
        (None, None) => bail!(
            "{} records no base (no {} annotation): name one with --new-base",
            args.image,
            annotations::BASE_NAME
        ),
    };
    let new_ref = match explicit_new_ref {
        Some(r) => r,
        None => parse_ref(&new_name)?,
    };
    let old_ref = match (&explicit_old, &recorded_name, &recorded_digest) {
        (Some(o), _, _) => Some((o.clone(), true)),
        (None, Some(n), Some(d)) => Some((pinned_ref(n, d)?, false)),
        _ => None,
    };
    let dest_ref = match (explicit_to, &args.tag) {
        (Some(to), _) => to,
        (None, Some(t)) => match &image_ref {
            StoreRef::Layout(l) => StoreRef::Layout(LayoutRef {
                dir: l.dir.clone(),
                image: Some(ManifestRef::Tag(t.clone())),
            }),
            StoreRef::Registry(r) => StoreRef::Registry(r.with_tag(t)),
        },
        (None, None) => {
            if image_ref.tag().is_none() {
                bail!(
                    "{} is not a tag: say where to write with --tag or --to",
                    args.image
                );
            }
            image_ref.clone()
        }
    };
    let (new_store, new_image) = match explicit_new {
        Some(opened) => opened,
        None => open_for_reading(&new_ref, &client)?,
    };
    let dest = dest_ref.open_for_writing(&client)?;

    // The old base (when not read yet) and the new base (when named by the image's record) are
    // independent: read at once.
    let (old_attempt, new_doc) = tokio::join!(
        async {
            match (&old_ref, early_old) {
                (Some(_), Some(loaded)) => Some(loaded),
                (Some((r, _)), None) => Some(load_old(r.clone()).await),
                (None, _) => None,
            }
        },
        async {
            match early_new {
                Some(loaded) => loaded,
                None => load_document(&new_store, &new_image).await,
            }
        }
    );
    // The recorded old base may be gone (deleted, garbage-collected): then the image's own
    // record of its base boundary is used.
    let mut old_store = None;
    if let (Some((r, explicit)), Some(attempt)) = (&old_ref, old_attempt) {
        match attempt {
            Ok(found) => old_store = Some(found),
            Err(
                e @ (Error::BlobNotFound { .. }
                | Error::TagNotFound { .. }
                | Error::InvalidLayout { .. }),
            ) if !explicit => {
                eprintln!(
                    "ociup: the recorded old base {r} is gone ({e}); using the layer count the \
                     image records"
                );
            }
            Err(e) => return Err(e).with_context(|| format!("reading the old base {r}")),
        }
    }
    let new_doc = new_doc.with_context(|| format!("rebasing {} onto {new_name}", args.image))?;
    let request =
        RebaseRequest::new(&image_store, doc, &new_store, new_image).new_base_loaded(new_doc);
    let request = match old_store.as_ref() {
        Some((s, doc)) => request.old_base(OldBaseSource::Loaded(s, Box::new(doc.clone()))),
        None => request,
    };
    let opts = RebaseOptions {
        config: match args.config {
            ConfigModeArg::ThreeWay => ConfigMode::ThreeWay,
            ConfigModeArg::Keep => ConfigMode::Keep,
        },
        platforms: args
            .platform
            .iter()
            .map(|p| p.parse().with_context(|| format!("parsing --platform {p}")))
            .collect::<Result<_>>()?,
        created: args
            .source_date_epoch
            .as_deref()
            .map(ociup_core::time::parse_epoch)
            .transpose()?,
        new_base_name: Some(new_name.clone()),
        dry_run: args.dry_run,
        image_config: None,
        // The configs of the image and both bases, once read, cost no request again.
        cache: super::cache_dir().map(BlobCache::new),
    };
    let outcome = rebase_image(request, &dest, dest_ref.tag(), &opts)
        .await
        .with_context(|| format!("rebasing {} onto {new_name}", args.image))?;
    if let (AnyStore::Layout(l), None, Some(doc), false) =
        (&dest, dest_ref.tag(), &outcome.document, args.dry_run)
    {
        // An untagged result is listed in index.json, so oci:<dir> finds it.
        l.put_tag(doc.descriptor(), None).await?;
    }
    print(&args, &dest_ref, &new_name, &outcome)?;
    Ok(if outcome.already_current {
        ALREADY_CURRENT
    } else {
        0
    })
}

fn print(args: &RebaseArgs, dest: &StoreRef, new_base: &str, o: &RebaseOutcome) -> Result<()> {
    if args.json {
        let mut v = serde_json::to_value(o)?;
        v["reference"] = dest.to_string().into();
        v["new_base"] = new_base.into();
        v["dry_run"] = args.dry_run.into();
        return output::json(&v);
    }
    if o.already_current {
        output::line(format!(
            "{} already sits on {new_base} ({})",
            args.image, o.digest
        ))?;
        return Ok(());
    }
    let verb = if args.dry_run { "would write" } else { "wrote" };
    let mut lines = vec![
        format!("{} -> {dest} on {new_base}", args.image),
        format!("  {verb} {}", o.digest),
    ];
    for p in &o.platforms {
        let label = p.platform.clone().unwrap_or_else(|| "image".into());
        if p.plan.already_current {
            lines.push(format!("  {label}: already current"));
            continue;
        }
        lines.push(format!(
            "  {label}: {} -> {} base layers, {} own layers kept, manifest {}",
            p.plan.removed_layers.len(),
            p.plan.added_layers.len(),
            p.plan.own_layers.len(),
            p.digest
        ));
        if args.dry_run {
            for l in &p.plan.removed_layers {
                lines.push(format!("    - {} ({} B)", l.digest, l.size));
            }
            for l in &p.plan.added_layers {
                lines.push(format!("    + {} ({} B)", l.digest, l.size));
            }
        }
        for c in &p.plan.config_changes {
            lines.push(format!("    {}: {} -> {}", c.field, c.old, c.new));
        }
    }
    if args.dry_run {
        for b in &o.blobs {
            lines.push(format!("  blob {} ({} B): {}", b.digest, b.size, b.action));
        }
    } else {
        let count = |a: &str| o.blobs.iter().filter(|b| b.action == a).count();
        lines.push(format!(
            "  blobs: {} present, {} mounted, {} copied",
            count("present"),
            count("mounted"),
            count("copied")
        ));
    }
    for a in &o.dropped_attestations {
        lines.push(format!("  dropped attestation {a}"));
    }
    output::line(lines.join("\n"))?;
    Ok(())
}
