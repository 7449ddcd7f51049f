//! The CLI against the real Distribution server: logins, Docker's credential sources, and
//! append/inspect/copy on registry references.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{fixtures, json, tool};

/// Runs ociup with extra environment and standard input; returns (success, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ociup"));
    cmd.args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("OCIUP_USERNAME")
        .env_remove("OCIUP_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("ociup runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn logins_from_flags_credential_helpers_and_docker_config() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: false,
    });
    let (user, password) = reg.credentials().unwrap();
    let home = tempfile::tempdir().unwrap();
    let empty_home = [
        ("HOME", home.path().to_str().unwrap()),
        ("DOCKER_CONFIG", home.path().to_str().unwrap()),
    ];
    let src = format!("oci:{}:v1", fixtures().join("base").display());
    let dst = format!("{}/app/base:v1", reg.host());

    let (ok, _, err) = run(&["copy", &src, &dst], &empty_home, "");
    assert!(
        !ok && err.contains("401") && err.contains("wants credentials"),
        "{err}"
    );

    let (ok, _, err) = run(
        &["copy", &src, &dst, "--username", &user, "--password-stdin"],
        &empty_home,
        &format!("{password}\n"),
    );
    assert!(ok, "{err}");

    // A credential helper named in config.json, found on PATH.
    let bin = home.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-ociuptest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] || exit 1\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        home.path().join("config.json"),
        format!(r#"{{"credHelpers": {{"{}": "ociuptest"}}}}"#, reg.host()),
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut env = empty_home.to_vec();
    env.push(("PATH", &path));
    let (ok, out, err) = run(&["inspect", &format!("docker://{dst}"), "--json"], &env, "");
    assert!(ok, "{err}");
    assert_eq!(json(&out)["config"]["os"], "linux");

    // Plain auths in config.json.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        home.path().join("config.json"),
        format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let (ok, _, err) = run(&["inspect", &dst], &empty_home, "");
    assert!(ok, "{err}");

    // A wrong password is refused, and never printed.
    let (ok, _, err) = run(
        &["inspect", &dst, "--username", &user, "--password-stdin"],
        &empty_home,
        "wrong-secret\n",
    );
    assert!(!ok && err.contains("401"), "{err}");
    assert!(
        !err.contains("wrong-secret") && !err.contains(&password),
        "{err}"
    );
}

#[test]
fn append_inspect_and_copy_on_a_registry() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let base = format!("{host}/lib/base:v1");
    let (ok, _, err) = run(
        &[
            "copy",
            &format!("oci:{}:v1", fixtures().join("base").display()),
            &base,
        ],
        &[],
        "",
    );
    assert!(ok, "{err}");

    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("hello"), b"hi from the registry\n").unwrap();
    let add = format!("{}:/srv/hello", t.path().join("hello").display());
    let app = format!("{host}/team/app:1");
    let (ok, out, err) = run(
        &[
            "append", "--base", &base, "--add", &add, "--env", "X=1", "--to", &app, "--json",
        ],
        &[],
        "",
    );
    assert!(ok, "{err}");
    let made = json(&out);
    let digest = made["digest"].as_str().unwrap().to_owned();
    assert!(
        made["reference"]
            .as_str()
            .unwrap()
            .ends_with(&format!("team/app:1@{digest}"))
    );
    // Base layers were mounted into team/app, not uploaded: blob uploads are the new layer and
    // the config only.
    assert_eq!(
        reg.requests("POST", "/v2/team/app/blobs/uploads/?mount="),
        3,
        "{}",
        reg.log()
    );
    assert_eq!(reg.requests("PUT", "/v2/team/app/blobs/uploads/"), 2);

    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{app}"),
        ],
    );
    assert_eq!(
        format!(
            "sha256:{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes())
        ),
        digest
    );

    let back = format!("oci:{}:app", t.path().join("back").display());
    let (ok, _, err) = run(&["copy", &format!("docker://{app}"), &back], &[], "");
    assert!(ok, "{err}");
    let bundle = t.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:app", t.path().join("back").display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/srv/hello")).unwrap(),
        b"hi from the registry\n"
    );
    assert!(bundle.join("rootfs/etc/os-release").exists());
}
