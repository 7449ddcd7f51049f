//! `ociup`: keeps custom container images on the newest version of their base image.

mod args;
mod client;
mod cmd;
mod output;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// What `--version` prints: the package's version and, when built from a git checkout, the
/// commit (`0.1.0 (1a2b3c4)`; see `build.rs`).
const VERSION: &str = env!("OCIUP_VERSION");

/// The command line's definition: what parses the arguments, and what completions and man
/// pages are generated from.
fn cli_command() -> clap::Command {
    args::Cli::command().version(VERSION)
}

/// Whether `-v` output may be coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let matches = cli_command().get_matches();
    let cli = match args::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if cli.global.verbose {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(colour_on_stderr())
            .with_max_level(tracing::Level::DEBUG)
            .with_target(false)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ociup: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli, &matches)) {
        Ok(status) => ExitCode::from(status),
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ociup: {err:#}");
            ExitCode::FAILURE
        }
    }
}
