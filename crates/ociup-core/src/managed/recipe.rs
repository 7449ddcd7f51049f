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

    /// Checks that every file the steps read exists, before anything is written.
    ///
    /// # Errors
    /// [`Error::LayerSource`] naming the first missing file.
    pub fn check_sources(&self, dir: &Path) -> Result<()> {
        for p in self.sources(dir) {
            std::fs::symlink_metadata(&p).map_err(|e| Error::LayerSource {
                path: p.clone(),
                reason: if e.kind() == std::io::ErrorKind::NotFound {
                    "does not exist (named by the recipe)".into()
                } else {
                    format!("cannot be read: {e}")
                },
            })?;
        }
        Ok(())
    }

    /// Checks that every source is a relative path that stays inside the recipe's directory,
    /// for recipes read back from a catalog (an edit or replay must not read files elsewhere on
    /// the machine that runs it).
    ///
    /// # Errors
    /// [`Error::LayerSource`] naming the first source that leaves the directory.
    pub fn check_confined(&self) -> Result<()> {
        for s in &self.steps {
            if let Step::Add { src, .. } | Step::Replace { src, .. } = s {
                let p = Path::new(src);
                let escapes = p.is_absolute()
                    || p.components()
                        .any(|c| matches!(c, std::path::Component::ParentDir));
                if escapes {
                    return Err(Error::LayerSource {
                        path: p.to_owned(),
                        reason: "a stored recipe may only name files inside its directory".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The layer of the file steps (`None` when there are none), sources resolved against `dir`.
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
            .check_sources(Path::new("/nonexistent-dir"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("/nonexistent-dir/app") && missing.contains("does not exist"),
            "{missing}"
        );
    }
}
