//! Where credentials come from: given explicitly, or looked up in Docker's `config.json`
//! (`auths`, `credsStore`, `credHelpers`, through `docker-credential-<name>`) and podman's
//! `auth.json`. Nothing here reads the environment unless asked to ([`Credentials::from_env`]).

use std::collections::HashMap;
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

/// How to find credentials for a registry: explicit ones first, then each config file in order.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    explicit: HashMap<String, Credential>,
    docker_configs: Vec<PathBuf>,
}

impl Credentials {
    /// No credentials at all: every registry is accessed anonymously.
    pub fn anonymous() -> Self {
        Credentials::default()
    }

    /// Docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`) and
    /// podman's `auth.json` (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `~/.config/containers/auth.json`), those that exist, read when a registry asks.
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
        let home = env("HOME");
        let mut files = Vec::new();
        if let Some(dir) = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker")))
        {
            files.push(dir.join("config.json"));
        }
        if let Some(f) = env("REGISTRY_AUTH_FILE") {
            files.push(f);
        }
        if let Some(d) = env("XDG_RUNTIME_DIR") {
            files.push(d.join("containers/auth.json"));
        }
        if let Some(h) = &home {
            files.push(h.join(".config/containers/auth.json"));
        }
        Credentials {
            explicit: HashMap::new(),
            docker_configs: files,
        }
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
        if let Some(c) = self.explicit.get(registry) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
