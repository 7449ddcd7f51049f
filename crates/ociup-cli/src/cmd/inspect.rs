use std::io::Write;

use anyhow::{Context, Result};
use ociup_core::document::Document;
use ociup_core::ops;
use serde_json::Value;

use super::{Ctx, open_for_reading, parse_platform, parse_ref};
use crate::args::InspectArgs;
use crate::output;

pub async fn run(ctx: &Ctx, args: InspectArgs) -> Result<()> {
    let r = parse_ref(&args.reference)?;
    let client = ctx.client(&[&r])?;
    let (store, reference) = open_for_reading(&r, &client)?;
    let platform = parse_platform(args.platform.as_deref())?;
    let doc = ops::load_document(&store, &reference)
        .await
        .with_context(|| format!("reading {}", args.reference))?;
    // An index is shown as such unless a platform picks one of its manifests.
    let index = match (&doc, &platform) {
        (Document::Index(i), None) => Some(i),
        _ => None,
    };
    if let Some(index) = index {
        if args.raw {
            std::io::stdout().lock().write_all(index.raw().bytes())?;
            return Ok(());
        }
        let value: Value = serde_json::from_slice(index.raw().bytes())?;
        if args.json {
            return output::json(&serde_json::json!({
                "reference": args.reference,
                "digest": index.raw().digest().to_string(),
                "media_type": index.raw().media_type(),
                "index": value,
            }));
        }
        output::line(format!(
            "{}\n  digest      {}\n  media type  {}\n  manifests   {}",
            args.reference,
            index.raw().digest(),
            index.raw().media_type(),
            index.parsed().manifests().len()
        ))?;
        for m in index.parsed().manifests() {
            let platform = m
                .platform()
                .as_ref()
                .map(|p| {
                    let mut s = format!("{}/{}", p.os(), p.architecture());
                    if let Some(v) = p.variant() {
                        s.push('/');
                        s.push_str(v);
                    }
                    s
                })
                .unwrap_or_else(|| "-".into());
            output::line(format!("    {}  {platform}", m.digest()))?;
        }
        return Ok(());
    }
    let image = ops::image_from_document(&store, doc, platform.as_ref())
        .await
        .with_context(|| format!("reading {}", args.reference))?;
    let m = &image.manifest;
    if args.raw {
        std::io::stdout().lock().write_all(m.raw().bytes())?;
        return Ok(());
    }
    let config = Value::Object(image.config.value().clone());
    if args.json {
        return output::json(&serde_json::json!({
            "reference": args.reference,
            "digest": m.raw().digest().to_string(),
            "media_type": m.raw().media_type(),
            "manifest": serde_json::from_slice::<Value>(m.raw().bytes())?,
            "config": config,
        }));
    }
    let rc = config.get("config").cloned().unwrap_or(Value::Null);
    let field = |k: &str| rc.get(k).filter(|v| !v.is_null()).map(|v| v.to_string());
    let mut lines = vec![
        args.reference.clone(),
        format!("  digest       {}", m.raw().digest()),
        format!("  media type   {}", m.raw().media_type()),
        format!(
            "  platform     {}/{}{}",
            image.config.str_field("os").unwrap_or("?"),
            image.config.str_field("architecture").unwrap_or("?"),
            image
                .config
                .str_field("variant")
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        ),
        format!(
            "  created      {}",
            image.config.str_field("created").unwrap_or("-")
        ),
        format!(
            "  config       {} ({} bytes)",
            m.parsed().config().digest(),
            m.parsed().config().size()
        ),
        format!("  layers       {}", m.parsed().layers().len()),
    ];
    for l in m.parsed().layers() {
        lines.push(format!(
            "    {}  {:>10} B  {}",
            l.digest(),
            l.size(),
            l.media_type()
        ));
    }
    for (label, key) in [
        ("env", "Env"),
        ("entrypoint", "Entrypoint"),
        ("cmd", "Cmd"),
        ("workdir", "WorkingDir"),
        ("user", "User"),
        ("labels", "Labels"),
        ("ports", "ExposedPorts"),
        ("volumes", "Volumes"),
        ("stop signal", "StopSignal"),
    ] {
        if let Some(v) = field(key) {
            lines.push(format!("  {label:<12} {v}"));
        }
    }
    if let Some(ann) = m.parsed().annotations() {
        let mut ann: Vec<_> = ann.iter().collect();
        ann.sort();
        for (k, v) in ann {
            lines.push(format!("  annotation   {k}={v}"));
        }
    }
    output::line(lines.join("\n"))?;
    Ok(())
}
