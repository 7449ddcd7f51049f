//! `ociup copy` into a new layout, watched with strace: every file is synced before it is
//! named, every rename is made durable (its directory synced) before anything names what it
//! put in place, and the order is blobs, then the manifest, then `index.json`. This is what a
//! crash at any moment relies on; the test reads the system calls, since a crash cannot be
//! staged here.

use std::collections::HashMap;
use std::path::Path;

use crate::support::{fixtures, json};

/// One system call: its name, its arguments (and result), the lines it began and ended on.
#[derive(Debug)]
struct Call {
    name: String,
    text: String,
    start: usize,
    end: usize,
}

impl Call {
    fn ok(&self) -> bool {
        self.text.trim_end().ends_with("= 0")
    }

    /// The path of the file descriptor an `fsync`/`fdatasync` got (strace -y: `19</a/b>`).
    fn fd_path(&self) -> Option<&str> {
        let from = self.text.find('<')? + 1;
        let to = from + self.text[from..].find('>')?;
        Some(&self.text[from..to])
    }

    /// The quoted strings among the arguments (the paths of `renameat`, `mkdirat`).
    fn quoted(&self) -> Vec<&str> {
        self.text.split('"').skip(1).step_by(2).collect()
    }
}

/// Parses `strace -f -y` output into calls, an unfinished call completed by its resumed line.
fn parse(log: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<&str, Call> = HashMap::new();
    for (i, line) in log.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            if let Some(mut call) = pending.remove(pid) {
                call.text
                    .push_str(resumed.split_once("resumed>").map_or("", |r| r.1));
                call.end = i;
                calls.push(call);
            }
            continue;
        }
        let Some(open) = rest.find('(') else {
            continue;
        };
        let name = rest[..open].to_owned();
        if name.contains(' ') {
            continue; // "+++ exited", "--- SIGCHLD"
        }
        let mut call = Call {
            name,
            text: rest[open + 1..].to_owned(),
            start: i,
            end: i,
        };
        if let Some(cut) = call.text.find(" <unfinished ...>") {
            call.text.truncate(cut);
            pending.insert(pid, call);
        } else {
            calls.push(call);
        }
    }
    calls
}

#[test]
fn a_copy_into_a_layout_syncs_each_file_before_naming_it_and_names_in_order() {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED a_copy_into_a_layout_syncs_...: strace is not installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().canonicalize().unwrap();
    let lay = dir.join("l");
    let log_path = dir.join("strace.log");
    let src = format!("oci:{}:v1", fixtures().join("base").display());
    let dst = format!("oci:{}:v1", lay.display());
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-s", "4096", "-o"])
        .arg(&log_path)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat",
        ])
        .arg(env!("CARGO_BIN_EXE_ociup"))
        .args(["copy", &src, &dst, "--json"])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&String::from_utf8(out.stdout).unwrap())["report"].clone();
    let manifest = report["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let log = std::fs::read_to_string(&log_path).unwrap();
    if let Err(broken) = check_order(&log, &lay, manifest) {
        panic!("{broken}:\n{log}");
    }

    // The checks see what they are for: the same log without the directory syncs between the
    // ranks, or without the files' syncs, or without the layout directory's sync, fails them.
    let sha256 = format!("<{}>", lay.join("blobs/sha256").display());
    let root = format!("<{}>", lay.display());
    let without = |drop: &dyn Fn(&str) -> bool| -> String {
        log.lines()
            .filter(|l| !drop(l))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    for (what, drop) in [
        (
            "blobs/sha256 syncs",
            &(|l: &str| l.contains(&sha256)) as &dyn Fn(&str) -> bool,
        ),
        ("file syncs", &|l: &str| {
            l.contains("/.ociup-") && l.contains("sync(")
        }),
        ("the layout's sync", &|l: &str| l.contains(&root)),
    ] {
        assert!(
            check_order(&without(drop), &lay, manifest).is_err(),
            "the log without {what} passes the checks"
        );
    }
}

/// The first rule the calls in `log` (a copy into the new layout `lay` of the image whose
/// manifest is `manifest`) break, if any.
fn check_order(log: &str, lay: &Path, manifest: &str) -> Result<(), String> {
    let calls = parse(log);
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let (sha256, blobs, root) = (p(&lay.join("blobs/sha256")), p(&lay.join("blobs")), p(lay));
    let syncs_of = |path: &str| -> Vec<&Call> {
        calls
            .iter()
            .filter(|c| (c.name == "fsync" || c.name == "fdatasync") && c.ok())
            .filter(|c| c.fd_path() == Some(path))
            .collect()
    };
    // A sync of `path` that began after line `after` and ended before line `before`.
    let synced_between = |path: &str, after: usize, before: usize| {
        syncs_of(path)
            .iter()
            .any(|c| c.start > after && c.end < before)
    };
    let renames: Vec<(&Call, &str, &str)> = calls
        .iter()
        .filter(|c| c.name.starts_with("rename") && c.ok())
        .filter_map(|c| match c.quoted()[..] {
            [from, to] => Some((c, from, to)),
            _ => None,
        })
        .collect();

    // Each file renamed into blobs/sha256 was synced before the rename began.
    let named: Vec<_> = renames
        .iter()
        .filter(|(_, _, to)| to.starts_with(&format!("{sha256}/")))
        .collect();
    if named.len() < 3 {
        return Err("fewer than 3 renames into blobs/sha256 (config, layer, manifest)".into());
    }
    for (call, from, to) in &named {
        if !syncs_of(from).iter().any(|s| s.end < call.start) {
            return Err(format!("{to} named before {from} was synced"));
        }
    }

    // The manifest is named after its blobs' renames are durable.
    let (m, _, _) = named
        .iter()
        .find(|(_, _, to)| to.ends_with(manifest))
        .ok_or_else(|| format!("no rename of the manifest {manifest}"))?;
    let last_blob = named
        .iter()
        .filter(|(_, _, to)| !to.ends_with(manifest))
        .map(|(c, _, _)| c.end)
        .max()
        .unwrap_or(0);
    if last_blob > m.start {
        return Err("a blob named after the manifest".into());
    }
    if !synced_between(&sha256, last_blob, m.start) {
        return Err("blobs/sha256 not synced between the blobs' renames and the manifest's".into());
    }

    // index.json, synced, is named after the manifest's rename is durable, and its own rename
    // is made durable before the copy ends.
    let index = p(&lay.join("index.json"));
    let (i, from, _) = renames
        .iter()
        .find(|(_, _, to)| *to == index)
        .ok_or("no rename of index.json")?;
    if !syncs_of(from).iter().any(|s| s.end < i.start) {
        return Err("index.json named before it was synced".into());
    }
    if !synced_between(&sha256, m.end, i.start) {
        return Err(
            "blobs/sha256 not synced between the manifest's rename and index.json's".into(),
        );
    }
    if !synced_between(&root, i.end, usize::MAX) {
        return Err("the layout directory not synced after index.json's rename".into());
    }

    // blobs/sha256, made by this copy, is durable in blobs/ before index.json names anything.
    let made = calls
        .iter()
        .find(|c| c.name.starts_with("mkdir") && c.ok() && c.quoted().first() == Some(&&*sha256))
        .ok_or("blobs/sha256 not made by the copy")?;
    if !synced_between(&blobs, made.end, i.start) {
        return Err(
            "blobs/ not synced between the making of blobs/sha256 and index.json's rename".into(),
        );
    }
    Ok(())
}
