use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result, bail};
use ociup_core::layer::LayerBuilder;

use super::{compression_name, layer_options};
use crate::args::LayerCreateArgs;
use crate::output;

pub fn create(args: LayerCreateArgs) -> Result<()> {
    // `--to` here is a directory inside the image; an image reference given as in `append` would
    // otherwise become a directory named `oci:out:v1` in the layer.
    let to = &args.to;
    if !to.starts_with('/') && to.contains(':') {
        bail!(
            "--to {to}: the directory inside the image to put the files in (such as /opt/app); \
             to write an image there, use ociup append --base REF --add SRC:DEST --to {to}"
        );
    }
    let opts = layer_options(&args.layer)?;
    let mut builder = LayerBuilder::new(opts);
    for src in &args.sources {
        builder
            .add_into(src, &args.to)
            .with_context(|| format!("adding {}", src.display()))?;
    }
    // Write next to the output and rename, so a failed build leaves no partial file.
    let dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".ociup-layer-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let (layer, out) = builder.build(BufWriter::with_capacity(1 << 20, tmp))?;
    let mut tmp = out.into_inner().map_err(|e| e.into_error())?;
    tmp.flush()?;
    // Temporary files are created 0600; a layer is for others to read too.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;

    let media_type = layer
        .compression
        .layer_media_type(ociup_core::media_type::Family::Oci)?;
    if args.json {
        output::json(&serde_json::json!({
            "media_type": media_type,
            "digest": layer.digest.to_string(),
            "size": layer.size,
            "diff_id": layer.diff_id.to_string(),
            "compression": compression_name(layer.compression),
            "path": args.output,
        }))
    } else {
        output::line(format!(
            "{}\n  media type  {media_type}\n  size        {}\n  diff_id     {}\n  written to  {}",
            layer.digest,
            layer.size,
            layer.diff_id,
            args.output.display()
        ))?;
        Ok(())
    }
}
