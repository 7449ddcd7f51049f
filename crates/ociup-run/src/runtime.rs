//! Runs a bundle with an OCI runtime (runc), directly: no daemon.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::signal::unix::{SignalKind, signal};

use crate::error::{Error, Result};

/// How to run a bundle.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// The runtime's executable (runc, or one that takes runc's command line).
    pub runtime: PathBuf,
    /// The runtime's state directory (`runc --root`).
    pub state_root: PathBuf,
    /// The container id: unique among the containers of `state_root`.
    pub id: String,
    /// The bundle: a directory with `config.json`.
    pub bundle: PathBuf,
    /// Start the runtime in a process group of its own, so that a Ctrl-C on the terminal
    /// reaches the container once (forwarded by [`run_bundle`]), not twice. Leave it false when
    /// the container has the terminal (the runtime must stay in the foreground group).
    pub own_process_group: bool,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The container's process ran and exited with this status (128 + N when signal N ended
    /// it, as a shell reports it).
    Container(i32),
    /// The runtime could not find the command to run (its message).
    NotFound(String),
    /// The runtime found the command but could not execute it: permission denied, not an
    /// executable (its message).
    NotExecutable(String),
    /// The runtime failed before the command ran (its message).
    Runtime(String),
}

impl Exit {
    /// The exit status a command line answers for it, as `docker run` does: the container's;
    /// 127 for a command not found, 126 for one that cannot be executed, 125 for a failure of
    /// the runtime.
    pub fn code(&self) -> i32 {
        match self {
            Exit::Container(c) => *c,
            Exit::NotFound(_) => 127,
            Exit::NotExecutable(_) => 126,
            Exit::Runtime(_) => 125,
        }
    }

    /// What the runtime's log (runc's `--log-format json`: one JSON object a line, `level` and
    /// `msg`) says of a run whose runtime exited with `status`: its last error, classified.
    /// Without an error logged, the status is the container's.
    pub fn classify(status: i32, log: &str) -> Exit {
        let error = log
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["level"] == "error" || v["level"] == "fatal")
            .find_map(|v| v["msg"].as_str().map(str::to_owned));
        let Some(msg) = error.filter(|_| status != 0) else {
            return Exit::Container(status);
        };
        // runc: "unable to start container process: exec: \"X\": <why>".
        if let Some((_, why)) = msg.split_once("exec: ") {
            if why.contains("no such file or directory")
                || why.contains("executable file not found")
            {
                return Exit::NotFound(msg);
            }
            return Exit::NotExecutable(msg);
        }
        Exit::Runtime(msg)
    }
}

/// Runs `runtime --root STATE --log BUNDLE/runtime.log --log-format json run --bundle BUNDLE ID`
/// with this process's standard input, output and error (passed to the container as they are:
/// nothing is buffered), forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT (listened for before
/// the runtime starts) to the container (`runtime kill ID SIGNAL`), and answers how it ended
/// (the runtime's own failures told apart from the container's status by its log, see
/// [`Exit::classify`]).
///
/// # Errors
/// [`Error::Io`] when the runtime cannot be started.
pub async fn run_bundle(options: &RuntimeOptions) -> Result<Exit> {
    let log = options.bundle.join("runtime.log");
    let mut cmd = tokio::process::Command::new(&options.runtime);
    cmd.arg("--root")
        .arg(&options.state_root)
        .arg("--log")
        .arg(&log)
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--bundle")
        .arg(&options.bundle)
        .arg(&options.id)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if options.own_process_group {
        cmd.process_group(0);
    }
    // Listening before the runtime starts: a signal from then on is forwarded, never the
    // default action that would end this process and leave the container running.
    let sig_err = |e| Error::io("listening for signals", e);
    let mut int = signal(SignalKind::interrupt()).map_err(sig_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(sig_err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(sig_err)?;
    let mut quit = signal(SignalKind::quit()).map_err(sig_err)?;
    let mut child = cmd.spawn().map_err(|e| {
        Error::io(
            format!(
                "starting the runtime {} (install runc, or name it with --runtime or \
                 OCIUP_RUNTIME)",
                options.runtime.display()
            ),
            e,
        )
    })?;
    let status = loop {
        let name = tokio::select! {
            s = child.wait() => break s.map_err(|e| Error::io("waiting for the runtime", e))?,
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
            _ = quit.recv() => "SIGQUIT",
        };
        tracing::debug!("forwarding {name} to container {}", options.id);
        forward(options, name).await;
    };
    use std::os::unix::process::ExitStatusExt;
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    };
    // Only the tail: a runtime's log of one run is short, but the bundle is the caller's.
    let text = std::fs::read(&log)
        .map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(64 * 1024)..]).into_owned())
        .unwrap_or_default();
    Ok(Exit::classify(status, &text))
}

/// `runtime kill ID SIGNAL`; a container that is not running yet or any more is not an error.
async fn forward(options: &RuntimeOptions, signal: &str) {
    let out = tokio::process::Command::new(&options.runtime)
        .arg("--root")
        .arg(&options.state_root)
        .arg("kill")
        .arg(&options.id)
        .arg(signal)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await;
    match out {
        Ok(o) if !o.status.success() => tracing::debug!(
            "forwarding {signal}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::debug!("forwarding {signal}: {e}"),
        Ok(_) => {}
    }
}

/// The runtime to use: `explicit` (a flag), else `runc` found on PATH.
///
/// # Errors
/// [`Error::InvalidImage`] when none is found.
pub fn find_runtime(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.components().count() > 1 || p.is_absolute() {
            return Ok(p.to_owned());
        }
        return which(p.as_os_str()).ok_or_else(|| Error::InvalidImage {
            reason: format!("the runtime {} is not on PATH", p.display()),
        });
    }
    which(std::ffi::OsStr::new("runc")).ok_or_else(|| Error::InvalidImage {
        reason: "runc is not on PATH: install it (apt-get install runc) or name a runtime \
                 with --runtime or OCIUP_RUNTIME"
            .into(),
    })
}

fn which(name: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether this process runs as root (its effective user, read from /proc/self).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtimes_log_tells_its_failures_from_the_containers_status() {
        let line = |msg: &str| format!("{}\n", serde_json::json!({"level": "error", "msg": msg}));
        let warn = "{\"level\":\"warning\",\"msg\":\"cgroup v1 is deprecated\"}\n";
        assert_eq!(Exit::classify(3, ""), Exit::Container(3));
        assert_eq!(Exit::classify(1, warn), Exit::Container(1));
        assert_eq!(Exit::classify(0, &line("late")), Exit::Container(0));
        let e = Exit::classify(
            1,
            &line(
                r#"runc run failed: unable to start container process: exec: "/bin/nope": stat /bin/nope: no such file or directory"#,
            ),
        );
        assert!(
            matches!(&e, Exit::NotFound(m) if m.contains("/bin/nope")),
            "{e:?}"
        );
        assert_eq!(e.code(), 127);
        let e = Exit::classify(
            1,
            &line(
                r#"runc run failed: unable to start container process: exec: "nope": executable file not found in $PATH"#,
            ),
        );
        assert_eq!(e.code(), 127);
        let e = Exit::classify(
            1,
            &line(
                r#"runc run failed: unable to start container process: exec: "/etc/passwd": permission denied"#,
            ),
        );
        assert_eq!(e.code(), 126);
        let e = Exit::classify(
            1,
            &format!("{warn}{}", line("runc run failed: invalid mount")),
        );
        assert!(
            matches!(&e, Exit::Runtime(m) if m.contains("invalid mount")),
            "{e:?}"
        );
        assert_eq!(e.code(), 125);
        assert_eq!(Exit::Container(143).code(), 143);
    }
}
