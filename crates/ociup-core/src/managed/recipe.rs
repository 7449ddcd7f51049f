//! Recipes: a nick, a base, a target and the ordered steps that make a custom image from the
//! base. Stored as canonical JSON; files named by `add` and `replace` steps are read only when a
//! version is built from them (registration, edits), never when a base moves: then the layers
//! already built are reused byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ConfigChange;
use crate::error::{Error, Result};
use crate::layer::{LayerBuilder, LayerOptions};
use crate::store::MAX_DOCUMENT_SIZE;

/// A registration: what a managed image is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The user's short, stable name (`trainer`).
    pub nick: String,
    /// The base reference, usually a moving tag.
    pub base: String,
    /// Where versions go: a repository (`registry/ns/name`) or a layout (`oci:<dir>`), no tag.
    pub target: String,
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// One step of a recipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Step {
    /// Adds a file or tree at `dest`.
    Add {
        /// On the registering machine, relative to the recipe file.
        src: String,
        /// In the image.
        dest: String,
    },
    /// Replaces a file of the base (an add that documents intent).
    Replace {
        /// On the registering machine.
        src: String,
        /// In the image.
        dest: String,
    },
    /// Removes a path of the base.
    Remove {
        /// In the image.
        path: String,
    },
    /// Hides the base's contents of a directory.
    ClearDir {
        /// In the image.
        path: String,
    },
    /// Sets an environment variable.
    Env {
        /// Name.
        key: String,
        /// Value.
        value: String,
    },
    /// Sets the entrypoint.
    Entrypoint {
        /// Program and arguments.
        args: Vec<String>,
    },
    /// Sets the default arguments.
    Cmd {
        /// Arguments.
        args: Vec<String>,
    },
    /// Sets the working directory.
    Workdir {
        /// Directory.
        path: String,
    },
    /// Sets the user.
    User {
        /// Name, UID or UID:GID.
        user: String,
    },
    /// Sets a label.
    Label {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Exposes a port.
    Expose {
        /// `8080` or `53/udp`.
        port: String,
    },
    /// Declares a volume.
    Volume {
        /// Path.
        path: String,
    },
    /// Sets the stop signal.
    StopSignal {
        /// Signal.
        signal: String,
    },
    /// Sets a manifest annotation.
    Annotation {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
}

impl Step {
    /// The step as a command line, for the audit trail and the build manifest.
    pub fn command(&self) -> String {
        let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        match self {
            Step::Add { src, dest } => format!("--add {src}:{dest}"),
            Step::Replace { src, dest } => format!("--replace {src}:{dest}"),
            Step::Remove { path } => format!("--remove {path}"),
            Step::ClearDir { path } => format!("--clear-dir {path}"),
            Step::Env { key, value } => format!("--env {key}={value}"),
            Step::Entrypoint { args } => format!("--entrypoint '{}'", list(args)),
            Step::Cmd { args } => format!("--cmd '{}'", list(args)),
            Step::Workdir { path } => format!("--workdir {path}"),
            Step::User { user } => format!("--user {user}"),
            Step::Label { key, value } => format!("--label {key}={value}"),
            Step::Expose { port } => format!("--expose {port}"),
            Step::Volume { path } => format!("--volume {path}"),
            Step::StopSignal { signal } => format!("--stop-signal {signal}"),
            Step::Annotation { key, value } => format!("--annotation {key}={value}"),
        }
    }
}

/// Checks a nick: 1 to 64 of `[a-z0-9_-]`, starting with a letter or digit (it becomes part of
/// tags).
///
/// # Errors
/// [`Error::InvalidReference`] naming the nick.
pub fn validate_nick(nick: &str) -> Result<()> {
    let ok = !nick.is_empty()
        && nick.len() <= 64
        && nick
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && nick
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidReference {
            input: nick.into(),
            reason: "a nick is 1 to 64 of [a-z0-9_-], starting with a letter or digit".into(),
        })
    }
}

/// Which files the `add` and `replace` steps of a recipe may read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceAccess {
    /// Only files under the directory sources are read from, symlinks resolved: a recipe file
    /// reads only under its own folder, and a recipe read back from a catalog (an edit, a
    /// replay) only under the directory it is run in.
    #[default]
    Confined,
    /// Any file: steps typed on the command line by whoever runs it (`--add /etc/app.conf:…`),
    /// or a stored recipe its user trusts to read outside the directory (`--allow-outside`).
    Anywhere,
}

/// The file a step's `src` names, resolved against `dir`. With [`SourceAccess::Confined`], it
/// must lie under `dir` once every symlink (in `dir`, in `src`, and `src` itself) is resolved.
fn source_path(dir: &Path, src: &str, access: SourceAccess) -> Result<PathBuf> {
    let path = dir.join(src);
    let missing = |e: std::io::Error| Error::LayerSource {
        path: path.clone(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist (named by the recipe)".into()
        } else {
            format!("cannot be read: {e}")
        },
    };
    match access {
        SourceAccess::Anywhere => {
            std::fs::symlink_metadata(&path).map_err(missing)?;
            Ok(path)
        }
        SourceAccess::Confined => {
            let root = std::fs::canonicalize(dir).map_err(|e| Error::LayerSource {
                path: dir.to_owned(),
                reason: format!("the recipe's directory cannot be read: {e}"),
            })?;
            let resolved = std::fs::canonicalize(&path).map_err(missing)?;
            if resolved.starts_with(&root) {
                Ok(resolved)
            } else {
                Err(Error::LayerSource {
                    path,
                    reason: format!(
                        "is {}, outside {}: a recipe reads only under its own directory \
                         (symlinks resolved)",
                        resolved.display(),
                        root.display()
                    ),
                })
            }
        }
    }
}

fn bad_step(what: &str, reason: &str) -> Error {
    Error::InvalidChange {
        reason: format!("recipe {what}: {reason}"),
    }
}

/// An image path as a layer takes it: no `..`, no NUL, no whiteout names; below the root
/// unless `root_ok`.
fn check_image_path(path: &str, root_ok: bool) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("names no path in the image".into());
    }
    let mut below_root = false;
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("{path:?} must not contain '..'")),
            c if c.contains('\0') => return Err(format!("{path:?} must not contain NUL")),
            c if c.starts_with(".wh.") => {
                return Err(format!("{c:?} in {path:?} is reserved for whiteouts"));
            }
            _ => below_root = true,
        }
    }
    if !below_root && !root_ok {
        return Err(format!("{path:?} must name something below the root"));
    }
    Ok(())
}

/// A stop signal as container runtimes parse it: a number from 1 to 64, or a name such as
/// `SIGTERM`, `TERM` or `SIGRTMIN+3`.
fn valid_signal(signal: &str) -> bool {
    if let Ok(n) = signal.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = signal.strip_prefix("SIG").unwrap_or(signal);
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '+' || c == '-')
}

impl Recipe {
    /// Parses a recipe file's contents.
    ///
    /// # Errors
    /// [`Error::MalformedDocument`] naming `what` (the file) with the parser's line and column.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Recipe> {
        let r: Recipe =
            serde_json::from_slice(bytes).map_err(|source| Error::MalformedDocument {
                what: format!("recipe {what}"),
                source,
            })?;
        validate_nick(&r.nick)?;
        Ok(r)
    }

    /// The runtime config changes, in order.
    pub fn config_changes(&self) -> Vec<ConfigChange> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Env { key, value } => Some(ConfigChange::Env(key.clone(), value.clone())),
                Step::Entrypoint { args } => Some(ConfigChange::Entrypoint(args.clone())),
                Step::Cmd { args } => Some(ConfigChange::Cmd(args.clone())),
                Step::Workdir { path } => Some(ConfigChange::WorkingDir(path.clone())),
                Step::User { user } => Some(ConfigChange::User(user.clone())),
                Step::Label { key, value } => Some(ConfigChange::Label(key.clone(), value.clone())),
                Step::Expose { port } => Some(ConfigChange::ExposePort(port.clone())),
                Step::Volume { path } => Some(ConfigChange::Volume(path.clone())),
                Step::StopSignal { signal } => Some(ConfigChange::StopSignal(signal.clone())),
                _ => None,
            })
            .collect()
    }

    /// The manifest annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Annotation { key, value } => Some((key.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    /// The files the steps read, resolved against `dir` (the recipe file's directory).
    pub fn sources(&self, dir: &Path) -> Vec<PathBuf> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Add { src, .. } | Step::Replace { src, .. } => Some(dir.join(src)),
                _ => None,
            })
            .collect()
    }

    /// Checks that every file the steps read exists and, with [`SourceAccess::Confined`], lies
    /// under `dir` once symlinks are resolved, before anything is written.
    ///
    /// # Errors
    /// [`Error::LayerSource`] naming the first missing file or the first one outside `dir`.
    pub fn check_sources(&self, dir: &Path, access: SourceAccess) -> Result<()> {
        for s in &self.steps {
            if let Step::Add { src, .. } | Step::Replace { src, .. } = s {
                source_path(dir, src, access)?;
            }
        }
        Ok(())
    }

    /// Checks every value of every step without reading a file: nick, base and target given,
    /// environment names, label and annotation keys, ports, working directory and volumes
    /// (absolute), user, stop signal, and image paths (no `..`, no whiteout names, not the
    /// root where a path below it is needed), and that the config and annotations the recipe
    /// sets stay within [`MAX_DOCUMENT_SIZE`] on their own.
    ///
    /// # Errors
    /// [`Error::InvalidChange`] or [`Error::LayerPath`] naming the step and what is wrong.
    pub fn validate(&self) -> Result<()> {
        validate_nick(&self.nick)?;
        for (what, value) in [("base", &self.base), ("target", &self.target)] {
            if value.trim().is_empty() {
                return Err(Error::InvalidChange {
                    reason: format!("recipe {} names no {what}", self.nick),
                });
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let at = || format!("step {} ({})", i + 1, s.command());
            match s {
                Step::Add { src, dest } | Step::Replace { src, dest } => {
                    if src.is_empty() {
                        return Err(bad_step(&at(), "names no source file"));
                    }
                    check_image_path(dest, true).map_err(|r| bad_step(&at(), &r))?;
                }
                Step::Remove { path } => {
                    check_image_path(path, false).map_err(|r| bad_step(&at(), &r))?;
                }
                Step::ClearDir { path } => {
                    check_image_path(path, true).map_err(|r| bad_step(&at(), &r))?;
                }
                Step::Env { key, .. } => {
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        return Err(bad_step(
                            &at(),
                            "an environment variable name is not empty and holds no '=' or NUL",
                        ));
                    }
                }
                Step::Label { key, .. } | Step::Annotation { key, .. } => {
                    if key.trim().is_empty() {
                        return Err(bad_step(&at(), "the key is empty"));
                    }
                }
                Step::Workdir { path } | Step::Volume { path } => {
                    if !path.starts_with('/') || path.contains('\0') {
                        return Err(bad_step(&at(), "must be an absolute path in the image"));
                    }
                }
                Step::User { user } => {
                    let ok = !user.is_empty()
                        && user.matches(':').count() <= 1
                        && user.split(':').all(|p| !p.is_empty())
                        && !user.chars().any(|c| c.is_whitespace() || c.is_control());
                    if !ok {
                        return Err(bad_step(&at(), "expected USER, UID, USER:GROUP or UID:GID"));
                    }
                }
                Step::StopSignal { signal } => {
                    if !valid_signal(signal) {
                        return Err(bad_step(
                            &at(),
                            "expected a signal name (SIGTERM, TERM, SIGRTMIN+3) or number (1 to 64)",
                        ));
                    }
                }
                Step::Expose { port } => {
                    let change = [ConfigChange::ExposePort(port.clone())];
                    crate::config::apply_changes(&mut serde_json::Map::new(), &change)
                        .map_err(|e| bad_step(&at(), &e.to_string()))?;
                }
                Step::Entrypoint { .. } | Step::Cmd { .. } => {}
            }
        }
        // Ports, and what the changes make of an empty config: the config of a version holds
        // at least this (and its history line repeats the changes).
        let mut config = serde_json::Map::new();
        crate::config::apply_changes(&mut config, &self.config_changes())?;
        let changes = self.config_changes();
        let history: usize = changes.iter().map(|c| c.describe().len()).sum();
        let size =
            crate::document::canonical_json(&serde_json::Value::Object(config))?.len() + history;
        let annotations = crate::document::canonical_json(&self.annotations())?.len();
        for (what, size) in [("config", size), ("manifest annotations", annotations)] {
            if size as u64 > MAX_DOCUMENT_SIZE {
                return Err(Error::InvalidChange {
                    reason: format!(
                        "the {what} recipe {} sets take {size} bytes, more than the \
                         {MAX_DOCUMENT_SIZE} bytes a document may have",
                        self.nick
                    ),
                });
            }
        }
        Ok(())
    }

    /// Everything that can be checked before anything is written: [`Recipe::validate`], the
    /// sources ([`Recipe::check_sources`]), and the layer planned from them (a tree holding a
    /// socket or a symlink that climbs out, an image path given twice), without reading a
    /// file's contents.
    ///
    /// # Errors
    /// As [`Recipe::validate`], [`Recipe::check_sources`] and [`Recipe::layer`].
    pub fn check(&self, dir: &Path, access: SourceAccess) -> Result<()> {
        self.validate()?;
        self.check_sources(dir, access)?;
        self.layer(dir, LayerOptions::default())?;
        Ok(())
    }

    /// The layer of the file steps (`None` when there are none), sources resolved against `dir`.
    /// Check them first with [`Recipe::check`]: this reads whatever they name.
    ///
    /// # Errors
    /// As [`LayerBuilder::add`], [`LayerBuilder::remove`], [`LayerBuilder::clear_dir`].
    pub fn layer(&self, dir: &Path, opts: LayerOptions) -> Result<Option<LayerBuilder>> {
        let mut b = LayerBuilder::new(opts);
        let mut any = false;
        for s in &self.steps {
            match s {
                Step::Add { src, dest } | Step::Replace { src, dest } => {
                    b.add(dir.join(src), dest)?
                }
                Step::Remove { path } => b.remove(path)?,
                Step::ClearDir { path } => b.clear_dir(path)?,
                _ => continue,
            }
            any = true;
        }
        Ok(any.then_some(b))
    }

    /// The steps as command lines.
    pub fn commands(&self) -> Vec<String> {
        self.steps.iter().map(Step::command).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_format_and_names_errors() {
        let r = Recipe::parse(
            br#"{"nick": "trainer", "base": "oci:fixtures/base:latest", "target": "oci:images",
                "steps": [{"add": {"src": "app", "dest": "/opt/app"}}, {"remove": {"path": "/etc/motd"}},
                          {"env": {"key": "A", "value": "1"}}, {"entrypoint": {"args": ["/opt/app/run"]}}]}"#,
            "t.json",
        )
        .unwrap();
        assert_eq!(r.config_changes().len(), 2);
        assert_eq!(r.commands()[0], "--add app:/opt/app");
        let err = Recipe::parse(
            br#"{"nick": "x", "base": "b", "target": "t", "steps": [{"copy": {}}]}"#,
            "bad.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("recipe bad.json"), "{err}");
        assert!(
            std::error::Error::source(&err)
                .unwrap()
                .to_string()
                .contains("copy")
        );
        let err = Recipe::parse(
            br#"{"nick": "Bad Nick", "base": "b", "target": "t"}"#,
            "n.json",
        )
        .unwrap_err();
        assert!(err.to_string().contains("nick"), "{err}");
        let missing = r
            .check_sources(Path::new("/nonexistent-dir"), SourceAccess::Anywhere)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("/nonexistent-dir/app") && missing.contains("does not exist"),
            "{missing}"
        );
    }

    fn recipe(steps: &str) -> Recipe {
        Recipe::parse(
            format!(
                r#"{{"nick": "n", "base": "oci:b:v1", "target": "oci:t", "steps": [{steps}]}}"#
            )
            .as_bytes(),
            "r.json",
        )
        .unwrap()
    }

    #[test]
    fn validate_names_every_bad_value() {
        for (step, want) in [
            (r#"{"env": {"key": "A=B", "value": "1"}}"#, "environment"),
            (r#"{"env": {"key": "", "value": "1"}}"#, "environment"),
            (r#"{"expose": {"port": "http"}}"#, "http"),
            (r#"{"workdir": {"path": "app"}}"#, "absolute"),
            (r#"{"volume": {"path": ""}}"#, "absolute"),
            (r#"{"user": {"user": ""}}"#, "USER"),
            (r#"{"user": {"user": "a b"}}"#, "USER"),
            (r#"{"stop_signal": {"signal": "99"}}"#, "signal"),
            (r#"{"stop_signal": {"signal": "term!"}}"#, "signal"),
            (r#"{"label": {"key": " ", "value": "x"}}"#, "key"),
            (r#"{"annotation": {"key": "", "value": "x"}}"#, "key"),
            (r#"{"remove": {"path": "/"}}"#, "below the root"),
            (r#"{"remove": {"path": "/a/../b"}}"#, ".."),
            (r#"{"clear_dir": {"path": "/x/.wh.y"}}"#, "whiteout"),
            (r#"{"add": {"src": "f", "dest": "../etc/passwd"}}"#, ".."),
            (r#"{"add": {"src": "", "dest": "/f"}}"#, "source"),
        ] {
            let err = recipe(step).validate().unwrap_err().to_string();
            assert!(
                err.contains("step 1") && err.contains(want),
                "{step}: {err}"
            );
        }
        for good in [
            r#"{"env": {"key": "A", "value": "x=y"}}"#,
            r#"{"expose": {"port": "53/udp"}}"#,
            r#"{"workdir": {"path": "/srv"}}"#,
            r#"{"user": {"user": "1000:1000"}}"#,
            r#"{"stop_signal": {"signal": "SIGRTMIN+3"}}"#,
            r#"{"stop_signal": {"signal": "15"}}"#,
            r#"{"clear_dir": {"path": "/"}}"#,
            r#"{"entrypoint": {"args": []}}"#,
        ] {
            recipe(good).validate().unwrap();
        }
        let err = Recipe::parse(br#"{"nick": "n", "base": "", "target": "oci:t"}"#, "r.json")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("names no base"), "{err}");
    }

    #[test]
    fn a_config_past_the_document_cap_is_refused_before_any_base_is_read() {
        let big = "x".repeat(MAX_DOCUMENT_SIZE as usize / 2 + 1);
        // The value is in the config twice: in Env and in the history line.
        let err = recipe(&format!(r#"{{"env": {{"key": "A", "value": "{big}"}}}}"#))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("config") && err.contains("bytes"), "{err}");
        let err = recipe(&format!(
            r#"{{"annotation": {{"key": "a", "value": "{big}{big}"}}}}"#
        ))
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("manifest annotations"), "{err}");
    }

    #[test]
    fn confined_sources_stay_under_the_directory_symlinks_resolved() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("recipe");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(dir.join("app/f"), b"f").unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("data")).unwrap();
        std::os::unix::fs::symlink("app", dir.join("inside")).unwrap();
        let secret = outside.join("secret").display().to_string();
        for (src, ok) in [
            ("app/f", true),
            ("inside/f", true),
            ("app/../app/f", true),
            ("../outside/secret", false),
            (secret.as_str(), false),
            ("data/secret", false),
            ("data", false),
        ] {
            let r = recipe(&format!(r#"{{"add": {{"src": "{src}", "dest": "/x"}}}}"#));
            let got = r.check_sources(&dir, SourceAccess::Confined);
            assert_eq!(got.is_ok(), ok, "{src}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("outside"), "{e}");
            }
            // Steps typed on a command line read what they name.
            r.check_sources(&dir, SourceAccess::Anywhere).unwrap();
        }
    }
}
