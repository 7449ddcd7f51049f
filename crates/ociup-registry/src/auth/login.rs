//! Saving and removing logins where Docker keeps them: the `auths` of `config.json`, or the
//! credential helper it names (`credHelpers` for the registry, else `credsStore`), run as
//! `docker-credential-<name> store|erase`. The file is replaced atomically and stays private
//! (mode 0600); fields ociup does not know are kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{Error, Result, excerpt};

/// Where a login of a registry is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginStore {
    /// In the `auths` of this config file.
    File(PathBuf),
    /// In this credential helper (`docker-credential-<name>`).
    Helper(String),
}

impl std::fmt::Display for LoginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginStore::File(p) => write!(f, "{}", p.display()),
            LoginStore::Helper(h) => write!(f, "credential helper docker-credential-{h}"),
        }
    }
}

/// The key of `registry` (`host[:port]`) in a config file: Docker Hub is
/// `https://index.docker.io/v1/`, as Docker writes it.
pub fn config_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_owned()
        }
        r => r.to_owned(),
    }
}

fn config_err(config: &Path, what: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {what}", config.display()))
}

/// The config file as a JSON object; an empty one when the file does not exist.
fn read_config(config: &Path) -> Result<Map<String, Value>> {
    let bytes = match std::fs::read(config) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(config_err(config, format!("cannot read it: {e}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(config_err(config, "not a JSON object; left as it is")),
        Err(e) => Err(config_err(
            config,
            format!("not valid JSON ({e}); left as it is"),
        )),
    }
}

/// Where a login of `registry` goes with this config file.
///
/// # Errors
/// [`Error::Config`] when the file cannot be read or is not a JSON object.
pub fn login_store(config: &Path, registry: &str) -> Result<LoginStore> {
    let m = read_config(config)?;
    let helper = m
        .get("credHelpers")
        .and_then(|h| h.get(registry).or_else(|| h.get(config_key(registry))))
        .and_then(Value::as_str)
        .or_else(|| m.get("credsStore").and_then(Value::as_str))
        .filter(|h| !h.is_empty());
    Ok(match helper {
        Some(h) => LoginStore::Helper(h.to_owned()),
        None => LoginStore::File(config.to_owned()),
    })
}

/// Saves a login of `registry`: in the credential helper the config file names for it, else in
/// the file's `auths` (the file and its directory are created when missing).
///
/// # Errors
/// [`Error::Config`] naming the file or helper that failed; the file is then unchanged.
pub fn save_login(
    config: &Path,
    registry: &str,
    username: &str,
    password: &str,
) -> Result<LoginStore> {
    let store = login_store(config, registry)?;
    let key = config_key(registry);
    match &store {
        LoginStore::Helper(h) => {
            let payload = serde_json::json!({
                "ServerURL": key,
                "Username": username,
                "Secret": password,
            });
            run_helper(h, "store", payload.to_string().as_bytes(), password)?;
        }
        LoginStore::File(_) => {
            let mut m = read_config(config)?;
            let auths = m
                .entry("auths")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(auths) = auths else {
                return Err(config_err(
                    config,
                    "its \"auths\" is not an object; left as it is",
                ));
            };
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            auths.insert(key, serde_json::json!({ "auth": auth }));
            write_config(config, &m)?;
        }
    }
    Ok(store)
}

/// Removes the login of `registry` from the config file's `auths` and from the credential
/// helper it names for it. Returns where a login was found; `None` when there was none.
///
/// # Errors
/// [`Error::Config`] naming the file or helper that failed.
pub fn remove_login(config: &Path, registry: &str) -> Result<Option<LoginStore>> {
    let key = config_key(registry);
    let mut found = None;
    if let LoginStore::Helper(h) = login_store(config, registry)? {
        // Helpers answer an erase of an unknown server with an error; ask first.
        if run_helper(&h, "get", key.as_bytes(), "").is_ok() {
            run_helper(&h, "erase", key.as_bytes(), "")?;
            found = Some(LoginStore::Helper(h));
        }
    }
    let mut m = read_config(config)?;
    let removed = match m.get_mut("auths") {
        Some(Value::Object(auths)) => {
            let mut any = auths.remove(&key).is_some();
            if key != registry {
                any |= auths.remove(registry).is_some();
            }
            any
        }
        _ => false,
    };
    if removed {
        write_config(config, &m)?;
        found = Some(LoginStore::File(config.to_owned()));
    }
    Ok(found)
}

/// Runs `docker-credential-<helper> <action>` with `input` on its standard input. Its output is
/// shown only in short, and never when it holds `secret`.
fn run_helper(helper: &str, action: &str, input: &[u8], secret: &str) -> Result<Vec<u8>> {
    let program = format!("docker-credential-{helper}");
    let fail = |why: String| Error::Config(format!("{program} {action}: {why}"));
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| fail(format!("cannot give it the login: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("it did not finish: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let said = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    let said = if secret.is_empty() || !said.contains(secret) {
        excerpt(&said, 200)
    } else {
        String::new()
    };
    Err(fail(format!(
        "{}{}",
        out.status,
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    )))
}

/// Replaces the config file atomically with `m`, private to its owner.
fn write_config(config: &Path, m: &Map<String, Value>) -> Result<()> {
    // A config file that is a link (dotfiles kept elsewhere) is written where it points.
    let target = match std::fs::symlink_metadata(config) {
        Ok(md) if md.file_type().is_symlink() => std::fs::canonicalize(config)
            .map_err(|e| config_err(config, format!("cannot follow the link: {e}")))?,
        _ => config.to_owned(),
    };
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| config_err(config, format!("cannot create its directory: {e}")))?;
    let mut bytes =
        serde_json::to_vec_pretty(&Value::Object(m.clone())).map_err(|e| config_err(config, e))?;
    bytes.push(b'\n');
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let tmp = dir.join(format!(".{name}.ociup-{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    // A new file only: a symlink or file planted at this name is not followed or reused.
    let _ = std::fs::remove_file(&tmp);
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(config_err(config, format!("cannot write it: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_saved_beside_what_the_file_holds_and_removed_again() {
        let t = tempfile::tempdir().unwrap();
        let config = t.path().join("d/config.json");
        // A missing file (and directory) is created, private.
        assert_eq!(
            save_login(&config, "reg.example:5000", "u", "p").unwrap(),
            LoginStore::File(config.clone())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let creds = crate::Credentials::anonymous().with_config_file(&config);
        assert_eq!(
            creds.lookup("reg.example:5000").unwrap(),
            crate::Credential::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        // Other fields stay; Docker Hub gets Docker's key.
        std::fs::write(
            &config,
            r#"{"auths":{"other.example":{"auth":"eDp5"}},"psFormat":"table"}"#,
        )
        .unwrap();
        save_login(&config, "docker.io", "hub", "secret").unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table");
        assert!(v["auths"]["other.example"].is_object());
        assert!(v["auths"]["https://index.docker.io/v1/"]["auth"].is_string());
        assert_eq!(
            remove_login(&config, "docker.io").unwrap(),
            Some(LoginStore::File(config.clone()))
        );
        assert_eq!(remove_login(&config, "docker.io").unwrap(), None);
        let v: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        assert!(v["auths"].get("https://index.docker.io/v1/").is_none());
        assert!(v["auths"]["other.example"].is_object());
    }

    #[test]
    fn a_file_that_is_not_a_config_is_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let config = t.path().join("config.json");
        std::fs::write(&config, b"[1, 2").unwrap();
        let err = save_login(&config, "reg.example", "u", "p").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert_eq!(std::fs::read(&config).unwrap(), b"[1, 2");
        assert_eq!(
            std::fs::read_dir(t.path()).unwrap().count(),
            1,
            "no stray file"
        );
    }

    #[test]
    fn a_named_helper_is_used() {
        let t = tempfile::tempdir().unwrap();
        let config = t.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"credsStore":"desktop","credHelpers":{"gcr.example":"gcloud"}}"#,
        )
        .unwrap();
        assert_eq!(
            login_store(&config, "gcr.example").unwrap(),
            LoginStore::Helper("gcloud".into())
        );
        assert_eq!(
            login_store(&config, "reg.example").unwrap(),
            LoginStore::Helper("desktop".into())
        );
        // A helper that is not installed: a clear error, and the file unchanged.
        let err = save_login(&config, "reg.example", "u", "p").unwrap_err();
        assert!(
            err.to_string().contains("docker-credential-desktop store"),
            "{err}"
        );
        assert!(!std::fs::read_to_string(&config).unwrap().contains("auths"));
    }
}
