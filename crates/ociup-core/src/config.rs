//! Image configs, kept as a JSON object so that fields no type models (Docker's `Healthcheck`,
//! `OnBuild`, `Shell`, vendor fields) survive every edit.

use serde_json::{Map, Value};

use crate::digest::Digest;
use crate::document::RawDocument;
use crate::error::{Error, Result};

/// An image config: its stored bytes and the JSON object they hold.
#[derive(Clone, Debug)]
pub struct Config {
    raw: RawDocument,
    value: Map<String, Value>,
}

impl Config {
    /// Parses a config blob.
    ///
    /// # Errors
    /// [`Error::MalformedDocument`] when it is not JSON, [`Error::InvalidDocument`] when it is not
    /// an object or its `rootfs.diff_ids` are not digests.
    pub fn parse(raw: RawDocument) -> Result<Config> {
        let what = || format!("config {}", raw.digest());
        let value: Value =
            serde_json::from_slice(raw.bytes()).map_err(|source| Error::MalformedDocument {
                what: what(),
                source,
            })?;
        let Value::Object(value) = value else {
            return Err(Error::InvalidDocument {
                what: what(),
                reason: "it is not a JSON object".into(),
            });
        };
        let config = Config { raw, value };
        config.diff_ids()?;
        Ok(config)
    }

    /// A config for an image with no base: the given platform, no layers, no settings.
    pub fn scratch(os: &str, architecture: &str, variant: Option<&str>) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("architecture".into(), architecture.into());
        m.insert("os".into(), os.into());
        if let Some(v) = variant {
            m.insert("variant".into(), v.into());
        }
        m.insert("config".into(), Value::Object(Map::new()));
        m.insert(
            "rootfs".into(),
            serde_json::json!({"type": "layers", "diff_ids": []}),
        );
        m.insert("history".into(), Value::Array(Vec::new()));
        m
    }

    /// The stored bytes.
    pub fn raw(&self) -> &RawDocument {
        &self.raw
    }

    /// The JSON object.
    pub fn value(&self) -> &Map<String, Value> {
        &self.value
    }

    /// `rootfs.diff_ids`.
    ///
    /// # Errors
    /// [`Error::InvalidDocument`] when they are missing or not digests.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        let bad = |reason: String| Error::InvalidDocument {
            what: format!("config {}", self.raw.digest()),
            reason,
        };
        let ids = self
            .value
            .get("rootfs")
            .and_then(|r| r.get("diff_ids"))
            .and_then(Value::as_array)
            .ok_or_else(|| bad("rootfs.diff_ids is missing".into()))?;
        ids.iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| bad("a diff_id is not a string".into()))?
                    .parse()
                    .map_err(|e| bad(format!("{e}")))
            })
            .collect()
    }

    /// A top-level string field such as `os`, `architecture` or `variant`.
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(Value::as_str)
    }
}

/// One change to a config's runtime settings (the `config` object), as Dockerfile instructions
/// make them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigChange {
    /// Sets `KEY=VALUE` in `Env`, replacing an earlier value of that key in place.
    Env(String, String),
    /// Sets `Entrypoint`. As in a Dockerfile, a base's `Cmd` is cleared unless a `Cmd` change
    /// comes in the same set.
    Entrypoint(Vec<String>),
    /// Sets `Cmd`.
    Cmd(Vec<String>),
    /// Sets `WorkingDir`.
    WorkingDir(String),
    /// Sets `User`.
    User(String),
    /// Sets one label.
    Label(String, String),
    /// Adds an exposed port (`8080/tcp`; a bare number means tcp).
    ExposePort(String),
    /// Adds a volume.
    Volume(String),
    /// Sets `StopSignal`.
    StopSignal(String),
}

impl ConfigChange {
    /// The Dockerfile-like line recorded in the history for this change.
    pub fn describe(&self) -> String {
        let list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        match self {
            ConfigChange::Env(k, v) => format!("ENV {k}={v}"),
            ConfigChange::Entrypoint(v) => format!("ENTRYPOINT {}", list(v)),
            ConfigChange::Cmd(v) => format!("CMD {}", list(v)),
            ConfigChange::WorkingDir(d) => format!("WORKDIR {d}"),
            ConfigChange::User(u) => format!("USER {u}"),
            ConfigChange::Label(k, v) => format!("LABEL {k}={v}"),
            ConfigChange::ExposePort(p) => format!("EXPOSE {p}"),
            ConfigChange::Volume(v) => format!("VOLUME {v}"),
            ConfigChange::StopSignal(s) => format!("STOPSIGNAL {s}"),
        }
    }
}

/// Applies `changes` in order to a config object, touching nothing else in it.
///
/// # Errors
/// [`Error::InvalidChange`] for an empty env key, a malformed port, or a `config` field that is
/// not an object.
pub fn apply_changes(config: &mut Map<String, Value>, changes: &[ConfigChange]) -> Result<()> {
    let rc = config
        .entry("config")
        .or_insert_with(|| Value::Object(Map::new()));
    if rc.is_null() {
        *rc = Value::Object(Map::new());
    }
    let Value::Object(rc) = rc else {
        return Err(Error::InvalidChange {
            reason: "the image config's \"config\" field is not an object".into(),
        });
    };
    let sets_cmd = changes.iter().any(|c| matches!(c, ConfigChange::Cmd(_)));
    for change in changes {
        match change {
            ConfigChange::Env(k, v) => {
                if k.is_empty() || k.contains('=') {
                    return Err(Error::InvalidChange {
                        reason: format!("invalid environment variable name {k:?}"),
                    });
                }
                let env = array_field(rc, "Env")?;
                let item = Value::String(format!("{k}={v}"));
                let prefix = format!("{k}=");
                match env
                    .iter_mut()
                    .find(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix) || s == k))
                {
                    Some(slot) => *slot = item,
                    None => env.push(item),
                }
            }
            ConfigChange::Entrypoint(v) => {
                rc.insert("Entrypoint".into(), strings(v));
                if !sets_cmd {
                    rc.remove("Cmd");
                }
            }
            ConfigChange::Cmd(v) => {
                rc.insert("Cmd".into(), strings(v));
            }
            ConfigChange::WorkingDir(d) => {
                rc.insert("WorkingDir".into(), d.clone().into());
            }
            ConfigChange::User(u) => {
                rc.insert("User".into(), u.clone().into());
            }
            ConfigChange::Label(k, v) => {
                object_field(rc, "Labels")?.insert(k.clone(), v.clone().into());
            }
            ConfigChange::ExposePort(p) => {
                let port = normalize_port(p)?;
                object_field(rc, "ExposedPorts")?.insert(port, Value::Object(Map::new()));
            }
            ConfigChange::Volume(v) => {
                object_field(rc, "Volumes")?.insert(v.clone(), Value::Object(Map::new()));
            }
            ConfigChange::StopSignal(s) => {
                rc.insert("StopSignal".into(), s.clone().into());
            }
        }
    }
    Ok(())
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().cloned().map(Value::String).collect())
}

fn array_field<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>> {
    let slot = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().ok_or_else(|| Error::InvalidChange {
        reason: format!("the image config's {key} is not a list"),
    })
}

fn object_field<'a>(
    obj: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>> {
    let slot = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().ok_or_else(|| Error::InvalidChange {
        reason: format!("the image config's {key} is not an object"),
    })
}

fn normalize_port(p: &str) -> Result<String> {
    let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    let ok_num = num.parse::<u16>().is_ok_and(|n| n > 0);
    let ok_proto = matches!(proto, "tcp" | "udp" | "sctp");
    if !ok_num || !ok_proto {
        return Err(Error::InvalidChange {
            reason: format!("invalid port {p:?} (expected NUMBER or NUMBER/tcp|udp|sctp)"),
        });
    }
    Ok(format!("{num}/{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_merged_by_key_in_place() {
        let mut c = serde_json::json!({"config": {"Env": ["PATH=/bin", "A=1"]}})
            .as_object()
            .cloned()
            .unwrap();
        apply_changes(
            &mut c,
            &[
                ConfigChange::Env("PATH".into(), "/opt/bin:/bin".into()),
                ConfigChange::Env("B".into(), "2".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            c["config"]["Env"],
            serde_json::json!(["PATH=/opt/bin:/bin", "A=1", "B=2"])
        );
    }

    #[test]
    fn entrypoint_clears_inherited_cmd_unless_cmd_given() {
        let base = serde_json::json!({"config": {"Cmd": ["sh"]}})
            .as_object()
            .cloned()
            .unwrap();
        let mut c = base.clone();
        apply_changes(&mut c, &[ConfigChange::Entrypoint(vec!["/app".into()])]).unwrap();
        assert!(c["config"].get("Cmd").is_none());
        let mut c = base;
        apply_changes(
            &mut c,
            &[
                ConfigChange::Entrypoint(vec!["/app".into()]),
                ConfigChange::Cmd(vec!["--help".into()]),
            ],
        )
        .unwrap();
        assert_eq!(c["config"]["Cmd"], serde_json::json!(["--help"]));
    }

    #[test]
    fn ports_are_validated_and_normalized() {
        let mut c = Map::new();
        apply_changes(&mut c, &[ConfigChange::ExposePort("8080".into())]).unwrap();
        assert!(c["config"]["ExposedPorts"].get("8080/tcp").is_some());
        assert!(apply_changes(&mut c, &[ConfigChange::ExposePort("http".into())]).is_err());
    }
}
