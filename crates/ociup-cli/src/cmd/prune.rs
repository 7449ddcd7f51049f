//! `ociup prune`: remove what the layer cache of `ociup run` holds and no run used lately.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ociup_run::PruneOptions;

use crate::output;

/// `ociup prune` arguments.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove what no run has used for this long: a number with s, m, h or d (`12h`, `7d`; `0`
    /// for everything not in use now).
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = parse_age)]
    pub older_than: Duration,
    /// Remove every cached layer and root file system that no run uses now (as
    /// --older-than 0).
    #[arg(long, conflicts_with = "older_than")]
    pub all: bool,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: cache, dry_run, removed (each: kind, digest, bytes, path), bytes, kept,
    /// in_use, partial, bundles.
    #[arg(long)]
    pub json: bool,
}

fn parse_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d, such as 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("{s:?}: unknown unit {other:?} (s, m, h or d)")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// The bundles of `ociup run`s that ended without removing them (ociup killed):
/// `DATA/bundles/ociup-PID-N` whose PID runs no process now, whose container runc no longer
/// knows (no `DATA/runc/ociup-PID-N`: a container still running keeps its state there), and
/// that were last changed longer than `older_than` ago. Removed unless `dry_run`; answers
/// their paths.
fn stale_bundles(older_than: Duration, dry_run: bool) -> Result<Vec<PathBuf>> {
    let data = super::run::data_dir()?;
    let bundles = data.join("bundles");
    let Ok(entries) = std::fs::read_dir(&bundles) else {
        return Ok(Vec::new());
    };
    let mut stale = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ociup-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        let known_to_runc = data.join("runc").join(&name).exists();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if alive || known_to_runc || !old || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if !dry_run {
            ociup_run::cache::remove_tree(&e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
        stale.push(e.path());
    }
    stale.sort();
    Ok(stale)
}

pub fn run(args: PruneArgs) -> Result<()> {
    let cache = super::run::layer_cache()?;
    let older_than = if args.all {
        Duration::ZERO
    } else {
        args.older_than
    };
    let bundles = stale_bundles(older_than, args.dry_run)?;
    let bundle_paths: Vec<String> = bundles.iter().map(|b| b.display().to_string()).collect();
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    if !args.json {
        for b in &bundle_paths {
            output::line(format!("{verb} the bundle of a killed run {b}"))?;
        }
    }
    if !cache.root().exists() {
        if args.json {
            return output::json(&serde_json::json!({
                "cache": cache.root().display().to_string(), "dry_run": args.dry_run,
                "removed": [], "bytes": 0, "kept": 0, "in_use": 0, "partial": 0,
                "bundles": bundle_paths,
            }));
        }
        output::line(format!("{}: empty", cache.root().display()))?;
        return Ok(());
    }
    let report = cache
        .prune(&PruneOptions {
            older_than,
            dry_run: args.dry_run,
        })
        .with_context(|| format!("pruning {}", cache.root().display()))?;
    if args.json {
        let removed: Vec<_> = report
            .removed
            .iter()
            .map(|e| {
                serde_json::json!({
                    "kind": e.kind, "digest": e.digest, "bytes": e.bytes,
                    "path": e.path.display().to_string(),
                })
            })
            .collect();
        return output::json(&serde_json::json!({
            "cache": cache.root().display().to_string(),
            "dry_run": args.dry_run,
            "removed": removed,
            "bytes": report.bytes,
            "kept": report.kept,
            "in_use": report.in_use,
            "partial": report.partial,
            "bundles": bundle_paths,
        }));
    }
    for e in &report.removed {
        output::line(format!(
            "{verb} {} {} ({} bytes)",
            e.kind, e.digest, e.bytes
        ))?;
    }
    output::line(format!(
        "{}: {verb} {} entries ({} bytes); kept {} ({} in use by a run now){}",
        cache.root().display(),
        report.removed.len(),
        report.bytes,
        report.kept,
        report.in_use,
        if report.partial > 0 {
            format!("; {} unfinished unpacks removed", report.partial)
        } else {
            String::new()
        }
    ))?;
    Ok(())
}
