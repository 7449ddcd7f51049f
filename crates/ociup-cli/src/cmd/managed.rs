//! register, resolve, status, history, keygen, verify.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ArgMatches;
use ociup_core::layout::OciLayout;
use ociup_core::managed::build_manifest::{Key, PublicKey};
use ociup_core::managed::catalog::BlobCache;
use ociup_core::managed::gc::{self, SweepOptions};
use ociup_core::managed::manager::{self, Manager, ManagerOptions, Registration, ResolveOptions};
use ociup_core::managed::recipe::{Recipe, SourceAccess, Step};
use ociup_core::store::ManifestRef;
use ociup_registry::{AnyStore, Opener, StoreRef};

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::{
    CatalogArgs, EditArgs, GcArgs, HistoryArgs, KeygenArgs, RegisterArgs, ReplayArgs, ResolveArgs,
    SigningArgs, StatusArgs, UnregisterArgs, UpgradeArgs, VerifyArgs,
};
use crate::output;

/// The catalog reference: the flag, OCIUP_CATALOG, or a layout under the user's data directory.
fn catalog_ref(args: &CatalogArgs) -> Result<String> {
    if let Some(c) = &args.catalog {
        return Ok(c.clone());
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("no --catalog, OCIUP_CATALOG, XDG_DATA_HOME or HOME to place the catalog")?;
    Ok(format!("oci:{}", data.join("ociup/catalog").display()))
}

/// The catalog's manager, as every command that reads or writes nicks makes it (also `run`
/// and `job`).
pub(crate) fn manager(
    ctx: &Ctx,
    catalog: &CatalogArgs,
    signing: Option<&SigningArgs>,
    epoch: u64,
    platform: Option<&str>,
) -> Result<Manager<Opener>> {
    manager_with(
        ctx,
        catalog,
        signing,
        (epoch, platform),
        SourceAccess::Confined,
    )
}

/// [`manager`] for `edit` and `replay`, which say what a stored recipe may read.
fn manager_with(
    ctx: &Ctx,
    catalog: &CatalogArgs,
    signing: Option<&SigningArgs>,
    (epoch, platform): (u64, Option<&str>),
    stored_sources: SourceAccess,
) -> Result<Manager<Opener>> {
    let cref = parse_ref(&catalog_ref(catalog)?)?;
    let client = ctx.client(&[&cref])?;
    let store = cref
        .open_for_writing(&client)
        .context("opening the catalog")?;
    let key = match signing.and_then(|s| s.sign_key.as_ref()) {
        Some(p) => Some(Key::load(p)?),
        None => None,
    };
    let actor = signing
        .and_then(|s| s.actor.clone())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    Ok(Manager::new(
        Opener::new(client),
        store,
        ManagerOptions {
            actor,
            key,
            epoch,
            platform: parse_platform(platform)?,
            platforms: Vec::new(),
            stored_sources,
            cache: super::cache_dir().map(BlobCache::new),
            unsigned: signing.is_some_and(|s| s.unsigned),
        },
    ))
}

/// What a recipe read back from the catalog may read: only under the directory, unless
/// `--allow-outside`.
fn stored_sources(allow_outside: bool) -> SourceAccess {
    if allow_outside {
        SourceAccess::Anywhere
    } else {
        SourceAccess::Confined
    }
}

/// The step flags (of `append`, `register` and `edit`), in the order they were given.
pub(crate) fn ordered_steps(m: &ArgMatches) -> Result<Vec<Step>> {
    let split = |flag: &str, v: &str, sep: char| -> Result<(String, String)> {
        let (a, b) = if sep == ':' {
            v.rsplit_once(sep)
        } else {
            v.split_once(sep)
        }
        .with_context(|| format!("--{flag} {v:?}: expected two parts separated by {sep:?}"))?;
        Ok((a.to_owned(), b.to_owned()))
    };
    let list = |flag: &str, v: &str| -> Result<Vec<String>> {
        if v.trim_start().starts_with('[') {
            serde_json::from_str(v)
                .with_context(|| format!("--{flag}: not a JSON array of strings"))
        } else {
            Ok(vec![v.to_owned()])
        }
    };
    let mut steps: Vec<(usize, Step)> = Vec::new();
    for id in [
        "add",
        "replace",
        "remove",
        "clear_dir",
        "env",
        "entrypoint",
        "cmd",
        "workdir",
        "user",
        "label",
        "expose",
        "volume",
        "stop_signal",
        "annotation",
    ] {
        let (Some(values), Some(indices)) = (m.get_many::<String>(id), m.indices_of(id)) else {
            continue;
        };
        let flag = id.replace('_', "-");
        for (v, i) in values.zip(indices) {
            let step = match id {
                "add" => {
                    let (src, dest) = split(&flag, v, ':')?;
                    Step::Add { src, dest }
                }
                "replace" => {
                    let (src, dest) = split(&flag, v, ':')?;
                    Step::Replace { src, dest }
                }
                "remove" => Step::Remove { path: v.clone() },
                "clear_dir" => Step::ClearDir { path: v.clone() },
                "env" => {
                    let (key, value) = split(&flag, v, '=')?;
                    Step::Env { key, value }
                }
                "entrypoint" => Step::Entrypoint {
                    args: list(&flag, v)?,
                },
                "cmd" => Step::Cmd {
                    args: list(&flag, v)?,
                },
                "workdir" => Step::Workdir { path: v.clone() },
                "user" => Step::User { user: v.clone() },
                "label" => {
                    let (key, value) = split(&flag, v, '=')?;
                    Step::Label { key, value }
                }
                "expose" => Step::Expose { port: v.clone() },
                "volume" => Step::Volume { path: v.clone() },
                "stop_signal" => Step::StopSignal { signal: v.clone() },
                _ => {
                    let (key, value) = split(&flag, v, '=')?;
                    Step::Annotation { key, value }
                }
            };
            steps.push((i, step));
        }
    }
    steps.sort_by_key(|(i, _)| *i);
    Ok(steps.into_iter().map(|(_, s)| s).collect())
}

/// The recipe `register` registers, from `--recipe FILE` or the step flags, checked (the files
/// it reads included) before anything is written, a relative `oci:` base or target made
/// absolute: the recipe, the folder its sources are read under, and what they may read. Also
/// what `register --server` uploads (client.rs).
pub(crate) fn registration_recipe(
    args: &RegisterArgs,
    matches: &ArgMatches,
) -> Result<(Recipe, PathBuf, SourceAccess)> {
    // A recipe file reads only under its folder; steps typed here read what they name.
    let (recipe, dir, access) = match &args.recipe {
        Some(file) => {
            let bytes = std::fs::read(file)
                .with_context(|| format!("reading recipe {}", file.display()))?;
            let recipe = Recipe::parse(&bytes, &file.display().to_string())?;
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned();
            (recipe, dir, SourceAccess::Confined)
        }
        None => {
            let recipe = Recipe {
                nick: args.nick.clone().unwrap_or_default(),
                base: args.base.clone().unwrap_or_default(),
                target: args.to.clone().unwrap_or_default(),
                steps: ordered_steps(matches)?,
            };
            ociup_core::managed::recipe::validate_nick(&recipe.nick)?;
            (recipe, PathBuf::from("."), SourceAccess::Anywhere)
        }
    };
    super::parse_repository("--to", &recipe.target)?;
    // Everything the user gave is checked before anything (the catalog included) is written.
    recipe
        .check(&dir, access)
        .with_context(|| format!("registering {}", recipe.nick))?;
    parse_ref(&recipe.base)?;
    // A relative oci: directory is recorded absolute (against the recipe's folder), so the nick
    // resolves to the same layout from anywhere.
    let mut recipe = recipe;
    recipe.base = ociup_registry::absolute_reference(&recipe.base, &dir)?;
    recipe.target = ociup_registry::absolute_reference(&recipe.target, &dir)?;
    Ok((recipe, dir, access))
}

pub async fn register(ctx: &Ctx, args: RegisterArgs, matches: &ArgMatches) -> Result<()> {
    let (recipe, dir, access) = registration_recipe(&args, matches)?;
    let epoch = ociup_core::time::parse_epoch(&args.source_date_epoch)?;
    // `--platform`: none or `all` for every platform of an index base, one for that platform's
    // image, several for an index of them.
    if args.platform.iter().any(|p| p == "all") && args.platform.len() > 1 {
        bail!("--platform all names every platform: give it alone");
    }
    let named: Vec<&String> = args.platform.iter().filter(|p| *p != "all").collect();
    let one = match named.as_slice() {
        [p] => Some(p.as_str()),
        _ => None,
    };
    let mut m = manager(ctx, &args.catalog, Some(&args.signing), epoch, one)?;
    if named.len() > 1 {
        let mut several = Vec::with_capacity(named.len());
        for p in named {
            several.extend(parse_platform(Some(p))?);
        }
        m = m.with_platforms(several);
    }
    let nick = recipe.nick.clone();
    let mut registration = Registration::new(recipe, dir);
    registration.access = access;
    registration.replace = args.replace_recipe;
    if args.replace_recipe {
        registration.command.push_str(" --replace-recipe");
    }
    let record = m
        .register(registration)
        .await
        .with_context(|| format!("registering {nick}"))?;
    if args.json {
        return output::json(&serde_json::to_value(&record)?);
    }
    output::line(format!(
        "registered {} version {}\n  {}\n  base {} ({})",
        record.nick, record.number, record.image, record.base, record.base_digest
    ))?;
    for p in &record.platforms {
        output::line(format!(
            "  {:<16} {}  base {}",
            p.platform, p.digest, p.base_digest
        ))?;
    }
    Ok(())
}

/// `resolve --check`: an upgrade is due (as rebase's 0, there is something to do).
const CHECK_UPGRADE_DUE: u8 = 0;
/// `resolve --check`: current, nothing to do (as rebase's 3).
const CHECK_CURRENT: u8 = 3;

/// Exit status: 0 answered; with --check, 0 upgrade due and 3 current; 1 failed.
pub async fn resolve(ctx: &Ctx, args: ResolveArgs) -> Result<u8> {
    let epoch = ociup_core::time::parse_epoch(&args.source_date_epoch)?;
    let m = manager(ctx, &args.catalog, Some(&args.signing), epoch, None)?;
    let resolved = m
        .resolve(
            &args.nick,
            ResolveOptions {
                check: args.check,
                offline: args.offline,
                unreachable: args.if_unreachable.into(),
                ..ResolveOptions::default()
            },
        )
        .await;
    let r = match resolved {
        Ok(r) => r,
        Err(ociup_core::Error::Backend(e)) if e.is::<manager::BaseUnreachable>() => bail!(
            "resolving {}: {:#}; to answer the last good version instead (marked stale), pass \
             --if-unreachable stale",
            args.nick,
            anyhow::Error::from_boxed(e)
        ),
        Err(e) => return Err(e).with_context(|| format!("resolving {}", args.nick)),
    };
    if r.stale {
        eprintln!(
            "ociup: the base of {} cannot be reached; answering the last good version (stale)",
            r.nick
        );
        if args.check {
            bail!(
                "cannot tell whether an upgrade is due: the base of {} cannot be reached",
                r.nick
            );
        }
    }
    let status = match (args.check, r.upgrade_due) {
        (false, _) => 0,
        (true, true) => CHECK_UPGRADE_DUE,
        (true, false) => CHECK_CURRENT,
    };
    if !r.dropped_platforms.is_empty() {
        eprintln!(
            "ociup: the base of {} no longer has {}: version {} is made without",
            r.nick,
            r.dropped_platforms.join(", "),
            r.version
        );
    }
    if args.json {
        output::json(&serde_json::to_value(&r)?)?;
        return Ok(status);
    }
    if args.check {
        output::line(if r.upgrade_due {
            "upgrade due"
        } else {
            "current"
        })?;
        return Ok(status);
    }
    if r.upgraded {
        eprintln!(
            "ociup: {} upgraded to version {} (base {})",
            r.nick, r.version, r.base_digest
        );
    }

    output::line(&r.reference)?;
    Ok(0)
}

pub async fn status(ctx: &Ctx, args: StatusArgs) -> Result<()> {
    let m = manager(ctx, &args.catalog, None, 0, None)?;
    let all = m.status(&args.nicks).await?;
    if args.json {
        return output::json(&serde_json::to_value(&all)?);
    }
    for s in &all {
        output::line(format!(
            "{:<20} {:<8} v{:<4} {:<8} {}",
            s.nick,
            s.status,
            s.version.map_or("-".into(), |v| v.to_string()),
            if s.signed { "signed" } else { "unsigned" },
            s.base
        ))?;
        for p in &s.platforms {
            output::line(format!(
                "  {:<18} {}  base {}",
                p.platform, p.digest, p.base_digest
            ))?;
        }
    }
    Ok(())
}

pub async fn history(ctx: &Ctx, args: HistoryArgs) -> Result<()> {
    let m = manager(ctx, &args.catalog, None, 0, None)?;
    let versions = m.history(&args.nick).await?;
    if args.json {
        return output::json(&serde_json::to_value(&versions)?);
    }
    for v in &versions {
        output::line(format!(
            "v{:<4} {}  {}  base {}  {} by {}",
            v.number, v.digest, v.reason, v.base_digest, v.time, v.actor
        ))?;
        for p in &v.platforms {
            output::line(format!(
                "      {:<16} {}  base {}{}",
                p.platform,
                p.digest,
                p.base_digest,
                if p.built_in == v.number {
                    String::new()
                } else {
                    format!("  (kept from v{})", p.built_in)
                }
            ))?;
        }
        if !v.dropped_platforms.is_empty() {
            output::line(format!(
                "      dropped (the base no longer has them): {}",
                v.dropped_platforms.join(", ")
            ))?;
        }
    }
    Ok(())
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let private = PathBuf::from(format!("{}.key", args.out.display()));
    let public = PathBuf::from(format!("{}.pub", args.out.display()));
    for p in [&private, &public] {
        if p.exists() {
            bail!("{} exists; not overwriting a key", p.display());
        }
    }
    let key = Key::generate_with(args.algorithm)?;
    let (priv_pem, pub_pem) = key.to_pem()?;
    let write = |p: &Path, text: &str, mode: u32| -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .with_context(|| format!("writing {}", p.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    };
    write(&private, &priv_pem, 0o600)?;
    write(&public, &pub_pem, 0o644)?;
    output::line(format!(
        "{}\n{}\n  {} key id {}",
        private.display(),
        public.display(),
        key.algorithm(),
        key.key_id()
    ))?;
    Ok(())
}

pub async fn verify(ctx: &Ctx, args: VerifyArgs) -> Result<()> {
    let key = PublicKey::load(&args.key)?;
    let is_nick = ociup_core::managed::recipe::validate_nick(&args.target).is_ok()
        && !args.target.contains(':');
    let checked = if is_nick {
        let m = manager(ctx, &args.catalog, None, 0, None)?;
        m.verify_nick(&args.target, &key).await
    } else {
        let r = parse_ref(&args.target)?;
        let client = ctx.client(&[&r])?;
        let (store, image): (AnyStore, ManifestRef) = open_for_reading(&r, &client)?;
        manager::verify(&store, &image, &key).await
    }
    .with_context(|| format!("verifying {}", args.target))?;
    if args.json {
        return output::json(&serde_json::to_value(&checked)?);
    }
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    output::line(format!(
        "verified {} ({} version {}): signature good, {} and {} as listed",
        checked.digest,
        checked.nick,
        checked.version,
        count(checked.layers, "own layer", "own layers"),
        count(checked.files, "entry", "entries"),
    ))?;
    for p in &checked.platforms {
        output::line(format!(
            "  {:<16} {}  verified (version {})",
            p.platform, p.digest, p.version
        ))?;
    }
    Ok(())
}

pub async fn replay(ctx: &Ctx, args: ReplayArgs) -> Result<u8> {
    let m = manager_with(
        ctx,
        &args.catalog,
        None,
        (0, None),
        stored_sources(args.allow_outside),
    )?;
    let (nick, number) = match args.target.split_once('@') {
        Some((n, v)) => (
            n.to_owned(),
            v.trim_start_matches('v')
                .parse::<u64>()
                .with_context(|| format!("{v:?} is not a version number"))?,
        ),
        None => {
            let h = m.history(&args.target).await?;
            (args.target.clone(), h.first().map_or(0, |v| v.number))
        }
    };
    let (got, recorded) = m
        .replay(&nick, number, &args.dir)
        .await
        .with_context(|| format!("replaying {nick}@{number}"))?;
    let same = got == recorded;
    if args.json {
        output::json(
            &serde_json::json!({"nick": nick, "version": number, "recorded": recorded, "replayed": got, "same": same}),
        )?;
    } else if same {
        output::line(format!(
            "{nick}@{number}: replay reached the recorded digest {recorded}"
        ))?;
    } else {
        output::line(format!(
            "{nick}@{number}: replay reached {got}, the recorded digest is {recorded}"
        ))?;
    }
    Ok(if same { 0 } else { 1 })
}

pub async fn edit(ctx: &Ctx, args: EditArgs, matches: &ArgMatches) -> Result<()> {
    let steps = ordered_steps(matches)?;
    if steps.is_empty() {
        bail!("no steps given: say what to add, remove or set");
    }
    let epoch = ociup_core::time::parse_epoch(&args.source_date_epoch)?;
    let m = manager_with(
        ctx,
        &args.catalog,
        Some(&args.signing),
        (epoch, None),
        stored_sources(args.allow_outside),
    )?;
    let command = std::iter::once(format!("ociup edit {}", args.nick))
        .chain(steps.iter().map(Step::command))
        .collect::<Vec<_>>()
        .join(" ");
    let record = m
        .edit(&args.nick, steps, Path::new("."), command)
        .await
        .with_context(|| format!("editing {}", args.nick))?;
    if args.json {
        return output::json(&serde_json::to_value(&record)?);
    }
    output::line(format!(
        "{} version {} ({}): {}",
        record.nick, record.number, record.reason, record.image
    ))?;
    Ok(())
}

pub async fn unregister(ctx: &Ctx, args: UnregisterArgs) -> Result<()> {
    let m = manager(ctx, &args.catalog, Some(&args.signing), 0, None)?;
    m.unregister(&args.nick, format!("ociup unregister {}", args.nick))
        .await
        .with_context(|| format!("unregistering {}", args.nick))?;
    output::line(format!(
        "unregistered {} (its images, history and audit trail stay)",
        args.nick
    ))?;
    Ok(())
}

pub async fn upgrade(ctx: &Ctx, args: UpgradeArgs) -> Result<u8> {
    let epoch = ociup_core::time::parse_epoch(&args.source_date_epoch)?;
    let m = manager(ctx, &args.catalog, Some(&args.signing), epoch, None)?;
    let results = m.upgrade_all().await?;
    let mut failed = false;
    let mut json_out = Vec::new();
    for (nick, r) in results {
        match r {
            Ok(r) if args.json => json_out.push(serde_json::to_value(&r)?),
            Ok(r) => {
                let what = if r.upgraded {
                    format!("upgraded to v{}", r.version)
                } else {
                    format!("current (v{})", r.version)
                };
                output::line(format!("{nick:<20} {what:<18} {}", r.reference))?;
            }
            Err(e) => {
                failed = true;
                if args.json {
                    json_out.push(serde_json::json!({"nick": nick, "error": format!("{e:#}")}));
                } else {
                    eprintln!("ociup: {nick}: {e:#}");
                }
            }
        }
    }
    if args.json {
        output::json(&serde_json::Value::Array(json_out))?;
    }
    Ok(u8::from(failed))
}

pub async fn gc(ctx: &Ctx, args: GcArgs) -> Result<()> {
    let m = manager(ctx, &args.catalog, None, 0, None)?;
    let nicks = if args.nicks.is_empty() {
        m.catalog().nicks().await?
    } else {
        args.nicks.clone()
    };
    let mut deleted_json = Vec::new();
    // The layouts to sweep: the catalog's and each nick's target, once each.
    let mut layouts = Vec::new();
    if let StoreRef::Layout(l) = parse_ref(&catalog_ref(&args.catalog)?)? {
        layouts.push(l.dir);
    }
    for nick in nicks {
        let target = match m.catalog().get(&nick).await? {
            Some(e) => e.recipe.target,
            None => bail!(
                "collecting {nick}: no managed image is registered as {nick:?} in {}",
                catalog_ref(&args.catalog)?
            ),
        };
        if let StoreRef::Layout(l) = parse_ref(&target)?
            && !layouts.contains(&l.dir)
        {
            layouts.push(l.dir);
        }
        let Some(keep) = args.keep else {
            continue;
        };
        let deleted = m
            .gc(&nick, keep)
            .await
            .with_context(|| format!("collecting {nick}"))?;
        if args.json {
            deleted_json.push(serde_json::json!({"nick": nick, "deleted": deleted}));
        } else {
            output::line(format!(
                "{nick:<20} {} old version(s) deleted",
                deleted.len()
            ))?;
        }
    }
    let opts = SweepOptions {
        min_age: std::time::Duration::from_secs(args.min_age),
    };
    let mut swept_json = Vec::new();
    for dir in layouts {
        // A target never written to (a registration that failed early) has nothing to sweep.
        if !dir.exists() {
            continue;
        }
        let layout = OciLayout::open(&dir)?;
        let swept = tokio::task::spawn_blocking(move || gc::sweep(&layout, opts))
            .await?
            .with_context(|| format!("sweeping oci:{}", dir.display()))?;
        if args.json {
            swept_json.push(serde_json::to_value(&swept)?);
        } else {
            output::line(format!(
                "{}: {} unreached blob(s) removed ({} bytes){}",
                swept.layout,
                swept.removed,
                swept.bytes,
                if swept.kept_recent > 0 {
                    format!(", {} newer than {}s kept", swept.kept_recent, args.min_age)
                } else {
                    String::new()
                }
            ))?;
        }
    }
    if args.json {
        output::json(&serde_json::json!({"nicks": deleted_json, "layouts": swept_json}))?;
    }
    Ok(())
}
