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
    let calls = parse(&log);

    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let (sha256, blobs, root) = (p(&lay.join("blobs/sha256")), p(&lay.join("blobs")), p(&lay));
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
    assert!(
        named.len() >= 3,
        "config, layer(s) and manifest renamed into place: {log}"
    );
    for (call, from, to) in &named {
        assert!(
            syncs_of(from).iter().any(|s| s.end < call.start),
            "{to} named before {from} was synced:\n{log}"
        );
    }

    // The manifest is named after its blobs' renames are durable.
    let (m, _, _) = named
        .iter()
        .find(|(_, _, to)| to.ends_with(manifest))
        .unwrap_or_else(|| panic!("no rename of the manifest {manifest}:\n{log}"));
    let last_blob = named
        .iter()
        .filter(|(_, _, to)| !to.ends_with(manifest))
        .map(|(c, _, _)| c.end)
        .max()
        .unwrap();
    assert!(
        last_blob < m.start,
        "a blob named after the manifest:\n{log}"
    );
    assert!(
        synced_between(&sha256, last_blob, m.start),
        "blobs/sha256 not synced between the blobs' renames and the manifest's:\n{log}"
    );

    // index.json, synced, is named after the manifest's rename is durable, and its own rename
    // is made durable before the copy ends.
    let index = p(&lay.join("index.json"));
    let (i, from, _) = renames
        .iter()
        .find(|(_, _, to)| *to == index)
        .unwrap_or_else(|| panic!("no rename of index.json:\n{log}"));
    assert!(
        syncs_of(from).iter().any(|s| s.end < i.start),
        "index.json named before it was synced:\n{log}"
    );
    assert!(
        synced_between(&sha256, m.end, i.start),
        "blobs/sha256 not synced between the manifest's rename and index.json's:\n{log}"
    );
    assert!(
        synced_between(&root, i.end, usize::MAX),
        "the layout directory not synced after index.json's rename:\n{log}"
    );

    // blobs/sha256, made by this copy, is durable in blobs/ before index.json names anything.
    let made = calls
        .iter()
        .find(|c| c.name.starts_with("mkdir") && c.ok() && c.quoted().first() == Some(&&*sha256))
        .unwrap_or_else(|| panic!("blobs/sha256 not made by the copy:\n{log}"));
    assert!(
        synced_between(&blobs, made.end, i.start),
        "blobs/ not synced between the making of blobs/sha256 and index.json's rename:\n{log}"
    );
}
