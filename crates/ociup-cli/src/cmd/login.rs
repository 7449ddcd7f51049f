//! login, logout: Docker's config.json, or the credential helper it names.

use anyhow::{Context, Result, bail};
use ociup_registry::auth::docker_config_path;
use ociup_registry::auth::login::{remove_login, save_login};
use ociup_registry::{Client, ClientOptions, Credential, Credentials, Reference, StoreRef};

use super::Ctx;
use crate::args::{LoginArgs, LogoutArgs};
use crate::output;

/// The registry as written in references (`host[:port]`), from what the user typed: a
/// `docker://` or `https://` prefix and a trailing `/` are dropped, as `docker login` does.
fn registry_name(typed: &str) -> Result<String> {
    let bare = typed
        .trim()
        .trim_start_matches("docker://")
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = bare.split('/').next().unwrap_or("");
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    };
    let parsed = Reference::parse(&format!("{host}/ociup-login"))
        .ok()
        .filter(|r| !host.is_empty() && r.registry() == host);
    match parsed {
        Some(r) => Ok(r.registry().to_owned()),
        None => bail!(
            "{typed:?} is not a registry: give host[:port] (a name with a dot or a port, \
             localhost, or docker.io)"
        ),
    }
}

/// `base` with the login given on the command line (`--username`, its password) for the one
/// registry the command names in `refs`, so that it goes nowhere else (another registry the
/// command reaches, a token realm that registry does not name). Several registries named is
/// ambiguous and refused. When the command names no registry (only layouts, whose recorded
/// bases or recipes name the registries), the login applies to each registry it reaches.
pub(super) fn with_command_line_login(
    base: Credentials,
    login: Option<&(String, String)>,
    refs: &[&StoreRef],
) -> Result<Credentials> {
    let Some((username, password)) = login else {
        return Ok(base);
    };
    let credential = Credential::Basic {
        username: username.clone(),
        password: password.clone(),
    };
    let mut named: Vec<&str> = refs
        .iter()
        .filter_map(|r| match r {
            StoreRef::Registry(r) => Some(r.registry()),
            StoreRef::Layout(_) => None,
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    Ok(match named[..] {
        [] => base.with_default(credential),
        [one] => base.with(one, credential),
        _ => bail!(
            "--username is for one registry, and this command names {}: log in to each with \
             `ociup login REGISTRY --username USER --password-stdin` instead (saved per registry)",
            named.join(" and ")
        ),
    })
}

fn config_path() -> Result<std::path::PathBuf> {
    docker_config_path().context("neither DOCKER_CONFIG nor HOME is set: no config.json to use")
}

pub async fn login(ctx: &Ctx, args: &LoginArgs) -> Result<()> {
    let registry = registry_name(&args.registry)?;
    let Some((username, password)) = &ctx.login else {
        bail!("login needs --username (or OCIUP_USERNAME) and --password-stdin");
    };
    if !ctx.password_from_stdin {
        bail!(
            "login reads the password from standard input only: give --password-stdin \
             (OCIUP_PASSWORD is not used for a login that is saved)"
        );
    }
    if password.is_empty() {
        bail!("no password on standard input");
    }
    let config = config_path()?;
    // Checked with the registry before anything is saved, as `docker login` does.
    let client = Client::new(ClientOptions {
        credentials: Credentials::anonymous().with(
            registry.clone(),
            Credential::Basic {
                username: username.clone(),
                password: password.clone(),
            },
        ),
        insecure: ctx.insecure.clone(),
        ca_file: ctx.ca_file.clone(),
        idle_timeout: ctx.timeout,
        ..ClientOptions::default()
    })?;
    client
        .check_login(&registry)
        .await
        .with_context(|| format!("logging in to {registry} as {username}"))?;
    let store = save_login(&config, &registry, username, password)
        .with_context(|| format!("saving the login to {registry}"))?;
    output::line(format!(
        "logged in to {registry} as {username} (saved in {store})"
    ))?;
    Ok(())
}

pub fn logout(args: &LogoutArgs) -> Result<()> {
    let registry = registry_name(&args.registry)?;
    let config = config_path()?;
    match remove_login(&config, &registry)
        .with_context(|| format!("removing the login to {registry}"))?
    {
        Some(store) => output::line(format!("logged out of {registry} (removed from {store})"))?,
        None => output::line(format!("not logged in to {registry}"))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(texts: &[&str]) -> Vec<StoreRef> {
        texts.iter().map(|t| StoreRef::parse(t).unwrap()).collect()
    }

    #[test]
    fn a_command_line_login_goes_only_to_the_registry_named() {
        let login = ("ci".to_owned(), "secret".to_owned());
        let basic = Credential::Basic {
            username: "ci".into(),
            password: "secret".into(),
        };
        let named = refs(&["oci:/tmp/x:v1", "docker://a.example:5000/app:v1"]);
        let c = with_command_line_login(
            Credentials::anonymous(),
            Some(&login),
            &named.iter().collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(c.lookup("a.example:5000").unwrap(), basic);
        // Another registry the command reaches (a recorded base, a token realm's host) gets
        // none of it.
        assert_eq!(c.lookup("b.example").unwrap(), Credential::Anonymous);
        assert_eq!(c.lookup("a.example").unwrap(), Credential::Anonymous);

        // The same registry twice is one registry; Docker Hub's API host is Docker Hub.
        let hub = refs(&["docker.io/library/a:1", "library/b:2"]);
        let c = with_command_line_login(
            Credentials::anonymous(),
            Some(&login),
            &hub.iter().collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(c.lookup("registry-1.docker.io").unwrap(), basic);
        assert_eq!(c.lookup("ghcr.io").unwrap(), Credential::Anonymous);

        // Two registries: refused, naming both.
        let two = refs(&["a.example/x:1", "docker://b.example/y:1"]);
        let err = with_command_line_login(
            Credentials::anonymous(),
            Some(&login),
            &two.iter().collect::<Vec<_>>(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a.example and b.example"), "{err}");

        // No login: nothing is added, whatever is named.
        let c = with_command_line_login(
            Credentials::anonymous(),
            None,
            &two.iter().collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(c.lookup("a.example").unwrap(), Credential::Anonymous);
    }
}
