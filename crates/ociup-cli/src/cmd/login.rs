//! login, logout: Docker's config.json, or the credential helper it names.

use anyhow::{Context, Result, bail};
use ociup_registry::auth::docker_config_path;
use ociup_registry::auth::login::{remove_login, save_login};
use ociup_registry::{Client, ClientOptions, Credential, Credentials, Reference};

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
