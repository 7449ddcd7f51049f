//! `ociup login` and `logout` against the real Distribution server, and the logins of skopeo
//! and podman read where they write them.

use std::path::Path;

use crate::registry::run;
use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::fixtures;

/// Docker's config, the containers auth files and the default catalog, all under `home`.
fn env_of(home: &Path) -> Vec<(&'static str, String)> {
    let h = home.display().to_string();
    vec![
        ("HOME", h.clone()),
        ("DOCKER_CONFIG", format!("{h}/docker")),
        ("XDG_RUNTIME_DIR", format!("{h}/run")),
        ("XDG_CONFIG_HOME", format!("{h}/config")),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn config(home: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(home.join("docker/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn login_checks_the_password_saves_it_privately_and_logout_removes_it() {
    for auth in [AuthMode::Basic, AuthMode::Token] {
        let reg = TestRegistry::start(RegistryOptions { auth, tls: false });
        let (user, password) = reg.credentials().unwrap();
        let host = reg.host();
        let home = tempfile::tempdir().unwrap();
        let env = env_of(home.path());
        let env = refs(&env);
        let login = [
            "login",
            host.as_str(),
            "--username",
            user.as_str(),
            "--password-stdin",
        ];
        let src = format!("oci:{}:v1", fixtures().join("base").display());
        let dst = format!("{host}/lib/base:v1");

        // A wrong password: refused by the registry, said so, nothing saved.
        let (ok, _, err) = run(&login, &env, "wrong-secret\n");
        assert!(!ok, "{auth:?}");
        assert!(
            err.contains(&format!("refused the password of user {user}"))
                || err.contains(&format!("the password of user {user} was refused")),
            "{auth:?}: {err}"
        );
        assert!(!err.contains("wrong-secret"), "{err}");
        assert!(!home.path().join("docker/config.json").exists());

        // The password comes from standard input only.
        let (ok, _, err) = run(
            &["login", &host, "--username", &user],
            &[&env[..], &[("OCIUP_PASSWORD", password.as_str())]].concat(),
            "",
        );
        assert!(!ok && err.contains("--password-stdin"), "{err}");
        assert!(!home.path().join("docker/config.json").exists());

        let (ok, out, err) = run(&login, &env, &format!("{password}\n"));
        assert!(ok, "{auth:?}: {err}");
        assert!(
            out.contains(&format!("logged in to {host} as {user}")),
            "{out}"
        );
        let path = home.path().join("docker/config.json");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "config.json is private");
        assert!(config(home.path())["auths"][&host]["auth"].is_string());
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&password));

        // Every later command finds the login.
        let (ok, _, err) = run(&["copy", &src, &dst], &env, "");
        assert!(ok, "{auth:?}: {err}");

        let (ok, out, err) = run(&["logout", &host], &env, "");
        assert!(
            ok && out.contains(&format!("logged out of {host}")),
            "{err}"
        );
        assert!(config(home.path())["auths"].get(&host).is_none());
        // (Pushing: the token endpoint lets anyone pull.)
        let (ok, _, err) = run(&["copy", &src, &format!("{host}/lib/other:v1")], &env, "");
        assert!(!ok, "{auth:?}: a push worked after logout");
        assert!(
            err.contains("none were found") || err.contains("no credentials were found"),
            "{auth:?}: {err}"
        );
        let (ok, out, _) = run(&["logout", &host], &env, "");
        assert!(
            ok && out.contains(&format!("not logged in to {host}")),
            "{out}"
        );
    }
}

#[test]
fn login_and_logout_go_through_the_credential_helper_config_json_names() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: false,
    });
    let (user, password) = reg.credentials().unwrap();
    let host = reg.host();
    let home = tempfile::tempdir().unwrap();
    // A helper keeping one login in a file, as docker-credential-pass and friends keep many.
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kept = home.path().join("kept.json");
    let helper = bin.join("docker-credential-ociuptest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nkept={}\ncase \"$1\" in\n store) cat > \"$kept\" ;;\n get) read server; [ -f \"$kept\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}; cat \"$kept\" ;;\n erase) read server; rm -f \"$kept\" ;;\n *) exit 1 ;;\nesac\n",
            kept.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(home.path().join("docker")).unwrap();
    std::fs::write(
        home.path().join("docker/config.json"),
        r#"{"credsStore": "ociuptest"}"#,
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let env = env_of(home.path());
    let mut env = refs(&env);
    env.push(("PATH", &path));

    let (ok, out, err) = run(
        &["login", &host, "--username", &user, "--password-stdin"],
        &env,
        &format!("{password}\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("docker-credential-ociuptest"), "{out}");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    assert_eq!(stored["ServerURL"], host.as_str());
    assert_eq!(stored["Username"], user.as_str());
    assert_eq!(stored["Secret"], password.as_str());
    assert!(
        config(home.path()).get("auths").is_none(),
        "not in the file"
    );

    let src = format!("oci:{}:v1", fixtures().join("base").display());
    let (ok, _, err) = run(&["copy", &src, &format!("{host}/lib/base:v1")], &env, "");
    assert!(ok, "{err}");

    let (ok, out, err) = run(&["logout", &host], &env, "");
    assert!(ok && out.contains("logged out"), "{err}");
    assert!(!kept.exists(), "erased from the helper");
}

#[test]
fn logins_written_by_skopeo_are_read() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: false,
    });
    let (user, password) = reg.credentials().unwrap();
    let host = reg.host();
    let src = format!("oci:{}:v1", fixtures().join("base").display());
    let home = tempfile::tempdir().unwrap();
    let env = env_of(home.path());
    let runtime = home.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();

    // skopeo writes $XDG_RUNTIME_DIR/containers/auth.json.
    let out = std::process::Command::new("skopeo")
        .args([
            "login",
            "--tls-verify=false",
            "--username",
            &user,
            "--password-stdin",
            &host,
        ])
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", home.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(password.as_bytes())?;
            c.wait_with_output()
        })
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(runtime.join("containers/auth.json").exists());
    let (ok, _, err) = run(
        &["copy", &src, &format!("{host}/lib/base:v1")],
        &refs(&env),
        "",
    );
    assert!(ok, "{err}");

    // $REGISTRY_AUTH_FILE, where skopeo writes when it is set, comes first.
    let file = home.path().join("ci-auth.json");
    std::fs::rename(runtime.join("containers/auth.json"), &file).unwrap();
    let mut with_file = refs(&env);
    let (ok, _, _) = run(&["inspect", &format!("{host}/lib/base:v1")], &with_file, "");
    assert!(!ok, "no login left where it was");
    with_file.push(("REGISTRY_AUTH_FILE", file.to_str().unwrap()));
    let (ok, _, err) = run(&["inspect", &format!("{host}/lib/base:v1")], &with_file, "");
    assert!(ok, "{err}");
}

/// `--username` goes with the one registry a command names: a copy between two registries
/// cannot say whose login it is, and is refused before any request, naming both and the way
/// out (a login saved per registry).
#[test]
fn a_command_line_login_for_a_command_naming_two_registries_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let env = env_of(home.path());
    let env = refs(&env);
    let (ok, _, err) = run(
        &[
            "copy",
            "docker://127.0.0.1:9/a/x:v1",
            "docker://localhost:9/b/x:v1",
            "--username",
            "ci",
            "--password-stdin",
        ],
        &env,
        "s3cret-pass\n",
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("--username is for one registry")
            && err.contains("127.0.0.1:9 and localhost:9")
            && err.contains("ociup login"),
        "{err}"
    );
    assert!(!err.contains("s3cret-pass"), "{err}");
}
