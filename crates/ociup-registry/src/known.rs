//! What a client has learnt of registries, kept between processes when it is given a directory
//! ([`crate::ClientOptions::state_dir`]): which registries refuse a manifest whose blobs they
//! lack (naming them), and which blobs which repositories hold. A second `ociup rebase` of the
//! same image then neither probes nor checks blobs the last one saw there.
//!
//! A fact is trusted for [`TTL`] after it was learnt. It is only ever a hint for registries that
//! check a manifest's blobs: should a remembered blob be gone (garbage-collected), the manifest
//! PUT is refused naming it and the writer supplies it then.
//!
//! The facts are kept per registry (API host) in `registries-v2/` under the directory, one file
//! a host, named by the first 32 hex digits of the SHA-256 of the host. A host's file is read on
//! the first question or note about that host, and only then: a process talking to one registry
//! never reads the others' files. Its first line is `host HOST` (a file naming another host, a
//! collision, is ignored and never overwritten; one naming no host is replaced), then one line
//! a fact, `checks-blobs SECONDS` or `blob REPOSITORY DIGEST SECONDS` (seconds since 1970 when
//! learnt). Only the hosts that learnt something are saved: each file rewritten whole (merged
//! with what other processes wrote meanwhile, expired facts dropped, at most [`MAX_BLOBS`]
//! blobs, newest kept) through a temporary file and a rename, under a lock file of that host so
//! that processes saving at once lose nothing. A save also sweeps the directory (one
//! `readdir`): files of other hosts not written for [`TTL`] (all their facts expired) go with
//! their locks (a file whose lock another process holds stays), as do locks and temporary files
//! left that long. The single file of earlier versions, `registries-v1`, is removed (with its
//! lock) by the first save of a process that learnt something.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a fact is trusted.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The most blob facts kept in a host's file.
pub const MAX_BLOBS: usize = 20_000;
/// The directory of the hosts' files in the state directory.
const DIR: &str = "registries-v2";
/// The single file of earlier versions, removed at the first save.
const OLD_FILE: &str = "registries-v1";
/// Hex digits of the SHA-256 of the host naming its file.
const NAME_LEN: usize = 32;

/// The facts of one host.
#[derive(Default)]
struct Facts {
    /// When the host was seen refusing a manifest naming the blobs it lacked.
    checks_blobs: Option<u64>,
    /// (repository, digest) → when the repository was seen holding the blob.
    blobs: HashMap<(String, String), u64>,
}

impl Facts {
    fn is_empty(&self) -> bool {
        self.checks_blobs.is_none() && self.blobs.is_empty()
    }

    fn merge(&mut self, other: Facts) {
        if let Some(t) = other.checks_blobs {
            self.checks_blobs = Some(self.checks_blobs.map_or(t, |s| s.max(t)));
        }
        for (k, t) in other.blobs {
            let e = self.blobs.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
    }

    /// The facts of `host` in `text`; `None` when the file is another host's (or not one of
    /// these files at all).
    fn parse(text: &str, host: &str, now: u64) -> Option<Facts> {
        let mut lines = text.lines();
        if lines.next()?.strip_prefix("host ")? != host {
            return None;
        }
        let fresh = |t: &str| t.parse::<u64>().ok().filter(|&t| fresh(t, now));
        let mut f = Facts::default();
        for line in lines {
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["checks-blobs", t] => {
                    if let Some(t) = fresh(t) {
                        f.merge(Facts {
                            checks_blobs: Some(t),
                            ..Facts::default()
                        });
                    }
                }
                ["blob", repo, digest, t] if digest.contains(':') => {
                    if let Some(t) = fresh(t) {
                        f.blobs
                            .insert(((*repo).to_owned(), (*digest).to_owned()), t);
                    }
                }
                _ => {} // another version's line, or damage: skipped
            }
        }
        Some(f)
    }

    fn render(&self, host: &str, now: u64) -> String {
        let mut out = format!("host {host}\n");
        if let Some(t) = self.checks_blobs.filter(|&t| fresh(t, now)) {
            out.push_str(&format!("checks-blobs {t}\n"));
        }
        let mut blobs: Vec<_> = self.blobs.iter().filter(|(_, t)| fresh(**t, now)).collect();
        // Newest first, then by key, so the cut keeps the newest and the file is stable.
        blobs.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for ((r, d), t) in blobs.into_iter().take(MAX_BLOBS) {
            out.push_str(&format!("blob {r} {d} {t}\n"));
        }
        out
    }
}

fn fresh(t: u64, now: u64) -> bool {
    // A time in the future (a clock set back) counts as now.
    now.saturating_sub(t) < TTL.as_secs()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Names that go into a line: no separators, nothing empty.
fn plain(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The name of `host`'s file: safe whatever the host, of a fixed length.
fn file_name(host: &str) -> String {
    ociup_core::digest::Digest::sha256(host.as_bytes()).hex()[..NAME_LEN].to_owned()
}

/// What one client knows of one host.
#[derive(Default)]
struct Host {
    facts: Facts,
    /// Facts learnt since the last save.
    new: Facts,
}

/// The facts of one client; saved when it is dropped (and by [`Known::save`]).
pub(crate) struct Known {
    /// `registries-v2/` of the state directory.
    dir: Option<PathBuf>,
    /// By API host, each read from its file when first asked about.
    hosts: Mutex<HashMap<String, Host>>,
}

impl Known {
    /// Facts kept in `dir` (each host's read when first asked about), or only in memory when
    /// `None`.
    pub fn new(dir: Option<&Path>) -> Known {
        Known {
            dir: dir.map(|d| d.join(DIR)),
            hosts: Mutex::default(),
        }
    }

    /// Runs `f` on the facts of `host`, read from its file first if this is the first time.
    fn with<T>(&self, host: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = hosts.get_mut(host) {
            return f(h);
        }
        let facts = match &self.dir {
            Some(dir) if plain(host) => read(&dir.join(file_name(host)), host, now()),
            _ => Facts::default(),
        };
        f(hosts.entry(host.to_owned()).or_insert(Host {
            facts,
            new: Facts::default(),
        }))
    }

    fn learn(&self, host: &str, f: impl Fn(&mut Facts, u64)) {
        let t = now();
        let keep = self.dir.is_some();
        self.with(host, |h| {
            f(&mut h.facts, t);
            if keep {
                f(&mut h.new, t);
            }
        });
    }

    pub fn checks_blobs(&self, host: &str) -> bool {
        self.with(host, |h| {
            h.facts.checks_blobs.is_some_and(|t| fresh(t, now()))
        })
    }

    pub fn note_checks_blobs(&self, host: &str) {
        if plain(host) {
            self.learn(host, |f, t| f.checks_blobs = Some(t));
        }
    }

    pub fn has_blob(&self, host: &str, repo: &str, digest: &str) -> bool {
        let key = (repo.to_owned(), digest.to_owned());
        self.with(host, |h| {
            h.facts.blobs.get(&key).is_some_and(|&t| fresh(t, now()))
        })
    }

    pub fn note_blobs<'a>(&self, host: &str, repo: &str, digests: impl Iterator<Item = &'a str>) {
        if !plain(host) || !plain(repo) {
            return;
        }
        let digests: Vec<&str> = digests.filter(|d| plain(d) && d.contains(':')).collect();
        if digests.is_empty() {
            return;
        }
        self.learn(host, |f, t| {
            for d in &digests {
                f.blobs.insert((repo.to_owned(), (*d).to_owned()), t);
            }
        });
    }

    /// Writes what was learnt since the last save, each host's merged with its file as it is
    /// now, then sweeps the directory. Best effort: this is a cache, and a failure to write it
    /// costs only requests later.
    pub fn save(&self) {
        let Some(dir) = &self.dir else { return };
        let learnt: Vec<(String, Facts)> = {
            let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            hosts
                .iter_mut()
                .filter(|(_, h)| !h.new.is_empty())
                .map(|(host, h)| (host.clone(), std::mem::take(&mut h.new)))
                .collect()
        };
        if learnt.is_empty() {
            return;
        }
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::debug!(path = %dir.display(), %e, "could not save what was learnt of registries");
            return;
        }
        let mut saved = Vec::new();
        for (host, new) in learnt {
            let name = file_name(&host);
            match write(dir, &name, &host, new) {
                Ok(()) => saved.push(name),
                Err(e) => {
                    tracing::debug!(%host, %e, "could not save what was learnt of a registry");
                }
            }
        }
        sweep(dir, &saved, SystemTime::now());
        if let Some(state) = dir.parent() {
            let _ = std::fs::remove_file(state.join(OLD_FILE));
            let _ = std::fs::remove_file(state.join(format!(".{OLD_FILE}.lock")));
        }
    }
}

/// The fresh facts of `host` in `path`; none when it is missing, unreadable or another's.
fn read(path: &Path, host: &str, now: u64) -> Facts {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| Facts::parse(&text, host, now))
        .unwrap_or_default()
}

fn lock_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.lock"))
}

/// Holds the lock of the host file `name` (released when the file is closed). A sweep may
/// remove a lock file while another process waits on it: the lock is taken again until the one
/// held is the file at the path.
fn lock(dir: &Path, name: &str) -> std::io::Result<File> {
    let path = lock_path(dir, name);
    loop {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        f.lock()?;
        if same_file(&f, &path) {
            return Ok(f);
        }
    }
}

fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn write(dir: &Path, name: &str, host: &str, new: Facts) -> std::io::Result<()> {
    let now = now();
    let path = dir.join(name);
    // One saver of a host at a time, so that two processes merging at once do not lose each
    // other's facts.
    let _lock = lock(dir, name)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => match Facts::parse(&text, host, now) {
            Some(mut facts) => {
                facts.merge(new);
                replace(dir, name, &path, &facts.render(host, now))
            }
            // Another host's file under this name (a collision): left be.
            None if text.starts_with("host ") => Ok(()),
            // Damage, or not one of these files: replaced.
            None => replace(dir, name, &path, &new.render(host, now)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            replace(dir, name, &path, &new.render(host, now))
        }
        Err(e) => Err(e),
    }
}

/// Replaces `path` by `text` through a temporary file and a rename.
fn replace(dir: &Path, name: &str, path: &Path, text: &str) -> std::io::Result<()> {
    // A name of this process's own, so concurrent savers never write one file.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{name}.{}.{nanos}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `name` is a host file's name.
fn is_host_file(name: &str) -> bool {
    name.len() == NAME_LEN && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes what in `dir` was not written for [`TTL`] (as of `now`): host files other than
/// `keep` (every fact in them expired), with their locks; locks and temporary files left alone
/// that long. A host file is removed only holding its lock, not if another process holds it.
fn sweep(dir: &Path, keep: &[String], now: SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let stale = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= TTL))
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let path = entry.path();
        if is_host_file(name) {
            if keep.iter().any(|k| k == name) || !stale(&path) {
                continue;
            }
            let lock_file = lock_path(dir, name);
            let Ok(f) = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_file)
            else {
                continue;
            };
            if f.try_lock().is_err() {
                continue; // a saver is at it
            }
            // Still stale now that no saver can write it.
            if same_file(&f, &lock_file) && stale(&path) {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(&lock_file);
            }
        } else if let Some(host_name) = name
            .strip_prefix('.')
            .and_then(|n| n.split('.').next())
            .filter(|n| is_host_file(n))
        {
            // A lock whose host file is gone, or a temporary file of a saver that died.
            let is_lock = name.ends_with(".lock");
            if (!is_lock || !dir.join(host_name).exists()) && stale(&path) {
                if is_lock {
                    if let Ok(f) = File::open(&path)
                        && f.try_lock().is_ok()
                        && same_file(&f, &path)
                    {
                        let _ = std::fs::remove_file(&path);
                    }
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
}

impl Drop for Known {
    fn drop(&mut self) {
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_file(state: &Path, host: &str) -> PathBuf {
        state.join(DIR).join(file_name(host))
    }

    #[test]
    fn facts_survive_a_new_client_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let d = "sha256:".to_owned() + &"a".repeat(64);
        {
            let k = Known::new(Some(dir.path()));
            assert!(!k.checks_blobs("r:5000"));
            k.note_checks_blobs("r:5000");
            k.note_blobs("r:5000", "team/app", [d.as_str()].into_iter());
            assert!(k.checks_blobs("r:5000") && k.has_blob("r:5000", "team/app", &d));
        }
        let k = Known::new(Some(dir.path()));
        assert!(k.checks_blobs("r:5000"));
        assert!(k.has_blob("r:5000", "team/app", &d));
        assert!(!k.has_blob("r:5000", "team/other", &d), "per repository");
        assert!(!k.has_blob("r:5001", "team/app", &d), "per registry");
        drop(k);
        // Written more than a day ago: forgotten.
        let path = host_file(dir.path(), "r:5000");
        let old = now() - TTL.as_secs() - 1;
        std::fs::write(
            &path,
            format!("host r:5000\nchecks-blobs {old}\nblob team/app {d} {old}\ngarbage\n"),
        )
        .unwrap();
        let k = Known::new(Some(dir.path()));
        assert!(!k.checks_blobs("r:5000"));
        assert!(!k.has_blob("r:5000", "team/app", &d));
        drop(k);
        // A file under this host's name that names another host (a collision) is not its
        // facts, and is left as it is.
        let t = now();
        let other = format!("host other:1\nchecks-blobs {t}\nblob team/app {d} {t}\n");
        std::fs::write(&path, &other).unwrap();
        let k = Known::new(Some(dir.path()));
        assert!(!k.checks_blobs("r:5000"));
        assert!(!k.has_blob("r:5000", "team/app", &d));
        k.note_checks_blobs("r:5000");
        k.save();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), other);
    }

    #[test]
    fn saves_merge_what_other_processes_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let a = Known::new(Some(dir.path()));
        let b = Known::new(Some(dir.path()));
        a.note_blobs("r", "x", ["sha256:1"].into_iter());
        b.note_blobs("r", "y", ["sha256:2"].into_iter());
        a.save();
        b.save();
        let c = Known::new(Some(dir.path()));
        assert!(c.has_blob("r", "x", "sha256:1") && c.has_blob("r", "y", "sha256:2"));
        // Names that would break a line are not kept.
        c.note_blobs("r", "a b", ["sha256:3"].into_iter());
        c.note_checks_blobs("h\nchecks-blobs evil");
        c.save();
        let text = std::fs::read_to_string(host_file(dir.path(), "r")).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let files = std::fs::read_dir(dir.path().join(DIR))
            .unwrap()
            .filter(|e| is_host_file(e.as_ref().unwrap().file_name().to_str().unwrap()))
            .count();
        assert_eq!(files, 1, "no file for a host that would break a line");
    }

    #[test]
    fn a_client_asking_about_one_host_never_opens_anothers_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let k = Known::new(Some(dir.path()));
            k.note_checks_blobs("a:1");
            k.note_blobs("a:1", "x", ["sha256:1"].into_iter());
            k.note_checks_blobs("b:1");
        }
        // b's file becomes a pipe nobody writes: opening it to read would wait for ever.
        let b = host_file(dir.path(), "b:1");
        std::fs::remove_file(&b).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&b)
            .status()
            .unwrap();
        assert!(made.success());
        let state = dir.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let k = Known::new(Some(&state));
            let answers = (
                k.checks_blobs("a:1"),
                k.has_blob("a:1", "x", "sha256:1"),
                k.has_blob("a:1", "x", "sha256:2"),
            );
            // Saving a's new facts (and sweeping) does not open b's file either.
            k.note_blobs("a:1", "x", ["sha256:2"].into_iter());
            k.save();
            tx.send(answers).unwrap();
        });
        let answers = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a client asking about a:1 opened b:1's file");
        assert_eq!(answers, (true, true, false));
        assert!(Known::new(Some(dir.path())).has_blob("a:1", "x", "sha256:2"));

        // b's file damaged: b is known for nothing, a is as it was.
        std::fs::remove_file(&b).unwrap();
        std::fs::write(&b, "\u{0}garbage\nchecks-blobs 1\n").unwrap();
        let k = Known::new(Some(dir.path()));
        assert!(!k.checks_blobs("b:1"));
        assert!(k.checks_blobs("a:1") && k.has_blob("a:1", "x", "sha256:1"));
    }

    #[test]
    fn each_host_keeps_its_newest_blobs_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
        let t = now();
        let over = 10;
        let mut text = "host r:1\n".to_owned();
        for i in 0..MAX_BLOBS + over {
            text.push_str(&format!("blob x sha256:{i} {}\n", t - i as u64));
        }
        std::fs::write(host_file(dir.path(), "r:1"), text).unwrap();
        {
            let k = Known::new(Some(dir.path()));
            k.note_blobs("r:2", "x", ["sha256:a", "sha256:b"].into_iter());
            k.note_blobs("r:1", "x", ["sha256:new"].into_iter());
        }
        let blobs = |host: &str| {
            std::fs::read_to_string(host_file(dir.path(), host))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("blob "))
                .count()
        };
        assert_eq!(blobs("r:1"), MAX_BLOBS);
        assert_eq!(blobs("r:2"), 2, "another host's cap is its own");
        let k = Known::new(Some(dir.path()));
        assert!(k.has_blob("r:1", "x", "sha256:new"));
        assert!(k.has_blob("r:1", "x", "sha256:0"));
        let last_kept = MAX_BLOBS - 2; // the new blob took one place
        assert!(k.has_blob("r:1", "x", &format!("sha256:{last_kept}")));
        for i in last_kept + 1..MAX_BLOBS + over {
            assert!(!k.has_blob("r:1", "x", &format!("sha256:{i}")), "{i}");
        }
    }

    #[test]
    fn a_save_sweeps_files_not_written_for_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join(DIR);
        {
            let k = Known::new(Some(dir.path()));
            for h in ["old:1", "fresh:1", "busy:1"] {
                k.note_checks_blobs(h);
            }
        }
        let long_ago = SystemTime::now() - TTL - Duration::from_secs(60);
        let age = |path: &Path| {
            File::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        };
        let (old, fresh, busy) = (
            host_file(dir.path(), "old:1"),
            host_file(dir.path(), "fresh:1"),
            host_file(dir.path(), "busy:1"),
        );
        age(&old);
        age(&busy);
        // A lock left without its host file, a temporary file of a saver that died, something
        // not of these files.
        let orphan_lock = lock_path(&hosts, &"0".repeat(NAME_LEN));
        let tmp = hosts.join(format!(".{}.1.2", "1".repeat(NAME_LEN)));
        let foreign = hosts.join("README");
        for p in [&orphan_lock, &tmp, &foreign] {
            age(p);
        }
        std::fs::write(dir.path().join(OLD_FILE), "checks-blobs r 1\n").unwrap();
        // Another process is saving busy:1.
        let held = lock(&hosts, &file_name("busy:1")).unwrap();

        let k = Known::new(Some(dir.path()));
        k.note_checks_blobs("new:1");
        k.save();
        assert!(!old.exists() && !lock_path(&hosts, &file_name("old:1")).exists());
        assert!(!orphan_lock.exists() && !tmp.exists());
        assert!(fresh.exists() && foreign.exists());
        assert!(
            busy.exists(),
            "a host file whose lock is held is not removed"
        );
        assert!(host_file(dir.path(), "new:1").exists());
        assert!(!dir.path().join(OLD_FILE).exists());
        drop(held);
        let k = Known::new(Some(dir.path()));
        assert!(k.checks_blobs("fresh:1") && !k.checks_blobs("old:1"));
    }

    #[test]
    fn without_a_directory_nothing_is_written() {
        let k = Known::new(None);
        k.note_checks_blobs("r");
        assert!(k.checks_blobs("r"));
        k.save();
    }
}
