//! The CLI against the real Distribution server: logins, Docker's credential sources, and
//! append/inspect/copy on registry references.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::registry_support::{AuthMode, RegistryOptions, TestRegistry};
use crate::support::{fixtures, json, tool};

/// Runs ociup with extra environment and standard input; returns (success, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
    run_in(None, args, env, stdin)
}

/// [`run`] in a working directory of its own. Settings of the calling environment that would
/// change what ociup does (credentials, catalog, key, timeout, auth files) are left out.
pub fn run_in(
    cwd: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ociup"));
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for var in [
        "SOURCE_DATE_EPOCH",
        "OCIUP_USERNAME",
        "OCIUP_PASSWORD",
        "OCIUP_CATALOG",
        "OCIUP_SIGNING_KEY",
        "OCIUP_TIMEOUT",
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
    ] {
        cmd.env_remove(var);
    }
    // A cache of its own, empty: documents read from registries are not kept in ~/.cache.
    let cache = tempfile::tempdir().unwrap();
    cmd.env("XDG_CACHE_HOME", cache.path());
    cmd.args(args)
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
        !ok && err.contains("401") && err.contains(&format!("none were found for {}", reg.host())),
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
    // It says the password was refused, not only that credentials are wanted.
    assert!(
        !ok && err.contains("401") && err.contains(&format!("refused the password of user {user}")),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret") && !err.contains(&password),
        "{err}"
    );
}

/// An environment of its own: Docker's config, the containers auth files and the default
/// catalog all under `home`.
fn own_home(home: &Path) -> Vec<(&'static str, String)> {
    let h = home.display().to_string();
    vec![
        ("HOME", h.clone()),
        ("DOCKER_CONFIG", format!("{h}/docker")),
        ("XDG_RUNTIME_DIR", format!("{h}/run")),
        ("XDG_CONFIG_HOME", format!("{h}/config")),
        ("XDG_DATA_HOME", format!("{h}/data")),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn command_line_credentials_reach_a_recipes_base_and_an_images_recorded_base() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::Basic,
        tls: false,
    });
    let (user, password) = reg.credentials().unwrap();
    let stdin = format!("{password}\n");
    let home = tempfile::tempdir().unwrap();
    let env = own_home(home.path());
    let env = env_refs(&env);
    let login = ["--username", user.as_str(), "--password-stdin"];
    let base = format!("{}/lib/base:v1", reg.host());
    let (ok, _, err) = run(
        &[
            &[
                "copy",
                &format!("oci:{}:v1", fixtures().join("base").display()),
                &base,
            ][..],
            &login[..],
        ]
        .concat(),
        &env,
        &stdin,
    );
    assert!(ok, "{err}");

    // The default catalog is a layout: the registry the command names is only the base's,
    // which the recipe names. The flags reach it.
    let out = home.path().join("images");
    let target = format!("oci:{}", out.display());
    let (ok, _, err) = run(
        &[
            &[
                "register", "app", "--base", &base, "--to", &target, "--env", "A=1",
            ][..],
            &login[..],
        ]
        .concat(),
        &env,
        &stdin,
    );
    assert!(ok, "{err}");
    let (ok, answer, err) = run(
        &[&["resolve", "app"][..], &login[..]].concat(),
        &env,
        &stdin,
    );
    assert!(ok, "{err}");
    assert!(answer.starts_with(&format!("{target}@sha256:")), "{answer}");

    // An image on a layout records its base on the registry: rebase reads that old base with
    // the flags too, though only layouts are named.
    let app = format!("oci:{}:app", out.display());
    let (ok, _, err) = run(
        &[
            &["append", "--base", &base, "--env", "B=2", "--to", &app][..],
            &login[..],
        ]
        .concat(),
        &env,
        &stdin,
    );
    assert!(ok, "{err}");
    let new_base = format!("oci:{}:v2", fixtures().join("base").display());
    let (ok, _, err) = run(
        &[
            &["rebase", &app, "--new-base", &new_base, "--tag", "rebased"][..],
            &login[..],
        ]
        .concat(),
        &env,
        &stdin,
    );
    assert!(ok, "{err}");
    // Without them, the registry's refusal says none were found, naming it.
    let (ok, _, err) = run(
        &["rebase", &app, "--new-base", &new_base, "--dry-run"],
        &env,
        "",
    );
    assert!(
        !ok && err.contains(&format!("none were found for {}", reg.host())),
        "{err}"
    );
}

#[test]
fn a_relative_layout_is_recorded_and_printed_absolute() {
    let home = tempfile::tempdir().unwrap();
    let env = own_home(home.path());
    let env = env_refs(&env);
    let here = home.path().join("here");
    let elsewhere = home.path().join("elsewhere");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let base = format!("oci:{}:v1", fixtures().join("base").display());
    let (ok, out, err) = run_in(
        Some(&here),
        &[
            "register",
            "rel",
            "--base",
            &base,
            "--to",
            "oci:images",
            "--env",
            "A=1",
        ],
        &env,
        "",
    );
    assert!(ok, "{err}");
    let absolute = format!("oci:{}", here.join("images").display());
    assert!(out.contains(&format!("{absolute}@sha256:")), "{out}");
    let (ok, answer, err) = run_in(Some(&elsewhere), &["resolve", "rel"], &env, "");
    assert!(ok, "{err}");
    assert!(
        answer.starts_with(&format!("{absolute}@sha256:")),
        "{answer}"
    );
    assert!(
        std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "a stray layout was written where resolve ran"
    );

    // In a recipe file, relative to the file's folder, wherever ociup runs.
    let folder = home.path().join("recipes");
    std::fs::create_dir_all(&folder).unwrap();
    let recipe = serde_json::json!({
        "nick": "fromfile",
        "base": base,
        "target": "oci:out",
        "steps": [{"env": {"key": "A", "value": "1"}}],
    });
    std::fs::write(folder.join("r.json"), recipe.to_string()).unwrap();
    let file = folder.join("r.json").display().to_string();
    let (ok, _, err) = run_in(Some(&elsewhere), &["register", "--recipe", &file], &env, "");
    assert!(ok, "{err}");
    let (ok, answer, err) = run_in(Some(&here), &["resolve", "fromfile"], &env, "");
    assert!(ok, "{err}");
    let absolute = format!("oci:{}", folder.join("out").display());
    assert!(
        answer.starts_with(&format!("{absolute}@sha256:")),
        "{answer}"
    );
}

#[test]
fn a_silent_registry_times_out_as_the_flag_or_environment_says() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let image = format!("{host}/x/y:1");
    let (ok, _, err) = run(&["inspect", &image, "--timeout", "0.2"], &[], "");
    assert!(
        !ok && err.contains("timed out: no answer within 0.2 s"),
        "{err}"
    );
    let (ok, _, err) = run(&["inspect", &image], &[("OCIUP_TIMEOUT", "0.2")], "");
    assert!(!ok && err.contains("timed out"), "{err}");
    let (ok, _, err) = run(&["inspect", &image, "--timeout", "0"], &[], "");
    assert!(!ok && err.contains("more than 0"), "{err}");
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

/// Blob upload requests (POST without mount, PATCH, PUT) for `repo` in the registry's log.
fn uploads(reg: &TestRegistry, repo: &str) -> usize {
    let path = format!("/v2/{repo}/blobs/uploads/");
    reg.requests("PATCH", &path) + reg.requests("PUT", &path)
}

#[test]
fn rebase_on_a_registry_moves_no_layer_bytes() {
    let reg = TestRegistry::start(RegistryOptions {
        auth: AuthMode::None,
        tls: false,
    });
    let host = reg.host();
    let t = tempfile::tempdir().unwrap();
    let ok = |args: &[&str]| {
        let (ok, out, err) = run(args, &[], "");
        assert!(ok, "ociup {args:?}: {err}");
        out
    };
    for (layout, tag, to) in [
        ("base", "v1", "lib/base:v1"),
        ("base", "v2", "lib/base:v2"),
        ("multi", "v1", "lib/multi:v1"),
        ("multi", "v2", "lib/multi:v2"),
    ] {
        ok(&[
            "copy",
            &format!("oci:{}:{tag}", fixtures().join(layout).display()),
            &format!("{host}/{to}"),
        ]);
    }
    std::fs::write(t.path().join("own"), b"own file\n").unwrap();
    let add = format!("{}:/opt/own", t.path().join("own").display());
    ok(&[
        "append",
        "--base",
        &format!("{host}/lib/base:v1"),
        "--add",
        &add,
        "--remove",
        "/usr/share/base/VERSION",
        "--to",
        &format!("{host}/team/app:v1"),
    ]);

    let before = uploads(&reg, "team/app");
    let heads = |reg: &TestRegistry| reg.requests("HEAD", "/v2/team/app/blobs/");
    let heads_before = heads(&reg);
    let out = json(&ok(&[
        "rebase",
        &format!("{host}/team/app:v1"),
        "--new-base",
        &format!("{host}/lib/base:v2"),
        "--tag",
        "v2",
        "--json",
    ]));
    assert_eq!(
        uploads(&reg, "team/app") - before,
        1,
        "only the config is uploaded"
    );
    // The registry is known (from the append's probe) to refuse a manifest naming the blobs it
    // lacks: the new config and the new base layers (not known in team/app) are supplied
    // without a HEAD per blob, then the manifest goes once, under the tag.
    assert_eq!(heads(&reg) - heads_before, 0, "no blob checked one by one");
    assert_eq!(reg.requests("PUT", "/v2/team/app/manifests/v2"), 1);
    let actions: Vec<&str> = out["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "mounted").count(),
        3,
        "{actions:?}"
    );
    assert!(!actions.contains(&"copied"), "{actions:?}");

    // The same rebase under another tag: every blob is there, so the manifest is taken at
    // once. With --check-blobs-first (for registries that store any manifest), each blob not
    // known present is checked with a HEAD first instead.
    let heads_before = heads(&reg);
    let same = |tag: &str, extra: &[&str]| {
        let mut args = vec![
            "rebase".to_owned(),
            format!("{host}/team/app:v1"),
            "--new-base".to_owned(),
            format!("{host}/lib/base:v2"),
            "--tag".to_owned(),
            tag.to_owned(),
            "--json".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        json(&ok(&args))
    };
    // A new process remembers (ociup's data directory) that this registry refuses a manifest
    // naming the blobs it lacks, and which blobs team/app holds since the last rebase: nothing
    // is checked, the tagged manifest goes at once.
    let fast = same("v2-again", &[]);
    assert_eq!(fast["digest"], out["digest"]);
    assert_eq!(heads(&reg) - heads_before, 0);
    assert_eq!(reg.requests("PUT", "/v2/team/app/manifests/v2-again"), 1);
    let heads_before = heads(&reg);
    let checked = same("v2-checked", &["--check-blobs-first"]);
    assert_eq!(checked["digest"], out["digest"]);
    // The 3 new base layers and the config; the own layers are in this repository already.
    assert_eq!(heads(&reg) - heads_before, 4);
    assert_eq!(reg.requests("PUT", "/v2/team/app/manifests/v2-checked"), 1);
    assert!(
        checked["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["action"] == "present"),
        "{checked}"
    );

    // A second rebase onto the same base: already current, nothing written, exit 3.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_ociup"))
        .args([
            "rebase",
            &format!("{host}/team/app:v2"),
            "--new-base",
            &format!("{host}/lib/base:v2"),
        ])
        .output()
        .unwrap();
    let (code, out2) = (again.status.code(), String::from_utf8_lossy(&again.stdout));
    assert_eq!(code, Some(3), "{out2}");

    // skopeo copies it out; umoci unpacks it with base v2's files and the own layer.
    let lay = t.path().join("lay");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/team/app:v2"),
            &format!("oci:{}:app", lay.display()),
        ],
    );
    let bundle = t.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:app", lay.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let root = bundle.join("rootfs");
    assert!(
        std::fs::read_to_string(root.join("etc/os-release"))
            .unwrap()
            .contains("VERSION_ID=2")
    );
    assert!(root.join("usr/share/base/only-in-v2.txt").exists());
    assert!(!root.join("usr/share/base/only-in-v1.txt").exists());
    assert!(
        !root.join("usr/share/base/VERSION").exists(),
        "whiteout still applies"
    );
    assert_eq!(std::fs::read(root.join("opt/own")).unwrap(), b"own file\n");

    // A two-platform custom index, made in a layout on multi:v1 and pushed.
    let ml = t.path().join("multi");
    crate::support::copy_tree(&fixtures().join("multi"), &ml);
    let (_, index) = crate::support::custom_index(&ml, &add);
    crate::support::put_index(&ml, &index, "custom");
    ok(&[
        "copy",
        &format!("oci:{}:custom", ml.display()),
        &format!("{host}/team/multi:v1"),
    ]);
    let before = uploads(&reg, "team/multi");
    let out = json(&ok(&[
        "rebase",
        &format!("{host}/team/multi:v1"),
        "--old-base",
        &format!("{host}/lib/multi:v1"),
        "--new-base",
        &format!("{host}/lib/multi:v2"),
        "--tag",
        "v2",
        "--json",
    ]));
    assert_eq!(out["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(
        uploads(&reg, "team/multi") - before,
        2,
        "two configs, no layer"
    );
    let arm = t.path().join("arm");
    ok(&[
        "copy",
        &format!("{host}/team/multi:v2"),
        &format!("oci:{}:arm", arm.display()),
        "--platform",
        "linux/arm64",
    ]);
    let b2 = t.path().join("b2");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:arm", arm.display()),
            b2.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read_to_string(b2.join("rootfs/bin/hello"))
            .unwrap()
            .contains("v2 (arm64/v8)")
    );
    assert_eq!(
        std::fs::read(b2.join("rootfs/opt/own")).unwrap(),
        b"own file\n"
    );
}
