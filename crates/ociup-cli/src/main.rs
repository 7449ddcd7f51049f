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

/// The global options and `rebase` alone: what a rebase's command line is parsed with first.
/// Building the whole tree of every command's arguments is most of what starting the process
/// costs (a millisecond or two), and a rebase runs in tens of milliseconds. The arguments are
/// the same definitions as in [`cli_command`], so what parses here parses the same there;
/// anything this refuses (another command, `--help`, `--version`, a mistake) is parsed again
/// with the whole tree, which answers as it always has.
fn rebase_command() -> clap::Command {
    use clap::Args;
    let rebase = args::RebaseArgs::augment_args(clap::Command::new("rebase"));
    args::GlobalArgs::augment_args(clap::Command::new("ociup"))
        .subcommand(rebase)
        .subcommand_required(true)
}

/// The parsed command line: through [`rebase_command`] when it names `rebase`, else (or when
/// that refuses it) through the whole tree.
fn parse() -> (args::Cli, clap::ArgMatches) {
    if std::env::args_os().skip(1).any(|a| a == "rebase")
        && let Ok(matches) = rebase_command().try_get_matches()
        && let Ok(cli) = args::Cli::from_arg_matches(&matches)
    {
        return (cli, matches);
    }
    let matches = cli_command().get_matches();
    match args::Cli::from_arg_matches(&matches) {
        Ok(c) => (c, matches),
        Err(e) => e.exit(),
    }
}

/// Whether `-v` output may be coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let (cli, matches) = parse();
    if cli.global.verbose {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(colour_on_stderr())
            .with_max_level(tracing::Level::DEBUG)
            .with_target(false)
            .init();
    }
    // A rebase is a handful of small requests, each waiting on the one before: one thread
    // polling its connections answers each response at once, where worker threads would hand
    // every request and response over between threads (and are started for nothing). Its rare
    // blob copies (between registries) still stream; blocking work keeps its own threads.
    let mut builder = if matches!(cli.command, args::Command::Rebase(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the rebase-only parser accepts, the whole tree parses the same way; the rest it
    /// leaves to the whole tree.
    #[test]
    fn the_rebase_parser_agrees_with_the_whole_tree() {
        let parse = |cmd: clap::Command, argv: &[&str]| {
            cmd.try_get_matches_from(argv)
                .map_err(|e| e.kind())
                .and_then(|m| args::Cli::from_arg_matches(&m).map_err(|e| e.kind()))
                .map(|c| format!("{c:?}"))
        };
        let accepted: &[&[&str]] = &[
            &[
                "ociup",
                "rebase",
                "r/app:v1",
                "--new-base",
                "r/base:v2",
                "--json",
            ],
            &[
                "ociup",
                "--insecure-registry",
                "r:5000",
                "rebase",
                "r:5000/app:v1",
                "--old-base",
                "r:5000/base:v1",
                "--to",
                "r:5000/app:v2",
                "--source-date-epoch",
                "1700000000",
                "--config",
                "keep",
                "--platform",
                "linux/amd64",
                "-v",
                "--timeout",
                "5",
            ],
            &["ociup", "rebase", "oci:l:app", "--tag", "v2", "--dry-run"],
        ];
        for argv in accepted {
            let fast = parse(rebase_command(), argv);
            assert!(fast.is_ok(), "{argv:?}: {fast:?}");
            assert_eq!(fast, parse(cli_command(), argv), "{argv:?}");
        }
        // Refused here, answered by the whole tree (help, version, mistakes, other commands).
        let refused: &[&[&str]] = &[
            &["ociup", "rebase", "--help"],
            &["ociup", "rebase", "--version"],
            &["ociup", "help", "rebase"],
            &["ociup", "rebase"],
            &["ociup", "rebase", "a:1", "--tag", "t", "--to", "b:2"],
            &["ociup", "rebase", "a:1", "--config", "none"],
            &["ociup", "copy", "rebase", "oci:x"],
        ];
        for argv in refused {
            assert!(parse(rebase_command(), argv).is_err(), "{argv:?}");
        }
        assert_eq!(
            parse(
                cli_command(),
                &["ociup", "rebase", "a:1", "--tag", "t", "--to", "b:2"]
            ),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
    }
}
