//! `ociup index create|add|remove`: parse the references, call the library, print the index.

use anyhow::{Context, Result, bail};
use ociup_core::document::{Document, RawDocument};
use ociup_core::ops::{self, IndexMember, IndexRemoval};
use ociup_core::store::Store;
use ociup_registry::{AnyStore, StoreRef};

use super::append::pinned;
use super::{Ctx, parse_platform, parse_ref};
use crate::args::{IndexCommand, IndexCreateArgs, IndexRemoveArgs};
use crate::output;

pub async fn run(ctx: &Ctx, command: IndexCommand) -> Result<()> {
    match command {
        IndexCommand::Create(args) => create_or_add(ctx, args, false).await,
        IndexCommand::Add(args) => create_or_add(ctx, args, true).await,
        IndexCommand::Remove(args) => remove(ctx, args).await,
    }
}

/// The index reference: a tag to write (and, for add and remove, to read).
fn index_ref(to: &str) -> Result<StoreRef> {
    let r = parse_ref(to)?;
    if r.tag().is_none() {
        bail!("--to {to}: name the index by a tag (oci:<dir>:<tag>, host/name:<tag>)");
    }
    Ok(r)
}

/// Whether two references are in one layout or repository.
fn same_store(a: &StoreRef, a_store: &AnyStore, b: &StoreRef, b_store: &AnyStore) -> bool {
    match (a, b) {
        (StoreRef::Layout(x), StoreRef::Layout(y)) => {
            match (std::fs::canonicalize(&x.dir), std::fs::canonicalize(&y.dir)) {
                (Ok(x), Ok(y)) => x == y,
                _ => x.dir == y.dir,
            }
        }
        (StoreRef::Registry(_), StoreRef::Registry(_)) => a_store.location() == b_store.location(),
        _ => false,
    }
}

/// The existing index at `to`.
async fn read_index(
    store: &AnyStore,
    to: &str,
    r: &StoreRef,
) -> Result<ociup_core::document::Index> {
    let reference = r.image().context("the index has a tag")?;
    match ops::load_document(store, &reference)
        .await
        .with_context(|| format!("reading the index {to}"))?
    {
        Document::Index(i) => Ok(i),
        Document::Manifest(m) => bail!(
            "{to} is a manifest ({}), not an index: make one with `ociup index create`",
            m.raw().digest()
        ),
    }
}

async fn create_or_add(ctx: &Ctx, args: IndexCreateArgs, add: bool) -> Result<()> {
    let to = index_ref(&args.to)?;
    let refs: Vec<StoreRef> = args
        .manifests
        .iter()
        .map(|m| parse_ref(m))
        .collect::<Result<_>>()?;
    let mut all: Vec<&StoreRef> = refs.iter().collect();
    all.push(&to);
    let client = ctx.client(&all)?;
    let store = to
        .open_for_writing(&client)
        .with_context(|| format!("opening {}", args.to))?;
    let mut members: Vec<IndexMember> = Vec::with_capacity(refs.len());
    for (text, r) in args.manifests.iter().zip(&refs) {
        let theirs = r.open(&client)?;
        if !same_store(r, &theirs, &to, &store) {
            bail!(
                "{text} is not in the store of --to {}: an index lists manifests of its own \
                 layout or repository (copy the image there first with `ociup copy`)",
                args.to
            );
        }
        let reference = match r.image() {
            Some(i) => i,
            None => theirs.default_image()?,
        };
        members.push(
            ops::index_member(&store, &reference)
                .await
                .with_context(|| format!("reading {text}"))?,
        );
    }
    let index = if add {
        let index = read_index(&store, &args.to, &to).await?;
        ops::add_to_index(&store, &index, &members, to.tag()).await
    } else {
        ops::create_index(&store, &members, to.tag()).await
    }
    .with_context(|| format!("writing the index {}", args.to))?;
    print(&to, &index, &[], args.json)
}

async fn remove(ctx: &Ctx, args: IndexRemoveArgs) -> Result<()> {
    let to = index_ref(&args.to)?;
    let removal = match (parse_platform(args.platform.as_deref())?, &args.digest) {
        (Some(p), None) => IndexRemoval::Platform(p),
        (None, Some(d)) => {
            IndexRemoval::Digest(d.parse().with_context(|| format!("parsing --digest {d}"))?)
        }
        _ => bail!("give --platform or --digest"),
    };
    let client = ctx.client(&[&to])?;
    let store = to
        .open_for_writing(&client)
        .with_context(|| format!("opening {}", args.to))?;
    let index = read_index(&store, &args.to, &to).await?;
    let (new, gone) = ops::remove_from_index(&store, &index, &removal, to.tag())
        .await
        .with_context(|| format!("changing the index {}", args.to))?;
    print(&to, &new, &gone, args.json)
}

fn print(to: &StoreRef, index: &RawDocument, removed: &[String], json: bool) -> Result<()> {
    let parsed = ociup_core::document::Index::parse(index.clone())?;
    let entries: Vec<(String, String)> = parsed
        .parsed()
        .manifests()
        .iter()
        .map(|m| {
            let platform = m.platform().as_ref().map_or_else(String::new, |p| {
                let mut s = format!("{}/{}", p.os(), p.architecture());
                if let Some(v) = p.variant() {
                    s = format!("{s}/{v}");
                }
                s
            });
            (platform, m.digest().to_string())
        })
        .collect();
    let written = pinned(to, index.digest());
    if json {
        let mut v = serde_json::json!({
            "reference": written,
            "tag": to.tag(),
            "digest": index.digest().to_string(),
            "media_type": index.media_type(),
            "size": index.size(),
            "manifests": entries.iter().map(|(p, d)| serde_json::json!({
                "platform": p, "digest": d,
            })).collect::<Vec<_>>(),
        });
        if !removed.is_empty() {
            v["removed"] = serde_json::json!(removed);
        }
        return output::json(&v);
    }
    output::line(format!("{written}\n  digest  {}", index.digest()))?;
    for (p, d) in &entries {
        output::line(format!("  {p:<14}{d}"))?;
    }
    for d in removed {
        output::line(format!("  removed {d}"))?;
    }
    Ok(())
}
