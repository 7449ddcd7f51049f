//! Bearer tokens: who may call the service, and in which role.
//!
//! A token is 32 random bytes from the operating system, written once as `ociup_` and 64 hex
//! digits; the tokens file keeps only its SHA-256. That is enough without a slow password hash:
//! a slow hash (bcrypt, argon2) protects low-entropy secrets that people choose against guessing,
//! and a 256-bit random token cannot be guessed, so what the file must withstand is inversion,
//! which SHA-256's preimage resistance gives. A fast hash also keeps the check cheap on every
//! request.
//!
//! The file is JSON, written atomically (a new file renamed over the old, mode 0600):
//!
//! ```json
//! {"tokens": [{"name": "ci", "role": "requester", "sha256": "…", "created": "2026-…Z"}]}
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Resolve, status, history, verify.
    Requester,
    /// Also register, edit, unregister, upgrade all, gc.
    Admin,
}

impl Role {
    /// Its name in the tokens file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Requester => "requester",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "requester" => Ok(Role::Requester),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("{s:?} is not a role: requester or admin")),
        }
    }
}

/// One token as stored: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it: recorded as the actor of what it does.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    /// When it was made (RFC 3339).
    pub created: String,
}

/// The tokens file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The tokens, in the order made.
    pub tokens: Vec<TokenEntry>,
}

/// A tokens file error.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the file.
    #[error("{context}: {source}")]
    Io {
        /// What was done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The file is not a tokens file.
    #[error("{path}: not a tokens file: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad name, a name taken, a name not found.
    #[error("{0}")]
    Invalid(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TokenError {
    let context = context.into();
    move |source| TokenError::Io { context, source }
}

/// SHA-256 of a token, lowercase hex.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A token name: 1 to 64 of `[A-Za-z0-9._@-]`, so it reads as an actor in an audit trail.
///
/// # Errors
/// Any other name.
pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TokenError::Invalid(format!(
            "token name {name:?}: give 1 to 64 of letters, digits, '.', '_', '@', '-'"
        )))
    }
}

impl TokenFile {
    /// Reads a tokens file; a missing file holds no tokens.
    ///
    /// # Errors
    /// An unreadable or malformed file.
    pub fn load(path: &Path) -> Result<TokenFile, TokenError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TokenFile::default()),
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        Self::parse(&bytes, path)
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<TokenFile, TokenError> {
        let file: TokenFile = serde_json::from_slice(bytes).map_err(|e| TokenError::Malformed {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        for t in &file.tokens {
            validate_name(&t.name).map_err(|e| TokenError::Malformed {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(TokenError::Malformed {
                    path: path.display().to_string(),
                    reason: format!("token {:?}: sha256 is not 64 hex digits", t.name),
                });
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for t in &file.tokens {
            let twice = if !names.insert(t.name.as_str()) {
                format!("the name {:?} is given twice", t.name)
            } else if !hashes.insert(t.sha256.to_ascii_lowercase()) {
                format!("token {:?}: its sha256 is another token's too", t.name)
            } else {
                continue;
            };
            return Err(TokenError::Malformed {
                path: path.display().to_string(),
                reason: twice,
            });
        }
        Ok(file)
    }

    /// Writes the file atomically: a new file (mode 0600) in the same folder, renamed over it.
    ///
    /// # Errors
    /// The folder cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let context = || format!("writing {}", path.display());
        let mut tmp = tempfile::Builder::new()
            .prefix(".ociup-tokens")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io(context()))?;
        let mut text =
            serde_json::to_vec_pretty(self).map_err(|e| TokenError::Invalid(e.to_string()))?;
        text.push(b'\n');
        tmp.write_all(&text).map_err(io(context()))?;
        tmp.as_file().sync_all().map_err(io(context()))?;
        tmp.persist(path).map_err(|e| io(context())(e.error))?;
        Ok(())
    }
}

/// Runs `change` on the tokens file under an exclusive lock (a `.lock` file beside it), so two
/// `ociup token` commands at once do not lose each other's change, then saves it.
fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut TokenFile) -> Result<T, TokenError>,
) -> Result<T, TokenError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(format!("opening {}", lock_path.display())))?;
    lock.lock()
        .map_err(io(format!("locking {}", lock_path.display())))?;
    let mut file = TokenFile::load(path)?;
    let out = change(&mut file)?;
    file.save(path)?;
    Ok(out)
}

/// Makes a token for `name` in `role`, stores its hash, and returns the token (shown once).
///
/// # Errors
/// A bad or taken name; the file cannot be read or written; no randomness.
pub fn create(path: &Path, name: &str, role: Role, now: &str) -> Result<String, TokenError> {
    validate_name(name)?;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| TokenError::Invalid(format!("no randomness from the system: {e}")))?;
    let token = format!("ociup_{}", hex(&raw));
    update(path, |file| {
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(TokenError::Invalid(format!(
                "a token named {name:?} exists in {}; revoke it first",
                path.display()
            )));
        }
        file.tokens.push(TokenEntry {
            name: name.to_owned(),
            role,
            sha256: hash(&token),
            created: now.to_owned(),
        });
        Ok(())
    })?;
    Ok(token)
}

/// Removes the token named `name`.
///
/// # Errors
/// No such token; the file cannot be read or written.
pub fn revoke(path: &Path, name: &str) -> Result<TokenEntry, TokenError> {
    update(path, |file| {
        let i = file
            .tokens
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| {
                TokenError::Invalid(format!("no token named {name:?} in {}", path.display()))
            })?;
        Ok(file.tokens.remove(i))
    })
}

/// Who made a request: the token's name and role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// What identifies one version of the file on disk: a rename gives a new inode, a write in
/// place a new mtime or size.
type Stamp = (u64, u64, i64, i64, u64);

fn stamp(path: &Path) -> std::io::Result<Option<Stamp>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.dev(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.size(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<Stamp>,
    /// By the SHA-256 of the token (the bytes, so a request's check allocates nothing).
    by_hash: HashMap<[u8; 32], Identity>,
    /// Why the file as it is now cannot be read: then no token is accepted.
    broken: Option<String>,
}

/// The tokens file cannot be read as it is now: no token is accepted until it is fixed.
#[derive(Debug, thiserror::Error)]
#[error("the tokens file cannot be read, so no token is accepted: {0}")]
pub struct Unreadable(pub String);

/// The tokens the service accepts, read again from the file whenever it changes (one `stat` per
/// request). A file that turns unreadable or malformed accepts no token at all until it is fixed
/// (fail closed: a revocation written badly must not leave the revoked token working), and says
/// why in the log.
#[derive(Clone, Debug)]
pub struct TokenStore {
    path: PathBuf,
    loaded: Arc<Mutex<Loaded>>,
}

impl TokenStore {
    /// Reads the tokens file.
    ///
    /// # Errors
    /// An unreadable or malformed file.
    pub fn open(path: impl Into<PathBuf>) -> Result<TokenStore, TokenError> {
        let path = path.into();
        let st = stamp(&path).map_err(io(format!("reading {}", path.display())))?;
        let file = TokenFile::load(&path)?;
        warn_if_exposed(&path);
        Ok(TokenStore {
            loaded: Arc::new(Mutex::new(Loaded {
                stamp: st,
                by_hash: index(&file),
                broken: None,
            })),
            path,
        })
    }

    /// Who holds `token`, if anyone.
    ///
    /// # Errors
    /// The file cannot be read as it is now: no token is accepted.
    pub fn identify(&self, token: &str) -> Result<Option<Identity>, Unreadable> {
        self.refresh();
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &loaded.broken {
            return Err(Unreadable(why.clone()));
        }
        Ok(loaded.by_hash.get(&sha256(token)).cloned())
    }

    fn refresh(&self) {
        let now = stamp(&self.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = match now {
            Ok(s) => s,
            Err(e) => {
                let why = format!("tokens file {}: {e}", self.path.display());
                if loaded.broken.as_deref() != Some(&why) {
                    tracing::error!("{why}; no token is accepted until it can be read");
                }
                loaded.broken = Some(why);
                loaded.stamp = None;
                return;
            }
        };
        if loaded.stamp == now && (now.is_some() || loaded.broken.is_some()) {
            return;
        }
        loaded.stamp = now;
        match TokenFile::load(&self.path) {
            Ok(file) => {
                loaded.by_hash = index(&file);
                loaded.broken = None;
                tracing::info!(tokens = loaded.by_hash.len(), "tokens file read again");
            }
            Err(e) => {
                tracing::error!("{e}; no token is accepted until it is fixed");
                loaded.by_hash.clear();
                loaded.broken = Some(e.to_string());
            }
        }
    }
}

/// Warns when the tokens file may be read or changed by others than the user serving: a mode
/// looser than 0600, or another owner.
fn warn_if_exposed(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            "tokens file {}: mode {mode:o} lets others read or change it; chmod 600 it",
            path.display()
        );
    }
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if me.is_some_and(|uid| uid != meta.uid()) {
        tracing::warn!(
            "tokens file {}: owned by uid {}, not by the user serving; whoever owns it decides \
             who gets in",
            path.display(),
            meta.uid()
        );
    }
}

fn index(file: &TokenFile) -> HashMap<[u8; 32], Identity> {
    file.tokens
        .iter()
        .filter_map(|t| {
            Some((
                unhex(&t.sha256)?,
                Identity {
                    name: t.name.clone(),
                    role: t.role,
                },
            ))
        })
        .collect()
}

/// SHA-256 of a token, as bytes.
fn sha256(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(token.as_bytes()));
    out
}

/// 64 hex digits (either case) as 32 bytes; `None` for anything else (`TokenFile::parse`
/// refuses such a file before).
fn unhex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_stores_only_the_hash_and_identifies_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let token = create(&path, "ci", Role::Requester, "2026-01-01T00:00:00Z").expect("create");
        assert!(token.starts_with("ociup_") && token.len() == 6 + 64);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains(&token[6..]),
            "the token itself is not stored"
        );
        assert!(text.contains(&hash(&token)));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let store = TokenStore::open(&path).expect("open");
        assert_eq!(
            store.identify(&token).expect("readable"),
            Some(Identity {
                name: "ci".into(),
                role: Role::Requester
            })
        );
        assert_eq!(store.identify("ociup_0000").expect("readable"), None);
        // A second token with the same name is refused; revoking it makes it unknown at once.
        assert!(create(&path, "ci", Role::Admin, "t").is_err());
        revoke(&path, "ci").expect("revoke");
        assert_eq!(store.identify(&token).expect("readable"), None);
        assert!(revoke(&path, "ci").is_err());
    }

    #[test]
    fn a_malformed_or_missing_file_accepts_no_token_until_fixed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let token = create(&path, "a", Role::Admin, "t").expect("create");
        let good = std::fs::read(&path).expect("read");
        let store = TokenStore::open(&path).expect("open");
        std::fs::write(&path, "{not json").expect("write");
        assert!(store.identify(&token).is_err(), "fails closed");
        assert!(store.identify(&token).is_err(), "and stays closed");
        assert!(TokenFile::load(&path).is_err());
        std::fs::write(&path, &good).expect("write");
        assert_eq!(
            store.identify(&token).expect("readable").map(|i| i.role),
            Some(Role::Admin)
        );
        std::fs::remove_file(&path).expect("rm");
        assert!(
            !matches!(store.identify(&token), Ok(Some(_))),
            "a removed file accepts no token"
        );
        // Names and hashes are each given once.
        let h = hash(&token);
        let entry = |name: &str, sha: &str| {
            format!(r#"{{"name":"{name}","role":"admin","sha256":"{sha}","created":"t"}}"#)
        };
        for tokens in [
            format!("{},{}", entry("a", &h), entry("a", &hash("other"))),
            format!("{},{}", entry("a", &h), entry("b", &h.to_ascii_uppercase())),
        ] {
            let text = format!(r#"{{"tokens":[{tokens}]}}"#);
            let e = TokenFile::parse(text.as_bytes(), &path).expect_err(&text);
            assert!(
                e.to_string().contains("twice") || e.to_string().contains("another"),
                "{e}"
            );
        }
        assert!(validate_name("a/b").is_err() && validate_name("").is_err());
    }

    #[test]
    fn stored_hashes_are_read_in_either_case() {
        let h = hash("ociup_x");
        let bytes = sha256("ociup_x");
        assert_eq!(unhex(&h), Some(bytes));
        assert_eq!(unhex(&h.to_ascii_uppercase()), Some(bytes));
        assert_eq!(unhex(&h[..62]), None);
        assert_eq!(unhex(&format!("{}zz", &h[..62])), None);
        // A file written with an uppercase hash identifies the token.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let text = format!(
            r#"{{"tokens":[{{"name":"a","role":"requester","sha256":"{}","created":"t"}}]}}"#,
            h.to_ascii_uppercase()
        );
        std::fs::write(&path, text).expect("write");
        let store = TokenStore::open(&path).expect("open");
        assert_eq!(
            store.identify("ociup_x").expect("readable").map(|i| i.name),
            Some("a".to_owned())
        );
        assert_eq!(store.identify("ociup_y").expect("readable"), None);
    }
}
