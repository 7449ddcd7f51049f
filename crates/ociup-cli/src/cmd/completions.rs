//! Shell completions and man pages, generated from the same clap definitions that parse the
//! arguments, so they cannot drift from the commands.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::args::{CompletionsArgs, ManArgs};

/// Prints the completion script for a shell.
pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = crate::cli_command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "ociup", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}

/// Prints the man page of `ociup`, or writes one page per command into a directory.
pub fn man(args: &ManArgs) -> Result<()> {
    let mut cmd = crate::cli_command().disable_help_subcommand(true);
    cmd.build();
    let Some(dir) = &args.out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::io::stdout().lock().write_all(&page)?;
        return Ok(());
    };
    // Every page is rendered before any is written, so a failure leaves no partial set.
    let mut pages = Vec::new();
    render_all(cmd, &mut pages)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, page) in &pages {
        write_atomically(&dir.join(name), page)?;
    }
    for (name, _) in &pages {
        crate::output::line(dir.join(name).display())?;
    }
    Ok(())
}

/// `ociup.1`, then `ociup-<command>.1` for each command and subcommand (`ociup-layer-create.1`).
fn render_all(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    pages.push((man.get_filename(), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_all(sub.clone(), pages)?;
    }
    Ok(())
}

/// Writes through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".ociup-man-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
