//! What a client has learnt of registries, kept between processes when it is given a directory
//! ([`crate::ClientOptions::state_dir`]): which registries refuse a manifest whose blobs they
//! lack (naming them), and which blobs which repositories hold. A second `ociup rebase` of the
//! same image then neither probes nor checks blobs the last one saw there.
//!
//! A fact is trusted for [`TTL`] after it was learnt. It is only ever a hint for registries that
//! check a manifest's blobs: should a remembered blob be gone (garbage-collected), the manifest
//! PUT is refused naming it and the writer supplies it then. The file is one line a fact,
//! `checks-blobs HOST SECONDS` or `blob HOST REPOSITORY DIGEST SECONDS` (seconds since 1970 when
//! learnt), rewritten whole (merged with what other processes wrote meanwhile, expired facts
//! dropped, at most [`MAX_BLOBS`] blobs, newest kept) through a temporary file and a rename,
//! under a lock file so that processes saving at once lose nothing.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a fact is trusted.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The most blob facts kept in the file.
pub const MAX_BLOBS: usize = 20_000;
/// The file's name in the state directory.
const FILE: &str = "registries-v1";

#[derive(Default)]
struct Facts {
    /// API host → when it was seen refusing a manifest naming the blobs it lacked.
    checks_blobs: HashMap<String, u64>,
    /// (API host, repository, digest) → when the repository was seen holding the blob.
    blobs: HashMap<(String, String, String), u64>,
}

impl Facts {
    fn merge(&mut self, other: Facts) {
        for (k, t) in other.checks_blobs {
            let e = self.checks_blobs.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
        for (k, t) in other.blobs {
            let e = self.blobs.entry(k).or_insert(t);
            *e = (*e).max(t);
        }
    }

    fn parse(text: &str, now: u64) -> Facts {
        let fresh = |t: &str| t.parse::<u64>().ok().filter(|&t| fresh(t, now));
        let mut f = Facts::default();
        for line in text.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["checks-blobs", host, t] => {
                    if let Some(t) = fresh(t) {
                        f.checks_blobs.insert((*host).to_owned(), t);
                    }
                }
                ["blob", host, repo, digest, t] if digest.contains(':') => {
                    if let Some(t) = fresh(t) {
                        let key = ((*host).to_owned(), (*repo).to_owned(), (*digest).to_owned());
                        f.blobs.insert(key, t);
                    }
                }
                _ => {} // another version's line, or damage: skipped
            }
        }
        f
    }

    fn render(&self, now: u64) -> String {
        let mut out = String::new();
        let mut hosts: Vec<_> = self
            .checks_blobs
            .iter()
            .filter(|(_, t)| fresh(**t, now))
            .collect();
        hosts.sort();
        for (h, t) in hosts {
            out.push_str(&format!("checks-blobs {h} {t}\n"));
        }
        let mut blobs: Vec<_> = self.blobs.iter().filter(|(_, t)| fresh(**t, now)).collect();
        // Newest first, then by key, so the cut keeps the newest and the file is stable.
        blobs.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for ((h, r, d), t) in blobs.into_iter().take(MAX_BLOBS) {
            out.push_str(&format!("blob {h} {r} {d} {t}\n"));
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

/// The facts of one client; saved when it is dropped (and by [`Known::save`]).
pub(crate) struct Known {
    path: Option<PathBuf>,
    facts: Mutex<Facts>,
    /// Facts learnt since the last save.
    new: Mutex<Facts>,
}

impl Known {
    /// Facts kept in `dir` (read now), or only in memory when `None`.
    pub fn new(dir: Option<&Path>) -> Known {
        let path = dir.map(|d| d.join(FILE));
        let facts = path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| Facts::parse(&text, now()))
            .unwrap_or_default();
        Known {
            path,
            facts: Mutex::new(facts),
            new: Mutex::default(),
        }
    }

    fn learn(&self, f: impl Fn(&mut Facts, u64)) {
        let t = now();
        f(
            &mut self.facts.lock().unwrap_or_else(PoisonError::into_inner),
            t,
        );
        if self.path.is_some() {
            f(
                &mut self.new.lock().unwrap_or_else(PoisonError::into_inner),
                t,
            );
        }
    }

    pub fn checks_blobs(&self, host: &str) -> bool {
        let facts = self.facts.lock().unwrap_or_else(PoisonError::into_inner);
        facts
            .checks_blobs
            .get(host)
            .is_some_and(|&t| fresh(t, now()))
    }

    pub fn note_checks_blobs(&self, host: &str) {
        if plain(host) {
            self.learn(|f, t| {
                f.checks_blobs.insert(host.to_owned(), t);
            });
        }
    }

    pub fn has_blob(&self, host: &str, repo: &str, digest: &str) -> bool {
        let facts = self.facts.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (host.to_owned(), repo.to_owned(), digest.to_owned());
        facts.blobs.get(&key).is_some_and(|&t| fresh(t, now()))
    }

    pub fn note_blobs<'a>(&self, host: &str, repo: &str, digests: impl Iterator<Item = &'a str>) {
        if !plain(host) || !plain(repo) {
            return;
        }
        let digests: Vec<&str> = digests.filter(|d| plain(d) && d.contains(':')).collect();
        if digests.is_empty() {
            return;
        }
        self.learn(|f, t| {
            for d in &digests {
                f.blobs
                    .insert((host.to_owned(), repo.to_owned(), (*d).to_owned()), t);
            }
        });
    }

    /// Writes what was learnt since the last save, merged with the file as it is now. Best
    /// effort: this is a cache, and a failure to write it costs only requests later.
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let new = std::mem::take(&mut *self.new.lock().unwrap_or_else(PoisonError::into_inner));
        if new.checks_blobs.is_empty() && new.blobs.is_empty() {
            return;
        }
        if let Err(e) = write(path, new) {
            tracing::debug!(path = %path.display(), %e, "could not save what was learnt of registries");
        }
    }
}

fn write(path: &Path, new: Facts) -> std::io::Result<()> {
    let now = now();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // One saver at a time, so that two processes merging at once do not lose each other's
    // facts (released when the file is closed).
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(format!(".{FILE}.lock")))?;
    lock.lock()?;
    let mut facts = std::fs::read_to_string(path)
        .map(|text| Facts::parse(&text, now))
        .unwrap_or_default();
    facts.merge(new);
    // A name of this process's own, so concurrent savers never write one file.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{FILE}.{}.{nanos}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(facts.render(now).as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl Drop for Known {
    fn drop(&mut self) {
        self.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let path = dir.path().join(FILE);
        let old = now() - TTL.as_secs() - 1;
        std::fs::write(
            &path,
            format!("checks-blobs r:5000 {old}\nblob r:5000 team/app {d} {old}\ngarbage\n"),
        )
        .unwrap();
        let k = Known::new(Some(dir.path()));
        assert!(!k.checks_blobs("r:5000"));
        assert!(!k.has_blob("r:5000", "team/app", &d));
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
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn without_a_directory_nothing_is_written() {
        let k = Known::new(None);
        k.note_checks_blobs("r");
        assert!(k.checks_blobs("r"));
        k.save();
    }
}
