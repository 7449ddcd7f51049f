//! Where credentials come from: given explicitly, or looked up in Docker's `config.json`
//! (`auths`, `credsStore`, `credHelpers`, through `docker-credential-<name>`) and the
//! `auth.json` of skopeo, podman and buildah. Nothing here reads the environment unless asked to
//! ([`Credentials::from_env`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use docker_credential::DockerCredential;

/// One registry's credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// No credential: anonymous access.
    Anonymous,
    /// User name and password (or a personal access token as password).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets, even in debug output.
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// How to find credentials for a registry: explicit ones first, then the default, then each
/// config file in order.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    explicit: HashMap<String, Credential>,
    default: Option<Credential>,
    docker_configs: Vec<PathBuf>,
}

impl Credentials {
    /// No credentials at all: every registry is accessed anonymously.
    pub fn anonymous() -> Self {
        Credentials::default()
    }

    /// The credential files of the environment, those that exist read when a registry asks,
    /// first match wins: `$REGISTRY_AUTH_FILE` (an explicit choice), Docker's `config.json`
    /// (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, where `ociup login` writes),
    /// then the containers `auth.json` where skopeo and podman log in
    /// (`$XDG_RUNTIME_DIR/containers/auth.json`, or `/run/containers/$UID/auth.json` when
    /// `XDG_RUNTIME_DIR` is unset) and `$XDG_CONFIG_HOME/containers/auth.json`
    /// (`~/.config/containers/auth.json`).
    pub fn from_env() -> Self {
        #[cfg(unix)]
        let uid = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").ok().map(|m| m.uid())
        };
        #[cfg(not(unix))]
        let uid = None;
        Credentials {
            explicit: HashMap::new(),
            default: None,
            docker_configs: auth_files(&|k| std::env::var_os(k), uid),
        }
    }

    /// Uses `credential` for every registry that has no credential of its own given with
    /// [`Credentials::with`], ahead of the config files: credentials given for one command apply
    /// to every registry it reaches.
    pub fn with_default(mut self, credential: Credential) -> Self {
        self.default = Some(credential);
        self
    }

    /// Uses `credential` for `registry` (as written in references, `host[:port]`).
    pub fn with(mut self, registry: impl Into<String>, credential: Credential) -> Self {
        self.explicit.insert(registry.into(), credential);
        self
    }

    /// Also looks in this Docker-format config file (`config.json` or `auth.json`).
    pub fn with_config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker_configs.push(path.into());
        self
    }

    /// The credential for `registry`; anonymous when none is configured. A credential helper
    /// that fails is an error (its output is not included: it may hold secrets).
    ///
    /// # Errors
    /// A message naming the file or helper that failed.
    pub fn lookup(&self, registry: &str) -> Result<Credential, String> {
        // Docker Hub answers at registry-1.docker.io but is known as docker.io.
        let registry = match registry {
            "registry-1.docker.io" | "index.docker.io" => "docker.io",
            r => r,
        };
        if let Some(c) = self.explicit.get(registry).or(self.default.as_ref()) {
            return Ok(c.clone());
        }
        let keys: Vec<&str> = if registry == "docker.io" {
            vec![
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
            ]
        } else {
            vec![registry]
        };
        for path in &self.docker_configs {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            for key in &keys {
                match docker_credential::get_credential_from_reader(&bytes[..], key) {
                    Ok(DockerCredential::UsernamePassword(username, password)) => {
                        return Ok(Credential::Basic { username, password });
                    }
                    Ok(DockerCredential::IdentityToken(t)) => {
                        return Ok(Credential::IdentityToken(t));
                    }
                    Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured) => {}
                    Err(docker_credential::CredentialRetrievalError::HelperFailure {
                        helper,
                        ..
                    }) => {
                        return Err(format!(
                            "credential helper docker-credential-{helper} failed for {registry} \
                             (configured in {})",
                            path.display()
                        ));
                    }
                    Err(e) => {
                        return Err(format!(
                            "reading credentials for {registry} from {}: {e}",
                            path.display()
                        ));
                    }
                }
            }
        }
        Ok(Credential::Anonymous)
    }
}

/// Docker's `config.json`: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    docker_config(&|k| std::env::var_os(k))
}

fn docker_config(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("DOCKER_CONFIG")
        .or_else(|| var("HOME").map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"))
}

/// The credential files, in the order they are searched (see [`Credentials::from_env`]).
fn auth_files(env: &dyn Fn(&str) -> Option<OsString>, uid: Option<u32>) -> Vec<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut files = Vec::new();
    files.extend(var("REGISTRY_AUTH_FILE"));
    files.extend(docker_config(env));
    match (var("XDG_RUNTIME_DIR"), uid) {
        (Some(d), _) => files.push(d.join("containers/auth.json")),
        (None, Some(uid)) => files.push(PathBuf::from(format!("/run/containers/{uid}/auth.json"))),
        (None, None) => {}
    }
    if let Some(c) = var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config"))) {
        files.push(c.join("containers/auth.json"));
    }
    let mut seen = Vec::new();
    files.retain(|f| {
        let new = !seen.contains(f);
        seen.push(f.clone());
        new
    });
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_are_searched_where_skopeo_podman_and_docker_write_them() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let paths = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        // No XDG_RUNTIME_DIR: /run/containers/$UID/auth.json, as podman writes it.
        let files = auth_files(&env(&[("HOME", "/home/u")]), Some(1000));
        assert_eq!(
            paths(files),
            [
                "/home/u/.docker/config.json",
                "/run/containers/1000/auth.json",
                "/home/u/.config/containers/auth.json",
            ]
        );
        let files = auth_files(
            &env(&[
                ("HOME", "/home/u"),
                ("REGISTRY_AUTH_FILE", "/etc/ci/auth.json"),
                ("DOCKER_CONFIG", "/etc/docker-ci"),
                ("XDG_RUNTIME_DIR", "/run/user/1000"),
                ("XDG_CONFIG_HOME", "/home/u/cfg"),
            ]),
            Some(1000),
        );
        assert_eq!(
            paths(files),
            [
                "/etc/ci/auth.json",
                "/etc/docker-ci/config.json",
                "/run/user/1000/containers/auth.json",
                "/home/u/cfg/containers/auth.json",
            ]
        );
        assert!(auth_files(&env(&[]), None).is_empty());
    }

    #[test]
    fn a_default_credential_applies_to_every_registry_without_its_own() {
        let t = tempfile::tempdir().unwrap();
        let config = t.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"auths": {"reg.example": {"auth": "ZmlsZTpmaWxl"}}}"#,
        )
        .unwrap();
        let given = Credential::Basic {
            username: "flag".into(),
            password: "p".into(),
        };
        let creds = Credentials::anonymous()
            .with_config_file(&config)
            .with("own.example", Credential::Anonymous)
            .with_default(given.clone());
        assert_eq!(creds.lookup("reg.example").unwrap(), given);
        assert_eq!(creds.lookup("base.example:5000").unwrap(), given);
        assert_eq!(creds.lookup("own.example").unwrap(), Credential::Anonymous);
    }

    #[test]
    fn reads_auths_and_helpers_from_a_config_file() {
        let t = tempfile::tempdir().unwrap();
        let config = t.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"auths": {"reg.example:5000": {"auth": "dXNlcjpwYXNz"},
                          "https://index.docker.io/v1/": {"identitytoken": "refresh"}},
                "credHelpers": {"helped.example": "ociup-test"}}"#,
        )
        .unwrap();
        let helper_dir = t.path().join("bin");
        std::fs::create_dir(&helper_dir).unwrap();
        let creds = Credentials::anonymous().with_config_file(&config);
        assert_eq!(
            creds.lookup("reg.example:5000").unwrap(),
            Credential::Basic {
                username: "user".into(),
                password: "pass".into()
            }
        );
        assert_eq!(
            creds.lookup("docker.io").unwrap(),
            Credential::IdentityToken("refresh".into())
        );
        // The client asks by API host; Docker Hub's is registry-1.docker.io.
        assert_eq!(
            creds.lookup("registry-1.docker.io").unwrap(),
            Credential::IdentityToken("refresh".into())
        );
        assert_eq!(
            creds.lookup("other.example").unwrap(),
            Credential::Anonymous
        );
        // The helper does not exist on PATH: a clear error naming it.
        let err = creds.lookup("helped.example").unwrap_err();
        assert!(err.contains("helped.example"), "{err}");
        let explicit = creds.with("reg.example:5000", Credential::Anonymous);
        assert_eq!(
            explicit.lookup("reg.example:5000").unwrap(),
            Credential::Anonymous
        );
        assert!(
            !format!(
                "{:?}",
                Credential::Basic {
                    username: "u".into(),
                    password: "secret".into()
                }
            )
            .contains("secret")
        );
    }
}
